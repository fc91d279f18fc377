//! Tracker messages ↔ hub events, both ways, as pure functions.
//!
//! Out ([`to_hub`]): a poller turns each [`TrackerMessage`] into the hub events of a
//! stack topic:
//! - `ResourceUpdate` → `resource.status` `{resource, stack, nestedStack?, eventId,
//!   eventTimestamp}` (CloudFormation's `EventId` lets a node that takes a poller
//!   over skip what was already published; `eventTimestamp` is when CloudFormation
//!   recorded the event, the envelope's `timestamp` is when the hub stamped it) and
//!   `log.created` `{level, message, stack_name, environment}`;
//! - `DeploymentComplete` → `stack.deployed` `{stack_name, environment,
//!   duration_seconds, resource_count, outputs, stack, root_cause: null}` or
//!   `stack.failed` `{stack_name, environment, error_message, root_cause, stack,
//!   outputs: [], duration_seconds}`;
//! - `Problem` → `tracker.error` `{code, message, retrying, retry_at?}` (plus
//!   `final: true`, added by the poller, when the run ended with it): `code` is one
//!   of `credentials`, `region`, `access_denied`, `throttled`, `not_found`,
//!   `network`, `aws`; the tracker sends one per distinct problem, not one per
//!   retry; `Recovered` → `tracker.recovered` `{code}` (the problem is over);
//!   `Error` (no code, from outside the tracker) → `tracker.error` with code `aws`;
//!   `Snapshot` → nothing (the hub folds its own `stack.snapshot` from the events).
//!
//! Back ([`from_hub`]): the `/canvas/deploy/track` socket and `stackpulse watch
//! --server` turn hub events (and a late joiner's `stack.snapshot`) back into the
//! tracker's wire messages.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::hub::snapshot::split_resource_key;
use stackpulse_cfn::{
    DeploymentComplete, ErrorCode, ResourceSummary, ResourceUpdate, RootCause, StackOutput,
    StackSummary, TrackerError, TrackerMessage, TrackerProblem, TrackerRecovered,
};

/// Event types a stack poller publishes.
pub const RESOURCE_STATUS: &str = "resource.status";
pub const LOG_CREATED: &str = "log.created";
pub const STACK_DEPLOYED: &str = "stack.deployed";
pub const STACK_FAILED: &str = "stack.failed";
pub const TRACKER_ERROR: &str = "tracker.error";
pub const TRACKER_RECOVERED: &str = "tracker.recovered";
pub const STACK_SNAPSHOT: &str = "stack.snapshot";

/// Who the events are about: the stack and the environment label of seed-002
/// events (the stack's region).
#[derive(Debug, Clone)]
pub struct Origin {
    pub stack_name: String,
    pub environment: String,
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// The level of a stack event's log line; `stack_status` is the root stack's. A
/// `DELETE_FAILED` during a cleanup phase is a warning: CloudFormation skips the
/// resource (it is left in place) and the operation still succeeds.
fn level(status: &str, stack_status: &str) -> &'static str {
    if status == "DELETE_FAILED" && stack_status.ends_with("_CLEANUP_IN_PROGRESS") {
        "warning"
    } else if status.ends_with("_FAILED") {
        "error"
    } else if status.contains("ROLLBACK") {
        "warning"
    } else {
        "info"
    }
}

