//! A connection's bounded outgoing queue and its overflow policy.
//!
//! The hub pushes [`Delivery`] items; a delivery adapter (the `/ws` writer) pops
//! them, encodes and writes. Live events are pushed with [`Outbox::push`] from the
//! fan-out path, which never waits: when the queue is full the connection is marked for
//! closing with [`CloseReason::SlowConsumer`] and later events for it are dropped
//! (and counted), so one client that stops reading never slows the others or grows
//! the server's memory. Replays after a `subscribe` are pushed with a bounded wait.
//!
//! **Direct writes.** A wire that can write without waiting (the raw `/ws` socket,
//! [`crate::ws::raw`]) lends the outbox a [`DirectWrite`]. A live event pushed with
//! [`Outbox::push_event`] while the queue is empty and the writer holds nothing
//! unwritten is then written to the socket by the fan-out itself, under the queue's
//! lock: no queue slot, no wake-up of the writer task, no pop. When the socket takes
//! only part of the frame, the rest is queued ([`Delivery::Rest`]); when it takes
//! none (`WouldBlock`), the event is queued as usual and the writer waits for the
//! socket. Order stays exact because the socket has one writer at a time: the
//! fan-out writes only while the queue is empty and the writer task is not writing
//! (`Queue::writing`, set under the lock when the writer pops an item or
//! [claims](Receiver::claim) the socket for a ping, a reply or the close, and
//! cleared by [`Receiver::release`] once all it took is written).
//!
//! **The direct-write budget.** One event's fan-out writes directly to at most
//! [`direct_budget`] sockets; the rest of its subscribers get it through their
//! writer tasks, which the runtime spreads over its workers. Writing inline saves
//! the wake-up where a topic has few subscribers, but a large fan-out written
//! inline runs its sends one after another on one thread: measured on 2 cores
//! with 1,000 subscribers of one topic (BENCHMARKS.md), unbounded direct writes
//! delivered 137k events/s where the writer tasks kept up with 200k/s, at 1.5×
//! the kernel time per send.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;
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
    /// The subscription to this topic ended: the topic's ACL no longer admits
    /// the connection's reader (each dialect answers with its 403 error).
    Forbidden(Box<Arc<str>>),
    /// The unwritten rest of an event's frame that the fan-out began writing
    /// directly ([`DirectWrite`]): raw bytes, written before anything else. Only a
    /// wire that lent a [`DirectWrite`] ever receives one.
    Rest(Box<Bytes>),
}

/// How much of a frame a [`DirectWrite`] wrote.
#[derive(Debug)]
pub enum Written {
    /// All of it.
    All,
    /// Part of it; these bytes are still to write.
    Part(Bytes),
    /// Nothing: the socket would block (or failed; the writer will find out).
    Nothing,
}

/// How many sockets one event's fan-out writes to directly (see the module docs):
/// [`DIRECT_BUDGET`], or `STACKPULSE_BENCH_DIRECT_BUDGET` for benchmarks (0 when
/// `STACKPULSE_BENCH_NO_DIRECT=1`). Read once.
pub fn direct_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        if std::env::var("STACKPULSE_BENCH_NO_DIRECT").is_ok_and(|v| v == "1") {
            return 0;
        }
        std::env::var("STACKPULSE_BENCH_DIRECT_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DIRECT_BUDGET)
    })
}

/// Direct writes per event by default (see the module docs).
pub const DIRECT_BUDGET: usize = 64;

