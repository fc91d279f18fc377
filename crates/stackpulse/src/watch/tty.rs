//! The terminal view: a compact live region redrawn in place, like the CDK's
//! current-activity view.
//!
//! The region is a progress line (spinner, stack and status, bar, counts), a line
//! with how many are in progress and failed, the elapsed time and the ETA, followed by the resources that matter now: failed ones, then
//! those in progress (longest running first, flagged when running more than twice
//! their expected time). It never has more lines than the terminal is tall minus
//! one: rows that do not fit are counted on a last `… and N more` line, so a
//! 250-resource stack redraws the same few lines instead of flooding the
//! scrollback. Failures (not the resources cancelled because of one) are also
//! printed once above the region, so they stay in the scrollback with their full
//! reason; with `--all` every event is.
//!
//! Drawing is indicatif's: the region is the message of one [`ProgressBar`], which
//! erases and redraws its lines (rate-limited) and never draws more lines than the
//! terminal has. [`frame`] builds the text and is pure, so tests check it without
//! a terminal.

use std::time::Duration;

use chrono::{DateTime, Utc};
use console::{style, truncate_str, Term};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stackpulse_cfn::status::{is_cancellation, ResourcePhase};

use super::plain::event_line;
use super::state::{human, Change, Eta, Row, State};
use super::summary::{self, Tone};

/// Width of the progress bar, in cells.
const BAR_WIDTH: usize = 30;
/// The longest resource id column.
const MAX_ID_WIDTH: usize = 40;

/// What the region shows: the header's prefix (stack and status) and the text
/// after the bar, whose first line ends the header and whose other lines are
/// the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub prefix: String,
    pub message: String,
}

fn paint(status: &str, text: &str) -> String {
    let s = style(text);
    let s = if status.ends_with("_FAILED") {
        s.red()
    } else if status.contains("ROLLBACK") {
        s.magenta()
    } else if status.ends_with("_IN_PROGRESS") {
        s.yellow()
    } else if status.ends_with("_COMPLETE") {
        s.green()
    } else {
        s
    };
    s.to_string()
}

fn row_line(row: &Row, id_width: usize, now: DateTime<Utc>, width: usize) -> String {
    let r = &row.resource;
    let running = row.running(now).map(human).unwrap_or_default();
    let mut line = format!(
        "  {:<id_width$}  {}  {:>6}  {}",
        truncate_str(&row.id(), id_width, "…"),
        paint(&r.status, &format!("{:<22}", r.status)),
        running,
        style(&r.resource_type).dim(),
    );
    if let Some(ratio) = row.slow(now) {
        line.push_str(&format!(
            "  {}",
            style(format!("slow: {ratio:.1}x expected")).yellow().bold()
        ));
    }
    if row.phase() == ResourcePhase::Failed && !r.status_reason.is_empty() {
        line.push_str(&format!("  {}", style(&r.status_reason).red()));
    }
    truncate_str(&line, width.saturating_sub(1), "…").into_owned()
}

