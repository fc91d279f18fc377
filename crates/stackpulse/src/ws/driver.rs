//! The connection driver: one state machine for every socket dialect (`/ws`, the
//! canvas tracker, AppSync real-time and `graphql-transport-ws`).
//!
//! A dialect is a codec ([`Dialect`]): how it reads a client frame and how the
//! queued items become frames ([`Encoder`]). Everything else is here, once:
//!
//! 1. **Admission**, in DESIGN's order: shutting down (503), the client's attempt
//!    rate (429), its credential (401), the user's rate and places (429), a place
//!    under `--max-connections` (503). A dialect whose credential comes with the
//!    upgrade ([`admit`], then [`serve`]) is refused before the upgrade; one whose
//!    credential arrives in `connection_init` ([`InBand`], [`serve_in_band`]) is
//!    upgraded after the first two checks, holds **no place** while it waits (a
//!    separate, smaller budget of pending sockets instead), and
//!    must send `connection_init` within `--init-timeout` (10 s) of the upgrade,
//!    never reset by other frames, else it is closed with 4408; the other checks
//!    then refuse it in the dialect's own words ([`InBand::refusal`]).
//! 2. **Open** ([`open`]): a hub session and its bounded [`Outbox`], registration
//!    in the place, and the writer ([`write_loop`]): the outbox → the socket in
//!    batches (at least `--write-delay` apart when it is set), a WebSocket ping
//!    every `--ping-interval`, the close frame when the
//!    outbox closes (slow consumer 4008, shutdown 1001, …, or a dialect's own code
//!    through [`Control`]), and a close with 1011 when a frame cannot be written.
//! 3. **Read** ([`read_loop`]): the idle timeout (4000), the token's expiry (4001,
//!    the connection's `expires_at`, which a dialect may only lower or an in-band
//!    re-auth move), the frame limit (1009), pongs, and each text frame to
//!    [`Dialect::on_text`].
//! 4. **Teardown**: [`Dialect::on_end`], the outbox closed, the hub session
//!    closed, the writer joined, the places released.
//!
//! The driver is generic over a socket's two halves: a [`Reader`] (any `Stream`
//! of messages) and a [`Wire`] ([`super::wire`]), so its rules are unit-tested in
//! process over channels; the dialects' handlers hand it axum's `WebSocket`
//! split in two, and `/ws` its raw upgraded connection ([`super::raw`]), whose
//! wire writes each event's prepared frame bytes in one vectored write per batch.
//!
//! Every subscribe of every dialect goes through [`subscribe_topic`]; a GraphQL
//! connection's feeds (one hub session per field) share one [`SubscriptionBudget`]
//! so `--max-subscriptions` counts topics per connection there too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use parking_lot::Mutex;
use serde_json::Value;
use stackpulse_auth::Verified;
use tokio::time::Instant;

use super::close;
use super::raw::RawUpgrade;
use super::wire::{Reader, SinkWire, Wire};
use crate::app::registry::{ConnInfo, Pending, Slot};
use crate::app::AppState;
use crate::auth::gate::request_token;
use crate::auth::limits::UserSlot;
use crate::auth::User;
use crate::http::error::AppError;
use crate::hub::{CloseReason, Delivery, Outbox, Session, SubscribeError};

/// Items written per flush at most, so pings and closes are not starved.
const BATCH: usize = 64;
/// How long a close frame may take to write to a peer that does not read (a slow
/// consumer gets this long to drain what is already in flight).
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest reason a close frame carries (125 bytes of payload less the code).
const MAX_CLOSE_REASON: usize = 123;

// ---------------------------------------------------------------------------
// Admission

/// Why admission refused a request before its upgrade (answered with a JSON
/// `{"message"}` body and this status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: &str) -> Refusal {
        Refusal {
            status,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        AppError::new(self.status, &self.message).into_response()
    }
}

/// What admission granted a connection: its place, who it is and its user place.
pub struct Admitted {
    pub slot: Slot,
    pub remote: SocketAddr,
    pub verified: Verified,
    /// One of the user's places (with auth); released when the connection ends.
    pub user_slot: Option<UserSlot>,
}

/// The admission of a socket whose credential comes with the upgrade: shutting
/// down (503), the attempt rate (429), the token (401), the user's places (429),
/// the connection limit (503).
pub async fn admit(
    state: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Admitted, Response> {
    precheck(state, remote).map_err(IntoResponse::into_response)?;
    let token = request_token(headers, query);
    let verified = match state.gate.authenticate(token.as_deref()).await {
        Ok(v) => v,
        Err(u) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => "unauthorized")
                .increment(1);
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, u.message()).into_response());
        }
    };
    let user_slot = admit_user(state, &verified)
        .map_err(|m| Refusal::new(StatusCode::TOO_MANY_REQUESTS, &m).into_response())?;
    let slot = reserve(state).map_err(IntoResponse::into_response)?;
    Ok(Admitted {
        slot,
        remote,
        verified,
        user_slot,
    })
}

