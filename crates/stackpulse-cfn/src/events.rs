//! Stack events: our own copy of a CloudFormation `StackEvent`, and the paging and
//! deduplication rules of one poll.
//!
//! Data flow: `aws` turns each `DescribeStackEvents` page into `Vec<Event>` (newest
//! first, as AWS sends them). [`EventLog::take_page`] keeps the events never seen before
//! and says whether the next page (`NextToken`) is needed: paging stops at the first
//! `EventId` seen in an *earlier* poll. [`EventLog::finish_poll`] then returns the new
//! events oldest-first and remembers their ids. Dedup is by `EventId` only, never by
//! timestamp (many events share one second).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

/// The resource type of a stack (the root stack's own events and nested stacks).
pub const STACK_TYPE: &str = "AWS::CloudFormation::Stack";

/// One stack event, with every field we use made non-optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// ARN of the stack the event belongs to.
    pub stack_id: String,
    pub stack_name: String,
    /// The operation that produced the event, when CloudFormation says.
    pub operation_id: Option<String>,
    pub logical_id: String,
    pub physical_id: String,
    pub resource_type: String,
    pub timestamp: DateTime<Utc>,
    pub status: String,
    pub reason: String,
}

impl Event {
    /// Converts an SDK event; `None` when it has no `EventId` (it could not be
    /// deduplicated, so it is dropped and logged by the caller).
    pub fn from_sdk(e: &aws_sdk_cloudformation::types::StackEvent) -> Option<Event> {
        let id = e.event_id()?.to_string();
        let timestamp = e
            .timestamp()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
            .unwrap_or_else(Utc::now);
        Some(Event {
            id,
            stack_id: e.stack_id().unwrap_or_default().to_string(),
            stack_name: e.stack_name().unwrap_or_default().to_string(),
            operation_id: e.operation_id().map(str::to_string),
            logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
            physical_id: e.physical_resource_id().unwrap_or_default().to_string(),
            resource_type: e.resource_type().unwrap_or_default().to_string(),
            timestamp,
            status: e
                .resource_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            reason: e.resource_status_reason().unwrap_or_default().to_string(),
        })
    }

    /// `true` for an event about the stack itself (not one of its resources).
    pub fn is_stack_event(&self) -> bool {
        self.resource_type == STACK_TYPE
            && (self.physical_id == self.stack_id
                || (self.physical_id.is_empty() && self.logical_id == self.stack_name))
    }

    /// The ARN of the nested stack this event is about, if it is a nested-stack
    /// resource of its stack and CloudFormation has given it a physical id.
    pub fn nested_stack_arn(&self) -> Option<&str> {
        (self.resource_type == STACK_TYPE
            && !self.is_stack_event()
            && self.physical_id.starts_with("arn:"))
        .then_some(self.physical_id.as_str())
    }
}

/// Dedup state of one stack's event stream.
#[derive(Debug, Default)]
pub struct EventLog {
    /// Every EventId met in a finished poll (emitted or out of scope).
    seen: HashSet<String>,
    /// Ids met in the poll under way (pages can overlap when events arrive between
    /// page requests; an overlap is skipped, not a reason to stop).
    this_poll: HashSet<String>,
    /// New events of the poll under way, newest first.
    fresh: Vec<Event>,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers ids without emitting them (events out of scope, or already emitted by
    /// another node before a takeover).
    pub fn mark_seen<I: IntoIterator<Item = String>>(&mut self, ids: I) {
        self.seen.extend(ids);
    }

    pub fn is_seen(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    pub fn seen_count(&self) -> usize {
        self.seen.len()
    }

    /// Takes one page (newest first). Returns `true` when the next page should be read:
    /// no event of an earlier poll was met on this one.
    pub fn take_page(&mut self, page: Vec<Event>) -> bool {
        for e in page {
            if self.seen.contains(&e.id) {
                return false;
            }
            if self.this_poll.insert(e.id.clone()) {
                self.fresh.push(e);
            }
        }
        true
    }

    /// Ends the poll: the new events, oldest first; their ids become seen.
    pub fn finish_poll(&mut self) -> Vec<Event> {
        self.this_poll.clear();
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.reverse();
        self.seen.extend(fresh.iter().map(|e| e.id.clone()));
        fresh
    }

    /// Drops what a failed poll had collected; the next poll reads it again.
    pub fn abandon_poll(&mut self) {
        self.this_poll.clear();
        self.fresh.clear();
    }
}

/// The name in a stack ARN (`arn:aws:cloudformation:r:a:stack/NAME/uuid`).
pub fn stack_name_from_arn(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":stack/")?.1;
    rest.split('/').next().filter(|n| !n.is_empty())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use chrono::TimeZone;

    pub fn at(sec: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + sec, 0)
            .single()
            .unwrap_or_else(Utc::now)
    }

