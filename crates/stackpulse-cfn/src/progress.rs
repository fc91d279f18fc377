//! Progress: the latest status of every resource of one stack, and the counts and
//! percentage derived from it.
//!
//! Data flow: `tracker` seeds a [`ResourceTable`] with the expected number of
//! resources (`GetTemplateSummary`/`ListStackResources`) and, for an update, with the
//! resources' current statuses (untouched resources are done); then it applies each
//! event of the operation in order. The table keeps one entry per logical id, so a
//! resource counts once whatever the number of its events, and counts follow each
//! resource's *latest* status (a rollback moves a resource from completed back to in
//! progress). The stack's own events are not resources and are ignored here.
//!
//! `total = max(expected, resources seen)`, so `completed <= total` always holds and
//! `progress = floor(100 * completed / total)` never exceeds 100.
//!
//! Cleanup phases (`*_CLEANUP_IN_PROGRESS`, the caller says): a `DELETE_*` event for
//! a physical id other than the row's is the deletion of a *replaced* resource. It
//! never overwrites the live row ([`Applied::Cleanup`] hands it back to be shown as
//! it is). A `DELETE_FAILED` of the row's own resource during cleanup (a resource
//! removed from the template that could not be deleted; CloudFormation skips it and
//! the operation succeeds) is a warning: it counts as done, not failed. Events with
//! no status (hook-only events) change nothing ([`Applied::NoStatus`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::events::Event;
use crate::status::{stack_phase, ResourcePhase, StackPhase};
use crate::wire::{ResourceSummary, StackSummary};

/// The latest known state of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub physical_id: String,
    pub reason: String,
    /// Time of the event that set this status (`None` when seeded from a listing).
    pub updated: Option<DateTime<Utc>>,
}

/// Completed / in progress / failed counts of one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u32,
    pub completed: u32,
    pub in_progress: u32,
    pub failed: u32,
    pub progress: u8,
}

/// Resources of one stack, in the order they were first met.
#[derive(Debug, Clone, Default)]
pub struct ResourceTable {
    order: Vec<String>,
    by_id: HashMap<String, ResourceState>,
    expected: u32,
    /// Rows whose `DELETE_FAILED` came during a cleanup: skipped, counted as done.
    skipped_deletes: HashSet<String>,
}

/// What [`ResourceTable::apply`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The stack's own event: not a resource, nothing changed.
    Stack,
    /// The event has no status: nothing changed.
    NoStatus,
    /// The row of the event's logical id now holds it.
    Row,
    /// The deletion of a replaced resource during a cleanup: the row was left as
    /// it is; this is the old resource's state, to be shown as such.
    Cleanup(ResourceState),
}

/// `true` for a stack status of a cleanup phase (after an update or its rollback).
pub fn is_cleanup_phase(stack_status: &str) -> bool {
    stack_status.ends_with("_CLEANUP_IN_PROGRESS")
}

