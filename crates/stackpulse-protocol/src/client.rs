//! Client → server messages and their parser.
//!
//! A text frame flows through [`parse_client_message`]: JSON → object → `action` →
//! the action's fields. Each way it can go wrong has its own [`ProtocolError`], whose
//! `Display` is the exact message the client receives in
//! `{"type":"error","code":400,"message":…}`.

use serde_json::{Map, Value};

use crate::MAX_TOPIC_LEN;

/// One parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Start (or restart) a subscription. `since` asks for every event with a
    /// larger seq; `epoch` is the topic epoch the client saw with that seq.
    Subscribe {
        deployment_id: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// Stop a subscription.
    Unsubscribe { deployment_id: String },
    /// Application-level keep-alive, answered with `pong`.
    Ping,
    /// A fresh token for this connection, sent before the current one expires.
    Auth { token: String },
}

/// Why a client frame was refused. The connection stays usable after each of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Message must be a JSON object")]
    NotAnObject,
    #[error("Missing action")]
    MissingAction,
    #[error("Unknown action: {0}")]
    UnknownAction(String),
    #[error("Missing deployment_id")]
    MissingDeploymentId,
    #[error("Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes")]
    InvalidDeploymentId,
    #[error("Invalid since: must be a non-negative integer")]
    InvalidSince,
    #[error("Invalid epoch: must be a string")]
    InvalidEpoch,
    #[error("Binary frames are not supported; send JSON text frames")]
    BinaryFrame,
    #[error("Missing token")]
    MissingToken,
}

impl ProtocolError {
    /// The numeric code sent with the error (all of these are client mistakes).
    pub fn code(&self) -> u16 {
        400
    }
}

/// Parses one text frame.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::NotAnObject);
    };
    let action = match obj.get("action") {
        None | Some(Value::Null) => return Err(ProtocolError::MissingAction),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(ProtocolError::UnknownAction(other.to_string())),
    };
    match action {
        "subscribe" => Ok(ClientMessage::Subscribe {
            deployment_id: deployment_id(&obj)?,
            since: since(&obj)?,
            epoch: match obj.get("epoch") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(ProtocolError::InvalidEpoch),
            },
        }),
        "unsubscribe" => Ok(ClientMessage::Unsubscribe {
            deployment_id: deployment_id(&obj)?,
        }),
        "ping" => Ok(ClientMessage::Ping),
        "auth" => match obj.get("token") {
            Some(Value::String(t)) if !t.is_empty() => Ok(ClientMessage::Auth { token: t.clone() }),
            _ => Err(ProtocolError::MissingToken),
        },
        "" => Err(ProtocolError::MissingAction),
        other => Err(ProtocolError::UnknownAction(truncate(other, 64))),
    }
}

fn deployment_id(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    match obj.get("deployment_id") {
        None | Some(Value::Null) => Err(ProtocolError::MissingDeploymentId),
        Some(Value::String(s)) if s.is_empty() => Err(ProtocolError::MissingDeploymentId),
        Some(Value::String(s)) if s.len() <= MAX_TOPIC_LEN => Ok(s.clone()),
        Some(_) => Err(ProtocolError::InvalidDeploymentId),
    }
}

fn since(obj: &Map<String, Value>) -> Result<Option<u64>, ProtocolError> {
    match obj.get("since") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(ProtocolError::InvalidSince),
        Some(_) => Err(ProtocolError::InvalidSince),
    }
}

/// Keeps an echoed client string short enough for an error message.
fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_client_message(text)
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn parses_every_action() {
        assert_eq!(
            parse_client_message(r#"{"action":"subscribe","deployment_id":"D1"}"#),
            Ok(ClientMessage::Subscribe {
                deployment_id: "D1".into(),
                since: None,
                epoch: None
            })
        );
        assert_eq!(
            parse_client_message(
                r#"{"action":"subscribe","deployment_id":"D1","since":41,"epoch":"k3"}"#
            ),
            Ok(ClientMessage::Subscribe {
                deployment_id: "D1".into(),
                since: Some(41),
                epoch: Some("k3".into())
            })
        );
        assert_eq!(
            parse_client_message(r#"{"action":"unsubscribe","deployment_id":"D1"}"#),
            Ok(ClientMessage::Unsubscribe {
                deployment_id: "D1".into()
            })
        );
        assert_eq!(
            parse_client_message(r#"{"action":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
    }

    #[test]
    fn errors_carry_the_contract_text() {
        assert!(err("{nope").starts_with("Invalid JSON: "));
        assert_eq!(err("[1,2]"), "Message must be a JSON object");
        assert_eq!(err(r#"{"deployment_id":"D1"}"#), "Missing action");
        assert_eq!(err(r#"{"action":"foo"}"#), "Unknown action: foo");
        assert_eq!(err(r#"{"action":7}"#), "Unknown action: 7");
        assert_eq!(err(r#"{"action":"subscribe"}"#), "Missing deployment_id");
        assert_eq!(
            err(r#"{"action":"subscribe","deployment_id":""}"#),
            "Missing deployment_id"
        );
        assert_eq!(err(r#"{"action":"unsubscribe"}"#), "Missing deployment_id");
        assert_eq!(
            err(r#"{"action":"subscribe","deployment_id":"D","since":-1}"#),
            "Invalid since: must be a non-negative integer"
        );
        assert_eq!(
            err(r#"{"action":"subscribe","deployment_id":"D","since":1.5}"#),
            "Invalid since: must be a non-negative integer"
        );
        assert_eq!(
            err(r#"{"action":"subscribe","deployment_id":"D","since":"3"}"#),
            "Invalid since: must be a non-negative integer"
        );
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert!(err(&format!(
            r#"{{"action":"subscribe","deployment_id":"{long}"}}"#
        ))
        .starts_with("Invalid deployment_id"));
    }

    #[test]
    fn a_non_string_epoch_is_refused() {
        assert_eq!(
            err(r#"{"action":"subscribe","deployment_id":"D","epoch":7}"#),
            "Invalid epoch: must be a string"
        );
        assert_eq!(
            parse_client_message(r#"{"action":"subscribe","deployment_id":"D","epoch":null}"#),
            Ok(ClientMessage::Subscribe {
                deployment_id: "D".into(),
                since: None,
                epoch: None
            }),
            "a null epoch is no epoch"
        );
    }

    #[test]
    fn unknown_action_is_truncated() {
        let long = "a".repeat(500);
        let msg = err(&format!(r#"{{"action":"{long}"}}"#));
        assert!(msg.len() < 100, "{msg}");
    }
}
