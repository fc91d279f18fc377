//! `GET /graphql` with the subprotocol `graphql-transport-ws` (the `graphql-ws`
//! npm package, Apollo Client, urql), spoken by async-graphql's own protocol code.
//!
//! Text frames from the socket feed async-graphql's [`WebSocket`] stream; its
//! output frames go back to the socket. The credential comes from the
//! `connection_init` payload (`Authorization`, raw or Bearer, or `token`), else
//! from the upgrade (`?token=`, `Authorization`, `x-api-key`); a refused one
//! closes the socket with 4403 ("Forbidden", the protocol's code for it), a user
//! over their connection limit with 4429; the token's expiry closes it with 4001.
//! Subscriptions run on the same schema and feeds as the AppSync endpoint, so
//! `since` and the slow-consumer policy hold, and a socket that takes longer than
//! the hub's replay wait to accept a frame is closed with 4008; shutdown closes the
//! socket with 1001.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{WebSocket, WebSocketProtocols, WsMessage};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket as Socket};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;

use super::caller::{credential_from_object, resolve};
use super::StackpulseSchema;
use crate::auth::limits::UserSlot;
use crate::auth::User;
use crate::http::AppState;
use crate::hub::{CloseReason, Outbox};
use crate::ws::close;
use crate::ws::connection::{expired, token_expiry};
use crate::ws::registry::{ConnInfo, Slot};

/// Prefix of the init error that means "bad credential" (mapped to 4403).
const UNAUTHORIZED: &str = "Unauthorized";

pub async fn run(
    socket: Socket,
    state: AppState,
    schema: StackpulseSchema,
    mut slot: Slot,
    remote: SocketAddr,
    upgrade_credential: Option<String>,
) {
    // The outbox only carries the server's close request (shutdown) here.
    let (outbox, _rx) = Outbox::new(1);
    let session = state.hub.open_session(outbox.clone());
    let info = Arc::new(ConnInfo {
        user: User::anonymous(),
        remote,
        connected_at: chrono::Utc::now(),
        last_ping: AtomicI64::new(0),
        expires_at: AtomicU64::new(u64::MAX),
        session,
    });
    slot.register(info.clone());

    let user_slot: Arc<Mutex<Option<UserSlot>>> = Arc::new(Mutex::new(None));
    let init_state = state.clone();
    let init_slot = user_slot.clone();
    let init_info = info.clone();
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|m| std::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_)))))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(t.as_str().to_owned()),
                _ => None,
            })
        });
    let mut protocol = WebSocket::new(schema, input, WebSocketProtocols::GraphQLWS)
        .on_connection_init(move |payload: Value| async move {
            let from_payload = payload.as_object().and_then(credential_from_object);
            let caller = resolve(&init_state, from_payload.or(upgrade_credential))
                .await
                .map_err(|u| {
                    async_graphql::Error::new(format!("{UNAUTHORIZED}: {}", u.message()))
                })?;
            if caller.user.is_some() {
                let verified = stackpulse_auth::Verified {
                    user: caller.user.clone().unwrap_or_else(User::anonymous),
                    expires_at: caller.expires_at,
                };
                let slot = crate::ws::admit_user(&init_state, &verified)
                    .map_err(|m| async_graphql::Error::new(format!("Limit: {m}")))?;
                *init_slot.lock() = slot;
            }
            init_info
                .expires_at
                .store(caller.expires_at, Ordering::Release);
            let mut data = Data::default();
            data.insert(caller);
            Ok(data)
        });
    let wait = state.hub.config().replay_timeout;
    loop {
        let out = tokio::select! {
            biased;
            reason = outbox.closing() => {
                let (code, text) = close::for_reason(reason);
                let frame = CloseFrame { code, reason: Utf8Bytes::from_static(text) };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
            _ = token_expiry(info.expires_at.load(Ordering::Acquire)) => {
                if expired(&info) {
                    outbox.close(CloseReason::TokenExpired);
                }
                continue;
            }
            out = protocol.next() => out,
        };
        let sent = match out {
            Some(WsMessage::Text(text)) => {
                let write = sink.send(Message::Text(Utf8Bytes::from(text)));
                match tokio::time::timeout(wait, write).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        // The client stopped reading: the hub's slow-consumer close.
                        metrics::counter!("stackpulse_slow_consumer_closes_total").increment(1);
                        let (code, text) = close::for_reason(CloseReason::SlowConsumer);
                        let frame = CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(text),
                        };
                        let close = sink.send(Message::Close(Some(frame)));
                        let _ = tokio::time::timeout(Duration::from_secs(3), close).await;
                        break;
                    }
                }
            }
            Some(WsMessage::Close(code, reason)) => {
                let code = match code {
                    1002 if reason.starts_with(UNAUTHORIZED) => 4403,
                    1002 if reason.starts_with("Limit") => 4429,
                    c => c,
                };
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
            None => {
                let _ = sink.close().await;
                break;
            }
        };
        if sent.is_err() {
            break;
        }
    }
    outbox.close(CloseReason::ClientClosed);
    drop(protocol);
    drop(user_slot);
    drop(slot);
}
