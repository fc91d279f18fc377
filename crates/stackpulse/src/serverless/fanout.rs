//! Fan-out in serverless mode: a stored event goes to every subscriber of its topic.
//!
//! One `Query` lists the topic's subscriptions (with each subscriber's user and
//! token expiry); the event's frame (serialized once, at publish) is posted to
//! each, at most [`CONCURRENCY`] posts at a time. On the way:
//! - a subscription still replaying, or whose subscribe already sent this seq,
//!   is skipped (see [`super::ws`]);
//! - a subscriber whose token expired is closed and forgotten;
//! - an event that changes the topic's ACL is checked against each subscriber
//!   with the hub's topic policy: one the new ACL does not admit gets
//!   `{"type":"error","code":403,…}` instead and its subscription ends;
//! - a connection that is gone (410) is deleted with its subscriptions.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use stackpulse_protocol::ServerMessage;

use super::post::{PostError, Poster};
use super::store::{Store, Subscriber};
use crate::hub::dynamo::{now_secs, Broadcast};
use crate::hub::{CloseReason, Hub, Reader, StampedEvent};

/// Posts in flight at once per published event.
pub const CONCURRENCY: usize = 32;

/// The serverless [`Broadcast`].
pub struct Fanout {
    pub store: Store,
    pub poster: Arc<dyn Poster>,
    pub hub: Hub,
}

#[async_trait]
impl Broadcast for Fanout {
    async fn broadcast(&self, event: &Arc<StampedEvent>) {
        let subscribers = match self.store.subscribers(&event.topic).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, topic = %event.topic, "fan-out could not list subscribers");
                return;
            }
        };
        stream::iter(subscribers)
            .for_each_concurrent(CONCURRENCY, |sub| self.deliver(event, sub))
            .await;
    }
}

impl Fanout {
    async fn deliver(&self, event: &Arc<StampedEvent>, sub: Subscriber) {
        let id = sub.connection_id.as_str();
        // Still syncing, or already sent by its subscribe: not ours to post.
        if sub.live_after.is_none_or(|after| event.seq <= after) {
            return;
        }
        if sub.expires_at.is_some_and(|e| e <= now_secs()) {
            self.poster.close(id, CloseReason::TokenExpired).await;
            self.forget(id).await;
            return;
        }
        if let Some(acl) = &event.acl {
            let reader = Reader::User(sub.user.clone());
            if !self.hub.may_read(&reader, &event.topic, Some(acl)) {
                let refusal = ServerMessage::Error {
                    code: 403,
                    message: format!("Forbidden: {}", event.topic),
                    deployment_id: Some(event.topic.to_string()),
                };
                if let Err(e) = self.store.remove_subscription(id, &event.topic).await {
                    tracing::warn!(error = %e, "could not end a forbidden subscription");
                }
                self.post(id, &refusal.to_json()).await;
                return;
            }
        }
        self.post(id, event.frame.as_str()).await;
    }

    /// Posts one frame; a gone connection is forgotten.
    pub async fn post(&self, id: &str, frame: &str) {
        metrics::counter!("stackpulse_serverless_posts_total").increment(1);
        match self.poster.post(id, frame).await {
            Ok(()) => {}
            Err(PostError::Gone) => self.forget(id).await,
            Err(e) => tracing::warn!(error = %e, "post to a connection failed"),
        }
    }

    async fn forget(&self, id: &str) {
        metrics::counter!("stackpulse_serverless_gone_total").increment(1);
        if let Err(e) = self.store.delete_connection(id).await {
            tracing::warn!(error = %e, "could not delete a gone connection");
        }
    }
}
