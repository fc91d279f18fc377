//! The publish API's request body (`POST /v1/events`) and its validation.
//!
//! Validation happens before the hub assigns a seq, so a refused publish uses no
//! seq. Known seed types must carry their documented fields; other dotted types
//! (`myapp.custom`) are accepted with any object as `data`; `*.snapshot` types are
//! reserved for the server.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::MAX_TOPIC_LEN;

/// Who may subscribe to a topic (enforced once auth is configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Acl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A validated publish request.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    pub event_type: String,
    pub deployment_id: String,
    pub data: Map<String, Value>,
    pub acl: Option<Acl>,
}

/// The longest event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 64;

/// Each required field of the seed's event types and the JSON kind it must have.
fn required_fields(event_type: &str) -> Option<&'static [(&'static str, Kind)]> {
    use Kind::*;
    Some(match event_type {
        "deployment.status" => &[("status", Str)],
        "stack.deployed" => &[("stack_name", Str)],
        "stack.failed" => &[("stack_name", Str), ("error_message", Str)],
        "log.created" => &[("level", Str), ("message", Str)],
        _ => return None,
    })
}

/// Optional fields of the seed's types that, when present, must have this kind.
fn typed_optional_fields(event_type: &str) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    match event_type {
        "deployment.status" => &[("current_layer", UInt), ("total_layers", UInt)],
        "stack.deployed" => &[
            ("environment", Str),
            ("duration_seconds", Num),
            ("resource_count", UInt),
        ],
        "stack.failed" | "log.created" => &[("environment", Str), ("stack_name", Str)],
        _ => &[],
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    UInt,
    Num,
}

impl Kind {
    fn matches(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::UInt => v.is_u64(),
            Kind::Num => v.is_number(),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::UInt => "a non-negative integer",
            Kind::Num => "a number",
        }
    }
}

impl PublishRequest {
    /// A request from its parts (the GraphQL mutation builds one this way),
    /// validated as a body would be. The error is the message of the 400 response.
    pub fn new(
        event_type: String,
        deployment_id: String,
        data: Map<String, Value>,
        acl: Option<Acl>,
    ) -> Result<PublishRequest, String> {
        validate_type(&event_type)?;
        if deployment_id.is_empty() {
            return Err("Missing deployment_id".into());
        }
        if deployment_id.len() > MAX_TOPIC_LEN {
            return Err(format!(
                "Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes"
            ));
        }
        validate_data(&event_type, &data)?;
        Ok(PublishRequest {
            event_type,
            deployment_id,
            data,
            acl,
        })
    }

    /// Validates a request body. The error is the message of the 400 response.
    pub fn from_json(body: &[u8]) -> Result<PublishRequest, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("Invalid JSON: {e}"))?;
        let Value::Object(mut obj) = value else {
            return Err("Body must be a JSON object".into());
        };
        let event_type = match obj.remove("type") {
            None | Some(Value::Null) => return Err("Missing type".into()),
            Some(Value::String(s)) => s,
            Some(_) => return Err("Invalid type: must be a string".into()),
        };
        validate_type(&event_type)?;
        let deployment_id = match obj.remove("deployment_id") {
            None | Some(Value::Null) => return Err("Missing deployment_id".into()),
            Some(Value::String(s)) if s.is_empty() => return Err("Missing deployment_id".into()),
            Some(Value::String(s)) if s.len() <= MAX_TOPIC_LEN => s,
            Some(_) => {
                return Err(format!(
                    "Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes"
                ))
            }
        };
        let data = match obj.remove("data") {
            None | Some(Value::Null) => return Err("Missing data".into()),
            Some(Value::Object(m)) => m,
            Some(_) => return Err("Invalid data: must be a JSON object".into()),
        };
        validate_data(&event_type, &data)?;
        let acl = match obj.remove("acl") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(serde_json::from_value::<Acl>(v).map_err(|e| format!("Invalid acl: {e}"))?)
            }
        };
        if let Some(extra) = obj.keys().next() {
            return Err(format!("Unknown field: {extra}"));
        }
        Ok(PublishRequest {
            event_type,
            deployment_id,
            data,
            acl,
        })
    }
}

/// The seed types' required and typed fields.
fn validate_data(event_type: &str, data: &Map<String, Value>) -> Result<(), String> {
    if let Some(fields) = required_fields(event_type) {
        for (name, kind) in fields {
            match data.get(*name) {
                None | Some(Value::Null) => {
                    return Err(format!("Missing data.{name} for type {event_type}"))
                }
                Some(v) if !kind.matches(v) => {
                    return Err(format!("Invalid data.{name}: must be {}", kind.describe()))
                }
                Some(_) => {}
            }
        }
    }
    for (name, kind) in typed_optional_fields(event_type) {
        if let Some(v) = data.get(*name) {
            if !v.is_null() && !kind.matches(v) {
                return Err(format!("Invalid data.{name}: must be {}", kind.describe()));
            }
        }
    }
    Ok(())
}

