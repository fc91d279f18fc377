//! Sending to a WebSocket connection in serverless mode: the [`Poster`] seam.
//!
//! In AWS, [`ManagementApi`] calls the API Gateway Management API
//! (`PostToConnection`, `DeleteConnection`) at `STACKPULSE_WS_ENDPOINT`. A
//! connection that is gone answers `GoneException` (HTTP 410; the SDK only names
//! it when the `x-amzn-ErrorType` header says so, so the status is checked too):
//! that is [`PostError::Gone`], and the caller deletes the connection.
//! `lambda-local` plugs in its own poster that writes to its real sockets.

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_apigatewaymanagement::Client;

use crate::hub::CloseReason;

/// Why a post failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The connection no longer exists (410): forget it.
    #[error("connection is gone")]
    Gone,
    #[error("post failed: {0}")]
    Other(String),
}

/// Sends frames to connections and closes them.
#[async_trait]
pub trait Poster: Send + Sync + 'static {
    /// Sends one text frame.
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError>;

    /// Closes the connection for `reason` (its `$disconnect` follows). API
    /// Gateway's `DeleteConnection` carries no close code: only the local emulation
    /// sends the contract's code for `reason` (`crate::ws::close::for_reason`).
    async fn close(&self, connection_id: &str, reason: CloseReason);
}

/// The API Gateway Management API.
pub struct ManagementApi {
    client: Client,
}

impl ManagementApi {
    /// A client for `endpoint` (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`).
    pub fn new(sdk: &aws_config::SdkConfig, endpoint: &str) -> ManagementApi {
        let conf = aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
            .endpoint_url(endpoint)
            .build();
        ManagementApi {
            client: Client::from_conf(conf),
        }
    }
}

#[async_trait]
impl Poster for ManagementApi {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        let result = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(frame.as_bytes()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let gone = e
                    .as_service_error()
                    .is_some_and(|se| se.is_gone_exception())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 410);
                if gone {
                    Err(PostError::Gone)
                } else {
                    Err(PostError::Other(format!("{e:?}")))
                }
            }
        }
    }

    async fn close(&self, connection_id: &str, reason: CloseReason) {
        tracing::debug!(?reason, "closing a connection");
        if let Err(e) = self
            .client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await
        {
            tracing::debug!(error = ?e, "DeleteConnection failed");
        }
    }
}
