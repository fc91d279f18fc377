//! Multi-stack deployments: `POST /v1/deployments` tracks several stacks under one
//! topic.
//!
//! A deployment (`{deployment_id, stacks:[{name, region, environment}]}`) is a
//! source like the stack pollers: it reads the hub and publishes into it, and knows
//! nothing of sockets. [`Deployments::start`]:
//! 1. takes the backplane lease `deployment:<id>` (one follower per deployment
//!    cluster-wide; a second start of a running deployment is refused);
//! 2. subscribes an internal hub session to every stack's topic (`stack:<name>` or
//!    `stack:<region>:<name>`) from its current seq, so only what happens from now
//!    on counts; as a local subscriber (read by the server itself), it makes the
//!    hub's topic interest start each stack's poller, which runs while the
//!    deployment does;
//! 3. publishes the first `deployment.status` on the deployment's topic (with the
//!    request's ACL), then follows the stacks' events through [`progress::Progress`]
//!    and publishes what it says, fenced by the lease, until the deployment ends
//!    (every stack deployed, or the first failure), its time is up
//!    (`--deployment-timeout`: the stacks still running fail), the lease is lost,
//!    or the server shuts down.
//!
//! A stack's operation counts when its completion is published after the start: a
//! stack that ended before and is not touched again makes the deployment wait (a
//! stack that was never tracked is looked at once, and its latest operation counts).
//! If the node following a deployment dies, nobody resumes it: start it again.
//!
//! # Layout
//! - [`request`]: the request body and its validation.
//! - [`progress`]: stack events → deployment events (pure).

pub mod progress;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use stackpulse_cfn::TrackerMessage;

use crate::hub::{
    BackplaneError, CloseReason, Delivery, Draft, Hub, Lease, Outbox, Reader, Session,
    StampedEvent, SubscribeError,
};
use crate::tracking::events::{from_hub, to_hub, Origin, STACK_SNAPSHOT};
use crate::tracking::{StackTopic, Tracking};
use progress::{Out, Progress};
use request::DeploymentRequest;

/// Stack events buffered for one deployment before it is considered stuck.
const QUEUE: usize = 4096;
/// Deployments one node follows at once (each may keep 50 stack pollers busy).
pub const MAX_RUNNING: usize = 256;

/// Settings of deployment followers.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentsConfig {
    /// How long a deployment may run before its remaining stacks are failed.
    pub timeout: Duration,
    /// The follower's lease lifetime (renewed every third of it).
    pub lease_ttl: Duration,
}

/// Why a deployment could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Deployment {0} is already being tracked")]
    AlreadyRunning(String),
    #[error("Cannot track {topic}: {reason}")]
    Subscribe { topic: String, reason: String },
    #[error("Invalid stacks: {0}")]
    Invalid(String),
    #[error("Too many deployments followed by this node (limit {0})")]
    TooMany(usize),
    #[error("Service unavailable: {0}")]
    Unavailable(String),
}

/// What a started deployment answers with.
#[derive(Debug, Clone)]
pub struct Started {
    /// The seq of the first `deployment.status`.
    pub seq: u64,
    /// The hub topic of each stack, in the request's order.
    pub stack_topics: Vec<String>,
}

/// The deployment followers of this node.
pub struct Deployments {
    hub: Hub,
    tracking: Arc<Tracking>,
    config: DeploymentsConfig,
    /// Deployments followed here (a second start is refused at once).
    running: DashMap<String, ()>,
    /// The server's task tracker: shutdown waits for followers to give their
    /// leases back.
    tasks: TaskTracker,
}

impl Deployments {
    pub fn new(
        hub: Hub,
        tracking: Arc<Tracking>,
        tasks: TaskTracker,
        config: DeploymentsConfig,
    ) -> Arc<Deployments> {
        Arc::new(Deployments {
            hub,
            tracking,
            config,
            running: DashMap::new(),
            tasks,
        })
    }

