//! Operation scoping: which of a stack's events belong to the operation being tracked.
//!
//! A stack's event history holds every operation since it was created (creates,
//! updates, rollbacks, an earlier failed update...). Only the current operation
//! matters. On the first poll the tracker feeds pages (newest first) to an
//! [`InitialScan`] until it says it has found where the operation begins; every
//! later event is newer and so in scope by construction.
//!
//! The boundary, in order of preference:
//! 1. `OperationId`: events whose id is among `DescribeStacks.LastOperations` (the
//!    operation and its rollback) are in scope; the first older event with another id
//!    ends the scan.
//! 2. The root stack's own event that starts an operation (`CREATE_IN_PROGRESS`,
//!    `UPDATE_IN_PROGRESS`, `DELETE_IN_PROGRESS`, `IMPORT_IN_PROGRESS`); rollbacks and
//!    cleanups do not start operations, so a rollback stays with the failed operation.
//! 3. Neither found in the whole history: events older than the stack's
//!    `LastUpdatedTime`/`CreationTime` are out.
//!
//! Two hardenings on top:
//! - When `LastOperations` lists only a rollback (a tracker that starts or takes over
//!   mid-rollback may see `[ROLLBACK]` alone), the scan crosses exactly one
//!   operation boundary, so the failed operation the rollback undoes (and its real
//!   `*_FAILED`) stays in scope, as CDK's `mostRecentDeploymentAttempt` does.
//! - [`ScopeHints::not_before`] is a hard time bound: the first event older than it
//!   ends the scan. A nested stack's first read is bounded by its parent's first event
//!   about it in this operation (as CDK bounds it by the parent event's time), so a
//!   child found through an UPDATE/DELETE never replays its previous operation, even
//!   when its own start event is not visible yet.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::events::Event;
use crate::status::starts_operation;

/// What `DescribeStacks` told us before the scan.
#[derive(Debug, Clone, Default)]
pub struct ScopeHints {
    /// `LastOperations[].OperationId` (empty when the API or endpoint has none).
    pub operation_ids: Vec<String>,
    /// `LastUpdatedTime`, else `CreationTime`.
    pub since: Option<DateTime<Utc>>,
    /// The stack status, to name the operation when no starting event is found.
    pub stack_status: String,
    /// `LastOperations[].OperationType` of the ids above (`ROLLBACK`,
    /// `UPDATE_STACK`...), in the same order; empty when unknown.
    pub operation_types: Vec<String>,
    /// Events older than this are out of scope and end the scan (server time).
    pub not_before: Option<DateTime<Utc>>,
}

impl ScopeHints {
    /// `true` when every hinted operation with a known type is a rollback (and at
    /// least one is): the operation it undoes must be scanned too.
    fn rollback_only(&self) -> bool {
        !self.operation_types.is_empty()
            && self.operation_types.iter().all(|t| t.contains("ROLLBACK"))
    }
}

/// The kind of operation being tracked; decides how progress is seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Create,
    Update,
    Delete,
    Import,
    Unknown,
}

impl OperationKind {
    /// From a stack status such as `UPDATE_ROLLBACK_IN_PROGRESS` (its first word).
    pub fn from_status(status: &str) -> Self {
        match status.split('_').next() {
            Some("CREATE") | Some("ROLLBACK") | Some("REVIEW") => OperationKind::Create,
            Some("UPDATE") => OperationKind::Update,
            Some("DELETE") => OperationKind::Delete,
            Some("IMPORT") => OperationKind::Import,
            _ => OperationKind::Unknown,
        }
    }
}

/// Result of the first poll.
#[derive(Debug)]
pub struct ScopedEvents {
    /// Events of the current operation, oldest first.
    pub events: Vec<Event>,
    /// Every EventId read, in scope or not (later polls stop at them).
    pub all_ids: Vec<String>,
    pub kind: OperationKind,
    /// How the boundary was found (for logs and tests).
    pub boundary: Boundary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    OperationId,
    StartEvent,
    Time,
    WholeHistory,
}

/// The scan of the first poll; see the module docs.
#[derive(Debug)]
pub struct InitialScan {
    hints: ScopeHints,
    op_ids: HashSet<String>,
    /// Tentatively in scope, newest first.
    in_scope: Vec<Event>,
    all_ids: Vec<String>,
    /// Set once the boundary is passed: nothing older is in scope.
    done: Option<Boundary>,
    /// An event of a hinted operation was met.
    met_hinted_op: bool,
    /// Only rollbacks were hinted and the older operation they undo was not
    /// reached yet: the next operation boundary is crossed once.
    cross_one_boundary: bool,
    start_status: Option<String>,
}