/// The region for `state` at `now` on a `width` × `height` terminal; `all`
/// lists every resource, not only failed and in-progress ones.
pub fn frame(state: &State, now: DateTime<Utc>, width: usize, height: usize, all: bool) -> Frame {
    let s = &state.summary;
    let status = if s.status.is_empty() {
        "WAITING"
    } else {
        &s.status
    };
    let prefix = format!("{} {}", style(&state.stack).bold(), paint(status, status));
    let count = format!(
        "{}/{} ({}%)",
        s.completed_resources, s.total_resources, s.progress
    );
    // The second line: what is moving, how long it took, how long it may take.
    let mut stats = vec![format!("{} in progress", state.in_progress().len())];
    if s.failed_resources > 0 {
        stats.push(
            style(format!("{} failed", s.failed_resources))
                .red()
                .to_string(),
        );
    }
    if let Some(e) = state.elapsed(now) {
        stats.push(format!("elapsed {}", human(e)));
    }
    match state.eta(now) {
        Some(Eta::Remaining(d)) => stats.push(format!("ETA {}", human(d))),
        Some(Eta::Estimated(d)) => stats.push(format!("ETA ~{}", human(d))),
        Some(Eta::Overdue) => stats.push(style("ETA passed").yellow().to_string()),
        None => {}
    }
    // The first line also holds the spinner, the prefix and the bar.
    let used = 2 + console::measure_text_width(&prefix) + 1 + BAR_WIDTH + 1;
    let mut lines = vec![
        truncate_str(&count, width.saturating_sub(used + 1), "…").into_owned(),
        truncate_str(
            &format!("  {}", stats.join(" · ")),
            width.saturating_sub(1),
            "…",
        )
        .into_owned(),
    ];

    let rows: Vec<&Row> = if all {
        state.rows().iter().filter(|r| !r.is_root).collect()
    } else {
        state.active()
    };
    // Lines for rows: the terminal less one (the cursor's line), the two header
    // lines and the problem line.
    let problem = state.problem.as_ref();
    let budget = height
        .saturating_sub(3)
        .saturating_sub(usize::from(problem.is_some()));
    let shown = if rows.len() > budget {
        budget.saturating_sub(1)
    } else {
        rows.len()
    };
    let id_width = rows
        .iter()
        .take(shown)
        .map(|r| console::measure_text_width(&r.id()))
        .max()
        .unwrap_or(0)
        .min(MAX_ID_WIDTH);
    for row in rows.iter().take(shown) {
        lines.push(row_line(row, id_width, now, width));
    }
    if shown < rows.len() {
        let hidden = &rows[shown..];
        let failed = hidden
            .iter()
            .filter(|r| r.phase() == ResourcePhase::Failed)
            .count();
        let running = hidden
            .iter()
            .filter(|r| r.phase() == ResourcePhase::InProgress)
            .count();
        let mut more = format!("  … and {} more", hidden.len());
        if !all || failed + running < hidden.len() {
            let mut parts = Vec::new();
            if running > 0 {
                parts.push(format!("{running} in progress"));
            }
            if failed > 0 {
                parts.push(format!("{failed} failed"));
            }
            if !parts.is_empty() {
                more.push_str(&format!(" ({})", parts.join(", ")));
            }
        }
        lines.push(truncate_str(&more, width.saturating_sub(1), "…").into_owned());
    }
    if let Some(p) = problem {
        lines.push(
            truncate_str(&style(p).yellow().to_string(), width.saturating_sub(1), "…").into_owned(),
        );
    }
    Frame {
        prefix,
        message: lines.join("\n"),
    }
}

/// The live terminal view.
pub struct TtyView {
    bar: ProgressBar,
    term: Term,
    all: bool,
    waiting: bool,
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner:.cyan}} {{prefix}} {{bar:{BAR_WIDTH}.green/white}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("█▌░")
}

