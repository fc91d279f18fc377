//! Every route of the server: `/ws` (the monitoring socket, [`crate::ws`]),
//! `POST /v1/events`, `/v1/deployments`, `/v1/ingest/eventbridge` and `/v1/ingest/sns` ([`crate::http`]), the canvas endpoints
//! ([`crate::canvas`]), `/graphql` and `/graphql/realtime` ([`crate::graphql`]), the
//! operational endpoints, the dashboard and the API reference (`/docs`), all behind the HTTP edge layer
//! ([`crate::http::edge`]). A path nobody serves gets a JSON 404.

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};

use super::AppState;
use crate::http::error::AppError;
use crate::http::{dashboard, deployments, docs, edge, ingest, ingest_sns, ops, publish};

/// A POST route whose body is JSON: [`edge::json_only`] in front of `handler`.
pub fn json_post<H, T>(handler: H) -> MethodRouter<AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    post(handler).route_layer(middleware::from_fn(edge::json_only))
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(crate::ws::ws_handler))
        .route("/v1/events", json_post(publish::publish))
        .route("/v1/deployments", json_post(deployments::start))
        .route("/v1/ingest/eventbridge", json_post(ingest::eventbridge))
        // SNS posts its JSON as text/plain: no `json_only` here; the signature is
        // the credential (see `ingest_sns`).
        .route(
            "/v1/ingest/sns",
            post(ingest_sns::sns).layer(Extension(ingest_sns::SnsIngest::new(&state.config.sns))),
        )
        .route(
            "/canvas/deploy/track/{stack_name}",
            get(crate::canvas::track::track_handler),
        )
        .route("/canvas/deploy", json_post(crate::canvas::deploy::deploy))
        .route("/v1/topics/{id}", get(ops::topic))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(crate::graphql::routes(state.clone()))
        .merge(dashboard::routes())
        .merge(docs::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), edge::guard))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    AppError::new(
        StatusCode::NOT_FOUND,
        format!("Not found: {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}
