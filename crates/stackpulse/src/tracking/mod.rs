//! Stack tracking: one CloudFormation poller per stack topic, started by the first
//! subscriber, publishing into the hub.
//!
//! Topics `stack:<StackName>` (the default region) and `stack:<region>:<StackName>`
//! are tracked stacks (CloudFormation stack names cannot contain `:`). [`Tracking`]
//! is the hub's [`TopicInterest`]: when a subscriber of any dialect (or a
//! deployment follower) has been admitted to a stack topic, the hub calls
//! `wanted`, which starts the topic's poller unless this node already runs one (at
//! most `--max-pollers`); when the topic's last local subscriber leaves, the hub
//! calls `unwanted`. No adapter starts a poller. The poller:
//! 1. takes the backplane lease `poll:<topic>` (so that one node polls a stack
//!    cluster-wide; while another node holds it, this one only retries);
//! 2. reads the topic's history and seeds the tracker's `seen_event_ids` with the
//!    `eventId` of every `resource.status` already published, so a takeover
//!    publishes no duplicates;
//! 3. runs a [`stackpulse_cfn::Tracker`] and publishes what it sends (see
//!    [`events`]) with the lease as fence, renewing the lease meanwhile; a refused
//!    (fenced) publish or a lost renewal stops the tracker and goes back to 1. The
//!    `tracker.error` that ends a run without completion (stack not found, an
//!    unknown AWS error) carries `"final": true`, so `stackpulse watch` can stop.
//!    Configuration errors (credentials, region, access denied) do not end a run:
//!    the tracker retries them minutes apart, and publishes each distinct problem
//!    once and `tracker.recovered` when it is over (see [`events`]);
//! 4. once the operation ended (or the stack could not be tracked), stays registered
//!    until the topic has no local subscriber, so that clients joining later share
//!    the finished poller instead of starting another. Meanwhile it looks at the
//!    stack every 5 poll intervals (at most every minute; one `DescribeStacks`;
//!    every `--push-poll-interval` if longer, for a stack pushed recently, and at
//!    once on a push): when a new operation started (the stack is busy, was updated, replaced or
//!    created), it goes back to 1 and tracks it.
//!
//! A push (`POST /v1/ingest/eventbridge`) reaches the poller through
//! [`crate::hub::Backplane::wake`] on whichever node runs it, as a
//! [`stackpulse_cfn::Wake`]: the tracker polls at once instead of finishing its
//! wait, and a finished poller looks at the stack at once. A stack woken in the
//! last 10 minutes is polled every `--push-poll-interval` instead of
//! `--poll-interval`. A push never writes events, so EventId dedup keeps the
//! stream exact.
//!
//! While the stack is busy and nobody is subscribed, the poller keeps going for the
//! grace time (`--tracker-grace`), then stops. A subscriber arriving after it
//! stopped starts a fresh one, which tracks the stack's then current operation (and
//! does not publish the completion of an operation whose completion the topic
//! already has).
//!
//! Every CloudFormation request of the pollers (tracker runs and looks) waits for
//! the node's [`budget::Budget`] first: `--aws-max-rps` per account and region,
//! round-robin between stacks, shared by the cluster through Redis. Poll times are
//! jittered (±10 %) so pollers started together drift apart.
//!
//! Metrics: `stackpulse_tracking_pollers` (running here),
//! `stackpulse_tracking_pollers_started_total`,
//! `stackpulse_tracking_aws_calls_total` (AWS requests of this node's pollers),
//! `stackpulse_tracking_aws_api_calls_total{api,region}` and
//! `stackpulse_tracking_aws_throttles_total{api,region}` (the same by API and
//! region, and the throttled ones), `stackpulse_tracking_push_wakeups_total{poller}`
//! (pushes that reached this node; `poller="here"` when it runs the stack's poller)
//! and the histogram `stackpulse_tracking_detection_delay_seconds` (CloudFormation
//! event time → published, for events found after a run's first poll). No per-stack
//! label, so the series count does not grow with the stacks users name.
//!
//! # Layout
//! - [`aws`]: AWS configuration from the standard chain, CloudFormation clients.
//! - [`budget`]: the AWS call budget per account and region.
//! - [`events`]: tracker messages ↔ hub events.

