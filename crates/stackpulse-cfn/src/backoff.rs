//! Backoff: how long to wait after a throttled or failed call, and how much slower to
//! poll after throttling.
//!
//! Exponential with jitter: attempt `n` (from 0) waits a random time in
//! `[d/2, d]` where `d = min(max, initial * 2^n)`, so many pollers throttled together
//! do not retry in step. After throttling the poll interval is multiplied by a factor
//! that doubles on each throttle (up to `max_slowdown`) and halves back after each
//! poll cycle that was not throttled.

use std::time::Duration;

use rand::Rng;

/// Limits of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
    /// Largest factor the poll interval is multiplied by after throttling.
    pub max_slowdown: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_slowdown: 8,
        }
    }
}

impl BackoffConfig {
    /// The upper bound of the wait before retry `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `attempt`, with jitter: in `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.ceiling(attempt);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return d;
        }
        half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// `d` give or take up to [`POLL_JITTER`] of it, at random: poll times of stacks
/// that started together drift apart, so their calls do not come in bursts.
pub fn jittered(d: Duration) -> Duration {
    let spread = d.mul_f64(POLL_JITTER);
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return d;
    }
    let offset = Duration::from_nanos(rand::rng().random_range(0..=nanos.saturating_mul(2)));
    (d + offset).saturating_sub(spread)
}

/// The share of a poll interval [`jittered`] moves a poll by, either way.
pub const POLL_JITTER: f64 = 0.1;

/// The poll-interval multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slowdown {
    factor: u32,
    max: u32,
}

impl Slowdown {
    pub fn new(max: u32) -> Self {
        Self {
            factor: 1,
            max: max.max(1),
        }
    }
    pub fn factor(&self) -> u32 {
        self.factor
    }
    /// A call was throttled.
    pub fn throttled(&mut self) {
        self.factor = self.factor.saturating_mul(2).min(self.max);
    }
    /// A poll cycle went through without throttling.
    pub fn relax(&mut self) {
        self.factor = (self.factor / 2).max(1);
    }
    pub fn apply(&self, interval: Duration) -> Duration {
        interval.saturating_mul(self.factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_capped_with_jitter() {
        let b = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_slowdown: 4,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(1000), Duration::from_secs(1));
        for attempt in 0..10 {
            let d = b.delay(attempt);
            assert!(
                d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt),
                "{d:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let d = Duration::from_secs(2);
        let all: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(all
            .iter()
            .all(|j| *j >= Duration::from_millis(1800) && *j <= Duration::from_millis(2200)));
        assert!(all.iter().any(|j| *j != d), "jittered at all");
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn slowdown_doubles_and_relaxes() {
        let mut s = Slowdown::new(4);
        s.throttled();
        s.throttled();
        s.throttled();
        assert_eq!(s.factor(), 4);
        assert_eq!(
            s.apply(Duration::from_millis(20)),
            Duration::from_millis(80)
        );
        s.relax();
        assert_eq!(s.factor(), 2);
        s.relax();
        s.relax();
        assert_eq!(s.factor(), 1);
    }
}
