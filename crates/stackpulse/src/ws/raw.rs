//! The raw `/ws` socket: the upgraded connection split in two, tungstenite
//! reading, our own writer writing prepared frames.
//!
//! Axum's `WebSocket` frames every message it sends, per connection. A server
//! frame is unmasked, so an event's frame bytes are the same for every
//! subscriber: `/ws` takes the upgraded connection itself ([`RawUpgrade`], a
//! clone of hyper's upgrade handle taken next to axum's `WebSocketUpgrade`, which
//! still validates the request and picks the subprotocol), answers the handshake
//! ([`switching_protocols`]) and splits the connection ([`split`]):
//! - the reading half goes to tungstenite ([`ReadStream`]), which parses the
//!   client's frames and enforces the frame limits as before; what it would write
//!   itself (the pong to a client's ping, the echo of a client's close) is queued
//!   in [`Replies`] and written by the writer;
//! - the writing half is a [`RawWire`]: the driver's writer feeds it frames, it
//!   keeps them as shared [`Bytes`] (an event's comes from
//!   [`StampedEvent::ws_frame`], encoded once) and writes a batch with one
//!   vectored write.
//!
//! On a plain TCP connection (not TLS) the socket is shared rather than split:
//! the reading half, the writer and a [`RawDirect`] each hold the same
//! `Arc<TcpStream>` ([`split_tcp`]). The writer lends the `RawDirect` to the
//! connection's outbox, so the fan-out writes a live event's frame to the socket
//! itself when the writer is idle and nothing is queued (one `write` syscall per
//! delivery, no task wake-up); see [`crate::hub::outbox`] for the rule that keeps
//! the order exact. `STACKPULSE_BENCH_NO_DIRECT=1` turns this off (every event
//! goes through the writer task), for before/after benchmarks from one binary.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as TsMessage;
use tokio_tungstenite::WebSocketStream;

use super::frame;
use super::wire::Wire;
use crate::hub::{DirectWrite, StampedEvent, Written};

/// Frames written per vectored write at most (the kernel's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 64;

/// The raw side of an HTTP/1.1 upgrade request: hyper's upgrade handle (a
/// clone: axum's `WebSocketUpgrade`, extracted after this, validates the request
/// and keeps its own) and the client's `Sec-WebSocket-Key`.
pub struct RawUpgrade {
    parts: Option<(OnUpgrade, HeaderValue)>,
}

impl<S: Send + Sync> FromRequestParts<S> for RawUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        Ok(RawUpgrade {
            parts: on_upgrade.zip(key),
        })
    }
}

impl RawUpgrade {
    /// The upgrade handle and the key, when the request had both.
    pub(crate) fn into_parts(self) -> Option<(OnUpgrade, HeaderValue)> {
        self.parts
    }
}

