//! The hub: topics, seqs, history, snapshots, subscriptions and fan-out.
//!
//! Data flows one way. A source calls [`Hub::publish`]; the [`Backplane`] stamps the
//! event (seq, epoch, timestamp), stores it and hands it to every node that watches
//! the topic; on this node the [`Fanout`] offers it to each local
//! [`Subscription`], which queues it on its connection's [`Outbox`]. A delivery
//! adapter owns a [`Session`] per connection and drains the outbox; the hub never
//! sees a socket.
//!
//! [`Hub::subscribe`] registers the subscription *before* it reads history, so an
//! event published during the replay is either in the history read or offered live
//! (or both, and then skipped by seq): resume is gap-free and duplicate-free.
//!
//! Which topics exist, who may read or write them, how many a connection or node
//! may hold, and when a source must start producing are decided here, once, for
//! every dialect: the hub asks the [`policy::TopicPolicy`] and tells the
//! [`policy::TopicInterest`] that the server plugged in ([`Hub::set_rules`]).
//!
//! # Layout
//! - [`policy`]: the topic policy and interest seams.
//! - [`backplane`]: the storage/cross-node trait; [`memory`]: its embedded impl;
//!   [`redis`]: the shared one for many nodes; [`dynamo`]: serverless mode's.
//! - [`event`]: the stamped, serialize-once event; [`snapshot`]: the state fold.
//! - [`outbox`]: a connection's bounded queue and slow-consumer policy.
//! - [`subscription`]: the per-subscription syncing/live state machine.

pub mod backplane;
pub mod dynamo;
pub mod event;
pub mod memory;
pub mod outbox;
pub mod policy;
pub mod redis;
pub mod snapshot;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use stackpulse_protocol::{Acl, PublishRequest};

pub use backplane::{Backplane, BackplaneError, Deliver, Draft, Lease, TopicInfo, TopicRead};
pub use event::StampedEvent;
pub use outbox::{CloseReason, Delivery, DirectWrite, Outbox, SubscribedInfo, Written};
pub use policy::{Reader, Rules, TopicInterest, TopicPolicy, WriteRefused};
pub use subscription::Subscription;

/// The epoch a read of a topic that does not exist shows (`GET /v1/topics/{id}`):
/// such a read stores nothing, and a resume naming this epoch matches whatever
/// epoch the topic has by then. (A subscriber makes the topic exist while it
/// watches, so subscribers always hold a real epoch.)
pub const UNBORN_EPOCH: &str = "0";

use subscription::{Offer, SyncStep};

/// How much history each topic keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// At most this many events per topic (oldest dropped first).
    pub max_events: usize,
    /// A topic's history is dropped this long after its last event.
    pub retention: Duration,
    /// Topics one node stores (memory) or watches (every backplane) at most
    /// (`--max-topics`).
    pub max_topics: usize,
    /// Bytes an encoded snapshot may take (`--max-event-bytes`).
    pub snapshot_budget: usize,
}

/// Hub limits.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub history: HistoryConfig,
    pub max_subscriptions_per_connection: usize,
    /// How long a replay may wait for room in a connection's queue before the
    /// connection is closed as a slow consumer.
    pub replay_timeout: Duration,
    /// The largest encoded event a publisher may send (`--max-event-bytes`).
    pub max_event_bytes: usize,
}

/// Why a subscribe was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("Too many subscriptions (limit {0} per connection)")]
    TooMany(usize),
    #[error("Forbidden: {0}")]
    Forbidden(String),
    #[error("Service unavailable: {0}")]
    Backplane(#[from] BackplaneError),
    #[error("connection closed")]
    Closed,
    /// The topic name is refused before the hub sees it (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The node is at a capacity limit (the message names the flag).
    #[error("Service unavailable: {0}")]
    Capacity(String),
}

