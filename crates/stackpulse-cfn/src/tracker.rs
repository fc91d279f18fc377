//! The tracker: one poller for one stack's current operation, from the first event to
//! `deployment_complete`.
//!
//! Data flow of [`Tracker::run`]:
//! 1. **Resolve** the name to the stack ARN once (`DescribeStacks`), waiting up to
//!    [`TrackerConfig::wait_for_stack`] for a stack that does not exist yet; from then
//!    on every call uses the ARN (a deleted stack, or a new stack reusing the name,
//!    cannot confuse it).
//! 2. **First poll**: read events newest first until `scope` finds where the current
//!    operation begins; seed `progress` with the expected number of resources
//!    (`GetTemplateSummary`, `ListStackResources`); apply the events oldest first,
//!    emitting a [`TrackerMessage::ResourceUpdate`] for each one not already seen
//!    (see [`TrackerConfig::seen_event_ids`]); then a [`TrackerMessage::Snapshot`].
//! 3. **Each cycle**: sleep the poll interval (longer after throttling; cut short by a
//!    push, see [`crate::wake`]); poll the root
//!    and every active nested stack (`events`: pages until a known `EventId`); merge
//!    their new events oldest first and emit them; ask `DescribeStacks` for the root's
//!    status (`status`). A cycle that a push started (not the timer) reads only the
//!    events, and asks `DescribeStacks` only when one of them is the root stack's
//!    own (its status changed) or when it found nothing new (the events API may
//!    lag behind the push): between two stack events the events say everything,
//!    and the timer's cycles (`push_poll_interval`) stay the safety net (the poll
//!    interval while `DescribeStacks` lags behind the root's terminal event). The pushes
//!    of one burst fold into one read ([`Wake::next_read`]). Nested stacks are found
//!    in the events (`nested`), polled by their own ARN, and their terminal events
//!    never end the run.
//! 4. **Terminal** status: a final poll (repeated a few times while the root's own
//!    terminal event is not visible yet: the events API can lag), outputs (success
//!    only), duration, root cause (`rootcause`), a final snapshot, then
//!    [`TrackerMessage::DeploymentComplete`] and the run returns
//!    [`Outcome::Completed`]. A root stack left in `REVIEW_IN_PROGRESS` (its change
//!    set failed or is never executed) ends the same way, as a failure whose root
//!    cause names the change set (`changeset`).
//!
//! Every AWS call goes through one retry loop: throttling backs off with jitter and
//! slows the interval; network and service errors back off
//! ([`TrackerConfig::backoff`]); configuration errors (no or refused credentials, no
//! region, access denied) back off minutes apart ([`TrackerConfig::config_backoff`]),
//! so that fixing them needs no restart. Each distinct problem is told once, as a
//! [`TrackerMessage::Problem`] with its [`ErrorCode`], `retrying` and `retry_at` (not
//! once per retry); the first call that succeeds after it sends
//! [`TrackerMessage::Recovered`]. Only a permanent error (an unknown AWS error code,
//! a validation error) on the root stack, a stack that never appeared, or a closed
//! channel ends a run early. The current state is also published on a `watch` channel
//! ([`Tracker::state`]) for late joiners.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudformation::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::aws::{Api, AwsError, CallCounter, StackInfo};
use crate::backoff::{BackoffConfig, Slowdown};
use crate::changeset;
use crate::estimate::Timing;
use crate::events::{stack_name_from_arn, Event, EventLog, STACK_TYPE};
use crate::nested;
use crate::progress::{Applied, ResourceTable};
use crate::rootcause;
use crate::scope::{InitialScan, OperationKind, ScopeHints};
use crate::status::{stack_phase, StackPhase};
use crate::wake::{Wake, Woke};
mod history;

use crate::wire::{
    DeploymentComplete, ErrorCode, ResourceSummary, ResourceUpdate, RootCause, StackSummary,
    TrackerError, TrackerProblem, TrackerRecovered, MAX_PROBLEM_MESSAGE,
};

/// After the root turned terminal, how many more final polls wait for its own
/// terminal event when `DescribeStackEvents` lags behind `DescribeStacks`.
const FINAL_POLLS: u32 = 5;

/// While the root stack is in `REVIEW_IN_PROGRESS`, its change sets are read on the
/// first cycle and then every this many cycles (see [`crate::changeset`]).
const REVIEW_CHECK_EVERY: u32 = 5;

/// Settings of one tracker.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Stack name or stack ARN (an ARN also finds a deleted stack).
    pub stack: String,
    /// Time between two poll cycles (default 2 s).
    pub poll_interval: Duration,
    /// How long to wait for a stack that does not exist yet (default 2 min).
    pub wait_for_stack: Duration,
    /// Backoff after throttling, network and service errors.
    pub backoff: BackoffConfig,
    /// Backoff after configuration errors (credentials, region, access denied):
    /// they do not fix themselves within seconds (default 1 to 10 min).
    pub config_backoff: BackoffConfig,
    /// Timeout of one AWS request attempt (default 20 s).
    pub call_timeout: Duration,
    /// Events already delivered (by another node that polled this stack before):
    /// they update the state but are not emitted again.
    pub seen_event_ids: HashSet<String>,
    /// Where AWS calls are counted (shared with the caller's metrics).
    pub calls: CallCounter,
    /// Pushes: a wake cuts the wait between two polls short (see [`Wake`]).
    pub wake: Option<Arc<Wake>>,
    /// Time between two poll cycles within [`crate::wake::PUSH_RECENT`] of a push
    /// (default 30 s: pushes bring the news, polling is the safety net).
    pub push_poll_interval: Duration,
    /// How long a stack in `REVIEW_IN_PROGRESS` whose change set is ready but not
    /// executed is tracked before the run ends (default 10 min; see
    /// [`crate::changeset`]).
    pub review_wait: Duration,
    /// The call budget every AWS request waits for (`None`: no limit).
    pub limiter: Option<Arc<dyn crate::aws::CallLimiter>>,
}

