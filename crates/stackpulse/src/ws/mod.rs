//! The `/ws` endpoint: admission, upgrade and the per-connection loops.
//!
//! A request flows: [`ws_handler`] checks the client's attempt rate (429),
//! authenticates its token (401, before any upgrade), takes one of the user's
//! places (429) and a place under the connection limit (503 when full or shutting
//! down), upgrades with small buffers and the frame-size limit, and hands the socket to [`connection::run`], which splits it into a reader
//! (client requests → hub) and a writer (the connection's outbox → socket).
//!
//! # Layout
//! - [`connection`]: the reader and writer loops, ping and idle timeout.
//! - [`registry`]: every open connection and the admission counter.
//! - [`close`]: the close codes.

pub mod close;
pub mod connection;
pub mod registry;

use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::gate::request_token;
use crate::http::{error_body, AppState};

/// Per-connection read buffer, allocated for every connection: client requests are
/// small, and a larger frame grows it (up to the frame limit) only while it is read.
/// 512 B rather than 2 KiB took the measured idle cost from 8.9 to 7.4 KiB.
const READ_BUFFER: usize = 512;
/// Bytes buffered before a write is flushed to the socket.
const WRITE_BUFFER: usize = 8 * 1024;
/// Bytes tungstenite may buffer for a peer that does not read, on top of the
/// outbox's bound, before writes fail.
const MAX_WRITE_BUFFER: usize = 512 * 1024;

/// Refuses a request before any upgrade, with a JSON `{"message"}` body.
fn refuse(status: StatusCode, message: &str) -> Response {
    error_body(status, message).into_response()
}

/// Why admission refused a request before its upgrade (answered with a JSON
/// `{"message"}` body and this status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: &str) -> Refusal {
        Refusal {
            status,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.status, &self.message)
    }
}

/// What admission grants a WebSocket request before its upgrade.
pub struct Admission {
    pub slot: registry::Slot,
    pub verified: stackpulse_auth::Verified,
    /// One of the user's places (with auth); released when the connection ends.
    pub user_slot: Option<crate::auth::limits::UserSlot>,
}

/// The admission every WebSocket endpoint applies, in order: shutting down (503),
/// the client's attempt rate (429), its token (401, before any upgrade), the
/// user's places (429), the connection limit (503).
pub async fn admit(
    state: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Admission, Response> {
    precheck(state, remote).map_err(IntoResponse::into_response)?;
    let token = request_token(headers, query);
    let verified = match state.gate.authenticate(token.as_deref()).await {
        Ok(v) => v,
        Err(u) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => "unauthorized")
                .increment(1);
            return Err(refuse(StatusCode::UNAUTHORIZED, u.message()));
        }
    };
    let user_slot =
        admit_user(state, &verified).map_err(|m| refuse(StatusCode::TOO_MANY_REQUESTS, &m))?;
    let slot = reserve(state).map_err(IntoResponse::into_response)?;
    Ok(Admission {
        slot,
        verified,
        user_slot,
    })
}

/// The checks before any credential is looked at: shutting down (503) and the
/// client's attempt rate (429). Endpoints whose credential arrives inside the
/// socket (the GraphQL ones) apply this, then [`reserve`], before the upgrade.
pub fn precheck(state: &AppState, remote: SocketAddr) -> Result<(), Refusal> {
    if state.shutdown.is_cancelled() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down",
        ));
    }
    if let Err(r) = state.gate.admission.check_ip(remote.ip()) {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
            .increment(1);
        return Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, &r.message()));
    }
    Ok(())
}

/// Takes one of an authenticated user's places (none without auth); the error is
/// the refusal's message.
pub fn admit_user(
    state: &AppState,
    verified: &stackpulse_auth::Verified,
) -> Result<Option<crate::auth::limits::UserSlot>, String> {
    if !state.gate.is_enabled() {
        return Ok(None);
    }
    match state.gate.admission.admit_user(&verified.user.sub) {
        Ok(slot) => Ok(Some(slot)),
        Err(r) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
                .increment(1);
            Err(r.message())
        }
    }
}

/// A place under the connection limit (503 when full).
pub fn reserve(state: &AppState) -> Result<registry::Slot, Refusal> {
    let max = state.config.max_connections;
    state.registry.reserve(max).ok_or_else(|| {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => "limit").increment(1);
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Server at connection limit ({max})"),
        )
    })
}

/// Applies the buffer sizes and frame limits every WebSocket endpoint uses.
pub fn configure(ws: WebSocketUpgrade, frame_limit: usize) -> WebSocketUpgrade {
    // Selected when offered (a browser passing its token as a subprotocol must
    // also offer one the server selects, or the browser fails the handshake).
    ws.protocols([crate::auth::gate::SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(frame_limit * 2))
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
}

pub async fn ws_handler(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let admission = match admit(&state, remote, &headers, query.as_deref()).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let Admission {
        slot,
        verified,
        user_slot,
    } = admission;
    let frame_limit = state.config.max_frame_bytes;
    let tracked = state.tasks.token();
    configure(ws, frame_limit).on_upgrade(move |socket| async move {
        let admitted = connection::Admitted {
            slot,
            remote,
            verified,
            user_slot,
        };
        connection::run(socket, state, admitted).await;
        drop(tracked);
    })
}