    /// Starts following a deployment; returns once its first `deployment.status` is
    /// published. The follower stops at the end of the deployment or at `shutdown`.
    pub async fn start(
        self: &Arc<Self>,
        req: DeploymentRequest,
        shutdown: CancellationToken,
    ) -> Result<Started, StartError> {
        let id = req.deployment_id.clone();
        if self.running.len() >= MAX_RUNNING {
            return Err(StartError::TooMany(MAX_RUNNING));
        }
        if self.running.insert(id.clone(), ()).is_some() {
            return Err(StartError::AlreadyRunning(id));
        }
        // In a task of its own: a request dropped half-way (the client went away)
        // must neither strand the id in `running` nor leave its subscriptions.
        let this = self.clone();
        let started = tokio::spawn(async move {
            let result = this.try_start(req, shutdown).await;
            if result.is_err() {
                this.running.remove(&id);
            }
            result
        });
        match started.await {
            Ok(result) => result,
            Err(e) => Err(StartError::Unavailable(format!(
                "deployment start failed: {e}"
            ))),
        }
    }

    async fn try_start(
        self: &Arc<Self>,
        req: DeploymentRequest,
        shutdown: CancellationToken,
    ) -> Result<Started, StartError> {
        let id = req.deployment_id.clone();
        let backplane = self.hub.backplane().clone();
        let lease = match backplane
            .acquire_lease(&format!("deployment:{id}"), self.config.lease_ttl)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return Err(StartError::AlreadyRunning(id)),
            Err(e) => return Err(StartError::Unavailable(e.to_string())),
        };
        let (session, rx, started) = match self.subscribe_and_announce(&req, &lease).await {
            Ok(ok) => ok,
            Err(e) => {
                backplane.release_lease(&lease).await;
                return Err(e);
            }
        };
        let default_region = self.tracking.aws().default_region().await;
        let progress = Progress::new(req.stacks, default_region);
        let topics = started.stack_topics.clone();
        let this = self.clone();
        self.tasks.spawn(async move {
            this.follow(&id, progress, &topics, &session, rx, &lease, shutdown)
                .await;
            this.hub.close_session(&session).await;
            this.hub.backplane().release_lease(&lease).await;
            this.running.remove(&id);
            tracing::info!(deployment = %id, "deployment follower stopped");
        });
        Ok(started)
    }

    async fn subscribe_and_announce(
        &self,
        req: &DeploymentRequest,
        lease: &Lease,
    ) -> Result<(Arc<Session>, crate::hub::outbox::Receiver, Started), StartError> {
        let (outbox, rx) = Outbox::new(QUEUE);
        let session = self.hub.open_session(outbox);
        let mut topics = Vec::with_capacity(req.stacks.len());
        for (i, spec) in req.stacks.iter().enumerate() {
            let topic = self
                .tracking
                .topic_for(&spec.name, spec.region.as_deref())
                .await;
            let refused = if topics.contains(&topic) {
                // `region` spelled out as the default one names the same stack.
                Some(StartError::Invalid(format!(
                    "stacks[{i}] is {topic} again (the server's default region is implied)"
                )))
            } else {
                self.subscribe_from_now(&session, &topic).await.err()
            };
            if let Some(e) = refused {
                self.hub.close_session(&session).await;
                return Err(e);
            }
            topics.push(topic);
        }
        let progress = Progress::new(req.stacks.clone(), String::new());
        let (event_type, data) = progress.status();
        let first = self
            .hub
            .publish_draft(
                &req.deployment_id,
                Draft {
                    event_type: event_type.to_owned(),
                    data,
                    acl: req.acl.clone(),
                    fence: Some(lease.clone()),
                },
            )
            .await;
        match first {
            Ok(event) => Ok((
                session,
                rx,
                Started {
                    seq: event.seq,
                    stack_topics: topics,
                },
            )),
            Err(e) => {
                self.hub.close_session(&session).await;
                Err(StartError::Unavailable(e.to_string()))
            }
        }
    }

    /// Subscribes the follower's session to a stack topic from its latest seq, so
    /// only what happens from now on counts.
    async fn subscribe_from_now(
        &self,
        session: &Arc<Session>,
        topic: &str,
    ) -> Result<(), StartError> {
        let refused = |reason: String| StartError::Subscribe {
            topic: topic.to_owned(),
            reason,
        };
        let position = self
            .hub
            .backplane()
            .read(topic, None)
            .await
            .map_err(|e| StartError::Unavailable(e.to_string()))?;
        self.hub
            .subscribe(
                session,
                topic,
                Some(position.latest_seq),
                Some(position.epoch.to_string()),
                &Arc::new(Reader::System),
            )
            .await
            .map_err(|e| match e {
                SubscribeError::Backplane(b) => StartError::Unavailable(b.to_string()),
                SubscribeError::TooMany(n) => refused(format!(
                    "a deployment follows at most {n} stacks here (--max-subscriptions)"
                )),
                other => refused(other.to_string()),
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        id: &str,
        mut progress: Progress,
        topics: &[String],
        session: &Arc<Session>,
        mut rx: crate::hub::outbox::Receiver,
        lease: &Lease,
        shutdown: CancellationToken,
    ) {
        let deadline = Instant::now() + self.config.timeout;
        let renew_every = self.config.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
        while !progress.finished() {
            let out = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => progress.give_up(&format!(
                    "Deployment {id} did not finish within {} s",
                    self.config.timeout.as_secs()
                )),
                reason = session.outbox.closing() => progress.give_up(match reason {
                    CloseReason::Resync => "The deployment lost its stacks' events while the backplane was away",
                    CloseReason::SlowConsumer => "The deployment fell too far behind its stacks' events",
                    _ => "The deployment's subscriptions were closed",
                }),
                _ = renew.tick() => {
                    match self.hub.backplane().renew_lease(lease, self.config.lease_ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(deployment = %id, "deployment lease lost; stopping");
                            return;
                        }
                        Err(e) => tracing::warn!(deployment = %id, error = %e, "cannot renew the deployment lease"),
                    }
                    continue;
                }
                item = rx.recv() => match item {
                    Some(Delivery::Event(event)) => stack_event(&mut progress, topics, &event),
                    // A resume that history could not cover is followed by the
                    // stack's snapshot: a completion missed meanwhile is in it.
                    Some(Delivery::Frame(frame)) => snapshot_completion(&mut progress, topics, frame.as_str()),
                    // (a system reader is never forbidden)
                    Some(Delivery::Subscribed(_) | Delivery::Forbidden(_) | Delivery::Rest(_)) => continue,
                    None => return,
                },
            };
            for (event_type, data) in out {
                if !self
                    .publish(id, event_type, data, lease, &shutdown, deadline)
                    .await
                {
                    return;
                }
            }
        }
    }

    /// Publishes one deployment event, retrying while the backplane is away; false
    /// when the lease was lost (another node follows the deployment now), at
    /// shutdown, or when the backplane stayed away past the deployment's deadline.
    async fn publish(
        &self,
        id: &str,
        event_type: &str,
        data: Map<String, Value>,
        lease: &Lease,
        shutdown: &CancellationToken,
        deadline: Instant,
    ) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            let draft = Draft {
                event_type: event_type.to_owned(),
                data: data.clone(),
                acl: None,
                fence: Some(lease.clone()),
            };
            match self.hub.publish_draft(id, draft).await {
                Ok(_) => return true,
                Err(BackplaneError::Fenced(_)) => {
                    tracing::warn!(deployment = %id, "deployment lease lost; stopping");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "cannot publish a deployment event; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::error!(deployment = %id, "backplane away until the deployment's deadline; giving up");
                    return false;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
            // Keep the lease while waiting (a renewal error is retried next time).
            if let Ok(false) = self
                .hub
                .backplane()
                .renew_lease(lease, self.config.lease_ttl)
                .await
            {
                tracing::warn!(deployment = %id, "deployment lease lost; stopping");
                return false;
            }
        }
    }
}

