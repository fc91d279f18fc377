//! A connection's bounded outgoing queue and its overflow policy.
//!
//! The hub pushes [`Delivery`] items; a delivery adapter (the `/ws` writer) pops
//! them, encodes and writes. Live events are pushed with `try_send` from the fan-out
//! path, which never waits: when the queue is full the connection is marked for
//! closing with [`CloseReason::SlowConsumer`] and later events for it are dropped
//! (and counted), so one client that stops reading never slows the others or grows
//! the server's memory. Replays after a `subscribe` are pushed with a bounded wait.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::StampedEvent;

/// The `subscribed` reply's fields; boxed in [`Delivery`] to keep queue slots small.
#[derive(Debug, Clone)]
pub struct SubscribedInfo {
    pub topic: Arc<str>,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub recovered: bool,
}

/// One item in a connection's queue. Kept two words wide: the queue allocates its
/// slots 32 at a time for every connection, so an unboxed `Utf8Bytes` (four words)
/// would cost each idle connection ~800 bytes more.
#[derive(Debug)]
pub enum Delivery {
    /// A numbered event of a subscribed topic.
    Event(Arc<StampedEvent>),
    /// A subscription was (re)established.
    Subscribed(Box<SubscribedInfo>),
    /// A snapshot event, or a control reply, already encoded (see [`Delivery::frame`]).
    Frame(Box<Utf8Bytes>),
}

impl Delivery {
    /// An encoded frame.
    pub fn frame(frame: impl Into<Utf8Bytes>) -> Delivery {
        Delivery::Frame(Box::new(frame.into()))
    }
}

/// Why the server closes a connection; each maps to a documented close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outgoing queue overflowed (close code 4008).
    SlowConsumer,
    /// The server is shutting down (1001).
    Shutdown,
    /// No frame from the client within the idle timeout (4000).
    IdleTimeout,
    /// The client sent a frame over the size limit (1009).
    MessageTooBig,
    /// The client closed or vanished; nothing more to send.
    ClientClosed,
    /// The connection's token expired without an in-band refresh (4001).
    TokenExpired,
    /// A subscription could not be repaired from history (backplane down for
    /// too long); the client should reconnect and resume (1012).
    Resync,
}

/// Raised when a push could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

/// The sending side of one connection's queue.
pub struct Outbox {
    tx: mpsc::Sender<Delivery>,
    /// Set once by [`Outbox::close`]. Read on every push and by the writer on every
    /// wake-up, so it is a plain atomic: the token below takes a mutex per check,
    /// which was ~10% of the server's CPU when fanning out 200k deliveries/s.
    closed: AtomicBool,
    /// The one writer task waiting in [`Outbox::writer_closing`].
    writer: AtomicWaker,
    /// For any other waiter ([`Outbox::closing`]: the reader, tests).
    closing: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
}

impl Outbox {
    /// Creates a queue of `capacity` items; the receiver goes to the writer.
    pub fn new(capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Arc::new(Outbox {
            tx,
            closed: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            closing: CancellationToken::new(),
            reason: Mutex::new(None),
        });
        (outbox, rx)
    }

    /// Queues without waiting; a full queue closes the connection as a slow consumer.
    pub fn push(&self, item: Delivery) -> Result<(), QueueClosed> {
        if self.is_closing() {
            metrics::counter!("stackpulse_messages_dropped_total").increment(1);
            return Err(QueueClosed);
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("stackpulse_messages_dropped_total").increment(1);
                if self.close(CloseReason::SlowConsumer) {
                    metrics::counter!("stackpulse_slow_consumer_closes_total").increment(1);
                    tracing::warn!("closing a slow consumer: outgoing queue full");
                }
                Err(QueueClosed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueClosed),
        }
    }

    /// Queues, waiting up to `timeout` for room; used for replays, whose size is
    /// bounded by the history and may exceed the queue.
    pub async fn push_wait(&self, item: Delivery, timeout: Duration) -> Result<(), QueueClosed> {
        if self.is_closing() {
            return Err(QueueClosed);
        }
        tokio::select! {
            sent = tokio::time::timeout(timeout, self.tx.send(item)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(QueueClosed),
                Err(_) => {
                    if self.close(CloseReason::SlowConsumer) {
                        metrics::counter!("stackpulse_slow_consumer_closes_total").increment(1);
                    }
                    Err(QueueClosed)
                }
            },
            _ = self.closing.cancelled() => Err(QueueClosed),
        }
    }

    /// Asks the writer to close the connection. The first reason wins; returns
    /// whether this call set it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut slot = self.reason.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        self.closed.store(true, Ordering::Release);
        self.closing.cancel();
        self.writer.wake();
        true
    }

    /// Resolves once [`close`](Self::close) was called.
    pub async fn closing(&self) -> CloseReason {
        self.closing.cancelled().await;
        self.reason.lock().unwrap_or(CloseReason::Shutdown)
    }

    /// Resolves once [`close`](Self::close) was called, without locks: for the
    /// connection's single writer task, which polls it on every wake-up.
    pub fn writer_closing(&self) -> impl Future<Output = CloseReason> + '_ {
        std::future::poll_fn(|cx| self.poll_writer_closing(cx))
    }

    fn poll_writer_closing(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if !self.is_closing() {
            // Register before the second check, so a close in between still wakes us.
            self.writer.register(cx.waker());
            if !self.is_closing() {
                return Poll::Pending;
            }
        }
        Poll::Ready(self.reason.lock().unwrap_or(CloseReason::Shutdown))
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_is_two_words() {
        assert_eq!(std::mem::size_of::<Delivery>(), 16);
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_and_drops_the_rest() {
        let (outbox, mut rx) = Outbox::new(2);
        let frame = || Delivery::frame(Utf8Bytes::from_static("{}"));
        assert!(outbox.push(frame()).is_ok());
        assert!(outbox.push(frame()).is_ok());
        assert_eq!(outbox.push(frame()), Err(QueueClosed));
        assert!(outbox.is_closing());
        assert_eq!(outbox.closing().await, CloseReason::SlowConsumer);
        assert!(rx.recv().await.is_some());
        assert_eq!(
            outbox.push(frame()),
            Err(QueueClosed),
            "no more after closing"
        );
        assert!(
            !outbox.close(CloseReason::Shutdown),
            "the first reason stays"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn push_wait_times_out_into_a_slow_consumer_close() {
        let (outbox, _rx) = Outbox::new(1);
        let frame = || Delivery::frame(Utf8Bytes::from_static("{}"));
        outbox
            .push_wait(frame(), Duration::from_secs(1))
            .await
            .expect("room");
        let r = outbox.push_wait(frame(), Duration::from_secs(1)).await;
        assert_eq!(r, Err(QueueClosed));
        assert_eq!(outbox.closing().await, CloseReason::SlowConsumer);
    }
}