impl InitialScan {
    pub fn new(hints: ScopeHints) -> Self {
        let op_ids = hints.operation_ids.iter().cloned().collect();
        let cross_one_boundary = hints.rollback_only();
        Self {
            hints,
            op_ids,
            in_scope: Vec::new(),
            all_ids: Vec::new(),
            done: None,
            met_hinted_op: false,
            cross_one_boundary,
            start_status: None,
        }
    }

    /// Feeds one page (newest first); returns `true` while older pages are needed.
    pub fn feed(&mut self, page: Vec<Event>) -> bool {
        for e in page {
            self.all_ids.push(e.id.clone());
            if self.done.is_some() {
                continue;
            }
            if self.hints.not_before.is_some_and(|t| e.timestamp < t) {
                self.done = Some(Boundary::Time);
                continue;
            }
            if !self.op_ids.is_empty() {
                if let Some(op) = e.operation_id.as_deref() {
                    if self.op_ids.contains(op) {
                        self.met_hinted_op = true;
                    } else if self.met_hinted_op && self.cross_one_boundary {
                        // The operation the hinted rollback undoes: in scope too.
                        self.cross_one_boundary = false;
                        self.op_ids.insert(op.to_string());
                    } else if self.met_hinted_op {
                        // Older than the current operation.
                        self.done = Some(Boundary::OperationId);
                        continue;
                    }
                    // Not hinted and nothing hinted met yet: a newer operation (a
                    // rollback that began after DescribeStacks): in scope.
                }
            }
            let starts = e.is_stack_event() && starts_operation(&e.status);
            if starts {
                self.start_status = Some(e.status.clone());
            }
            self.in_scope.push(e);
            if starts {
                self.done = Some(Boundary::StartEvent);
            }
        }
        self.done.is_none()
    }

