//! Status vocabulary: which stack statuses end an operation (and how), which resource
//! statuses count as completed, in progress or failed, and which root-stack events
//! start an operation.
//!
//! Pure functions over CloudFormation's status strings (kept as strings so a status
//! AWS adds later is handled by its suffix instead of breaking deserialization).
//! `tracker` asks [`stack_phase`] about every `DescribeStacks` answer; `progress`
//! uses [`ResourcePhase`]; `scope` uses [`starts_operation`].

/// Where a stack's operation stands, judged from its `StackStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackPhase {
    /// Still moving (every `*_IN_PROGRESS`, `REVIEW_IN_PROGRESS`, unknown statuses).
    InProgress,
    /// The operation ended as asked.
    Succeeded,
    /// The operation failed (or rolled back).
    Failed,
}

impl StackPhase {
    pub fn is_terminal(self) -> bool {
        self != StackPhase::InProgress
    }
}

/// Classifies a stack status.
///
/// Success: `CREATE_COMPLETE`, `UPDATE_COMPLETE`, `IMPORT_COMPLETE`, `DELETE_COMPLETE`.
/// Failure: every `*_FAILED`, `ROLLBACK_COMPLETE`, `UPDATE_ROLLBACK_COMPLETE`,
/// `IMPORT_ROLLBACK_COMPLETE` (and any other `*ROLLBACK*_COMPLETE`).
/// Anything else (all `*_IN_PROGRESS`, `REVIEW_IN_PROGRESS`, unknown) is not terminal.
pub fn stack_phase(status: &str) -> StackPhase {
    match status {
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" | "DELETE_COMPLETE" => {
            StackPhase::Succeeded
        }
        s if s.ends_with("_IN_PROGRESS") => StackPhase::InProgress,
        s if s.ends_with("_FAILED") => StackPhase::Failed,
        s if s.contains("ROLLBACK") && s.ends_with("_COMPLETE") => StackPhase::Failed,
        _ => StackPhase::InProgress,
    }
}

/// How a resource status counts towards progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourcePhase {
    Completed,
    InProgress,
    Failed,
    /// Statuses that are none of the above (counted in the total only).
    Other,
}

impl ResourcePhase {
    /// `*_COMPLETE` and `DELETE_SKIPPED` are done, `*_IN_PROGRESS` moving, `*_FAILED`
    /// failed.
    pub fn of(status: &str) -> Self {
        if status.ends_with("_COMPLETE") || status == "DELETE_SKIPPED" {
            ResourcePhase::Completed
        } else if status.ends_with("_IN_PROGRESS") {
            ResourcePhase::InProgress
        } else if status.ends_with("_FAILED") {
            ResourcePhase::Failed
        } else {
            ResourcePhase::Other
        }
    }
}

/// `true` for a root-stack status that begins a new operation. Rollbacks and cleanups
/// are not beginnings: they belong to the operation that failed or finished.
pub fn starts_operation(status: &str) -> bool {
    matches!(
        status,
        "CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS" | "DELETE_IN_PROGRESS" | "IMPORT_IN_PROGRESS"
    )
}

/// `true` for the reasons CloudFormation gives to resources it stopped because
/// something else failed; those are never the root cause.
pub fn is_cancellation(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("resource") && r.contains("cancelled")
}

/// `true` for the reason a nested-stack resource carries when its child stack failed
/// ("Embedded stack arn:... was not successfully created: ..."): the cause is inside.
pub fn is_embedded_stack_wrapper(reason: &str) -> bool {
    reason.starts_with("Embedded stack ") && reason.contains(" was not successfully ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_statuses() {
        for s in [
            "CREATE_COMPLETE",
            "UPDATE_COMPLETE",
            "IMPORT_COMPLETE",
            "DELETE_COMPLETE",
        ] {
            assert_eq!(stack_phase(s), StackPhase::Succeeded, "{s}");
        }
        for s in [
            "CREATE_FAILED",
            "DELETE_FAILED",
            "UPDATE_FAILED",
            "ROLLBACK_FAILED",
            "UPDATE_ROLLBACK_FAILED",
            "ROLLBACK_COMPLETE",
            "UPDATE_ROLLBACK_COMPLETE",
            "IMPORT_ROLLBACK_COMPLETE",
            "IMPORT_ROLLBACK_FAILED",
        ] {
            assert_eq!(stack_phase(s), StackPhase::Failed, "{s}");
        }
        for s in [
            "CREATE_IN_PROGRESS",
            "ROLLBACK_IN_PROGRESS",
            "UPDATE_IN_PROGRESS",
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "DELETE_IN_PROGRESS",
            "REVIEW_IN_PROGRESS",
            "IMPORT_IN_PROGRESS",
            "IMPORT_ROLLBACK_IN_PROGRESS",
            "SOMETHING_NEW",
        ] {
            assert_eq!(stack_phase(s), StackPhase::InProgress, "{s}");
            assert!(!stack_phase(s).is_terminal());
        }
    }

    #[test]
    fn resource_statuses() {
        assert_eq!(
            ResourcePhase::of("CREATE_COMPLETE"),
            ResourcePhase::Completed
        );
        assert_eq!(
            ResourcePhase::of("DELETE_SKIPPED"),
            ResourcePhase::Completed
        );
        assert_eq!(
            ResourcePhase::of("UPDATE_ROLLBACK_COMPLETE"),
            ResourcePhase::Completed
        );
        assert_eq!(
            ResourcePhase::of("DELETE_IN_PROGRESS"),
            ResourcePhase::InProgress
        );
        assert_eq!(ResourcePhase::of("CREATE_FAILED"), ResourcePhase::Failed);
        assert_eq!(ResourcePhase::of("IMPORT_FAILED"), ResourcePhase::Failed);
    }

    #[test]
    fn operation_starts_and_reasons() {
        assert!(starts_operation("CREATE_IN_PROGRESS"));
        assert!(starts_operation("UPDATE_IN_PROGRESS"));
        assert!(!starts_operation("ROLLBACK_IN_PROGRESS"));
        assert!(!starts_operation("UPDATE_ROLLBACK_IN_PROGRESS"));
        assert!(!starts_operation("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"));
        assert!(!starts_operation("REVIEW_IN_PROGRESS"));
        assert!(is_cancellation("Resource creation cancelled"));
        assert!(is_cancellation("Resource update cancelled"));
        assert!(!is_cancellation("Bucket already exists"));
        assert!(is_embedded_stack_wrapper(
            "Embedded stack arn:aws:cloudformation:us-east-1:1:stack/p-Net-1/x was not successfully created: The following resource(s) failed to create: [Subnet]."
        ));
        assert!(!is_embedded_stack_wrapper("Internal failure"));
    }
}
