//! Timing and estimates: when each resource of the current operation started and
//! ended, how long it usually takes, and when the operation should end.
//!
//! Data flow:
//! 1. On the first poll of a stack the tracker reads the pages of `DescribeStackEvents`
//!    anyway; every event older than the current operation goes into a [`History`]
//!    (plus at most [`HISTORY_PAGES`] further pages, until [`HISTORY_OPERATIONS`]
//!    earlier operations have begun in it). [`Estimates::learn`] splits it into
//!    operations (at the stack's own events that start one) and takes, over the
//!    last [`HISTORY_OPERATIONS`] operations, the median duration of each logical
//!    resource per action (create, update, delete: from its first `<ACTION>_IN_PROGRESS`
//!    to its `<ACTION>_COMPLETE`) and of each kind of successful operation.
//! 2. Each event of the current operation goes to [`Timing::observe`], which keeps the
//!    first `*_IN_PROGRESS` and the terminal event of every resource.
//! 3. [`Timing::annotate_resource`] and [`Timing::annotate_stack`] fill the optional
//!    `startedAt`, `finishedAt`, `expectedSeconds` and `etaAt` of the wire summaries.
//!
//! The ETA is the latest of `startedAt + expectedSeconds` over the stack itself and
//! its unfinished resources with an estimate, and never before the latest event: an
//! operation that runs late has its ETA pushed forward by each new event. Without
//! any estimate there is no ETA.
//!
//! Pure: no I/O, no clock; the tracker drives it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::events::Event;
use crate::status::{stack_phase, starts_operation, ResourcePhase, StackPhase};
use crate::wire::{ResourceSummary, Seconds, StackSummary};

/// Earlier operations an estimate is taken from (the newest ones).
pub const HISTORY_OPERATIONS: usize = 3;
/// Pages of `DescribeStackEvents` read beyond the current operation, at most.
pub const HISTORY_PAGES: usize = 5;

/// What an operation does to a resource (the first word of its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Update,
    Delete,
    Import,
}

impl Action {
    /// `UPDATE_IN_PROGRESS` → `Update`; rollbacks and unknown words → `None`.
    pub fn of(status: &str) -> Option<Action> {
        match status.split('_').next() {
            Some("CREATE") => Some(Action::Create),
            Some("UPDATE") => Some(Action::Update),
            Some("DELETE") => Some(Action::Delete),
            Some("IMPORT") => Some(Action::Import),
            _ => None,
        }
    }

    fn complete(self) -> &'static str {
        match self {
            Action::Create => "CREATE_COMPLETE",
            Action::Update => "UPDATE_COMPLETE",
            Action::Delete => "DELETE_COMPLETE",
            Action::Import => "IMPORT_COMPLETE",
        }
    }
}

/// Events of a stack older than the operation being tracked, newest first as read.
#[derive(Debug, Default)]
pub struct History {
    events: Vec<Event>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one page (newest first), skipping events of the current operation.
    pub fn offer(&mut self, page: &[Event], current: &HashSet<&str>) {
        self.events.extend(
            page.iter()
                .filter(|e| !current.contains(e.id.as_str()))
                .cloned(),
        );
    }

    /// Earlier operations whose start is in the history so far.
    pub fn operations_begun(&self) -> usize {
        self.events.iter().filter(|e| starts(e)).count()
    }

    /// `true` while fewer than [`HISTORY_OPERATIONS`] earlier operations are known.
    pub fn wants_more(&self) -> bool {
        self.operations_begun() < HISTORY_OPERATIONS
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

fn starts(e: &Event) -> bool {
    e.is_stack_event() && starts_operation(&e.status)
}

/// Median durations learned from earlier operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimates {
    resources: HashMap<(String, Action), Seconds>,
    stacks: HashMap<Action, Seconds>,
}

/// One earlier operation's durations.
#[derive(Debug, Default)]
struct Sample {
    resources: Vec<((String, Action), u64)>,
    stack: Option<(Action, u64)>,
}

impl Estimates {
    /// Learns from a history (see the module docs). Events before the oldest start
    /// (an operation cut by the page limit) are ignored.
    pub fn learn(history: &History) -> Estimates {
        let mut ops: Vec<Vec<&Event>> = Vec::new();
        for e in history.events.iter().rev() {
            if starts(e) {
                ops.push(vec![e]);
            } else if let Some(op) = ops.last_mut() {
                op.push(e);
            }
        }
        let skip = ops.len().saturating_sub(HISTORY_OPERATIONS);
        let samples: Vec<Sample> = ops.iter().skip(skip).map(|op| sample(op)).collect();
        let mut resources: HashMap<(String, Action), Vec<u64>> = HashMap::new();
        let mut stacks: HashMap<Action, Vec<u64>> = HashMap::new();
        for s in samples {
            for (k, ms) in s.resources {
                resources.entry(k).or_default().push(ms);
            }
            if let Some((a, ms)) = s.stack {
                stacks.entry(a).or_default().push(ms);
            }
        }
        Estimates {
            resources: resources
                .into_iter()
                .filter_map(|(k, v)| median(v).map(|m| (k, m)))
                .collect(),
            stacks: stacks
                .into_iter()
                .filter_map(|(k, v)| median(v).map(|m| (k, m)))
                .collect(),
        }
    }