    /// Ends the scan (the boundary was found or there are no more pages).
    pub fn finish(self) -> ScopedEvents {
        let mut events = self.in_scope;
        let boundary = match (self.done, self.hints.since) {
            (Some(b), _) => b,
            (None, _) if self.met_hinted_op => Boundary::OperationId,
            (None, Some(since)) => {
                events.retain(|e| e.timestamp >= since);
                Boundary::Time
            }
            (None, None) => Boundary::WholeHistory,
        };
        events.reverse();
        let kind = self
            .start_status
            .as_deref()
            .map(OperationKind::from_status)
            .unwrap_or_else(|| OperationKind::from_status(&self.hints.stack_status));
        ScopedEvents {
            events,
            all_ids: self.all_ids,
            kind,
            boundary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{at, ev};

    fn ids(s: &ScopedEvents) -> Vec<&str> {
        s.events.iter().map(|e| e.id.as_str()).collect()
    }

    /// An earlier create, then the update being tracked (newest first).
    fn history() -> Vec<Event> {
        vec![
            ev("u4", "A", "UPDATE_COMPLETE", 20),
            ev("u3", "A", "UPDATE_IN_PROGRESS", 20),
            ev("u2", "app", "UPDATE_IN_PROGRESS", 19),
            ev("c4", "app", "CREATE_COMPLETE", 10),
            ev("c3", "A", "CREATE_COMPLETE", 9),
            ev("c2", "A", "CREATE_IN_PROGRESS", 2),
            ev("c1", "app", "CREATE_IN_PROGRESS", 1),
        ]
    }

    #[test]
    fn start_event_ends_the_scan() {
        let mut scan = InitialScan::new(ScopeHints::default());
        let h = history();
        let (page1, page2) = h.split_at(2);
        assert!(scan.feed(page1.to_vec()));
        assert!(!scan.feed(page2.to_vec()));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u2", "u3", "u4"]);
        assert_eq!(s.boundary, Boundary::StartEvent);
        assert_eq!(s.kind, OperationKind::Update);
        assert_eq!(s.all_ids.len(), 7);
    }

    #[test]
    fn rollback_belongs_to_the_failed_update() {
        let mut scan = InitialScan::new(ScopeHints::default());
        let mut page = vec![
            ev("r3", "app", "UPDATE_ROLLBACK_COMPLETE", 40),
            ev("r2", "A", "UPDATE_COMPLETE", 39),
            ev("r1", "app", "UPDATE_ROLLBACK_IN_PROGRESS", 30),
            ev("f1", "A", "UPDATE_FAILED", 29),
        ];
        page.extend(history());
        assert!(!scan.feed(page));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u2", "u3", "u4", "f1", "r1", "r2", "r3"]);
    }

    #[test]
    fn operation_ids_scope_with_a_newer_rollback() {
        let mut page = history();
        for e in &mut page[..3] {
            e.operation_id = Some("op-update".into());
        }
        for e in &mut page[3..] {
            e.operation_id = Some("op-create".into());
        }
        let mut rb = ev("r1", "app", "UPDATE_ROLLBACK_IN_PROGRESS", 30);
        rb.operation_id = Some("op-rollback".into());
        page.insert(0, rb);
        let mut scan = InitialScan::new(ScopeHints {
            operation_ids: vec!["op-update".into()],
            ..ScopeHints::default()
        });
        // Make the start event not look like one, so the op id decides.
        page[3].status = "UPDATE_SOMETHING".into();
        assert!(!scan.feed(page));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u2", "u3", "u4", "r1"]);
        assert_eq!(s.boundary, Boundary::OperationId);
    }

    /// `LastOperations` lists only the rollback (a tracker starting mid-rollback):
    /// the failed update it undoes stays in scope, the create before it does not.
    #[test]
    fn rollback_only_operations_keep_the_failed_update() {
        let mut page = vec![
            ev("r2", "app", "UPDATE_ROLLBACK_COMPLETE", 40),
            ev("r1", "app", "UPDATE_ROLLBACK_IN_PROGRESS", 30),
            ev("f1", "A", "UPDATE_FAILED", 29),
        ];
        page.extend(history());
        for e in &mut page {
            let op = match e.id.chars().next() {
                Some('r') => "op-rollback",
                Some('c') => "op-create",
                _ => "op-update",
            };
            e.operation_id = Some(op.into());
        }
        let mut scan = InitialScan::new(ScopeHints {
            operation_ids: vec!["op-rollback".into()],
            operation_types: vec!["ROLLBACK".into()],
            ..ScopeHints::default()
        });
        assert!(!scan.feed(page));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u2", "u3", "u4", "f1", "r1", "r2"]);
        assert_eq!(s.kind, OperationKind::Update);
    }

    /// A nested stack's first read is bounded by time: its previous operation is
    /// out even when the current one's start event is not visible yet.
    #[test]
    fn not_before_bounds_a_scan_without_its_start_event() {
        let mut scan = InitialScan::new(ScopeHints {
            not_before: Some(at(19)),
            ..ScopeHints::default()
        });
        // The update's start (u2) is not visible yet; older pages hold the create.
        let page: Vec<Event> = history().into_iter().filter(|e| e.id != "u2").collect();
        assert!(scan.feed(page[..2].to_vec()));
        assert!(!scan.feed(page[2..].to_vec()));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u3", "u4"]);
        assert_eq!(s.boundary, Boundary::Time);
        // Nothing of this operation visible yet: nothing in scope.
        let mut scan = InitialScan::new(ScopeHints {
            not_before: Some(at(50)),
            ..ScopeHints::default()
        });
        assert!(!scan.feed(history()));
        let s = scan.finish();
        assert!(s.events.is_empty());
        assert_eq!(s.all_ids.len(), 7, "every id read is remembered");
    }

    #[test]
    fn time_fallback_without_a_start_event() {
        let page: Vec<Event> = history()
            .into_iter()
            .filter(|e| !(e.logical_id == "app" && e.status.ends_with("IN_PROGRESS")))
            .collect();
        let mut scan = InitialScan::new(ScopeHints {
            since: Some(at(15)),
            stack_status: "UPDATE_COMPLETE".into(),
            ..ScopeHints::default()
        });
        assert!(scan.feed(page));
        let s = scan.finish();
        assert_eq!(ids(&s), ["u3", "u4"]);
        assert_eq!(s.boundary, Boundary::Time);
        assert_eq!(s.kind, OperationKind::Update);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            OperationKind::from_status("ROLLBACK_COMPLETE"),
            OperationKind::Create
        );
        assert_eq!(
            OperationKind::from_status("DELETE_IN_PROGRESS"),
            OperationKind::Delete
        );
        assert_eq!(
            OperationKind::from_status("IMPORT_ROLLBACK_COMPLETE"),
            OperationKind::Import
        );
    }
}