pub mod aws;
pub mod budget;
pub mod events;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::Value;
use stackpulse_cfn::aws::{CallApi, CallLimiter};
use stackpulse_cfn::{CallCounter, Outcome, Tracker, TrackerConfig, TrackerMessage, Wake};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::hub::{BackplaneError, Draft, Hub, Lease, SubscribeError, TopicInterest};
use aws::{AwsClients, AwsSettings};
use budget::{Budget, Slots, StackBudget};
use events::Origin;

/// Prefix of tracked stack topics.
pub const TOPIC_PREFIX: &str = "stack:";
/// A finished poller stays this long after its last subscriber left, so that a
/// client that reconnects at once finds it.
const LINGER: Duration = Duration::from_secs(2);
/// Timeout of the `DescribeStacks` a finished poller makes now and then.
const LOOK_TIMEOUT: Duration = Duration::from_secs(20);
/// Tracker messages buffered between the tracker and the publisher.
const CHANNEL: usize = 256;

/// A stack named by a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackTopic {
    /// `None`: the default region.
    pub region: Option<String>,
    pub stack: String,
}

/// Whether `name` is a valid CloudFormation stack name (`[A-Za-z][-A-Za-z0-9]*`,
/// at most 128 characters).
pub fn valid_stack_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Whether `region` looks like an AWS region name (`eu-west-1`, `us-gov-west-1`):
/// `^[a-z]{2}(-[a-z]+)+-\d+$`, at most 32 characters.
pub fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    region.len() <= 32
        && first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

impl StackTopic {
    /// Parses `stack:<name>` or `stack:<region>:<name>`; `None` for other topics.
    pub fn parse(topic: &str) -> Option<StackTopic> {
        let rest = topic.strip_prefix(TOPIC_PREFIX)?;
        let (region, stack) = match rest.split_once(':') {
            Some((r, s)) => (Some(r), s),
            None => (None, rest),
        };
        if !valid_stack_name(stack) || region.is_some_and(|r| !valid_region(r)) {
            return None;
        }
        Some(StackTopic {
            region: region.map(str::to_owned),
            stack: stack.to_owned(),
        })
    }

    /// The topic name (`stack:<name>` or `stack:<region>:<name>`).
    pub fn topic(&self) -> String {
        match &self.region {
            Some(r) => format!("{TOPIC_PREFIX}{r}:{}", self.stack),
            None => format!("{TOPIC_PREFIX}{}", self.stack),
        }
    }
}

/// Settings of the pollers.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    pub aws: AwsSettings,
    pub poll_interval: Duration,
    /// How long a poller outlives its last subscriber while the stack is busy.
    pub grace: Duration,
    /// How long a poller lease lasts without renewal: a dead node's stacks are
    /// taken over by another node within this time (renewed every third of it).
    pub lease_ttl: Duration,
    /// Pollers one node runs at most (`--max-pollers`).
    pub max_pollers: usize,
    /// Time between two polls of a stack that got a push in the last 10 minutes
    /// (`--push-poll-interval`).
    pub push_poll_interval: Duration,
    /// CloudFormation requests per second per account and region (`--aws-max-rps`);
    /// `None`: no limit.
    pub aws_max_rps: Option<f64>,
    /// The Redis through which the nodes share that budget; `None`: this node alone.
    pub budget_redis_url: Option<String>,
}

/// One poller's registration.
struct PollerEntry {
    /// Whether the topic has an admitted local subscriber; the poller waits on it.
    wanted: watch::Sender<bool>,
    /// AWS calls of this poller's runs.
    calls: CallCounter,
    /// How many of them the node-wide metric has counted.
    reported: AtomicU64,
    /// How many of each API's requests and throttles the labelled metrics counted.
    reported_by_api: [(AtomicU64, AtomicU64); CallApi::ALL.len()],
    /// The stack's region (a metric label), once the poller resolved it.
    region: std::sync::OnceLock<String>,
    /// Pushes for this stack ([`TopicInterest::wake`]): poll now.
    wake: Arc<Wake>,
}

