//! One GraphQL subscription field's hub subscription, as a stream of events.
//!
//! [`Feed::open`] gives the field its own hub [`Session`] and bounded [`Outbox`]
//! (a GraphQL connection may watch one topic through several fields, and a hub
//! session holds one subscription per topic), checks the topic's ACL through the
//! gate and subscribes with the optional `since`: the hub replays every event
//! after it, gap-free, before live ones. Without `since` the feed starts with the
//! next live event: the `subscribed` notice and the snapshot the hub queues first
//! are skipped (a GraphQL subscription carries changes; the current state is a
//! query).
//!
//! Overflow follows the hub's policy: the fan-out never waits, so when the
//! transport stops pulling (its socket is slow) the outbox fills and the hub closes
//! it as a slow consumer; the feed then ends with [`FeedEnded`], whose message
//! names the last seq delivered so the client can subscribe again with `since`.
//! Dropping the feed leaves the hub.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::app::AppState;
use crate::auth::User;
use crate::hub::{CloseReason, Delivery, Hub, Outbox, Session, StampedEvent, SubscribeError};
use crate::ws::driver::{subscribe_topic, BudgetPermit};

/// A hub event as the GraphQL types read it: the stamped event's typed body
/// (parsed at most once per node), not its frame.
#[derive(Debug, Clone)]
pub struct HubEvent {
    pub event_type: String,
    pub topic: String,
    pub seq: u64,
    pub timestamp: String,
    pub data: Arc<Map<String, Value>>,
}

impl HubEvent {
    /// The GraphQL view of a stamped event.
    pub fn decode(event: &StampedEvent) -> Option<HubEvent> {
        Some(HubEvent {
            event_type: event.event_type.to_string(),
            topic: event.topic.to_string(),
            seq: event.seq,
            timestamp: event.timestamp().to_owned(),
            data: event.data().clone(),
        })
    }

    pub fn str(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub fn uint(&self, key: &str) -> Option<u64> {
        self.data.get(key).and_then(Value::as_u64)
    }
}

/// Why a feed stopped before its client unsubscribed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedEnded {
    #[error(
        "Slow consumer: this subscription fell too far behind and was ended; \
         subscribe again with since: {0}"
    )]
    SlowConsumer(u64),
    #[error(
        "The subscription lost its place in the topic (backplane unavailable); \
         subscribe again with since: {0}"
    )]
    Resync(u64),
    #[error("The server is shutting down")]
    Shutdown,
    /// The topic's ACL changed and no longer admits this subscriber.
    #[error("Forbidden: {0}")]
    Forbidden(String),
}

/// Leaves the hub when the feed is dropped (the transport stopped the stream).
struct Leave {
    hub: Hub,
    session: Arc<Session>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.session.outbox.close(CloseReason::ClientClosed);
        // Leaving is async; without a runtime (the process is ending) there is
        // nothing left to leave.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let hub = self.hub.clone();
            let session = self.session.clone();
            runtime.spawn(async move { hub.close_session(&session).await });
        }
    }
}

pub struct Feed {
    rx: crate::hub::outbox::Receiver,
    outbox: Arc<Outbox>,
    /// The last seq handed out (the resume point named by [`FeedEnded`]).
    last_seq: u64,
    ended: bool,
    _leave: Leave,
    /// The feed's place in its connection's subscription budget.
    _permit: Option<BudgetPermit>,
}

impl Feed {
    /// Subscribes to `topic` for `user` through the driver's one subscribe (ACL,
    /// canonical topic, the stack's poller), replaying after `since` when given;
    /// `permit` is its place in the connection's subscription budget.
    pub async fn open(
        state: &AppState,
        user: &User,
        topic: &str,
        since: Option<u64>,
        permit: Option<BudgetPermit>,
    ) -> Result<Feed, SubscribeError> {
        let (outbox, rx) = Outbox::new(state.config.queue_size);
        let session = state.hub.open_session(outbox.clone());
        let leave = Leave {
            hub: state.hub.clone(),
            session: session.clone(),
        };
        subscribe_topic(state, &session, user, topic, since, None).await?;
        Ok(Feed {
            rx,
            outbox,
            last_seq: since.unwrap_or(0),
            ended: false,
            _leave: leave,
            _permit: permit,
        })
    }

