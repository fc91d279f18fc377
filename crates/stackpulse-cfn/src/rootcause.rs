//! Root cause of a failed operation: the earliest real failure in time, across the
//! root stack and every nested stack it reaches.
//!
//! Input: the operation's events of every tracked stack (root and nested), oldest
//! first, keyed by stack ARN. From the root, every nested-stack resource with a
//! physical id leads into its child's events (recursively). Candidates are the
//! `*_FAILED` events of resources, except
//! - cancellations ("Resource creation cancelled", ...): CloudFormation stopped that
//!   resource because something else failed;
//! - a nested-stack resource's wrapper ("Embedded stack ... was not successfully
//!   created"): the cause is inside; a wrapper is used only when no real failure is
//!   known at all (the child's events are unknown).
//!
//! The earliest candidate by timestamp wins (as CDK sorts the events of all its
//! pollers before picking the first error); on a tie, the one met first (a stack's
//! own order, a child before its parent's later events). The stacks' own events are
//! never a root cause. `None` means no resource failed (the tracker then reports
//! the stack's status reason).

use std::collections::{HashMap, HashSet};

use crate::events::{Event, STACK_TYPE};
use crate::status::{is_cancellation, is_embedded_stack_wrapper};
use crate::wire::RootCause;

/// Nested stacks deeper than this are not searched (CloudFormation's own limit is
/// lower; this only guards against a cycle in malformed data).
const MAX_DEPTH: usize = 16;

/// Finds the root cause of the operation of the stack `root_arn`.
pub fn find(root_arn: &str, events_by_stack: &HashMap<String, Vec<Event>>) -> Option<RootCause> {
    let mut found = Found::default();
    collect(root_arn, events_by_stack, 0, &mut found);
    let earliest = |v: &[&Event]| {
        v.iter()
            .enumerate()
            .min_by_key(|(i, e)| (e.timestamp, *i))
            .map(|(_, e)| to_root_cause(e))
    };
    earliest(&found.failures).or_else(|| earliest(&found.wrappers))
}

/// Candidates met so far, in walk order.
#[derive(Default)]
struct Found<'a> {
    failures: Vec<&'a Event>,
    wrappers: Vec<&'a Event>,
    visited: HashSet<&'a str>,
}

fn collect<'a>(
    arn: &'a str,
    all: &'a HashMap<String, Vec<Event>>,
    depth: usize,
    found: &mut Found<'a>,
) {
    if !found.visited.insert(arn) {
        return;
    }
    let Some(events) = all.get(arn) else {
        return;
    };
    for e in events {
        if e.is_stack_event() {
            continue;
        }
        if depth < MAX_DEPTH {
            if let Some(child) = e.nested_stack_arn() {
                collect(child, all, depth + 1, found);
            }
        }
        if !e.status.ends_with("_FAILED") || is_cancellation(&e.reason) {
            continue;
        }
        if e.resource_type == STACK_TYPE && is_embedded_stack_wrapper(&e.reason) {
            found.wrappers.push(e);
        } else {
            found.failures.push(e);
        }
    }
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

    /// A child failure at T=4, an independent root failure at T=5, the wrapper at
    /// T=7: the child's, earliest in time, wins even though the root's comes first
    /// in the root's own order.
    #[test]
    fn earliest_failure_in_time_across_stacks() {
        let wrapper = format!("Embedded stack {CHILD} was not successfully updated: boom");
        let mut net = nested("p1", "UPDATE_IN_PROGRESS", "");
        net.timestamp = crate::events::test_support::at(1);
        let mut wrap = nested("p3", "UPDATE_FAILED", &wrapper);
        wrap.timestamp = crate::events::test_support::at(7);
        let parent = vec![
            net,
            with_reason(ev("p2", "Api", "UPDATE_FAILED", 5), "Api quota exceeded"),
            wrap,
        ];
        let child = vec![child_ev("c1", "Subnet", "UPDATE_FAILED", "CIDR overlaps")];
        let all = HashMap::from([(ARN.to_string(), parent), (CHILD.to_string(), child)]);
        let rc = find(ARN, &all).expect("root cause");
        assert_eq!(
            (rc.logical_id.as_str(), rc.reason.as_str()),
            ("Subnet", "CIDR overlaps")
        );
    }

    #[test]
    fn none_when_nothing_failed() {
        let all = HashMap::from([(ARN.to_string(), vec![ev("1", "A", "CREATE_COMPLETE", 1)])]);
        assert_eq!(find(ARN, &all), None);
        assert_eq!(find("other", &all), None);
    }
}