impl SubscribeError {
    /// The code sent in the `error` reply.
    pub fn code(&self) -> u16 {
        match self {
            SubscribeError::TooMany(_) => 429,
            SubscribeError::Forbidden(_) => 403,
            SubscribeError::Backplane(_) => 503,
            SubscribeError::Closed => 410,
            SubscribeError::Invalid(_) => 400,
            SubscribeError::Capacity(_) => 503,
        }
    }
}

/// Why a publish from outside the server's own sources was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic is reserved to a source (403).
    #[error(transparent)]
    Forbidden(#[from] WriteRefused),
    /// The encoded event would exceed `--max-event-bytes` (413).
    #[error("Event too large: {size} bytes encoded, the limit is {max} (--max-event-bytes)")]
    TooLarge { size: usize, max: usize },
    /// 503 (unavailable, or the node's topic limit).
    #[error("Service unavailable: {0}")]
    Backplane(#[from] BackplaneError),
}

impl PublishError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            PublishError::Forbidden(_) => 403,
            PublishError::TooLarge { .. } => 413,
            PublishError::Backplane(_) => 503,
        }
    }
}

/// The size of an event's encoded frame, give or take the digits of its seq and
/// its timestamp (covered by a fixed allowance) and string escapes (covered by
/// counting the type and topic twice).
fn encoded_len(
    event_type: &str,
    topic: &str,
    data: &serde_json::Map<String, serde_json::Value>,
) -> usize {
    /// `{"type":,"deployment_id":,"seq":,"timestamp":,"data":}`, quotes, a 20-digit
    /// seq and a 24-character timestamp.
    const ENVELOPE: usize = 128;
    let data_len = serde_json::to_vec(data).map_or(usize::MAX, |v| v.len());
    ENVELOPE
        .saturating_add(data_len)
        .saturating_add(event_type.len() * 2)
        .saturating_add(topic.len() * 2)
}

/// One connection's view of the hub.
pub struct Session {
    pub id: u64,
    pub outbox: Arc<Outbox>,
    subs: Mutex<HashMap<Arc<str>, Arc<Subscription>>>,
}

impl Session {
    pub fn subscription_count(&self) -> usize {
        self.subs.lock().len()
    }
}

/// Local subscribers per topic; the backplane's [`Deliver`] sink on this node.
pub struct Fanout {
    topics: DashMap<Arc<str>, HashMap<u64, Arc<Subscription>>>,
    hub: OnceLock<Weak<HubInner>>,
}

impl Fanout {
    fn new() -> Fanout {
        Fanout {
            topics: DashMap::new(),
            hub: OnceLock::new(),
        }
    }

    /// Adds a subscriber; true when it is the topic's first on this node.
    fn add(&self, session: u64, sub: Arc<Subscription>) -> bool {
        let mut entry = self.topics.entry(sub.topic.clone()).or_default();
        let first = entry.is_empty();
        entry.insert(session, sub);
        first
    }

    /// Removes `sub` if it is still the session's subscriber of its topic; true
    /// when the topic has no local subscriber left.
    fn remove(&self, session: u64, sub: &Arc<Subscription>) -> bool {
        let mut now_empty = false;
        self.topics.remove_if_mut(&sub.topic, |_, subs| {
            if subs.get(&session).is_some_and(|s| Arc::ptr_eq(s, sub)) {
                subs.remove(&session);
            }
            now_empty = subs.is_empty();
            now_empty
        });
        now_empty
    }

    /// Whether `topic` has local subscribers.
    fn watches(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Topics with local subscribers.
    fn watched_topics(&self) -> usize {
        self.topics.len()
    }

    /// Local subscribers of a topic.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |s| s.len())
    }

    /// Local subscribers of every topic that has some.
    pub fn topic_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.topics
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
    }
}

