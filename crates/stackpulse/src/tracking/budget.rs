//! The AWS call budget: at most `--aws-max-rps` CloudFormation requests per second
//! per account and region, for all the stack pollers of a node (or of a cluster,
//! with Redis), shared fairly between stacks.
//!
//! Data flow. Every request of a poller's [`stackpulse_cfn::aws::Api`] first awaits
//! [`CallLimiter::acquire`] on the poller's [`StackBudget`] (the [`Budget`] plus the
//! poller's topic, so a root stack and its nested stacks count as one stack). The
//! [`Budget`] keeps one [`Lane`] per `account/region`; a lane holds one queue of
//! waiting requests per stack and serves the stacks round-robin, one request each
//! per turn, so a busy stack cannot starve the others. The lane's dispatcher task
//! grants one request per slot, and slots are spaced `1 / max_rps` apart with no
//! burst, so any one-second window holds at most `max_rps` of them:
//! - on one node ([`Slots::Local`]) the lane keeps its own next free slot;
//! - with Redis ([`Slots::Redis`]) every node reserves its slots from one key per
//!   account and region (`sp:budget:<account>/<region>`) with a Lua script on
//!   Redis's clock (GCRA), so N nodes of one account together stay within its
//!   budget, and nodes of other accounts in the same region do not take from it.
//!   While Redis is unreachable each node falls back to its own slots (logged once
//!   per outage).
//!
//! A node signs every request with one set of credentials, so all its calls in a
//! region normally belong to one account, which the stack ARNs reveal only after
//! the first answer. So each region has one primary lane, charged with every call
//! whose account is unknown or is the first account seen in that region; a call
//! that names another account (another ARN) gets a lane of its own. Keying the
//! local lanes by the account from the start would split the first calls from the
//! later ones and briefly allow twice the budget. The primary lane's Redis key
//! follows what the node knows ([`Budget::redis_key`]): `sp:budget:<region>` until
//! the region's first account is known (the calls that resolve the first stacks of
//! a node that just started), `sp:budget:<account>/<region>` from then on. Those
//! first calls are paced on the region-only key, which other nodes of the account
//! (already on the account's key) do not see: while a node starts, the account can
//! get up to twice its budget for about as many requests as it resolves stacks at
//! once. (The account comes from the ARNs, so no STS call is needed.)
//!
//! Metrics: `stackpulse_tracking_aws_budget_wait_seconds` (histogram: how long
//! each request waited for the budget) and `stackpulse_tracking_aws_budget_waiting`
//! (requests waiting now).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use stackpulse_cfn::aws::{CallLimiter, CallScope, Permit};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Default of `--aws-max-rps`.
pub const DEFAULT_MAX_RPS: f64 = 4.0;
/// Lanes kept at most (accounts × regions; both come from AWS or the operator).
const MAX_LANES: usize = 256;
/// How often an idle lane's dispatcher checks whether the lane still exists.
const IDLE_CHECK: Duration = Duration::from_secs(30);
/// How long one Redis reservation may take before the node uses its own slots.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Reserves the next slot of a lane on Redis's clock. Returns the microseconds to
/// wait until the slot. KEYS: the lane key; ARGV: interval in microseconds.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
local at = math.max(now, tat)
redis.call('SET', KEYS[1], string.format('%d', at + interval), 'PX', math.ceil((at + interval - now) / 1000) + 1000)
return at - now
";

/// Where a lane's slots come from.
pub enum Slots {
    /// This process alone.
    Local,
    /// One Redis key per lane, shared by every node.
    Redis {
        conn: ConnectionManager,
        script: Script,
        /// Whether the last reservation failed (to log an outage once).
        down: AtomicBool,
    },
}

impl Slots {
    /// Slots shared through the Redis at `url`.
    pub fn redis(url: &str) -> Result<Slots, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid --redis-url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        Ok(Slots::Redis {
            conn,
            script: Script::new(RESERVE),
            down: AtomicBool::new(false),
        })
    }
}

