//! `POST /v1/ingest/eventbridge`: push ingest from an EventBridge API destination.
//!
//! The body is one EventBridge event as EventBridge delivers it (unknown fields are
//! ignored). A `CloudFormation Resource Status Change` or `CloudFormation Stack
//! Status Change` from `aws.cloudformation` names a stack in `detail.stack-id`
//! (`arn:<partition>:cloudformation:<region>:<account>:stack/<name>/<uuid>`); the
//! push wakes that stack's poller on whichever node holds its lease
//! ([`crate::hub::Backplane::wake`]), and the poller polls at once. **A push never
//! writes events**: the poller reads them from CloudFormation, so EventId dedup
//! keeps the stream exact whatever order or how many times EventBridge delivers.
//! A push for a stack nobody watches is answered 202 and does nothing more (the
//! next subscriber's poller starts from the stack's current operation anyway).
//!
//! Replies (so that EventBridge's retry policy does the right thing): credential
//! first, 401/403 like `POST /v1/events`; 400 for a malformed event (not retried);
//! `200 {"ignored": reason}` for other detail-types or sources and for a stack
//! `--stack-allow` excludes; `202 {"stack", "region", "topic"}` once the wake is
//! sent; 503 when the backplane is down (retried).
//!
//! Metric: `stackpulse_ingest_pushes_total{result}`, `result` one of `woken`,
//! `ignored`, `invalid`, `refused` (credential), `unavailable`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::error::AppError;
use super::publish::publisher_body;
use crate::app::AppState;
use crate::topic_policy::glob_match;
use crate::tracking::{valid_region, valid_stack_name};

/// The detail-types that name a stack whose poller should poll now.
const DETAIL_TYPES: [&str; 2] = [
    "CloudFormation Resource Status Change",
    "CloudFormation Stack Status Change",
];
const SOURCE: &str = "aws.cloudformation";

/// What an event asks for.
#[derive(Debug, PartialEq, Eq)]
enum Push {
    /// Wake the poller of this stack.
    Stack { region: String, stack: String },
    /// Not a CloudFormation status change: nothing to do.
    Ignored(String),
}

fn count(result: &'static str) {
    metrics::counter!("stackpulse_ingest_pushes_total", "result" => result).increment(1);
}

/// Reads one EventBridge event; `Err` is the 400 message.
fn parse(body: &[u8]) -> Result<Push, String> {
    let event: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON body: {e}"))?;
    let Some(obj) = event.as_object() else {
        return Err("The body must be one EventBridge event (a JSON object)".into());
    };
    let field = |name: &str| -> Result<&str, String> {
        obj.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("Not an EventBridge event: `{name}` is missing or not a string"))
    };
    let detail_type = field("detail-type")?;
    let source = field("source")?;
    if source != SOURCE {
        return Ok(Push::Ignored(format!("source {source} is not {SOURCE}")));
    }
    if !DETAIL_TYPES.contains(&detail_type) {
        return Ok(Push::Ignored(format!(
            "detail-type {detail_type} is not a CloudFormation status change"
        )));
    }
    let region = field("region")?;
    if !valid_region(region) {
        return Err(format!("`region` {region:?} is not an AWS region"));
    }
    let stack_id = obj
        .get("detail")
        .and_then(|d| d.get("stack-id"))
        .and_then(Value::as_str)
        .ok_or("`detail.stack-id` is missing or not a string")?;
    let (arn_region, stack) = stack_of_arn(stack_id).ok_or_else(|| {
        format!(
            "`detail.stack-id` {stack_id:?} is not a stack ARN \
             (arn:aws:cloudformation:<region>:<account>:stack/<name>/<id>)"
        )
    })?;
    if arn_region != region {
        return Err(format!(
            "`detail.stack-id` is in {arn_region} but the event's `region` is {region}"
        ));
    }
    Ok(Push::Stack {
        region: region.to_owned(),
        stack: stack.to_owned(),
    })
}

