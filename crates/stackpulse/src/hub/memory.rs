//! The embedded, single-node backplane: every topic in a map in this process.
//!
//! Publish takes the topic's lock, assigns the next seq, appends to the bounded
//! history, folds the snapshot and calls the local [`Deliver`] sink, all under that
//! lock, so deliveries of one topic leave in seq order and a concurrent
//! [`read`](Backplane::read) sees either all or none of an event. A sweeper
//! ([`MemoryBackplane::sweep`]) drops a topic's history once `retention` has passed
//! since its last event; a topic nobody watches is then forgotten, and its counter
//! starts again under a new epoch.
//!
//! A topic is created by its first publish or its first local watcher (at most
//! `max_topics` of them); a topic nobody published to is forgotten as soon as its
//! last watcher leaves, so subscribing to made-up names leaves nothing behind.
//! Reading a topic that does not exist stores nothing: it reads as seq 0 in the
//! [unborn epoch](super::UNBORN_EPOCH).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use stackpulse_protocol::Acl;

use super::backplane::{Backplane, BackplaneError, Deliver, Draft, Lease, TopicInfo, TopicRead};
use super::event::StampedEvent;
use super::snapshot::Snapshot;
use super::HistoryConfig;

struct MemTopic {
    name: Arc<str>,
    epoch: Arc<str>,
    seq: u64,
    history: VecDeque<Arc<StampedEvent>>,
    snapshot: Snapshot,
    /// The snapshot encoded once, until the next event changes it.
    snapshot_frame: Option<Utf8Bytes>,
    acl: Option<Acl>,
    last_event_at: Instant,
    /// Dropped from the map (never published, last watcher gone): a publish that
    /// got this handle just before must take a fresh one.
    removed: bool,
}

impl MemTopic {
    fn new(name: Arc<str>, now: Instant) -> MemTopic {
        MemTopic {
            name,
            epoch: new_epoch(),
            seq: 0,
            history: VecDeque::new(),
            snapshot: Snapshot::default(),
            snapshot_frame: None,
            acl: None,
            last_event_at: now,
            removed: false,
        }
    }

    fn first_retained(&self) -> u64 {
        self.history.front().map_or(self.seq + 1, |e| e.seq)
    }
}

struct LeaseEntry {
    token: u64,
    /// Tokio's clock, so lease expiry can be tested with paused time.
    expires: tokio::time::Instant,
}

pub struct MemoryBackplane {
    topics: DashMap<Arc<str>, Arc<Mutex<MemTopic>>>,
    /// Local subscriptions' interest per topic; a watched topic is never forgotten.
    watched: DashMap<Arc<str>, usize>,
    leases: Mutex<(u64, HashMap<String, LeaseEntry>)>,
    history: HistoryConfig,
    sink: Arc<dyn Deliver>,
}

/// A short random epoch; distinct per counter incarnation.
pub fn new_epoch() -> Arc<str> {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 8).into()
}

impl MemoryBackplane {
    pub fn new(history: HistoryConfig, sink: Arc<dyn Deliver>) -> MemoryBackplane {
        MemoryBackplane {
            topics: DashMap::new(),
            watched: DashMap::new(),
            leases: Mutex::new((0, HashMap::new())),
            history,
            sink,
        }
    }