/// A socket the fan-out may write to without waiting (see the module docs). Called
/// under the outbox's lock, only while nobody else writes to the socket.
pub trait DirectWrite: Send + Sync {
    /// Writes what the socket takes of `event`'s frame now, without blocking.
    fn try_write_event(&self, event: &StampedEvent) -> Written;
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

/// One connection's queue: the hub pushes, the connection's writer pops.
///
/// A `VecDeque` under a mutex rather than a tokio `mpsc` channel: the channel was the
/// largest item in the fan-out profile (~12% of the server's CPU at 200k
/// deliveries/s) and allocated ~1.3 KiB per connection up front (its header and a
/// first block of 32 slots), where an empty `VecDeque` allocates nothing. The lock
/// is held only to push or pop one item; nothing awaits under it.
pub struct Outbox {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Set once by [`Outbox::close`]. Read on every push and by the writer on every
    /// wake-up, so it is a plain atomic: the token below takes a mutex per check,
    /// which was ~10% of the server's CPU when fanning out 200k deliveries/s.
    closed: AtomicBool,
    /// The one writer task, waiting for an item ([`Receiver::recv`]) or for the
    /// close ([`Outbox::writer_closing`]).
    writer: AtomicWaker,
    /// Replays waiting for room ([`Outbox::push_wait`]).
    room: Notify,
    /// For any other waiter ([`Outbox::closing`]: the reader, tests).
    closing: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
}

struct Queue {
    items: VecDeque<Delivery>,
    /// The [`Receiver`] was dropped: pushes fail from now on.
    receiver_gone: bool,
    /// The socket, when the wire lent it for direct writes.
    direct: Option<Arc<dyn DirectWrite>>,
    /// The writer task holds the socket: it popped items it has not finished
    /// writing, or writes a ping, a reply or the close. No direct write meanwhile.
    writing: bool,
}

/// The writer's end of an [`Outbox`] (one per outbox).
pub struct Receiver {
    outbox: Arc<Outbox>,
}

/// [`Receiver::try_recv`] found nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

enum Room {
    Pushed,
    Full,
    Gone,
}

impl Outbox {
    /// Creates a queue of `capacity` items; the receiver goes to the writer.
    pub fn new(capacity: usize) -> (Arc<Outbox>, Receiver) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                receiver_gone: false,
                direct: None,
                writing: false,
            }),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            room: Notify::new(),
            closing: CancellationToken::new(),
            reason: Mutex::new(None),
        });
        let receiver = Receiver {
            outbox: outbox.clone(),
        };
        (outbox, receiver)
    }

    /// Appends `item` if there is room; gives it back otherwise.
    fn try_push(&self, item: Delivery) -> (Room, Option<Delivery>) {
        let mut queue = self.queue.lock();
        if queue.receiver_gone {
            return (Room::Gone, Some(item));
        }
        if queue.items.len() >= self.capacity {
            return (Room::Full, Some(item));
        }
        queue.items.push_back(item);
        drop(queue);
        self.writer.wake();
        (Room::Pushed, None)
    }

    /// Queues without waiting; a full queue closes the connection as a slow consumer.
    pub fn push(&self, item: Delivery) -> Result<(), QueueClosed> {
        if self.is_closing() {
            metrics::counter!("stackpulse_messages_dropped_total").increment(1);
            return Err(QueueClosed);
        }
        match self.try_push(item).0 {
            Room::Pushed => Ok(()),
            Room::Full => {
                metrics::counter!("stackpulse_messages_dropped_total").increment(1);
                if self.close(CloseReason::SlowConsumer) {
                    metrics::counter!("stackpulse_slow_consumer_closes_total").increment(1);
                    tracing::warn!("closing a slow consumer: outgoing queue full");
                }
                Err(QueueClosed)
            }
            Room::Gone => Err(QueueClosed),
        }
    }

    /// Lends the outbox the socket for direct writes of live events.
    pub fn set_direct(&self, direct: Arc<dyn DirectWrite>) {
        self.queue.lock().direct = Some(direct);
    }

    /// Delivers a live event without waiting: written to the socket at once when
    /// `direct` (the event's remaining direct-write budget) allows, nothing is
    /// ahead of it and the socket takes it (see the module docs), else queued as
    /// [`push`](Self::push) does. A direct write takes one from `direct`.
    pub fn push_event(
        &self,
        event: &Arc<StampedEvent>,
        direct: &mut usize,
    ) -> Result<(), QueueClosed> {
        if self.is_closing() {
            metrics::counter!("stackpulse_messages_dropped_total").increment(1);
            return Err(QueueClosed);
        }
        let mut queue = self.queue.lock();
        if *direct > 0
            && !queue.writing
            && queue.items.is_empty()
            && !queue.receiver_gone
            && !self.is_closing()
        {
            if let Some(socket) = &queue.direct {
                match socket.try_write_event(event) {
                    Written::All => {
                        *direct -= 1;
                        drop(queue);
                        crate::metrics::add_delivered(1);
                        crate::metrics::add_direct();
                        crate::metrics::add_writes(1);
                        return Ok(());
                    }
                    Written::Part(rest) => {
                        *direct -= 1;
                        // The rest goes first; the queue is no longer empty, so no
                        // other direct write comes before it.
                        queue.items.push_back(Delivery::Rest(Box::new(rest)));
                        drop(queue);
                        self.writer.wake();
                        return Ok(());
                    }
                    Written::Nothing => {}
                }
            }
        }
        drop(queue);
        self.push(Delivery::Event(event.clone()))
    }

    /// Queues, waiting up to `timeout` for room; used for replays, whose size is
    /// bounded by the history and may exceed the queue.
    pub async fn push_wait(&self, item: Delivery, timeout: Duration) -> Result<(), QueueClosed> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut item = item;
        loop {
            if self.is_closing() {
                return Err(QueueClosed);
            }
            // Listen for room before trying, so room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(item) {
                (Room::Pushed, _) => return Ok(()),
                (Room::Gone, _) => return Err(QueueClosed),
                (Room::Full, back) => {
                    let Some(back) = back else {
                        return Err(QueueClosed);
                    };
                    item = back;
                }
            }
            tokio::select! {
                _ = &mut room => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if self.close(CloseReason::SlowConsumer) {
                        metrics::counter!("stackpulse_slow_consumer_closes_total").increment(1);
                    }
                    return Err(QueueClosed);
                }
                _ = self.closing.cancelled() => return Err(QueueClosed),
            }
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
        drop(slot);
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

    /// Takes the oldest item (the writer then holds the socket until it
    /// [releases](Receiver::release) it); makes room for a waiting replay when the
    /// queue was full.
    fn pop(&self) -> Option<Delivery> {
        let mut queue = self.queue.lock();
        let was_full = queue.items.len() >= self.capacity;
        let item = queue.items.pop_front();
        if item.is_some() {
            queue.writing = true;
        }
        drop(queue);
        if was_full && item.is_some() {
            self.room.notify_waiters();
        }
        item
    }
}