/// The checks before any credential is looked at: shutting down (503) and the
/// client's attempt rate (429).
fn precheck(state: &AppState, remote: SocketAddr) -> Result<(), Refusal> {
    if state.shutdown.is_cancelled() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down",
        ));
    }
    if let Err(r) = state.gate.admission.check_ip(remote.ip()) {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
            .increment(1);
        return Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, &r.message()));
    }
    Ok(())
}

/// Takes one of an authenticated user's places (none without auth); the error is
/// the refusal's message.
fn admit_user(state: &AppState, verified: &Verified) -> Result<Option<UserSlot>, String> {
    if !state.gate.is_enabled() {
        return Ok(None);
    }
    match state.gate.admission.admit_user(&verified.user.sub) {
        Ok(slot) => Ok(Some(slot)),
        Err(r) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => r.label())
                .increment(1);
            Err(r.message())
        }
    }
}

/// A place under the connection limit (503 when full).
fn reserve(state: &AppState) -> Result<Slot, Refusal> {
    let max = state.config.max_connections;
    state.registry.reserve(max).ok_or_else(|| {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => "limit").increment(1);
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Server at connection limit ({max})"),
        )
    })
}

// ---------------------------------------------------------------------------
// Dialects

/// What a dialect's hooks see of its connection.
pub(crate) struct Conn<'a> {
    pub state: &'a AppState,
    pub info: &'a Arc<ConnInfo>,
    pub control: &'a Arc<Control>,
}

impl Conn<'_> {
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.info.session.outbox
    }

    /// Queues a reply; a full queue closes the connection as a slow consumer.
    pub fn send(&self, frame: impl Into<Utf8Bytes>) {
        let _ = self.outbox().push(Delivery::frame(frame));
    }
}

/// One socket protocol: its frames only. The driver owns admission, the writer,
/// timeouts, limits and teardown.
pub(crate) trait Dialect: Send + 'static {
    type Encoder: Encoder;
    /// The encoder of the connection's writer.
    fn encoder(&mut self) -> Self::Encoder;
    /// The connection is open (registered, its writer running).
    fn on_open(&mut self, _conn: &Conn<'_>) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// A text frame from the client.
    fn on_text(&mut self, conn: &Conn<'_>, text: &str) -> impl Future<Output = ()> + Send;
    /// A binary frame from the client (ignored unless the dialect answers it).
    fn on_binary(&mut self, _conn: &Conn<'_>) {}
    /// The read side ended; the outbox is still open.
    fn on_end(&mut self, _conn: &Conn<'_>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How an in-band dialect refuses a socket before it opens: an optional frame,
/// then a close with `code` and `reason`.
pub(crate) struct Refuse {
    pub frame: Option<String>,
    pub code: u16,
    pub reason: String,
}

/// The admission steps an in-band dialect words itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The user's connection rate or places (429).
    UserLimit,
    /// `--max-connections` (503).
    ServerFull,
}

/// A dialect whose credential arrives in `connection_init`.
pub(crate) trait InBand: Dialect {
    /// The credential of `init` (the `connection_init` frame) → who; `per_user`
    /// is false for a publisher key (no user places).
    fn authenticate(
        &mut self,
        state: &AppState,
        init: &str,
    ) -> impl Future<Output = Result<(Verified, bool), Refuse>> + Send;
    /// This dialect's words for a refusal after the credential.
    fn refusal(&self, refused: Refused, message: &str) -> Refuse;
    /// A close for a frame of type `kind` sent before `connection_init`; `None`
    /// reads on (the deadline still holds).
    fn before_init(_kind: Option<&str>) -> Option<(u16, &'static str)> {
        None
    }
}

/// Upgrades an admitted socket and runs `dialect` on it, selecting `protocol`.
pub(crate) fn serve<D: Dialect>(
    ws: WebSocketUpgrade,
    protocol: &'static str,
    state: AppState,
    admitted: Admitted,
    dialect: D,
) -> Response {
    let tracked = state.tasks.token();
    configure(ws, &state.config)
        .protocols([protocol])
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            run(stream, SinkWire(sink), state, admitted, dialect).await;
            drop(tracked);
        })
}

/// [`serve`] on the raw upgraded connection (see [`super::raw`]): axum's
/// `WebSocketUpgrade` has validated the request and picks the subprotocol; the
/// connection is read by tungstenite and written with prepared frames. Falls back
/// to [`serve`] when the request carried no upgrade handle of its own.
pub(crate) fn serve_raw<D: Dialect>(
    ws: WebSocketUpgrade,
    raw: RawUpgrade,
    protocol: &'static str,
    state: AppState,
    admitted: Admitted,
    dialect: D,
) -> Response {
    let Some((on_upgrade, key)) = raw.into_parts() else {
        return serve(ws, protocol, state, admitted, dialect);
    };
    let selected = ws.protocols([protocol]).selected_protocol().cloned();
    let tracked = state.tasks.token();
    let config = reader_config(&state.config);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // Plain TCP is shared with the fan-out for direct writes; anything else
        // (TLS) is split.
        match upgraded.downcast::<hyper_util::rt::TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                let (reader, wire) = super::raw::split_tcp(tcp, parts.read_buf, config).await;
                run(reader, wire, state, admitted, dialect).await;
            }
            Err(upgraded) => {
                let (reader, wire) = super::raw::split(upgraded, config).await;
                run(reader, wire, state, admitted, dialect).await;
            }
        }
        drop(tracked);
    });
    super::raw::switching_protocols(&key, selected)
}

