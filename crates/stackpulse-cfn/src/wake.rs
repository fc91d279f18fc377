//! [`Wake`]: a push (an EventBridge or SNS notification) asking a tracker to poll at
//! once instead of sleeping out its interval.
//!
//! Wakes coalesce: any number of them while a poll runs (or before the tracker
//! waits) make one extra poll. A tracker that was woken within [`PUSH_RECENT`]
//! polls every [`crate::TrackerConfig::push_poll_interval`] instead of its poll
//! interval (pushes carry the news; polling is then only the safety net).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a push keeps a tracker on the push poll interval.
pub const PUSH_RECENT: Duration = Duration::from_secs(600);

/// The wake signal of one stack (shared by its poller and whoever hears pushes).
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    last: Mutex<Option<Instant>>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Asks for a poll now (coalesced with any wake not yet consumed).
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

    /// Whether a push came within [`PUSH_RECENT`].
    pub fn pushed_recently(&self) -> bool {
        self.last
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < PUSH_RECENT)
    }

    /// The wait between two polls: `push` after a recent push, else `poll`.
    pub fn interval(&self, poll: Duration, push: Duration) -> Duration {
        if self.pushed_recently() {
            push
        } else {
            poll
        }
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
}
