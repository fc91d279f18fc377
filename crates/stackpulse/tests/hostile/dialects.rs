//! The four socket endpoints as one table.
//!
//! [`Dialect`] names an endpoint; [`Dialect::connect`] opens it (with an optional
//! token, through the dialect's own handshake), [`Conn::subscribe`] sends the
//! dialect's subscribe for a topic and [`Conn::reply`] reads what comes back as a
//! [`Reply`]: accepted, an error's message, or the close code. Each limit the
//! connection driver owns is asserted here over [`ALL`] endpoints.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{Server, WAIT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A socket endpoint of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/ws`, the native protocol.
    Ws,
    /// `/canvas/deploy/track/{stack}`: subscribed to its stack at connect.
    Canvas,
    /// AppSync real-time, `/graphql/realtime`.
    AppSync,
    /// `graphql-transport-ws` on `/graphql`.
    TransportWs,
}

pub const ALL: [Dialect; 4] = [
    Dialect::Ws,
    Dialect::Canvas,
    Dialect::AppSync,
    Dialect::TransportWs,
];
pub const GRAPHQL: [Dialect; 2] = [Dialect::AppSync, Dialect::TransportWs];

/// A subscription field of the GraphQL schema, on topic `$d`.
const FIELD: &str = "onDeploymentUpdated(deployment_id: $d, since: 0) { seq status }";

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Subscribed (`subscribed`, `start_ack`, a first `next`).
    Ok,
    /// An error reply, by its message.
    Error(String),
    /// The server closed the socket with this code.
    Closed(Option<u16>),
}

pub struct Conn {
    pub dialect: Dialect,
    pub ws: Ws,
    next_id: u32,
}

impl Dialect {
    /// The upgrade request of this endpoint (canvas: tracking `stack`).
    pub fn request(self, server: &Server, token: Option<&str>) -> Request {
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let path = match self {
            Dialect::Ws => format!("/ws{query}"),
            Dialect::Canvas => format!("/canvas/deploy/track/hostile-stack{query}"),
            Dialect::AppSync => "/graphql/realtime".to_owned(),
            Dialect::TransportWs => "/graphql".to_owned(),
        };
        let mut req = format!("ws://{}{path}", server.addr)
            .into_client_request()
            .expect("request");
        let protocol = match self {
            Dialect::Ws | Dialect::Canvas => return req,
            Dialect::AppSync => {
                let auth = match token {
                    Some(t) => json!({"host": "h", "Authorization": t}),
                    None => json!({"host": "h"}),
                };
                let header = crate::common::tokens::b64(auth.to_string().as_bytes());
                format!("graphql-ws, header-{header}")
            }
            Dialect::TransportWs => "graphql-transport-ws".to_owned(),
        };
        req.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
        req
    }

    /// Upgrades without any handshake frame (GraphQL: no `connection_init`).
    pub async fn upgrade(self, server: &Server, token: Option<&str>) -> Conn {
        let (ws, _) = tokio_tungstenite::connect_async(self.request(server, token))
            .await
            .unwrap_or_else(|e| panic!("{self:?}: connect: {e}"));
        Conn {
            dialect: self,
            ws,
            next_id: 0,
        }
    }

    /// Upgrades and completes the dialect's handshake (GraphQL: `connection_init`
    /// answered by `connection_ack`).
    pub async fn connect(self, server: &Server, token: Option<&str>) -> Conn {
        let mut conn = self.upgrade(server, token).await;
        let payload = match token {
            Some(t) => json!({"Authorization": t}),
            None => json!({}),
        };
        if matches!(self, Dialect::AppSync | Dialect::TransportWs) {
            conn.send(json!({"type": "connection_init", "payload": payload}))
                .await;
            let ack = conn.recv().await.expect("connection_ack");
            assert_eq!(ack["type"], "connection_ack", "{self:?}: {ack}");
        }
        conn
    }
}

