//! The `/ws` protocol as API Gateway WebSocket routes: `$connect`, `$disconnect`
//! and `$default` (every client message; API Gateway selects routes on `action`,
//! and all of them land here).
//!
//! Each handler runs once per message with nothing kept in memory between calls:
//! the connection (user, token expiry, topics) is an item of the connections table,
//! replies are posted through the [`super::post::Poster`] in the order the client
//! must see them. Parsing and error texts are the protocol crate's
//! ([`parse_client_message`]), names and read rights the hub's topic policy, resume
//! the hub's rule ([`crate::hub::TopicRead::resumes`]), snapshots the hub's fold.
//!
//! A subscribe records the subscription (not yet live) **before** it reads the
//! topic, posts `subscribed` and the replay or snapshot up to seq L, then hands
//! over to fan-out: one transaction marks the subscription live after L on the
//! condition that L is still the topic's latest seq; if events came meanwhile it
//! posts them from history and tries again. Fan-out posts to live subscriptions
//! only, events after their L, so `subscribed` comes first and no event is lost
//! or doubled (on a topic so busy that 64 hand-overs in a row lose the race, it
//! goes live anyway: then an event may arrive twice, never be lost). (Publishers on different Lambda instances fan out concurrently, so
//! two live events of one topic published at the same instant may arrive out of
//! seq order; each carries its seq.)

use axum::http::HeaderMap;
use stackpulse_protocol::{parse_client_message, ClientMessage, ProtocolError, ServerMessage};

use super::store::StoredConnection;
use super::Serverless;
use crate::auth::gate::{request_token, SUBPROTOCOL};
use crate::hub::dynamo::now_secs;
use crate::hub::{CloseReason, Reader, SubscribeError};

/// Rounds of "send what came meanwhile" before a subscribe stops waiting for a
/// quiet instant on a topic that publishes faster than it catches up.
const MAX_HANDOVER_ROUNDS: usize = 64;

