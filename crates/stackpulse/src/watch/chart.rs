//! `watch --chart FILE`: the finished operation as a timeline, for CI artifacts.
//!
//! One horizontal bar per resource (the root stack's own row excluded), in the
//! order they started, from its start (`startedAt`, else its first `*_IN_PROGRESS`
//! event) to the end of what the operation did to it (its first completed or
//! failed event; `finishedAt` when sent), coloured by how that ended: green
//! completed, red failed, grey cancelled, amber never finished; a deletion of a
//! stack being deleted is "completed". When a rollback (or cleanup) undid it
//! later, a thin purple segment on the same row shows that undo from its start to
//! its end. Hand-written SVG text; a `.html`/`.htm` file gets the same SVG inside
//! a minimal page.
//!
//! Data flow: [`super::Watcher`] calls [`write`] with the final [`State`] once the
//! operation ended; [`svg`] is pure so tests parse its output.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use stackpulse_cfn::status::{is_cancellation, ResourcePhase};

use super::state::{human, Row, State};

/// Width of the time axis, in pixels.
const PLOT_WIDTH: f64 = 800.0;
/// Width of the label column.
const LABEL_WIDTH: f64 = 280.0;
const ROW_HEIGHT: f64 = 18.0;
const BAR_HEIGHT: f64 = 14.0;
const TOP: f64 = 40.0;

/// How a resource ended, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    RolledBack,
    InProgress,
}

impl Outcome {
    fn of(row: &Row) -> Outcome {
        match &row.settled {
            None => Outcome::InProgress,
            Some((_, status, reason)) => match ResourcePhase::of(status) {
                ResourcePhase::Failed if is_cancellation(reason) => Outcome::Cancelled,
                ResourcePhase::Failed => Outcome::Failed,
                _ => Outcome::Completed,
            },
        }
    }

