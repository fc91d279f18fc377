//! [`Wake`]: a push (an EventBridge or SNS notification) asking a tracker to read its
//! stack's events at once instead of sleeping out its interval.
//!
//! Data flow: whoever hears a push calls [`Wake::wake`], which records the push's
//! arrival time and notifies the stack's one tracker. The tracker waits in
//! [`Wake::next_read`] between two reads, which ends either when the timer runs out
//! ([`Woke::Timer`]: the tracker runs a full cycle, events and `DescribeStacks`) or
//! on a push ([`Woke::Push`]: the tracker reads only `DescribeStackEvents`, see
//! [`crate::tracker`]).
//!
//! Pushes fold, so a burst of CloudFormation events costs one read:
//! - a push that arrived before the previous read began is stale: CloudFormation
//!   recorded its event before sending it, so that read returned it. Its pending
//!   notification does not end the wait;
//! - after the first fresh push the read waits [`PUSH_COALESCE`] more (never less
//!   than [`MIN_READ_GAP`] after the previous read began), so the pushes of a burst
//!   that arrive meanwhile are answered by the same read.
//!
//! A push that arrives while a read is in flight cannot be told apart from one whose
//! event came after the read: it makes one more read. A tracker that was woken
//! within [`PUSH_RECENT`] polls every [`crate::TrackerConfig::push_poll_interval`]
//! instead of its poll interval (pushes carry the news; polling is the safety net).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a push keeps a tracker on the push poll interval.
pub const PUSH_RECENT: Duration = Duration::from_secs(600);

/// How long a read waits after the first push of a burst for the rest of it.
pub const PUSH_COALESCE: Duration = Duration::from_millis(250);

/// The least time between the starts of two reads when pushes come fast.
pub const MIN_READ_GAP: Duration = Duration::from_millis(500);

/// Why [`Wake::next_read`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The interval ran out with no fresh push.
    Timer,
    /// A push that arrived after the previous read began.
    Push,
}

/// The wake signal of one stack (shared by its poller and whoever hears pushes).
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    /// When the latest push arrived.
    last: Mutex<Option<Instant>>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Asks for a read now (coalesced with any wake not yet consumed).
    pub fn wake(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
        self.notify.notify_one();
    }

    /// Resolves at the next wake (or at once when one is pending).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    /// When the latest push arrived.
    fn last_push(&self) -> Option<Instant> {
        self.last.lock().ok().and_then(|l| *l)
    }

    /// Whether a push came within [`PUSH_RECENT`].
    pub fn pushed_recently(&self) -> bool {
        self.last_push().is_some_and(|t| t.elapsed() < PUSH_RECENT)
    }

    /// The wait between two polls: `push` after a recent push, else `poll`.
    pub fn interval(&self, poll: Duration, push: Duration) -> Duration {
        if self.pushed_recently() {
            push
        } else {
            poll
        }
    }

    /// Waits for the next read of a tracker whose previous read began at
    /// `read_started`: `timer` from now, or a push that arrived after
    /// `read_started` plus the coalescing window (see the module docs).
    pub async fn next_read(&self, read_started: Instant, timer: Duration) -> Woke {
        let deadline = Instant::now() + timer;
        let pushed = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Woke::Timer,
                _ = self.woken() => {
                    match self.last_push() {
                        Some(at) if at >= read_started => break at,
                        // Stale: the previous read answered it.
                        _ => {}
                    }
                }
            }
        };
        tokio::time::sleep_until((pushed + PUSH_COALESCE).max(read_started + MIN_READ_GAP)).await;
        Woke::Push
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wakes_coalesce_and_switch_the_interval() {
        let w = Wake::new();
        let (poll, push) = (Duration::from_secs(2), Duration::from_secs(30));
        assert_eq!(w.interval(poll, push), poll);
        w.wake();
        w.wake();
        assert_eq!(w.interval(poll, push), push);
        // Two wakes, one pending poll.
        tokio::time::timeout(Duration::from_millis(1), w.woken())
            .await
            .expect("pending wake");
        assert!(tokio::time::timeout(Duration::from_millis(1), w.woken())
            .await
            .is_err());
        tokio::time::advance(PUSH_RECENT).await;
        assert_eq!(w.interval(poll, push), poll);
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_the_previous_read_answered_does_not_wake_again() {
        let w = Wake::new();
        let timer = Duration::from_secs(30);
        // A push arrives, then a read begins: the pending wake is stale.
        w.wake();
        tokio::time::advance(Duration::from_millis(10)).await;
        let read = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let start = Instant::now();
        assert_eq!(w.next_read(read, timer).await, Woke::Timer);
        assert_eq!(Instant::now() - start, timer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_pushes_makes_one_read_after_the_window() {
        let w = std::sync::Arc::new(Wake::new());
        let read = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        let first = Instant::now();
        let pusher = {
            let w = w.clone();
            tokio::spawn(async move {
                // Five pushes 50 ms apart, the first at once.
                for _ in 0..5 {
                    w.wake();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        assert_eq!(w.next_read(read, Duration::from_secs(30)).await, Woke::Push);
        // The read waits the window out from the first push: the burst's other
        // pushes (up to 200 ms later) are answered by it.
        assert_eq!(Instant::now() - first, PUSH_COALESCE);
        pusher.await.expect("pusher");
        let read2 = Instant::now();
        // Their wake is pending but stale: the next read comes from the timer.
        assert_eq!(
            w.next_read(read2, Duration::from_secs(1)).await,
            Woke::Timer
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_keep_the_least_gap() {
        let w = Wake::new();
        let read = Instant::now();
        w.wake();
        assert_eq!(w.next_read(read, Duration::from_secs(30)).await, Woke::Push);
        assert_eq!(Instant::now() - read, MIN_READ_GAP);
        // A push that came in during the read waits its window from its arrival.
        let read = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        w.wake();
        tokio::time::advance(Duration::from_millis(600)).await;
        let at = Instant::now();
        assert_eq!(w.next_read(read, Duration::from_secs(30)).await, Woke::Push);
        assert_eq!(Instant::now(), at, "window and gap are over already");
    }
}