/// The poller manager (one per node).
pub struct Tracking {
    hub: Hub,
    aws: AwsClients,
    /// The AWS call budget every poller's requests wait for (`None`: no limit).
    budget: Option<Arc<Budget>>,
    config: TrackingConfig,
    pollers: DashMap<Arc<str>, Arc<PollerEntry>>,
    /// Pollers registered (kept beside the map: counting a DashMap locks every
    /// shard, which must not happen while one of its entries is held).
    running: AtomicUsize,
    /// A handle on itself, for the poller tasks it spawns.
    me: Weak<Tracking>,
}

impl Tracking {
    /// Fails only on an invalid Redis URL.
    pub fn new(hub: Hub, config: TrackingConfig) -> Result<Arc<Tracking>, String> {
        describe_metrics();
        let budget = match config.aws_max_rps {
            Some(rps) => {
                let slots = match &config.budget_redis_url {
                    Some(url) => Slots::redis(url)?,
                    None => Slots::Local,
                };
                Some(Budget::new(rps, slots))
            }
            None => None,
        };
        Ok(Arc::new_cyclic(|me| Tracking {
            hub,
            aws: AwsClients::new(config.aws.clone()),
            budget,
            config,
            pollers: DashMap::new(),
            running: AtomicUsize::new(0),
            me: me.clone(),
        }))
    }

    /// The call budget as the limiter of the poller of `topic`.
    fn limiter(&self, topic: &Arc<str>) -> Option<Arc<dyn CallLimiter>> {
        let budget = self.budget.clone()?;
        Some(Arc::new(StackBudget {
            budget,
            topic: topic.clone(),
        }))
    }

    /// The AWS clients (also used by `POST /canvas/deploy`).
    pub fn aws(&self) -> &AwsClients {
        &self.aws
    }

    /// The topic of a stack, with the region left out when it is the default one
    /// (so `/canvas/deploy/track/s` and `?region=<default>` share one poller).
    pub async fn topic_for(&self, stack: &str, region: Option<&str>) -> String {
        let region = match region {
            Some(r) if r != self.aws.default_region().await => Some(r.to_owned()),
            _ => None,
        };
        StackTopic {
            region,
            stack: stack.to_owned(),
        }
        .topic()
    }

    /// Refuses a stack topic that names the default region (`stack:<default>:X`):
    /// that stack's topic is `stack:X`, and a second name would mean a second
    /// poller and a second stream of the same stack.
    pub async fn check_topic(&self, topic: &str) -> Result<(), String> {
        let Some(StackTopic {
            region: Some(region),
            stack,
        }) = StackTopic::parse(topic)
        else {
            return Ok(());
        };
        if region == self.aws.default_region().await {
            return Err(format!(
                "Use {TOPIC_PREFIX}{stack}: {region} is this server's default region"
            ));
        }
        Ok(())
    }

    /// Adds what the entry's calls grew by since the last report to the node-wide
    /// counter.
    fn report_calls(&self, entry: &PollerEntry) {
        let total = entry.calls.total();
        let before = entry.reported.swap(total, Ordering::AcqRel);
        metrics::counter!("stackpulse_tracking_aws_calls_total")
            .increment(total.saturating_sub(before));
        let region = entry.region.get().map_or("unknown", String::as_str);
        for (api, (sent_before, throttled_before)) in
            CallApi::ALL.iter().zip(&entry.reported_by_api)
        {
            let sent = entry.calls.sent_to(*api);
            let grew = sent.saturating_sub(sent_before.swap(sent, Ordering::AcqRel));
            if grew > 0 {
                metrics::counter!("stackpulse_tracking_aws_api_calls_total", "api" => api.name(), "region" => region.to_owned())
                    .increment(grew);
            }
            let throttled = entry.calls.throttled_by(*api);
            let grew = throttled.saturating_sub(throttled_before.swap(throttled, Ordering::AcqRel));
            if grew > 0 {
                metrics::counter!("stackpulse_tracking_aws_throttles_total", "api" => api.name(), "region" => region.to_owned())
                    .increment(grew);
            }
        }
    }

