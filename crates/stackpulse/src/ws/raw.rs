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

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as TsMessage;
use tokio_tungstenite::WebSocketStream;

use super::frame;
use super::wire::Wire;
use crate::hub::StampedEvent;

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

/// Splits an upgraded connection into the driver's reader and wire.
pub(crate) async fn split(upgraded: Upgraded, config: WebSocketConfig) -> (ReadStream, RawWire) {
    split_io(TokioIo::new(upgraded), config).await
}

/// [`split`] over any connection (the tests use an in-memory duplex).
pub(crate) async fn split_io<T>(io: T, config: WebSocketConfig) -> (ReadStream<T>, RawWire<T>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
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
    };
    (ReadStream { ws }, wire)
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
struct ReadSide<T> {
    read: ReadHalf<T>,
    replies: Arc<Replies>,
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for ReadSide<T> {
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
pub(crate) struct ReadStream<T = Io> {
    ws: WebSocketStream<ReadSide<T>>,
}

impl<T: AsyncRead + AsyncWrite> futures_util::Stream for ReadStream<T> {
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
pub(crate) struct RawWire<T = Io> {
    io: WriteHalf<T>,
    /// Frames not yet written (the first may be partly written).
    queued: VecDeque<Bytes>,
    replies: Arc<Replies>,
    /// A close frame was queued (the connection's last frame).
    close_written: bool,
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> RawWire<T> {
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
        while !self.queued.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (slot, bytes) in slices.iter_mut().zip(self.queued.iter()) {
                *slot = IoSlice::new(bytes);
                n += 1;
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
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

impl<T: AsyncRead + AsyncWrite + Send + 'static> Wire for RawWire<T> {
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
}
