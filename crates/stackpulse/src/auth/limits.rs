//! Admission limits: connection attempts per second per IP and per user (token
//! buckets), and open connections per user.
//!
//! A bucket holds up to twice the per-second rate and refills continuously; an
//! attempt takes one token or is refused (HTTP 429). Idle buckets are swept so the
//! map stays bounded by the set of recently active clients.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::config::auth::AdmissionLimits;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
pub struct RateLimiter<K: Eq + Hash> {
    rate: f64,
    burst: f64,
    buckets: DashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(per_second: f64) -> Self {
        RateLimiter {
            rate: per_second,
            burst: (per_second * 2.0).max(1.0),
            buckets: DashMap::new(),
        }
    }

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &K, now: Instant) -> bool {
        let mut b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that are full again (idle long enough).
    pub fn sweep(&self, now: Instant) {
        let full_after = self.burst / self.rate;
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < full_after);
    }
}

/// Why a connection attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    IpRate,
    UserRate,
    UserConnections(usize),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::IpRate => "Too many connection attempts from this address; retry later".into(),
            Refusal::UserRate => "Too many connection attempts for this user; retry later".into(),
            Refusal::UserConnections(n) => {
                format!("Too many connections for this user (limit {n})")
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::IpRate => "rate_ip",
            Refusal::UserRate => "rate_user",
            Refusal::UserConnections(_) => "user_limit",
        }
    }
}

pub struct Admission {
    limits: AdmissionLimits,
    per_ip: RateLimiter<IpAddr>,
    per_user: RateLimiter<String>,
    open_per_user: DashMap<String, Arc<AtomicUsize>>,
}

/// Holds one of a user's connection places; released on drop.
pub struct UserSlot {
    count: Arc<AtomicUsize>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            per_ip: RateLimiter::new(limits.connect_rate_per_ip),
            per_user: RateLimiter::new(limits.connect_rate_per_user),
            open_per_user: DashMap::new(),
        }
    }

    /// Checks the per-IP attempt rate (before any token work). `ip` is the
    /// client's address as the HTTP edge resolved it (behind a trusted proxy, from
    /// `X-Forwarded-For`); IPv6 clients share a bucket per /64, which one host
    /// can otherwise rotate through.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.per_ip.allow(&ip_bucket(ip), Instant::now()) {
            Ok(())
        } else {
            Err(Refusal::IpRate)
        }
    }

    /// Checks the per-user attempt rate and takes one of the user's places.
    pub fn admit_user(&self, sub: &str) -> Result<UserSlot, Refusal> {
        if !self.per_user.allow(&sub.to_owned(), Instant::now()) {
            return Err(Refusal::UserRate);
        }
        let count = self
            .open_per_user
            .entry(sub.to_owned())
            .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
            .clone();
        let max = self.limits.max_connections_per_user;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::UserConnections(max))?;
        Ok(UserSlot { count })
    }

    /// Drops idle rate buckets and users without connections.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.per_ip.sweep(now);
        self.per_user.sweep(now);
        self.open_per_user
            .retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
    }
}

/// The per-IP bucket of an address: IPv4 as is, IPv6 by its /64 (IPv4-mapped
/// IPv6 as the IPv4 address).
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ipv6_clients_are_bucketed_by_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            ip_bucket(ip("2001:db8::1")),
            ip_bucket(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            ip_bucket(ip("2001:db8::1")),
            ip_bucket(ip("2001:db8:0:1::1"))
        );
        assert_eq!(ip_bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_bucket(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let rl = RateLimiter::new(5.0);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| rl.allow(&1u8, t0)).count();
        assert_eq!(allowed, 10, "burst is twice the rate");
        assert!(!rl.allow(&1u8, t0));
        assert!(
            rl.allow(&1u8, t0 + Duration::from_millis(250)),
            "refills at 5/s"
        );
        assert!(rl.allow(&2u8, t0), "keys are independent");
        rl.sweep(t0 + Duration::from_secs(10));
        assert!(rl.buckets.is_empty());
    }

    #[test]
    fn per_user_connections_are_capped_and_released() {
        let a = Admission::new(AdmissionLimits {
            max_connections_per_user: 2,
            connect_rate_per_ip: 100.0,
            connect_rate_per_user: 100.0,
        });
        let s1 = a.admit_user("u").expect("1");
        let _s2 = a.admit_user("u").expect("2");
        assert_eq!(a.admit_user("u").err(), Some(Refusal::UserConnections(2)));
        drop(s1);
        assert!(a.admit_user("u").is_ok());
    }
}
