//! The GraphQL adapter: one schema over the hub, served three ways.
//!
//! A query or mutation arrives as `POST /graphql`; a subscription arrives over
//! `GET /graphql/realtime` (the AppSync real-time dialect, for `aws-amplify` and
//! gql's `AppSyncWebsocketsTransport`) or `GET /graphql` with the subprotocol
//! `graphql-transport-ws` (the `graphql-ws` npm package, Apollo, urql). Each
//! transport turns its credential into a [`caller::Caller`] and hands async-graphql
//! a request carrying it; the resolvers in [`schema`] read the hub (snapshots,
//! history) and publish through it, and each subscription field opens its own hub
//! session ([`feed`]), so it resumes with `since` and overflows by the hub's
//! bounded-queue policy exactly like a `/ws` subscription. No resolver calls AWS.
//!
//! # Layout
//! - [`schema`]: the types, queries, the mutation and the subscriptions.
//! - [`caller`]: credentials (JWT raw or Bearer, publisher key) → who is asking.
//! - [`feed`]: a hub subscription as a stream of decoded events.
//! - [`http`]: `POST /graphql`.
//! - [`realtime`]: the AppSync real-time dialect around `execute_stream`.
//! - [`transport_ws`]: the `graphql-transport-ws` dialect, by async-graphql's own
//!   protocol code.
//!
//! Both socket dialects run on the connection driver ([`crate::ws::driver`]): it
//! awaits `connection_init` (10 s from the upgrade, else 4408), admits the
//! credential, and owns the writer, timeouts, limits and teardown. The feeds of
//! one connection share its [`crate::ws::driver::SubscriptionBudget`], so
//! `--max-subscriptions` counts fields per connection.

pub mod caller;
pub mod feed;
pub mod http;
pub mod realtime;
pub mod schema;
pub mod transport_ws;

use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use schema::StackpulseSchema;

use crate::app::AppState;
use crate::http::error::AppError;
use crate::ws::driver;

/// The subprotocol of the AppSync real-time dialect.
pub const APPSYNC_PROTOCOL: &str = "graphql-ws";
/// The subprotocol of the `graphql-ws` npm package.
pub const TRANSPORT_WS_PROTOCOL: &str = "graphql-transport-ws";

/// The GraphQL routes, with the schema built once over `state`.
pub fn routes(state: AppState) -> Router<AppState> {
    let schema = schema::build(state);
    Router::new()
        .route(
            "/graphql",
            get(socket_handler)
                .post(http::graphql_post)
                .route_layer(axum::middleware::from_fn(crate::http::edge::json_only))
                .with_state(schema.clone()),
        )
        .route("/graphql/realtime", get(socket_handler).with_state(schema))
}

/// The subprotocols a WebSocket request offers, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `GET /graphql` and `GET /graphql/realtime`: picks the dialect by subprotocol
/// (`graphql-transport-ws` first, then AppSync's `graphql-ws`), applies the
/// admission checks that need no credential, and hands the socket to the
/// connection driver, which awaits `connection_init` for the rest.
async fn socket_handler(
    State(schema): State<StackpulseSchema>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(state) = schema.data::<AppState>().cloned() else {
        return AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "GraphQL schema without state",
        )
        .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let offered = offered_protocols(&headers);
    let transport_ws = offered.iter().any(|p| p == TRANSPORT_WS_PROTOCOL);
    if !transport_ws && !offered.iter().any(|p| p == APPSYNC_PROTOCOL) {
        return AppError::new(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer graphql-ws (AppSync real-time) or graphql-transport-ws",
        )
        .into_response();
    }
    // The credential arrives in `connection_init`: the driver applies the checks
    // that need none, upgrades, and awaits it with a hard deadline.
    if transport_ws {
        let credential = caller::upgrade_credential(&headers, query.as_deref());
        let dialect = transport_ws::TransportWs::new(schema, credential);
        return driver::serve_in_band(ws, TRANSPORT_WS_PROTOCOL, state, remote, dialect);
    }
    let handshake = realtime::handshake_auth(&offered, query.as_deref());
    let dialect = realtime::AppSync::new(schema, handshake);
    driver::serve_in_band(ws, APPSYNC_PROTOCOL, state, remote, dialect)
}