impl TrackerConfig {
    pub fn new(stack: impl Into<String>) -> Self {
        Self {
            stack: stack.into(),
            poll_interval: Duration::from_secs(2),
            wait_for_stack: Duration::from_secs(120),
            backoff: BackoffConfig::default(),
            config_backoff: BackoffConfig {
                initial: Duration::from_secs(60),
                max: Duration::from_secs(600),
                max_slowdown: 1,
            },
            call_timeout: Duration::from_secs(20),
            seen_event_ids: HashSet::new(),
            calls: CallCounter::new(),
            wake: None,
            push_poll_interval: Duration::from_secs(30),
            review_wait: Duration::from_secs(600),
            limiter: None,
        }
    }

    /// Poll interval in seconds, fractions allowed (`--poll-interval 0.5`). Values
    /// that are not positive finite numbers keep the current interval.
    pub fn with_poll_interval_secs(mut self, secs: f64) -> Self {
        if let Ok(d) = Duration::try_from_secs_f64(secs) {
            if !d.is_zero() {
                self.poll_interval = d;
            }
        }
        self
    }
}

/// What a tracker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrackerMessage {
    /// One stack event (root or nested), in chronological order.
    ResourceUpdate(ResourceUpdate),
    /// The operation ended; always the last message of a completed run.
    DeploymentComplete(DeploymentComplete),
    /// A problem with its stable code; `retrying` says whether the tracker goes on.
    /// Sent once per distinct problem. (Before [`TrackerMessage::Error`]: untagged
    /// deserialization takes the first variant that fits.)
    Problem(TrackerProblem),
    /// The problem sent last is over.
    Recovered(TrackerRecovered),
    /// An error without a code, from outside the tracker (a socket that could not
    /// subscribe); the tracker itself sends [`TrackerMessage::Problem`].
    Error(TrackerError),
    /// The whole current state, after the first poll and before completion.
    Snapshot(TrackerState),
}

/// The current state of a tracked stack: what a late joiner needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackerState {
    /// Stack ARN (empty until resolved).
    pub stack_id: String,
    pub stack: StackSummary,
    /// Latest status of every resource of the root stack, in first-seen order.
    pub resources: Vec<ResourceSummary>,
    pub nested_stacks: Vec<NestedStackState>,
    /// Set once the operation ended.
    pub complete: Option<DeploymentComplete>,
    /// Number of distinct events of the operation seen so far.
    pub events_seen: u64,
}

/// State of one nested stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NestedStackState {
    pub stack_id: String,
    /// Logical id of the nested-stack resource in its parent.
    pub logical_id: String,
    pub parent_stack_id: String,
    pub stack: StackSummary,
    pub resources: Vec<ResourceSummary>,
}

/// How a run ended.
// One per run: boxing the completion would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The operation reached a terminal status (successful or not).
    Completed(DeploymentComplete),
    /// The stack did not appear within `wait_for_stack`.
    StackNotFound { stack: String },
    /// The receiver was dropped: nobody listens any more.
    Stopped,
    /// A permanent AWS error (validation, unknown error code...) on the root stack.
    Failed(String),
}

/// One poller for one stack. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    api: Api,
    config: TrackerConfig,
    state_tx: watch::Sender<TrackerState>,
}

impl Tracker {
    pub fn new(client: Client, config: TrackerConfig) -> Self {
        let api = Api::new(client, config.calls.clone(), config.call_timeout)
            .with_limiter(config.limiter.clone());
        let (state_tx, _) = watch::channel(TrackerState::default());
        Self {
            api,
            config,
            state_tx,
        }
    }

    /// The current state, updated after every poll cycle.
    pub fn state(&self) -> watch::Receiver<TrackerState> {
        self.state_tx.subscribe()
    }

    /// The AWS call counter of this tracker.
    pub fn calls(&self) -> CallCounter {
        self.api.calls().clone()
    }