    /// Resolves once the topic has gone `idle` without an admitted local
    /// subscriber; the poller is then unregistered (a subscriber arriving later
    /// starts a fresh one).
    async fn unwanted_for(&self, topic: &Arc<str>, entry: &Arc<PollerEntry>, idle: Duration) {
        let mut wanted = entry.wanted.subscribe();
        loop {
            // The sender lives in `entry`, which outlives this future.
            if wanted.wait_for(|w| !*w).await.is_err() {
                return std::future::pending().await;
            }
            if tokio::time::timeout(idle, wanted.wait_for(|w| *w))
                .await
                .is_ok()
            {
                continue;
            }
            let left = self.pollers.remove_if(topic, |_, e| {
                Arc::ptr_eq(e, entry)
                    && !*e.wanted.borrow()
                    && self.hub.local_subscribers(topic) == 0
            });
            if left.is_some() {
                self.running.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            // Somebody came back meanwhile.
            entry.wanted.send_replace(true);
        }
    }

    async fn poller(&self, topic: Arc<str>, stack: StackTopic, slot: Arc<PollerEntry>) {
        let lease_name = format!("poll:{topic}");
        let look_every = (self.config.poll_interval * 5).min(Duration::from_secs(60));
        let region = match &stack.region {
            Some(r) => r.clone(),
            None => self.aws.default_region().await,
        };
        let _ = slot.region.set(region);
        'run: loop {
            // 1. The lease (another node may be polling this stack).
            let lease = loop {
                match self
                    .hub
                    .backplane()
                    .acquire_lease(&lease_name, self.config.lease_ttl)
                    .await
                {
                    Ok(Some(lease)) => break lease,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%topic, error = %e, "cannot take the poller lease"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.config.lease_ttl / 3) => {}
                    _ = self.unwanted_for(&topic, &slot, self.config.grace) => return,
                }
            };
            // 2 and 3. Poll until the operation ends, the lease is lost or nobody wants it.
            let end = self.track(&topic, &stack, &slot, &lease).await;
            self.hub.backplane().release_lease(&lease).await;
            match end {
                RunEnd::Unwanted => return,
                RunEnd::LeaseLost => continue,
                RunEnd::Finished => {}
            }
            // 4. Finished: stay while anybody is subscribed, looking at the stack now
            // and then (one DescribeStacks); a new operation is tracked again.
            let mut seen = self.look(&topic, &stack, &slot).await;
            let unwanted = self.unwanted_for(&topic, &slot, LINGER);
            tokio::pin!(unwanted);
            loop {
                // A stack that pushes tells its next operation itself: looked at as
                // seldom as it is polled (the push poll interval), at once on a push.
                let every = if slot.wake.pushed_recently() {
                    look_every.max(self.config.push_poll_interval)
                } else {
                    look_every
                };
                tokio::select! {
                    _ = tokio::time::sleep(stackpulse_cfn::backoff::jittered(every)) => {}
                    _ = slot.wake.woken() => {}
                    _ = &mut unwanted => return,
                }
                let now = self.look(&topic, &stack, &slot).await;
                if seen.new_operation(&now) {
                    tracing::info!(%topic, "a new operation started; tracking it");
                    continue 'run;
                }
                if now != Look::Unknown {
                    seen = now;
                }
            }
        }
    }

    /// One `DescribeStacks` of a finished stack.
    async fn look(&self, topic: &Arc<str>, stack: &StackTopic, entry: &PollerEntry) -> Look {
        let calls = entry.calls.clone();
        let client = self.aws.client(stack.region.as_deref()).await;
        let api = stackpulse_cfn::aws::Api::new(client, calls.clone(), LOOK_TIMEOUT)
            .with_limiter(self.limiter(topic));
        let look = match api.describe_stack(&stack.stack).await {
            Ok(info) => Look::Stack {
                arn: info.arn,
                updated: info.last_updated_time,
                terminal: stackpulse_cfn::status::stack_phase(&info.status).is_terminal(),
                status: info.status,
                operations: info.operation_ids,
            },
            Err(stackpulse_cfn::AwsError::NotFound(_)) => Look::Missing,
            Err(e) => {
                tracing::debug!(%topic, error = %e, "cannot look at the stack");
                Look::Unknown
            }
        };
        self.report_calls(entry);
        look
    }

    /// What the topic's history says: event ids already published, and whether the
    /// last operation's completion is already there.
    async fn history(&self, topic: &str) -> (HashSet<String>, bool) {
        let mut seen = HashSet::new();
        let mut completed = false;
        let read = match self.hub.backplane().read(topic, Some(0)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot read the topic's history");
                return (seen, completed);
            }
        };
        for event in &read.events {
            match &*event.event_type {
                events::RESOURCE_STATUS => {
                    if let Some(id) = event.data().get("eventId").and_then(Value::as_str) {
                        seen.insert(id.to_owned());
                    }
                    completed = false;
                }
                events::STACK_DEPLOYED | events::STACK_FAILED => completed = true,
                _ => {}
            }
        }
        (seen, completed)
    }

    async fn track(
        &self,
        topic: &Arc<str>,
        stack: &StackTopic,
        slot: &Arc<PollerEntry>,
        lease: &Lease,
    ) -> RunEnd {
        let (seen, completed_before) = self.history(topic).await;
        let calls = slot.calls.clone();
        let mut config = TrackerConfig::new(stack.stack.clone());
        config.poll_interval = self.config.poll_interval;
        config.seen_event_ids = seen;
        config.calls = calls.clone();
        config.wake = Some(slot.wake.clone());
        config.push_poll_interval = self.config.push_poll_interval;
        config.limiter = self.limiter(topic);
        let client = self.aws.client(stack.region.as_deref()).await;
        let origin = Origin {
            stack_name: stack.stack.clone(),
            environment: match &stack.region {
                Some(r) => r.clone(),
                None => self.aws.default_region().await,
            },
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        let run = tokio::spawn(Tracker::new(client, config).run(tx));
        let abort = run.abort_handle();
        metrics::counter!("stackpulse_tracking_pollers_started_total").increment(1);
        tracing::info!(%topic, stack = %stack.stack, "stack poller started");

        let renew_every = self.config.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
        let unwanted = self.unwanted_for(topic, slot, self.config.grace);
        tokio::pin!(unwanted);
        let mut published_updates = 0u64;
        let mut held: Option<TrackerMessage> = None;
        // Events found after the run's first poll (its snapshot) are news: their
        // delay from CloudFormation to the hub is the detection delay.
        let mut first_poll_done = false;
        let end = loop {
            tokio::select! {
                msg = rx.recv() => {
                    // A non-retrying error is held back until we know whether the run
                    // goes on (the final poll failed, completion follows) or ends
                    // (the stack cannot be tracked): then it is marked `final`.
                    let mut out: Vec<(TrackerMessage, bool)> = Vec::new();
                    let ended = msg.is_none();
                    if let Some(e) = held.take() {
                        out.push((e, ended));
                    }
                    match msg {
                        Some(TrackerMessage::Problem(e)) if !e.retrying => {
                            held = Some(TrackerMessage::Problem(e));
                        }
                        Some(TrackerMessage::DeploymentComplete(_))
                            if published_updates == 0 && completed_before =>
                        {
                            tracing::debug!(%topic, "operation already complete in the topic's history");
                        }
                        Some(m) => {
                            match &m {
                                TrackerMessage::ResourceUpdate(_) => published_updates += 1,
                                TrackerMessage::Snapshot(_) => first_poll_done = true,
                                _ => {}
                            }
                            out.push((m, false));
                        }
                        None => {}
                    }
                    let mut fenced = false;
                    for (m, last) in &out {
                        match self.publish(topic, m, &origin, lease, *last).await {
                            Ok(()) => {
                                if let (true, TrackerMessage::ResourceUpdate(u)) = (first_poll_done, m) {
                                    detection_delay(u.timestamp);
                                }
                            }
                            Err(BackplaneError::Fenced(_)) => {
                                fenced = true;
                                break;
                            }
                            Err(e) => tracing::warn!(%topic, error = %e, "cannot publish a tracker event"),
                        }
                    }
                    self.report_calls(slot);
                    if fenced {
                        tracing::warn!(%topic, "poller lease lost; stopping");
                        break RunEnd::LeaseLost;
                    }
                    if ended {
                        break RunEnd::Finished;
                    }
                }
                _ = &mut unwanted => {
                    tracing::info!(%topic, "no subscriber within the grace time; stopping");
                    break RunEnd::Unwanted;
                }
                _ = renew.tick() => {
                    self.report_calls(slot);
                    match self.hub.backplane().renew_lease(lease, self.config.lease_ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(%topic, "poller lease lost; stopping");
                            break RunEnd::LeaseLost;
                        }
                        Err(e) => tracing::warn!(%topic, error = %e, "cannot renew the poller lease"),
                    }
                }
            }
        };
        drop(rx);
        if !matches!(end, RunEnd::Finished) {
            abort.abort();
        }
        match run.await {
            Ok(Outcome::Completed(d)) => {
                tracing::info!(%topic, success = d.success, calls = calls.total(), "operation complete")
            }
            Ok(other) => tracing::info!(%topic, outcome = ?other, "tracker ended"),
            Err(_) => {}
        }
        self.report_calls(slot);
        end
    }

    async fn publish(
        &self,
        topic: &str,
        msg: &TrackerMessage,
        origin: &Origin,
        lease: &Lease,
        last: bool,
    ) -> Result<(), BackplaneError> {
        for (event_type, mut data) in events::to_hub(msg, origin) {
            if last && event_type == events::TRACKER_ERROR {
                data.insert("final".into(), Value::Bool(true));
            }
            self.hub
                .publish_draft(
                    topic,
                    Draft {
                        event_type: event_type.to_owned(),
                        data,
                        acl: None,
                        fence: Some(lease.clone()),
                    },
                )
                .await?;
        }
        Ok(())
    }
}

