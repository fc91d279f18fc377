//! Serverless mode: the `/ws` protocol on API Gateway WebSocket + Lambda, state in
//! DynamoDB (DESIGN "Serverless mode").
//!
//! The hub stays the hub: a [`Serverless`] holds the same [`AppState`] as `serve`
//! (gate, topic policy, publisher keys, limits), built on the
//! [`DynamoBackplane`] instead of memory or Redis. A publish (`POST /v1/events`,
//! EventBridge) goes through [`crate::hub::Hub::publish`] as in `serve`: the
//! backplane assigns the seq with a conditional write, stores the event and the
//! folded snapshot, then hands it to the [`fanout::Fanout`], which posts it to
//! each subscriber through a [`post::Poster`]. WebSocket routes ([`ws`]) keep
//! connections and subscriptions in DynamoDB ([`store`]).
//!
//! # Layout
//! - [`store`]: connections and subscriptions (items, TTL), table creation.
//! - [`post`]: the Poster seam; [`post::ManagementApi`] for AWS.
//! - [`fanout`]: a stored event → every subscriber's connection.
//! - [`ws`]: `$connect`, `$disconnect`, `$default`.
//! - [`lambda`]: `stackpulse lambda`: the runtime loop, dispatch by event shape.
//! - [`local`]: `stackpulse lambda-local`: real WebSockets driving the same handlers.

pub mod cfn;
pub mod fanout;
pub mod lambda;
pub mod local;
pub mod post;
pub mod store;
pub mod ws;

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};
use stackpulse_protocol::PublishRequest;

use crate::app::AppState;
use crate::config::{Config, ServeArgs};
use crate::hub::dynamo::DynamoBackplane;
use crate::hub::Hub;
use crate::tracking::aws::{AwsSettings, FALLBACK_REGION};
use fanout::Fanout;
use post::Poster;
use store::Store;

/// Flags (and environment) of `lambda` and `lambda-local`: `serve`'s, plus the
/// tables and the Management API endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct LambdaArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// DynamoDB table of WebSocket connections (partition key `connectionId`).
    #[arg(
        long,
        env = "STACKPULSE_CONNECTIONS_TABLE",
        default_value = "stackpulse-connections"
    )]
    pub connections_table: String,
    /// DynamoDB table of topics: seq counters, history, snapshots, epochs,
    /// subscriptions (keys `pk`, `sk`).
    #[arg(
        long,
        env = "STACKPULSE_TOPICS_TABLE",
        default_value = "stackpulse-topics"
    )]
    pub topics_table: String,
    /// API Gateway Management API URL,
    /// `https://{api}.execute-api.{region}.amazonaws.com/{stage}` (`lambda` only).
    #[arg(long, env = "STACKPULSE_WS_ENDPOINT")]
    pub ws_endpoint: Option<String>,
    /// Run `lambda` without authentication although its API is public: anyone with
    /// the URL may subscribe (the template's `AllowAnonymous=true`; `lambda` only).
    #[arg(long, env = "STACKPULSE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

/// One serverless node: the hub on DynamoDB and the connection store.
#[derive(Clone)]
pub struct Serverless {
    pub state: AppState,
    pub store: Store,
    pub fanout: Arc<Fanout>,
}

impl Serverless {
    /// Assembles the hub on DynamoDB with `poster` for replies and events; the AWS
    /// configuration is the standard chain with `--aws-endpoint-url`/`--aws-region`.
    pub async fn build(
        config: Config,
        args: &LambdaArgs,
        poster: impl FnOnce(&aws_config::SdkConfig) -> Arc<dyn Poster>,
    ) -> Result<Serverless, String> {
        let sdk = crate::tracking::aws::load(&AwsSettings {
            endpoint_url: config.aws_endpoint_url.clone(),
            region: config.aws_region.clone(),
        })
        .await;
        let mut ddb = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            ddb = ddb.region(aws_config::Region::new(FALLBACK_REGION));
        }
        let ddb = aws_sdk_dynamodb::Client::from_conf(ddb.build());
        let hub_config = crate::server::hub_config(&config);
        let topics = args.topics_table.clone();
        let (hub, dynamo) = Hub::new(hub_config, |sink| {
            Arc::new(DynamoBackplane::new(
                ddb.clone(),
                topics,
                hub_config.history,
                sink,
            ))
        });
        let state = AppState::new(hub.clone(), config)?;
        let store = Store::new(
            ddb,
            args.connections_table.clone(),
            args.topics_table.clone(),
        );
        let fanout = Arc::new(Fanout {
            store: store.clone(),
            poster: poster(&sdk),
            hub,
        });
        dynamo.set_broadcast(fanout.clone());
        Ok(Serverless {
            state,
            store,
            fanout,
        })
    }

    /// `POST /v1/events` (HTTP API, function URL, `lambda-local`): the same checks
    /// and answers as `serve`'s: 415, 401/403 (credential), 400 (body), then
    /// `202 {"seq"}` or the hub's refusal.
    pub async fn publish(&self, headers: &HeaderMap, body: &[u8]) -> (u16, Value) {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::http::edge::is_json);
        if !is_json {
            return (
                415,
                json!({"message": "Unsupported Media Type: send the body as JSON with Content-Type: application/json"}),
            );
        }
        let state = &self.state;
        if let Err((status, message)) = state
            .gate
            .authorize_publisher(headers, &state.publishers)
            .await
        {
            return (status.as_u16(), json!({ "message": message }));
        }
        let request = match PublishRequest::from_json(body) {
            Ok(r) => r,
            Err(message) => return (400, json!({ "message": message })),
        };
        match state.hub.publish(request).await {
            Ok(event) => (202, json!({ "seq": event.seq })),
            Err(e) => {
                if e.status() >= 500 {
                    tracing::warn!(error = %e, "publish failed");
                }
                (e.status(), json!({ "message": e.to_string() }))
            }
        }
    }
}
