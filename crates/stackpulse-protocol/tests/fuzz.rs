//! Property tests: no input makes the parsers panic, and every refusal carries a
//! message for the client.

use proptest::prelude::*;
use stackpulse_protocol::{parse_client_message, Incoming, PublishRequest};

/// JSON-ish text: random bytes are mostly rejected at the first character, so
/// also build strings from JSON fragments to reach the deeper checks.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("\"action\"".to_string()),
        Just("\"subscribe\"".to_string()),
        Just("\"unsubscribe\"".to_string()),
        Just("\"ping\"".to_string()),
        Just("\"auth\"".to_string()),
        Just("\"deployment_id\"".to_string()),
        Just("\"since\"".to_string()),
        Just("\"epoch\"".to_string()),
        Just("\"token\"".to_string()),
        Just("\"type\"".to_string()),
        Just("\"data\"".to_string()),
        Just("\"acl\"".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[a-z.]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
    ];
    prop::collection::vec(atom, 0..24).prop_map(|parts| parts.concat())
}

fn object() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("\"subscribe\"".to_string()),
        Just("\"ping\"".to_string()),
        Just("\"auth\"".to_string()),
        Just("\"\"".to_string()),
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
        "\\PC{0,300}".prop_map(|s| serde_json::Value::String(s).to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ];
    let key = prop_oneof![
        Just("action"),
        Just("deployment_id"),
        Just("since"),
        Just("epoch"),
        Just("token"),
        Just("type"),
        Just("data"),
        Just("acl"),
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_parser_never_panics(text in prop_oneof![any::<String>(), jsonish(), object()]) {
        if let Err(e) = parse_client_message(&text) {
            prop_assert!(!e.to_string().is_empty());
            prop_assert_eq!(e.code(), 400);
        }
    }

    #[test]
    fn publish_parser_never_panics(text in prop_oneof![any::<String>(), jsonish(), object()]) {
        if let Err(message) = PublishRequest::from_json(text.as_bytes()) {
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn server_frame_decoder_never_panics(text in prop_oneof![any::<String>(), jsonish(), object()]) {
        let _ = Incoming::parse(&text);
    }
}