    /// Usual duration of `logical_id` for `action`.
    pub fn resource(&self, logical_id: &str, action: Action) -> Option<Seconds> {
        self.resources
            .get(&(logical_id.to_string(), action))
            .copied()
    }

    /// Usual duration of a successful operation of this kind.
    pub fn stack(&self, action: Action) -> Option<Seconds> {
        self.stacks.get(&action).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.stacks.is_empty()
    }
}

/// Durations of one operation (oldest event first, its start event first).
fn sample(op: &[&Event]) -> Sample {
    let mut out = Sample::default();
    let Some(first) = op.first() else {
        return out;
    };
    if let Some(action) = Action::of(&first.status) {
        let end = op
            .iter()
            .skip(1)
            .find(|e| e.is_stack_event() && stack_phase(&e.status) != StackPhase::InProgress);
        if let Some(end) = end {
            if stack_phase(&end.status) == StackPhase::Succeeded {
                out.stack = Some((action, millis(first.timestamp, end.timestamp)));
            }
        }
    }
    // (logical id) → (action, start) of its first `*_IN_PROGRESS`.
    let mut open: HashMap<&str, (Action, DateTime<Utc>)> = HashMap::new();
    let mut done: HashSet<&str> = HashSet::new();
    for e in op.iter().filter(|e| !e.is_stack_event()) {
        let id = e.logical_id.as_str();
        if done.contains(id) {
            continue;
        }
        match open.get(id) {
            None => {
                if e.status.ends_with("_IN_PROGRESS") {
                    if let Some(a) = Action::of(&e.status) {
                        open.insert(id, (a, e.timestamp));
                    }
                }
            }
            Some(&(a, start)) => {
                if e.status == a.complete() {
                    out.resources
                        .push(((id.to_string(), a), millis(start, e.timestamp)));
                    done.insert(id);
                } else if ResourcePhase::of(&e.status) == ResourcePhase::Failed {
                    // A failed attempt says nothing about the usual time.
                    done.insert(id);
                }
            }
        }
    }
    out
}

fn millis(a: DateTime<Utc>, b: DateTime<Utc>) -> u64 {
    u64::try_from((b - a).num_milliseconds()).unwrap_or(0)
}

/// The median (the mean of the two middle values for an even count).
fn median(mut v: Vec<u64>) -> Option<Seconds> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        v[n / 2 - 1] / 2 + v[n / 2] / 2 + (v[n / 2 - 1] % 2 + v[n / 2] % 2) / 2
    };
    Some(Seconds::from_millis(m))
}

/// Start and end of one resource in the current operation.
#[derive(Debug, Clone, Copy, Default)]
struct ResourceTiming {
    started: Option<DateTime<Utc>>,
    action: Option<Action>,
    finished: Option<DateTime<Utc>>,
}

/// The timing of one stack's current operation. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    estimates: Estimates,
    /// The operation's kind (from its first stack event, else from the scan).
    action: Option<Action>,
    started: Option<DateTime<Utc>>,
    last_event: Option<DateTime<Utc>>,
    ended: bool,
    resources: HashMap<String, ResourceTiming>,
}