/// The call budget of a node. See the module docs.
pub struct Budget {
    /// Time between two slots of a lane (`1 / max_rps`).
    interval: Duration,
    slots: Slots,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// Region → account, learned from ARNs.
    accounts: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// One account and region: the stacks waiting for it, served round-robin.
struct Lane {
    key: String,
    queues: Mutex<RoundRobin>,
    /// Signalled when a request starts waiting.
    arrived: Notify,
    /// The next free local slot ([`Slots::Local`] and the Redis fallback).
    next_free: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct RoundRobin {
    /// Stacks with waiting requests, in turn order.
    turn: VecDeque<Arc<str>>,
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
}

impl RoundRobin {
    fn push(&mut self, stack: &str, tx: oneshot::Sender<()>) {
        if let Some(q) = self.waiting.get_mut(stack) {
            q.push_back(tx);
            return;
        }
        let stack: Arc<str> = Arc::from(stack);
        self.turn.push_back(stack.clone());
        self.waiting.insert(stack, VecDeque::from([tx]));
    }

    /// Grants one request: the first live one of the stack whose turn it is. That
    /// stack goes to the back of the line if it has more. Returns whether a
    /// request was granted (`false`: nobody waits any more).
    fn grant(&mut self) -> bool {
        while let Some(stack) = self.turn.pop_front() {
            let Some(q) = self.waiting.get_mut(&stack) else {
                continue;
            };
            let mut granted = false;
            while let Some(tx) = q.pop_front() {
                // A closed sender: that request was given up (its poller stopped).
                if tx.send(()).is_ok() {
                    granted = true;
                    break;
                }
            }
            if q.is_empty() {
                self.waiting.remove(&stack);
            } else {
                self.turn.push_back(stack);
            }
            if granted {
                return true;
            }
        }
        false
    }

    fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

impl Budget {
    /// A budget of `max_rps` requests per second per account and region (values
    /// that are not positive mean the default).
    pub fn new(max_rps: f64, slots: Slots) -> Arc<Budget> {
        let rps = if max_rps.is_finite() && max_rps > 0.0 {
            max_rps
        } else {
            DEFAULT_MAX_RPS
        };
        describe_metrics();
        Arc::new(Budget {
            interval: Duration::from_secs_f64(1.0 / rps),
            slots,
            lanes: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
        })
    }

    /// The time between two requests of one account and region.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The lane key of a scope: the region (its primary lane), or `account/region`
    /// for an account other than the region's first.
    fn key(&self, scope: &CallScope) -> String {
        let Some(account) = &scope.account else {
            return scope.region.clone();
        };
        let mut accounts = self.accounts.lock();
        match accounts.get(&scope.region) {
            Some(first) if first == account => scope.region.clone(),
            Some(_) => format!("{account}/{}", scope.region),
            None if accounts.len() < MAX_LANES => {
                accounts.insert(scope.region.clone(), account.clone());
                scope.region.clone()
            }
            None => format!("{account}/{}", scope.region),
        }
    }

    /// The Redis key of the lane `lane`: `sp:budget:<account>/<region>`, or
    /// `sp:budget:<region>` for a region's primary lane while its account is not
    /// known yet (see the module docs).
    pub fn redis_key(&self, lane: &str) -> String {
        if lane.contains('/') {
            return format!("sp:budget:{lane}");
        }
        match self.accounts.lock().get(lane) {
            Some(account) => format!("sp:budget:{account}/{lane}"),
            None => format!("sp:budget:{lane}"),
        }
    }

