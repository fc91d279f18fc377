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
//!    on counts, and asks [`Tracking::ensure`] for each stack's poller (the
//!    session is a local subscriber, so the pollers run while the deployment does);
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

use crate::hub::{Delivery, Draft, Hub, Lease, Outbox, Session, StampedEvent};
use crate::tracking::Tracking;
use progress::{Out, Progress};
use request::DeploymentRequest;

/// Stack events buffered for one deployment before it is considered stuck.
const QUEUE: usize = 4096;

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
}

impl Deployments {
    pub fn new(hub: Hub, tracking: Arc<Tracking>, config: DeploymentsConfig) -> Arc<Deployments> {
        Arc::new(Deployments {
            hub,
            tracking,
            config,
            running: DashMap::new(),
        })
    }

    /// Deployments followed by this node.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Starts following a deployment; returns once its first `deployment.status` is
    /// published. The follower stops at the end of the deployment or at `shutdown`.
    pub async fn start(
        self: &Arc<Self>,
        req: DeploymentRequest,
        shutdown: CancellationToken,
    ) -> Result<Started, StartError> {
        let id = req.deployment_id.clone();
        if self.running.insert(id.clone(), ()).is_some() {
            return Err(StartError::AlreadyRunning(id));
        }
        let result = self.try_start(req, shutdown).await;
        if result.is_err() {
            self.running.remove(&id);
        }
        result
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
        tokio::spawn(async move {
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
    ) -> Result<(Arc<Session>, tokio::sync::mpsc::Receiver<Delivery>, Started), StartError> {
        let (outbox, rx) = Outbox::new(QUEUE);
        let session = self.hub.open_session(outbox);
        let mut topics = Vec::with_capacity(req.stacks.len());
        for spec in &req.stacks {
            let topic = self
                .tracking
                .topic_for(&spec.name, spec.region.as_deref())
                .await;
            let subscribed = async {
                let position = self
                    .hub
                    .backplane()
                    .read(&topic, None)
                    .await
                    .map_err(|e| e.to_string())?;
                let allow_all = |_: Option<&stackpulse_protocol::Acl>| true;
                self.hub
                    .subscribe(
                        &session,
                        &topic,
                        Some(position.latest_seq),
                        Some(position.epoch.to_string()),
                        &allow_all,
                    )
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = subscribed.await {
                self.hub.close_session(&session).await;
                return Err(StartError::Subscribe { topic, reason: e });
            }
            self.tracking.ensure(&topic);
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

    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        id: &str,
        mut progress: Progress,
        topics: &[String],
        session: &Arc<Session>,
        mut rx: tokio::sync::mpsc::Receiver<Delivery>,
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
                _ = session.outbox.closing() => progress.give_up(
                    "The deployment fell too far behind its stacks' events"
                ),
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
                    Some(_) => continue,
                    None => return,
                },
            };
            for (event_type, data) in out {
                if !self.publish(id, event_type, data, lease).await {
                    return;
                }
            }
        }
    }

    /// Publishes one deployment event, retrying while the backplane is away; false
    /// when the lease was lost (another node follows the deployment now).
    async fn publish(
        &self,
        id: &str,
        event_type: &str,
        data: Map<String, Value>,
        lease: &Lease,
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
                Err(crate::hub::BackplaneError::Fenced(_)) => {
                    tracing::warn!(deployment = %id, "deployment lease lost; stopping");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "cannot publish a deployment event; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Feeds one stack-topic event to the progress.
fn stack_event(progress: &mut Progress, topics: &[String], event: &StampedEvent) -> Vec<Out> {
    let Some(index) = topics.iter().position(|t| **t == *event.topic) else {
        return Vec::new();
    };
    let data = serde_json::from_str::<Value>(event.frame.as_str())
        .ok()
        .and_then(|mut frame| match frame.get_mut("data").map(Value::take) {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    progress.on_stack_event(index, &event.event_type, &data)
}