    pub const ARN: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/app/1111";

    /// An event of resource `logical` (or of the stack itself when `logical == "app"`).
    pub fn ev(id: &str, logical: &str, status: &str, sec: i64) -> Event {
        let stack = logical == "app";
        Event {
            id: id.into(),
            stack_id: ARN.into(),
            stack_name: "app".into(),
            operation_id: None,
            logical_id: logical.into(),
            physical_id: if stack {
                ARN.into()
            } else {
                format!("phys-{logical}")
            },
            resource_type: if stack {
                STACK_TYPE.into()
            } else {
                "AWS::S3::Bucket".into()
            },
            timestamp: at(sec),
            status: status.into(),
            reason: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn ids(v: &[Event]) -> Vec<&str> {
        v.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn pages_until_a_known_event_and_emits_oldest_first() {
        let mut log = EventLog::new();
        log.mark_seen(["e1".to_string(), "e2".to_string()]);
        // Newest first, over two pages; e2 on page 2 stops paging.
        assert!(log.take_page(vec![
            ev("e5", "A", "CREATE_COMPLETE", 3),
            ev("e4", "A", "CREATE_IN_PROGRESS", 3)
        ]));
        assert!(!log.take_page(vec![
            ev("e3", "B", "CREATE_IN_PROGRESS", 3),
            ev("e2", "app", "CREATE_IN_PROGRESS", 1),
            ev("e1", "app", "X", 0)
        ]));
        let fresh = log.finish_poll();
        assert_eq!(ids(&fresh), ["e3", "e4", "e5"]);
        // The next poll sees the same events again: nothing new, stops at once.
        assert!(!log.take_page(vec![ev("e5", "A", "CREATE_COMPLETE", 3)]));
        assert!(log.finish_poll().is_empty());
    }

    #[test]
    fn overlapping_pages_are_skipped_not_a_stop() {
        let mut log = EventLog::new();
        log.mark_seen(["e1".to_string()]);
        assert!(log.take_page(vec![ev("e4", "A", "S", 3), ev("e3", "A", "S", 3)]));
        // A new event arrived between the two requests: page 2 repeats e3.
        assert!(log.take_page(vec![ev("e3", "A", "S", 3), ev("e2", "A", "S", 2)]));
        assert!(!log.take_page(vec![ev("e1", "A", "S", 1)]));
        assert_eq!(ids(&log.finish_poll()), ["e2", "e3", "e4"]);
    }

    #[test]
    fn abandoned_poll_is_read_again() {
        let mut log = EventLog::new();
        assert!(log.take_page(vec![ev("e2", "A", "S", 2)]));
        log.abandon_poll();
        assert!(log.take_page(vec![ev("e2", "A", "S", 2), ev("e1", "A", "S", 1)]));
        assert_eq!(ids(&log.finish_poll()), ["e1", "e2"]);
        assert_eq!(log.seen_count(), 2);
    }

    #[test]
    fn stack_and_nested_events() {
        let root = ev("r", "app", "CREATE_IN_PROGRESS", 0);
        assert!(root.is_stack_event());
        assert_eq!(root.nested_stack_arn(), None);
        let mut child = ev("c", "Network", "CREATE_IN_PROGRESS", 1);
        child.resource_type = STACK_TYPE.into();
        assert_eq!(child.nested_stack_arn(), None, "no physical id yet");
        child.physical_id = "arn:aws:cloudformation:us-east-1:1:stack/app-Network-X/2".into();
        assert!(!child.is_stack_event());
        assert_eq!(child.nested_stack_arn(), Some(child.physical_id.as_str()));
        assert_eq!(
            stack_name_from_arn(&child.physical_id),
            Some("app-Network-X")
        );
        assert_eq!(stack_name_from_arn("app"), None);
    }
}