impl Conn {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON that is not a keep-alive; `Err(code)` once the
    /// server closed.
    pub async fn recv(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{:?}: timed out waiting for a frame", self.dialect));
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["type"] != "ka" && v["type"] != "pong" {
                        return Ok(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                None | Some(Err(_)) => return Err(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the server closes; the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.recv().await {
                return code;
            }
        }
    }

    /// Subscribes to `topic` in this dialect (GraphQL: one operation of one
    /// field). Canvas sockets subscribe at connect.
    pub async fn subscribe(&mut self, topic: &str) {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let query = || format!("subscription S($d: ID!) {{ {FIELD} }}");
        let frame = match self.dialect {
            Dialect::Ws => json!({"action": "subscribe", "deployment_id": topic}),
            Dialect::Canvas => panic!("canvas sockets subscribe at connect"),
            Dialect::AppSync => {
                let data = json!({"query": query(), "variables": {"d": topic}}).to_string();
                json!({"id": id, "type": "start", "payload": {"data": data}})
            }
            Dialect::TransportWs => {
                json!({"id": id, "type": "subscribe", "payload": {"query": query(), "variables": {"d": topic}}})
            }
        };
        self.send(frame).await;
    }

    /// The answer to the last subscribe. graphql-transport-ws has no ack: a
    /// subscription counts as accepted at its first `next` (publish to the topic
    /// first; fields ask for `since: 0`).
    pub async fn reply(&mut self) -> Reply {
        loop {
            let v = match self.recv().await {
                Ok(v) => v,
                Err(code) => return Reply::Closed(code),
            };
            let message = |errors: &Value| {
                errors
                    .as_array()
                    .and_then(|e| e.first())
                    .and_then(|e| e["message"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            match v["type"].as_str().unwrap_or_default() {
                "subscribed" | "start_ack" => return Reply::Ok,
                "next" if v["payload"]["errors"].is_array() => {
                    return Reply::Error(message(&v["payload"]["errors"]))
                }
                "next" => return Reply::Ok,
                "error" if self.dialect == Dialect::Ws => {
                    return Reply::Error(v["message"].as_str().unwrap_or_default().to_owned())
                }
                "error" if self.dialect == Dialect::AppSync => {
                    return Reply::Error(message(&v["payload"]["errors"]))
                }
                "error" => return Reply::Error(message(&v["payload"])),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_on_every_dialect() {
    let server = Server::start(&["--max-frame-bytes", "1024"]).await;
    for dialect in ALL {
        let mut conn = dialect.connect(&server, None).await;
        let big = "x".repeat(4096);
        conn.send(json!({"type": big})).await;
        assert_eq!(conn.close_code().await, Some(1009), "{dialect:?}");
    }
}

#[tokio::test]
async fn a_silent_socket_is_closed_by_the_idle_timeout_on_every_dialect() {
    let server = Server::start(&["--idle-timeout", "1"]).await;
    for dialect in ALL {
        let mut conn = dialect.connect(&server, None).await;
        assert_eq!(conn.close_code().await, Some(4000), "{dialect:?}");
    }
}

#[tokio::test]
async fn the_server_pings_every_dialect() {
    let server = Server::start(&["--ping-interval", "0.2"]).await;
    for dialect in ALL {
        let mut conn = dialect.connect(&server, None).await;
        loop {
            let msg = tokio::time::timeout(WAIT, conn.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{dialect:?}: no ping"));
            match msg {
                Some(Ok(Message::Ping(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("{dialect:?}: {other:?} before a ping"),
            }
        }
    }
}

#[tokio::test]
async fn the_subscription_limit_holds_on_every_dialect() {
    let server = Server::start(&["--max-subscriptions", "2"]).await;
    for topic in ["L1", "L2", "L3"] {
        server.publish(topic, "up").await;
    }
    // A canvas socket holds its one stack topic, set at connect.
    for dialect in [Dialect::Ws, Dialect::AppSync, Dialect::TransportWs] {
        let mut conn = dialect.connect(&server, None).await;
        for topic in ["L1", "L2"] {
            conn.subscribe(topic).await;
            assert_eq!(conn.reply().await, Reply::Ok, "{dialect:?} {topic}");
        }
        conn.subscribe("L3").await;
        assert_eq!(
            conn.reply().await,
            Reply::Error("Too many subscriptions (limit 2 per connection)".into()),
            "{dialect:?}"
        );
    }
}

/// `--write-delay` is the driver's writer, so it paces every dialect: ten events
/// published back to back, within the delay of the subscribe's answer (a write
/// too), reach the subscriber once each, in order, in at most a few writes
/// (without the delay, one write each). The canvas socket's topic is written
/// only by the tracker, so nothing can be published to it here.
#[tokio::test]
async fn a_write_delay_paces_every_dialect() {
    let server = Server::start(&["--write-delay", "1"]).await;
    for (n, dialect) in [Dialect::Ws, Dialect::AppSync, Dialect::TransportWs]
        .into_iter()
        .enumerate()
    {
        let topic = format!("W{n}");
        // graphql-transport-ws answers a subscribe with its first event.
        server.publish(&topic, "first").await;
        let mut conn = dialect.connect(&server, None).await;
        conn.subscribe(&topic).await;
        assert_eq!(conn.reply().await, Reply::Ok, "{dialect:?}");
        let writes = server.metric("stackpulse_event_writes_total").await;
        for _ in 0..10 {
            server.publish(&topic, "burst").await;
        }
        let mut seqs = Vec::new();
        while seqs.last() != Some(&11) {
            let v = conn.recv().await.expect("an event");
            let seq = v["seq"]
                .as_u64()
                .or_else(|| v["payload"]["data"]["onDeploymentUpdated"]["seq"].as_u64());
            if let Some(seq) = seq.filter(|s| *s > 1) {
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (2..=11).collect::<Vec<_>>(), "{dialect:?}");
        let writes = server.metric("stackpulse_event_writes_total").await - writes;
        assert!(
            (1.0..=3.0).contains(&writes),
            "{dialect:?}: 10 events took {writes} writes"
        );
    }
}

#[tokio::test]
async fn graphql_sockets_must_init_within_the_deadline_even_while_pinging() {
    let server = Server::start(&["--init-timeout", "1", "--idle-timeout", "30"]).await;
    for dialect in GRAPHQL {
        let mut conn = dialect.upgrade(&server, None).await;
        let started = tokio::time::Instant::now();
        // Pings and unrelated frames never move the deadline.
        let code = loop {
            tokio::select! {
                code = conn.close_code() => break code,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let _ = conn.ws.send(Message::Ping(Default::default())).await;
            let _ = conn.ws.send(Message::Text("{}".into())).await;
        };
        assert_eq!(code, Some(4408), "{dialect:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{dialect:?}");
    }
}

#[tokio::test]
async fn a_graphql_socket_holds_no_slot_before_its_credential() {
    let server = Server::start(&["--max-connections", "2"]).await;
    // Two sockets that never send `connection_init` …
    let mut idle = Vec::new();
    for dialect in GRAPHQL {
        idle.push(dialect.upgrade(&server, None).await);
    }
    // … leave both places for sockets with a credential, on every dialect.
    let mut a = Dialect::Ws.connect(&server, None).await;
    let mut b = Dialect::AppSync.connect(&server, None).await;
    a.subscribe("S").await;
    assert_eq!(a.reply().await, Reply::Ok);
    b.subscribe("S").await;
    assert_eq!(b.reply().await, Reply::Ok);
    // The limit still holds once credentials are in.
    let (status, body) = server.upgrade_status("", None).await;
    assert_eq!(status, 503, "{body}");
    drop(idle);
}

#[tokio::test]
async fn shutdown_closes_every_dialect_with_1001() {
    let mut server = Server::start(&[]).await;
    let mut conns = Vec::new();
    for dialect in ALL {
        conns.push(dialect.connect(&server, None).await);
    }
    server.sigterm();
    for conn in &mut conns {
        assert_eq!(conn.close_code().await, Some(1001), "{:?}", conn.dialect);
    }
    server.exits_cleanly().await;
}