    /// The lane of `key`, started at first use.
    fn lane(self: &Arc<Self>, key: String) -> Arc<Lane> {
        let mut lanes = self.lanes.lock();
        if let Some(l) = lanes.get(&key) {
            return l.clone();
        }
        let lane = Arc::new(Lane {
            key: key.clone(),
            queues: Mutex::new(RoundRobin::default()),
            arrived: Notify::new(),
            next_free: Mutex::new(None),
        });
        if lanes.len() < MAX_LANES {
            lanes.insert(key, lane.clone());
        } else {
            // Not kept: it still limits its own requests; logged because the
            // lanes are accounts × regions and this many means something is odd.
            tracing::warn!(lane = %lane.key, "too many AWS budget lanes; this one is not shared");
        }
        tokio::spawn(dispatch(Arc::downgrade(self), Arc::downgrade(&lane)));
        lane
    }

    /// Waits for a slot of `scope` for `stack`.
    pub async fn acquire(self: &Arc<Self>, scope: &CallScope, stack: &str) {
        let lane = self.lane(self.key(scope));
        let (tx, rx) = oneshot::channel();
        lane.queues.lock().push(stack, tx);
        lane.arrived.notify_one();
        let started = Instant::now();
        let gauge = metrics::gauge!("stackpulse_tracking_aws_budget_waiting");
        gauge.increment(1.0);
        // An error means the dispatcher is gone (shutdown): go ahead.
        let _ = rx.await;
        gauge.decrement(1.0);
        metrics::histogram!("stackpulse_tracking_aws_budget_wait_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// The time of the lane's next slot, reserved.
    async fn reserve(&self, lane: &Lane) -> Instant {
        if let Slots::Redis { conn, script, down } = &self.slots {
            let micros = u64::try_from(self.interval.as_micros()).unwrap_or(u64::MAX);
            let mut conn = conn.clone();
            let mut call = script.prepare_invoke();
            call.key(self.redis_key(&lane.key)).arg(micros);
            match tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
                Ok(Ok(wait)) => {
                    if down.swap(false, Ordering::AcqRel) {
                        tracing::info!(lane = %lane.key, "AWS call budget shared through Redis again");
                    }
                    let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
                    return Instant::now() + wait;
                }
                Ok(Err(e)) => self.redis_down(down, lane, &e.to_string()),
                Err(_) => self.redis_down(down, lane, "timed out"),
            }
        }
        let now = Instant::now();
        let mut next = lane.next_free.lock();
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.interval);
        at
    }

