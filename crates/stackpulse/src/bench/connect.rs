//! One benchmark connection: a TCP socket bound to a chosen 127.0.0.x source
//! address, the WebSocket handshake, the subscription, and then a reader that
//! times every bench event until it is told to stop.
//!
//! A loopback address has about 28,000 ephemeral ports; binding each socket to
//! one of several source addresses before connecting lets one generator open tens
//! of thousands of connections to one server port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::target::{self, Target};

/// How long one connect+subscribe may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The client's read buffer: bench events are small, and 15,000 connections with
/// tungstenite's default (128 KiB) would need 2 GB in the generator.
const READ_BUFFER: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid WebSocket URL {0}")]
    Url(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("tcp connect from {source_ip}: {error}")]
    Tcp {
        source_ip: IpAddr,
        error: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    Handshake(String),
    #[error("subscribe refused: {0}")]
    Refused(String),
    #[error("closed before the subscription was confirmed")]
    Closed,
    #[error("connect+subscribe took longer than {0:?}")]
    Timeout(Duration),
}

pub type Socket = WebSocketStream<TcpStream>;

/// Opens connections to one server in one dialect.
#[derive(Clone)]
pub struct Dialer {
    target: Target,
    ws_template: String,
    server: SocketAddr,
    token: Option<Arc<str>>,
    sources: u8,
}

impl Dialer {
    /// Resolves the server address of `ws_template` once.
    pub async fn new(
        target: Target,
        ws_template: &str,
        token: Option<String>,
        sources: u8,
    ) -> Result<Dialer, ConnectError> {
        let sample = target::url_for(ws_template, "x");
        let url = url::Url::parse(&sample).map_err(|_| ConnectError::Url(sample.clone()))?;
        if url.scheme() != "ws" {
            return Err(ConnectError::Url(format!(
                "{sample} (only ws:// is supported)"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ConnectError::Url(sample.clone()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let server = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ConnectError::Resolve(format!("{host}:{port}")))?;
        Ok(Dialer {
            target,
            ws_template: ws_template.to_owned(),
            server,
            token: token.map(Arc::from),
            sources: sources.max(1),
        })
    }

    /// The source address of connection `index`: 127.0.0.2 … when the server is
    /// on IPv4 loopback, else whatever the kernel picks.
    fn source(&self, index: usize) -> Option<SocketAddr> {
        match self.server.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let last = 2 + (index % usize::from(self.sources)) as u8;
                Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
            }
            _ => None,
        }
    }

    /// Connects connection `index` and subscribes it to `topic`; returns the socket
    /// once the subscription is confirmed.
    pub async fn open(&self, index: usize, topic: &str) -> Result<Socket, ConnectError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_inner(index, topic))
            .await
            .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
    }

    async fn open_inner(&self, index: usize, topic: &str) -> Result<Socket, ConnectError> {
        let socket = match self.server {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let source = self.source(index);
        let source_ip = source.map_or(self.server.ip(), |s| s.ip());
        let tcp_err = |error| ConnectError::Tcp { source_ip, error };
        let socket = socket.map_err(tcp_err)?;
        if let Some(source) = source {
            socket.bind(source).map_err(tcp_err)?;
        }
        let stream = socket.connect(self.server).await.map_err(tcp_err)?;
        stream.set_nodelay(true).map_err(tcp_err)?;

        let url = target::url_for(&self.ws_template, topic);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|_| ConnectError::Url(url.clone()))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConnectError::Handshake("token has invalid characters".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| ConnectError::Handshake(e.to_string()))?;

        let Some(subscribe) = self.target.subscribe_request(topic) else {
            return Ok(ws);
        };
        ws.send(Message::Text(subscribe.into()))
            .await
            .map_err(|e| ConnectError::Handshake(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match self.target.subscribe_reply(text.as_str()) {
                    Some(Ok(())) => return Ok(ws),
                    Some(Err(refusal)) => return Err(ConnectError::Refused(refusal)),
                    None => continue,
                },
                Some(Ok(Message::Close(_))) | None => return Err(ConnectError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::Handshake(e.to_string())),
            }
        }
    }
}

/// What one connection saw while it read.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Delivery latency of each bench event, microseconds.
    pub latencies_us: Vec<u32>,
    /// Why the connection ended before it was told to stop, if it did.
    pub ended_early: Option<String>,
}

/// Reads bench events until `stop`, timing each against the send time in it and
/// counting it in `delivered`.
pub async fn read_until(
    mut ws: Socket,
    stop: CancellationToken,
    delivered: Arc<AtomicU64>,
    expected_hint: usize,
) -> ReadOutcome {
    let mut outcome = ReadOutcome {
        latencies_us: Vec::with_capacity(expected_hint),
        ended_early: None,
    };
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Some(sent) = target::sent_us(text.as_str()) {
                    let latency = target::now_us().saturating_sub(sent);
                    outcome
                        .latencies_us
                        .push(u32::try_from(latency).unwrap_or(u32::MAX));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                outcome.ended_early = Some(match frame {
                    Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                    None => "closed by server".into(),
                });
                return outcome;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                outcome.ended_early = Some(format!("read error: {e}"));
                return outcome;
            }
            None => {
                outcome.ended_early = Some("connection lost".into());
                return outcome;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    outcome
}

/// Times `open`: connect+subscribe latency of one connection.
pub async fn timed_open(
    dialer: &Dialer,
    index: usize,
    topic: &str,
) -> (Duration, Result<Socket, ConnectError>) {
    let started = Instant::now();
    let result = dialer.open(index, topic).await;
    (started.elapsed(), result)
}