    fn class(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::RolledBack => "rolled-back",
            Outcome::InProgress => "in-progress",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Outcome::Completed => "#2e7d32",
            Outcome::Failed => "#c62828",
            Outcome::Cancelled => "#9e9e9e",
            Outcome::RolledBack => "#8e24aa",
            Outcome::InProgress => "#f9a825",
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One row of the chart.
struct Bar<'a> {
    row: &'a Row,
    start: DateTime<Utc>,
    /// End of the operation's own work on it.
    end: DateTime<Utc>,
    outcome: Outcome,
    /// A rollback or cleanup that undid it: (start, end).
    undo: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

fn bars(state: &State) -> Vec<Bar<'_>> {
    let end_of_all = state.last_event;
    let mut bars: Vec<Bar> = state
        .rows()
        .iter()
        .filter(|r| !r.is_root)
        .filter_map(|row| {
            let start = row.started?;
            let end = match &row.settled {
                Some((t, _, _)) => *t,
                None => row.finished.or(end_of_all).unwrap_or(start),
            }
            .max(start);
            let undo = row.undo_started.map(|u| {
                let u = u.max(end);
                (u, row.finished.or(end_of_all).unwrap_or(u).max(u))
            });
            Some(Bar {
                row,
                start,
                end,
                outcome: Outcome::of(row),
                undo,
            })
        })
        .collect();
    // Stable: equal starts keep the first-seen order.
    bars.sort_by_key(|b| b.start);
    bars
}

/// The timeline of `state` as an SVG document.
pub fn svg(state: &State) -> String {
    let bars = bars(state);
    let t0 = bars.iter().map(|b| b.start).min().or(state.started());
    let t1 = bars
        .iter()
        .map(|b| b.undo.map_or(b.end, |u| u.1.max(b.end)))
        .max()
        .or(state.last_event);
    let span = match (t0, t1) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(1) as f64 / 1000.0,
        _ => 1.0,
    };
    let scale = PLOT_WIDTH / span;
    let width = LABEL_WIDTH + PLOT_WIDTH + 20.0;
    let height = TOP + ROW_HEIGHT * bars.len() as f64 + 30.0;
    let mut x = String::new();
    let _ = write!(
        x,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let status = if state.summary.status.is_empty() {
        "UNKNOWN"
    } else {
        &state.summary.status
    };
    let _ = write!(
        x,
        "<text class=\"title\" x=\"4\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{} {} ({}, {} resources)</text>",
        esc(&state.stack),
        esc(status),
        human(std::time::Duration::from_secs_f64(span)),
        bars.len()
    );
    // Axis: a tick every fifth of the span.
    for i in 0..=5 {
        let tx = LABEL_WIDTH + PLOT_WIDTH * f64::from(i) / 5.0;
        let secs = span * f64::from(i) / 5.0;
        let _ = write!(
            x,
            "<line class=\"tick\" x1=\"{tx:.2}\" y1=\"{}\" x2=\"{tx:.2}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text class=\"tick-label\" x=\"{tx:.2}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            TOP - 6.0,
            height - 24.0,
            height - 10.0,
            human(std::time::Duration::from_secs_f64(secs))
        );
    }
    let seconds =
        |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds() as f64 / 1000.0;
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * i as f64;
        let offset = t0.map_or(0.0, |t| seconds(t, bar.start));
        let dur = seconds(bar.start, bar.end);
        let bx = LABEL_WIDTH + offset * scale;
        let bw = (dur * scale).max(1.0);
        let id = esc(&bar.row.id());
        let (status, reason) = match &bar.row.settled {
            Some((_, s, r)) => (s.as_str(), r.as_str()),
            None => (bar.row.resource.status.as_str(), ""),
        };
        let _ = write!(
            x,
            "<g class=\"row\" data-id=\"{id}\"><text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\">{id}</text>\
             <rect class=\"bar {}\" x=\"{bx:.2}\" y=\"{y:.2}\" width=\"{bw:.2}\" height=\"{BAR_HEIGHT}\" fill=\"{}\" \
             data-start=\"{offset:.3}\" data-seconds=\"{dur:.3}\"><title>{id} ({}) {} in {}{}{}</title></rect>",
            LABEL_WIDTH - 6.0,
            y + BAR_HEIGHT - 3.0,
            bar.outcome.class(),
            bar.outcome.colour(),
            esc(&bar.row.resource.resource_type),
            esc(status),
            human(std::time::Duration::from_secs_f64(dur.max(0.0))),
            if reason.is_empty() { "" } else { ": " },
            esc(reason),
        );
        if let Some((from, to)) = bar.undo {
            let ux = LABEL_WIDTH + t0.map_or(0.0, |t| seconds(t, from)) * scale;
            let uw = (seconds(from, to) * scale).max(1.0);
            let _ = write!(
                x,
                "<rect class=\"undo\" x=\"{ux:.2}\" y=\"{:.2}\" width=\"{uw:.2}\" height=\"{:.2}\" fill=\"{}\">\
                 <title>{id} then {}</title></rect>",
                y + BAR_HEIGHT / 4.0,
                BAR_HEIGHT / 2.0,
                Outcome::RolledBack.colour(),
                esc(&bar.row.resource.status),
            );
        }
        x.push_str("</g>");
    }
    x.push_str("</svg>\n");
    x
}

/// The same SVG inside a minimal HTML page.
pub fn html(state: &State) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\n{}</body></html>\n",
        esc(&format!("stackpulse: {}", state.stack)),
        svg(state)
    )
}

