//! One WebSocket connection: a reader and a writer around the hub session.
//!
//! The **reader** parses client frames and calls the hub (`subscribe` may wait
//! while a replay fills the queue, so it must not be the task that drains it); its
//! replies go through the same outbox as events, so their order is the order the
//! client sees. It enforces the idle timeout and the frame limit. The **writer**
//! drains the outbox in batches (feed many, flush once), sends WebSocket pings, and
//! on a close request writes the close frame with its code. Either side ending
//! closes the outbox; the connection then leaves the hub and the registry.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use stackpulse_protocol::{parse_client_message, ClientMessage, ProtocolError, ServerMessage};

use super::close;
use super::registry::{ConnInfo, Slot};
use crate::auth::limits::UserSlot;
use crate::http::AppState;
use crate::hub::{CloseReason, Delivery, Outbox, SubscribeError};
use stackpulse_auth::Verified;

/// Items written per flush at most, so pings and closes are not starved.
const BATCH: usize = 64;
/// How long a close frame may take to write to a peer that does not read (a slow
/// consumer gets this long to drain what is already in flight).
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// What admission granted a connection before its upgrade.
pub struct Admitted {
    pub slot: Slot,
    pub remote: SocketAddr,
    pub verified: Verified,
    /// One of the user's places (with auth); released when the connection ends.
    pub user_slot: Option<UserSlot>,
}

/// An upgraded socket of any dialect, once [`open`] registered it: its hub session
/// is open and its writer runs; the caller reads `stream`.
pub(crate) struct Opened {
    pub info: Arc<ConnInfo>,
    pub outbox: Arc<Outbox>,
    pub stream: SplitStream<WebSocket>,
    pub writer: tokio::task::JoinHandle<()>,
}

/// Opens the hub session of an upgraded socket, registers the connection in
/// `slot` and starts its writer with the dialect's `encoder`.
pub(crate) fn open<E: Encoder>(
    socket: WebSocket,
    state: &AppState,
    slot: &mut Slot,
    verified: Verified,
    remote: SocketAddr,
    encoder: E,
) -> Opened {
    let (outbox, rx) = Outbox::new(state.config.queue_size);
    let session = state.hub.open_session(outbox.clone());
    let info = ConnInfo::new(verified.user, remote, verified.expires_at, session);
    slot.register(info.clone());
    // Shutdown closes the registered connections; one that registers after that
    // sweep (its upgrade finished just then) closes itself the same way.
    if state.shutdown.is_cancelled() {
        outbox.close(CloseReason::Shutdown);
    }
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        outbox.clone(),
        state.config.ping_interval,
        encoder,
    ));
    Opened {
        info,
        outbox,
        stream,
        writer,
    }
}

pub async fn run(socket: WebSocket, state: AppState, admitted: Admitted) {
    let Admitted {
        mut slot,
        remote,
        verified,
        user_slot,
    } = admitted;
    let encoder = JsonEncoder {
        latency: crate::metrics::delivery_latency(),
        writes: 0,
        sample: true,
    };
    let Opened {
        info,
        outbox,
        stream,
        writer,
    } = open(socket, &state, &mut slot, verified, remote, encoder);
    let session = info.session.clone();
    tracing::debug!(conn = session.id, %remote, "connected");
    read_loop(stream, &state, &info).await;
    outbox.close(CloseReason::ClientClosed);
    state.hub.close_session(&session).await;
    let _ = writer.await;
    tracing::debug!(conn = session.id, "disconnected");
    drop(user_slot);
    drop(slot);
}

fn reply(outbox: &Outbox, message: ServerMessage) {
    // A full queue closes the connection; nothing else to do here.
    let _ = outbox.push(Delivery::frame(message.to_json()));
}

fn reply_error(outbox: &Outbox, e: &ProtocolError) {
    metrics::counter!("stackpulse_client_errors_total").increment(1);
    reply(outbox, ServerMessage::error(e.code(), e.to_string()));
}

/// Whether a read error is tungstenite refusing an oversized frame.
fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    e.into_inner()
        .downcast::<Error>()
        .is_ok_and(|e| matches!(*e, Error::Capacity(_)))
}

/// Resolves when the connection's token expires (never without auth).
pub(crate) async fn token_expiry(expires_at: u64) {
    if expires_at == u64::MAX {
        return std::future::pending().await;
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let left = (expires_at.saturating_mul(1000)).saturating_sub(now_ms);
    tokio::time::sleep(Duration::from_millis(left)).await;
}

pub(crate) fn expired(info: &ConnInfo) -> bool {
    let exp = info.expires_at.load(Ordering::Acquire);
    exp != u64::MAX && u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) >= exp
}

