//! Wire types: the JSON messages of the `/canvas/deploy/track/{stack}` endpoint.
//!
//! These are what the tracker produces and what clients read, in the exact camelCase
//! shape of DESIGN.md ("WebSocket `/canvas/deploy/track/{stack_name}`"). They carry no
//! behaviour: `tracker` fills them from `progress`, `rootcause` and `status`, and the
//! server (or a future Lambda) only serializes them.
//!
//! Timestamps are RFC 3339 in UTC with a `Z` and millisecond precision
//! (`2025-10-23T10:05:00.123Z`), see [`timestamp`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One resource as a client sees it: its latest status and the stack progress at the
/// moment of this event. The timing fields (`startedAt`, `finishedAt`,
/// `expectedSeconds`) are filled by [`crate::estimate`] and absent when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSummary {
    pub logical_id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub status: String,
    pub physical_id: String,
    pub status_reason: String,
    /// Progress (0..=100) of the stack this resource belongs to, after this event.
    pub progress: u8,
    /// The resource's first `*_IN_PROGRESS` event of this operation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_timestamp"
    )]
    pub started_at: Option<DateTime<Utc>>,
    /// Its terminal event (`*_COMPLETE`, `*_FAILED`, `DELETE_SKIPPED`); absent while
    /// it is in progress.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_timestamp"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// Median duration of this logical resource for the same action (create, update,
    /// delete) in earlier operations of the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seconds: Option<Seconds>,
}

/// Counts and progress of one stack's current operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackSummary {
    pub name: String,
    pub status: String,
    pub total_resources: u32,
    pub completed_resources: u32,
    pub in_progress_resources: u32,
    pub failed_resources: u32,
    /// `floor(100 * completed / total)`, never above 100.
    pub progress: u8,
    /// The operation's first event.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_timestamp"
    )]
    pub started_at: Option<DateTime<Utc>>,
    /// Median duration of earlier successful operations of the same kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seconds: Option<Seconds>,
    /// When the operation should end, recomputed at each event (see
    /// [`crate::estimate`]); never before the latest event; absent when unknown or
    /// once the operation ended.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_timestamp"
    )]
    pub eta_at: Option<DateTime<Utc>>,
}

/// A duration in seconds with millisecond precision, a JSON number on the wire
/// (`12.5`). Kept as whole milliseconds so that the wire types stay `Eq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds {
    millis: u64,
}

impl Seconds {
    pub fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    pub fn millis(self) -> u64 {
        self.millis
    }

    pub fn as_secs_f64(self) -> f64 {
        self.millis as f64 / 1000.0
    }

    /// As a chrono duration (saturating).
    pub fn as_duration(self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.millis).unwrap_or(i64::MAX))
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(serde::de::Error::custom(
                "expected a non-negative number of seconds",
            ));
        }
        // Bounded by the check above; `as` saturates for huge values.
        Ok(Seconds::from_millis((secs * 1000.0).round() as u64))
    }
}

/// One stack event (`{"type":"resource_update",...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "resource_update", rename_all = "camelCase")]
pub struct ResourceUpdate {
    /// When CloudFormation recorded the event.
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
    pub resource: ResourceSummary,
    /// Summary of the root (tracked) stack, also for events of nested stacks.
    pub stack: StackSummary,
    /// Name of the nested stack the event came from; absent for the root stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_stack: Option<String>,
    /// CloudFormation's `EventId`: lets a node that takes a poller over from another
    /// one (or a store) deduplicate without guessing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_id: String,
}

/// One output of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackOutput {
    pub key: String,
    pub value: String,
    pub description: String,
}

/// The first real failure of a failed operation (deepest nested stack first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootCause {
    pub logical_id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub status: String,
    pub reason: String,
}

/// The operation ended (`{"type":"deployment_complete",...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deployment_complete", rename_all = "camelCase")]
pub struct DeploymentComplete {
    pub success: bool,
    pub stack: StackSummary,
    /// Stack outputs; `[]` on failure.
    pub outputs: Vec<StackOutput>,
    /// From the operation's first event to its terminal event.
    pub duration_seconds: u64,
    /// `null` on success.
    pub root_cause: Option<RootCause>,
}

/// Something went wrong while tracking (`{"type":"error",...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error")]
pub struct TrackerError {
    pub message: String,
    /// `true` when the tracker keeps going (it backs off and retries).
    pub retrying: bool,
}

/// The stable codes of [`TrackerProblem`]: what kind of trouble, so that clients
/// can branch (a banner, `watch`'s exit code) without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No AWS credentials, or AWS refused them (invalid, expired).
    Credentials,
    /// No AWS region could be determined.
    Region,
    /// The server's AWS principal lacks a CloudFormation permission.
    AccessDenied,
    /// AWS throttles the CloudFormation API.
    Throttled,
    /// The stack does not exist (yet).
    NotFound,
    /// CloudFormation could not be reached (connection, DNS, TLS, timeout).
    Network,
    /// Anything else CloudFormation answered (5xx, validation, unknown codes).
    Aws,
}

