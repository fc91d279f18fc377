//! A Rust client of the `/ws` protocol, used by the CLI and the tests.
//!
//! [`Client::connect`] opens the socket; `subscribe`/`unsubscribe`/`ping` send
//! requests; [`Client::next`] yields decoded frames and remembers, per topic, the
//! epoch and last seq seen, so [`Client::reconnect`] can resume every subscription
//! with `since` and lose nothing.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use stackpulse_protocol::{Event, Incoming, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("invalid server URL {0}")]
    Url(String),
    #[error("websocket error: {0}")]
    Socket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("undecodable frame from server: {0}")]
    Decode(#[from] serde_json::Error),
}

/// How a connection ended, when it ended with a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// What [`Client::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(ServerMessage),
    Event(Event),
    /// The server closed the connection.
    Closed(Option<Closed>),
}

/// Where a subscription stands, for resuming it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub seq: Option<u64>,
    pub epoch: Option<String>,
}

pub struct Client {
    url: String,
    token: Option<String>,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    positions: BTreeMap<String, Position>,
}

/// Turns `http://host:port` (or `ws://…`, with or without `/ws`) into the `/ws` URL.
pub fn ws_url(server: &str) -> Result<String, ClientError> {
    let mut url = url::Url::parse(server).map_err(|_| ClientError::Url(server.to_owned()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(ClientError::Url(server.to_owned())),
    };
    url.set_scheme(scheme)
        .map_err(|_| ClientError::Url(server.to_owned()))?;
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/ws");
    }
    Ok(url.to_string())
}

impl Client {
    /// Connects to a `ws://…/ws` URL, with a bearer token if given.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let socket = open(url, token).await?;
        Ok(Client {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            socket,
            positions: BTreeMap::new(),
        })
    }

    /// Sends one raw text frame (tests use it for malformed input).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        self.socket
            .send(message)
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    pub async fn subscribe(
        &mut self,
        topic: &str,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut msg = serde_json::json!({ "action": "subscribe", "deployment_id": topic });
        if let Some(since) = since {
            msg["since"] = since.into();
        }
        if let Some(epoch) = epoch {
            msg["epoch"] = epoch.into();
        }
        self.positions.entry(topic.to_owned()).or_default();
        self.send_text(&msg.to_string()).await
    }

    pub async fn unsubscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        self.positions.remove(topic);
        let msg = serde_json::json!({ "action": "unsubscribe", "deployment_id": topic });
        self.send_text(&msg.to_string()).await
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_text(r#"{"action":"ping"}"#).await
    }

    /// The next frame from the server; `None` once the socket is gone.
    pub async fn next(&mut self) -> Option<Result<Frame, ClientError>> {
        loop {
            let message = match self.socket.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(ClientError::Socket(Box::new(e)))),
            };
            match message {
                Message::Text(text) => {
                    return Some(match Incoming::parse(text.as_str()) {
                        Ok(Incoming::Event(event)) => {
                            self.track_event(&event);
                            Ok(Frame::Event(event))
                        }
                        Ok(Incoming::Control(control)) => {
                            self.track_control(&control);
                            Ok(Frame::Control(control))
                        }
                        Err(e) => Err(ClientError::Decode(e)),
                    })
                }
                Message::Close(frame) => {
                    return Some(Ok(Frame::Closed(frame.map(|f: CloseFrame| Closed {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    }))))
                }
                _ => continue,
            }
        }
    }

    fn track_event(&mut self, event: &Event) {
        if let Some(p) = self.positions.get_mut(&event.deployment_id) {
            // A snapshot is current to its seq: resuming after it is correct too.
            p.seq = Some(event.seq);
        }
    }

    fn track_control(&mut self, control: &ServerMessage) {
        if let ServerMessage::Subscribed {
            deployment_id,
            seq,
            epoch,
            recovered,
        } = control
        {
            if let Some(p) = self.positions.get_mut(deployment_id) {
                if !recovered || p.epoch.as_deref() != Some(epoch.as_str()) {
                    // A snapshot (or nothing, for an empty topic) follows; it sets seq.
                    p.seq = (*seq == 0).then_some(0);
                }
                p.epoch = Some(epoch.clone());
            }
        }
    }

    /// Per-topic positions: the last seq and epoch seen.
    pub fn positions(&self) -> &BTreeMap<String, Position> {
        &self.positions
    }

    /// Opens a new socket and resubscribes every topic from its last seen seq.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.socket = open(&self.url, self.token.as_deref()).await?;
        let positions: Vec<(String, Position)> = self
            .positions
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (topic, p) in positions {
            self.subscribe(&topic, p.seq, p.epoch.as_deref()).await?;
        }
        Ok(())
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

async fn open(
    url: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, ClientError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| ClientError::Url(url.to_owned()))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::Url("token contains invalid characters".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_from_server_url() {
        assert_eq!(
            ws_url("http://127.0.0.1:8000").expect("ok"),
            "ws://127.0.0.1:8000/ws"
        );
        assert_eq!(
            ws_url("https://x.example/").expect("ok"),
            "wss://x.example/ws"
        );
        assert_eq!(ws_url("ws://h:1/ws").expect("ok"), "ws://h:1/ws");
        assert!(ws_url("ftp://h").is_err());
    }
}