impl ResourceTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the expected number of resources (never lowers it).
    pub fn expect_at_least(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.expected = self.expected.max(n);
    }

    /// Sets the expected number of resources (the stack's actual resources once the
    /// operation succeeded; resources seen still count).
    pub fn set_expected(&mut self, n: usize) {
        self.expected = u32::try_from(n).unwrap_or(u32::MAX);
    }

    /// Records a resource state (from an event or a listing).
    pub fn set(&mut self, r: ResourceState) {
        if !self.by_id.contains_key(&r.logical_id) {
            self.order.push(r.logical_id.clone());
        }
        self.skipped_deletes.remove(&r.logical_id);
        self.by_id.insert(r.logical_id.clone(), r);
    }

    /// What exists once the operation succeeded: every listed resource's status and
    /// physical id overwrite its row (reason and time of the last event are kept).
    pub fn reconcile(&mut self, listed: Vec<ResourceState>) {
        for r in listed {
            match self.by_id.get_mut(&r.logical_id) {
                Some(row) if row.status != r.status || row.physical_id != r.physical_id => {
                    row.status = r.status;
                    row.physical_id = r.physical_id;
                    self.skipped_deletes.remove(&r.logical_id);
                }
                Some(_) => {}
                None => self.set(r),
            }
        }
    }

    /// Applies one event of this stack; `stack_status` is the stack's own status
    /// where the event stands (it decides whether this is a cleanup phase).
    pub fn apply(&mut self, e: &Event, stack_status: &str) -> Applied {
        if e.is_stack_event() {
            return Applied::Stack;
        }
        if e.status.is_empty() {
            return Applied::NoStatus;
        }
        let cleanup = is_cleanup_phase(stack_status) && e.status.starts_with("DELETE_");
        if cleanup {
            if let Some(row) = self.by_id.get(&e.logical_id) {
                if !row.physical_id.is_empty()
                    && !e.physical_id.is_empty()
                    && row.physical_id != e.physical_id
                {
                    return Applied::Cleanup(ResourceState {
                        logical_id: e.logical_id.clone(),
                        resource_type: e.resource_type.clone(),
                        status: e.status.clone(),
                        physical_id: e.physical_id.clone(),
                        reason: e.reason.clone(),
                        updated: Some(e.timestamp),
                    });
                }
            }
        }
        let physical_id = if e.physical_id.is_empty() {
            // Keep the id a previous event gave (a failed create has none).
            self.by_id
                .get(&e.logical_id)
                .map(|r| r.physical_id.clone())
                .unwrap_or_default()
        } else {
            e.physical_id.clone()
        };
        self.set(ResourceState {
            logical_id: e.logical_id.clone(),
            resource_type: e.resource_type.clone(),
            status: e.status.clone(),
            physical_id,
            reason: e.reason.clone(),
            updated: Some(e.timestamp),
        });
        if cleanup && e.status == "DELETE_FAILED" {
            self.skipped_deletes.insert(e.logical_id.clone());
        }
        Applied::Row
    }

    /// `true` when the row's `DELETE_FAILED` came during a cleanup (a warning).
    pub fn is_skipped_delete(&self, logical_id: &str) -> bool {
        self.skipped_deletes.contains(logical_id)
    }

    pub fn get(&self, logical_id: &str) -> Option<&ResourceState> {
        self.by_id.get(logical_id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every resource, in first-met order.
    pub fn iter(&self) -> impl Iterator<Item = &ResourceState> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in self.by_id.values() {
            if self.skipped_deletes.contains(&r.logical_id) {
                c.completed += 1;
                continue;
            }
            match ResourcePhase::of(&r.status) {
                ResourcePhase::Completed => c.completed += 1,
                ResourcePhase::InProgress => c.in_progress += 1,
                ResourcePhase::Failed => c.failed += 1,
                ResourcePhase::Other => {}
            }
        }
        let seen = u32::try_from(self.by_id.len()).unwrap_or(u32::MAX);
        c.total = self.expected.max(seen);
        c.progress = percent(c.completed, c.total);
        c
    }

    /// The stack summary, for a stack of this `name` in `status`.
    pub fn summary(&self, name: &str, status: &str) -> StackSummary {
        let c = self.counts();
        // A stack with no resources that succeeded is done.
        let progress = if c.total == 0 && stack_phase(status) == StackPhase::Succeeded {
            100
        } else {
            c.progress
        };
        StackSummary {
            name: name.to_string(),
            status: status.to_string(),
            total_resources: c.total,
            completed_resources: c.completed,
            in_progress_resources: c.in_progress,
            failed_resources: c.failed,
            progress,
            ..StackSummary::default()
        }
    }

    /// A resource as a client sees it, with the given stack progress.
    pub fn resource_summary(r: &ResourceState, progress: u8) -> ResourceSummary {
        ResourceSummary {
            logical_id: r.logical_id.clone(),
            resource_type: r.resource_type.clone(),
            status: r.status.clone(),
            physical_id: r.physical_id.clone(),
            status_reason: r.reason.clone(),
            progress,
            ..ResourceSummary::default()
        }
    }
}