async fn read_loop(mut stream: SplitStream<WebSocket>, state: &AppState, info: &Arc<ConnInfo>) {
    let outbox = &info.session.outbox;
    let idle = state.config.idle_timeout;
    loop {
        let next = tokio::select! {
            biased;
            _ = outbox.closing() => return,
            _ = token_expiry(info.expires_at.load(Ordering::Acquire)) => {
                // An in-band `auth` may have moved the deadline meanwhile.
                if expired(info) {
                    tracing::debug!(conn = info.session.id, "token expired");
                    outbox.close(CloseReason::TokenExpired);
                    return;
                }
                continue;
            }
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let message = match next {
            Err(_) => {
                tracing::debug!(conn = info.session.id, "idle timeout");
                outbox.close(CloseReason::IdleTimeout);
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                if is_too_big(e) {
                    metrics::counter!("stackpulse_client_errors_total").increment(1);
                    outbox.close(CloseReason::MessageTooBig);
                }
                return;
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            // Boxed: the subscribe path is a large future, and keeping it inline
            // would make every idle connection carry its size.
            Message::Text(text) => Box::pin(handle_text(state, info, text.as_str())).await,
            Message::Binary(_) => reply_error(outbox, &ProtocolError::BinaryFrame),
            Message::Pong(_) => info.touch_ping(),
            Message::Ping(_) => {}
            Message::Close(_) => return,
        }
    }
}

async fn handle_text(state: &AppState, info: &Arc<ConnInfo>, text: &str) {
    let session = &info.session;
    let outbox = &session.outbox;
    match parse_client_message(text) {
        Err(e) => reply_error(outbox, &e),
        Ok(ClientMessage::Subscribe {
            deployment_id,
            since,
            epoch,
        }) => match subscribe(state, info, &deployment_id, since, epoch).await {
            Ok(()) | Err(SubscribeError::Closed) => {}
            Err(e) => {
                metrics::counter!("stackpulse_client_errors_total").increment(1);
                reply(
                    outbox,
                    ServerMessage::Error {
                        code: e.code(),
                        message: e.to_string(),
                        deployment_id: Some(deployment_id),
                    },
                );
            }
        },
        Ok(ClientMessage::Unsubscribe { deployment_id }) => {
            state.hub.unsubscribe(session, &deployment_id).await;
            reply(outbox, ServerMessage::Unsubscribed { deployment_id });
        }
        Ok(ClientMessage::Auth { token }) => reauthenticate(state, info, &token).await,
        Ok(ClientMessage::Ping) => {
            info.touch_ping();
            reply(
                outbox,
                ServerMessage::Pong {
                    timestamp: stackpulse_protocol::time::now(),
                },
            );
        }
    }
}

/// An in-band `{"action":"auth","token":…}`: a fresh token for the same user
/// moves the connection's expiry forward.
async fn reauthenticate(state: &AppState, info: &Arc<ConnInfo>, token: &str) {
    let outbox = &info.session.outbox;
    if !state.gate.is_enabled() {
        reply(
            outbox,
            ServerMessage::error(400, "Authentication is not enabled on this server"),
        );
        return;
    }
    match state.gate.authenticate(Some(token)).await {
        Ok(v) if v.user.sub == info.user.sub => {
            info.expires_at.store(v.expires_at, Ordering::Release);
            let expires_at = i64::try_from(v.expires_at)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(stackpulse_protocol::time::format)
                .unwrap_or_default();
            reply(outbox, ServerMessage::Authenticated { expires_at });
        }
        Ok(_) => reply(
            outbox,
            ServerMessage::error(403, "Forbidden: the token belongs to another user"),
        ),
        Err(u) => reply(outbox, ServerMessage::error(401, u.message())),
    }
}

/// Subscribes for this connection's user; the hub's topic policy decides the
/// rest (name, ACL, caps, and the poller of a `stack:*` topic).
async fn subscribe(
    state: &AppState,
    info: &Arc<ConnInfo>,
    topic: &str,
    since: Option<u64>,
    epoch: Option<String>,
) -> Result<(), SubscribeError> {
    let reader = crate::hub::Reader::user(info.user.clone());
    state
        .hub
        .subscribe(&info.session, topic, since, epoch, &reader)
        .await
}

pub(crate) type Sink = SplitSink<WebSocket, Message>;

/// What one queued item becomes on the wire.
pub(crate) enum Encoded {
    One(Message),
    Many(Vec<Message>),
}

/// Turns queued items into frames; one per WebSocket dialect (`/ws` JSON, the
/// canvas tracker's translation). Returns how many events the frames carry, for
/// the delivered-messages metric.
pub(crate) trait Encoder: Send + 'static {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64);
    /// Called after each flush to the socket.
    fn flushed(&mut self) {}
}

/// The `/ws` encoder: events go out as the hub serialized them.
struct JsonEncoder {
    latency: metrics::Histogram,
    /// Socket writes so far; the latency is sampled on one write in
    /// [`LATENCY_SAMPLE_EVERY`] (the first included), from its oldest event: a
    /// clock read and a histogram record per delivery were ~4% of the server's CPU
    /// when fanning out 200k deliveries/s.
    writes: u64,
    /// Whether this write's sample is still to be taken.
    sample: bool,
}

/// One socket write in this many records a delivery-latency sample.
const LATENCY_SAMPLE_EVERY: u64 = 16;

impl Encoder for JsonEncoder {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64) {
        match item {
            Delivery::Event(event) => {
                if self.sample {
                    self.sample = false;
                    self.latency
                        .record(event.published_at.elapsed().as_secs_f64());
                }
                (Encoded::One(Message::Text(event.frame.clone())), 1)
            }
            Delivery::Frame(frame) => (Encoded::One(Message::Text(*frame)), 0),
            Delivery::Forbidden(topic) => {
                let reply = ServerMessage::Error {
                    code: 403,
                    message: format!("Forbidden: {topic}"),
                    deployment_id: Some(topic.to_string()),
                };
                (
                    Encoded::One(Message::Text(Utf8Bytes::from(reply.to_json()))),
                    0,
                )
            }
            Delivery::Subscribed(info) => {
                let reply = ServerMessage::Subscribed {
                    deployment_id: info.topic.to_string(),
                    seq: info.seq,
                    epoch: info.epoch.to_string(),
                    recovered: info.recovered,
                };
                (
                    Encoded::One(Message::Text(Utf8Bytes::from(reply.to_json()))),
                    0,
                )
            }
        }
    }

    fn flushed(&mut self) {
        self.writes += 1;
        self.sample = self.writes % LATENCY_SAMPLE_EVERY == 0;
    }
}