/// Feeds the completion a stack's snapshot shows (its last operation ended and
/// the stack is still in that state) to the progress, as the stack's own
/// `stack.deployed` / `stack.failed` would have been.
fn snapshot_completion(progress: &mut Progress, topics: &[String], frame: &str) -> Vec<Out> {
    let Ok(frame) = serde_json::from_str::<Value>(frame) else {
        return Vec::new();
    };
    if frame.get("type").and_then(Value::as_str) != Some(STACK_SNAPSHOT) {
        return Vec::new();
    }
    let topic = frame
        .get("deployment_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(index) = topics.iter().position(|t| t == topic) else {
        return Vec::new();
    };
    let Some(stack) = StackTopic::parse(topic) else {
        return Vec::new();
    };
    let timestamp = frame.get("timestamp").and_then(Value::as_str).unwrap_or("");
    let Some(data) = frame.get("data").and_then(Value::as_object) else {
        return Vec::new();
    };
    let origin = Origin {
        stack_name: stack.stack.clone(),
        environment: String::new(),
    };
    from_hub(STACK_SNAPSHOT, timestamp, data, &stack.stack)
        .into_iter()
        .filter(|m| matches!(m, TrackerMessage::DeploymentComplete(_)))
        .flat_map(|m| to_hub(&m, &origin))
        .flat_map(|(event_type, data)| progress.on_stack_event(index, event_type, &data))
        .collect()
}