/// Records how long after CloudFormation's event time an event was published.
fn detection_delay(event_time: chrono::DateTime<chrono::Utc>) {
    let delay = (chrono::Utc::now() - event_time)
        .to_std()
        .unwrap_or_default();
    metrics::histogram!(DETECTION_DELAY).record(delay.as_secs_f64());
}

/// The detection-delay histogram (its buckets are set in [`crate::metrics`]).
pub const DETECTION_DELAY: &str = "stackpulse_tracking_detection_delay_seconds";

fn describe_metrics() {
    metrics::describe_gauge!(
        "stackpulse_tracking_pollers",
        "Stack pollers registered on this node"
    );
    metrics::describe_counter!(
        "stackpulse_tracking_pollers_started_total",
        "Tracker runs started (one per stack operation when all goes well)"
    );
    metrics::describe_counter!(
        "stackpulse_tracking_aws_calls_total",
        "CloudFormation requests sent by this node's stack pollers"
    );
    metrics::describe_counter!(
        "stackpulse_tracking_aws_api_calls_total",
        "CloudFormation requests sent by this node's stack pollers, by API and region"
    );
    metrics::describe_counter!(
        "stackpulse_tracking_aws_throttles_total",
        "CloudFormation requests of this node's stack pollers answered with a throttling error, by API and region"
    );
    metrics::describe_counter!(
        "stackpulse_tracking_push_wakeups_total",
        "Pushes (EventBridge, SNS) that reached this node; poller=here when it runs the stack's poller"
    );
    metrics::describe_histogram!(
        DETECTION_DELAY,
        metrics::Unit::Seconds,
        "From a CloudFormation event's time to its publication (events found after a poller's first poll)"
    );
}

