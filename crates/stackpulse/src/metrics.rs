//! Prometheus metrics: one recorder per process, rendered at `GET /metrics`.
//!
//! Counters and the latency histogram are recorded where things happen (hub,
//! outbox, writer); gauges that are cheaper to read than to track (connections,
//! subscriptions, topics) are set just before rendering.
//!
//! The delivered-messages counts are the counters on the per-delivery path, so
//! they are kept per thread ([`add_delivered`], [`add_direct`], [`add_writes`]: a
//! plain load and store on the thread's own cache line, no shared atomic) and
//! summed when `/metrics` is rendered ([`delivered_total`], [`direct_total`],
//! [`writes_total`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static DELIVERY_LATENCY: OnceLock<metrics::Histogram> = OnceLock::new();

/// The per-thread counts: event frames written, how many of them the fan-out
/// wrote directly to the socket, and the socket writes that carried them.
#[derive(Clone, Copy)]
enum Count {
    Delivered = 0,
    Direct = 1,
    Writes = 2,
}

/// How many [`Count`]s there are.
const COUNTS: usize = 3;

/// One thread's counts, on a cache line of their own.
#[repr(align(64))]
#[derive(Default)]
struct Shard([AtomicU64; COUNTS]);

/// Every live thread's shard, and what threads that ended had counted.
static SHARDS: parking_lot::Mutex<(Vec<Arc<Shard>>, [u64; COUNTS])> =
    parking_lot::Mutex::new((Vec::new(), [0; COUNTS]));

/// This thread's shard, registered on first use and folded into the total when
/// the thread ends.
struct Local(Arc<Shard>);

impl Local {
    fn new() -> Local {
        let shard = Arc::new(Shard::default());
        SHARDS.lock().0.push(shard.clone());
        Local(shard)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut shards = SHARDS.lock();
        for (ended, count) in shards.1.iter_mut().zip(&self.0 .0) {
            *ended += count.load(Ordering::Relaxed);
        }
        shards.0.retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

/// Counts `n` event frames written to sockets.
pub fn add_delivered(n: u64) {
    add(Count::Delivered, n);
}

/// Counts one event frame the fan-out wrote straight to its socket (also
/// counted by [`add_delivered`]).
pub fn add_direct() {
    add(Count::Direct, 1);
}

/// Counts `n` socket writes that carried event frames (a writer's batch, or a
/// direct write): with [`add_delivered`], how many events a write carries, which
/// `--write-delay` raises.
pub fn add_writes(n: u64) {
    add(Count::Writes, n);
}

fn add(count: Count, n: u64) {
    if n == 0 {
        return;
    }
    // Only this thread writes its shard, so a load and a store suffice.
    let counted = LOCAL.try_with(|local| {
        let shard = &local.0 .0[count as usize];
        shard.store(shard.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    });
    if counted.is_err() {
        // The thread is ending and its shard is gone: count with the ended ones.
        SHARDS.lock().1[count as usize] += n;
    }
}

/// Event frames written to sockets so far, by every thread.
pub fn delivered_total() -> u64 {
    total(Count::Delivered)
}

/// Event frames the fan-out wrote straight to sockets so far, by every thread.
pub fn direct_total() -> u64 {
    total(Count::Direct)
}

/// Socket writes that carried event frames so far, by every thread.
pub fn writes_total() -> u64 {
    total(Count::Writes)
}

fn total(count: Count) -> u64 {
    let shards = SHARDS.lock();
    shards.1[count as usize]
        + shards
            .0
            .iter()
            .map(|s| s.0[count as usize].load(Ordering::Relaxed))
            .sum::<u64>()
}

/// The delivery-latency histogram, registered once per process: registering it per
/// connection kept ~400 bytes per idle connection alive in the recorder.
pub fn delivery_latency() -> metrics::Histogram {
    DELIVERY_LATENCY
        .get_or_init(|| {
            install();
            metrics::histogram!("stackpulse_delivery_latency_seconds")
        })
        .clone()
}

/// Sets the delivered-messages counters from the per-thread counts; called just
/// before rendering.
pub fn publish_delivered() {
    metrics::counter!("stackpulse_messages_delivered_total").absolute(delivered_total());
    metrics::counter!("stackpulse_messages_delivered_direct_total").absolute(direct_total());
    metrics::counter!("stackpulse_event_writes_total").absolute(writes_total());
}

/// Delivery latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets of the AWS-side histograms (detection delay, budget wait), in seconds.
const TRACKING_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("stackpulse_delivery_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(crate::tracking::DETECTION_DELAY.into()),
                    TRACKING_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("stackpulse_tracking_aws_budget_wait_seconds".into()),
                    TRACKING_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Folds histogram samples into their buckets every few seconds, for as long as
/// the runtime runs. `build_recorder` (unlike `install`) spawns no upkeep task, and
/// without one every recorded latency stays in memory until `/metrics` is scraped:
/// 2 million deliveries grew the server by ~40 MB in the benchmark.
pub fn spawn_upkeep() {
    let Some(handle) = install() else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("stackpulse_connections", "Open WebSocket connections");
    describe_gauge!(
        "stackpulse_subscriptions",
        "Open subscriptions on this node"
    );
    describe_gauge!("stackpulse_topics", "Topics stored");
    describe_counter!(
        "stackpulse_events_published_total",
        "Events accepted by the hub"
    );
    describe_counter!(
        "stackpulse_messages_delivered_total",
        "Event frames written to sockets"
    );
    describe_counter!(
        "stackpulse_messages_delivered_direct_total",
        "Event frames the fan-out wrote straight to the socket, without waking the connection's writer (part of stackpulse_messages_delivered_total)"
    );
    describe_counter!(
        "stackpulse_messages_dropped_total",
        "Messages not queued because the connection was full or closing"
    );
    describe_counter!(
        "stackpulse_slow_consumer_closes_total",
        "Connections closed because their outgoing queue overflowed"
    );
    describe_counter!(
        "stackpulse_connections_refused_total",
        "Connections refused at admission"
    );
    describe_counter!(
        "stackpulse_client_errors_total",
        "Client frames answered with an error"
    );
    describe_counter!(
        "stackpulse_subscription_repairs_total",
        "Subscriptions repaired from history after a gap"
    );
    describe_histogram!(
        "stackpulse_delivery_latency_seconds",
        Unit::Seconds,
        "From stamping an event to writing it to a socket (sampled: one socket write in 16, its oldest event)"
    );
}