/// Upgrades a socket whose credential comes in `connection_init` (refused
/// before that when shutting down, over the attempt rate or the pending budget)
/// and runs `dialect` on it once admitted.
pub(crate) fn serve_in_band<D: InBand>(
    ws: WebSocketUpgrade,
    protocol: &'static str,
    state: AppState,
    remote: SocketAddr,
    dialect: D,
) -> Response {
    if let Err(refusal) = precheck(&state, remote) {
        return refusal.into_response();
    }
    let max = pending_limit(state.config.max_connections);
    let Some(pending) = state.registry.reserve_pending(max) else {
        metrics::counter!("stackpulse_connections_refused_total", "reason" => "pending")
            .increment(1);
        return Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Too many sockets awaiting connection_init ({max})"),
        )
        .into_response();
    };
    let tracked = state.tasks.token();
    let deadline = Instant::now() + state.config.init_timeout;
    configure(ws, &state.config)
        .protocols([protocol])
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let wire = SinkWire(sink);
            run_in_band(stream, wire, state, remote, deadline, pending, dialect).await;
            drop(tracked);
        })
}

/// Sockets that may await `connection_init` at once: a budget of their own, a
/// tenth of `--max-connections` (at least 64), so they never take a place.
fn pending_limit(max_connections: usize) -> usize {
    (max_connections / 10).max(64)
}

/// Per-connection read buffer, allocated for every connection: client requests are
/// small, and a larger frame grows it (up to the frame limit) only while it is read.
/// 512 B rather than 2 KiB took the measured idle cost from 8.9 to 7.4 KiB.
const READ_BUFFER: usize = 512;
/// Bytes buffered before a write is flushed to the socket.
const WRITE_BUFFER: usize = 8 * 1024;

/// The buffer sizes and frame limits every socket uses. The write cap holds twice
/// the largest frame (an event or snapshot within `--max-event-bytes`, re-encoded
/// by a dialect) plus the buffer, so no frame is refused for its size alone; a
/// frame that still cannot be written closes with 1011.
fn configure(ws: WebSocketUpgrade, config: &crate::config::Config) -> WebSocketUpgrade {
    let frame_limit = config.max_frame_bytes;
    let largest = config.max_event_bytes.max(frame_limit);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + largest.saturating_mul(2))
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
}

/// The read limits of [`configure`], for a raw socket's reading half (its
/// writing half buffers whole frames of its own).
fn reader_config(
    config: &crate::config::Config,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let frame_limit = config.max_frame_bytes;
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(frame_limit))
        .max_frame_size(Some(frame_limit))
}

/// Runs an admitted connection: open, read, teardown.
pub(crate) async fn run<R: Reader, W: Wire, D: Dialect>(
    reader: R,
    wire: W,
    state: AppState,
    admitted: Admitted,
    mut dialect: D,
) {
    let Admitted {
        mut slot,
        remote,
        verified,
        user_slot,
    } = admitted;
    let encoder = dialect.encoder();
    let Opened {
        info,
        control,
        stream,
        writer,
    } = open(reader, wire, &state, &mut slot, verified, remote, encoder);
    let session = info.session.clone();
    tracing::debug!(conn = session.id, %remote, "connected");
    let conn = Conn {
        state: &state,
        info: &info,
        control: &control,
    };
    dialect.on_open(&conn).await;
    read_loop(stream, &conn, &mut dialect).await;
    dialect.on_end(&conn).await;
    session.outbox.close(CloseReason::ClientClosed);
    state.hub.close_session(&session).await;
    let _ = writer.await;
    tracing::debug!(conn = session.id, "disconnected");
    drop(user_slot);
    drop(slot);
}

