//! `GET /canvas/deploy/track/{stack_name}?region=`: the seed-000 tracking socket.
//!
//! An invalid stack name or region is refused with 400 before the upgrade; then it
//! is a dialect of the connection driver ([`crate::ws::driver`]): admission,
//! writer, timeouts, limits and teardown are `/ws`'s, and it subscribes through
//! the same [`crate::ws::driver::subscribe_topic`] (ACL and canonical topic). The
//! connection then:
//! 1. subscribes a hub session to the stack's topic (`stack:<name>`, or
//!    `stack:<region>:<name>` for a region other than the default: the same topic
//!    `/ws` clients subscribe to), without `since`: a late joiner first gets the
//!    topic's `stack.snapshot`, sent as one `resource_update` per known resource
//!    (timestamped with the snapshot's time), then the last operation's
//!    `deployment_complete` if the stack is still in the status it ended in;
//! 2. the hub's topic interest then starts (or joins) the stack's poller, so `/ws`
//!    subscribers and canvas sockets share one;
//! 3. writes every later event translated ([`crate::tracking::events::from_hub`]):
//!    `resource.status` → `resource_update`, `stack.deployed`/`stack.failed` →
//!    `deployment_complete`, `tracker.error` → `error`; other events (`log.created`)
//!    are not part of this endpoint's contract and are skipped.
//!
//! The socket stays open after `deployment_complete`; the client closes it. Client
//! frames are read (for pongs, close and the idle timeout) and otherwise ignored.
//! Close codes are those of `/ws` (1001 shutdown, 1009 frame too large, 4000 idle,
//! 4001 token expired, 4008 slow consumer).

use std::net::SocketAddr;

use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use stackpulse_cfn::{TrackerError, TrackerMessage};

use crate::app::AppState;
use crate::http::error::AppError;
use crate::hub::Delivery;
use crate::tracking::events::from_hub;
use crate::tracking::{valid_region, valid_stack_name};
use crate::ws::driver::{self, subscribe_topic, Conn, Dialect, Encoded, Encoder};

#[derive(Debug, Deserialize)]
pub struct TrackQuery {
    pub region: Option<String>,
}

pub async fn track_handler(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(stack_name): Path<String>,
    Query(query): Query<TrackQuery>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_stack_name(&stack_name) {
        return AppError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid stack name: {stack_name}"),
        )
        .into_response();
    }
    let region = query.region.filter(|r| !r.is_empty());
    if let Some(r) = &region {
        if !valid_region(r) {
            return AppError::new(StatusCode::BAD_REQUEST, format!("Invalid region: {r}"))
                .into_response();
        }
    }
    let admitted = match driver::admit(&state, remote, &headers, raw_query.as_deref()).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let topic = state
        .tracking
        .topic_for(&stack_name, region.as_deref())
        .await;
    let canvas = Canvas { topic, stack_name };
    driver::serve(ws, crate::auth::gate::SUBPROTOCOL, state, admitted, canvas)
}

/// The canvas dialect: subscribed to its stack's topic when it opens; client
/// frames are ignored (the driver still reads them for pongs, close and idle).
struct Canvas {
    topic: String,
    stack_name: String,
}

impl Dialect for Canvas {
    type Encoder = CanvasEncoder;

    fn encoder(&mut self) -> CanvasEncoder {
        CanvasEncoder {
            stack_name: self.stack_name.clone(),
        }
    }

    async fn on_open(&mut self, conn: &Conn<'_>) {
        let session = &conn.info.session;
        let topic = &self.topic;
        tracing::debug!(conn = session.id, %topic, "canvas tracker connected");
        if let Err(e) =
            subscribe_topic(conn.state, session, &conn.info.user(), topic, None, None).await
        {
            let error = TrackerMessage::Error(TrackerError {
                message: format!("Cannot track {topic}: {e}"),
                retrying: false,
            });
            conn.send(encode(&error));
        }
    }

    async fn on_text(&mut self, _conn: &Conn<'_>, _text: &str) {}
}

/// A tracker message as this endpoint sends it (no `eventId`: not in its contract).
fn encode(msg: &TrackerMessage) -> String {
    let value = match msg {
        TrackerMessage::ResourceUpdate(u) => {
            let mut u = u.clone();
            u.event_id.clear();
            serde_json::to_string(&u)
        }
        other => serde_json::to_string(other),
    };
    value.unwrap_or_default()
}

/// The frames to write for one queued item.
fn translate(item: Delivery, stack_name: &str) -> Vec<String> {
    let text = match &item {
        // An event's typed body is parsed once per node, whoever reads it.
        Delivery::Event(event) => {
            return from_hub(
                &event.event_type,
                event.timestamp(),
                event.data(),
                stack_name,
            )
            .iter()
            .map(encode)
            .collect()
        }
        // A snapshot or a reply: encoded once for this subscriber.
        Delivery::Frame(frame) => frame.as_str(),
        Delivery::Subscribed(_) | Delivery::Rest(_) => return Vec::new(),
        Delivery::Forbidden(topic) => {
            let error = TrackerMessage::Error(TrackerError {
                message: format!("Forbidden: {topic}"),
                retrying: false,
            });
            return vec![encode(&error)];
        }
    };
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let event_type = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if event_type == "error" {
        // Already in this endpoint's format (queued by `run`).
        return vec![text.to_owned()];
    }
    let timestamp = frame
        .get("timestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(data) = frame.get("data").and_then(Value::as_object) else {
        return Vec::new();
    };
    from_hub(event_type, timestamp, data, stack_name)
        .iter()
        .map(encode)
        .collect()
}

/// The canvas dialect: hub events translated to the seed-000 messages.
struct CanvasEncoder {
    stack_name: String,
}

impl Encoder for CanvasEncoder {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64) {
        let frames = translate(item, &self.stack_name);
        let n = frames.len() as u64;
        let messages = frames
            .into_iter()
            .map(|f| Message::Text(Utf8Bytes::from(f)))
            .collect();
        (Encoded::Many(messages), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_events_become_canvas_messages() {
        let frame = r#"{"type":"resource.status","deployment_id":"stack:s","seq":1,"timestamp":"2025-11-15T10:30:46.000Z","data":{"resource":{"logicalId":"B","type":"AWS::S3::Bucket","status":"CREATE_COMPLETE","physicalId":"b","statusReason":"","progress":100},"stack":{"name":"s","status":"CREATE_IN_PROGRESS","totalResources":1,"completedResources":1,"inProgressResources":0,"failedResources":0,"progress":100},"eventId":"e1","eventTimestamp":"2025-11-15T10:30:45.000Z"}}"#;
        let out = translate(Delivery::frame(frame), "s");
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_str(&out[0]).expect("json");
        assert_eq!(v["type"], "resource_update");
        assert_eq!(v["timestamp"], "2025-11-15T10:30:45.000Z");
        assert_eq!(v["resource"]["logicalId"], "B");
        assert_eq!(v["stack"]["completedResources"], 1);
        assert!(v.get("eventId").is_none());
        let log = r#"{"type":"log.created","deployment_id":"stack:s","seq":2,"timestamp":"t","data":{"level":"info","message":"m"}}"#;
        assert!(translate(Delivery::frame(log), "s").is_empty());
    }
}
