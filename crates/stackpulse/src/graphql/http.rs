//! `POST /graphql`: queries and mutations over HTTP.
//!
//! The credential is `Authorization` (a JWT raw, as AppSync clients send it, or
//! `Bearer`) or `x-api-key` (a publisher key: it may only run the mutation). A
//! missing or invalid one is refused with 401 before anything runs, in AppSync's
//! body shape `{"errors":[{"errorType":"UnauthorizedException","message":…}]}`;
//! then the request runs with the [`Caller`](super::caller::Caller) in its data
//! and the answer is the usual `{"data", "errors"}` with 200.
//!
//! A body over [`MAX_BODY_BYTES`] is refused with 413 and a JSON error (DESIGN
//! "Requests, bodies and sizes"); at most 1 MiB of the rest is read and dropped
//! first, so a client still sending reads the answer instead of a reset. The
//! document itself is checked by the schema's
//! [`CostGuard`](super::schema::cost::CostGuard), as on every transport.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;

use super::caller::{header_credential, resolve};
use super::StackpulseSchema;
use crate::app::AppState;

/// Largest `POST /graphql` body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        &format!("GraphQL request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// How much of an oversized body is still read (and dropped) before the 413, so
/// the client, still sending, gets the answer rather than a reset connection.
const DRAIN_BYTES: usize = 1024 * 1024;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The body, or a 413 once it passes [`MAX_BODY_BYTES`] (a chunked body without
/// a length too).
async fn read_body(body: Body) -> Result<Vec<u8>, Response> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "BadRequestException",
                "Unreadable request body",
            ));
        };
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            let mut seen = bytes.len() + chunk.len();
            drop(bytes);
            let drain = async {
                while let Some(Ok(chunk)) = stream.next().await {
                    seen += chunk.len();
                    if seen > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// An AppSync-shaped error response.
pub fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "errorType": error_type, "message": message }] })),
    )
        .into_response()
}

pub async fn graphql_post(
    State(schema): State<StackpulseSchema>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let Some(state) = schema.data::<AppState>() else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "GraphQL schema without state",
        );
    };
    let caller = match resolve(state, header_credential(&headers)).await {
        Ok(c) => c,
        Err(u) => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "UnauthorizedException",
                u.message(),
            )
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BadRequestException",
                &format!("Invalid GraphQL request body (expected {{\"query\", \"variables\"?, \"operationName\"?}}): {e}"),
            )
        }
    };
    let response = schema.execute(request.data(caller)).await;
    Json(response).into_response()
}