fn validate_type(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("Missing type".into());
    }
    let well_formed = t.len() <= MAX_TYPE_LEN
        && t.contains('.')
        && t.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return Err(format!(
            "Invalid type: {t:?} must be dotted lower-case words like \"deployment.status\""
        ));
    }
    if t.ends_with(".snapshot") {
        return Err(format!(
            "Invalid type: {t} is reserved for server snapshots"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        PublishRequest::from_json(body.as_bytes()).expect_err("must fail")
    }

    #[test]
    fn accepts_seed_and_custom_types() {
        let r = PublishRequest::from_json(
            br#"{"type":"deployment.status","deployment_id":"D1","data":{"status":"deploying","current_layer":2,"total_layers":4}}"#,
        )
        .expect("valid");
        assert_eq!(r.event_type, "deployment.status");
        assert!(PublishRequest::from_json(
            br#"{"type":"myapp.build","deployment_id":"D1","data":{}}"#
        )
        .is_ok());
        let with_acl = PublishRequest::from_json(
            br#"{"type":"log.created","deployment_id":"D","data":{"level":"info","message":"m"},"acl":{"owner":"u1","groups":["ops"]}}"#,
        )
        .expect("valid");
        assert_eq!(with_acl.acl.expect("acl").groups, vec!["ops".to_string()]);
    }

    #[test]
    fn refuses_bad_bodies_with_clear_messages() {
        assert!(err("nope").starts_with("Invalid JSON"));
        assert_eq!(err("[]"), "Body must be a JSON object");
        assert_eq!(err(r#"{"deployment_id":"D","data":{}}"#), "Missing type");
        assert_eq!(
            err(r#"{"type":"deployment.status","data":{}}"#),
            "Missing deployment_id"
        );
        assert_eq!(
            err(r#"{"type":"deployment.status","deployment_id":"D"}"#),
            "Missing data"
        );
        assert_eq!(
            err(r#"{"type":"deployment.status","deployment_id":"D","data":[]}"#),
            "Invalid data: must be a JSON object"
        );
        assert_eq!(
            err(r#"{"type":"deployment.status","deployment_id":"D","data":{}}"#),
            "Missing data.status for type deployment.status"
        );
        assert_eq!(
            err(
                r#"{"type":"deployment.status","deployment_id":"D","data":{"status":"x","total_layers":-2}}"#
            ),
            "Invalid data.total_layers: must be a non-negative integer"
        );
        assert!(
            err(r#"{"type":"Bad Type","deployment_id":"D","data":{}}"#).starts_with("Invalid type")
        );
        assert!(
            err(r#"{"type":"stack.snapshot","deployment_id":"D","data":{}}"#).contains("reserved")
        );
        assert_eq!(
            err(r#"{"type":"a.b","deployment_id":"D","data":{},"extra":1}"#),
            "Unknown field: extra"
        );
    }

    #[test]
    fn field_kinds_are_named_in_the_refusal() {
        assert_eq!(
            err(r#"{"type":"stack.deployed","deployment_id":"D","data":{"stack_name":5}}"#),
            "Invalid data.stack_name: must be a string",
            "a required field of the wrong kind"
        );
        assert_eq!(
            err(
                r#"{"type":"stack.deployed","deployment_id":"D","data":{"stack_name":"s","duration_seconds":"long"}}"#
            ),
            "Invalid data.duration_seconds: must be a number"
        );
        assert!(PublishRequest::from_json(
            br#"{"type":"stack.deployed","deployment_id":"D","data":{"stack_name":"s","duration_seconds":1.5}}"#
        )
        .is_ok());
    }

    #[test]
    fn deployment_ids_are_bounded() {
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        let invalid =
            format!("Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes");
        assert_eq!(
            err(&format!(
                r#"{{"type":"a.b","deployment_id":"{long}","data":{{}}}}"#
            )),
            invalid
        );
        assert_eq!(
            err(r#"{"type":"a.b","deployment_id":7,"data":{}}"#),
            invalid
        );
        let max = "x".repeat(MAX_TOPIC_LEN);
        assert!(PublishRequest::from_json(
            format!(r#"{{"type":"a.b","deployment_id":"{max}","data":{{}}}}"#).as_bytes()
        )
        .is_ok());
    }

    #[test]
    fn new_validates_like_a_body() {
        let status = |s: &str| {
            let mut m = Map::new();
            m.insert("status".into(), Value::String(s.into()));
            m
        };
        let ok = PublishRequest::new(
            "deployment.status".into(),
            "D1".into(),
            status("deployed"),
            None,
        )
        .expect("valid");
        assert_eq!(ok.deployment_id, "D1");
        assert_eq!(
            PublishRequest::new("deployment.status".into(), String::new(), status("x"), None),
            Err("Missing deployment_id".into())
        );
        assert_eq!(
            PublishRequest::new(
                "deployment.status".into(),
                "x".repeat(MAX_TOPIC_LEN + 1),
                status("x"),
                None
            ),
            Err(format!(
                "Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes"
            ))
        );
        assert_eq!(
            PublishRequest::new("deployment.status".into(), "D".into(), Map::new(), None),
            Err("Missing data.status for type deployment.status".into())
        );
        assert!(
            PublishRequest::new("stack.snapshot".into(), "D".into(), Map::new(), None)
                .expect_err("reserved")
                .contains("reserved")
        );
    }
}
