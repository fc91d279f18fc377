//! The storage and cross-node seam of the hub.
//!
//! A [`Backplane`] owns, per topic, the seq counter and its epoch, the bounded
//! history, the snapshot and the ACL, and it carries events to every node that
//! [`watch`](Backplane::watch)es a topic. Its operations are the ones a shared store
//! can make atomic: *assign seq + append + publish* in one step
//! ([`publish`](Backplane::publish)), *read history since N* together with the
//! topic's epoch, latest seq and snapshot ([`read`](Backplane::read)), and poller
//! *leases* with fencing tokens. The in-memory implementation is
//! [`super::memory::MemoryBackplane`]; a Redis one (Lua script for publish, a stream
//! per topic, pub/sub for fan-out, `SET NX PX` leases) fits the same trait.
//!
//! Events a node must deliver locally flow out through the [`Deliver`] sink given to
//! the backplane at construction, in seq order per topic.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value};
use stackpulse_protocol::Acl;

use super::event::StampedEvent;

/// What a source asks the backplane to publish.
#[derive(Debug, Clone)]
pub struct Draft {
    pub event_type: String,
    pub data: Map<String, Value>,
    /// Replaces the topic's ACL when present.
    pub acl: Option<Acl>,
    /// A poller's lease; the publish is refused if the lease was lost meanwhile.
    pub fence: Option<Lease>,
}

/// A topic's position and retained history, read atomically.
#[derive(Debug, Clone)]
pub struct TopicRead {
    pub epoch: Arc<str>,
    /// The latest seq assigned (0 when the topic has no events yet).
    pub latest_seq: u64,
    /// The oldest seq still in history (`latest_seq + 1` when history is empty).
    pub first_retained: u64,
    /// Every retained event with seq greater than the requested `since`, oldest
    /// first (empty when no `since` was given).
    pub events: Vec<Arc<StampedEvent>>,
    /// The snapshot frame, current to `latest_seq` (`None` before the first event).
    pub snapshot: Option<Utf8Bytes>,
    pub acl: Option<Acl>,
}

impl TopicRead {
    /// How a topic nobody published to reads: seq 0, no history, no snapshot, no
    /// ACL, in the [unborn epoch](super::UNBORN_EPOCH).
    pub fn unborn() -> TopicRead {
        TopicRead {
            epoch: Arc::from(super::UNBORN_EPOCH),
            latest_seq: 0,
            first_retained: 1,
            events: Vec::new(),
            snapshot: None,
            acl: None,
        }
    }

    /// Whether every event after `since` is still retained, so a resume from
    /// `since` loses nothing.
    pub fn covers(&self, since: u64) -> bool {
        since <= self.latest_seq && since + 1 >= self.first_retained
    }

    /// Whether a subscribe with `since` and the client's `epoch` resumes (replays
    /// history) rather than starting from the snapshot: the epoch matches (or was
    /// the [unborn](super::UNBORN_EPOCH) one, or none was sent) and history covers
    /// `since`. A subscribe without `since` never resumes.
    pub fn resumes(&self, since: Option<u64>, epoch: Option<&str>) -> bool {
        let Some(since) = since else { return false };
        epoch.is_none_or(|e| e == &*self.epoch || e == super::UNBORN_EPOCH) && self.covers(since)
    }
}

/// A poller lease. `token` grows every time the lease changes hands, so a paused old
/// holder's publish (carrying an older token) can be refused: the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub token: u64,
}

/// The claims this node sent with lease acquires whose answer never came.
///
/// An acquire is one atomic write on the store, but its answer can be lost (the
/// connection broke, or the call timed out, after the store took the lease). The
/// store then holds a lease nobody knows it holds, and every acquire, this node's
/// included, is refused until its TTL runs out: a stack nobody polls, or a
/// deployment that cannot be started, for a whole `--poller-lease`. So each acquire
/// carries a claim, stored with the lease: the claim of the node's previous acquire
/// of that name while its outcome is unknown, else a new one. A store that finds the
/// lease held under the same claim gives it (with a new fencing token) to the caller.
/// A claim is spent as soon as an acquire of its name is answered, taken or refused.
#[derive(Debug, Default)]
pub struct LeaseClaims(dashmap::DashMap<String, u64>);