impl Receiver {
    /// The next item, waiting for one. (`None` is never returned while the receiver
    /// exists; the `Option` keeps the shape of a channel's `recv`.)
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.outbox.pop() {
                return Poll::Ready(Some(item));
            }
            // Register, then look again: a push in between has woken this waker.
            self.outbox.writer.register(cx.waker());
            match self.outbox.pop() {
                Some(item) => Poll::Ready(Some(item)),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Delivery, Empty> {
        self.outbox.pop().ok_or(Empty)
    }

    /// The writer is about to write something of its own (a ping, a reply): no
    /// direct write until [`release`](Self::release).
    pub fn claim(&self) {
        self.outbox.queue.lock().writing = true;
    }

    /// The writer wrote everything it took: the fan-out may write directly again
    /// (once the queue is empty).
    pub fn release(&self) {
        self.outbox.queue.lock().writing = false;
    }

    /// The writer is closing the socket: no direct write ever again, and the
    /// socket is no longer lent.
    pub fn detach(&self) {
        let direct = {
            let mut queue = self.outbox.queue.lock();
            queue.writing = true;
            queue.direct.take()
        };
        drop(direct);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let items = {
            let mut queue = self.outbox.queue.lock();
            queue.receiver_gone = true;
            queue.writing = true;
            (std::mem::take(&mut queue.items), queue.direct.take())
        };
        drop(items);
        self.outbox.room.notify_waiters();
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

    #[tokio::test]
    async fn push_wait_gets_room_when_the_writer_pops() {
        let (outbox, mut rx) = Outbox::new(1);
        let frame = || Delivery::frame(Utf8Bytes::from_static("{}"));
        outbox.push(frame()).expect("room");
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push_wait(frame(), Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        assert!(rx.recv().await.is_some());
        assert_eq!(waiting.await.expect("join"), Ok(()));
        assert!(rx.try_recv().is_ok());
        assert_eq!(rx.try_recv().err(), Some(Empty));
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_pushes() {
        let (outbox, rx) = Outbox::new(4);
        drop(rx);
        let frame = || Delivery::frame(Utf8Bytes::from_static("{}"));
        assert_eq!(outbox.push(frame()), Err(QueueClosed));
        assert!(!outbox.is_closing(), "not a close: the writer is gone");
    }

    /// A socket that takes what `room` allows and records what it was given.
    #[derive(Default)]
    struct FakeSocket {
        room: Mutex<usize>,
        written: Mutex<Vec<u64>>,
    }

    impl DirectWrite for FakeSocket {
        fn try_write_event(&self, event: &StampedEvent) -> Written {
            let frame = event.ws_frame();
            let mut room = self.room.lock();
            if *room == 0 {
                return Written::Nothing;
            }
            self.written.lock().push(event.seq);
            let n = (*room).min(frame.len());
            *room -= n;
            if n == frame.len() {
                Written::All
            } else {
                Written::Part(frame.slice(n..))
            }
        }
    }

    fn event(seq: u64) -> Arc<StampedEvent> {
        Arc::new(StampedEvent::new(
            "T".into(),
            seq,
            "e".into(),
            "deployment.status",
            "2025-10-23T10:05:00.000Z",
            &serde_json::Map::new(),
        ))
    }

    fn queued(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.push(match item {
                Delivery::Event(e) => format!("event {}", e.seq),
                Delivery::Rest(b) => format!("rest of {} bytes", b.len()),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[tokio::test]
    async fn events_go_to_an_idle_socket_directly_and_queue_behind_anything_unwritten() {
        let (outbox, mut rx) = Outbox::new(16);
        let socket = Arc::new(FakeSocket::default());
        outbox.set_direct(socket.clone());
        let len = event(1).ws_frame().len();

        // Idle socket with room: written directly, nothing queued.
        *socket.room.lock() = 2 * len + 5;
        outbox.push_event(&event(1), &mut 1).expect("push");
        outbox.push_event(&event(2), &mut 1).expect("push");
        assert_eq!(*socket.written.lock(), vec![1, 2]);
        // Room for 5 bytes: the rest of event 3 is queued, and event 4 behind it
        // (the queue is not empty, so no direct write jumps ahead).
        outbox.push_event(&event(3), &mut 1).expect("push");
        *socket.room.lock() = 1000;
        outbox.push_event(&event(4), &mut 1).expect("push");
        assert_eq!(*socket.written.lock(), vec![1, 2, 3]);
        assert_eq!(
            queued(&mut rx),
            vec![format!("rest of {} bytes", len - 5), "event 4".into()]
        );
        // The writer popped items: until it releases the socket, events queue.
        outbox.push_event(&event(5), &mut 1).expect("push");
        assert_eq!(queued(&mut rx), vec!["event 5".to_string()]);
        rx.release();
        outbox.push_event(&event(6), &mut 1).expect("push");
        assert_eq!(*socket.written.lock(), vec![1, 2, 3, 6]);
        // A full socket (would block): queued for the writer.
        *socket.room.lock() = 0;
        rx.release();
        outbox.push_event(&event(7), &mut 1).expect("push");
        assert_eq!(queued(&mut rx), vec!["event 7".to_string()]);
        rx.release();
        // The writer writing a ping of its own: queued.
        *socket.room.lock() = 1000;
        rx.claim();
        outbox.push_event(&event(8), &mut 1).expect("push");
        assert_eq!(queued(&mut rx), vec!["event 8".to_string()]);
        // Closing: never again directly.
        rx.release();
        rx.detach();
        outbox.push_event(&event(9), &mut 1).expect("push");
        assert_eq!(*socket.written.lock(), vec![1, 2, 3, 6]);
        assert_eq!(queued(&mut rx), vec!["event 9".to_string()]);
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
