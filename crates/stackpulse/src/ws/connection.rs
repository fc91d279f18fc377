//! The `/ws` dialect: JSON requests in, the hub's frames out as they are.
//!
//! The driver ([`super::driver`]) reads the socket and hands each text frame to
//! [`Native::on_text`](super::driver::Dialect::on_text), which parses the request
//! and calls the hub (`subscribe` may wait while a replay fills the queue, so it
//! runs on the reader, never on the writer); replies go through the same outbox
//! as events, so their order is the order the client sees. The writer encodes
//! with [`JsonEncoder`]: events as the hub serialized them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use stackpulse_protocol::{parse_client_message, ClientMessage, ProtocolError, ServerMessage};

use super::driver::{subscribe_topic, Conn, Dialect, Encoded, Encoder};
use crate::app::registry::ConnInfo;
use crate::app::AppState;
use crate::hub::{Delivery, Outbox, SubscribeError};

/// The `/ws` dialect.
pub(crate) struct Native;

impl Dialect for Native {
    type Encoder = JsonEncoder;

    fn encoder(&mut self) -> JsonEncoder {
        JsonEncoder {
            latency: crate::metrics::delivery_latency(),
            writes: 0,
            sample: true,
        }
    }

    async fn on_text(&mut self, conn: &Conn<'_>, text: &str) {
        handle_text(conn.state, conn.info, text).await;
    }

    fn on_binary(&mut self, conn: &Conn<'_>) {
        reply_error(conn.outbox(), &ProtocolError::BinaryFrame);
    }
}

fn reply(outbox: &Outbox, message: ServerMessage) {
    // A full queue closes the connection; nothing else to do here.
    let _ = outbox.push(Delivery::frame(message.to_json()));
}

fn reply_error(outbox: &Outbox, e: &ProtocolError) {
    metrics::counter!("stackpulse_client_errors_total").increment(1);
    reply(outbox, ServerMessage::error(e.code(), e.to_string()));
}

async fn handle_text(state: &AppState, info: &Arc<ConnInfo>, text: &str) {
    let session = &info.session;
    let outbox = &session.outbox;
    match parse_client_message(text) {
        Err(e) => reply_error(outbox, &e),
        Ok(ClientMessage::Subscribe {
            deployment_id,
            since,
            epoch,
        }) => match subscribe_topic(state, session, &info.user(), &deployment_id, since, epoch)
            .await
        {
            Ok(()) | Err(SubscribeError::Closed) => {}
            Err(e) => {
                metrics::counter!("stackpulse_client_errors_total").increment(1);
                reply(
                    outbox,
                    ServerMessage::Error {
                        code: e.code(),
                        message: e.to_string(),
                        deployment_id: Some(deployment_id),
                    },
                );
            }
        },
        Ok(ClientMessage::Unsubscribe { deployment_id }) => {
            state.hub.unsubscribe(session, &deployment_id).await;
            reply(outbox, ServerMessage::Unsubscribed { deployment_id });
        }
        Ok(ClientMessage::Auth { token }) => reauthenticate(state, info, &token).await,
        Ok(ClientMessage::Ping) => {
            reply(
                outbox,
                ServerMessage::Pong {
                    timestamp: stackpulse_protocol::time::now(),
                },
            );
        }
    }
}

/// An in-band `{"action":"auth","token":…}`: a fresh token for the same user
/// moves the connection's expiry forward.
async fn reauthenticate(state: &AppState, info: &Arc<ConnInfo>, token: &str) {
    let outbox = &info.session.outbox;
    if !state.gate.is_enabled() {
        reply(
            outbox,
            ServerMessage::error(400, "Authentication is not enabled on this server"),
        );
        return;
    }
    match state.gate.authenticate(Some(token)).await {
        Ok(v) if v.user.sub == info.user().sub => {
            info.expires_at.store(v.expires_at, Ordering::Release);
            if v.user.groups != info.user().groups {
                // Other groups: every subscription is checked again (a lost group
                // ends the ACL'd subscriptions it admitted, with a 403 each).
                info.set_user(v.user.clone());
                let reader = crate::hub::Reader::user(v.user.clone());
                if let Err(e) = state.hub.reauthorize(&info.session, &reader).await {
                    tracing::warn!(error = %e, "could not re-check subscriptions after a token refresh");
                }
            }
            let expires_at = i64::try_from(v.expires_at)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(stackpulse_protocol::time::format)
                .unwrap_or_default();
            reply(outbox, ServerMessage::Authenticated { expires_at });
        }
        Ok(_) => reply(
            outbox,
            ServerMessage::error(403, "Forbidden: the token belongs to another user"),
        ),
        Err(u) => reply(outbox, ServerMessage::error(401, u.message())),
    }
}

/// The `/ws` encoder: events go out as the hub serialized them.
pub(crate) struct JsonEncoder {
    latency: metrics::Histogram,
    /// Socket writes so far; the latency is sampled on one write in
    /// [`LATENCY_SAMPLE_EVERY`] (the first included), from its oldest event: a
    /// clock read and a histogram record per delivery were ~4% of the server's CPU
    /// when fanning out 200k deliveries/s.
    writes: u64,
    /// Whether this write's sample is still to be taken.
    sample: bool,
}

/// One socket write in this many records a delivery-latency sample.
pub(crate) const LATENCY_SAMPLE_EVERY: u64 = 16;

impl Encoder for JsonEncoder {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64) {
        match item {
            Delivery::Event(event) => {
                if self.sample {
                    self.sample = false;
                    self.latency
                        .record(event.published_at.elapsed().as_secs_f64());
                }
                (Encoded::Event(event), 1)
            }
            Delivery::Frame(frame) => (Encoded::One(Message::Text(*frame)), 0),
            // The rest of an event the fan-out began writing: counted here.
            Delivery::Rest(bytes) => (Encoded::Raw(*bytes), 1),
            Delivery::Forbidden(topic) => {
                let reply = ServerMessage::Error {
                    code: 403,
                    message: format!("Forbidden: {topic}"),
                    deployment_id: Some(topic.to_string()),
                };
                (
                    Encoded::One(Message::Text(Utf8Bytes::from(reply.to_json()))),
                    0,
                )
            }
            Delivery::Subscribed(info) => {
                let reply = ServerMessage::Subscribed {
                    deployment_id: info.topic.to_string(),
                    seq: info.seq,
                    epoch: info.epoch.to_string(),
                    recovered: info.recovered,
                };
                (
                    Encoded::One(Message::Text(Utf8Bytes::from(reply.to_json()))),
                    0,
                )
            }
        }
    }

    fn flushed(&mut self) {
        self.writes += 1;
        self.sample = self.writes % LATENCY_SAMPLE_EVERY == 0;
    }
}