/// [`MAX_HANDOVER_ROUNDS`], or `STACKPULSE_TEST_HANDOVER_ROUNDS` (tests make the
/// give-up happen on purpose with 1).
fn handover_rounds() -> usize {
    static ROUNDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROUNDS.get_or_init(|| {
        std::env::var("STACKPULSE_TEST_HANDOVER_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_HANDOVER_ROUNDS)
    })
}

/// The answer to `$connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Accepted; `Some` names the subprotocol to select.
    Accept(Option<&'static str>),
    /// Refused with an HTTP status and the contract's JSON body.
    Refuse(u16, String),
}

fn expiry(expires_at: u64) -> Option<u64> {
    (expires_at != u64::MAX).then_some(expires_at)
}

impl Serverless {
    /// `$connect`: the token (query, `Authorization` or subprotocol) is verified
    /// with the same gate as `serve`; a refusal is the 401 `serve` answers.
    pub async fn connect(
        &self,
        connection_id: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Admission {
        let token = request_token(headers, query);
        let verified = match self.state.gate.authenticate(token.as_deref()).await {
            Ok(v) => v,
            Err(u) => {
                return Admission::Refuse(
                    401,
                    serde_json::json!({ "message": u.message() }).to_string(),
                )
            }
        };
        if let Err(e) = self
            .store
            .put_connection(connection_id, &verified.user, expiry(verified.expires_at))
            .await
        {
            tracing::warn!(error = %e, "could not record a connection");
            return Admission::Refuse(
                503,
                serde_json::json!({ "message": e.to_string() }).to_string(),
            );
        }
        metrics::counter!("stackpulse_serverless_connects_total").increment(1);
        let offered = headers
            .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        Admission::Accept(offered.then_some(SUBPROTOCOL))
    }

    /// `$disconnect`: the connection and its subscriptions are forgotten.
    pub async fn disconnect(&self, connection_id: &str) {
        if let Err(e) = self.store.delete_connection(connection_id).await {
            tracing::warn!(error = %e, "could not delete a closed connection");
        }
    }

    /// `$default`: one client message.
    pub async fn message(&self, connection_id: &str, text: &str) {
        let conn = match self.store.connection(connection_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Unknown or expired: nothing may be served to it.
                self.fanout
                    .poster
                    .close(connection_id, CloseReason::TokenExpired)
                    .await;
                return;
            }
            Err(e) => {
                self.reply(connection_id, ServerMessage::error(503, e.to_string()))
                    .await;
                return;
            }
        };
        if conn.expires_at.is_some_and(|e| e <= now_secs()) {
            self.fanout
                .poster
                .close(connection_id, CloseReason::TokenExpired)
                .await;
            self.disconnect(connection_id).await;
            return;
        }
        match parse_client_message(text) {
            Err(e) => self.reply_error(connection_id, &e).await,
            Ok(ClientMessage::Subscribe {
                deployment_id,
                since,
                epoch,
            }) => {
                if let Err(e) = self
                    .subscribe(connection_id, &conn, &deployment_id, since, epoch)
                    .await
                {
                    metrics::counter!("stackpulse_client_errors_total").increment(1);
                    let reply = ServerMessage::Error {
                        code: e.code(),
                        message: e.to_string(),
                        deployment_id: Some(deployment_id),
                    };
                    self.reply(connection_id, reply).await;
                }
            }
            Ok(ClientMessage::Unsubscribe { deployment_id }) => {
                if let Err(e) = self
                    .store
                    .remove_subscription(connection_id, &deployment_id)
                    .await
                {
                    self.reply(connection_id, ServerMessage::error(503, e.to_string()))
                        .await;
                    return;
                }
                self.reply(connection_id, ServerMessage::Unsubscribed { deployment_id })
                    .await;
            }
            Ok(ClientMessage::Ping) => {
                let pong = ServerMessage::Pong {
                    timestamp: stackpulse_protocol::time::now(),
                };
                self.reply(connection_id, pong).await;
            }
            Ok(ClientMessage::Auth { token }) => {
                let reply = self.reauthenticate(connection_id, &conn, &token).await;
                self.reply(connection_id, reply).await;
            }
        }
    }

    async fn reply(&self, connection_id: &str, message: ServerMessage) {
        self.fanout.post(connection_id, &message.to_json()).await;
    }

    async fn reply_error(&self, connection_id: &str, e: &ProtocolError) {
        metrics::counter!("stackpulse_client_errors_total").increment(1);
        self.reply(connection_id, ServerMessage::error(e.code(), e.to_string()))
            .await;
    }

    /// The hub's subscribe, one invocation long: name check, per-connection cap,
    /// record, read, ACL check, then `subscribed` and the replay or the snapshot.
    async fn subscribe(
        &self,
        connection_id: &str,
        conn: &StoredConnection,
        topic: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), SubscribeError> {
        let policy = &self.state.hub.rules().policy;
        policy.check_name(topic).await?;
        let max = self.state.config.max_subscriptions;
        if !conn.topics.iter().any(|t| t == topic) && conn.topics.len() >= max {
            return Err(SubscribeError::TooMany(max));
        }
        self.store
            .add_subscription(connection_id, topic, conn)
            .await?;
        let backplane = self.state.hub.backplane();
        let read = match backplane.read(topic, since).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.store.remove_subscription(connection_id, topic).await;
                return Err(e.into());
            }
        };
        let reader = Reader::User(conn.user.clone());
        if !policy.may_read(&reader, topic, read.acl.as_ref()) {
            self.store.remove_subscription(connection_id, topic).await?;
            return Err(SubscribeError::Forbidden(topic.to_owned()));
        }
        let resumes = read.resumes(since, epoch.as_deref());
        let subscribed = ServerMessage::Subscribed {
            deployment_id: topic.to_owned(),
            seq: read.latest_seq,
            epoch: read.epoch.to_string(),
            recovered: since.is_none() || resumes,
        };
        self.reply(connection_id, subscribed).await;
        let mut sent = read.latest_seq;
        if resumes {
            for event in &read.events {
                self.fanout.post(connection_id, event.frame.as_str()).await;
                sent = event.seq;
            }
        } else if let Some(snapshot) = &read.snapshot {
            self.fanout.post(connection_id, snapshot.as_str()).await;
        }
        // Hand over to fan-out at `sent` if nothing was published since; else send
        // what was (fan-out skipped it: the subscription was not live) and retry.
        for _ in 0..handover_rounds() {
            if self
                .store
                .set_live_if_latest(connection_id, topic, sent)
                .await?
            {
                return Ok(());
            }
            let more = backplane.read(topic, Some(sent)).await?;
            if more.epoch != read.epoch || !more.covers(sent) {
                // History moved on without us: start over from the snapshot.
                let _ = self.store.remove_subscription(connection_id, topic).await;
                return Err(SubscribeError::Backplane(
                    crate::hub::BackplaneError::Unavailable(
                        "subscription could not catch up with the topic".into(),
                    ),
                ));
            }
            for event in &more.events {
                self.fanout.post(connection_id, event.frame.as_str()).await;
                sent = event.seq;
            }
        }
        // A topic publishing faster than the hand-over, round after round. Going
        // live now could send an event twice (from history, and by its fan-out
        // that saw the subscription live). The client has every event up to
        // `sent`, in order: it is told to reconnect and resume from there (1012),
        // as `serve` tells it when it cannot keep a subscription gap-free.
        tracing::info!(%topic, sent, "subscription could not be handed over; closing with resync");
        let _ = self.store.remove_subscription(connection_id, topic).await;
        self.fanout
            .poster
            .close(connection_id, CloseReason::Resync)
            .await;
        Ok(())
    }

    /// `{"action":"auth","token":…}`: a fresh token of the same user moves the
    /// connection's expiry (and groups) forward.
    async fn reauthenticate(
        &self,
        connection_id: &str,
        conn: &StoredConnection,
        token: &str,
    ) -> ServerMessage {
        let gate = &self.state.gate;
        if !gate.is_enabled() {
            return ServerMessage::error(400, "Authentication is not enabled on this server");
        }
        match gate.authenticate(Some(token)).await {
            Ok(v) if v.user.sub == conn.user.sub => {
                let expires = expiry(v.expires_at);
                if let Err(e) = self
                    .store
                    .refresh(connection_id, conn, &v.user, expires)
                    .await
                {
                    return ServerMessage::error(503, e.to_string());
                }
                let expires_at = i64::try_from(v.expires_at)
                    .ok()
                    .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                    .map(stackpulse_protocol::time::format)
                    .unwrap_or_default();
                ServerMessage::Authenticated { expires_at }
            }
            Ok(_) => ServerMessage::error(403, "Forbidden: the token belongs to another user"),
            Err(u) => ServerMessage::error(401, u.message()),
        }
    }
}