/// The hub events (type, data) for one tracker message.
pub fn to_hub(msg: &TrackerMessage, origin: &Origin) -> Vec<(&'static str, Map<String, Value>)> {
    match msg {
        TrackerMessage::ResourceUpdate(u) => {
            let mut data = Map::new();
            data.insert("resource".into(), to_value(&u.resource));
            data.insert("stack".into(), to_value(&u.stack));
            if let Some(n) = &u.nested_stack {
                data.insert("nestedStack".into(), Value::from(n.as_str()));
            }
            data.insert("eventId".into(), Value::from(u.event_id.as_str()));
            data.insert(
                "eventTimestamp".into(),
                Value::from(stackpulse_cfn::wire::timestamp::format(&u.timestamp)),
            );
            let r = &u.resource;
            let mut message = format!("{} ({}) {}", r.logical_id, r.resource_type, r.status);
            if !r.status_reason.is_empty() {
                message.push_str(": ");
                message.push_str(&r.status_reason);
            }
            if let Some(n) = &u.nested_stack {
                message = format!("[{n}] {message}");
            }
            let log = object(json!({
                "level": level(&r.status, &u.stack.status),
                "message": message,
                "stack_name": origin.stack_name,
                "environment": origin.environment,
            }));
            vec![(RESOURCE_STATUS, data), (LOG_CREATED, log)]
        }
        TrackerMessage::DeploymentComplete(d) if d.success => vec![(
            STACK_DEPLOYED,
            object(json!({
                "stack_name": origin.stack_name,
                "environment": origin.environment,
                "duration_seconds": d.duration_seconds,
                "resource_count": d.stack.total_resources,
                "outputs": to_value(&d.outputs),
                "stack": to_value(&d.stack),
                "root_cause": null,
            })),
        )],
        TrackerMessage::DeploymentComplete(d) => {
            let error_message = d.root_cause.as_ref().map_or_else(
                || format!("Stack {} ended in {}", d.stack.name, d.stack.status),
                |c| c.reason.clone(),
            );
            vec![(
                STACK_FAILED,
                object(json!({
                    "stack_name": origin.stack_name,
                    "environment": origin.environment,
                    "error_message": error_message,
                    "root_cause": to_value(&d.root_cause),
                    "stack": to_value(&d.stack),
                    "outputs": [],
                    "duration_seconds": d.duration_seconds,
                })),
            )]
        }
        TrackerMessage::Problem(p) => {
            let mut data = object(json!({
                "code": p.code.as_str(),
                "message": p.message,
                "retrying": p.retrying,
            }));
            if let Some(at) = &p.retry_at {
                data.insert(
                    "retry_at".into(),
                    Value::from(stackpulse_cfn::wire::timestamp::format(at)),
                );
            }
            vec![(TRACKER_ERROR, data)]
        }
        TrackerMessage::Recovered(r) => {
            vec![(TRACKER_RECOVERED, object(json!({"code": r.code.as_str()})))]
        }
        TrackerMessage::Error(e) => vec![(
            TRACKER_ERROR,
            object(
                json!({"code": ErrorCode::Aws.as_str(), "message": e.message, "retrying": e.retrying}),
            ),
        )],
        TrackerMessage::Snapshot(_) => Vec::new(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Option<&Value>) -> Option<T> {
    v.and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let s = v?.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn resource_update(
    data: &Map<String, Value>,
    envelope_time: Option<DateTime<Utc>>,
) -> Option<ResourceUpdate> {
    let resource: ResourceSummary = parse(data.get("resource"))?;
    let stack: StackSummary = parse(data.get("stack")).unwrap_or_default();
    Some(ResourceUpdate {
        timestamp: parse_time(data.get("eventTimestamp"))
            .or(envelope_time)
            .unwrap_or_else(Utc::now),
        resource,
        stack,
        nested_stack: data
            .get("nestedStack")
            .and_then(Value::as_str)
            .map(str::to_owned),
        event_id: data
            .get("eventId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

fn completion(success: bool, data: &Map<String, Value>) -> DeploymentComplete {
    DeploymentComplete {
        success,
        stack: parse(data.get("stack")).unwrap_or_default(),
        outputs: if success {
            parse::<Vec<StackOutput>>(data.get("outputs")).unwrap_or_default()
        } else {
            Vec::new()
        },
        duration_seconds: data
            .get("duration_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        root_cause: if success {
            None
        } else {
            parse::<RootCause>(data.get("root_cause")).or_else(|| {
                Some(RootCause {
                    logical_id: String::new(),
                    resource_type: String::new(),
                    status: String::new(),
                    reason: data
                        .get("error_message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
        },
    }
}

/// Tracker messages for one hub event (or snapshot) of the topic of `stack_name`.
///
/// A `stack.snapshot` becomes one `resource_update` per known resource (in the
/// order they were first seen; a nested stack's, keyed `<nestedStack>/<logicalId>`,
/// with its `nested_stack`), followed by the `deployment_complete` of the last
/// operation when the stack's current status is the one that operation ended in.
pub fn from_hub(
    event_type: &str,
    timestamp: &str,
    data: &Map<String, Value>,
    stack_name: &str,
) -> Vec<TrackerMessage> {
    let envelope_time = parse_time(Some(&Value::from(timestamp)));
    match event_type {
        RESOURCE_STATUS => resource_update(data, envelope_time)
            .map(TrackerMessage::ResourceUpdate)
            .into_iter()
            .collect(),
        STACK_DEPLOYED => vec![TrackerMessage::DeploymentComplete(completion(true, data))],
        STACK_FAILED => vec![TrackerMessage::DeploymentComplete(completion(false, data))],
        TRACKER_ERROR => {
            let message = data
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let retrying = data
                .get("retrying")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match parse::<ErrorCode>(data.get("code")) {
                Some(code) => vec![TrackerMessage::Problem(TrackerProblem {
                    code,
                    message,
                    retrying,
                    retry_at: parse_time(data.get("retry_at")),
                })],
                None => vec![TrackerMessage::Error(TrackerError { message, retrying })],
            }
        }
        TRACKER_RECOVERED => parse::<ErrorCode>(data.get("code"))
            .map(|code| TrackerMessage::Recovered(TrackerRecovered { code }))
            .into_iter()
            .collect(),
        STACK_SNAPSHOT => {
            let stack: StackSummary = parse(data.get("stack")).unwrap_or_default();
            // Keyed by (nested stack, logical id): see `hub::snapshot::resource_key`.
            let mut out: Vec<TrackerMessage> = data
                .get("resources")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter_map(|(key, r)| {
                    let resource = parse::<ResourceSummary>(Some(r))?;
                    let (nested, _) = split_resource_key(key);
                    Some(TrackerMessage::ResourceUpdate(ResourceUpdate {
                        timestamp: envelope_time.unwrap_or_else(Utc::now),
                        resource,
                        stack: stack.clone(),
                        nested_stack: nested.map(str::to_owned),
                        event_id: String::new(),
                    }))
                })
                .collect();
            if let Some(done) = data
                .get("stacks")
                .and_then(|s| s.get(stack_name))
                .and_then(Value::as_object)
            {
                let finished_status = done
                    .get("stack")
                    .and_then(|s| s.get("status"))
                    .and_then(Value::as_str);
                if finished_status == Some(stack.status.as_str()) {
                    let success = done.get("status").and_then(Value::as_str) == Some("deployed");
                    out.push(TrackerMessage::DeploymentComplete(completion(
                        success, done,
                    )));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::snapshot::Snapshot;

    fn origin() -> Origin {
        Origin {
            stack_name: "s".into(),
            environment: "us-east-1".into(),
        }
    }

    fn summary(status: &str, completed: u32) -> StackSummary {
        StackSummary {
            name: "s".into(),
            status: status.into(),
            total_resources: 2,
            completed_resources: completed,
            in_progress_resources: 0,
            failed_resources: 0,
            progress: (completed * 50) as u8,
            ..StackSummary::default()
        }
    }

    fn update(id: &str, status: &str, completed: u32) -> TrackerMessage {
        TrackerMessage::ResourceUpdate(ResourceUpdate {
            timestamp: DateTime::parse_from_rfc3339("2025-11-15T10:30:45.120Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now()),
            resource: ResourceSummary {
                logical_id: id.into(),
                resource_type: "AWS::S3::Bucket".into(),
                status: status.into(),
                physical_id: format!("{id}-phys"),
                status_reason: String::new(),
                progress: (completed * 50) as u8,
                ..ResourceSummary::default()
            },
            stack: summary("CREATE_IN_PROGRESS", completed),
            nested_stack: None,
            event_id: format!("ev-{id}-{status}"),
        })
    }

    #[test]
    fn round_trip_through_the_hub() {
        let msgs = vec![
            update("A", "CREATE_IN_PROGRESS", 0),
            update("A", "CREATE_COMPLETE", 1),
            TrackerMessage::Problem(TrackerProblem {
                code: ErrorCode::Throttled,
                message: "AWS is throttling CloudFormation requests.".into(),
                retrying: true,
                retry_at: parse_time(Some(&Value::from("2025-11-15T10:31:02.500Z"))),
            }),
            TrackerMessage::Recovered(TrackerRecovered {
                code: ErrorCode::Throttled,
            }),
            TrackerMessage::DeploymentComplete(DeploymentComplete {
                success: true,
                stack: summary("CREATE_COMPLETE", 2),
                outputs: vec![StackOutput {
                    key: "K".into(),
                    value: "V".into(),
                    description: "D".into(),
                }],
                duration_seconds: 12,
                root_cause: None,
            }),
        ];
        let mut back = Vec::new();
        for m in &msgs {
            for (t, data) in to_hub(m, &origin()) {
                back.extend(from_hub(t, "2025-11-15T10:31:00.000Z", &data, "s"));
            }
        }
        assert_eq!(back, msgs);
    }

    #[test]
    fn tracker_errors_carry_the_contract_fields() {
        let problem = TrackerMessage::Problem(TrackerProblem {
            code: ErrorCode::AccessDenied,
            message: "AWS denied access.".into(),
            retrying: true,
            retry_at: parse_time(Some(&Value::from("2025-11-15T10:35:00Z"))),
        });
        let events = to_hub(&problem, &origin());
        assert_eq!(events[0].0, TRACKER_ERROR);
        assert_eq!(
            Value::Object(events[0].1.clone()),
            json!({"code": "access_denied", "message": "AWS denied access.", "retrying": true,
                   "retry_at": "2025-11-15T10:35:00.000Z"})
        );
        // An error without a code (an older server's history) stays readable.
        let old = object(json!({"message": "Rate exceeded", "retrying": true}));
        assert!(matches!(
            from_hub(TRACKER_ERROR, "", &old, "s").as_slice(),
            [TrackerMessage::Error(e)] if e.retrying
        ));
    }

    #[test]
    fn log_lines_and_failure() {
        let events = to_hub(&update("Db", "CREATE_FAILED", 0), &origin());
        assert_eq!(events[1].0, LOG_CREATED);
        assert_eq!(events[1].1["level"], "error");
        assert_eq!(events[1].1["message"], "Db (AWS::S3::Bucket) CREATE_FAILED");
        let failed = TrackerMessage::DeploymentComplete(DeploymentComplete {
            success: false,
            stack: summary("ROLLBACK_COMPLETE", 0),
            outputs: vec![],
            duration_seconds: 3,
            root_cause: Some(RootCause {
                logical_id: "Db".into(),
                resource_type: "AWS::RDS::DBInstance".into(),
                status: "CREATE_FAILED".into(),
                reason: "boom".into(),
            }),
        });
        let events = to_hub(&failed, &origin());
        assert_eq!(events[0].0, STACK_FAILED);
        assert_eq!(events[0].1["error_message"], "boom");
        assert_eq!(events[0].1["root_cause"]["logicalId"], "Db");
        let back = from_hub(STACK_FAILED, "", &events[0].1, "s");
        assert_eq!(back, vec![failed]);
    }

    /// B3: a late joiner's snapshot keeps nested resources apart from the root's,
    /// each with its nested stack.
    #[test]
    fn snapshot_keeps_nested_resources_apart() {
        let mut snap = Snapshot::default();
        let mut nested = update("CDKMetadata", "CREATE_FAILED", 0);
        if let TrackerMessage::ResourceUpdate(u) = &mut nested {
            u.nested_stack = Some("s-Net-X".into());
        }
        let mut seq = 0;
        for m in [update("CDKMetadata", "CREATE_COMPLETE", 1), nested] {
            for (t, data) in to_hub(&m, &origin()) {
                seq += 1;
                snap.apply(seq, "2025-11-15T10:31:00.000Z", t, &data);
            }
        }
        let msgs = from_hub(
            snap.event_type(),
            "2025-11-15T10:31:00.000Z",
            snap.data(),
            "s",
        );
        let rows: Vec<(Option<String>, String, String)> = msgs
            .iter()
            .filter_map(|m| match m {
                TrackerMessage::ResourceUpdate(u) => Some((
                    u.nested_stack.clone(),
                    u.resource.logical_id.clone(),
                    u.resource.status.clone(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    None,
                    "CDKMetadata".to_string(),
                    "CREATE_COMPLETE".to_string()
                ),
                (
                    Some("s-Net-X".to_string()),
                    "CDKMetadata".to_string(),
                    "CREATE_FAILED".to_string()
                ),
            ]
        );
    }

    #[test]
    fn snapshot_gives_resources_then_completion() {
        let mut snap = Snapshot::default();
        let mut seq = 0;
        for m in [
            update("A", "CREATE_COMPLETE", 1),
            update("B", "CREATE_COMPLETE", 2),
            TrackerMessage::DeploymentComplete(DeploymentComplete {
                success: true,
                stack: summary("CREATE_COMPLETE", 2),
                outputs: vec![],
                duration_seconds: 1,
                root_cause: None,
            }),
        ] {
            for (t, data) in to_hub(&m, &origin()) {
                seq += 1;
                snap.apply(seq, "2025-11-15T10:31:00.000Z", t, &data);
            }
        }
        let msgs = from_hub(
            snap.event_type(),
            "2025-11-15T10:31:00.000Z",
            snap.data(),
            "s",
        );
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            matches!(&msgs[0], TrackerMessage::ResourceUpdate(u) if u.resource.logical_id == "A")
        );
        assert!(matches!(&msgs[2], TrackerMessage::DeploymentComplete(d) if d.success));
    }
}