/// Feeds one stack-topic event to the progress.
fn stack_event(progress: &mut Progress, topics: &[String], event: &StampedEvent) -> Vec<Out> {
    let Some(index) = topics.iter().position(|t| **t == *event.topic) else {
        return Vec::new();
    };
    progress.on_stack_event(index, &event.event_type, event.data())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::encode_frame;
    use crate::hub::snapshot::Snapshot;
    use progress::DEPLOYMENT_STATUS;
    use request::StackSpec;
    use stackpulse_cfn::{DeploymentComplete, ResourceSummary, ResourceUpdate, StackSummary};

    const TS: &str = "2026-12-03T10:00:00.000Z";

    /// Two stacks: `api` in the default region, `web` in eu-west-1.
    fn two_stacks() -> (Progress, Vec<String>) {
        let spec = |name: &str, region: Option<&str>| StackSpec {
            name: name.into(),
            region: region.map(str::to_owned),
            environment: None,
        };
        let progress = Progress::new(
            vec![spec("api", None), spec("web", Some("eu-west-1"))],
            "us-east-1".into(),
        );
        let topics = vec!["stack:api".to_owned(), "stack:eu-west-1:web".to_owned()];
        (progress, topics)
    }

    fn summary(name: &str, status: &str) -> StackSummary {
        StackSummary {
            name: name.into(),
            status: status.into(),
            ..StackSummary::default()
        }
    }

    /// The root stack's own row, the stack in `status`.
    fn root_row(name: &str, status: &str) -> TrackerMessage {
        TrackerMessage::ResourceUpdate(ResourceUpdate {
            timestamp: chrono::Utc::now(),
            resource: ResourceSummary {
                logical_id: name.into(),
                resource_type: "AWS::CloudFormation::Stack".into(),
                status: status.into(),
                ..ResourceSummary::default()
            },
            stack: summary(name, status),
            nested_stack: None,
            event_id: format!("ev-{status}"),
        })
    }

    fn completion(name: &str, success: bool, status: &str) -> TrackerMessage {
        TrackerMessage::DeploymentComplete(DeploymentComplete {
            success,
            stack: summary(name, status),
            outputs: vec![],
            duration_seconds: 3,
            root_cause: None,
        })
    }

    /// The `stack.snapshot` frame a late subscriber of `topic` gets after `msgs`
    /// were published there by the poller of `stack`.
    fn snapshot_frame(topic: &str, stack: &str, msgs: &[TrackerMessage]) -> String {
        let origin = Origin {
            stack_name: stack.into(),
            environment: "x".into(),
        };
        let mut snap = Snapshot::default();
        let mut seq = 0;
        for m in msgs {
            for (event_type, data) in to_hub(m, &origin) {
                seq += 1;
                snap.apply(seq, TS, event_type, &data);
            }
        }
        assert_eq!(snap.event_type(), STACK_SNAPSHOT);
        encode_frame(snap.event_type(), topic, seq, TS, snap.data())
            .as_str()
            .to_owned()
    }

    fn types(out: &[Out]) -> Vec<&'static str> {
        out.iter().map(|(t, _)| *t).collect()
    }

    fn status_of(out: &Out) -> (String, u64, u64) {
        assert_eq!(out.0, DEPLOYMENT_STATUS);
        (
            out.1["status"].as_str().unwrap_or_default().to_owned(),
            out.1["current_layer"].as_u64().unwrap_or(99),
            out.1["total_layers"].as_u64().unwrap_or(99),
        )
    }

    /// A completion missed while the follower's resume was not covered by history
    /// still counts: the snapshot that follows shows it, for the right stack.
    #[test]
    fn a_snapshot_showing_a_finished_operation_completes_that_stack() {
        let (mut progress, topics) = two_stacks();
        let frame = snapshot_frame(
            "stack:eu-west-1:web",
            "web",
            &[
                root_row("web", "UPDATE_IN_PROGRESS"),
                completion("web", true, "UPDATE_COMPLETE"),
            ],
        );
        let out = snapshot_completion(&mut progress, &topics, &frame);
        assert_eq!(
            types(&out),
            [STACK_DEPLOYED_T, DEPLOYMENT_STATUS],
            "{out:?}"
        );
        assert_eq!(out[0].1["stack_name"], "web");
        assert_eq!(out[0].1["environment"], "eu-west-1", "the stack's region");
        assert_eq!(status_of(&out[1]), ("deploying".into(), 2, 2));

        let frame = snapshot_frame(
            "stack:api",
            "api",
            &[
                root_row("api", "UPDATE_IN_PROGRESS"),
                completion("api", false, "UPDATE_ROLLBACK_COMPLETE"),
            ],
        );
        let out = snapshot_completion(&mut progress, &topics, &frame);
        assert_eq!(types(&out), [STACK_FAILED_T, DEPLOYMENT_STATUS], "{out:?}");
        assert_eq!(out[0].1["stack_name"], "api");
        assert_eq!(out[0].1["environment"], "us-east-1", "the default region");
        assert_eq!(status_of(&out[1]).0, "failed");
        assert!(progress.finished());
    }

    /// A snapshot whose stack moved on (a new operation runs), of another type,
    /// of a topic that is not one of the deployment's stacks, or unreadable,
    /// completes nothing.
    #[test]
    fn other_snapshots_and_frames_complete_nothing() {
        let (mut progress, topics) = two_stacks();
        let moved_on = snapshot_frame(
            "stack:api",
            "api",
            &[
                completion("api", true, "CREATE_COMPLETE"),
                root_row("api", "UPDATE_IN_PROGRESS"),
            ],
        );
        let done = [
            root_row("api", "UPDATE_IN_PROGRESS"),
            completion("api", true, "UPDATE_COMPLETE"),
        ];
        let elsewhere = snapshot_frame("stack:other", "other", &done);
        let not_a_snapshot = encode_frame("stack.deployed", "stack:api", 3, TS, &Map::new());
        let no_data = serde_json::json!({"type": STACK_SNAPSHOT, "deployment_id": "stack:api"});
        for frame in [
            moved_on,
            elsewhere,
            not_a_snapshot.as_str().to_owned(),
            no_data.to_string(),
            "not json".to_owned(),
        ] {
            let out = snapshot_completion(&mut progress, &topics, &frame);
            assert!(out.is_empty(), "{frame}: {out:?}");
        }
        assert!(!progress.finished());
        assert_eq!(status_of(&progress.status()), ("deploying".into(), 1, 2));
        // The right snapshot still counts afterwards.
        let frame = snapshot_frame("stack:api", "api", &done);
        let out = snapshot_completion(&mut progress, &topics, &frame);
        assert_eq!(
            types(&out),
            [STACK_DEPLOYED_T, DEPLOYMENT_STATUS],
            "{out:?}"
        );
    }

    /// Stack events count for the stack whose topic they came on; an event of
    /// another topic is dropped.
    #[test]
    fn stack_events_count_for_their_topic_only() {
        let (mut progress, topics) = two_stacks();
        let mut data = Map::new();
        data.insert("level".into(), Value::from("info"));
        data.insert("message".into(), Value::from("hello"));
        let event = |topic: &str| {
            StampedEvent::new(
                Arc::from(topic),
                1,
                Arc::from("e"),
                "log.created",
                TS,
                &data,
            )
        };
        assert!(stack_event(&mut progress, &topics, &event("stack:other")).is_empty());
        let out = stack_event(&mut progress, &topics, &event("stack:eu-west-1:web"));
        assert_eq!(types(&out), ["log.created"]);
        assert_eq!(out[0].1["stack_name"], "web");
        assert_eq!(out[0].1["message"], "hello");
    }

    const STACK_DEPLOYED_T: &str = crate::tracking::events::STACK_DEPLOYED;
    const STACK_FAILED_T: &str = crate::tracking::events::STACK_FAILED;
}
