//! The sockets' shared layer and the `/ws` endpoint.
//!
//! Every socket endpoint (`/ws`, `/canvas/deploy/track`, the two GraphQL ones) is a
//! dialect of the one connection driver ([`driver`]): admission, the writer with
//! pings, timeouts, limits and teardown live there; a dialect only reads and
//! encodes its frames. `/ws` flows: [`ws_handler`] → [`driver::admit`] (refusals
//! before the upgrade) → [`driver::serve`] with the `/ws` dialect
//! ([`connection::Native`]).
//!
//! # Layout
//! - [`driver`]: the connection driver, its [`driver::Dialect`] trait and the one
//!   subscribe every dialect uses.
//! - [`connection`]: the `/ws` dialect (JSON requests, the hub's frames as they are).
//! - [`close`]: the close codes.
//! - [`wire`]: the write side the driver's writer feeds; [`raw`]: `/ws`'s raw
//!   upgraded connection (tungstenite reads, prepared frames are written);
//!   [`frame`]: the server frame encoder.

pub mod close;
pub mod connection;
pub mod driver;
pub mod frame;
pub mod raw;
pub mod wire;

use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

pub async fn ws_handler(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    raw: raw::RawUpgrade,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let admitted = match driver::admit(&state, remote, &headers, query.as_deref()).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Selected when offered (a browser passing its token as a subprotocol must
    // also offer one the server selects, or the browser fails the handshake).
    if axum_writer() {
        return driver::serve(
            ws,
            crate::auth::gate::SUBPROTOCOL,
            state,
            admitted,
            connection::Native,
        );
    }
    driver::serve_raw(
        ws,
        raw,
        crate::auth::gate::SUBPROTOCOL,
        state,
        admitted,
        connection::Native,
    )
}

/// Whether `/ws` writes through axum's `WebSocket` (tungstenite frames every
/// message per connection) rather than its raw wire: set by the environment
/// variable `STACKPULSE_BENCH_AXUM_WRITER=1`, for benchmarks only (the "before"
/// of BENCHMARKS.md's before/after runs, from the same binary). Read once.
fn axum_writer() -> bool {
    static AXUM_WRITER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AXUM_WRITER
        .get_or_init(|| std::env::var("STACKPULSE_BENCH_AXUM_WRITER").is_ok_and(|v| v == "1"))
}
