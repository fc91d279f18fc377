//! HTTP routes and the state every handler shares.
//!
//! [`router`] maps every path: `/ws` (the monitoring socket, in [`crate::ws`]),
//! `POST /v1/events` ([`publish`]), `POST /v1/deployments` ([`deployments`]),
//! `/graphql` and `/graphql/realtime` ([`crate::graphql`]), and the operational
//! endpoints ([`ops`]). Errors leave as `{"message": …}` JSON with a status,
//! through [`error_body`].
//!
//! # Layout
//! - [`publish`]: the publish API.
//! - [`deployments`]: `POST /v1/deployments`, several stacks as one topic.
//! - [`ops`]: health, readiness, metrics and topic inspection.
//! - [`dashboard`]: the web dashboard's page and assets, embedded in the binary.
//! - [`edge`]: the checks in front of every route (loopback Host/Origin, JSON
//!   content type, the client address behind trusted proxies).
//! - [`error`]: [`error::AppError`], the JSON error response.

pub mod dashboard;
pub mod deployments;
pub mod edge;
pub mod error;
pub mod ops;
pub mod publish;

use std::sync::Arc;

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::gate::Gate;
use crate::auth::PublisherKeys;
use crate::config::Config;
use crate::deployments::{Deployments, DeploymentsConfig};
use crate::hub::Hub;
use crate::tracking::{aws::AwsSettings, Tracking, TrackingConfig};
use crate::ws::registry::Registry;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub publishers: Arc<PublisherKeys>,
    /// Authentication, topic authorization and admission limits.
    pub gate: Arc<Gate>,
    /// Cancelled when shutdown starts: `/readyz` turns 503, new sockets are refused.
    pub shutdown: CancellationToken,
    /// Every WebSocket connection (and deployment follower), so shutdown can wait
    /// for them to drain.
    pub tasks: TaskTracker,
    /// The CloudFormation pollers of `stack:*` topics.
    pub tracking: Arc<Tracking>,
    /// Multi-stack deployments followed by this node.
    pub deployments: Arc<Deployments>,
}

impl AppState {
    pub fn new(hub: Hub, config: Config) -> Result<AppState, String> {
        let gate = Gate::new(config.auth.clone(), config.admission)?;
        let tracking = Tracking::new(
            hub.clone(),
            TrackingConfig {
                aws: AwsSettings {
                    endpoint_url: config.aws_endpoint_url.clone(),
                    region: config.aws_region.clone(),
                },
                poll_interval: config.poll_interval,
                grace: config.tracker_grace,
                lease_ttl: config.poller_lease,
                max_pollers: config.max_pollers,
            },
        );
        let gate = Arc::new(gate);
        hub.set_rules(crate::hub::Rules {
            policy: Arc::new(crate::topic_policy::ServerPolicy::new(
                gate.clone(),
                tracking.clone(),
                config.stacks.clone(),
            )),
            interest: tracking.clone(),
        });
        let tasks = TaskTracker::new();
        let deployments = Deployments::new(
            hub.clone(),
            tracking.clone(),
            tasks.clone(),
            DeploymentsConfig {
                timeout: config.deployment_timeout,
                lease_ttl: config.poller_lease,
            },
        );
        Ok(AppState {
            tracking,
            deployments,
            hub,
            gate,
            publishers: Arc::new(PublisherKeys::new(
                &config.publisher_keys,
                &config.publisher_key_hashes,
            )),
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
            shutdown: CancellationToken::new(),
            tasks,
        })
    }
}

/// A JSON error response: `{"message": …}`.
pub fn error_body(status: StatusCode, message: &str) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(serde_json::json!({ "message": message })))
}

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
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), edge::guard))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        &format!("Not found: {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}