    /// The topic, created if it is new and the node has room for it.
    fn topic_or_create(&self, name: &str) -> Result<Arc<Mutex<MemTopic>>, BackplaneError> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t.clone());
        }
        let max = self.history.max_topics;
        if self.topics.len() >= max {
            return Err(BackplaneError::TopicLimit(max));
        }
        let name: Arc<str> = Arc::from(name);
        Ok(self
            .topics
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(MemTopic::new(name, Instant::now()))))
            .clone())
    }

    /// Applies the retention rule at `now`: history older than `retention` after a
    /// topic's last event is dropped; unwatched topics are then forgotten.
    pub fn sweep(&self, now: Instant) {
        let retention = self.history.retention;
        self.topics.retain(|name, topic| {
            let mut t = topic.lock();
            if now.saturating_duration_since(t.last_event_at) < retention {
                return true;
            }
            t.history.clear();
            self.watched.contains_key(name)
        });
    }

    /// Stamps, stores and delivers `draft` in `handle`'s topic; `None` when that
    /// topic was forgotten meanwhile.
    fn publish_into(
        &self,
        handle: &Arc<Mutex<MemTopic>>,
        draft: &Draft,
    ) -> Option<Arc<StampedEvent>> {
        let mut t = handle.lock();
        if t.removed {
            return None;
        }
        t.seq += 1;
        let seq = t.seq;
        let timestamp = stackpulse_protocol::time::now();
        let event = Arc::new(
            StampedEvent::new(
                t.name.clone(),
                seq,
                t.epoch.clone(),
                &draft.event_type,
                &timestamp,
                &draft.data,
            )
            .with_acl(draft.acl.clone()),
        );
        t.history.push_back(event.clone());
        while t.history.len() > self.history.max_events {
            t.history.pop_front();
        }
        t.snapshot
            .apply(seq, &timestamp, &draft.event_type, &draft.data);
        t.snapshot_frame = None;
        if draft.acl.is_some() {
            t.acl = draft.acl.clone();
        }
        t.last_event_at = Instant::now();
        self.sink.deliver(&event);
        Some(event)
    }

    fn read_now(&self, topic: &str, since: Option<u64>) -> Result<TopicRead, BackplaneError> {
        let Some(handle) = self.topics.get(topic).map(|e| e.clone()) else {
            return Ok(TopicRead::unborn());
        };
        let mut t = handle.lock();
        let events = match since {
            Some(since) => t
                .history
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if t.snapshot_frame.is_none() && t.seq > 0 {
            t.snapshot_frame = Some(t.snapshot.encode(topic, self.history.snapshot_budget));
        }
        Ok(TopicRead {
            epoch: t.epoch.clone(),
            latest_seq: t.seq,
            first_retained: t.first_retained(),
            events,
            snapshot: t.snapshot_frame.clone(),
            acl: t.acl.clone(),
        })
    }

    fn watch_now(&self, topic: &str) -> Result<(), BackplaneError> {
        // The topic exists while watched, so its epoch is fixed for its subscribers.
        self.topic_or_create(topic)?;
        *self.watched.entry(Arc::from(topic)).or_insert(0) += 1;
        Ok(())
    }

    fn unwatch_now(&self, topic: &str) {
        let last = self
            .watched
            .remove_if_mut(topic, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            })
            .is_some();
        if last {
            self.topics.remove_if(topic, |_, t| {
                let mut t = t.lock();
                t.removed = t.seq == 0;
                t.removed
            });
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(
        &self,
        topic: &str,
        draft: Draft,
    ) -> Result<Arc<StampedEvent>, BackplaneError> {
        if let Some(lease) = &draft.fence {
            let leases = self.leases.lock();
            let held = leases
                .1
                .get(&lease.name)
                .is_some_and(|e| e.token == lease.token && e.expires > tokio::time::Instant::now());
            if !held {
                return Err(BackplaneError::Fenced(lease.name.clone()));
            }
        }
        loop {
            // A topic forgotten between the lookup and its lock (it had no event, so
            // nothing is lost) is looked up again: the next lookup creates it anew.
            if let Some(event) = self.publish_into(&self.topic_or_create(topic)?, &draft) {
                return Ok(event);
            }
        }
    }

    async fn read(&self, topic: &str, since: Option<u64>) -> Result<TopicRead, BackplaneError> {
        self.read_now(topic, since)
    }

    async fn watch(&self, topic: &str) -> Result<(), BackplaneError> {
        self.watch_now(topic)
    }

    async fn unwatch(&self, topic: &str) {
        self.unwatch_now(topic)
    }

    async fn info(&self, topic: &str) -> Result<Option<TopicInfo>, BackplaneError> {
        let Some(handle) = self.topics.get(topic).map(|e| e.clone()) else {
            return Ok(None);
        };
        let t = handle.lock();
        Ok(Some(TopicInfo {
            epoch: t.epoch.clone(),
            latest_seq: t.seq,
            retained: t.history.len(),
            snapshot: (t.seq > 0).then(|| t.snapshot.data().clone()),
            snapshot_type: t.snapshot.event_type(),
            acl: t.acl.clone(),
        }))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackplaneError> {
        let now = tokio::time::Instant::now();
        let mut guard = self.leases.lock();
        let (counter, leases) = &mut *guard;
        if leases.get(name).is_some_and(|e| e.expires > now) {
            return Ok(None);
        }
        *counter += 1;
        leases.insert(
            name.to_owned(),
            LeaseEntry {
                token: *counter,
                expires: now + ttl,
            },
        );
        Ok(Some(Lease {
            name: name.to_owned(),
            token: *counter,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackplaneError> {
        let now = tokio::time::Instant::now();
        let mut guard = self.leases.lock();
        match guard.1.get_mut(&lease.name) {
            Some(e) if e.token == lease.token && e.expires > now => {
                e.expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn wake(&self, topic: &str) -> Result<(), BackplaneError> {
        self.sink.wake(topic);
        Ok(())
    }

    async fn release_lease(&self, lease: &Lease) {
        let mut guard = self.leases.lock();
        if guard
            .1
            .get(&lease.name)
            .is_some_and(|e| e.token == lease.token)
        {
            guard.1.remove(&lease.name);
        }
    }

    fn topic_count(&self) -> usize {
        self.topics.len()
    }

    async fn ready(&self) -> Result<(), BackplaneError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64)>>);
    impl Deliver for Recorder {
        fn deliver(&self, event: &Arc<StampedEvent>) {
            self.0.lock().push((event.topic.to_string(), event.seq));
        }
    }

    fn draft(status: &str) -> Draft {
        let Value::Object(data) = json!({ "status": status }) else {
            unreachable!()
        };
        Draft {
            event_type: "deployment.status".into(),
            data,
            acl: None,
            fence: None,
        }
    }

    fn backplane(max_events: usize, retention: Duration) -> (MemoryBackplane, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        (
            MemoryBackplane::new(
                HistoryConfig {
                    max_events,
                    retention,
                    max_topics: 1000,
                    snapshot_budget: 1 << 20,
                },
                rec.clone(),
            ),
            rec,
        )
    }

    #[tokio::test]
    async fn seqs_are_contiguous_per_topic_and_delivered_in_order() {
        let (bp, rec) = backplane(100, Duration::from_secs(60));
        for i in 0..5 {
            bp.publish("A", draft(&format!("a{i}")))
                .await
                .expect("publish");
            bp.publish("B", draft(&format!("b{i}")))
                .await
                .expect("publish");
        }
        let seen = rec.0.lock().clone();
        let a: Vec<u64> = seen
            .iter()
            .filter(|(t, _)| t == "A")
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5]);
        let read = bp.read("B", Some(2)).await.expect("read");
        assert_eq!(
            read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(read.latest_seq, 5);
        assert!(read.covers(0));
    }

    #[tokio::test]
    async fn history_is_bounded_by_count() {
        let (bp, _) = backplane(3, Duration::from_secs(60));
        for i in 0..10 {
            bp.publish("A", draft(&format!("{i}")))
                .await
                .expect("publish");
        }
        let read = bp.read("A", Some(0)).await.expect("read");
        assert_eq!(
            read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(read.first_retained, 8);
        assert!(!read.covers(5), "events 6 and 7 are gone");
        assert!(read.covers(7));
        assert!(read.covers(10));
        assert!(
            !read.covers(11),
            "a since beyond the latest seq is not a resume"
        );
    }

    #[tokio::test]
    async fn snapshot_follows_the_latest_event() {
        let (bp, _) = backplane(3, Duration::from_secs(60));
        assert!(bp.read("A", None).await.expect("read").snapshot.is_none());
        bp.publish("A", draft("deploying")).await.expect("publish");
        bp.publish("A", draft("done")).await.expect("publish");
        let snap = bp
            .read("A", None)
            .await
            .expect("read")
            .snapshot
            .expect("snapshot");
        let v: Value = serde_json::from_str(snap.as_str()).expect("json");
        assert_eq!(v["type"], "deployment.snapshot");
        assert_eq!(v["seq"], 2);
        assert_eq!(v["data"]["status"], "done");
    }

    #[tokio::test]
    async fn retention_forgets_unwatched_topics_and_changes_the_epoch() {
        let (bp, _) = backplane(100, Duration::from_secs(10));
        bp.publish("A", draft("x")).await.expect("publish");
        bp.publish("W", draft("x")).await.expect("publish");
        bp.watch("W").await.expect("watch");
        let epoch_a = bp.read("A", None).await.expect("read").epoch;
        let epoch_w = bp.read("W", None).await.expect("read").epoch;
        bp.sweep(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            bp.topic_count(),
            2,
            "nothing expires before the retention time"
        );
        bp.sweep(Instant::now() + Duration::from_secs(11));
        assert!(bp.info("A").await.expect("info").is_none());
        let w = bp.read("W", Some(0)).await.expect("read");
        assert_eq!(w.epoch, epoch_w, "a watched topic keeps its counter");
        assert_eq!(w.latest_seq, 1);
        assert!(
            w.events.is_empty() && !w.covers(0),
            "but its history is gone"
        );
        let again = bp.read("A", None).await.expect("read");
        assert_ne!(again.epoch, epoch_a);
        assert_eq!(again.latest_seq, 0);
    }

    #[tokio::test]
    async fn leases_are_exclusive_and_fence_publishes() {
        let (bp, _) = backplane(10, Duration::from_secs(60));
        let ttl = Duration::from_millis(50);
        let first = bp
            .acquire_lease("poll:s", ttl)
            .await
            .expect("ok")
            .expect("granted");
        assert!(bp.acquire_lease("poll:s", ttl).await.expect("ok").is_none());
        assert!(bp.renew_lease(&first, ttl).await.expect("ok"));
        let mut d = draft("x");
        d.fence = Some(first.clone());
        bp.publish("s", d.clone())
            .await
            .expect("holder may publish");
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(80)).await;
        let second = bp
            .acquire_lease("poll:s", ttl)
            .await
            .expect("ok")
            .expect("expired lease is free");
        assert!(second.token > first.token);
        assert!(!bp.renew_lease(&first, ttl).await.expect("ok"));
        assert!(matches!(
            bp.publish("s", d).await,
            Err(BackplaneError::Fenced(_))
        ));
        assert_eq!(
            bp.read("s", None).await.expect("read").latest_seq,
            1,
            "a fenced publish uses no seq"
        );
        bp.release_lease(&second).await;
        assert!(bp.acquire_lease("poll:s", ttl).await.expect("ok").is_some());
    }
}
