//! A stamped event: what the hub stores, replays and fans out.
//!
//! A source hands the hub a type and a `data` object; the backplane stamps it with
//! the topic's next seq, the topic epoch and a timestamp, and serializes it **once**
//! into [`StampedEvent::frame`]. Every subscriber then receives a clone of the same
//! reference-counted bytes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

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
        StampedEvent {
            topic,
            seq,
            epoch,
            event_type: event_type.into(),
            frame,
            published_at: Instant::now(),
        }
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
    }
}
