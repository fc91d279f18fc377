//! A stamped event: what the hub stores, replays and fans out.
//!
//! A source hands the hub a type and a `data` object; the backplane stamps it with
//! the topic's next seq, the topic epoch and a timestamp, and serializes it **once**
//! into [`StampedEvent::frame`]. Every subscriber then receives a clone of the same
//! reference-counted bytes. Next to the frame it keeps the typed `data` object,
//! parsed at most once per node ([`StampedEvent::data`]), so consumers that need
//! the fields (the canvas socket, GraphQL, deployments, the tracker's dedup) read
//! them without re-parsing the frame each time, and the frame's WebSocket
//! encoding ([`StampedEvent::ws_frame`]), made once for all raw `/ws` sockets.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use stackpulse_protocol::Acl;

/// One numbered event of one topic.
#[derive(Debug)]
pub struct StampedEvent {
    pub topic: Arc<str>,
    pub seq: u64,
    /// The epoch of the topic's seq counter when this event was stamped.
    pub epoch: Arc<str>,
    pub event_type: Box<str>,
    /// The complete JSON text frame sent to `/ws` subscribers.
    pub frame: Utf8Bytes,
    /// When this node stamped or received it; the delivery-latency metric starts here.
    pub published_at: Instant,
    /// The ACL this event set on its topic (`None`: it left the ACL as it was).
    /// Live subscribers are checked against it before it is delivered.
    pub acl: Option<Acl>,
    /// The typed body (`data` and `timestamp`), parsed from the frame on first use
    /// (or kept from the publish on the node that stamped the event).
    body: OnceLock<Body>,
    /// [`frame`](Self::frame) as one complete WebSocket text frame (header and
    /// payload), encoded on first use and then written as is to every raw `/ws`
    /// socket ([`crate::ws::frame`]).
    ws_frame: OnceLock<Bytes>,
}

/// The parts of an event consumers read as values.
#[derive(Debug, Default)]
struct Body {
    data: Arc<Map<String, Value>>,
    timestamp: Box<str>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    deployment_id: &'a str,
    seq: u64,
    timestamp: &'a str,
    data: &'a Map<String, Value>,
}

/// Serializes an event (or a snapshot) in the contract's field order.
pub fn encode_frame(
    event_type: &str,
    topic: &str,
    seq: u64,
    timestamp: &str,
    data: &Map<String, Value>,
) -> Utf8Bytes {
    let wire = Wire {
        event_type,
        deployment_id: topic,
        seq,
        timestamp,
        data,
    };
    // A struct of strings, integers and a string-keyed map always serializes.
    Utf8Bytes::from(serde_json::to_string(&wire).unwrap_or_default())
}

impl StampedEvent {
    pub fn new(
        topic: Arc<str>,
        seq: u64,
        epoch: Arc<str>,
        event_type: &str,
        timestamp: &str,
        data: &Map<String, Value>,
    ) -> StampedEvent {
        let frame = encode_frame(event_type, &topic, seq, timestamp, data);
        let event = StampedEvent::from_frame(topic, seq, epoch, event_type, frame);
        let _ = event.body.set(Body {
            data: Arc::new(data.clone()),
            timestamp: timestamp.into(),
        });
        event
    }

    /// An event received already encoded (from Redis); its data is parsed lazily.
    pub fn from_frame(
        topic: Arc<str>,
        seq: u64,
        epoch: Arc<str>,
        event_type: &str,
        frame: Utf8Bytes,
    ) -> StampedEvent {
        StampedEvent {
            topic,
            seq,
            epoch,
            event_type: event_type.into(),
            frame,
            published_at: Instant::now(),
            acl: None,
            body: OnceLock::new(),
            ws_frame: OnceLock::new(),
        }
    }

    /// Marks the event as the one that set its topic's ACL to `acl`.
    pub fn with_acl(mut self, acl: Option<Acl>) -> StampedEvent {
        self.acl = acl;
        self
    }

    fn body(&self) -> &Body {
        self.body.get_or_init(|| {
            #[derive(serde::Deserialize)]
            struct Wire {
                #[serde(default)]
                data: Map<String, Value>,
                #[serde(default)]
                timestamp: String,
            }
            serde_json::from_str::<Wire>(self.frame.as_str())
                .map(|w| Body {
                    data: Arc::new(w.data),
                    timestamp: w.timestamp.into(),
                })
                .unwrap_or_default()
        })
    }

    /// The event's frame as a complete WebSocket text frame, encoded once per
    /// event and shared by every subscriber.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame
            .get_or_init(|| crate::ws::frame::text(self.frame.as_str()))
    }

    /// The event's `data` object (empty if the frame has none).
    pub fn data(&self) -> &Arc<Map<String, Value>> {
        &self.body().data
    }

    /// The event's timestamp, as stamped (RFC 3339).
    pub fn timestamp(&self) -> &str {
        &self.body().timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_contract_field_order() {
        let mut data = Map::new();
        data.insert("status".into(), Value::from("deploying"));
        let ev = StampedEvent::new(
            "D1".into(),
            58,
            "e".into(),
            "deployment.status",
            "2025-10-23T10:05:00.000Z",
            &data,
        );
        assert_eq!(
            ev.frame.as_str(),
            r#"{"type":"deployment.status","deployment_id":"D1","seq":58,"timestamp":"2025-10-23T10:05:00.000Z","data":{"status":"deploying"}}"#
        );
        let received = StampedEvent::from_frame(
            "D1".into(),
            58,
            "e".into(),
            "deployment.status",
            ev.frame.clone(),
        );
        assert_eq!(
            received.data().get("status"),
            Some(&Value::from("deploying"))
        );
        assert_eq!(received.timestamp(), "2025-10-23T10:05:00.000Z");
    }
}
