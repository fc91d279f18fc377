//! `POST /v1/events`: a publisher hands the hub one event.
//!
//! Credential first (401 without a valid publisher key or user token, 403 for a
//! user outside the publisher group), then the body is
//! validated (400 with the reason), and only then does the hub assign a seq, so a
//! refused publish uses none. Success is `202 {"seq": N}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use stackpulse_protocol::PublishRequest;

use super::error::AppError;
use crate::app::AppState;

/// The body of a request that publishes: the publisher credential is checked
/// first (401/403), then the body is read; an `Err` is the response to send.
pub async fn publisher_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Response> {
    if let Err((status, message)) = state
        .gate
        .authorize_publisher(headers, &state.publishers)
        .await
    {
        return Err(AppError::new(status, &message).into_response());
    }
    body.map_err(|rejection| {
        AppError::new(
            rejection.status(),
            format!("Invalid body: {}", rejection.body_text()),
        )
        .into_response()
    })
}

pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match publisher_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let request = match PublishRequest::from_json(&body) {
        Ok(r) => r,
        Err(message) => return AppError::new(StatusCode::BAD_REQUEST, &message).into_response(),
    };
    match state.hub.publish(request).await {
        Ok(event) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "seq": event.seq })),
        )
            .into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            if status.is_server_error() {
                tracing::warn!(error = %e, "publish failed");
            }
            AppError::new(status, e.to_string()).into_response()
        }
    }
}