    /// The next event, `Err` once when the hub ended the subscription, then `None`.
    pub async fn next(&mut self) -> Option<Result<HubEvent, FeedEnded>> {
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                biased;
                item = self.rx.recv() => match item {
                    Some(Delivery::Event(event)) => {
                        let Some(decoded) = HubEvent::decode(&event) else { continue };
                        self.last_seq = decoded.seq;
                        return Some(Ok(decoded));
                    }
                    // `subscribed` and the snapshot: not part of a GraphQL stream.
                    Some(Delivery::Subscribed(_) | Delivery::Frame(_) | Delivery::Rest(_)) => continue,
                    Some(Delivery::Forbidden(topic)) => {
                        self.ended = true;
                        return Some(Err(FeedEnded::Forbidden(topic.to_string())));
                    }
                    None => return None,
                },
                reason = self.outbox.closing() => {
                    self.ended = true;
                    return match reason {
                        CloseReason::SlowConsumer => Some(Err(FeedEnded::SlowConsumer(self.last_seq))),
                        CloseReason::Resync => Some(Err(FeedEnded::Resync(self.last_seq))),
                        CloseReason::Shutdown => Some(Err(FeedEnded::Shutdown)),
                        _ => None,
                    };
                }
            }
        }
    }

    /// The feed as a stream of `T`, keeping the events `convert` accepts.
    pub fn into_stream<T, F>(
        self,
        convert: F,
    ) -> impl futures_util::Stream<Item = Result<T, FeedEnded>> + Send + 'static
    where
        T: Send + 'static,
        F: Fn(&HubEvent) -> Option<T> + Send + Sync + 'static,
    {
        futures_util::stream::unfold((self, convert), |(mut feed, convert)| async move {
            loop {
                match feed.next().await? {
                    Ok(event) => {
                        if let Some(item) = convert(&event) {
                            return Some((Ok(item), (feed, convert)));
                        }
                    }
                    Err(ended) => return Some((Err(ended), (feed, convert))),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use stackpulse_protocol::PublishRequest;

    fn status(topic: &str, status: &str) -> PublishRequest {
        let body = serde_json::json!({"type": "deployment.status", "deployment_id": topic, "data": {"status": status}});
        PublishRequest::from_json(body.to_string().as_bytes()).expect("valid")
    }

    #[tokio::test]
    async fn an_unread_feed_ends_as_a_slow_consumer_naming_its_resume_point() {
        let config = Config {
            queue_size: 4,
            ..Config::default()
        };
        let state = crate::server::build_state(config).expect("state");
        let user = User::anonymous();
        let mut feed = Feed::open(&state, &user, "T", None, None)
            .await
            .expect("open");
        // `subscribed` takes one place of four: seqs 1-3 fit, 4 overflows.
        for i in 0..10 {
            state
                .hub
                .publish(status("T", &format!("s{i}")))
                .await
                .expect("publish");
        }
        for seq in 1..=3 {
            let event = feed.next().await.expect("item").expect("event");
            assert_eq!(
                (event.seq, event.event_type.as_str()),
                (seq, "deployment.status")
            );
        }
        let ended = feed.next().await.expect("item").expect_err("ended");
        assert!(matches!(ended, FeedEnded::SlowConsumer(3)), "{ended:?}");
        assert!(ended.to_string().contains("since: 3"), "{ended}");
        assert!(feed.next().await.is_none());
    }

    #[tokio::test]
    async fn since_replays_history_and_a_dropped_feed_leaves_the_hub() {
        let state = crate::server::build_state(Config::default()).expect("state");
        for s in ["a", "b", "c"] {
            state.hub.publish(status("R", s)).await.expect("publish");
        }
        let user = User::anonymous();
        let feed = Feed::open(&state, &user, "R", Some(1), None)
            .await
            .expect("open");
        assert_eq!(state.hub.local_subscribers("R"), 1);
        let mut stream = Box::pin(feed.into_stream(|e| e.str("status")));
        use futures_util::StreamExt;
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some("b".into())));
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some("c".into())));
        drop(stream);
        for _ in 0..100 {
            if state.hub.local_subscribers("R") == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped feed is still subscribed");
    }
}
