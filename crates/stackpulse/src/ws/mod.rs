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
    if state.shutdown.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down",
        ));
    }
    let gate = &state.gate;
    if let Err(r) = gate.admission.check_ip(remote.ip()) {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
            .increment(1);
        return Err(refuse(StatusCode::TOO_MANY_REQUESTS, &r.message()));
    }
    let token = request_token(headers, query);
    let verified = match gate.authenticate(token.as_deref()).await {
        Ok(v) => v,
        Err(u) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => "unauthorized")
                .increment(1);
            return Err(refuse(StatusCode::UNAUTHORIZED, u.message()));
        }
    };
    let user_slot = if gate.is_enabled() {
        match gate.admission.admit_user(&verified.user.sub) {
            Ok(slot) => Some(slot),
            Err(r) => {
                metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
                    .increment(1);
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, &r.message()));
            }
        }
    } else {
        None
    };
    let max = state.config.max_connections;
    let Some(slot) = state.registry.reserve(max) else {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => "limit").increment(1);
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Server at connection limit ({max})"),
        ));
    };
    Ok(Admission {
        slot,
        verified,
        user_slot,
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