fn waiting_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl TtyView {
    pub fn new(all: bool) -> TtyView {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
        bar.set_style(bar_style());
        TtyView {
            bar,
            term: Term::stdout(),
            all,
            waiting: false,
        }
    }

    fn size(&self) -> (usize, usize) {
        let (rows, cols) = self.term.size();
        (usize::from(cols.max(20)), usize::from(rows.max(3)))
    }

    /// Redraws the region for what one message changed; failures (every event
    /// with `--all`) are printed once above it.
    pub fn change(&mut self, state: &State, change: &Change) {
        if let Change::Resource(i) = change {
            if self.waiting {
                self.waiting = false;
                self.bar.set_style(bar_style());
            }
            // Real failures only: resources cancelled because of one are noise.
            let failed = state.rows().get(*i).is_some_and(|r| {
                r.phase() == ResourcePhase::Failed && !is_cancellation(&r.resource.status_reason)
            });
            if self.all {
                if let Some(line) = event_line(state, *i) {
                    self.bar.println(line);
                }
            } else if failed {
                if let Some(row) = state.rows().get(*i) {
                    let r = &row.resource;
                    self.bar.println(
                        style(format!("✗ {} {} {}", row.id(), r.status, r.status_reason))
                            .red()
                            .to_string(),
                    );
                }
            }
        }
        self.redraw(state);
    }

    /// `--next`: the stack is idle; shows what `watch` waits for.
    pub fn waiting(&mut self, what: &str, since: Duration) {
        if !self.waiting {
            self.waiting = true;
            self.bar.set_style(waiting_style());
        }
        self.bar
            .set_message(format!("waiting for {what} ({})", human(since)));
        self.bar.tick();
    }

    /// Moves the spinner and the times.
    pub fn tick(&mut self, state: &State) {
        self.bar.tick();
        if !self.waiting {
            self.redraw(state);
        }
    }

    fn redraw(&mut self, state: &State) {
        let (width, height) = self.size();
        let f = frame(state, Utc::now(), width, height, self.all);
        let s = &state.summary;
        self.bar.set_length(u64::from(s.total_resources.max(1)));
        self.bar.set_position(u64::from(s.completed_resources));
        self.bar.set_prefix(f.prefix);
        self.bar.set_message(f.message);
    }

    /// Clears the region and prints the summary, then `extra` lines.
    pub fn finish(&mut self, state: &State, extra: &[String]) {
        self.bar.finish_and_clear();
        if let Some(done) = &state.complete {
            for (tone, l) in summary::lines(&state.stack, done) {
                let l = match tone {
                    Tone::Good => style(l).green().to_string(),
                    Tone::Bad => style(l).red().to_string(),
                    Tone::Plain => l,
                };
                let _ = self.term.write_line(&l);
            }
        }
        for l in extra {
            let _ = self.term.write_line(l);
        }
    }

    /// Clears the region (watching ended with an error).
    pub fn abandon(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::state::tests::{t0, update};

    fn big() -> State {
        let mut s = State::new("s");
        s.apply(&update("s", "CREATE_IN_PROGRESS", 0, 0, 250));
        for i in 0..250 {
            s.apply(&update(
                &format!("R{i:03}"),
                "CREATE_IN_PROGRESS",
                1,
                0,
                250,
            ));
        }
        for i in 0..200 {
            s.apply(&update(
                &format!("R{i:03}"),
                "CREATE_COMPLETE",
                2,
                i + 1,
                250,
            ));
        }
        s.apply(&update("R200", "CREATE_FAILED", 3, 200, 250));
        s
    }

    #[test]
    fn a_big_stack_fits_the_terminal_with_failed_rows_first() {
        let s = big();
        let f = frame(&s, t0() + chrono::Duration::seconds(10), 100, 30, false);
        let lines: Vec<&str> = f.message.lines().collect();
        assert_eq!(
            lines.len(),
            29,
            "one line less than the terminal: {}",
            f.message
        );
        let plain = console::strip_ansi_codes(&f.message).into_owned();
        assert!(
            plain.starts_with("200/250 (0%)\n  49 in progress · elapsed 10s · ETA ~"),
            "{plain}"
        );
        let rows: Vec<&str> = plain.lines().skip(2).collect();
        assert!(
            rows[0].contains("R200") && rows[0].contains("CREATE_FAILED"),
            "{plain}"
        );
        assert!(rows[0].contains("boom"), "{plain}");
        assert!(
            rows[1..26].iter().all(|r| r.contains("CREATE_IN_PROGRESS")),
            "{plain}"
        );
        assert!(!plain.contains("CREATE_COMPLETE"), "{plain}");
        assert_eq!(rows[26], "  … and 24 more (24 in progress)");
        assert!(
            plain.lines().all(|l| console::measure_text_width(l) < 100),
            "{plain}"
        );
    }

    #[test]
    fn a_small_stack_shows_all_active_rows_and_the_problem() {
        let mut s = State::new("s");
        s.apply(&update("A", "CREATE_IN_PROGRESS", 1, 0, 2));
        s.apply(&update("B", "CREATE_COMPLETE", 1, 1, 2));
        s.apply(&serde_json::json!({"type": "error", "code": "throttled", "message": "Rate exceeded", "retrying": true}));
        let f = frame(&s, t0() + chrono::Duration::seconds(5), 80, 24, false);
        let plain = console::strip_ansi_codes(&f.message).into_owned();
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 4, "{plain}");
        assert!(lines[2].starts_with("  A  CREATE_IN_PROGRESS"), "{plain}");
        assert_eq!(lines[3], "warning: Rate exceeded (retrying)");
        let all = frame(&s, t0(), 80, 24, true);
        assert!(all.message.contains("B "), "--all lists completed rows too");
    }
}