/// What a look at a finished stack saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    Missing,
    Stack {
        arn: String,
        updated: Option<chrono::DateTime<chrono::Utc>>,
        terminal: bool,
        status: String,
        operations: Vec<String>,
    },
    /// The call failed (throttled, denied, network): no conclusion.
    Unknown,
}

impl Look {
    /// Whether `now` shows an operation the finished run did not track: the stack
    /// is busy, was updated (its last update time, status or operation ids
    /// changed), was replaced (another ARN) or appeared.
    fn new_operation(&self, now: &Look) -> bool {
        match (self, now) {
            (_, Look::Unknown) => false,
            // A stack still in review after its run ended (its change set failed
            // or was never executed: see stackpulse_cfn::changeset) is not a new
            // operation until something about it changes.
            (Look::Stack { .. }, Look::Stack { status, .. })
                if status == "REVIEW_IN_PROGRESS" && self == now =>
            {
                false
            }
            (
                _,
                Look::Stack {
                    terminal: false, ..
                },
            ) => true,
            (Look::Stack { .. }, Look::Stack { terminal: true, .. }) => {
                // Anything but `terminal` differs (ARN, last update, status,
                // operation ids: endpoints fill in different ones).
                self != now
            }
            (Look::Missing | Look::Unknown, Look::Stack { .. }) => true,
            (_, Look::Missing) => false,
        }
    }
}