impl ErrorCode {
    /// The code as it appears on the wire (`access_denied`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Credentials => "credentials",
            ErrorCode::Region => "region",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::Throttled => "throttled",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Network => "network",
            ErrorCode::Aws => "aws",
        }
    }

    /// Configuration errors: retried minutes apart, and `watch` exits 2 on them.
    pub fn is_configuration(self) -> bool {
        matches!(
            self,
            ErrorCode::Credentials | ErrorCode::Region | ErrorCode::AccessDenied
        )
    }
}

/// A problem the tracker hit (`{"type":"error","code",...}`): one per distinct
/// problem, not one per retry; [`TrackerRecovered`] says it is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error", rename_all = "camelCase")]
pub struct TrackerProblem {
    pub code: ErrorCode,
    /// One sentence (at most [`MAX_PROBLEM_MESSAGE`] characters) with the cause and
    /// the fix; never AWS's own text, which can name the account and principal.
    pub message: String,
    /// `true` when the tracker keeps going (it backs off and retries).
    pub retrying: bool,
    /// When the next attempt is due (absent when not retrying).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_timestamp"
    )]
    pub retry_at: Option<DateTime<Utc>>,
}

/// Longest [`TrackerProblem::message`], in characters.
pub const MAX_PROBLEM_MESSAGE: usize = 300;

/// The problem reported last is over: calls succeed again
/// (`{"type":"recovered","code"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "recovered", rename_all = "camelCase")]
pub struct TrackerRecovered {
    /// The code of the problem that cleared.
    pub code: ErrorCode,
}

/// Serde helpers for an optional [`timestamp`].
pub mod opt_timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::timestamp::format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc)))
    }
}

/// Serde helpers for RFC 3339 UTC timestamps with millisecond precision and `Z`.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// `2025-10-23T10:05:00.123Z`.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn summary() -> StackSummary {
        StackSummary {
            name: "s".into(),
            status: "CREATE_IN_PROGRESS".into(),
            total_resources: 3,
            completed_resources: 2,
            in_progress_resources: 1,
            failed_resources: 0,
            progress: 66,
            ..StackSummary::default()
        }
    }

    #[test]
    fn resource_update_has_the_contract_shape() {
        let t = Utc
            .with_ymd_and_hms(2025, 11, 15, 10, 30, 45)
            .single()
            .map(|t| t + chrono::Duration::milliseconds(7));
        let Some(t) = t else { panic!("bad date") };
        let u = ResourceUpdate {
            timestamp: t,
            resource: ResourceSummary {
                logical_id: "MyEC2Instance".into(),
                resource_type: "AWS::EC2::Instance".into(),
                status: "CREATE_COMPLETE".into(),
                physical_id: "i-1".into(),
                status_reason: String::new(),
                progress: 66,
                ..ResourceSummary::default()
            },
            stack: summary(),
            nested_stack: None,
            event_id: String::new(),
        };
        let v = serde_json::to_value(&u).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "resource_update",
                "timestamp": "2025-11-15T10:30:45.007Z",
                "resource": {"logicalId": "MyEC2Instance", "type": "AWS::EC2::Instance",
                    "status": "CREATE_COMPLETE", "physicalId": "i-1", "statusReason": "", "progress": 66},
                "stack": {"name": "s", "status": "CREATE_IN_PROGRESS", "totalResources": 3,
                    "completedResources": 2, "inProgressResources": 1, "failedResources": 0, "progress": 66}
            })
        );
        let back: ResourceUpdate = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, u);
    }

    #[test]
    fn completion_and_error_shapes() {
        let c = DeploymentComplete {
            success: false,
            stack: summary(),
            outputs: vec![],
            duration_seconds: 184,
            root_cause: Some(RootCause {
                logical_id: "Db".into(),
                resource_type: "AWS::RDS::DBInstance".into(),
                status: "CREATE_FAILED".into(),
                reason: "boom".into(),
            }),
        };
        let v = serde_json::to_value(&c).expect("serialize");
        assert_eq!(v["type"], "deployment_complete");
        assert_eq!(v["durationSeconds"], 184);
        assert_eq!(v["outputs"], serde_json::json!([]));
        assert_eq!(v["rootCause"]["logicalId"], "Db");
        assert_eq!(v["rootCause"]["type"], "AWS::RDS::DBInstance");
        let ok = DeploymentComplete {
            success: true,
            root_cause: None,
            ..c
        };
        assert_eq!(
            serde_json::to_value(&ok).expect("serialize")["rootCause"],
            serde_json::Value::Null
        );
        let e = TrackerError {
            message: "Rate exceeded".into(),
            retrying: true,
        };
        assert_eq!(
            serde_json::to_value(&e).expect("serialize"),
            serde_json::json!({"type": "error", "message": "Rate exceeded", "retrying": true})
        );
    }
}
