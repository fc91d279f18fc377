//! `POST /v1/deployments`: follow several stacks as one deployment topic.
//!
//! Same credential rule as `POST /v1/events` (it publishes on the deployment's
//! topic), then the body is validated ([`crate::deployments::request`]), then
//! [`crate::deployments::Deployments::start`] subscribes to the stacks and
//! publishes the first `deployment.status`. Success is `202 {"deployment_id",
//! "seq", "stacks": [{"name", "topic"}]}`; a stack listed twice or more stacks than
//! one follower may take is 400, a deployment already being followed 409, too many
//! deployments on this node 429, an unavailable backplane 503.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::AppError;
use super::publish::publisher_body;
use crate::app::AppState;
use crate::deployments::request::DeploymentRequest;
use crate::deployments::StartError;

pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match publisher_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let request = match DeploymentRequest::from_json(&body) {
        Ok(r) => r,
        Err(message) => return AppError::new(StatusCode::BAD_REQUEST, &message).into_response(),
    };
    let id = request.deployment_id.clone();
    let names: Vec<String> = request.stacks.iter().map(|s| s.name.clone()).collect();
    match state
        .deployments
        .start(request, state.shutdown.child_token())
        .await
    {
        Ok(started) => {
            let stacks: Vec<_> = names
                .iter()
                .zip(&started.stack_topics)
                .map(|(name, topic)| json!({"name": name, "topic": topic}))
                .collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"deployment_id": id, "seq": started.seq, "stacks": stacks})),
            )
                .into_response()
        }
        Err(e) => {
            let status = match &e {
                StartError::AlreadyRunning(_) => StatusCode::CONFLICT,
                StartError::Subscribe { .. } | StartError::Invalid(_) => StatusCode::BAD_REQUEST,
                StartError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                StartError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            AppError::new(status, e.to_string()).into_response()
        }
    }
}
