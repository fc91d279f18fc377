//! `stackpulse lambda-local --bind ADDR`: serverless mode on this machine, with real
//! WebSockets (SAM CLI has no local WebSocket APIs).
//!
//! It plays API Gateway: each upgrade of `/ws` gets a connection id and runs
//! `$connect` (a refusal is the HTTP answer, no upgrade); each text frame runs
//! `$default`; the close runs `$disconnect` (as does `--idle-timeout` without a
//! frame from the client, like API Gateway's idle timeout: close 4000). Replies and events come back through
//! [`LocalConnections`], the in-process Management API (`PostToConnection` on a
//! closed socket answers Gone, as API Gateway's 410). `POST /v1/events` runs the
//! same publish handler as the HTTP API route. State lives in DynamoDB at
//! `--aws-endpoint-url`/`AWS_ENDPOINT_URL` (moto); the tables are created when
//! missing. The first line on stdout is `stackpulse listening on http://ADDR`,
//! as `serve` prints it, so scripts can swap one for the other.

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::post::{PostError, Poster};
use super::ws::Admission;
use super::{LambdaArgs, Serverless};
use crate::config::Config;
use crate::hub::CloseReason;

/// The open sockets, by connection id: the local Management API.
#[derive(Default)]
pub struct LocalConnections {
    sockets: DashMap<String, mpsc::Sender<Message>>,
}

#[async_trait]
impl Poster for LocalConnections {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        let Some(tx) = self.sockets.get(connection_id).map(|t| t.clone()) else {
            return Err(PostError::Gone);
        };
        match tx.try_send(Message::Text(frame.into())) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PostError::Gone),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A slow consumer: dropped like API Gateway drops a stuck socket.
                self.sockets.remove(connection_id);
                Err(PostError::Gone)
            }
        }
    }

    /// With the contract's code for `reason`, as `serve` closes (API Gateway's own
    /// `DeleteConnection` sends no code of ours).
    async fn close(&self, connection_id: &str, reason: CloseReason) {
        if let Some((_, tx)) = self.sockets.remove(connection_id) {
            let (code, text) = crate::ws::close::for_reason(reason);
            let _ = tx.try_send(close_frame(code, text));
        }
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A connection id shaped like API Gateway's (`L0SM9cOFvHcCIhw=`).
fn new_connection_id() -> String {
    use base64::Engine;
    let bytes: [u8; 10] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Clone)]
struct Local {
    svc: Serverless,
    sockets: Arc<LocalConnections>,
}

/// Runs `lambda-local` until SIGINT/SIGTERM.
pub async fn run(args: LambdaArgs) -> ExitCode {
    let config = match Config::resolve(&args.serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    crate::cli::init_logging(config.log_format);
    if let Err(e) = crate::server::check_bind(&config) {
        eprintln!("stackpulse: {e}");
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(config.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stackpulse: cannot listen on {}: {e}", config.bind);
            return ExitCode::from(2);
        }
    };
    let sockets = Arc::new(LocalConnections::default());
    let poster = sockets.clone();
    let svc = match Serverless::build(config, &args, |_| poster).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = super::store::ensure_tables(
        svc.store.client(),
        &args.connections_table,
        &args.topics_table,
    )
    .await
    {
        eprintln!("stackpulse: cannot prepare the DynamoDB tables: {e}");
        return ExitCode::from(2);
    }
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    let state = svc.state.clone();
    let _ = crate::metrics::install();
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/v1/events", post(publish))
        .with_state(Local { svc, sockets })
        .merge(
            Router::new()
                .route("/v1/topics/{id}", get(crate::http::ops::topic))
                .route("/healthz", get(crate::http::ops::healthz))
                .route("/readyz", get(crate::http::ops::readyz))
                .route("/metrics", get(crate::http::ops::metrics))
                .with_state(state),
        );
    println!("stackpulse listening on http://{addr}");
    tracing::info!(%addr, "lambda-local: API Gateway WebSocket emulation on DynamoDB");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(crate::signal::shutdown_signal())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            ExitCode::from(1)
        }
    }
}

async fn publish(State(local): State<Local>, headers: HeaderMap, body: Bytes) -> Response {
    let (status, body) = local.svc.publish(&headers, &body).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

async fn upgrade(
    State(local): State<Local>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let id = new_connection_id();
    match local.svc.connect(&id, &headers, query.as_deref()).await {
        Admission::Refuse(status, body) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Admission::Accept(protocol) => {
            let limit = local.svc.state.config.max_frame_bytes;
            // Frames a little over the limit still arrive, so they can be refused
            // with 1009 rather than cut off by the WebSocket layer.
            let ws = ws.max_message_size(limit.saturating_mul(2).max(limit + 1024));
            let ws = match protocol {
                Some(p) => ws.protocols([p]),
                None => ws,
            };
            ws.on_upgrade(move |socket| session(local, id, socket))
        }
    }
}

/// One socket: a writer draining the connection's queue, and the reader running
/// `$default` for each frame, in order.
async fn session(local: Local, id: String, socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Message>(local.svc.state.config.queue_size.max(16));
    local.sockets.sockets.insert(id.clone(), tx);
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let last = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let limit = local.svc.state.config.max_frame_bytes;
    let idle = local.svc.state.config.idle_timeout;
    loop {
        // API Gateway closes a connection that sent nothing for its idle timeout.
        let msg = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(_) => break,
            Err(_) => {
                close_with(&local, &id, crate::ws::close::IDLE_TIMEOUT, "idle timeout");
                break;
            }
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(b) if b.len() <= limit => {
                metrics::counter!("stackpulse_client_errors_total").increment(1);
                let e = stackpulse_protocol::ProtocolError::BinaryFrame;
                let reply = stackpulse_protocol::ServerMessage::error(e.code(), e.to_string());
                local.svc.fanout.post(&id, &reply.to_json()).await;
                continue;
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                oversized(&local, &id);
                break;
            }
        };
        if text.len() > limit {
            oversized(&local, &id);
            break;
        }
        local.svc.message(&id, text.as_str()).await;
    }
    local.sockets.sockets.remove(&id);
    local.svc.disconnect(&id).await;
    let _ = writer.await;
}

fn oversized(local: &Local, id: &str) {
    close_with(
        local,
        id,
        crate::ws::close::MESSAGE_TOO_BIG,
        "Message too big",
    );
}

fn close_with(local: &Local, id: &str, code: u16, reason: &str) {
    if let Some((_, tx)) = local.sockets.sockets.remove(id) {
        let _ = tx.try_send(close_frame(code, reason));
    }
}