impl Fanout {
    /// Repairs `sub` from history after `from`, in the background.
    fn spawn_repair(&self, sub: &Arc<Subscription>, from: u64, epoch: Arc<str>) {
        let Some(hub) = self.hub.get().and_then(Weak::upgrade) else {
            return;
        };
        let sub = sub.clone();
        metrics::counter!("stackpulse_subscription_repairs_total").increment(1);
        tokio::spawn(async move {
            let hub = Hub(hub);
            if let Err(e) = hub.sync(&sub, Resume::Repair { from, epoch }).await {
                tracing::warn!(topic = %sub.topic, error = %e, "subscription repair failed");
                sub.end();
                sub.outbox.close(CloseReason::Resync);
            }
        });
    }
}

impl Fanout {
    /// Ends a live subscription the topic's new ACL no longer admits: it gets a
    /// 403 and leaves the topic (the rest of its connection stays).
    fn forbid(&self, hub: &Hub, sub: &Arc<Subscription>) {
        // Ended already (an earlier event forbade it, and it is still listed until
        // the task below has dropped it): one 403 is enough.
        if !sub.end() {
            return;
        }
        metrics::counter!("stackpulse_subscriptions_forbidden_total").increment(1);
        let _ = sub
            .outbox
            .push(Delivery::Forbidden(Box::new(sub.topic.clone())));
        let hub = hub.clone();
        let sub = sub.clone();
        tokio::spawn(async move {
            if let Some(session) = sub.session() {
                hub.drop_subscription(&session, &sub).await;
            }
        });
    }
}

impl Deliver for Fanout {
    fn deliver(&self, event: &Arc<StampedEvent>) {
        let Some(subs) = self.topics.get(&event.topic) else {
            return;
        };
        // An event that sets the topic's ACL is checked against every subscriber
        // before anyone gets it.
        let hub = event
            .acl
            .as_ref()
            .and_then(|_| self.hub.get().and_then(Weak::upgrade))
            .map(Hub);
        let mut forbidden = Vec::new();
        let mut direct = outbox::direct_budget();
        for sub in subs.values() {
            if let Some(hub) = &hub {
                if !hub
                    .rules()
                    .policy
                    .may_read(&sub.reader(), &event.topic, event.acl.as_ref())
                {
                    forbidden.push(sub.clone());
                    continue;
                }
            }
            if let Offer::NeedsRepair { from, epoch } = sub.offer(event, &mut direct) {
                self.spawn_repair(sub, from, epoch);
            }
        }
        drop(subs);
        if let Some(hub) = &hub {
            for sub in &forbidden {
                self.forbid(hub, sub);
            }
        }
    }

    fn wake(&self, topic: &str) {
        if let Some(hub) = self.hub.get().and_then(Weak::upgrade).map(Hub) {
            hub.rules().interest.wake(topic);
        }
    }

    fn resync_all(&self) {
        for topic in self.topics.iter() {
            for sub in topic.values() {
                if let Some((from, epoch)) = sub.force_repair() {
                    self.spawn_repair(sub, from, epoch);
                }
            }
        }
    }
}

pub struct HubInner {
    backplane: Arc<dyn Backplane>,
    fanout: Arc<Fanout>,
    config: HubConfig,
    /// The topic policy and interest; open until the server sets its own.
    rules: OnceLock<Rules>,
    next_session: std::sync::atomic::AtomicU64,
    subscriptions: AtomicUsize,
}

/// A cheap handle to the hub.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

/// Where a sync starts from.
enum Resume {
    Subscribe {
        since: Option<u64>,
        epoch: Option<String>,
    },
    Repair {
        from: u64,
        epoch: Arc<str>,
    },
}

/// How long a repair keeps retrying an unavailable backplane before the
/// connection is closed (1012) so the client resumes elsewhere.
const REPAIR_PATIENCE: Duration = Duration::from_secs(30);

/// Rounds of history reads before a subscription that keeps falling behind gives up.
const MAX_SYNC_ROUNDS: usize = 16;

impl Hub {
    /// Builds a hub on the backplane that `make` returns; `make` receives the sink
    /// the backplane must deliver this node's events to.
    pub fn new<B: Backplane>(
        config: HubConfig,
        make: impl FnOnce(Arc<dyn Deliver>) -> Arc<B>,
    ) -> (Hub, Arc<B>) {
        match Hub::try_new::<B, std::convert::Infallible>(config, |sink| Ok(make(sink))) {
            Ok(built) => built,
            Err(never) => match never {},
        }
    }