/// Writes the chart of `state` to `path` (HTML for `.html`/`.htm`, else SVG).
pub fn write(path: &Path, state: &State) -> std::io::Result<()> {
    let is_html = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let text = if is_html { html(state) } else { svg(state) };
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::state::tests::update;

    fn finished_state() -> State {
        let mut s = State::new("s");
        for (id, st, sec) in [
            ("s", "CREATE_IN_PROGRESS", 0),
            ("Slow", "CREATE_IN_PROGRESS", 0),
            ("Fast", "CREATE_IN_PROGRESS", 10),
            ("Fast", "CREATE_COMPLETE", 20),
            ("Db", "CREATE_IN_PROGRESS", 30),
            ("Db", "CREATE_FAILED", 50),
            ("Slow", "CREATE_COMPLETE", 100),
            ("s", "ROLLBACK_COMPLETE", 100),
        ] {
            s.apply(&update(id, st, sec, 2, 3));
        }
        s
    }

    #[test]
    fn one_bar_per_resource_in_start_order_with_widths_by_duration() {
        let text = svg(&finished_state());
        let doc = roxmltree::Document::parse(&text).expect("the chart is well-formed XML");
        let bars: Vec<roxmltree::Node> = doc
            .descendants()
            .filter(|n| {
                n.has_tag_name("rect") && n.attribute("class").is_some_and(|c| c.starts_with("bar"))
            })
            .collect();
        let ids: Vec<&str> = bars
            .iter()
            .filter_map(|b| b.parent()?.attribute("data-id"))
            .collect();
        assert_eq!(ids, ["Slow", "Fast", "Db"], "the stack itself is not a bar");
        let num = |n: &roxmltree::Node, a: &str| -> f64 {
            n.attribute(a)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        // The span is 100 s over PLOT_WIDTH: Slow 100 s, Fast 10 s, Db 20 s.
        assert!((num(&bars[0], "width") - PLOT_WIDTH).abs() < 0.01);
        assert!((num(&bars[1], "width") - PLOT_WIDTH / 10.0).abs() < 0.01);
        assert!((num(&bars[2], "width") - PLOT_WIDTH / 5.0).abs() < 0.01);
        assert!((num(&bars[1], "x") - (LABEL_WIDTH + PLOT_WIDTH / 10.0)).abs() < 0.01);
        let ys: Vec<f64> = bars.iter().map(|b| num(b, "y")).collect();
        assert!(ys.windows(2).all(|w| w[0] < w[1]), "{ys:?}");
        let classes: Vec<&str> = bars.iter().filter_map(|b| b.attribute("class")).collect();
        assert_eq!(classes, ["bar completed", "bar completed", "bar failed"]);
    }

    #[test]
    fn a_rollback_is_a_segment_after_the_bar() {
        let mut s = State::new("s");
        for (id, st, sec) in [
            ("A", "CREATE_IN_PROGRESS", 0),
            ("A", "CREATE_COMPLETE", 10),
            ("B", "CREATE_IN_PROGRESS", 0),
            ("B", "CREATE_FAILED", 20),
            ("A", "DELETE_IN_PROGRESS", 30),
            ("A", "DELETE_COMPLETE", 40),
        ] {
            s.apply(&update(id, st, sec, 0, 2));
        }
        let text = svg(&s);
        let doc = roxmltree::Document::parse(&text).expect("the chart is well-formed XML");
        let rects: Vec<(&str, f64, f64)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .map(|n| {
                let num = |a: &str| {
                    n.attribute(a)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN)
                };
                (
                    n.attribute("class").unwrap_or_default(),
                    num("x"),
                    num("width"),
                )
            })
            .collect();
        let px = PLOT_WIDTH / 40.0;
        assert_eq!(rects.len(), 3, "{rects:?}");
        assert_eq!(rects[0].0, "bar completed", "A was created: {rects:?}");
        assert!((rects[0].2 - 10.0 * px).abs() < 0.01, "{rects:?}");
        assert_eq!(rects[1].0, "undo");
        assert!(
            (rects[1].1 - (LABEL_WIDTH + 30.0 * px)).abs() < 0.01,
            "{rects:?}"
        );
        assert!((rects[1].2 - 10.0 * px).abs() < 0.01, "{rects:?}");
        assert_eq!(rects[2].0, "bar failed");
    }

    #[test]
    fn html_wraps_the_same_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.html");
        write(&path, &finished_state()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("<!doctype html>"), "{text}");
        let start = text.find("<svg").unwrap_or(0);
        let end = text.find("</svg>").map_or(text.len(), |e| e + 6);
        let doc = roxmltree::Document::parse(&text[start..end]).expect("svg inside");
        assert_eq!(
            doc.descendants().filter(|n| n.has_tag_name("rect")).count(),
            3
        );
    }
}
