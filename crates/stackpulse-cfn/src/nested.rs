//! Nested stacks: recognising them in a parent's events.
//!
//! A parent's event about a resource of type `AWS::CloudFormation::Stack` (not the
//! parent itself) with a physical id (the child's ARN) names a child stack to poll.
//! The tracker polls each child by its ARN in the same cycle as the root, merges its
//! events into the stream marked with the child's name, and stops polling a child one
//! poll after the child's own terminal event. A later `*_IN_PROGRESS` event of the
//! nested resource in the parent (an update rollback reaching into the child) wakes
//! the child's poller again. A child's terminal event never ends the run: only the
//! root stack's `DescribeStacks` status does.

use crate::events::Event;

/// A nested stack found in its parent's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    /// The child stack's ARN (the nested resource's physical id).
    pub arn: String,
    /// The nested resource's logical id in the parent.
    pub logical_id: String,
    /// The parent stack's ARN.
    pub parent_arn: String,
}

/// The nested stack this event is about, if any.
pub fn child_of(e: &Event) -> Option<ChildRef> {
    let arn = e.nested_stack_arn()?;
    Some(ChildRef {
        arn: arn.to_string(),
        logical_id: e.logical_id.clone(),
        parent_arn: e.stack_id.clone(),
    })
}

/// `true` when this parent event means the child stack is moving again.
pub fn reopens(e: &Event) -> bool {
    e.status.ends_with("_IN_PROGRESS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::{ev, ARN};
    use crate::events::STACK_TYPE;

    #[test]
    fn finds_children_not_the_stack_itself() {
        assert_eq!(child_of(&ev("1", "app", "CREATE_IN_PROGRESS", 0)), None);
        assert_eq!(child_of(&ev("2", "Bucket", "CREATE_IN_PROGRESS", 0)), None);
        let mut e = ev("3", "Net", "CREATE_IN_PROGRESS", 0);
        e.resource_type = STACK_TYPE.into();
        e.physical_id = String::new();
        assert_eq!(child_of(&e), None, "not created yet");
        e.physical_id = "arn:aws:cloudformation:us-east-1:1:stack/app-Net-X/9".into();
        let c = child_of(&e).expect("child");
        assert_eq!(c.logical_id, "Net");
        assert_eq!(c.parent_arn, ARN);
        assert!(reopens(&e));
        e.status = "UPDATE_COMPLETE".into();
        assert!(!reopens(&e));
    }
}