impl Timing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets what earlier operations taught, and the operation's kind as the scan
    /// found it (used until a stack event names it).
    pub fn set_estimates(&mut self, estimates: Estimates, action: Option<Action>) {
        self.estimates = estimates;
        if self.action.is_none() {
            self.action = action;
        }
    }

    /// Takes one event of the operation (oldest first).
    pub fn observe(&mut self, e: &Event) {
        self.started.get_or_insert(e.timestamp);
        self.last_event = Some(self.last_event.map_or(e.timestamp, |t| t.max(e.timestamp)));
        if e.is_stack_event() {
            if starts_operation(&e.status) {
                self.action = Action::of(&e.status).or(self.action);
            }
            self.ended = stack_phase(&e.status).is_terminal();
            return;
        }
        let r = self.resources.entry(e.logical_id.clone()).or_default();
        match ResourcePhase::of(&e.status) {
            ResourcePhase::InProgress => {
                if r.started.is_none() {
                    r.started = Some(e.timestamp);
                    r.action = Action::of(&e.status);
                }
                // Moving again (a rollback after it completed).
                r.finished = None;
            }
            ResourcePhase::Completed | ResourcePhase::Failed => r.finished = Some(e.timestamp),
            ResourcePhase::Other => {}
        }
    }

    fn expected(&self, logical_id: &str, r: &ResourceTiming) -> Option<Seconds> {
        self.estimates.resource(logical_id, r.action?)
    }

    /// Fills `startedAt`, `finishedAt` and `expectedSeconds` of a resource of this
    /// stack (left absent when unknown).
    pub fn annotate_resource(&self, s: &mut ResourceSummary) {
        let Some(r) = self.resources.get(&s.logical_id) else {
            return;
        };
        s.started_at = r.started;
        s.finished_at = r.finished;
        s.expected_seconds = self.expected(&s.logical_id, r);
    }

    /// Fills `startedAt`, `expectedSeconds` and `etaAt` of this stack's summary.
    pub fn annotate_stack(&self, s: &mut StackSummary) {
        s.started_at = self.started;
        s.expected_seconds = self.action.and_then(|a| self.estimates.stack(a));
        s.eta_at = self.eta(s.expected_seconds);
    }

    fn eta(&self, stack_expected: Option<Seconds>) -> Option<DateTime<Utc>> {
        if self.ended {
            return None;
        }
        let from_stack = self
            .started
            .zip(stack_expected)
            .map(|(t, d)| t + d.as_duration());
        let from_resources = self.resources.iter().filter_map(|(id, r)| {
            if r.finished.is_some() {
                return None;
            }
            Some(r.started? + self.expected(id, r)?.as_duration())
        });
        let latest = from_stack.into_iter().chain(from_resources).max()?;
        Some(self.last_event.map_or(latest, |t| latest.max(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{at, ev};

    fn history(newest_first: Vec<Event>) -> History {
        let mut h = History::new();
        h.offer(&newest_first, &HashSet::new());
        h
    }

    /// Oldest first, reversed into a history: `ops` operations of an update where
    /// A takes `a[i]` s and B 10 s, each operation 100 s apart.
    fn updates(a: &[i64]) -> Vec<Event> {
        let mut v = Vec::new();
        for (i, d) in a.iter().enumerate() {
            let t = 100 * i as i64;
            let n = |k: &str| format!("{i}-{k}");
            v.push(ev(&n("s"), "app", "UPDATE_IN_PROGRESS", t));
            v.push(ev(&n("a1"), "A", "UPDATE_IN_PROGRESS", t + 1));
            v.push(ev(&n("b1"), "B", "UPDATE_IN_PROGRESS", t + 1));
            v.push(ev(&n("b2"), "B", "UPDATE_COMPLETE", t + 11));
            v.push(ev(&n("a2"), "A", "UPDATE_COMPLETE", t + 1 + d));
            v.push(ev(&n("e"), "app", "UPDATE_COMPLETE", t + 2 + d));
        }
        v.reverse();
        v
    }

    #[test]
    fn medians_per_resource_and_action_over_the_last_operations() {
        // Four updates: only the last three (A: 30, 20, 40) count.
        let h = history(updates(&[1000, 30, 20, 40]));
        assert_eq!(h.operations_begun(), 4);
        assert!(!h.wants_more());
        let est = Estimates::learn(&h);
        assert_eq!(
            est.resource("A", Action::Update),
            Some(Seconds::from_millis(30_000))
        );
        assert_eq!(
            est.resource("B", Action::Update),
            Some(Seconds::from_millis(10_000))
        );
        assert_eq!(est.resource("A", Action::Create), None);
        // The stack: 32, 22, 42 s.
        assert_eq!(
            est.stack(Action::Update),
            Some(Seconds::from_millis(32_000))
        );
        assert_eq!(est.stack(Action::Create), None);
    }

    #[test]
    fn even_counts_take_the_mean_of_the_middle_two() {
        let est = Estimates::learn(&history(updates(&[20, 25])));
        assert_eq!(
            est.resource("A", Action::Update),
            Some(Seconds::from_millis(22_500))
        );
        assert_eq!(median(vec![1, 2]), Some(Seconds::from_millis(1)));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn failures_rollbacks_and_cut_operations_teach_nothing() {
        let v = vec![
            // Newest first: a failed update with a rollback.
            ev("r3", "app", "UPDATE_ROLLBACK_COMPLETE", 60),
            ev("r2", "A", "UPDATE_COMPLETE", 58),
            ev("r1", "A", "UPDATE_IN_PROGRESS", 55),
            ev("f1", "A", "UPDATE_FAILED", 54),
            ev("s2", "B", "UPDATE_COMPLETE", 52),
            ev("s1", "B", "UPDATE_IN_PROGRESS", 51),
            ev("a1", "A", "UPDATE_IN_PROGRESS", 50),
            ev("u0", "app", "UPDATE_IN_PROGRESS", 49),
            // The end of an operation whose start is beyond the page limit.
            ev("c2", "C", "CREATE_COMPLETE", 10),
            ev("c1", "C", "CREATE_IN_PROGRESS", 5),
        ];
        let h = history(v);
        assert!(h.wants_more());
        let est = Estimates::learn(&h);
        assert_eq!(
            est.resource("A", Action::Update),
            None,
            "its attempt failed"
        );
        assert_eq!(
            est.resource("B", Action::Update),
            Some(Seconds::from_millis(1_000))
        );
        assert_eq!(est.resource("C", Action::Create), None);
        assert_eq!(est.stack(Action::Update), None, "the update failed");
    }

    #[test]
    fn history_skips_the_current_operation() {
        let page = vec![
            ev("now", "A", "UPDATE_IN_PROGRESS", 9),
            ev("old", "app", "CREATE_COMPLETE", 1),
        ];
        let mut h = History::new();
        h.offer(&page, &HashSet::from(["now"]));
        assert_eq!(h.len(), 1);
    }

    fn estimates() -> Estimates {
        Estimates::learn(&history(updates(&[30])))
    }

    #[test]
    fn timing_annotates_resources_and_the_eta() {
        let mut t = Timing::new();
        t.set_estimates(estimates(), Some(Action::Update));
        t.observe(&ev("1", "app", "UPDATE_IN_PROGRESS", 1000));
        t.observe(&ev("2", "A", "UPDATE_IN_PROGRESS", 1001));
        t.observe(&ev("3", "B", "UPDATE_IN_PROGRESS", 1002));
        let mut a = ResourceSummary {
            logical_id: "A".into(),
            ..ResourceSummary::default()
        };
        t.annotate_resource(&mut a);
        assert_eq!(a.started_at, Some(at(1001)));
        assert_eq!(a.finished_at, None);
        assert_eq!(a.expected_seconds, Some(Seconds::from_millis(30_000)));
        let mut s = StackSummary::default();
        t.annotate_stack(&mut s);
        assert_eq!(s.started_at, Some(at(1000)));
        assert_eq!(s.expected_seconds, Some(Seconds::from_millis(32_000)));
        // The stack's 1000 + 32 is the latest (A: 1001 + 30, B: 1002 + 10).
        assert_eq!(s.eta_at, Some(at(1032)));

        t.observe(&ev("4", "A", "UPDATE_COMPLETE", 1020));
        t.observe(&ev("5", "B", "UPDATE_COMPLETE", 1021));
        t.annotate_resource(&mut a);
        assert_eq!(a.finished_at, Some(at(1020)));
        t.annotate_stack(&mut s);
        assert_eq!(s.eta_at, Some(at(1032)), "the stack's own estimate remains");

        // Running late: the ETA is never before the latest event.
        t.observe(&ev("6", "C", "UPDATE_IN_PROGRESS", 1050));
        t.annotate_stack(&mut s);
        assert_eq!(s.eta_at, Some(at(1050)));

        t.observe(&ev("7", "app", "UPDATE_COMPLETE", 1060));
        t.annotate_stack(&mut s);
        assert_eq!(s.eta_at, None, "the operation ended");
        assert_eq!(s.expected_seconds, Some(Seconds::from_millis(32_000)));
    }

    #[test]
    fn no_history_no_estimates() {
        let mut t = Timing::new();
        t.observe(&ev("1", "app", "CREATE_IN_PROGRESS", 0));
        t.observe(&ev("2", "A", "CREATE_IN_PROGRESS", 1));
        let mut s = StackSummary::default();
        t.annotate_stack(&mut s);
        assert_eq!(
            (s.started_at, s.expected_seconds, s.eta_at),
            (Some(at(0)), None, None)
        );
        let mut r = ResourceSummary {
            logical_id: "A".into(),
            ..ResourceSummary::default()
        };
        t.annotate_resource(&mut r);
        assert_eq!((r.started_at, r.expected_seconds), (Some(at(1)), None));
        // A rollback reopens a finished resource.
        t.observe(&ev("3", "A", "CREATE_COMPLETE", 2));
        t.observe(&ev("4", "A", "DELETE_IN_PROGRESS", 3));
        t.annotate_resource(&mut r);
        assert_eq!((r.started_at, r.finished_at), (Some(at(1)), None));
    }
}
