//! The two dialects the load generator speaks.
//!
//! **stackpulse**: one `/ws` URL; a connection subscribes with a JSON request and
//! is subscribed once `{"type":"subscribed",…}` arrives; events are published as
//! `POST /v1/events` JSON with a publisher key and arrive inside the event envelope
//! (`type`, `seq`, `timestamp`, `data`). **nchan**: the channel is in the URL, the
//! WebSocket handshake itself subscribes, a publish is the raw body POSTed to the
//! channel's pub location, and it arrives as that same raw body.
//!
//! Both carry the same payload fields, so one extraction finds the send time:
//! `"sent_us":<microseconds since the Unix epoch>`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Which server the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Stackpulse,
    Nchan,
}

/// The key of the send time in every published payload.
const SENT_KEY: &str = "\"sent_us\":";

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Stackpulse => "stackpulse",
            Target::Nchan => "nchan",
        }
    }

    /// The subscribe request to send after the handshake, if the dialect has one.
    pub fn subscribe_request(self, topic: &str) -> Option<String> {
        match self {
            Target::Stackpulse => {
                Some(serde_json::json!({"action": "subscribe", "deployment_id": topic}).to_string())
            }
            Target::Nchan => None,
        }
    }

    /// Whether `frame` is the reply that completes a subscription (stackpulse), or
    /// the refusal of one (`Err` with the server's text).
    pub fn subscribe_reply(self, frame: &str) -> Option<Result<(), String>> {
        match self {
            Target::Stackpulse => {
                if frame.starts_with(r#"{"type":"subscribed""#) {
                    Some(Ok(()))
                } else if frame.starts_with(r#"{"type":"error""#) {
                    Some(Err(frame.to_owned()))
                } else {
                    None
                }
            }
            Target::Nchan => Some(Ok(())),
        }
    }

    /// The body of the publish of event `n` on `topic`, stamped now.
    pub fn publish_body(self, topic: &str, n: u64, filler: &str) -> String {
        let sent = now_us();
        match self {
            Target::Stackpulse => format!(
                r#"{{"type":"bench.tick","deployment_id":{},"data":{{"sent_us":{sent},"n":{n},"filler":"{filler}"}}}}"#,
                serde_json::Value::from(topic)
            ),
            Target::Nchan => format!(r#"{{"sent_us":{sent},"n":{n},"filler":"{filler}"}}"#),
        }
    }
}

/// Replaces `{topic}` in a URL template.
pub fn url_for(template: &str, topic: &str) -> String {
    template.replace("{topic}", topic)
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The send time carried by a delivered frame, if it is a bench event.
pub fn sent_us(frame: &str) -> Option<u64> {
    let start = frame.find(SENT_KEY)? + SENT_KEY.len();
    let digits = &frame[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_time_is_found_in_both_dialects() {
        let body = Target::Nchan.publish_body("t", 7, "xx");
        assert!(sent_us(&body).is_some_and(|t| t > 0));
        let published = Target::Stackpulse.publish_body("t", 7, "xx");
        let envelope = format!(
            r#"{{"type":"bench.tick","deployment_id":"t","seq":1,"timestamp":"x","data":{}}}"#,
            &published[published.find(r#"{"sent_us""#).expect("data")..published.len() - 1]
        );
        assert_eq!(sent_us(&envelope), sent_us(&published));
        assert_eq!(sent_us(r#"{"type":"subscribed"}"#), None);
        assert_eq!(sent_us(r#"{"sent_us":}"#), None);
    }

    #[test]
    fn stackpulse_publish_body_is_a_valid_request() {
        let body = Target::Stackpulse.publish_body("topic-\"q\"", 3, "abc");
        let req = stackpulse_protocol::PublishRequest::from_json(body.as_bytes()).expect("valid");
        assert_eq!(req.deployment_id, "topic-\"q\"");
        assert_eq!(req.data["n"], 3);
    }

    #[test]
    fn subscribe_replies() {
        let t = Target::Stackpulse;
        assert_eq!(
            t.subscribe_reply(r#"{"type":"subscribed","deployment_id":"a","seq":0}"#),
            Some(Ok(()))
        );
        assert!(matches!(
            t.subscribe_reply(r#"{"type":"error","code":403}"#),
            Some(Err(_))
        ));
        assert_eq!(t.subscribe_reply(r#"{"type":"pong"}"#), None);
        assert_eq!(url_for("ws://h/sub/{topic}", "x"), "ws://h/sub/x");
    }
}