/// The in-band admission: `connection_init` before the deadline (4408), its
/// credential, the user's places and a place under the limit, then [`run`].
async fn run_in_band<R: Reader, W: Wire, D: InBand>(
    mut reader: R,
    wire: W,
    state: AppState,
    remote: SocketAddr,
    deadline: Instant,
    pending: Pending,
    mut dialect: D,
) {
    let init = match await_init::<R, D>(&mut reader, &state, deadline).await {
        Ok(init) => init,
        Err(Some((code, reason))) => return refuse(wire, None, code, reason).await,
        Err(None) => return,
    };
    drop(pending);
    let (verified, per_user) = match dialect.authenticate(&state, &init).await {
        Ok(v) => v,
        Err(r) => {
            metrics::counter!("stackpulse_connections_refused_total", "reason" => "unauthorized")
                .increment(1);
            return refuse(wire, r.frame, r.code, &r.reason).await;
        }
    };
    let user_slot = if per_user {
        match admit_user(&state, &verified) {
            Ok(s) => s,
            Err(m) => {
                let r = dialect.refusal(Refused::UserLimit, &m);
                return refuse(wire, r.frame, r.code, &r.reason).await;
            }
        }
    } else {
        None
    };
    let slot = match reserve(&state) {
        Ok(slot) => slot,
        Err(refusal) => {
            let r = dialect.refusal(Refused::ServerFull, &refusal.message);
            return refuse(wire, r.frame, r.code, &r.reason).await;
        }
    };
    let admitted = Admitted {
        slot,
        remote,
        verified,
        user_slot,
    };
    run(reader, wire, state, admitted, dialect).await;
}

/// Waits for `connection_init` until `deadline` (other frames are read and
/// ignored; they never move it). `Err(Some(close))` to close with, `Err(None)`
/// when the client left.
async fn await_init<R: Reader, D: InBand>(
    socket: &mut R,
    state: &AppState,
    deadline: Instant,
) -> Result<String, Option<(u16, &'static str)>> {
    loop {
        let next = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                return Err(Some(close::for_reason(CloseReason::Shutdown)));
            }
            next = tokio::time::timeout_at(deadline, socket.next()) => next,
        };
        match next {
            Err(_) => return Err(Some((close::INIT_TIMEOUT, "connection_init timeout"))),
            Ok(Some(Ok(Message::Text(text)))) => {
                let kind = serde_json::from_str::<Value>(text.as_str())
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
                if kind.as_deref() == Some("connection_init") {
                    return Ok(text.as_str().to_owned());
                }
                if let Some(close) = D::before_init(kind.as_deref()) {
                    return Err(Some(close));
                }
            }
            Ok(Some(Err(e))) => {
                if !is_too_big(e) {
                    return Err(None);
                }
                metrics::counter!("stackpulse_client_errors_total").increment(1);
                return Err(Some(close::for_reason(CloseReason::MessageTooBig)));
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return Err(None),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Writes an optional frame and a close on a socket that has no writer yet.
async fn refuse<W: Wire>(mut socket: W, frame: Option<String>, code: u16, reason: &str) {
    let write = async {
        if let Some(frame) = frame {
            socket.send(Message::Text(Utf8Bytes::from(frame))).await?;
        }
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_reason(reason)),
        };
        socket.send(Message::Close(Some(close))).await
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write).await;
}

/// `reason` cut to fit a close frame (≤ 123 bytes, on a char boundary).
pub(crate) fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

// ---------------------------------------------------------------------------
// Open, read, write

/// A dialect's own close (a code of its protocol), for the writer.
#[derive(Default)]
pub(crate) struct Control {
    custom: Mutex<Option<(u16, String)>>,
}

impl Control {
    /// Closes the connection with `code` and `reason` (cut to fit).
    /// A connection already closing keeps its first reason.
    pub fn close_with(&self, outbox: &Outbox, code: u16, reason: &str) {
        let mut custom = self.custom.lock();
        if outbox.is_closing() {
            return;
        }
        *custom = Some((code, truncate_reason(reason)));
        drop(custom);
        outbox.close(CloseReason::ClientClosed);
    }

    fn take(&self) -> Option<(u16, String)> {
        self.custom.lock().take()
    }
}

/// An upgraded socket, once [`open`] registered it: its hub session is open and
/// its writer runs; the driver reads `stream`.
pub(crate) struct Opened<R> {
    pub info: Arc<ConnInfo>,
    pub control: Arc<Control>,
    pub stream: R,
    pub writer: tokio::task::JoinHandle<()>,
}

/// Opens the hub session of an upgraded socket, registers the connection in
/// `slot` and starts its writer with the dialect's `encoder`.
pub(crate) fn open<R: Reader, W: Wire, E: Encoder>(
    stream: R,
    sink: W,
    state: &AppState,
    slot: &mut Slot,
    verified: Verified,
    remote: SocketAddr,
    encoder: E,
) -> Opened<R> {
    let (outbox, rx) = Outbox::new(state.config.queue_size);
    let session = state.hub.open_session(outbox.clone());
    let info = ConnInfo::new(verified.user, remote, verified.expires_at, session);
    slot.register(info.clone());
    // Shutdown closes the registered connections; one that registers after that
    // sweep (its upgrade finished just then) closes itself the same way.
    if state.shutdown.is_cancelled() {
        outbox.close(CloseReason::Shutdown);
    }
    // A write delay collects messages in the queue; direct writes would skip it.
    if state.config.write_delay.is_zero() {
        if let Some(direct) = sink.direct() {
            outbox.set_direct(direct);
        }
    }
    let control = Arc::new(Control::default());
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        outbox,
        control.clone(),
        Pace {
            ping_every: state.config.ping_interval,
            write_delay: state.config.write_delay,
        },
        encoder,
    ));
    Opened {
        info,
        control,
        stream,
        writer,
    }
}

