//! What `watch` knows about the operation it follows: one [`Row`] per resource
//! (latest status, when it started and finished), the root stack's counts, timing
//! and last problem, and the completion once it came.
//!
//! Data flow: a tracker message, already turned into its sanitised wire JSON by
//! [`super::Watcher`], goes into [`State::apply`], which updates the rows and says
//! what changed ([`Change`]); the views ([`super::tty`], [`super::plain`]) and the
//! chart writer ([`super::chart`]) only read the state. Pure: no I/O, and every
//! question that depends on the time takes `now`.
//!
//! Timing fields (`ResourceSummary.startedAt`, `finishedAt`, `expectedSeconds`,
//! `StackSummary.startedAt`, `expectedSeconds`, `etaAt`) are optional on the wire:
//! they are read from the JSON by name when present, so this module works with
//! streams (and servers) that do not send them. Without them a resource starts at
//! its first `*_IN_PROGRESS` event and finishes at its last terminal event, the
//! operation starts at its first event, and the ETA is estimated from the counts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stackpulse_cfn::status::ResourcePhase;
use stackpulse_cfn::{DeploymentComplete, ResourceSummary, StackSummary, TrackerMessage};

/// A resource running longer than this many times its expected duration is
/// flagged as slow.
pub const SLOW_FACTOR: f64 = 2.0;

/// One resource of the operation.
#[derive(Debug, Clone)]
pub struct Row {
    /// The nested stack it belongs to; `None` for the root stack.
    pub nested: Option<String>,
    pub resource: ResourceSummary,
    /// Time of its latest event.
    pub at: DateTime<Utc>,
    /// `startedAt` when the stream has it, else the time of its first
    /// `*_IN_PROGRESS` event.
    pub started: Option<DateTime<Utc>>,
    /// `finishedAt` when the stream has it, else the time of its latest
    /// completed or failed event (`None` while it is in progress).
    pub finished: Option<DateTime<Utc>>,
    /// Its first completed or failed event: (time, status, reason). What the
    /// operation did to it, before a rollback may undo it.
    pub settled: Option<(DateTime<Utc>, String, String)>,
    /// When it went back in progress after settling (a rollback or cleanup).
    pub undo_started: Option<DateTime<Utc>>,
    pub expected_seconds: Option<f64>,
    /// When the latest status changed (orders the failed rows).
    pub changed: u64,
    /// The root stack's own row (its status is the header, not a row).
    pub is_root: bool,
}

impl Row {
    /// `nested/Logical` or `Logical`.
    pub fn id(&self) -> String {
        match &self.nested {
            Some(n) => format!("{n}/{}", self.resource.logical_id),
            None => self.resource.logical_id.clone(),
        }
    }

    pub fn phase(&self) -> ResourcePhase {
        ResourcePhase::of(&self.resource.status)
    }

    /// How long it has been running at `now` (in progress) or ran (finished).
    pub fn running(&self, now: DateTime<Utc>) -> Option<Duration> {
        let start = self.started?;
        let end = match self.phase() {
            ResourcePhase::InProgress => now,
            _ => self.finished.unwrap_or(now),
        };
        (end - start).to_std().ok()
    }

    /// `Some(ratio)` when it is in progress and has been running more than
    /// [`SLOW_FACTOR`] times its expected duration.
    pub fn slow(&self, now: DateTime<Utc>) -> Option<f64> {
        let expected = self.expected_seconds.filter(|e| *e > 0.0)?;
        if self.phase() != ResourcePhase::InProgress {
            return None;
        }
        let ratio = self.running(now)?.as_secs_f64() / expected;
        (ratio > SLOW_FACTOR).then_some(ratio)
    }
}

/// How much longer the operation should take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eta {
    /// From the stream's `etaAt`.
    Remaining(Duration),
    /// `etaAt` has passed.
    Overdue,
    /// Estimated from the counts: time per completed resource so far.
    Estimated(Duration),
}

/// What one message changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The row at this index (of [`State::rows`]) changed.
    Resource(usize),
    /// A problem to show (already worded: `warning: … (retrying)` or `error: …`).
    Problem(String),
    /// A configuration error: watching cannot go on (exit 2).
    Fatal(String),
    /// The last problem is over.
    Recovered,
    /// The operation ended ([`State::complete`] is set).
    Complete,
    Nothing,
}

