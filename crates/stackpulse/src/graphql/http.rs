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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use axum::body::Bytes;
    use futures_util::stream;

    async fn json_of(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// A body that ends in a read error is refused with 400 in AppSync's shape.
    #[tokio::test]
    async fn an_unreadable_body_is_a_400() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"query\"")),
            Err(std::io::Error::other("connection reset")),
        ];
        let Err(response) = read_body(Body::from_stream(stream::iter(chunks))).await else {
            panic!("an unreadable body was read");
        };
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["errorType"], "BadRequestException");
        assert_eq!(body["errors"][0]["message"], "Unreadable request body");
    }

    /// Past the limit, at most about 1 MiB more is read (so a client still
    /// sending gets the 413), not the whole of an endless body.
    #[tokio::test]
    async fn an_endless_body_gets_413_after_at_most_a_mebibyte_more() {
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let endless = stream::repeat_with(move || {
            counter.fetch_add(16 * 1024, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 16 * 1024]))
        });
        let Err(response) = read_body(Body::from_stream(endless)).await else {
            panic!("an endless body was read to its end");
        };
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["errors"][0]["errorType"], "PayloadTooLarge");
        let read = read.load(Ordering::Relaxed);
        assert!(read > DRAIN_BYTES, "drained what was sent: {read}");
        assert!(
            read <= DRAIN_BYTES + MAX_BODY_BYTES + 16 * 1024,
            "stopped draining: {read}"
        );
    }

    /// A body within the limit is read whole, in any number of chunks.
    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..4)
            .map(|_| Ok(Bytes::from(vec![b'x'; MAX_BODY_BYTES / 4])))
            .collect();
        let body = read_body(Body::from_stream(stream::iter(chunks))).await;
        assert_eq!(body.map(|b| b.len()).ok(), Some(MAX_BODY_BYTES));
    }

    /// A schema built without the server's state answers 500 rather than
    /// running the request.
    #[tokio::test]
    async fn a_schema_without_state_answers_500() {
        let schema = async_graphql::Schema::build(
            super::super::schema::Query,
            super::super::schema::Mutation,
            super::super::schema::Subscription,
        )
        .finish();
        let response = graphql_post(
            State(schema),
            HeaderMap::new(),
            Body::from(r#"{"query":"{ __typename }"}"#),
        )
        .await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errors"][0]["errorType"], "InternalFailure");
    }
}
