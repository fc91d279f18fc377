//! Server → client messages: control replies and events.
//!
//! The server encodes these; clients decode any text frame with [`Incoming::parse`],
//! which tells control replies (a fixed set of `type`s) from events (everything else,
//! e.g. `deployment.status`, `resource.status`, `deployment.snapshot`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A control reply. Serialized with `type` as the tag, exactly as the contract shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The subscription is in place. `seq` is the topic's latest seq (0 for a topic
    /// without events); `recovered` says whether a `since` resume could be honoured.
    Subscribed {
        deployment_id: String,
        seq: u64,
        epoch: String,
        recovered: bool,
    },
    Unsubscribed {
        deployment_id: String,
    },
    Pong {
        timestamp: String,
    },
    /// An in-band `auth` was accepted; the connection now lasts until `expires_at`.
    Authenticated {
        expires_at: String,
    },
    Error {
        code: u16,
        message: String,
        /// The topic the error is about, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment_id: Option<String>,
    },
}

impl ServerMessage {
    /// An error reply not tied to a topic.
    pub fn error(code: u16, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            deployment_id: None,
        }
    }

    /// Encodes the message as a JSON text frame.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// One event of a topic, as delivered. Snapshots (`*.snapshot`) have the same shape;
/// their `seq` is the seq they are current to and is not part of the numbered stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub deployment_id: String,
    pub seq: u64,
    pub timestamp: String,
    pub data: Value,
}

impl Event {
    /// Whether this is a state snapshot rather than a numbered event.
    pub fn is_snapshot(&self) -> bool {
        self.event_type.ends_with(".snapshot")
    }
}

/// Any frame a client can receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Control(ServerMessage),
    Event(Event),
}

const CONTROL_TYPES: &[&str] = &[
    "subscribed",
    "unsubscribed",
    "pong",
    "error",
    "authenticated",
];

impl Incoming {
    /// Decodes one text frame from the server.
    pub fn parse(text: &str) -> Result<Incoming, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        let is_control = value
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| CONTROL_TYPES.contains(&t));
        if is_control {
            serde_json::from_value(value).map(Incoming::Control)
        } else {
            serde_json::from_value(value).map(Incoming::Event)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_replies_match_the_contract() {
        let s = ServerMessage::Subscribed {
            deployment_id: "D1BRV40".into(),
            seq: 57,
            epoch: "k3J9".into(),
            recovered: true,
        };
        assert_eq!(
            s.to_json(),
            r#"{"type":"subscribed","deployment_id":"D1BRV40","seq":57,"epoch":"k3J9","recovered":true}"#
        );
        assert_eq!(
            ServerMessage::error(400, "Missing deployment_id").to_json(),
            r#"{"type":"error","code":400,"message":"Missing deployment_id"}"#
        );
        assert_eq!(
            ServerMessage::Unsubscribed {
                deployment_id: "D".into()
            }
            .to_json(),
            r#"{"type":"unsubscribed","deployment_id":"D"}"#
        );
    }

    #[test]
    fn incoming_tells_events_from_control() {
        let ev = Incoming::parse(
            r#"{"type":"deployment.status","deployment_id":"D","seq":3,"timestamp":"t","data":{"status":"x"}}"#,
        )
        .expect("parses");
        assert!(matches!(ev, Incoming::Event(Event { seq: 3, .. })));
        let pong = Incoming::parse(r#"{"type":"pong","timestamp":"t"}"#).expect("parses");
        assert!(matches!(
            pong,
            Incoming::Control(ServerMessage::Pong { .. })
        ));
    }
}