/// The state of the operation being watched.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub stack: String,
    pub summary: StackSummary,
    rows: Vec<Row>,
    /// `StackSummary.startedAt` / `expectedSeconds` / `etaAt`, when sent.
    pub started_at: Option<DateTime<Utc>>,
    pub expected_seconds: Option<f64>,
    pub eta_at: Option<DateTime<Utc>>,
    /// Times of the first and latest events of the operation.
    pub first_event: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
    /// The problem shown until `Recovered`.
    pub problem: Option<String>,
    pub complete: Option<DeploymentComplete>,
    changes: u64,
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let s = v?.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn seconds(v: Option<&Value>) -> Option<f64> {
    v?.as_f64().filter(|s| s.is_finite() && *s >= 0.0)
}

impl State {
    pub fn new(stack: &str) -> State {
        State {
            stack: stack.to_owned(),
            summary: StackSummary {
                name: stack.to_owned(),
                ..StackSummary::default()
            },
            ..State::default()
        }
    }

    /// Every resource seen, in first-seen order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Applies one message, given as its wire JSON (see the module docs).
    pub fn apply(&mut self, wire: &Value) -> Change {
        let Ok(msg) = serde_json::from_value::<TrackerMessage>(wire.clone()) else {
            return Change::Problem("warning: a message from the server could not be read".into());
        };
        match msg {
            TrackerMessage::ResourceUpdate(u) => {
                self.stack_timing(wire.get("stack"));
                self.summary = u.stack;
                self.first_event =
                    Some(self.first_event.map_or(u.timestamp, |t| t.min(u.timestamp)));
                self.last_event = Some(self.last_event.map_or(u.timestamp, |t| t.max(u.timestamp)));
                self.changes += 1;
                let r = wire.get("resource");
                let started_at = time(r.and_then(|r| r.get("startedAt")));
                let finished_at = time(r.and_then(|r| r.get("finishedAt")));
                let expected = seconds(r.and_then(|r| r.get("expectedSeconds")));
                let is_root = u.nested_stack.is_none()
                    && u.resource.logical_id == self.stack
                    && u.resource.resource_type == stackpulse_cfn::events::STACK_TYPE;
                let index = match self.rows.iter().position(|row| {
                    row.nested == u.nested_stack && row.resource.logical_id == u.resource.logical_id
                }) {
                    Some(i) => i,
                    None => {
                        self.rows.push(Row {
                            nested: u.nested_stack.clone(),
                            resource: u.resource.clone(),
                            at: u.timestamp,
                            started: None,
                            finished: None,
                            settled: None,
                            undo_started: None,
                            expected_seconds: None,
                            changed: 0,
                            is_root,
                        });
                        self.rows.len() - 1
                    }
                };
                let row = &mut self.rows[index];
                row.resource = u.resource;
                row.at = u.timestamp;
                row.changed = self.changes;
                match row.phase() {
                    ResourcePhase::InProgress => {
                        if row.started.is_none() {
                            row.started = Some(u.timestamp);
                        }
                        if row.settled.is_some() && row.undo_started.is_none() {
                            row.undo_started = Some(u.timestamp);
                        }
                        row.finished = None;
                    }
                    ResourcePhase::Completed | ResourcePhase::Failed => {
                        row.finished = Some(u.timestamp);
                        if row.started.is_none() {
                            row.started = Some(u.timestamp);
                        }
                        if row.settled.is_some() && row.undo_started.is_none() {
                            // Undone without an in-progress event seen.
                            row.undo_started = Some(u.timestamp);
                        }
                        if row.settled.is_none() {
                            row.settled = Some((
                                finished_at.unwrap_or(u.timestamp),
                                row.resource.status.clone(),
                                row.resource.status_reason.clone(),
                            ));
                        }
                    }
                    ResourcePhase::Other => {}
                }
                if started_at.is_some() {
                    row.started = started_at;
                }
                if finished_at.is_some() {
                    row.finished = finished_at;
                }
                if expected.is_some() {
                    row.expected_seconds = expected;
                }
                Change::Resource(index)
            }
            TrackerMessage::DeploymentComplete(d) => {
                self.stack_timing(wire.get("stack"));
                self.summary = d.stack.clone();
                self.problem = None;
                self.complete = Some(d);
                Change::Complete
            }
            // A configuration error (credentials, region, access denied) does not
            // go away by waiting.
            TrackerMessage::Problem(p) if p.code.is_configuration() => {
                Change::Fatal(format!("cannot track {}: {}", self.stack, p.message))
            }
            TrackerMessage::Problem(p) => self.problem(&p.message, p.retrying),
            TrackerMessage::Error(e) => self.problem(&e.message, e.retrying),
            TrackerMessage::Recovered(_) => match self.problem.take() {
                Some(_) => Change::Recovered,
                None => Change::Nothing,
            },
            TrackerMessage::Snapshot(_) => Change::Nothing,
        }
    }

