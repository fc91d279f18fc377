//! `stackpulse lambda`: the AWS Lambda runtime loop (the binary runs it when it is
//! named `bootstrap`, as `provided.al2023` packages it).
//!
//! One function takes every event the SAM template routes to it and dispatches by
//! shape ([`Serverless::handle`]):
//! - `requestContext.connectionId` → API Gateway WebSocket (`CONNECT`,
//!   `DISCONNECT`, `MESSAGE`) → [`super::ws`];
//! - `requestContext.http.method` → HTTP API (payload 2.0) or function URL:
//!   `POST …/v1/events` → [`Serverless::publish`];
//! - `detail-type` → EventBridge: CloudFormation status changes and the scheduled
//!   safety-net poll → [`super::cfn`].
//!
//! Anything else is answered 400 and logged.

use std::process::ExitCode;
use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayWebsocketProxyRequest};
use axum::http::HeaderMap;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

use super::post::ManagementApi;
use super::ws::Admission;
use super::{LambdaArgs, Serverless};
use crate::config::Config;

/// Runs the Lambda runtime loop until the runtime API goes away.
pub async fn run(args: LambdaArgs) -> ExitCode {
    let config = match Config::resolve(&args.serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    crate::cli::init_logging(config.log_format);
    let Some(endpoint) = args.ws_endpoint.clone() else {
        eprintln!(
            "stackpulse: STACKPULSE_WS_ENDPOINT is not set (the API Gateway Management API URL, \
             https://{{api}}.execute-api.{{region}}.amazonaws.com/{{stage}})"
        );
        return ExitCode::from(2);
    };
    if config.auth.is_none() && !args.allow_anonymous && !runtime_is_local() {
        eprintln!(
            "stackpulse: refusing to run as a Lambda function without authentication: an API \
             Gateway endpoint is public (set STACKPULSE_COGNITO_USER_POOL_ID or \
             STACKPULSE_JWKS_URL and STACKPULSE_JWT_ISSUER, or STACKPULSE_ALLOW_ANONYMOUS=true \
             to serve anyone with the URL)"
        );
        return ExitCode::from(2);
    }
    let svc = match Serverless::build(config, &args, |sdk| {
        Arc::new(ManagementApi::new(sdk, &endpoint))
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    let handler = service_fn(move |event: LambdaEvent<Value>| {
        let svc = svc.clone();
        async move { Ok::<Value, lambda_runtime::Error>(svc.handle(event.payload).await) }
    });
    match lambda_runtime::run(handler).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackpulse: Lambda runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Whether the runtime API is on this machine (a local emulator or a test): only
/// then may the function run without authentication.
fn runtime_is_local() -> bool {
    std::env::var("AWS_LAMBDA_RUNTIME_API")
        .is_ok_and(|api| crate::http::edge::is_loopback_host(&api))
}

/// An API Gateway proxy response.
fn response(status: u16, body: Option<String>, headers: Value) -> Value {
    let mut r = json!({ "statusCode": status, "headers": headers });
    if let Some(body) = body {
        r["body"] = Value::String(body);
    }
    r
}

fn json_response(status: u16, body: &Value) -> Value {
    response(
        status,
        Some(body.to_string()),
        json!({"content-type": "application/json"}),
    )
}

/// Rebuilds a query string from API Gateway's parsed parameters.
fn query_string(params: &aws_lambda_events::query_map::QueryMap) -> Option<String> {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params.iter() {
        q.append_pair(k, v);
        any = true;
    }
    any.then(|| q.finish())
}

fn body_bytes(body: Option<&str>, base64: bool) -> Result<Vec<u8>, String> {
    let body = body.unwrap_or_default();
    if !base64 {
        return Ok(body.as_bytes().to_vec());
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("Invalid body: not base64 ({e})"))
}

impl Serverless {
    /// Handles one Lambda event, whatever its source (see the module doc).
    pub async fn handle(&self, payload: Value) -> Value {
        if payload.pointer("/requestContext/connectionId").is_some() {
            return match serde_json::from_value::<ApiGatewayWebsocketProxyRequest>(payload) {
                Ok(req) => self.websocket(req).await,
                Err(e) => json_response(
                    400,
                    &json!({"message": format!("Malformed WebSocket event: {e}")}),
                ),
            };
        }
        if payload.pointer("/requestContext/http/method").is_some() {
            return match serde_json::from_value::<ApiGatewayV2httpRequest>(payload) {
                Ok(req) => self.http(req).await,
                Err(e) => json_response(
                    400,
                    &json!({"message": format!("Malformed HTTP event: {e}")}),
                ),
            };
        }
        if payload.get("detail-type").is_some() {
            return self.eventbridge(payload).await;
        }
        tracing::warn!("unrecognised Lambda event");
        json!({"statusCode": 400, "body": "{\"message\":\"Unrecognised event\"}"})
    }

    async fn websocket(&self, req: ApiGatewayWebsocketProxyRequest) -> Value {
        let ctx = &req.request_context;
        let Some(id) = ctx.connection_id.as_deref() else {
            return json_response(400, &json!({"message": "Missing connectionId"}));
        };
        match ctx.event_type.as_deref() {
            Some("CONNECT") => {
                let query = query_string(&req.query_string_parameters);
                match self.connect(id, &req.headers, query.as_deref()).await {
                    Admission::Accept(Some(proto)) => {
                        response(200, None, json!({"Sec-WebSocket-Protocol": proto}))
                    }
                    Admission::Accept(None) => response(200, None, json!({})),
                    Admission::Refuse(status, body) => response(
                        status,
                        Some(body),
                        json!({"content-type": "application/json"}),
                    ),
                }
            }
            Some("DISCONNECT") => {
                self.disconnect(id).await;
                response(200, None, json!({}))
            }
            Some("MESSAGE") => {
                match body_bytes(req.body.as_deref(), req.is_base64_encoded).map(String::from_utf8)
                {
                    Ok(Ok(text)) => self.message(id, &text).await,
                    _ => {
                        metrics::counter!("stackpulse_client_errors_total").increment(1);
                        let e = stackpulse_protocol::ProtocolError::BinaryFrame;
                        let reply =
                            stackpulse_protocol::ServerMessage::error(e.code(), e.to_string());
                        self.fanout.post(id, &reply.to_json()).await;
                    }
                }
                response(200, None, json!({}))
            }
            other => json_response(
                400,
                &json!({"message": format!("Unknown WebSocket event type {other:?}")}),
            ),
        }
    }

    async fn http(&self, req: ApiGatewayV2httpRequest) -> Value {
        let method = req.request_context.http.method.clone();
        let path = req.raw_path.clone().unwrap_or_default();
        if !path.ends_with("/v1/events") {
            return json_response(404, &json!({"message": format!("Not found: {path}")}));
        }
        if method != axum::http::Method::POST {
            return json_response(405, &json!({"message": "Method not allowed: use POST"}));
        }
        let body = match body_bytes(req.body.as_deref(), req.is_base64_encoded) {
            Ok(b) => b,
            Err(message) => return json_response(400, &json!({ "message": message })),
        };
        let headers: HeaderMap = req.headers.clone();
        let (status, body) = self.publish(&headers, &body).await;
        json_response(status, &body)
    }
}
