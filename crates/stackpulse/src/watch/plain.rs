//! The view without a terminal (piped, CI): one plain line per event, no colours
//! and no redraws, and a heartbeat line while nothing happens so a CI log never
//! looks hung.
//!
//! [`super::Watcher`] calls [`PlainView::change`] after each message applied to the
//! [`State`], [`PlainView::tick`] about every second (the heartbeat is written when
//! nothing was written for [`PlainView`]'s interval, 30 s by default) and
//! [`PlainView::finish`] once at the end.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::state::{human, Change, State};
use super::summary;

/// At most this many resources are named in a heartbeat.
const NAMED: usize = 5;

pub struct PlainView<W: Write> {
    out: W,
    heartbeat: Duration,
    /// When the last line was written.
    last_line: Instant,
}

impl<W: Write> PlainView<W> {
    pub fn new(out: W, heartbeat: Duration) -> PlainView<W> {
        PlainView {
            out,
            heartbeat,
            last_line: Instant::now(),
        }
    }

    pub fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
        self.last_line = Instant::now();
    }

    /// Writes what one message changed: the event's line, or the problem.
    pub fn change(&mut self, state: &State, change: &Change) {
        match change {
            Change::Resource(i) => {
                let Some(line) = event_line(state, *i) else {
                    return;
                };
                self.line(&line);
            }
            Change::Problem(text) => self.line(text),
            Change::Fatal(_) | Change::Recovered | Change::Complete | Change::Nothing => {}
        }
    }

    /// A heartbeat line when nothing was written for the interval: what the
    /// operation is still waiting on, or (`--next`) what `watch` waits for.
    pub fn tick(&mut self, state: &State, waiting: Option<(&str, Duration)>, now: DateTime<Utc>) {
        if self.last_line.elapsed() < self.heartbeat {
            return;
        }
        let line = match waiting {
            Some((what, since)) => format!("still waiting for {what} ({})", human(since)),
            None => heartbeat(state, now),
        };
        self.line(&line);
    }

    /// The summary, then `extra` lines (the chart written).
    pub fn finish(&mut self, state: &State, extra: &[String]) {
        if let Some(done) = &state.complete {
            for (_, l) in summary::lines(&state.stack, done) {
                self.line(&l);
            }
        }
        for l in extra {
            self.line(l);
        }
    }
}

/// The line of the event that last changed row `index`: time, resource,
/// status, type, stack progress and the status reason.
pub fn event_line(state: &State, index: usize) -> Option<String> {
    let row = state.rows().get(index)?;
    let r = &row.resource;
    let s = &state.summary;
    let mut line = format!(
        "{}  {:<32} {:<24} {:<28} {}/{} ({}%)",
        stackpulse_cfn::wire::timestamp::format(&row.at),
        row.id(),
        r.status,
        r.resource_type,
        s.completed_resources,
        s.total_resources,
        s.progress
    );
    if !r.status_reason.is_empty() {
        line.push_str("  ");
        line.push_str(&r.status_reason);
    }
    Some(line)
}

/// `still waiting on A, B (slow), C and 4 more (4m12s)`.
pub fn heartbeat(state: &State, now: DateTime<Utc>) -> String {
    let moving = state.in_progress();
    let names: Vec<String> = moving
        .iter()
        .take(NAMED)
        .map(|r| match r.slow(now) {
            Some(ratio) => format!("{} (slow: {ratio:.1}x expected)", r.id()),
            None => r.id(),
        })
        .collect();
    let what = if names.is_empty() {
        let status = if state.summary.status.is_empty() {
            "WAITING"
        } else {
            &state.summary.status
        };
        format!("{} ({status})", state.stack)
    } else if moving.len() > NAMED {
        format!("{} and {} more", names.join(", "), moving.len() - NAMED)
    } else {
        names.join(", ")
    };
    with_time(format!("still waiting on {what}"), state, now)
}

fn with_time(mut line: String, state: &State, now: DateTime<Utc>) -> String {
    if let Some(e) = state.elapsed(now) {
        line.push_str(&format!(" ({})", human(e)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::state::tests::{t0, update};

    #[test]
    fn heartbeat_names_what_is_in_progress() {
        let mut s = State::new("s");
        let now = t0() + chrono::Duration::seconds(252);
        assert_eq!(heartbeat(&s, now), "still waiting on s (WAITING)");
        s.apply(&update("s", "CREATE_IN_PROGRESS", 0, 0, 2));
        s.apply(&update("X", "CREATE_IN_PROGRESS", 1, 0, 2));
        s.apply(&update("Y", "CREATE_IN_PROGRESS", 2, 0, 2));
        assert_eq!(heartbeat(&s, now), "still waiting on X, Y (4m12s)");
        for i in 0..8 {
            s.apply(&update(&format!("R{i}"), "CREATE_IN_PROGRESS", 3, 0, 10));
        }
        assert_eq!(
            heartbeat(&s, now),
            "still waiting on X, Y, R0, R1, R2 and 5 more (4m12s)"
        );
    }

    #[test]
    fn one_line_per_event_and_a_heartbeat_only_when_quiet() {
        let mut out = Vec::new();
        let mut s = State::new("s");
        {
            let mut view = PlainView::new(&mut out, Duration::ZERO);
            for (id, st) in [("s", "CREATE_IN_PROGRESS"), ("X", "CREATE_IN_PROGRESS")] {
                let c = s.apply(&update(id, st, 1, 0, 1));
                view.change(&s, &c);
            }
            view.tick(&s, None, t0() + chrono::Duration::seconds(61));
        }
        let text = String::from_utf8(out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].contains("X ") && lines[1].contains("CREATE_IN_PROGRESS"),
            "{text}"
        );
        assert_eq!(lines[2], "still waiting on X (1m00s)");

        let mut out = Vec::new();
        let mut view = PlainView::new(&mut out, Duration::from_secs(3600));
        view.tick(&s, None, t0());
        assert!(out.is_empty(), "no heartbeat before the interval");
    }
}