impl LeaseClaims {
    /// The claim to send with an acquire of `name`.
    pub fn claim(&self, name: &str) -> u64 {
        *self
            .0
            .entry(name.to_owned())
            .or_insert_with(rand::random::<u64>)
    }

    /// The store answered an acquire of `name`: its claim is spent.
    pub fn answered(&self, name: &str) {
        self.0.remove(name);
    }
}

/// Summary of a topic for `GET /v1/topics/{id}`.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub epoch: Arc<str>,
    pub latest_seq: u64,
    pub retained: usize,
    pub snapshot: Option<Map<String, Value>>,
    pub snapshot_type: &'static str,
    pub acl: Option<Acl>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} is no longer held by this publisher")]
    Fenced(String),
    #[error("Too many topics on this node (--max-topics {0})")]
    TopicLimit(usize),
}

/// Where a backplane hands events for local delivery.
pub trait Deliver: Send + Sync {
    /// Called once per event per node, in seq order per topic. Must not block.
    fn deliver(&self, event: &Arc<StampedEvent>);

    /// Events may have been lost on the way to this node (its cross-node link was
    /// down): every live subscription must check itself against history.
    fn resync_all(&self) {}

    /// A push asked the poller of `topic` to poll now (heard on every node; only
    /// the node running it does anything). Must not block.
    fn wake(&self, _topic: &str) {}
}

#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Assigns the topic's next seq, appends the event to its history, folds it into
    /// the snapshot and delivers it to every watching node, as one atomic step.
    async fn publish(&self, topic: &str, draft: Draft)
        -> Result<Arc<StampedEvent>, BackplaneError>;

    /// Reads the topic's epoch, latest seq, snapshot and the events after `since`.
    /// A topic that does not exist reads as seq 0 in a fresh epoch (memory stores
    /// nothing for it; the watch of a subscriber is what keeps its epoch).
    async fn read(&self, topic: &str, since: Option<u64>) -> Result<TopicRead, BackplaneError>;

    /// This node has local subscribers of `topic`: deliver its events here.
    async fn watch(&self, topic: &str) -> Result<(), BackplaneError>;

    /// This node's last local subscriber of `topic` left.
    async fn unwatch(&self, topic: &str);

    /// Describes a topic without creating it.
    async fn info(&self, topic: &str) -> Result<Option<TopicInfo>, BackplaneError>;

    /// Tries to take the named lease for `ttl`; `None` when someone else holds it.
    /// A store that can fail after taking it keeps this node's [`LeaseClaims`], so
    /// that the next acquire of the name gets the lease the lost answer was about.
    async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackplaneError>;

    /// Extends a held lease; `false` when it was lost (expired and taken).
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackplaneError>;

    /// Gives a lease up early.
    async fn release_lease(&self, lease: &Lease);

    /// Asks whichever node polls `topic` to poll now: [`Deliver::wake`] on every
    /// node (this one included). Wakes may coalesce; none is stored for later.
    async fn wake(&self, topic: &str) -> Result<(), BackplaneError>;

    /// Number of topics currently stored.
    fn topic_count(&self) -> usize;

    /// Whether the backplane can serve requests (for `/readyz`).
    async fn ready(&self) -> Result<(), BackplaneError>;

    /// Shares this node's presence (its connections, its subscribers per topic)
    /// so any node can answer cluster-wide counts without asking the others.
    async fn report_presence(
        &self,
        _connections: usize,
        _topics: &[(Arc<str>, usize)],
    ) -> Result<(), BackplaneError> {
        Ok(())
    }

    /// Subscribers of a topic on every live node; `None` when this backplane only
    /// knows the local node.
    async fn topic_presence(&self, _topic: &str) -> Result<Option<usize>, BackplaneError> {
        Ok(None)
    }

    /// Live nodes and their connections in total; `None` for a single node.
    async fn cluster_presence(&self) -> Result<Option<(usize, usize)>, BackplaneError> {
        Ok(None)
    }
}