    fn problem(&mut self, message: &str, retrying: bool) -> Change {
        let text = if retrying {
            format!("warning: {message} (retrying)")
        } else {
            format!("error: {message}")
        };
        self.problem = Some(text.clone());
        Change::Problem(text)
    }

    fn stack_timing(&mut self, stack: Option<&Value>) {
        let Some(s) = stack else { return };
        if let Some(t) = time(s.get("startedAt")) {
            self.started_at = Some(t);
        }
        if let Some(e) = seconds(s.get("expectedSeconds")) {
            self.expected_seconds = Some(e);
        }
        if let Some(t) = time(s.get("etaAt")) {
            self.eta_at = Some(t);
        }
    }

    /// The resources to show in the compact view: failed ones first (in the
    /// order they failed), then those in progress (longest running first). The
    /// root stack's own row is never among them.
    pub fn active(&self) -> Vec<&Row> {
        let mut failed: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.is_root && r.phase() == ResourcePhase::Failed)
            .collect();
        failed.sort_by_key(|r| r.changed);
        let mut moving = self.in_progress();
        moving.sort_by_key(|r| r.started);
        failed.extend(moving);
        failed
    }

    /// Resources in progress (not the root stack's own row), in first-seen order.
    pub fn in_progress(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| !r.is_root && r.phase() == ResourcePhase::InProgress)
            .collect()
    }

    /// When the operation started: `startedAt` when sent, else its first event.
    pub fn started(&self) -> Option<DateTime<Utc>> {
        self.started_at.or(self.first_event)
    }

    /// How long the operation has been running at `now`.
    pub fn elapsed(&self, now: DateTime<Utc>) -> Option<Duration> {
        let start = self.started()?;
        Some((now - start).to_std().unwrap_or_default())
    }

    /// The ETA: from `etaAt` when sent, else `elapsed × remaining / completed`
    /// once at least one resource completed; `None` when it cannot be told.
    pub fn eta(&self, now: DateTime<Utc>) -> Option<Eta> {
        if self.complete.is_some() {
            return None;
        }
        if let Some(at) = self.eta_at {
            return Some(match (at - now).to_std() {
                Ok(d) if !d.is_zero() => Eta::Remaining(d),
                _ => Eta::Overdue,
            });
        }
        let s = &self.summary;
        if s.completed_resources == 0 || s.total_resources <= s.completed_resources {
            return None;
        }
        let elapsed = self.elapsed(now)?;
        let remaining = f64::from(s.total_resources - s.completed_resources);
        let per = elapsed.as_secs_f64() / f64::from(s.completed_resources);
        Duration::try_from_secs_f64(per * remaining)
            .ok()
            .map(Eta::Estimated)
    }
}