/// The `101 Switching Protocols` answer to a request with `key`, selecting `protocol`.
pub(crate) fn switching_protocols(key: &HeaderValue, protocol: Option<HeaderValue>) -> Response {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

type Io = TokioIo<Upgraded>;

/// Splits an upgraded connection into the driver's reader and wire (a connection
/// that is not plain TCP; see [`split_tcp`] for one that is).
pub(crate) async fn split(
    upgraded: Upgraded,
    config: WebSocketConfig,
) -> (ReadStream<ReadHalf<Io>>, RawWire<WriteHalf<Io>>) {
    split_io(TokioIo::new(upgraded), config).await
}

/// [`split`] over any connection (the tests use an in-memory duplex).
pub(crate) async fn split_io<T>(
    io: T,
    config: WebSocketConfig,
) -> (ReadStream<ReadHalf<T>>, RawWire<WriteHalf<T>>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    halves(read, write, None, config).await
}

/// A plain TCP connection, shared by the reader, the writer and the fan-out's
/// direct writes. `buffered`: bytes hyper read past the upgrade request.
pub(crate) async fn split_tcp(
    tcp: TcpStream,
    buffered: Bytes,
    config: WebSocketConfig,
) -> (ReadStream<TcpRead>, RawWire<TcpWrite>) {
    let tcp = Arc::new(tcp);
    let direct = (crate::hub::outbox::direct_budget() > 0).then(|| {
        Arc::new(RawDirect {
            tcp: tcp.clone(),
            latency: crate::metrics::delivery_latency(),
            writes: AtomicU32::new(0),
        })
    });
    // `buffered` is a slice of hyper's read buffer (8 KiB or more): even empty it
    // keeps that alive for the connection's life, so keep a copy of what is in
    // it, usually nothing.
    let buffered = match buffered.is_empty() {
        true => Bytes::new(),
        false => Bytes::copy_from_slice(&buffered),
    };
    let read = TcpRead {
        tcp: tcp.clone(),
        buffered,
    };
    halves(read, TcpWrite(tcp), direct, config).await
}

async fn halves<R, W>(
    read: R,
    write: W,
    direct: Option<Arc<RawDirect>>,
    config: WebSocketConfig,
) -> (ReadStream<R>, RawWire<W>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let replies = Arc::new(Replies::default());
    let side = ReadSide {
        read,
        replies: replies.clone(),
    };
    let ws = WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await;
    let wire = RawWire {
        io: write,
        queued: VecDeque::new(),
        replies,
        close_written: false,
        direct,
    };
    (ReadStream { ws }, wire)
}

/// The reading half of a shared TCP connection (see [`split_tcp`]).
pub(crate) struct TcpRead {
    tcp: Arc<TcpStream>,
    /// What hyper had read past the upgrade request, read first.
    buffered: Bytes,
}

impl AsyncRead for TcpRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.buffered.is_empty() {
            let n = buf.remaining().min(self.buffered.len());
            buf.put_slice(&self.buffered[..n]);
            self.buffered.advance(n);
            if self.buffered.is_empty() {
                // An empty slice still holds hyper's whole read buffer.
                self.buffered = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            // `try_read` clears the readiness it found stale, so the next poll waits.
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writer's half of a shared TCP connection (see [`split_tcp`]).
pub(crate) struct TcpWrite(Arc<TcpStream>);

impl AsyncWrite for TcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let sock = socket2::SockRef::from(&*self.0);
        Poll::Ready(sock.shutdown(std::net::Shutdown::Write))
    }
}

/// The fan-out's way to a shared TCP socket: a live event's frame written with
/// one non-blocking `write`, under the outbox's lock (see [`crate::hub::outbox`]).
pub(crate) struct RawDirect {
    tcp: Arc<TcpStream>,
    latency: metrics::Histogram,
    /// Direct writes so far; one in [`super::connection::LATENCY_SAMPLE_EVERY`]
    /// records the delivery latency, as the writer does. Only touched under the
    /// outbox's lock, so a load and a store suffice.
    writes: AtomicU32,
}

impl DirectWrite for RawDirect {
    fn try_write_event(&self, event: &StampedEvent) -> Written {
        let frame = event.ws_frame();
        match self.tcp.try_write(frame) {
            Ok(n) if n == frame.len() => {
                let writes = self.writes.load(Ordering::Relaxed);
                self.writes.store(writes.wrapping_add(1), Ordering::Relaxed);
                if writes % super::connection::LATENCY_SAMPLE_EVERY as u32 == 0 {
                    self.latency
                        .record(event.published_at.elapsed().as_secs_f64());
                }
                Written::All
            }
            Ok(n) => Written::Part(frame.slice(n..)),
            // Would block (the writer waits for room), or failed (the writer's
            // own write finds out and closes).
            Err(_) => Written::Nothing,
        }
    }
}

/// Frames tungstenite wrote on the reading half (complete frames: each write
/// is its whole output buffer, accepted at once), for the writer to send.
#[derive(Default)]
pub struct Replies {
    bytes: Mutex<Vec<u8>>,
    /// The writer, waiting in [`Replies::ready`].
    writer: AtomicWaker,
    /// The client sent a close frame (tungstenite has queued its echo).
    peer_closed: std::sync::atomic::AtomicBool,
}

impl Replies {
    /// Resolves when there is something to write.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if !self.bytes.lock().is_empty() {
                return Poll::Ready(());
            }
            self.writer.register(cx.waker());
            if self.bytes.lock().is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock())
    }
}

/// The reading half as tungstenite sees it: reads from the connection, writes
/// into [`Replies`].
pub(crate) struct ReadSide<R> {
    read: R,
    replies: Arc<Replies>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<T> AsyncWrite for ReadSide<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.replies.bytes.lock().extend_from_slice(buf);
        self.replies.writer.wake();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client's frames, as the driver reads them.
pub(crate) struct ReadStream<R> {
    ws: WebSocketStream<ReadSide<R>>,
}

impl<R: AsyncRead + Unpin> futures_util::Stream for ReadStream<R> {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = match self.ws.poll_next_unpin(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            };
            let message = match next {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(axum::Error::new(e)))),
                Some(Ok(m)) => m,
            };
            let message = match message {
                TsMessage::Text(t) => Message::Text(Utf8Bytes::from(t.as_str())),
                TsMessage::Binary(b) => Message::Binary(b),
                TsMessage::Ping(b) => Message::Ping(b),
                TsMessage::Pong(b) => Message::Pong(b),
                TsMessage::Close(c) => {
                    // tungstenite queued the echo of the close; it writes it on its
                    // next read or flush, and the driver reads no more: flush now
                    // (into `Replies`, which never blocks).
                    let _ = futures_util::Sink::<TsMessage>::poll_flush(Pin::new(&mut self.ws), cx);
                    let replies = &self.ws.get_ref().replies;
                    replies
                        .peer_closed
                        .store(true, std::sync::atomic::Ordering::Release);
                    Message::Close(c.map(|c| CloseFrame {
                        code: c.code.into(),
                        reason: Utf8Bytes::from(c.reason.as_str()),
                    }))
                }
                TsMessage::Frame(_) => continue,
            };
            return Poll::Ready(Some(Ok(message)));
        }
    }
}