    /// Tracks the stack's current operation to its end, sending messages on `tx`.
    /// Sending waits when `tx` is full, so a slow receiver slows polling down.
    pub async fn run(self, tx: mpsc::Sender<TrackerMessage>) -> Outcome {
        let mut run = Run {
            slowdown: Slowdown::new(self.config.backoff.max_slowdown),
            api: self.api,
            config: self.config,
            tx,
            state_tx: self.state_tx,
            feeds: Vec::new(),
            index: HashMap::new(),
            throttled: false,
            emitted: 0,
            problem: None,
            review: ReviewWatch::default(),
        };
        match run.run().await {
            Ok(o) => o,
            Err(Stop::ReceiverGone) => Outcome::Stopped,
            Err(Stop::NotFound) => Outcome::StackNotFound {
                stack: run.config.stack.clone(),
            },
            Err(Stop::Aws(e)) => {
                tracing::warn!(stack = %run.config.stack, code = e.code().as_str(), error = %e, "cannot track the stack");
                let message = sentence(format!(
                    "Cannot track stack {}: {}",
                    run.config.stack,
                    e.public_message()
                ));
                // Best effort: the receiver may be gone too.
                let _ = run
                    .tx
                    .send(TrackerMessage::Problem(TrackerProblem {
                        code: e.code(),
                        message: message.clone(),
                        retrying: false,
                        retry_at: None,
                    }))
                    .await;
                Outcome::Failed(message)
            }
        }
    }
}

/// Why a run stops early.
#[derive(Debug)]
enum Stop {
    ReceiverGone,
    NotFound,
    Aws(AwsError),
}

/// One stack being polled (the root or a nested stack).
#[derive(Debug)]
struct Feed {
    arn: String,
    name: String,
    /// `None` for the root stack.
    parent: Option<nested::ChildRef>,
    log: EventLog,
    table: ResourceTable,
    /// Latest stack status known (from the stack's own events or DescribeStacks).
    status: String,
    /// Latest status of the stack's own events (where the events being applied
    /// stand: a cleanup phase is judged by it, never by a newer DescribeStacks).
    event_status: String,
    /// A nested stack's first read stops at events older than this: its parent's
    /// first event about it in this operation (see `scope`).
    not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Events of the operation applied so far, oldest first.
    events: Vec<Event>,
    scanned: bool,
    /// Start, end and estimates of the operation and its resources.
    timing: Timing,
    /// A nested stack that reached a terminal status (polled once more, then not).
    finished: bool,
    polls_after_finish: u8,
}

impl Feed {
    fn new(arn: String, name: String, parent: Option<nested::ChildRef>) -> Self {
        Self {
            arn,
            name,
            parent,
            log: EventLog::new(),
            table: ResourceTable::new(),
            status: String::new(),
            event_status: String::new(),
            not_before: None,
            events: Vec::new(),
            scanned: false,
            timing: Timing::new(),
            finished: false,
            polls_after_finish: 0,
        }
    }

    fn active(&self) -> bool {
        !self.finished || self.polls_after_finish < 1
    }

    fn summary(&self) -> StackSummary {
        let mut s = self.table.summary(&self.name, &self.status);
        self.timing.annotate_stack(&mut s);
        s
    }

    fn resources(&self, progress: u8) -> Vec<ResourceSummary> {
        self.table
            .iter()
            .map(|r| self.resource_summary(r, progress))
            .collect()
    }

    fn resource_summary(
        &self,
        r: &crate::progress::ResourceState,
        progress: u8,
    ) -> ResourceSummary {
        let mut s = ResourceTable::resource_summary(r, progress);
        self.timing.annotate_resource(&mut s);
        s
    }
}

struct Run {
    api: Api,
    config: TrackerConfig,
    tx: mpsc::Sender<TrackerMessage>,
    state_tx: watch::Sender<TrackerState>,
    /// `feeds[0]` is the root stack.
    feeds: Vec<Feed>,
    /// Stack ARN → index in `feeds`.
    index: HashMap<String, usize>,
    slowdown: Slowdown,
    /// A call was throttled during the current cycle.
    throttled: bool,
    emitted: u64,
    /// The problem told last (code, message), until a call succeeds.
    problem: Option<(ErrorCode, String)>,
    review: ReviewWatch,
}

/// What one [`Run::poll_all`] found.
#[derive(Debug, Default)]
struct Read {
    /// Events not read before (root and nested stacks).
    new_events: usize,
    /// One of them is the root stack's own: its status changed.
    stack_moved: bool,
}

/// The root stack's time in `REVIEW_IN_PROGRESS` (see [`crate::changeset`]).
#[derive(Debug, Default)]
struct ReviewWatch {
    /// When the review was first seen.
    since: Option<Instant>,
    /// Cycles spent in review.
    cycles: u32,
    /// The last change-set check said "ended".
    ended_once: bool,
}

/// A message cut to [`MAX_PROBLEM_MESSAGE`] characters.
fn sentence(message: String) -> String {
    if message.chars().count() <= MAX_PROBLEM_MESSAGE {
        return message;
    }
    message.chars().take(MAX_PROBLEM_MESSAGE).collect()
}