impl TopicInterest for Tracking {
    /// Starts the poller of a stack topic unless one runs here (at most
    /// `--max-pollers`), or tells the running one it is wanted again.
    fn wanted(&self, topic: &Arc<str>) -> Result<(), SubscribeError> {
        let Some(stack) = StackTopic::parse(topic) else {
            return Ok(());
        };
        match self.pollers.entry(topic.clone()) {
            dashmap::Entry::Occupied(e) => {
                e.get().wanted.send_replace(true);
            }
            dashmap::Entry::Vacant(e) => {
                let max = self.config.max_pollers;
                if self.running.load(Ordering::Acquire) >= max {
                    metrics::counter!("stackpulse_tracking_pollers_refused_total").increment(1);
                    return Err(SubscribeError::Capacity(format!(
                        "Too many stack pollers on this node (--max-pollers {max})"
                    )));
                }
                let Some(this) = self.me.upgrade() else {
                    return Ok(());
                };
                let entry = Arc::new(PollerEntry {
                    wanted: watch::Sender::new(true),
                    calls: CallCounter::default(),
                    reported: AtomicU64::new(0),
                    reported_by_api: Default::default(),
                    region: std::sync::OnceLock::new(),
                    wake: Arc::new(Wake::new()),
                });
                e.insert(entry.clone());
                self.running.fetch_add(1, Ordering::AcqRel);
                metrics::gauge!("stackpulse_tracking_pollers").increment(1.0);
                let topic = topic.clone();
                tokio::spawn(async move {
                    this.poller(topic.clone(), stack, entry).await;
                    metrics::gauge!("stackpulse_tracking_pollers").decrement(1.0);
                    tracing::info!(%topic, "stack poller stopped");
                });
            }
        }
        Ok(())
    }

    /// A push for the stack: the poller running here (if any) polls now. A node
    /// that does not hold the lease only keeps the wake pending (coalesced), which
    /// costs at most one early poll once it takes the lease over.
    fn wake(&self, topic: &str) {
        let here = match self.pollers.get(topic) {
            Some(entry) => {
                entry.wake.wake();
                "here"
            }
            None => "elsewhere",
        };
        metrics::counter!("stackpulse_tracking_push_wakeups_total", "poller" => here).increment(1);
    }

    fn unwanted(&self, topic: &Arc<str>) {
        if let Some(entry) = self.pollers.get(topic) {
            if self.hub.local_subscribers(topic) == 0 {
                entry.wanted.send_replace(false);
            }
        }
    }
}

/// Why a tracker run ended.
enum RunEnd {
    /// The operation ended (or the stack cannot be tracked): nothing more to poll.
    Finished,
    /// Nobody subscribed within the grace time; the poller is unregistered.
    Unwanted,
    /// Another node took the lease.
    LeaseLost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_topics() {
        assert_eq!(
            StackTopic::parse("stack:my-stack"),
            Some(StackTopic {
                region: None,
                stack: "my-stack".into()
            })
        );
        let t = StackTopic::parse("stack:eu-west-1:S1").expect("regional");
        assert_eq!(t.region.as_deref(), Some("eu-west-1"));
        assert_eq!(t.topic(), "stack:eu-west-1:S1");
        for bad in [
            "D1BRV40",
            "stack:",
            "stack:1abc",
            "stack:a_b",
            "stack:EU:x",
            "stack:a:b:c",
            "stack:zz-1-region:s",
            "stack:eu-west:s",
            "stack:e-west-1:s",
        ] {
            assert_eq!(StackTopic::parse(bad), None, "{bad}");
        }
        for region in ["eu-west-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1"] {
            assert!(valid_region(region), "{region}");
        }
        assert!(valid_stack_name(&"a".repeat(128)));
        assert!(!valid_stack_name(&"a".repeat(129)));
    }
}
