//! The write side of a socket, as the connection driver's writer sees it.
//!
//! The writer ([`super::driver`]) feeds a batch of frames to a [`Wire`], then
//! flushes once. Two wires exist:
//! - [`SinkWire`]: any `Sink` of messages (axum's `WebSocket`, the unit tests'
//!   channels); tungstenite frames each message.
//! - [`super::raw::RawWire`]: the raw upgraded connection of `/ws`, which writes
//!   prepared frame bytes ([`super::frame`]) with one vectored write per flush;
//!   an event's frame is encoded once for all its subscribers.
//!
//! The reading half of a socket is any [`Reader`]: a stream of messages.

use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::Message;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;

use crate::hub::StampedEvent;

/// The reading half of a socket: the client's frames.
pub(crate) trait Reader:
    futures_util::Stream<Item = Result<Message, axum::Error>> + Send + Unpin + 'static
{
}

impl<T> Reader for T where
    T: futures_util::Stream<Item = Result<Message, axum::Error>> + Send + Unpin + 'static
{
}

/// The writing half of a socket.
pub(crate) trait Wire: Send + 'static {
    /// Buffers one frame (a wire may write when its buffer is full).
    fn feed(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send;

    /// Buffers an event's frame; a wire that can writes its prepared bytes.
    fn feed_event(
        &mut self,
        event: Arc<StampedEvent>,
    ) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.feed(Message::Text(event.frame.clone()))
    }

    /// Buffers bytes that continue a frame already begun on the socket (the rest
    /// of a direct write); only a wire that lent a [`Wire::direct`] gets any.
    fn feed_raw(
        &mut self,
        _bytes: bytes::Bytes,
    ) -> impl Future<Output = Result<(), axum::Error>> + Send {
        std::future::ready(Err(axum::Error::new(std::io::Error::other(
            "raw bytes on a wire that frames its messages",
        ))))
    }

    /// Writes everything buffered.
    fn flush(&mut self) -> impl Future<Output = Result<(), axum::Error>> + Send;

    /// Buffers and writes one frame.
    fn send(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send {
        async move {
            self.feed(message).await?;
            self.flush().await
        }
    }

    /// Ends the connection when the client closed or vanished: a close frame
    /// with no code unless one was already written (the echo of the client's).
    fn close(&mut self) -> impl Future<Output = Result<(), axum::Error>> + Send;

    /// Frames the reading half queued to write (pongs, the echo of a close), for
    /// a wire whose reader cannot write them itself; the writer flushes when it
    /// has some ([`super::raw::Replies::ready`]).
    fn replies(&self) -> Option<Arc<super::raw::Replies>> {
        None
    }

    /// The socket, for the fan-out to write live events to directly while the
    /// writer is idle ([`crate::hub::outbox`]); `None` when it cannot.
    fn direct(&self) -> Option<Arc<dyn crate::hub::DirectWrite>> {
        None
    }
}

/// A wire over any `Sink` of messages, split from a socket.
pub(crate) struct SinkWire<S: futures_util::Sink<Message>>(pub SplitSink<S, Message>);

impl<S> Wire for SinkWire<S>
where
    S: futures_util::Sink<Message, Error = axum::Error>
        + futures_util::Stream
        + Send
        + Unpin
        + 'static,
{
    fn feed(&mut self, message: Message) -> impl Future<Output = Result<(), axum::Error>> + Send {
        self.0.feed(message)
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), axum::Error>> + Send {
        SinkExt::flush(&mut self.0)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), axum::Error>> + Send {
        SinkExt::close(&mut self.0)
    }
}