/// `45s`, `4m12s`, `1h03m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use stackpulse_cfn::ResourceUpdate;

    pub fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0)
            .single()
            .unwrap_or_default()
    }

    /// The wire JSON of a resource update at `sec` seconds after [`t0`].
    pub fn update(id: &str, status: &str, sec: i64, completed: u32, total: u32) -> Value {
        let msg = TrackerMessage::ResourceUpdate(ResourceUpdate {
            timestamp: t0() + chrono::Duration::seconds(sec),
            resource: ResourceSummary {
                logical_id: id.into(),
                resource_type: if id == "s" {
                    stackpulse_cfn::events::STACK_TYPE.into()
                } else {
                    "AWS::S3::Bucket".into()
                },
                status: status.into(),
                physical_id: String::new(),
                status_reason: if status.ends_with("_FAILED") {
                    "boom".into()
                } else {
                    String::new()
                },
                progress: 0,
                ..ResourceSummary::default()
            },
            stack: StackSummary {
                name: "s".into(),
                status: "CREATE_IN_PROGRESS".into(),
                total_resources: total,
                completed_resources: completed,
                ..StackSummary::default()
            },
            nested_stack: None,
            event_id: String::new(),
        });
        serde_json::to_value(&msg).unwrap_or_default()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn compact_rows_are_failed_then_in_progress_without_the_stack() {
        let mut s = State::new("s");
        for (id, st, sec) in [
            ("s", "CREATE_IN_PROGRESS", 0),
            ("A", "CREATE_IN_PROGRESS", 1),
            ("B", "CREATE_IN_PROGRESS", 2),
            ("C", "CREATE_IN_PROGRESS", 3),
            ("A", "CREATE_COMPLETE", 4),
            ("C", "CREATE_FAILED", 5),
        ] {
            assert!(matches!(
                s.apply(&update(id, st, sec, 1, 3)),
                Change::Resource(_)
            ));
        }
        let ids: Vec<String> = s.active().iter().map(|r| r.id()).collect();
        assert_eq!(ids, ["C", "B"]);
        assert_eq!(s.rows().len(), 4);
        let c = &s.rows()[3];
        assert_eq!(c.started, Some(t0() + chrono::Duration::seconds(3)));
        assert_eq!(c.finished, Some(t0() + chrono::Duration::seconds(5)));
        assert_eq!(
            c.running(t0() + chrono::Duration::seconds(100)),
            Some(secs(2))
        );
    }

    #[test]
    fn eta_falls_back_to_the_counts() {
        let mut s = State::new("s");
        s.apply(&update("s", "CREATE_IN_PROGRESS", 0, 0, 4));
        assert_eq!(
            s.eta(t0() + chrono::Duration::seconds(10)),
            None,
            "nothing done yet"
        );
        s.apply(&update("A", "CREATE_COMPLETE", 10, 1, 4));
        // 10 s for one resource, three to go.
        assert_eq!(
            s.eta(t0() + chrono::Duration::seconds(10)),
            Some(Eta::Estimated(secs(30)))
        );
        assert_eq!(
            s.elapsed(t0() + chrono::Duration::seconds(70)),
            Some(secs(70))
        );
    }

    #[test]
    fn timing_fields_are_used_when_present() {
        let mut s = State::new("s");
        let mut v = update("A", "CREATE_IN_PROGRESS", 50, 0, 2);
        v["resource"]["startedAt"] = Value::from("2026-01-02T03:00:20.000Z");
        v["resource"]["expectedSeconds"] = Value::from(10);
        v["stack"]["startedAt"] = Value::from("2026-01-02T02:59:00.000Z");
        v["stack"]["etaAt"] = Value::from("2026-01-02T03:02:00.000Z");
        s.apply(&v);
        let now = t0() + chrono::Duration::seconds(60);
        let a = &s.rows()[0];
        assert_eq!(a.started, Some(t0() + chrono::Duration::seconds(20)));
        // Running 40 s against 10 expected: flagged.
        assert_eq!(a.slow(now), Some(4.0));
        assert_eq!(
            a.slow(t0() + chrono::Duration::seconds(35)),
            None,
            "1.5x is not slow"
        );
        assert_eq!(s.elapsed(now), Some(secs(120)));
        assert_eq!(s.eta(now), Some(Eta::Remaining(secs(60))));
        assert_eq!(
            s.eta(t0() + chrono::Duration::seconds(600)),
            Some(Eta::Overdue)
        );
        let mut done = update("A", "CREATE_COMPLETE", 70, 1, 2);
        done["resource"]["finishedAt"] = Value::from("2026-01-02T03:01:05.000Z");
        s.apply(&done);
        assert_eq!(s.rows()[0].running(now), Some(secs(45)));
        assert_eq!(s.rows()[0].slow(now), None, "finished rows are not flagged");
    }

    #[test]
    fn problems_are_worded_and_cleared() {
        let mut s = State::new("s");
        let p = serde_json::json!({"type": "error", "code": "throttled", "message": "Rate exceeded", "retrying": true});
        assert_eq!(
            s.apply(&p),
            Change::Problem("warning: Rate exceeded (retrying)".into())
        );
        assert_eq!(
            s.apply(&serde_json::json!({"type": "recovered", "code": "throttled"})),
            Change::Recovered
        );
        assert_eq!(s.problem, None);
        let fatal = serde_json::json!({"type": "error", "code": "credentials", "message": "no credentials", "retrying": true});
        assert_eq!(
            s.apply(&fatal),
            Change::Fatal("cannot track s: no credentials".into())
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(secs(45)), "45s");
        assert_eq!(human(secs(252)), "4m12s");
        assert_eq!(human(secs(3780)), "1h03m");
    }
}
