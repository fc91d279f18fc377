//! Change-set review: when a stack waiting in `REVIEW_IN_PROGRESS` stops being worth
//! tracking.
//!
//! A stack created through a change set sits in `REVIEW_IN_PROGRESS` (not terminal,
//! not a start) until the change set is executed. If the change set failed, was
//! deleted, or is never executed, nothing more will happen, and a tracker would
//! poll forever. So while the root stack is in review, the tracker asks
//! `ListChangeSets` now and then ([`Api::change_sets`]) and [`verdict`] decides:
//! - a change set being created or executed: wait;
//! - one ready but not executed: wait, up to a limit, then end;
//! - none left, or only failed ones: end, with the failure's reason.
//!
//! The tracker ends the run only on the second "end" in a row (a read just before an
//! execution can be stale, as CDK allows a stale `REVIEW_IN_PROGRESS`), and reports it
//! as a failed operation whose root cause names the change set: `watch` exits 1 with
//! the reason instead of waiting forever.

use std::time::Duration;

use crate::aws::{Api, AwsError};
use crate::wire::RootCause;

/// The resource type a change-set root cause carries.
pub const CHANGE_SET_TYPE: &str = "AWS::CloudFormation::ChangeSet";

/// One change set of the stack, as `ListChangeSets` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSetSummary {
    pub name: String,
    /// `CREATE_PENDING`, `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, `FAILED`...
    pub status: String,
    /// `UNAVAILABLE`, `AVAILABLE`, `EXECUTE_IN_PROGRESS`, `EXECUTE_COMPLETE`...
    pub execution_status: String,
    pub status_reason: String,
}

/// What to do about a stack in review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// Something may still happen: keep tracking.
    Waiting,
    /// Nothing will happen: end the run with this cause.
    Ended(RootCause),
}

/// Decides about a stack `stack` in review for `waited` so far, with its change
/// sets; a change set ready but not executed is waited for up to `limit`.
pub fn verdict(
    stack: &str,
    sets: &[ChangeSetSummary],
    waited: Duration,
    limit: Duration,
) -> Review {
    let moving = sets.iter().any(|c| {
        matches!(c.status.as_str(), "CREATE_PENDING" | "CREATE_IN_PROGRESS")
            || c.execution_status.starts_with("EXECUTE_")
    });
    if moving {
        return Review::Waiting;
    }
    if let Some(ready) = sets.iter().find(|c| c.execution_status == "AVAILABLE") {
        if waited < limit {
            return Review::Waiting;
        }
        return Review::Ended(RootCause {
            logical_id: ready.name.clone(),
            resource_type: CHANGE_SET_TYPE.to_string(),
            status: ready.status.clone(),
            reason: format!(
                "Change set {} was created but not executed within {} s; execute it \
                 (aws cloudformation execute-change-set) or delete it.",
                ready.name,
                limit.as_secs()
            ),
        });
    }
    if let Some(failed) = sets.iter().rev().find(|c| c.status == "FAILED") {
        let reason = if failed.status_reason.is_empty() {
            format!("Change set {} failed.", failed.name)
        } else {
            format!(
                "Change set {} failed: {}",
                failed.name, failed.status_reason
            )
        };
        return Review::Ended(RootCause {
            logical_id: failed.name.clone(),
            resource_type: CHANGE_SET_TYPE.to_string(),
            status: failed.status.clone(),
            reason,
        });
    }
    Review::Ended(RootCause {
        logical_id: stack.to_string(),
        resource_type: crate::events::STACK_TYPE.to_string(),
        status: "REVIEW_IN_PROGRESS".to_string(),
        reason: format!(
            "Stack {stack} is in REVIEW_IN_PROGRESS with no change set to execute \
             (it was deleted or never created)."
        ),
    })
}

impl Api {
    /// The stack's change sets (`ListChangeSets`, a few pages at most).
    pub async fn change_sets(&self, stack_arn: &str) -> Result<Vec<ChangeSetSummary>, AwsError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            self.permit(stack_arn).await;
            let r = self
                .client()
                .list_change_sets()
                .stack_name(stack_arn)
                .set_next_token(token.take())
                .customize()
                .config_override(self.overrides())
                .send()
                .await;
            let out = self.result(r, crate::aws::CallApi::ListChangeSets, stack_arn)?;
            all.extend(out.summaries().iter().map(|c| ChangeSetSummary {
                name: c.change_set_name().unwrap_or_default().to_string(),
                status: c.status().map_or("", |s| s.as_str()).to_string(),
                execution_status: c.execution_status().map_or("", |s| s.as_str()).to_string(),
                status_reason: c.status_reason().unwrap_or_default().to_string(),
            }));
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(name: &str, status: &str, exec: &str, reason: &str) -> ChangeSetSummary {
        ChangeSetSummary {
            name: name.into(),
            status: status.into(),
            execution_status: exec.into(),
            status_reason: reason.into(),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn waits_while_a_change_set_moves() {
        for c in [
            cs("c", "CREATE_PENDING", "UNAVAILABLE", ""),
            cs("c", "CREATE_IN_PROGRESS", "UNAVAILABLE", ""),
            cs("c", "CREATE_COMPLETE", "EXECUTE_IN_PROGRESS", ""),
        ] {
            assert_eq!(verdict("s", &[c], MIN * 100, MIN), Review::Waiting);
        }
    }

    #[test]
    fn a_ready_change_set_is_waited_for_up_to_the_limit() {
        let sets = [cs("deploy-1", "CREATE_COMPLETE", "AVAILABLE", "")];
        assert_eq!(verdict("s", &sets, MIN / 2, MIN), Review::Waiting);
        let Review::Ended(rc) = verdict("s", &sets, MIN, MIN) else {
            panic!("should end")
        };
        assert_eq!(rc.logical_id, "deploy-1");
        assert!(
            rc.reason.contains("not executed within 60 s"),
            "{}",
            rc.reason
        );
    }

    #[test]
    fn failed_or_missing_change_sets_end_it() {
        let sets = [cs(
            "deploy-1",
            "FAILED",
            "UNAVAILABLE",
            "Template format error: Unresolved resource dependencies [Vpc]",
        )];
        let Review::Ended(rc) = verdict("s", &sets, Duration::ZERO, MIN) else {
            panic!("should end")
        };
        assert_eq!(
            (
                rc.logical_id.as_str(),
                rc.resource_type.as_str(),
                rc.status.as_str()
            ),
            ("deploy-1", CHANGE_SET_TYPE, "FAILED")
        );
        assert!(
            rc.reason.contains("Unresolved resource dependencies"),
            "{}",
            rc.reason
        );
        let Review::Ended(rc) = verdict("s", &[], Duration::ZERO, MIN) else {
            panic!("should end")
        };
        assert_eq!(rc.logical_id, "s");
        assert!(rc.reason.contains("no change set"), "{}", rc.reason);
    }
}