/// `arn:<partition>:cloudformation:<region>:<account>:stack/<name>/<id>` → (region, name).
pub(crate) fn stack_of_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("cloudformation"), Some(region), Some(_), Some(res)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let mut res = res.split('/');
    let (Some("stack"), Some(name), Some(id), None) =
        (res.next(), res.next(), res.next(), res.next())
    else {
        return None;
    };
    (partition.starts_with("aws")
        && valid_region(region)
        && valid_stack_name(name)
        && !id.is_empty())
    .then_some((region, name))
}

pub async fn eventbridge(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match publisher_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(refusal) => {
            let status = refusal.status();
            count(
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    "refused"
                } else if status.is_client_error() {
                    "invalid"
                } else {
                    "unavailable"
                },
            );
            return refusal;
        }
    };
    let (region, stack) = match parse(&body) {
        Ok(Push::Stack { region, stack }) => (region, stack),
        Ok(Push::Ignored(reason)) => {
            count("ignored");
            return ignored(reason);
        }
        Err(message) => {
            count("invalid");
            return AppError::new(StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    wake_stack(&state, region, stack, count).await
}

/// The end of every push path (EventBridge and SNS): `--stack-allow` (200 ignored
/// when it excludes the stack), then the wake of the stack's canonical topic
/// through the backplane (202 `{"stack","region","topic"}`, or 503 when the
/// backplane is down). `count` records the result in the caller's metric.
pub(crate) async fn wake_stack(
    state: &AppState,
    region: String,
    stack: String,
    count: fn(&'static str),
) -> Response {
    if !state
        .config
        .stacks
        .allow
        .iter()
        .any(|g| glob_match(g, &stack))
    {
        count("ignored");
        return ignored(format!("stack {stack} is not tracked here (--stack-allow)"));
    }
    let topic = state.tracking.topic_for(&stack, Some(&region)).await;
    if let Err(e) = state.hub.backplane().wake(&topic).await {
        count("unavailable");
        tracing::warn!(%topic, error = %e, "cannot send a push wake");
        return AppError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
    }
    count("woken");
    tracing::debug!(%topic, "push: poller woken");
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stack": stack, "region": region, "topic": topic })),
    )
        .into_response()
}

/// `200 {"ignored": reason}`: a push that asks for nothing (not retried).
pub(crate) fn ignored(reason: String) -> Response {
    (
        StatusCode::OK,
        Json(serde_json::json!({ "ignored": reason })),
    )
        .into_response()
}

/// Declares the ingest metric.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "stackpulse_ingest_pushes_total",
        "Pushes received on POST /v1/ingest/eventbridge, by result \
         (woken, ignored, invalid, refused, unavailable)"
    );
    super::ingest_sns::describe_metrics();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, stack_id: &str) -> Vec<u8> {
        serde_json::json!({
            "version": "0", "id": "e1", "detail-type": detail_type,
            "source": "aws.cloudformation", "account": "123456789012",
            "time": "2026-12-03T09:00:00Z", "region": "eu-west-1",
            "resources": [stack_id], "extra": {"ignored": true},
            "detail": {"stack-id": stack_id, "status-details": {"status": "CREATE_IN_PROGRESS"}}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn parses_cloudformation_events() {
        let arn = "arn:aws:cloudformation:eu-west-1:123456789012:stack/my-stack/0a1b-2c";
        for dt in DETAIL_TYPES {
            assert_eq!(
                parse(&event(dt, arn)),
                Ok(Push::Stack {
                    region: "eu-west-1".into(),
                    stack: "my-stack".into()
                })
            );
        }
        assert!(matches!(
            parse(&event("CloudFormation Drift Detection Status Change", arn)),
            Ok(Push::Ignored(_))
        ));
        for bad in [
            "my-stack",
            "arn:aws:cloudformation:eu-west-1:1:stack/my-stack",
            "arn:aws:cloudformation:us-east-1:1:stack/my-stack/x",
            "arn:aws:s3:eu-west-1:1:stack/my-stack/x",
            "arn:aws:cloudformation:eu-west-1:1:stack/my_stack/x",
        ] {
            assert!(parse(&event(DETAIL_TYPES[0], bad)).is_err(), "{bad}");
        }
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"source":"aws.cloudformation"}"#).is_err());
    }
}