/// `floor(100 * completed / total)`, clamped to 0..=100; 0 when `total` is 0.
pub fn percent(completed: u32, total: u32) -> u8 {
    if total == 0 {
        return 0;
    }
    let p = (u64::from(completed) * 100) / u64::from(total);
    u8::try_from(p.min(100)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::ev;

    #[test]
    fn floor_and_clamp() {
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(5, 3), 100);
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(999, 1000), 99);
    }

    #[test]
    fn each_logical_id_counts_once() {
        let mut t = ResourceTable::new();
        t.expect_at_least(3);
        assert_eq!(
            t.apply(&ev("s", "app", "CREATE_IN_PROGRESS", 0), ""),
            Applied::Stack
        );
        t.apply(&ev("1", "A", "CREATE_IN_PROGRESS", 1), "");
        t.apply(&ev("2", "A", "CREATE_IN_PROGRESS", 1), ""); // "Resource creation Initiated"
        t.apply(&ev("3", "A", "CREATE_COMPLETE", 2), "");
        t.apply(&ev("4", "A", "CREATE_COMPLETE", 2), ""); // a duplicate-looking second event
        t.apply(&ev("5", "B", "CREATE_IN_PROGRESS", 2), "");
        let c = t.counts();
        assert_eq!(
            (c.total, c.completed, c.in_progress, c.failed, c.progress),
            (3, 1, 1, 0, 33)
        );
        t.apply(&ev("6", "B", "CREATE_COMPLETE", 3), "");
        t.apply(&ev("7", "C", "CREATE_COMPLETE", 3), "");
        assert_eq!(t.counts().progress, 100);
    }

    #[test]
    fn more_resources_than_expected_never_shows_5_of_3() {
        let mut t = ResourceTable::new();
        t.expect_at_least(3);
        for (i, id) in ["A", "B", "C", "D", "E"].iter().enumerate() {
            t.apply(&ev(&format!("{i}"), id, "CREATE_COMPLETE", 1), "");
        }
        let s = t.summary("app", "CREATE_IN_PROGRESS");
        assert_eq!(
            (s.completed_resources, s.total_resources, s.progress),
            (5, 5, 100)
        );
    }

    #[test]
    fn rollback_counts_follow_latest_status() {
        let mut t = ResourceTable::new();
        t.expect_at_least(2);
        t.apply(&ev("1", "A", "CREATE_COMPLETE", 1), "");
        t.apply(&ev("2", "B", "CREATE_FAILED", 2), "");
        let c = t.counts();
        assert_eq!((c.completed, c.failed, c.progress), (1, 1, 50));
        t.apply(&ev("3", "A", "DELETE_IN_PROGRESS", 3), "");
        let c = t.counts();
        assert_eq!((c.completed, c.in_progress, c.failed), (0, 1, 1));
        t.apply(&ev("4", "A", "DELETE_COMPLETE", 4), "");
        t.apply(&ev("5", "B", "DELETE_COMPLETE", 4), "");
        let c = t.counts();
        assert_eq!(
            (c.completed, c.in_progress, c.failed, c.total),
            (2, 0, 0, 2)
        );
        // physical id kept when a later event has none
        let mut e = ev("6", "C", "CREATE_IN_PROGRESS", 5);
        e.physical_id = "p".into();
        t.apply(&e, "");
        let mut e = ev("7", "C", "CREATE_FAILED", 6);
        e.physical_id.clear();
        t.apply(&e, "");
        assert_eq!(t.get("C").map(|r| r.physical_id.as_str()), Some("p"));
    }

    /// An update that replaces A: the cleanup deletes the old A, whose events
    /// must not overwrite the live row; a removed resource that could not be
    /// deleted is skipped, a warning, not a failure.
    #[test]
    fn replacement_cleanup_keeps_the_live_row() {
        let mut t = ResourceTable::new();
        t.expect_at_least(2);
        let at = |id: &str, logical: &str, status: &str, phys: &str| {
            let mut e = ev(id, logical, status, 1);
            e.physical_id = phys.into();
            e
        };
        t.apply(
            &at("0", "A", "UPDATE_COMPLETE", "old-a"),
            "UPDATE_IN_PROGRESS",
        );
        t.apply(&at("1", "B", "UPDATE_COMPLETE", "b"), "UPDATE_IN_PROGRESS");
        t.apply(
            &at("2", "A", "UPDATE_IN_PROGRESS", "new-a"),
            "UPDATE_IN_PROGRESS",
        );
        t.apply(
            &at("3", "A", "UPDATE_COMPLETE", "new-a"),
            "UPDATE_IN_PROGRESS",
        );
        let cleanup = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS";
        match t.apply(&at("4", "A", "DELETE_IN_PROGRESS", "old-a"), cleanup) {
            Applied::Cleanup(old) => {
                assert_eq!(
                    (old.status.as_str(), old.physical_id.as_str()),
                    ("DELETE_IN_PROGRESS", "old-a")
                )
            }
            other => panic!("expected a cleanup: {other:?}"),
        }
        t.apply(&at("5", "A", "DELETE_COMPLETE", "old-a"), cleanup);
        let a = t.get("A").expect("A");
        assert_eq!(
            (a.status.as_str(), a.physical_id.as_str()),
            ("UPDATE_COMPLETE", "new-a")
        );
        // B was removed from the template and could not be deleted: skipped.
        assert_eq!(
            t.apply(&at("6", "B", "DELETE_FAILED", "b"), cleanup),
            Applied::Row
        );
        assert!(t.is_skipped_delete("B"));
        let c = t.counts();
        assert_eq!((c.completed, c.failed, c.progress), (2, 0, 100));
        // Outside a cleanup a DELETE_FAILED is a failure.
        t.apply(
            &at("7", "C", "DELETE_FAILED", "c"),
            "UPDATE_ROLLBACK_IN_PROGRESS",
        );
        assert_eq!(t.counts().failed, 1);
    }

    #[test]
    fn events_without_a_status_change_nothing() {
        let mut t = ResourceTable::new();
        t.apply(&ev("1", "A", "CREATE_COMPLETE", 1), "");
        assert_eq!(t.apply(&ev("2", "A", "", 2), ""), Applied::NoStatus);
        assert_eq!(
            t.get("A").map(|r| r.status.as_str()),
            Some("CREATE_COMPLETE")
        );
    }

    #[test]
    fn reconcile_takes_the_listing() {
        let mut t = ResourceTable::new();
        let mut e = ev("1", "A", "DELETE_COMPLETE", 1);
        e.physical_id = "old".into();
        t.apply(&e, "");
        let listed = |l: &str, st: &str, p: &str| ResourceState {
            logical_id: l.into(),
            resource_type: "AWS::S3::Bucket".into(),
            status: st.into(),
            physical_id: p.into(),
            reason: String::new(),
            updated: None,
        };
        t.reconcile(vec![
            listed("A", "UPDATE_COMPLETE", "new"),
            listed("B", "CREATE_COMPLETE", "b"),
        ]);
        let a = t.get("A").expect("A");
        assert_eq!(
            (a.status.as_str(), a.physical_id.as_str()),
            ("UPDATE_COMPLETE", "new")
        );
        assert_eq!(
            a.updated,
            Some(e.timestamp),
            "the last event's time is kept"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn empty_stack_that_succeeded_is_complete() {
        let t = ResourceTable::new();
        assert_eq!(t.summary("app", "CREATE_COMPLETE").progress, 100);
        assert_eq!(t.summary("app", "CREATE_IN_PROGRESS").progress, 0);
    }
}