impl Run {
    async fn run(&mut self) -> Result<Outcome, Stop> {
        let info = self.resolve().await?;
        tracing::info!(stack = %info.name, arn = %info.arn, status = %info.status, "tracking stack");
        let mut root = Feed::new(info.arn.clone(), info.name.clone(), None);
        root.status = info.status.clone();
        self.index.insert(info.arn.clone(), 0);
        self.feeds.push(root);
        let hints = ScopeHints {
            operation_ids: info.operation_ids.clone(),
            since: info.last_updated_time.or(info.creation_time),
            stack_status: info.status.clone(),
            operation_types: info.operation_types.clone(),
            not_before: None,
        };

        let mut last_poll = Instant::now();
        self.poll_all(Some(hints)).await?;
        self.emit(TrackerMessage::Snapshot(self.state(None)))
            .await?;

        // Whether the next cycle asks `DescribeStacks`: after the first poll, after a
        // timer cycle, and after a push read that saw the root stack's own event or
        // nothing new at all (the events API lagging behind the push, or a push
        // about the stack's status whose event is not listed yet).
        let mut ask_status = true;
        // `DescribeStacks` is behind the root's own latest event (which says the
        // operation ended): look again after the poll interval, not the push one.
        let mut status_lags = false;
        loop {
            if ask_status {
                let info = self
                    .call(
                        "DescribeStacks",
                        |api, arn| async move { api.describe_stack(&arn).await },
                        0,
                    )
                    .await?;
                if stack_phase(&info.status).is_terminal() {
                    return self.complete(info, None).await;
                }
                if let Some(cause) = self.review_ended(&info).await? {
                    return self.complete(info, Some(cause)).await;
                }
                if let Some(root) = self.feeds.first_mut() {
                    status_lags = stack_phase(&root.event_status).is_terminal();
                    root.status = info.status.clone();
                }
            }
            if !self.throttled {
                self.slowdown.relax();
            }
            self.throttled = false;
            if self.tx.is_closed() {
                return Err(Stop::ReceiverGone);
            }
            let woke = self.wait_between_polls(last_poll, status_lags).await;
            last_poll = Instant::now();
            let read = self.poll_all(None).await?;
            ask_status = woke == Woke::Timer || read.stack_moved || read.new_events == 0;
        }
    }

    /// The wait before the next poll cycle: the poll interval (the push poll
    /// interval after a recent push; longer after throttling), cut short by a push
    /// that the previous poll (begun at `last_poll`) did not answer (see
    /// [`Wake::next_read`]: pushes of one burst fold into one read).
    /// `short`: the poll interval even after a recent push.
    async fn wait_between_polls(&self, last_poll: Instant, short: bool) -> Woke {
        let Some(wake) = self.config.wake.clone() else {
            let wait = self.slowdown.apply(self.config.poll_interval);
            tokio::time::sleep(crate::backoff::jittered(wait)).await;
            return Woke::Timer;
        };
        let interval = if short {
            self.config.poll_interval
        } else {
            wake.interval(self.config.poll_interval, self.config.push_poll_interval)
        };
        let timer = crate::backoff::jittered(self.slowdown.apply(interval));
        wake.next_read(last_poll, timer).await
    }