    /// [`Hub::new`] for backplanes whose construction can fail.
    pub fn try_new<B: Backplane, E>(
        config: HubConfig,
        make: impl FnOnce(Arc<dyn Deliver>) -> Result<Arc<B>, E>,
    ) -> Result<(Hub, Arc<B>), E> {
        let fanout = Arc::new(Fanout::new());
        let backplane = make(fanout.clone())?;
        let inner = Arc::new(HubInner {
            backplane: backplane.clone(),
            fanout: fanout.clone(),
            config,
            rules: OnceLock::new(),
            next_session: std::sync::atomic::AtomicU64::new(1),
            subscriptions: AtomicUsize::new(0),
        });
        let _ = fanout.hub.set(Arc::downgrade(&inner));
        Ok((Hub(inner), backplane))
    }

    /// An embedded single-node hub.
    pub fn in_memory(config: HubConfig) -> (Hub, Arc<memory::MemoryBackplane>) {
        Hub::new(config, |sink| {
            Arc::new(memory::MemoryBackplane::new(config.history, sink))
        })
    }

    pub fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.0.backplane
    }

    pub fn config(&self) -> &HubConfig {
        &self.0.config
    }

    /// Plugs in the server's topic policy and interest (once; later calls are
    /// ignored).
    pub fn set_rules(&self, rules: Rules) {
        let _ = self.0.rules.set(rules);
    }

    /// The topic policy and interest in force.
    pub fn rules(&self) -> &Rules {
        static OPEN: LazyLock<Rules> = LazyLock::new(Rules::default);
        self.0.rules.get().unwrap_or(&OPEN)
    }

    /// Whether `reader` may read `topic` with ACL `acl` (queries that read a
    /// topic's state ask the same rule as subscribers).
    pub fn may_read(&self, reader: &Reader, topic: &str, acl: Option<&Acl>) -> bool {
        self.rules().policy.may_read(reader, topic, acl)
    }

    /// Publishes a validated event from a publisher (the publish API, the GraphQL
    /// mutation): the topic must be writable and the event within
    /// `--max-event-bytes`. Returns it stamped.
    pub async fn publish(&self, req: PublishRequest) -> Result<Arc<StampedEvent>, PublishError> {
        self.rules().policy.may_write(&req.deployment_id)?;
        let max = self.0.config.max_event_bytes;
        let size = encoded_len(&req.event_type, &req.deployment_id, &req.data);
        if size > max {
            return Err(PublishError::TooLarge { size, max });
        }
        Ok(self
            .publish_draft(
                &req.deployment_id,
                Draft {
                    event_type: req.event_type,
                    data: req.data,
                    acl: req.acl,
                    fence: None,
                },
            )
            .await?)
    }

    /// Publishes a draft (sources with a lease pass it as `fence`).
    pub async fn publish_draft(
        &self,
        topic: &str,
        draft: Draft,
    ) -> Result<Arc<StampedEvent>, BackplaneError> {
        let event = self.0.backplane.publish(topic, draft).await?;
        metrics::counter!("stackpulse_events_published_total").increment(1);
        Ok(event)
    }

    /// Opens a session for a connection whose queue is `outbox`.
    pub fn open_session(&self, outbox: Arc<Outbox>) -> Arc<Session> {
        Arc::new(Session {
            id: self.0.next_session.fetch_add(1, Ordering::Relaxed),
            outbox,
            subs: Mutex::new(HashMap::new()),
        })
    }

    /// Subscribes (or re-subscribes) a session to a topic for `reader`. The topic
    /// policy checks the name, the caps hold (topics per connection, topics per
    /// node), the reader is checked against the topic's ACL before anything is sent
    /// (a refusal is [`SubscribeError::Forbidden`] whether or not the topic exists),
    /// and the topic's interest hears of it (a stack topic's poller starts there).
    /// Queues `subscribed`, then the replay or the snapshot, then goes live.
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        topic: &str,
        since: Option<u64>,
        epoch: Option<String>,
        reader: &Arc<Reader>,
    ) -> Result<(), SubscribeError> {
        self.rules().policy.check_name(topic).await?;
        let topic: Arc<str> = Arc::from(topic);
        let max_topics = self.0.config.history.max_topics;
        if !self.0.fanout.watches(&topic) && self.0.fanout.watched_topics() >= max_topics {
            return Err(SubscribeError::Capacity(format!(
                "Too many topics on this node (--max-topics {max_topics})"
            )));
        }
        let sub = Arc::new(Subscription::for_session(
            topic.clone(),
            session,
            reader.clone(),
        ));
        let replaced = {
            let mut subs = session.subs.lock();
            let replaced = subs.remove(&topic);
            if replaced.is_none() && subs.len() >= self.0.config.max_subscriptions_per_connection {
                return Err(SubscribeError::TooMany(
                    self.0.config.max_subscriptions_per_connection,
                ));
            }
            subs.insert(topic.clone(), sub.clone());
            replaced
        };
        if let Some(old) = replaced {
            old.end();
            self.detach(session.id, &old).await;
        }
        self.0.subscriptions.fetch_add(1, Ordering::Relaxed);
        if self.0.fanout.add(session.id, sub.clone()) {
            if let Err(e) = self.0.backplane.watch(&topic).await {
                self.drop_subscription(session, &sub).await;
                return Err(e.into());
            }
        }
        let resume = Resume::Subscribe { since, epoch };
        if let Err(e) = self.sync(&sub, resume).await {
            self.drop_subscription(session, &sub).await;
            return Err(e);
        }
        Ok(())
    }

    /// The connection of `session` re-authenticated as `reader` (a fresh token with
    /// other groups): each subscription is checked against its topic's ACL again,
    /// and those the new reader may not read end with a 403.
    pub async fn reauthorize(
        &self,
        session: &Arc<Session>,
        reader: &Arc<Reader>,
    ) -> Result<(), BackplaneError> {
        let subs: Vec<Arc<Subscription>> = session.subs.lock().values().cloned().collect();
        for sub in subs {
            sub.set_reader(reader.clone());
            let acl = self.0.backplane.info(&sub.topic).await?.and_then(|i| i.acl);
            if !self
                .rules()
                .policy
                .may_read(reader, &sub.topic, acl.as_ref())
            {
                self.0.fanout.forbid(self, &sub);
            }
        }
        Ok(())
    }

    /// Ends a session's subscription; false when there was none.
    pub async fn unsubscribe(&self, session: &Arc<Session>, topic: &str) -> bool {
        let removed = session.subs.lock().remove(topic);
        match removed {
            Some(sub) => {
                sub.end();
                self.detach(session.id, &sub).await;
                true
            }
            None => false,
        }
    }

    /// Ends every subscription of a closing connection.
    pub async fn close_session(&self, session: &Arc<Session>) {
        let subs: Vec<_> = session.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in subs {
            sub.end();
            self.detach(session.id, &sub).await;
        }
    }

    pub(crate) async fn drop_subscription(&self, session: &Arc<Session>, sub: &Arc<Subscription>) {
        sub.end();
        {
            let mut subs = session.subs.lock();
            if subs.get(&sub.topic).is_some_and(|s| Arc::ptr_eq(s, sub)) {
                subs.remove(&sub.topic);
            }
        }
        self.detach(session.id, sub).await;
    }

    async fn detach(&self, session: u64, sub: &Arc<Subscription>) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
        if self.0.fanout.remove(session, sub) {
            self.0.backplane.unwatch(&sub.topic).await;
            self.rules().interest.unwanted(&sub.topic);
        }
    }

    /// Subscriptions open on this node.
    pub fn subscription_count(&self) -> usize {
        self.0.subscriptions.load(Ordering::Relaxed)
    }

    /// Local subscribers of one topic.
    pub fn local_subscribers(&self, topic: &str) -> usize {
        self.0.fanout.subscriber_count(topic)
    }

    /// Reports this node's presence to the backplane (called periodically).
    pub async fn report_presence(&self, connections: usize) -> Result<(), BackplaneError> {
        let topics = self.0.fanout.topic_counts();
        self.0.backplane.report_presence(connections, &topics).await
    }

    /// A read for a repair: the backplane may just be coming back (a repair often
    /// follows an outage), so unavailability is retried with backoff for a while.
    async fn read_patiently(
        &self,
        topic: &str,
        since: Option<u64>,
    ) -> Result<TopicRead, BackplaneError> {
        let mut wait = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            match self.0.backplane.read(topic, since).await {
                Err(BackplaneError::Unavailable(_)) if waited < REPAIR_PATIENCE => {
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Replays what a subscription is missing, then makes it live.
    async fn sync(
        &self,
        sub: &Arc<Subscription>,
        mut resume: Resume,
    ) -> Result<(), SubscribeError> {
        let timeout = self.0.config.replay_timeout;
        let send = |item: Delivery| sub.outbox.push_wait(item, timeout);
        for _ in 0..MAX_SYNC_ROUNDS {
            let since = match &resume {
                Resume::Subscribe { since, .. } => *since,
                Resume::Repair { from, .. } => Some(*from),
            };
            let read = match &resume {
                Resume::Subscribe { .. } => self.0.backplane.read(&sub.topic, since).await?,
                Resume::Repair { .. } => self.read_patiently(&sub.topic, since).await?,
            };
            if let Resume::Subscribe { .. } = &resume {
                let rules = self.rules();
                if !rules
                    .policy
                    .may_read(&sub.reader(), &sub.topic, read.acl.as_ref())
                {
                    return Err(SubscribeError::Forbidden(sub.topic.to_string()));
                }
                rules.interest.wanted(&sub.topic)?;
            }
            // (announce a `subscribed`, recovered, replay history rather than snapshot)
            let (announce, recovered, replay) = match &resume {
                Resume::Subscribe { since: None, .. } => (true, true, false),
                Resume::Subscribe { since, epoch } => {
                    let ok = read.resumes(*since, epoch.as_deref());
                    (true, ok, ok)
                }
                Resume::Repair { from, epoch } => {
                    let ok = *epoch == read.epoch && read.covers(*from);
                    (!ok, false, ok)
                }
            };
            if announce {
                let info = SubscribedInfo {
                    topic: sub.topic.clone(),
                    seq: read.latest_seq,
                    epoch: read.epoch.clone(),
                    recovered,
                };
                send(Delivery::Subscribed(Box::new(info)))
                    .await
                    .map_err(|_| SubscribeError::Closed)?;
            }
            let last_seq = if replay {
                let start = since.unwrap_or(0);
                let last = read.events.last().map_or(start, |e| e.seq);
                for event in read.events {
                    send(Delivery::Event(event))
                        .await
                        .map_err(|_| SubscribeError::Closed)?;
                }
                last
            } else {
                if let Some(snapshot) = read.snapshot {
                    send(Delivery::frame(snapshot))
                        .await
                        .map_err(|_| SubscribeError::Closed)?;
                }
                read.latest_seq
            };
            match sub.finish_sync(last_seq, &read.epoch) {
                SyncStep::Live => return Ok(()),
                SyncStep::Ended => return Err(SubscribeError::Closed),
                SyncStep::Again { last_seq } => {
                    resume = Resume::Repair {
                        from: last_seq,
                        epoch: read.epoch,
                    }
                }
            }
        }
        Err(SubscribeError::Backplane(BackplaneError::Unavailable(
            "subscription could not catch up with the topic".into(),
        )))
    }
}

#[cfg(test)]
mod tests;