/// Whether a read error is tungstenite refusing an oversized frame.
fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    e.into_inner()
        .downcast::<Error>()
        .is_ok_and(|e| matches!(*e, Error::Capacity(_)))
}

/// Resolves when the connection's token expires (never without auth).
async fn token_expiry(expires_at: u64) {
    if expires_at == u64::MAX {
        return std::future::pending().await;
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let left = (expires_at.saturating_mul(1000)).saturating_sub(now_ms);
    tokio::time::sleep(Duration::from_millis(left)).await;
}

fn expired(info: &ConnInfo) -> bool {
    let exp = info.expires_at.load(Ordering::Acquire);
    exp != u64::MAX && u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) >= exp
}

/// The one read loop: closing, token expiry, idle timeout, frame limit, pongs;
/// text and binary frames go to the dialect.
async fn read_loop<R: Reader, D: Dialect>(mut stream: R, conn: &Conn<'_>, dialect: &mut D) {
    let info = conn.info;
    let outbox = conn.outbox();
    let idle = conn.state.config.idle_timeout;
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
            // Boxed: a subscribe is a large future, and keeping it inline would
            // make every idle connection carry its size.
            Message::Text(text) => Box::pin(dialect.on_text(conn, text.as_str())).await,
            Message::Binary(_) => dialect.on_binary(conn),
            Message::Pong(_) => {}
            Message::Ping(_) => {}
            Message::Close(_) => return,
        }
    }
}

/// What one queued item becomes on the wire.
pub(crate) enum Encoded {
    One(Message),
    Many(Vec<Message>),
    /// An event's frame as the hub encoded it (a raw wire writes its prepared bytes).
    Event(Arc<crate::hub::StampedEvent>),
    /// The rest of a frame the fan-out began writing directly ([`Delivery::Rest`]).
    Raw(bytes::Bytes),
}

/// Turns queued items into frames; one per dialect. Returns how many events the
/// frames carry, for the delivered-messages metric.
pub(crate) trait Encoder: Send + 'static {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64);
    /// Called after each flush to the socket.
    fn flushed(&mut self) {}
}

/// The GraphQL dialects' encoder: queued frames go out as they are; a frame that
/// starts with `event_prefix` carries one event.
pub(crate) struct FrameEncoder {
    pub event_prefix: &'static str,
}

impl Encoder for FrameEncoder {
    fn encode(&mut self, item: Delivery) -> (Encoded, u64) {
        match item {
            Delivery::Frame(frame) => {
                let events = u64::from(frame.as_str().starts_with(self.event_prefix));
                (Encoded::One(Message::Text(*frame)), events)
            }
            _ => (Encoded::Many(Vec::new()), 0),
        }
    }
}

async fn feed<W: Wire>(sink: &mut W, encoded: Encoded) -> Result<(), axum::Error> {
    match encoded {
        Encoded::One(m) => sink.feed(m).await,
        Encoded::Event(event) => sink.feed_event(event).await,
        Encoded::Raw(bytes) => sink.feed_raw(bytes).await,
        Encoded::Many(list) => {
            for m in list {
                sink.feed(m).await?;
            }
            Ok(())
        }
    }
}

/// Feeds `first` and whatever else is ready (up to [`BATCH`]), then flushes once.
async fn write_batch<W: Wire, E: Encoder>(
    sink: &mut W,
    first: Delivery,
    rx: &mut crate::hub::outbox::Receiver,
    encoder: &mut E,
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
    crate::metrics::add_delivered(events);
    crate::metrics::add_writes(u64::from(events > 0));
    Ok(())
}

/// A writer's timing: its ping interval and its write delay (`--write-delay`).
#[derive(Debug, Clone, Copy)]
struct Pace {
    ping_every: Duration,
    /// The least time between two writes of queued items (zero: no pacing).
    write_delay: Duration,
}

impl Pace {
    /// When the writer may write the items it took, if its last write (begun at
    /// `last`) was less than the write delay ago; `None`: at once. Only asked
    /// with a delay.
    fn hold_until(&self, last: Option<Instant>) -> Option<Instant> {
        let at = last? + self.write_delay;
        (at > Instant::now()).then_some(at)
    }
}