    fn redis_down(&self, down: &AtomicBool, lane: &Lane, error: &str) {
        if !down.swap(true, Ordering::AcqRel) {
            tracing::warn!(lane = %lane.key, error, "cannot reserve AWS calls in Redis; this node keeps its own budget until Redis is back");
        }
    }
}

/// The dispatcher of one lane: waits for a request, reserves a slot, grants the
/// request whose turn it is at the slot. Ends with the budget.
async fn dispatch(budget: std::sync::Weak<Budget>, lane: std::sync::Weak<Lane>) {
    loop {
        let Some(l) = lane.upgrade() else { return };
        // Wait for a request (a notification arriving before this point is kept);
        // now and then without holding the lane, so a lane nobody keeps ends.
        if l.queues.lock().len() == 0 {
            let _ = tokio::time::timeout(IDLE_CHECK, l.arrived.notified()).await;
            continue;
        }
        let Some(b) = budget.upgrade() else { return };
        let at = b.reserve(&l).await;
        drop(b);
        tokio::time::sleep_until(at).await;
        // Nobody waiting any more (given up meanwhile) wastes the slot, which only
        // errs on the side of fewer calls.
        l.queues.lock().grant();
    }
}

/// A [`Budget`] as one poller's [`CallLimiter`]: every request of its tracker
/// (root and nested stacks) is charged to the poller's topic for fairness.
#[derive(Debug, Clone)]
pub struct StackBudget {
    pub budget: Arc<Budget>,
    pub topic: Arc<str>,
}

impl CallLimiter for StackBudget {
    fn acquire<'a>(&'a self, scope: &'a CallScope, _stack: &'a str) -> Permit<'a> {
        Box::pin(self.budget.acquire(scope, &self.topic))
    }
}

fn describe_metrics() {
    metrics::describe_histogram!(
        "stackpulse_tracking_aws_budget_wait_seconds",
        metrics::Unit::Seconds,
        "How long each CloudFormation request waited for the call budget (--aws-max-rps)"
    );
    metrics::describe_gauge!(
        "stackpulse_tracking_aws_budget_waiting",
        "CloudFormation requests waiting for the call budget now"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> CallScope {
        CallScope {
            account: Some("123456789012".into()),
            region: "eu-west-1".into(),
        }
    }

    /// Starts `n` requests of `stack` and records, in `log`, the stack and the
    /// time of each grant.
    fn spawn_requests(
        budget: &Arc<Budget>,
        stack: &'static str,
        n: usize,
        log: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (budget, log) = (budget.clone(), log.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                budget.acquire(&scope(), stack).await;
                log.lock().push((stack, Instant::now()));
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate() {
        let budget = Budget::new(4.0, Slots::Local);
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        // 20 requests at once, from 4 stacks.
        let tasks: Vec<_> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|s| spawn_requests(&budget, s, 5, &log))
            .collect();
        for t in tasks {
            t.await.expect("requests");
        }
        let log = log.lock();
        assert_eq!(log.len(), 20);
        for pair in log.windows(2) {
            assert!(
                pair[1].1 - pair[0].1 >= Duration::from_millis(250),
                "{:?}",
                pair[1].1 - pair[0].1
            );
        }
        // No burst: the first at once, the 20th 19 slots later.
        assert_eq!(log[0].1, start);
        assert_eq!(log[19].1 - start, Duration::from_millis(250) * 19);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stack_does_not_starve_the_others() {
        let budget = Budget::new(4.0, Slots::Local);
        let log = Arc::new(Mutex::new(Vec::new()));
        // A stack with 40 requests queued at once first, then two with 2 each.
        let busy: Vec<_> = (0..40)
            .map(|_| spawn_requests(&budget, "busy", 1, &log))
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let quiet: Vec<_> = ["q1", "q2"]
            .into_iter()
            .map(|s| spawn_requests(&budget, s, 2, &log))
            .collect();
        for t in quiet {
            t.await.expect("quiet stacks");
        }
        let granted = log.lock().len();
        // The quiet stacks were served in turn with the busy one: their 4 requests
        // within the first 8 or so grants, not after the busy stack's 40.
        assert!(granted <= 8, "quiet stacks waited for {granted} grants");
        for t in busy {
            t.await.expect("busy stack");
        }
        assert_eq!(log.lock().len(), 44);
    }

    #[tokio::test(start_paused = true)]
    async fn lanes_are_per_account_and_region() {
        let budget = Budget::new(1.0, Slots::Local);
        let start = Instant::now();
        let unknown = CallScope {
            account: None,
            region: "eu-west-1".into(),
        };
        let other_region = CallScope {
            account: Some("123456789012".into()),
            region: "us-east-1".into(),
        };
        let other_account = CallScope {
            account: Some("999999999999".into()),
            region: "eu-west-1".into(),
        };
        budget.acquire(&unknown, "a").await;
        budget.acquire(&other_region, "a").await;
        // Another region's first slot is not delayed by this one's.
        assert_eq!(Instant::now(), start);
        // The account revealed later shares the lane of the calls made before.
        budget.acquire(&scope(), "b").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // Another account in the same region has a lane of its own.
        budget.acquire(&other_account, "c").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        budget.acquire(&unknown, "b").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_given_up_request_passes_its_turn_on() {
        let budget = Budget::new(2.0, Slots::Local);
        budget.acquire(&scope(), "a").await;
        let start = Instant::now();
        let b2 = budget.clone();
        let gone = tokio::spawn(async move { b2.acquire(&scope(), "gone").await });
        tokio::task::yield_now().await;
        gone.abort();
        budget.acquire(&scope(), "c").await;
        assert!(Instant::now() - start <= Duration::from_millis(500));
    }
}