/// The writing half: complete frames queued as shared bytes, written with one
/// vectored write per flush.
pub(crate) struct RawWire<W> {
    io: W,
    /// Frames not yet written (the first may be partly written).
    queued: VecDeque<Bytes>,
    replies: Arc<Replies>,
    /// A close frame was queued (the connection's last frame).
    close_written: bool,
    /// The socket for the fan-out's direct writes (shared TCP only).
    direct: Option<Arc<RawDirect>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> RawWire<W> {
    fn queue(&mut self, message: Message) {
        let bytes = match message {
            Message::Text(t) => frame::text(t.as_str()),
            Message::Binary(b) => frame::encode(0x2, &b),
            Message::Ping(b) if b.is_empty() => Bytes::from_static(frame::EMPTY_PING),
            Message::Ping(b) => frame::encode(frame::PING, &b),
            Message::Pong(b) => frame::encode(frame::PONG, &b),
            Message::Close(c) => {
                self.close_written = true;
                match c {
                    Some(c) => frame::close(c.code, c.reason.as_str()),
                    None => Bytes::from_static(frame::EMPTY_CLOSE),
                }
            }
        };
        self.queued.push_back(bytes);
    }

    /// Moves what the reading half wrote to the front of the queue's tail.
    fn take_replies(&mut self) {
        let replies = self.replies.take();
        if !replies.is_empty() {
            self.queued.push_back(Bytes::from(replies));
        }
    }

    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(front) = self.queued.front() {
            // One frame (the usual case below a few hundred events a second per
            // connection) is one plain write: no iovec array to fill.
            let written = if self.queued.len() == 1 {
                Pin::new(&mut self.io).poll_write(cx, front)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for (slot, bytes) in slices.iter_mut().zip(self.queued.iter()) {
                    *slot = IoSlice::new(bytes);
                    n += 1;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            };
            let written = match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.advance(written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Drops `written` bytes from the front of the queue.
    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queued.front_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.queued.pop_front();
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Wire for RawWire<W> {
    fn feed(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.queue(message);
        std::future::ready(Ok(()))
    }

    fn feed_event(
        &mut self,
        event: Arc<StampedEvent>,
    ) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.queued.push_back(event.ws_frame().clone());
        std::future::ready(Ok(()))
    }

    fn feed_raw(&mut self, bytes: Bytes) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.queued.push_back(bytes);
        std::future::ready(Ok(()))
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.take_replies();
        std::future::poll_fn(|cx| self.poll_write_queued(cx).map_err(axum::Error::new))
    }

    async fn close(&mut self) -> Result<(), axum::Error> {
        self.take_replies();
        let echoed = self
            .replies
            .peer_closed
            .load(std::sync::atomic::Ordering::Acquire);
        if !echoed && !self.close_written {
            self.queue(Message::Close(None));
        }
        std::future::poll_fn(|cx| self.poll_write_queued(cx))
            .await
            .map_err(axum::Error::new)?;
        self.io.shutdown().await.map_err(axum::Error::new)
    }

    fn replies(&self) -> Option<Arc<Replies>> {
        Some(self.replies.clone())
    }

    fn direct(&self) -> Option<Arc<dyn DirectWrite>> {
        self.direct.clone().map(|d| d as Arc<dyn DirectWrite>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper read past the upgrade request is kept as a copy: a slice of
    /// hyper's read buffer, even an empty one, keeps the whole buffer alive for
    /// the connection's life (11.5 KiB per idle connection on benchmark (a)
    /// instead of 6.4 KiB). Also: bytes that were there are read first.
    #[tokio::test]
    async fn the_bytes_read_past_the_upgrade_do_not_keep_hypers_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hyper_buffer = Bytes::from(vec![7u8; 8192]);
        for range in [8192..8192, 100..110] {
            let past = hyper_buffer.slice(range);
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let _client = client.expect("connect");
            let (tcp, _) = accepted.expect("accept");
            let expected = past.to_vec();
            let (reader, _wire) = split_tcp(tcp, past, WebSocketConfig::default()).await;
            assert!(
                hyper_buffer.is_unique(),
                "the connection still holds a slice of hyper's buffer"
            );
            assert_eq!(&reader.ws.get_ref().read.buffered[..], &expected[..]);
        }
    }
}