/// Drains a connection's outbox into its socket with `encoder`, pings every
/// `ping_every`, and writes the close frame when the outbox is closed (even while
/// a write to a peer that stopped reading is pending).
///
/// With a write delay, writes of queued items are at least that far apart: an
/// item that finds the connection written less than the delay ago waits until the
/// delay has passed, and everything queued by then goes out in the same write. The
/// first item after a quieter spell is written at once, so a connection that gets
/// less than one message per delay sees no added latency.
async fn write_loop<W: Wire, E: Encoder>(
    mut sink: W,
    mut rx: crate::hub::outbox::Receiver,
    outbox: Arc<Outbox>,
    control: Arc<Control>,
    pace: Pace,
    mut encoder: E,
) {
    // What the reading half queued to write (a raw socket's pongs and close echo).
    let replies = sink.replies();
    let ping_every = pace.ping_every;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last write of queued items began (for the write delay).
    let mut last_batch: Option<Instant> = None;
    loop {
        // Items are polled first and the close flag is then checked with one atomic
        // load, so the close future is polled only when the writer goes idle; a close
        // still wins over queued items, as it would with the close polled first.
        let written = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(_) if outbox.is_closing() => {
                    send_close(&mut sink, &rx, &control, outbox.writer_closing().await).await;
                    return;
                }
                Some(item) => tokio::select! {
                    biased;
                    r = async {
                        if !pace.write_delay.is_zero() {
                            if let Some(at) = pace.hold_until(last_batch) {
                                tokio::time::sleep_until(at).await;
                            }
                            // (No clock read per write without a delay.)
                            last_batch = Some(Instant::now());
                        }
                        write_batch(&mut sink, item, &mut rx, &mut encoder).await
                    } => r,
                    // A peer that stopped reading: the write is pending; close anyway.
                    reason = outbox.writer_closing() => {
                        send_close(&mut sink, &rx, &control, reason).await;
                        return;
                    }
                },
                None => return,
            },
            reason = outbox.writer_closing() => {
                send_close(&mut sink, &rx, &control, reason).await;
                return;
            }
            _ = replies_ready(replies.as_deref()) => {
                // The writer writes on its own: no direct write meanwhile.
                rx.claim();
                tokio::select! {
                    biased;
                    r = sink.flush() => r,
                    reason = outbox.writer_closing() => {
                        send_close(&mut sink, &rx, &control, reason).await;
                        return;
                    }
                }
            },
            _ = ping.tick() => {
                rx.claim();
                tokio::select! {
                    biased;
                    r = sink.send(Message::Ping(Default::default())) => r,
                    reason = outbox.writer_closing() => {
                        send_close(&mut sink, &rx, &control, reason).await;
                        return;
                    }
                }
            },
        };
        if let Err(e) = written {
            // Never a silent drop: a frame that could not be written closes with a
            // code (the peer may already be gone; then this write fails too).
            tracing::debug!(error = %e, "socket write failed");
            outbox.close(CloseReason::ClientClosed);
            rx.detach();
            let frame = CloseFrame {
                code: close::WRITE_FAILED,
                reason: Utf8Bytes::from_static("frame could not be written"),
            };
            let _ =
                tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
            return;
        }
        // Everything taken is written: the fan-out may write directly again.
        rx.release();
    }
}

/// Resolves when the reading half queued frames to write (never without a queue).
async fn replies_ready(replies: Option<&super::raw::Replies>) {
    match replies {
        Some(replies) => replies.ready().await,
        None => std::future::pending().await,
    }
}

async fn send_close<W: Wire>(
    sink: &mut W,
    rx: &crate::hub::outbox::Receiver,
    control: &Control,
    reason: CloseReason,
) {
    // The close is the socket's last frame: no direct write from now on.
    rx.detach();
    let (code, text) = match control.take() {
        Some((code, text)) => (code, Utf8Bytes::from(text)),
        None if reason == CloseReason::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
            return;
        }
        None => {
            let (code, text) = close::for_reason(reason);
            (code, Utf8Bytes::from_static(text))
        }
    };
    let frame = CloseFrame { code, reason: text };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}

// ---------------------------------------------------------------------------
// Subscriptions

/// The one subscribe of every dialect, for `user`: the hub's topic policy
/// decides the rest (name, ACL, caps, and the poller of a `stack:*` topic).
pub(crate) async fn subscribe_topic(
    state: &AppState,
    session: &Arc<Session>,
    user: &User,
    topic: &str,
    since: Option<u64>,
    epoch: Option<String>,
) -> Result<(), SubscribeError> {
    let reader = crate::hub::Reader::user(user.clone());
    state
        .hub
        .subscribe(session, topic, since, epoch, &reader)
        .await
}

/// The topics one connection may hold when each is its own hub session (the
/// GraphQL feeds): `--max-subscriptions` shared by all of them.
pub struct SubscriptionBudget {
    held: AtomicUsize,
    max: usize,
}

/// One topic of a [`SubscriptionBudget`], given back when dropped.
pub struct BudgetPermit(Arc<SubscriptionBudget>);

