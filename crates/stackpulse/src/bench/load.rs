//! One `bench run`, phase by phase:
//!
//! 1. read the server's CPU and RSS;
//! 2. open the connections at the connect rate (open loop), each subscribing to
//!    topic i mod K, and time each connect+subscribe;
//! 3. let the server settle, read RSS again: the idle cost per connection;
//! 4. publish the events at the event rate, wait until every expected delivery has
//!    arrived (or the drain timeout), read CPU again: deliveries per CPU-second;
//! 5. stop the readers and gather their latencies.
//!
//! Topics are fresh names per run, so no history or snapshot precedes the events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connect::{self, ConnectError, Dialer, ReadOutcome};
use super::procfs::{self, ProcError};
use super::publish::Publisher;
use super::stats::{Report, Spread};
use super::RunArgs;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Proc(#[from] ProcError),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("invalid arguments: {0}")]
    Invalid(String),
}

/// What a connection task reports once its subscription is confirmed or refused.
struct Connected {
    topic: usize,
    latency_us: u32,
    error: Option<String>,
}

fn check(args: &RunArgs) -> Result<(), BenchError> {
    let invalid = |m: &str| Err(BenchError::Invalid(m.to_owned()));
    if args.topics == 0 {
        return invalid("--topics must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return invalid("--rate must be a positive number");
    }
    if !(args.connect_rate.is_finite() && args.connect_rate > 0.0) {
        return invalid("--connect-rate must be a positive number");
    }
    if !(args.settle.is_finite() && args.settle >= 0.0) {
        return invalid("--settle must be a non-negative number of seconds");
    }
    if !(args.drain_timeout.is_finite() && args.drain_timeout >= 0.0) {
        return invalid("--drain-timeout must be a non-negative number of seconds");
    }
    Ok(())
}

fn token(args: &RunArgs) -> Result<Option<String>, BenchError> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::TokenFile {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(args.token.clone())
}

/// Raises this process's open-file limit to the hard limit; warns when it is
/// still too low for the connections asked for.
fn raise_fd_limit(connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < connections as u64 + 64 => eprintln!(
            "stackpulse bench: warning: the open-file limit is {limit}, fewer than {connections} connections need"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("stackpulse bench: warning: cannot raise the open-file limit: {e}"),
    }
}

/// Runs one benchmark.
pub async fn run(args: RunArgs) -> Result<Report, BenchError> {
    check(&args)?;
    raise_fd_limit(args.connections);
    let run_id: u32 = rand::random();
    let topics: Arc<[String]> = (0..args.topics)
        .map(|k| format!("bench-{run_id:08x}-{k}"))
        .collect();
    let dialer = Dialer::new(args.target, &args.ws_url, token(&args)?, args.source_addrs).await?;
    let publisher = Arc::new(Publisher::new(
        args.target,
        &args.publish_url,
        args.publisher_key.clone(),
        args.payload_bytes,
    )?);
    let pids = args.server_pids.clone();
    let before = procfs::sample(&pids)?;

    // Phase 2: connect.
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let per_conn_hint = usize::try_from(args.events / args.topics as u64).unwrap_or(0) + 1;
    let (connected_tx, mut connected_rx) = mpsc::channel::<Connected>(args.connections.max(1));
    let mut readers: JoinSet<Option<ReadOutcome>> = JoinSet::new();
    let connect_started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.connect_rate);
    for i in 0..args.connections {
        tokio::time::sleep_until((connect_started + period.mul_f64(i as f64)).into()).await;
        let topic = i % args.topics;
        let (dialer, topics, tx) = (dialer.clone(), topics.clone(), connected_tx.clone());
        let (stop, delivered) = (stop.clone(), delivered.clone());
        readers.spawn(async move {
            let (took, result) = connect::timed_open(&dialer, i, &topics[topic]).await;
            let latency_us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
            match result {
                Ok(ws) => {
                    let _ = tx
                        .send(Connected {
                            topic,
                            latency_us,
                            error: None,
                        })
                        .await;
                    drop(tx);
                    Some(connect::read_until(ws, stop, delivered, per_conn_hint).await)
                }
                Err(e) => {
                    let _ = tx
                        .send(Connected {
                            topic,
                            latency_us,
                            error: Some(e.to_string()),
                        })
                        .await;
                    None
                }
            }
        });
    }
    drop(connected_tx);
    let mut connect_us = Vec::with_capacity(args.connections);
    let mut subscribers = vec![0u64; args.topics];
    let mut connect_errors = 0;
    let mut first_connect_error = None;
    while let Some(c) = connected_rx.recv().await {
        match c.error {
            None => {
                connect_us.push(c.latency_us);
                subscribers[c.topic] += 1;
            }
            Some(e) => {
                connect_errors += 1;
                first_connect_error.get_or_insert(e);
            }
        }
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let connected = connect_us.len();

    // Phase 3: idle cost.
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let idle = procfs::sample(&pids)?;

    // Phase 4: load.
    let expected: u64 = (0..args.events)
        .map(|n| subscribers[usize::try_from(n).unwrap_or(0) % args.topics])
        .sum();
    let mut report = Report {
        label: args.label.clone(),
        target: args.target.name().into(),
        connections: args.connections,
        topics: args.topics,
        connected,
        connect_errors,
        first_connect_error,
        connect: Spread::from_us(&mut connect_us),
        connect_rate: args.connect_rate,
        connect_seconds,
        rss_before_kib: before.rss_kib,
        rss_idle_kib: idle.rss_kib,
        rss_per_connection_bytes: if connected == 0 {
            0.0
        } else {
            idle.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0 / connected as f64
        },
        server_cpu_connect_s: idle.cpu.saturating_sub(before.cpu).as_secs_f64(),
        events: args.events,
        rate: args.rate,
        expected_deliveries: expected,
        rss_after_kib: idle.rss_kib,
        ..Report::default()
    };
    if args.events > 0 {
        let load_before = procfs::sample(&pids)?;
        let load_started = Instant::now();
        let published = publisher
            .run(
                topics.clone(),
                args.events,
                args.rate,
                args.publish_concurrency,
            )
            .await;
        let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
        while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let load_seconds = load_started.elapsed().as_secs_f64();
        let after = procfs::sample(&pids)?;
        let cpu = after.cpu.saturating_sub(load_before.cpu).as_secs_f64();
        let deliveries = delivered.load(Ordering::Relaxed);
        report.published = published.published;
        report.publish_errors = published.errors;
        report.first_publish_error = published.first_error;
        report.deliveries = deliveries;
        report.load_seconds = load_seconds;
        report.deliveries_per_s = deliveries as f64 / load_seconds.max(1e-9);
        report.server_cpu_load_s = cpu;
        report.server_sys_load_s = after.sys.saturating_sub(load_before.sys).as_secs_f64();
        // One USER_HZ tick (10 ms) is the resolution: below it the ratio is noise.
        report.deliveries_per_cpu_s = if cpu > 0.0 {
            deliveries as f64 / cpu
        } else {
            0.0
        };
        report.rss_after_kib = after.rss_kib;
    }

    // Phase 5: gather.
    stop.cancel();
    let mut latencies = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    while let Some(joined) = readers.join_next().await {
        let Ok(Some(outcome)) = joined else { continue };
        latencies.extend_from_slice(&outcome.latencies_us);
        if let Some(reason) = outcome.ended_early {
            report.ended_early += 1;
            report.first_end_reason.get_or_insert(reason);
        }
    }
    report.latency = Spread::from_us(&mut latencies);
    Ok(report)
}
