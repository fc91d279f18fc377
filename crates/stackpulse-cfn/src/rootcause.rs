//! Root cause of a failed operation: the first real failure, found in the deepest
//! nested stack that failed.
//!
//! Input: the operation's events of every tracked stack (root and nested), oldest
//! first, keyed by stack ARN. Walking a stack's events in order, the first `*_FAILED`
//! of a resource wins, except
//! - cancellations ("Resource creation cancelled", ...): CloudFormation stopped that
//!   resource because something else failed;
//! - a nested-stack resource: its child stack is searched first (recursively); the
//!   wrapper's own reason ("Embedded stack ... was not successfully created") is used
//!   only when the child's events are unknown.
//!
//! The stack's own events are never a root cause. `None` means no resource failed
//! (the tracker then reports the stack's status reason).

use std::collections::HashMap;

use crate::events::{Event, STACK_TYPE};
use crate::status::{is_cancellation, is_embedded_stack_wrapper};
use crate::wire::RootCause;

/// Nested stacks deeper than this are not searched (CloudFormation's own limit is
/// lower; this only guards against a cycle in malformed data).
const MAX_DEPTH: usize = 16;

/// Finds the root cause of the operation of the stack `root_arn`.
pub fn find(root_arn: &str, events_by_stack: &HashMap<String, Vec<Event>>) -> Option<RootCause> {
    find_in(root_arn, events_by_stack, 0)
}

fn find_in(arn: &str, all: &HashMap<String, Vec<Event>>, depth: usize) -> Option<RootCause> {
    let events = all.get(arn)?;
    let mut wrapper: Option<&Event> = None;
    for e in events {
        if !e.status.ends_with("_FAILED") || e.is_stack_event() || is_cancellation(&e.reason) {
            continue;
        }
        if e.resource_type == STACK_TYPE {
            if depth < MAX_DEPTH {
                if let Some(child) = e.nested_stack_arn() {
                    if let Some(rc) = find_in(child, all, depth + 1) {
                        return Some(rc);
                    }
                }
            }
            if is_embedded_stack_wrapper(&e.reason) {
                wrapper.get_or_insert(e);
                continue;
            }
        }
        return Some(to_root_cause(e));
    }
    wrapper.map(to_root_cause)
}

fn to_root_cause(e: &Event) -> RootCause {
    RootCause {
        logical_id: e.logical_id.clone(),
        resource_type: e.resource_type.clone(),
        status: e.status.clone(),
        reason: e.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{ev, ARN};

    const CHILD: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/app-Net-1/2";

    fn with_reason(mut e: Event, r: &str) -> Event {
        e.reason = r.into();
        e
    }

    fn nested(id: &str, status: &str, reason: &str) -> Event {
        let mut e = ev(id, "Net", status, 5);
        e.resource_type = STACK_TYPE.into();
        e.physical_id = CHILD.into();
        e.reason = reason.into();
        e
    }

    fn child_ev(id: &str, logical: &str, status: &str, reason: &str) -> Event {
        let mut e = ev(id, logical, status, 4);
        e.stack_id = CHILD.into();
        e.stack_name = "app-Net-1".into();
        e.reason = reason.into();
        e
    }

    #[test]
    fn first_real_failure_skips_cancellations_and_the_stack() {
        let events = vec![
            ev("1", "app", "CREATE_IN_PROGRESS", 0),
            with_reason(
                ev("2", "Queue", "CREATE_FAILED", 3),
                "Resource creation cancelled",
            ),
            with_reason(
                ev("3", "Db", "CREATE_FAILED", 3),
                "DB subnet group is invalid",
            ),
            with_reason(ev("4", "Bucket", "CREATE_FAILED", 4), "later failure"),
            with_reason(
                ev("5", "app", "ROLLBACK_IN_PROGRESS", 5),
                "The following resource(s) failed to create: [Db]",
            ),
        ];
        let all = HashMap::from([(ARN.to_string(), events)]);
        let rc = find(ARN, &all).expect("root cause");
        assert_eq!(rc.logical_id, "Db");
        assert_eq!(rc.status, "CREATE_FAILED");
        assert_eq!(rc.reason, "DB subnet group is invalid");
    }

    #[test]
    fn descends_into_the_deepest_nested_stack() {
        let wrapper = format!("Embedded stack {CHILD} was not successfully created: The following resource(s) failed to create: [Subnet].");
        let parent = vec![
            nested("p1", "CREATE_IN_PROGRESS", ""),
            nested("p2", "CREATE_FAILED", &wrapper),
            with_reason(
                ev("p3", "Api", "CREATE_FAILED", 6),
                "Resource creation cancelled",
            ),
        ];
        let child = vec![
            child_ev("c1", "Vpc", "CREATE_COMPLETE", ""),
            child_ev(
                "c2",
                "Subnet",
                "CREATE_FAILED",
                "The CIDR '10.0.0.0/8' is invalid.",
            ),
        ];
        let mut all = HashMap::from([(ARN.to_string(), parent), (CHILD.to_string(), child)]);
        let rc = find(ARN, &all).expect("root cause");
        assert_eq!(rc.logical_id, "Subnet");
        assert_eq!(rc.reason, "The CIDR '10.0.0.0/8' is invalid.");
        // Without the child's events the wrapper is all we know.
        all.remove(CHILD);
        let rc = find(ARN, &all).expect("root cause");
        assert_eq!(rc.logical_id, "Net");
        assert!(rc.reason.starts_with("Embedded stack"));
    }

    #[test]
    fn none_when_nothing_failed() {
        let all = HashMap::from([(ARN.to_string(), vec![ev("1", "A", "CREATE_COMPLETE", 1)])]);
        assert_eq!(find(ARN, &all), None);
        assert_eq!(find("other", &all), None);
    }
}