async fn feed(sink: &mut Sink, encoded: Encoded) -> Result<(), axum::Error> {
    match encoded {
        Encoded::One(m) => sink.feed(m).await,
        Encoded::Many(list) => {
            for m in list {
                sink.feed(m).await?;
            }
            Ok(())
        }
    }
}

/// Feeds `first` and whatever else is ready (up to [`BATCH`]), then flushes once.
async fn write_batch<E: Encoder>(
    sink: &mut Sink,
    first: Delivery,
    rx: &mut crate::hub::outbox::Receiver,
    encoder: &mut E,
    delivered: &metrics::Counter,
) -> Result<(), axum::Error> {
    let (encoded, mut events) = encoder.encode(first);
    feed(sink, encoded).await?;
    for _ in 1..BATCH {
        match rx.try_recv() {
            Ok(item) => {
                let (encoded, n) = encoder.encode(item);
                events += n;
                feed(sink, encoded).await?;
            }
            Err(_) => break,
        }
    }
    sink.flush().await?;
    encoder.flushed();
    delivered.increment(events);
    Ok(())
}

/// Drains a connection's outbox into its socket with `encoder`, pings every
/// `ping_every`, and writes the close frame when the outbox is closed (even while
/// a write to a peer that stopped reading is pending).
pub(crate) async fn write_loop<E: Encoder>(
    mut sink: Sink,
    mut rx: crate::hub::outbox::Receiver,
    outbox: Arc<Outbox>,
    ping_every: Duration,
    mut encoder: E,
) {
    let delivered = crate::metrics::delivered();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Items are polled first and the close flag is then checked with one atomic
        // load, so the close future is polled only when the writer goes idle; a close
        // still wins over queued items, as it would with the close polled first.
        let written = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(_) if outbox.is_closing() => {
                    send_close(&mut sink, outbox.writer_closing().await).await;
                    return;
                }
                Some(item) => tokio::select! {
                    biased;
                    r = write_batch(&mut sink, item, &mut rx, &mut encoder, &delivered) => r,
                    // A peer that stopped reading: the write is pending; close anyway.
                    reason = outbox.writer_closing() => {
                        send_close(&mut sink, reason).await;
                        return;
                    }
                },
                None => return,
            },
            reason = outbox.writer_closing() => {
                send_close(&mut sink, reason).await;
                return;
            }
            _ = ping.tick() => tokio::select! {
                biased;
                r = sink.send(Message::Ping(Default::default())) => r,
                reason = outbox.writer_closing() => {
                    send_close(&mut sink, reason).await;
                    return;
                }
            },
        };
        if written.is_err() {
            outbox.close(CloseReason::ClientClosed);
            return;
        }
    }
}

async fn send_close(sink: &mut Sink, reason: CloseReason) {
    if reason == CloseReason::ClientClosed {
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
        return;
    }
    let (code, text) = close::for_reason(reason);
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(text),
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}