impl SubscriptionBudget {
    pub fn new(max: usize) -> Arc<SubscriptionBudget> {
        Arc::new(SubscriptionBudget {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// One more topic, or the hub's "Too many subscriptions" error.
    pub fn take(self: &Arc<Self>) -> Result<BudgetPermit, SubscribeError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| SubscribeError::TooMany(self.max))?;
        Ok(BudgetPermit(self.clone()))
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::SinkExt;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    use super::*;
    use crate::config::Config;

    /// A socket made of two channels: the test is the client. `flushes` counts
    /// the writer's flushes (one per batch it writes).
    struct FakeSocket {
        rx: UnboundedReceiver<Result<Message, axum::Error>>,
        tx: UnboundedSender<Message>,
        flushes: Arc<AtomicUsize>,
    }

    impl futures_util::Stream for FakeSocket {
        type Item = Result<Message, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.rx.poll_recv(cx)
        }
    }

    impl futures_util::Sink<Message> for FakeSocket {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.tx.send(item).map_err(axum::Error::new)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    type Client = (
        UnboundedSender<Result<Message, axum::Error>>,
        UnboundedReceiver<Message>,
    );

    /// Runs the `/ws` dialect on a fake socket; the client's ends and the driver.
    fn connect(state: &AppState) -> (Client, tokio::task::JoinHandle<()>) {
        let (client, _, driver) = connect_counting(state);
        (client, driver)
    }

    /// [`connect`], also giving the count of the socket's flushes.
    fn connect_counting(
        state: &AppState,
    ) -> (Client, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let flushes = Arc::new(AtomicUsize::new(0));
        let (client_tx, rx) = unbounded_channel();
        let (tx, client_rx) = unbounded_channel();
        let admitted = Admitted {
            slot: state.registry.reserve(1).expect("a place"),
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            verified: Verified {
                user: User::anonymous(),
                expires_at: u64::MAX,
            },
            user_slot: None,
        };
        let (sink, stream) = FakeSocket {
            rx,
            tx,
            flushes: flushes.clone(),
        }
        .split();
        let driver = tokio::spawn(run(
            stream,
            SinkWire(sink),
            state.clone(),
            admitted,
            crate::ws::connection::Native,
        ));
        ((client_tx, client_rx), flushes, driver)
    }

    async fn close_code(client: &mut UnboundedReceiver<Message>) -> Option<u16> {
        loop {
            match client.recv().await? {
                Message::Close(frame) => return frame.map(|f| f.code),
                _ => continue,
            }
        }
    }

    /// Subscribes the fake socket's client to `T` and waits for the reply.
    async fn subscribe_t(
        client_tx: &UnboundedSender<Result<Message, axum::Error>>,
        client_rx: &mut UnboundedReceiver<Message>,
    ) {
        let subscribe = r#"{"action":"subscribe","deployment_id":"T"}"#;
        client_tx
            .send(Ok(Message::Text(Utf8Bytes::from_static(subscribe))))
            .expect("send");
        match client_rx.recv().await {
            Some(Message::Text(reply)) => assert!(reply.contains("subscribed"), "{reply}"),
            other => panic!("expected the reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dialect_runs_in_process_until_the_idle_timeout() {
        let config = Config {
            idle_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        let state = crate::server::build_state(config).expect("state");
        let ((client_tx, mut client_rx), driver) = connect(&state);
        subscribe_t(&client_tx, &mut client_rx).await;
        assert_eq!(state.registry.len(), 1);
        assert_eq!(close_code(&mut client_rx).await, Some(close::IDLE_TIMEOUT));
        driver.await.expect("driver");
        assert_eq!(state.registry.len(), 0, "teardown leaves the registry");
    }

    /// Subscribes to `T` and, after a quiet second (the reply was a write too),
    /// publishes an event, then five more 10 ms apart, and after another quiet
    /// second one more (virtual time); how many writes carried them, after
    /// checking each arrived once, in order.
    async fn writes_for_seven_events(write_delay: Duration) -> usize {
        let config = Config {
            write_delay,
            ..Config::default()
        };
        let state = crate::server::build_state(config).expect("state");
        let ((client_tx, mut client_rx), flushes, driver) = connect_counting(&state);
        subscribe_t(&client_tx, &mut client_rx).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = flushes.load(Ordering::Relaxed);
        let mut sent = Vec::new();
        let mut publish = async |n| {
            let event = state.hub.publish(status("T", n)).await.expect("publish");
            sent.push(event.frame.as_str().to_owned());
        };
        for n in 0..6 {
            publish(n).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        publish(6).await;
        for (n, expected) in sent.iter().enumerate() {
            match client_rx.recv().await {
                Some(Message::Text(text)) => assert_eq!(text.as_str(), expected, "event {n}"),
                other => panic!("expected event {n}, got {other:?}"),
            }
        }
        let writes = flushes.load(Ordering::Relaxed) - before;
        drop(client_tx);
        driver.await.expect("driver");
        writes
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_delay_spaces_a_busy_connections_writes() {
        // At once: one write per event.
        assert_eq!(writes_for_seven_events(Duration::ZERO).await, 7);
        // 100 ms: the first at once, the next five 100 ms later in one write, and
        // the one after the quiet second at once.
        assert_eq!(writes_for_seven_events(Duration::from_millis(100)).await, 3);
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_with_1009() {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
        let state = crate::server::build_state(Config::default()).expect("state");
        let ((client_tx, mut client_rx), driver) = connect(&state);
        let too_big = Error::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        client_tx
            .send(Err(axum::Error::new(too_big)))
            .expect("send");
        assert_eq!(
            close_code(&mut client_rx).await,
            Some(close::MESSAGE_TOO_BIG)
        );
        driver.await.expect("driver");
    }

    /// The client's end of a raw `/ws` socket over an in-memory connection of
    /// `buffer` bytes, and the driver on the server's end.
    async fn connect_raw(
        state: &AppState,
        buffer: usize,
    ) -> (
        tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (client_io, server_io) = tokio::io::duplex(buffer);
        let (reader, wire) =
            crate::ws::raw::split_io(server_io, reader_config(&state.config)).await;
        let admitted = Admitted {
            slot: state.registry.reserve(1).expect("a place"),
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            verified: Verified {
                user: User::anonymous(),
                expires_at: u64::MAX,
            },
            user_slot: None,
        };
        let driver = tokio::spawn(run(
            reader,
            wire,
            state.clone(),
            admitted,
            crate::ws::connection::Native,
        ));
        let client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client_io, Role::Client, None)
                .await;
        (client, driver)
    }

    type RawClient = tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>;
    use tokio_tungstenite::tungstenite::Message as Ts;

    async fn raw_subscribe(client: &mut RawClient, topic: &str) {
        let subscribe = format!(r#"{{"action":"subscribe","deployment_id":"{topic}"}}"#);
        client.send(Ts::text(subscribe)).await.expect("send");
        match client.next().await {
            Some(Ok(Ts::Text(reply))) => assert!(reply.contains("subscribed"), "{reply}"),
            other => panic!("expected the reply, got {other:?}"),
        }
    }

    fn status(topic: &str, n: usize) -> stackpulse_protocol::PublishRequest {
        let mut data = serde_json::Map::new();
        data.insert("n".into(), Value::from(n));
        stackpulse_protocol::PublishRequest {
            event_type: "deployment.status".into(),
            deployment_id: topic.into(),
            data,
            acl: None,
        }
    }

    async fn raw_close_code(client: &mut RawClient) -> Option<u16> {
        while let Some(Ok(message)) = client.next().await {
            if let Ts::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    }

    #[tokio::test]
    async fn a_raw_socket_delivers_the_hubs_frames_in_order() {
        let state = crate::server::build_state(Config::default()).expect("state");
        let (mut client, driver) = connect_raw(&state, 64 * 1024).await;
        raw_subscribe(&mut client, "T").await;
        let mut sent = Vec::new();
        for n in 0..200 {
            let event = state.hub.publish(status("T", n)).await.expect("publish");
            sent.push(event.frame.as_str().to_owned());
        }
        for (n, expected) in sent.iter().enumerate() {
            match client.next().await {
                Some(Ok(Ts::Text(text))) => assert_eq!(text.as_str(), expected, "event {n}"),
                other => panic!("expected event {n}, got {other:?}"),
            }
        }
        // A client's ping is answered, and its close echoed with its code.
        client.send(Ts::Ping(b"hi"[..].into())).await.expect("ping");
        match client.next().await {
            Some(Ok(Ts::Pong(payload))) => assert_eq!(&payload[..], b"hi"),
            other => panic!("expected the pong, got {other:?}"),
        }
        client.close(None).await.expect("close");
        match client.next().await {
            Some(Ok(Ts::Close(None))) => {}
            other => panic!("expected the close echoed, got {other:?}"),
        }
        driver.await.expect("driver");
        assert_eq!(state.registry.len(), 0, "teardown leaves the registry");
    }

    #[tokio::test]
    async fn a_raw_socket_that_stops_reading_closes_with_4008_after_what_is_in_flight() {
        let config = Config {
            queue_size: 4,
            ..Config::default()
        };
        let state = crate::server::build_state(config).expect("state");
        // A connection that holds about two frames: the writer blocks mid-frame.
        let (mut client, driver) = connect_raw(&state, 256).await;
        raw_subscribe(&mut client, "T").await;
        for n in 0..64 {
            state.hub.publish(status("T", n)).await.expect("publish");
            tokio::task::yield_now().await;
        }
        // Every frame before the close is whole (tungstenite would fail otherwise).
        assert_eq!(
            raw_close_code(&mut client).await,
            Some(close::SLOW_CONSUMER)
        );
        driver.await.expect("driver");
    }

    #[tokio::test]
    async fn a_raw_socket_closes_with_1001_on_shutdown() {
        let state = crate::server::build_state(Config::default()).expect("state");
        let (mut client, driver) = connect_raw(&state, 64 * 1024).await;
        raw_subscribe(&mut client, "T").await;
        state.registry.close_all(CloseReason::Shutdown);
        assert_eq!(raw_close_code(&mut client).await, Some(close::GOING_AWAY));
        driver.await.expect("driver");
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn a_budget_counts_topics_until_its_permits_are_dropped() {
        let budget = SubscriptionBudget::new(2);
        let a = budget.take().expect("first");
        let _b = budget.take().expect("second");
        let e = budget.take().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("Too many subscriptions (limit 2 per connection)")
        );
        drop(a);
        assert!(budget.take().is_ok());
    }
}