    /// Name → stack, waiting for a stack that does not exist yet.
    async fn resolve(&mut self) -> Result<StackInfo, Stop> {
        let started = Instant::now();
        let stack = self.config.stack.clone();
        loop {
            let s = stack.clone();
            let r = self
                .retrying("DescribeStacks", false, move |api| {
                    let s = s.clone();
                    async move { api.describe_stack(&s).await }
                })
                .await;
            match r {
                Ok(info) => return Ok(info),
                Err(Stop::Aws(AwsError::NotFound(_))) => {
                    let waited = started.elapsed();
                    if waited >= self.config.wait_for_stack {
                        self.problem = None;
                        self.report(
                            ErrorCode::NotFound,
                            format!(
                                "Stack {stack} does not exist (waited {} s); check its name \
                                 and region (stack:<region>:<name> for another region).",
                                waited.as_secs()
                            ),
                            None,
                        )
                        .await?;
                        return Err(Stop::NotFound);
                    }
                    let left = self.config.wait_for_stack.saturating_sub(waited);
                    let delay = self.config.poll_interval.min(left);
                    self.report(
                        ErrorCode::NotFound,
                        format!(
                            "Stack {stack} does not exist yet; waiting up to {} s for it \
                             (check its name and region if it should exist).",
                            self.config.wait_for_stack.as_secs_f64()
                        ),
                        Some(delay),
                    )
                    .await?;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One call on feed `feed`'s ARN, through the retry loop.
    async fn call<T, F, Fut>(&mut self, what: &'static str, f: F, feed: usize) -> Result<T, Stop>
    where
        F: Fn(Api, String) -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.feed_call(what, false, f, feed).await
    }

    /// A call the run can do without (`GetTemplate`...): access denied is
    /// returned at once instead of retried (a policy may leave it out on purpose).
    async fn optional_call<T, F, Fut>(
        &mut self,
        what: &'static str,
        f: F,
        feed: usize,
    ) -> Result<T, Stop>
    where
        F: Fn(Api, String) -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.feed_call(what, true, f, feed).await
    }

    /// [`Run::call`] and [`Run::optional_call`]: `optional` returns access denied
    /// at once instead of retrying it.
    async fn feed_call<T, F, Fut>(
        &mut self,
        what: &'static str,
        optional: bool,
        f: F,
        feed: usize,
    ) -> Result<T, Stop>
    where
        F: Fn(Api, String) -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let arn = self
            .feeds
            .get(feed)
            .map(|f| f.arn.clone())
            .unwrap_or_default();
        self.retrying(what, optional, move |api| f(api, arn.clone()))
            .await
    }

    /// The retry loop: throttling, network, service and configuration errors are
    /// retried with backoff, forever; other errors are returned. A problem is told
    /// once ([`Run::report`]); the next success tells its end.
    async fn retrying<T, F, Fut>(&mut self, what: &str, optional: bool, f: F) -> Result<T, Stop>
    where
        F: Fn(Api) -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let mut attempt: u32 = 0;
        loop {
            match f(self.api.clone()).await {
                Ok(v) => {
                    self.recovered().await?;
                    return Ok(v);
                }
                Err(e @ AwsError::AccessDenied(_)) if optional => return Err(Stop::Aws(e)),
                Err(e) if e.is_retried() => {
                    let code = e.code();
                    let backoff = if code.is_configuration() {
                        self.config.config_backoff
                    } else {
                        self.config.backoff
                    };
                    let delay = backoff.delay(attempt);
                    tracing::debug!(call = what, attempt, ?delay, error = %e, "AWS call failed; retrying");
                    if code == ErrorCode::Throttled {
                        self.throttled = true;
                        self.slowdown.throttled();
                    }
                    // Short throttling is normal: told from the fourth answer in a row.
                    if code != ErrorCode::Throttled || attempt >= 3 {
                        self.report(code, e.public_message(), Some(delay)).await?;
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(Stop::Aws(e)),
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Tells a problem, unless it is the one told last (same code and message):
    /// `delay` is the wait before the next attempt (`None`: no retry).
    async fn report(
        &mut self,
        code: ErrorCode,
        message: String,
        delay: Option<Duration>,
    ) -> Result<(), Stop> {
        let message = sentence(message);
        if self
            .problem
            .as_ref()
            .is_some_and(|(c, m)| *c == code && *m == message)
        {
            return Ok(());
        }
        tracing::warn!(stack = %self.config.stack, code = code.as_str(), retry_in = ?delay, "{message}");
        self.problem = Some((code, message.clone()));
        let retry_at = delay
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| chrono::Utc::now() + d);
        self.emit(TrackerMessage::Problem(TrackerProblem {
            code,
            message,
            retrying: delay.is_some(),
            retry_at,
        }))
        .await
    }

    /// A call succeeded: the problem told last, if any, is over.
    async fn recovered(&mut self) -> Result<(), Stop> {
        let Some((code, _)) = self.problem.take() else {
            return Ok(());
        };
        tracing::info!(stack = %self.config.stack, code = code.as_str(), "CloudFormation answers again");
        self.emit(TrackerMessage::Recovered(TrackerRecovered { code }))
            .await
    }

    async fn emit(&mut self, m: TrackerMessage) -> Result<(), Stop> {
        self.tx.send(m).await.map_err(|_| Stop::ReceiverGone)
    }

    /// Polls every active stack once (the first poll of a stack scans for its
    /// operation), then applies and emits the new events oldest first.
    async fn poll_all(&mut self, root_hints: Option<ScopeHints>) -> Result<Read, Stop> {
        let mut batches: Vec<(usize, Vec<Event>)> = Vec::new();
        let mut root_hints = root_hints;
        let mut i = 0;
        // `feeds` grows while this runs: nested stacks found in new events are
        // scanned in the same cycle.
        while i < self.feeds.len() {
            if !self.feeds[i].active() {
                i += 1;
                continue;
            }
            let r = if self.feeds[i].scanned {
                self.poll_feed(i).await
            } else {
                let hints = if i == 0 {
                    root_hints.take().unwrap_or_default()
                } else {
                    ScopeHints {
                        not_before: self.feeds[i].not_before,
                        ..ScopeHints::default()
                    }
                };
                self.scan_feed(i, hints).await
            };
            let events = match r {
                Ok(ev) => ev,
                Err(Stop::Aws(e)) if i > 0 => {
                    // A nested stack we cannot read must not end the parent's run.
                    tracing::warn!(stack = %self.feeds[i].arn, "nested stack not readable: {e}");
                    self.feeds[i].finished = true;
                    self.feeds[i].polls_after_finish = 1;
                    i += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.feeds[i].finished {
                self.feeds[i].polls_after_finish =
                    self.feeds[i].polls_after_finish.saturating_add(1);
            }
            for e in &events {
                self.discover(i, e, &events);
            }
            batches.push((i, events));
            i += 1;
        }
        let mut read = Read::default();
        for (feed, e) in merge_chronological(batches) {
            read.new_events += 1;
            read.stack_moved |= feed == 0 && e.is_stack_event();
            self.apply(feed, e).await?;
        }
        self.state_tx.send_replace(self.state(None));
        Ok(read)
    }

    /// Starts (or wakes) a nested stack feed from a parent's event; `batch` is the
    /// parent's batch `e` belongs to (its first read is bounded by the parent's
    /// first event about the child in this operation, applied or in `batch`).
    fn discover(&mut self, parent: usize, e: &Event, batch: &[Event]) {
        let Some(child) = nested::child_of(e) else {
            return;
        };
        match self.index.get(&child.arn) {
            Some(&idx) => {
                if nested::reopens(e) {
                    if let Some(f) = self.feeds.get_mut(idx) {
                        f.finished = false;
                        f.polls_after_finish = 0;
                    }
                }
            }
            None => {
                let name = stack_name_from_arn(&child.arn)
                    .unwrap_or(&child.logical_id)
                    .to_string();
                let not_before = self.feeds[parent]
                    .events
                    .iter()
                    .chain(batch)
                    .filter(|p| p.logical_id == child.logical_id && p.resource_type == STACK_TYPE)
                    .map(|p| p.timestamp)
                    .min();
                tracing::info!(parent = %self.feeds[parent].name, nested = %name, ?not_before, "tracking nested stack");
                self.index.insert(child.arn.clone(), self.feeds.len());
                let mut feed = Feed::new(child.arn.clone(), name, Some(child));
                feed.not_before = not_before;
                self.feeds.push(feed);
            }
        }
    }

    /// The first poll of a stack: pages until the operation's start.
    async fn scan_feed(&mut self, i: usize, hints: ScopeHints) -> Result<Vec<Event>, Stop> {
        let mut scan = InitialScan::new(hints);
        let mut token: Option<String> = None;
        let mut pages = Vec::new();
        let rest = loop {
            let t = token.take();
            let page = self
                .call(
                    "DescribeStackEvents",
                    move |api, arn| {
                        let t = t.clone();
                        async move { api.events_page(&arn, t).await }
                    },
                    i,
                )
                .await?;
            pages.extend(page.events.iter().cloned());
            let more = scan.feed(page.events);
            match page.next_token {
                Some(t) if more => token = Some(t),
                rest => break rest,
            }
        };
        let scoped = scan.finish();
        self.learn_history(i, pages, &scoped, rest).await?;
        tracing::debug!(stack = %self.feeds[i].name, boundary = ?scoped.boundary, kind = ?scoped.kind, events = scoped.events.len(), "operation scoped");
        self.feeds[i].log.mark_seen(scoped.all_ids);
        self.feeds[i].scanned = true;
        if i == 0 {
            self.seed_root(scoped.kind).await?;
        }
        Ok(scoped.events)
    }

    /// Expected resources of the root stack; for an update, the current status of
    /// resources the update may not touch.
    async fn seed_root(&mut self, kind: OperationKind) -> Result<(), Stop> {
        let from_template = match self
            .optional_call(
                "GetTemplate",
                |api, arn| async move { api.template_resources(&arn).await },
                0,
            )
            .await
        {
            Ok(n) => n,
            Err(Stop::Aws(e)) => {
                tracing::debug!("GetTemplate unavailable: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        match from_template {
            Some(n) => self.feeds[0].table.expect_at_least(n),
            None => match self
                .optional_call(
                    "GetTemplateSummary",
                    |api, arn| async move { api.template_resource_count(&arn).await },
                    0,
                )
                .await
            {
                Ok(n) => self.feeds[0].table.expect_at_least(n),
                Err(Stop::Aws(e)) => tracing::debug!("GetTemplateSummary unavailable: {e}"),
                Err(e) => return Err(e),
            },
        }
        match self
            .optional_call(
                "ListStackResources",
                |api, arn| async move { api.list_resources(&arn).await },
                0,
            )
            .await
        {
            Ok(list) => {
                let table = &mut self.feeds[0].table;
                table.expect_at_least(list.len());
                // Resources an update or import may not touch are done already.
                if matches!(kind, OperationKind::Update | OperationKind::Import) {
                    for r in list {
                        table.set(r);
                    }
                }
            }
            Err(Stop::Aws(e)) => tracing::debug!("ListStackResources unavailable: {e}"),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// A later poll of a stack: pages until a known event.
    async fn poll_feed(&mut self, i: usize) -> Result<Vec<Event>, Stop> {
        let mut token: Option<String> = None;
        loop {
            let t = token.take();
            let page = self
                .call(
                    "DescribeStackEvents",
                    move |api, arn| {
                        let t = t.clone();
                        async move { api.events_page(&arn, t).await }
                    },
                    i,
                )
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    self.feeds[i].log.abandon_poll();
                    return Err(e);
                }
            };
            let more = self.feeds[i].log.take_page(page.events);
            match page.next_token {
                Some(t) if more => token = Some(t),
                _ => break,
            }
        }
        Ok(self.feeds[i].log.finish_poll())
    }

    /// Applies one event to its stack's state and emits it (unless a previous
    /// poller already did).
    async fn apply(&mut self, i: usize, e: Event) -> Result<(), Stop> {
        let already_sent = self.config.seen_event_ids.contains(&e.id);
        let Some(feed) = self.feeds.get_mut(i) else {
            return Ok(());
        };
        if e.status.is_empty() {
            // Nothing to show (a hook-only event): never a row with an empty status.
            tracing::debug!(stack = %feed.name, event = %e.id, "stack event without a status skipped");
            feed.events.push(e);
            return Ok(());
        }
        feed.timing.observe(&e);
        let resource = match feed.table.apply(&e, &feed.event_status) {
            Applied::Stack => {
                feed.status = e.status.clone();
                feed.event_status = e.status.clone();
                if feed.parent.is_some() {
                    if stack_phase(&e.status).is_terminal() {
                        feed.finished = true;
                    } else if e.status.ends_with("_IN_PROGRESS") {
                        // The child moves again (a rollback reaching into it).
                        feed.finished = false;
                        feed.polls_after_finish = 0;
                    }
                }
                let progress = feed.summary().progress;
                ResourceSummary {
                    logical_id: e.logical_id.clone(),
                    resource_type: STACK_TYPE.to_string(),
                    status: e.status.clone(),
                    physical_id: e.physical_id.clone(),
                    status_reason: e.reason.clone(),
                    progress,
                    ..ResourceSummary::default()
                }
            }
            // Checked above; kept for completeness.
            Applied::NoStatus => return Ok(()),
            // The replaced resource, as it is; its row stays the live one.
            Applied::Cleanup(old) => {
                ResourceTable::resource_summary(&old, feed.table.counts().progress)
            }
            Applied::Row => {
                let progress = feed.table.counts().progress;
                match feed.table.get(&e.logical_id) {
                    Some(r) => feed.resource_summary(r, progress),
                    None => return Ok(()),
                }
            }
        };
        let nested_stack = feed.parent.as_ref().map(|_| feed.name.clone());
        let update = ResourceUpdate {
            timestamp: e.timestamp,
            resource,
            stack: self.feeds[0].summary(),
            nested_stack,
            event_id: e.id.clone(),
        };
        self.feeds[i].events.push(e);
        if already_sent {
            return Ok(());
        }
        self.emitted += 1;
        self.emit(TrackerMessage::ResourceUpdate(update)).await
    }

    /// The final poll: once, then (when `await_terminal_event`) again, a poll
    /// interval apart and at most [`FINAL_POLLS`] more times, until the root's own
    /// event with the terminal status is read (the events API can lag behind
    /// `DescribeStacks`).
    async fn final_poll(
        &mut self,
        info: &StackInfo,
        await_terminal_event: bool,
    ) -> Result<(), Stop> {
        self.poll_all(None).await?;
        if !await_terminal_event {
            return Ok(());
        }
        for _ in 0..FINAL_POLLS {
            let seen = self.feeds[0]
                .events
                .iter()
                .any(|e| e.is_stack_event() && e.status == info.status);
            if seen {
                break;
            }
            tokio::time::sleep(self.config.poll_interval).await;
            self.poll_all(None).await?;
        }
        Ok(())
    }

    /// For a root stack in `REVIEW_IN_PROGRESS`: the cause to end the run with, once
    /// its change sets say nothing more will happen (twice in a row).
    async fn review_ended(&mut self, info: &StackInfo) -> Result<Option<RootCause>, Stop> {
        if info.status != "REVIEW_IN_PROGRESS" {
            self.review = ReviewWatch::default();
            return Ok(None);
        }
        let since = *self.review.since.get_or_insert_with(Instant::now);
        let cycle = self.review.cycles;
        self.review.cycles = cycle.saturating_add(1);
        if cycle % REVIEW_CHECK_EVERY != 0 && !self.review.ended_once {
            return Ok(None);
        }
        let sets = match self
            .optional_call(
                "ListChangeSets",
                |api, arn| async move { api.change_sets(&arn).await },
                0,
            )
            .await
        {
            Ok(sets) => sets,
            Err(Stop::Aws(e)) => {
                tracing::debug!(stack = %info.name, "ListChangeSets unavailable: {e}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match changeset::verdict(&info.name, &sets, since.elapsed(), self.config.review_wait) {
            changeset::Review::Waiting => {
                self.review.ended_once = false;
                Ok(None)
            }
            changeset::Review::Ended(_) if !self.review.ended_once => {
                self.review.ended_once = true;
                Ok(None)
            }
            changeset::Review::Ended(cause) => {
                tracing::info!(stack = %info.name, reason = %cause.reason, "change-set review ended");
                Ok(Some(cause))
            }
        }
    }

    /// The operation is over (a terminal status, or a review that ended with
    /// `cause`): final poll, then the completion message.
    async fn complete(
        &mut self,
        info: StackInfo,
        cause: Option<RootCause>,
    ) -> Result<Outcome, Stop> {
        match self.final_poll(&info, cause.is_none()).await {
            Ok(()) => {}
            // The outcome is known; a final poll that fails for good (transient errors
            // were retried) loses events but must not turn it into a failed run.
            Err(Stop::Aws(e)) => {
                tracing::warn!(stack = %info.name, "final poll failed: {e}");
                self.problem = None;
                self.report(
                    e.code(),
                    format!(
                        "Could not read the last events of {}: {}",
                        info.name,
                        e.public_message()
                    ),
                    None,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        let phase = stack_phase(&info.status);
        let success = phase == StackPhase::Succeeded;
        // Resources that never had an event (an endpoint that reports only the
        // stack's own events, or untouched resources): take their listed status.
        if success {
            if let Ok(list) = self
                .optional_call(
                    "ListStackResources",
                    |api, arn| async move { api.list_resources(&arn).await },
                    0,
                )
                .await
            {
                let table = &mut self.feeds[0].table;
                // What exists now is the truth: resources a condition left out of
                // the template count no more, and every listed row takes its
                // listed status and physical id (a replaced resource's live one).
                table.set_expected(list.len());
                table.reconcile(list);
            }
        }
        self.feeds[0].status = info.status.clone();
        let root_cause = if success {
            None
        } else {
            Some(cause.unwrap_or_else(|| self.root_cause(&info)))
        };
        let done = DeploymentComplete {
            success,
            stack: self.feeds[0].summary(),
            outputs: if success {
                info.outputs.clone()
            } else {
                Vec::new()
            },
            duration_seconds: self.duration_seconds(&info.status),
            root_cause,
        };
        let state = self.state(Some(done.clone()));
        self.state_tx.send_replace(state.clone());
        self.emit(TrackerMessage::Snapshot(state)).await?;
        self.emit(TrackerMessage::DeploymentComplete(done.clone()))
            .await?;
        tracing::info!(stack = %info.name, status = %info.status, calls = self.api.calls().total(), "operation complete");
        Ok(Outcome::Completed(done))
    }

    fn root_cause(&self, info: &StackInfo) -> RootCause {
        let by_stack: HashMap<String, Vec<Event>> = self
            .feeds
            .iter()
            .map(|f| (f.arn.clone(), f.events.clone()))
            .collect();
        rootcause::find(&info.arn, &by_stack).unwrap_or_else(|| {
            // No resource failed: the stack's own reason is all there is.
            let reason = if info.status_reason.is_empty() {
                self.feeds[0]
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.is_stack_event() && !e.reason.is_empty())
                    .map(|e| e.reason.clone())
                    .unwrap_or_default()
            } else {
                info.status_reason.clone()
            };
            RootCause {
                logical_id: info.name.clone(),
                resource_type: STACK_TYPE.to_string(),
                status: info.status.clone(),
                reason,
            }
        })
    }

    /// From the operation's first event to its terminal event (whole seconds).
    fn duration_seconds(&self, terminal_status: &str) -> u64 {
        let first = self
            .feeds
            .iter()
            .filter_map(|f| f.events.first().map(|e| e.timestamp))
            .min();
        let root = &self.feeds[0].events;
        let end = root
            .iter()
            .rev()
            .find(|e| e.is_stack_event() && e.status == terminal_status)
            .or_else(|| root.last())
            .map(|e| e.timestamp);
        match (first, end) {
            (Some(a), Some(b)) => u64::try_from((b - a).num_seconds()).unwrap_or(0),
            _ => 0,
        }
    }

    fn state(&self, complete: Option<DeploymentComplete>) -> TrackerState {
        let Some(root) = self.feeds.first() else {
            return TrackerState::default();
        };
        let summary = root.summary();
        TrackerState {
            stack_id: root.arn.clone(),
            resources: root.resources(summary.progress),
            stack: summary,
            nested_stacks: self
                .feeds
                .iter()
                .skip(1)
                .map(|f| {
                    let s = f.summary();
                    NestedStackState {
                        stack_id: f.arn.clone(),
                        logical_id: f
                            .parent
                            .as_ref()
                            .map(|p| p.logical_id.clone())
                            .unwrap_or_default(),
                        parent_stack_id: f
                            .parent
                            .as_ref()
                            .map(|p| p.parent_arn.clone())
                            .unwrap_or_default(),
                        resources: f.resources(s.progress),
                        stack: s,
                    }
                })
                .collect(),
            complete,
            events_seen: self.feeds.iter().map(|f| f.events.len() as u64).sum(),
        }
    }
}

/// Merges per-stack batches (each oldest first) into one chronological sequence,
/// keeping each stack's own order; ties go to the stack found first (the parent).
fn merge_chronological(batches: Vec<(usize, Vec<Event>)>) -> Vec<(usize, Event)> {
    let total = batches.iter().map(|(_, b)| b.len()).sum();
    let mut iters: Vec<(usize, std::iter::Peekable<std::vec::IntoIter<Event>>)> = batches
        .into_iter()
        .map(|(i, b)| (i, b.into_iter().peekable()))
        .collect();
    let mut out = Vec::with_capacity(total);
    loop {
        let mut best: Option<(usize, chrono::DateTime<chrono::Utc>)> = None;
        for (k, (_, it)) in iters.iter_mut().enumerate() {
            if let Some(e) = it.peek() {
                if best.is_none_or(|(_, t)| e.timestamp < t) {
                    best = Some((k, e.timestamp));
                }
            }
        }
        let Some((k, _)) = best else { break };
        let (feed, it) = &mut iters[k];
        if let Some(e) = it.next() {
            out.push((*feed, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_support::ev;

    #[test]
    fn merge_keeps_each_stack_in_order() {
        let a = vec![
            ev("a1", "A", "S", 1),
            ev("a2", "A", "S", 3),
            ev("a3", "A", "S", 3),
        ];
        let b = vec![
            ev("b1", "B", "S", 2),
            ev("b2", "B", "S", 3),
            ev("b3", "B", "S", 1),
        ];
        let out: Vec<String> = merge_chronological(vec![(0, a), (1, b)])
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        assert_eq!(out, ["a1", "b1", "a2", "a3", "b2", "b3"]);
    }

    #[test]
    fn poll_interval_fractions() {
        let c = TrackerConfig::new("s").with_poll_interval_secs(0.25);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        let c = c
            .with_poll_interval_secs(-1.0)
            .with_poll_interval_secs(f64::NAN);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
    }
}
