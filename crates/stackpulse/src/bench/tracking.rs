//! `stackpulse bench tracking`: what stack tracking costs in AWS calls and how fast
//! it sees CloudFormation events, on the scripted endpoint (no AWS account).
//!
//! One run: the scripted CloudFormation endpoint ([`stackpulse_cfn::scripted`]) in
//! this process, in throttle mode (`Throttling` above `--throttle-above` requests
//! per second, like AWS); a `stackpulse serve` child pointed at it; `/ws` clients
//! subscribed to every stack. Once every stack's poller has published the stack's
//! first event, a driver plays all deployments at once by the clock, on one of two
//! timelines ([`Timeline`]):
//! - `uniform`: one event at a time, each resource `CREATE_IN_PROGRESS` then
//!   `CREATE_COMPLETE`, events `--event-gap` seconds apart on average (uniform in
//!   ½…1½ of it), then the stack completes;
//! - `bursty`, closer to a real CloudFormation create: half of the resources start
//!   together (within 1.5 s), each start followed 0.1–1 s later by its "Resource
//!   creation Initiated" event; resources complete 2 s to 2 min after they started
//!   (40 % within 10 s, 40 % within a minute, the rest later); every other resource
//!   starts as the resource it depends on completes; the stack completes 1 s after
//!   the last one.
//!
//! With `--push`, each event is also pushed to `POST /v1/ingest/eventbridge` as
//! EventBridge would, right after the endpoint shows it.
//!
//! Reported: detection delay (the event's CloudFormation time → the event on a
//! `/ws` client; median, p99, max), CloudFormation requests per stack-minute
//! while the stacks deploy, requests throttled by the endpoint, `tracker.error`
//! frames clients got, whether every stream was exact (each event once, none
//! missing), and the mean wait for the call budget from the server's `/metrics`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use rand::Rng;
use serde_json::json;
use stackpulse_cfn::scripted::{arn, FakeCfn, FakeStack, STACK};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Client, Frame};

/// The publisher key of the server child (pushes).
const KEY: &str = "bench-tracking-publisher-key";
/// Topics per `/ws` connection (below the server's default subscription cap).
const TOPICS_PER_CONNECTION: usize = 50;
const REGION: &str = "us-east-1";

/// `stackpulse bench tracking` flags.
#[derive(Debug, Clone, Args)]
pub struct TrackingArgs {
    /// Stacks deploying at once.
    #[arg(long, default_value_t = 20)]
    pub stacks: usize,
    /// Resources per stack (two events each, plus the stack's own two).
    #[arg(long, default_value_t = 6)]
    pub resources: usize,
    /// Mean seconds between two events of a stack (`--timeline uniform`).
    #[arg(long, default_value_t = 4.0)]
    pub event_gap: f64,
    /// How the events of a deployment are spaced (see the module docs).
    #[arg(long, value_enum, default_value_t = Timeline::Uniform)]
    pub timeline: Timeline,
    /// Push every event to `POST /v1/ingest/eventbridge` (else polling only).
    #[arg(long)]
    pub push: bool,
    /// The server's `--poll-interval`.
    #[arg(long, default_value_t = 2.0)]
    pub poll_interval: f64,
    /// The server's `--push-poll-interval`.
    #[arg(long, default_value_t = 30.0)]
    pub push_poll_interval: f64,
    /// The server's `--aws-max-rps`.
    #[arg(long, default_value_t = 4.0)]
    pub aws_max_rps: f64,
    /// The endpoint answers `Throttling` above this many requests per second
    /// [default: --aws-max-rps rounded up, plus one].
    #[arg(long)]
    pub throttle_above: Option<usize>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout: f64,
    /// The `stackpulse` binary to serve with [default: this one].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// How the events of a deployment are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Timeline {
    /// One event at a time, `--event-gap` apart on average.
    Uniform,
    /// Starts in bursts, completions spread over seconds to minutes.
    Bursty,
}

impl Timeline {
    /// What the timeline models, for the report.
    fn describe(self, gap: f64) -> String {
        match self {
            Timeline::Uniform => format!("uniform timeline: one event at a time, ~{gap} s apart"),
            Timeline::Bursty => "bursty timeline: half the resources start together, each \
                start's \"Resource creation Initiated\" 0.1-1 s later, completions 2 s-2 min \
                after the start, the other half starting as their dependency completes"
                .to_owned(),
        }
    }

    /// Events of one deployment after the stack's `CREATE_IN_PROGRESS`.
    fn events(self, resources: usize) -> usize {
        match self {
            Timeline::Uniform => 2 * resources + 1,
            Timeline::Bursty => 3 * resources + 1,
        }
    }
}

/// One event of a planned deployment: seconds after the start, logical id, status,
/// reason.
type Planned = (f64, String, &'static str, &'static str);

/// The events of one stack's deployment, oldest first (see [`Timeline`]).
fn plan(args: &TrackingArgs, stack: &str, rng: &mut impl Rng) -> Vec<Planned> {
    let mut steps: Vec<Planned> = Vec::new();
    match args.timeline {
        Timeline::Uniform => {
            for r in 0..args.resources {
                steps.push((0.0, format!("Res{r}"), "CREATE_IN_PROGRESS", ""));
                steps.push((0.0, format!("Res{r}"), "CREATE_COMPLETE", ""));
            }
            steps.push((0.0, stack.to_owned(), "CREATE_COMPLETE", ""));
            let mut t = 0.0;
            for step in &mut steps {
                t += args.event_gap * rng.random_range(0.5..1.5);
                step.0 = t;
            }
        }
        Timeline::Bursty => {
            let first_wave = args.resources.div_ceil(2);
            let mut done = vec![0.0_f64; args.resources];
            for r in 0..args.resources {
                let start = if r < first_wave {
                    1.0 + rng.random_range(0.0..1.5)
                } else {
                    done[rng.random_range(0..first_wave)] + rng.random_range(0.0..0.3)
                };
                let took = match rng.random_range(0..10) {
                    0..=3 => rng.random_range(2.0..10.0),
                    4..=7 => rng.random_range(10.0..60.0),
                    _ => rng.random_range(60.0..120.0),
                };
                let id = format!("Res{r}");
                steps.push((start, id.clone(), "CREATE_IN_PROGRESS", ""));
                steps.push((
                    start + rng.random_range(0.1..1.0),
                    id.clone(),
                    "CREATE_IN_PROGRESS",
                    "Resource creation Initiated",
                ));
                done[r] = start + took;
                steps.push((done[r], id, "CREATE_COMPLETE", ""));
            }
            let end = done.iter().copied().fold(0.0, f64::max) + 1.0;
            steps.push((end, stack.to_owned(), "CREATE_COMPLETE", ""));
            steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    steps
}

/// What clients saw of one stack.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    duplicates: usize,
    deployed: bool,
}

/// One frame of interest, from a reader task.
enum Seen1 {
    Resource {
        topic: String,
        id: String,
        event_time: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    Deployed(String),
    Error(String),
}

fn stack_name(i: usize) -> String {
    format!("bench{i:04}")
}

/// Starts the server child; returns it and its address.
async fn serve(
    args: &TrackingArgs,
    endpoint: &str,
) -> Result<(tokio::process::Child, String), String> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
    };
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--publisher-key", KEY])
        .args(["--aws-endpoint-url", endpoint, "--aws-region", REGION])
        .args(["--poll-interval", &args.poll_interval.to_string()])
        .args(["--push-poll-interval", &args.push_poll_interval.to_string()])
        .args(["--aws-max-rps", &args.aws_max_rps.to_string()])
        .args(["--max-pollers", &args.stacks.max(1000).to_string()])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/stackpulse-bench")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/stackpulse-bench",
        )
        .env_remove("STACKPULSE_CONFIG")
        .env_remove("STACKPULSE_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout of the server")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| "the server did not start within 30 s".to_string())?
        .map_err(|e| format!("cannot read the server's output: {e}"))?
        .ok_or("the server exited at start")?;
    let addr = line
        .strip_prefix("stackpulse listening on http://")
        .ok_or_else(|| format!("unexpected first line of the server: {line}"))?
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// Reads one connection's frames into `tx`.
async fn read(mut client: Client, tx: mpsc::UnboundedSender<Seen1>) {
    while let Some(Ok(frame)) = client.next().await {
        let Frame::Event(e) = frame else { continue };
        let topic = e.deployment_id.to_string();
        let msg = match e.event_type.as_str() {
            "resource.status" => Seen1::Resource {
                topic,
                id: e.data["eventId"].as_str().unwrap_or_default().to_owned(),
                event_time: e.data["eventTimestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                at: Utc::now(),
            },
            "stack.deployed" | "stack.failed" => Seen1::Deployed(topic),
            "tracker.error" => Seen1::Error(format!("{topic}: {}", e.data)),
            _ => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Pushes one stack's resource change as EventBridge would.
async fn push(http: &reqwest::Client, addr: &str, stack: &str, logical: &str, status: &str) {
    let arn = arn(stack);
    let body = json!({
        "version": "0",
        "id": format!("{stack}-{logical}-{status}"),
        "detail-type": "CloudFormation Resource Status Change",
        "source": "aws.cloudformation",
        "account": "123456789012",
        "time": Utc::now().to_rfc3339(),
        "region": REGION,
        "resources": [arn],
        "detail": {
            "stack-id": arn,
            "logical-resource-id": logical,
            "physical-resource-id": format!("{stack}-{logical}-phys"),
            "status-details": {"status": status, "status-reason": "", "detailed-status": ""},
            "resource-type": "AWS::S3::Bucket",
            "client-request-token": "bench"
        }
    });
    let r = http
        .post(format!("http://{addr}/v1/ingest/eventbridge"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await;
    if let Err(e) = r {
        eprintln!("push failed: {e}");
    }
}

/// Plays one stack's deployment by the clock.
async fn drive(
    fake: std::sync::Arc<std::sync::Mutex<stackpulse_cfn::scripted::World>>,
    http: reqwest::Client,
    addr: String,
    args: TrackingArgs,
    stack: String,
) {
    let steps = plan(&args, &stack, &mut rand::rng());
    let start = Instant::now();
    for (at, logical, status, reason) in steps {
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        {
            let mut w = fake.lock().unwrap_or_else(|p| p.into_inner());
            let Some(s) = w.stacks.iter_mut().find(|s| s.name == stack) else {
                return;
            };
            s.push_now(&logical, "AWS::S3::Bucket", status, reason);
            if logical == stack {
                s.status = status.to_owned();
                s.resources = (0..args.resources)
                    .map(|r| {
                        (
                            format!("Res{r}"),
                            "AWS::S3::Bucket".to_owned(),
                            "CREATE_COMPLETE".to_owned(),
                        )
                    })
                    .collect();
            }
        }
        if args.push {
            push(&http, &addr, &stack, &logical, status).await;
        }
    }
}

/// The value of every `/metrics` line whose name (labels included) starts with
/// `prefix`, summed.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the scenario and prints the report; `Err` when it could not run.
pub async fn run(args: TrackingArgs) -> Result<bool, String> {
    let names: Vec<String> = (0..args.stacks).map(stack_name).collect();
    let stacks: Vec<FakeStack> = names
        .iter()
        .map(|n| {
            let mut s = FakeStack::new(n);
            s.created = Utc::now();
            s.template_resources = args.resources;
            s.push_now(n, STACK, "CREATE_IN_PROGRESS", "User Initiated");
            s
        })
        .collect();
    let fake = FakeCfn::bind(stacks)
        .await
        .map_err(|e| format!("cannot start the scripted endpoint: {e}"))?;
    let throttle_above = args
        .throttle_above
        .unwrap_or(args.aws_max_rps.ceil() as usize + 1);
    fake.world().max_rps = Some(throttle_above);
    let (mut child, addr) = serve(&args, &fake.endpoint).await?;
    crate::auth::jwks_http::install_crypto_provider();
    let http = reqwest::Client::new();

    let (tx, mut rx) = mpsc::unbounded_channel();
    for chunk in names.chunks(TOPICS_PER_CONNECTION) {
        let mut c = Client::connect(&format!("ws://{addr}/ws"), None)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        for n in chunk {
            c.subscribe(&format!("stack:{n}"), Some(0), None)
                .await
                .map_err(|e| format!("cannot subscribe: {e}"))?;
        }
        tokio::spawn(read(c, tx.clone()));
    }
    drop(tx);

    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut delays: Vec<f64> = Vec::new();
    let started = Instant::now();
    // 1. Every poller published its stack's first event.
    while seen.values().filter(|s| !s.ids.is_empty()).count() < args.stacks {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            return Err("timed out before every poller ran".into());
        };
        note(&mut seen, &mut errors, &mut delays, msg, false);
    }
    let setup = started.elapsed();
    eprintln!(
        "{} pollers running after {:.1} s; deploying",
        args.stacks,
        setup.as_secs_f64()
    );

    // 2. All deployments at once.
    let requests_before = fake.request_count();
    let deploy_start = Instant::now();
    for n in &names {
        tokio::spawn(drive(
            fake.world.clone(),
            http.clone(),
            addr.clone(),
            args.clone(),
            n.clone(),
        ));
    }
    let mut stack_seconds = 0.0;
    while seen.values().filter(|s| s.deployed).count() < args.stacks {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            eprintln!("timed out before every stack completed");
            break;
        };
        if let Seen1::Deployed(_) = &msg {
            stack_seconds += deploy_start.elapsed().as_secs_f64();
        }
        note(&mut seen, &mut errors, &mut delays, msg, true);
    }
    let deploy = deploy_start.elapsed();
    let requests = fake.request_count() - requests_before;
    let by_action = {
        let w = fake.world();
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for (action, _) in w.requests.iter().skip(requests_before) {
            *by.entry(action.clone()).or_default() += 1;
        }
        by.into_iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let expected = args.timeline.events(args.resources) + 1;
    let exact = seen.len() == args.stacks
        && seen
            .values()
            .all(|s| s.ids.len() == expected && s.duplicates == 0 && s.deployed);
    let throttled_at_endpoint = {
        let w = fake.world();
        // The endpoint answers Throttling when its window is over the limit.
        count_over(&w.request_times, throttle_above)
    };
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| format!("cannot read /metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("cannot read /metrics: {e}"))?;
    let _ = child.kill().await;

    delays.sort_by(f64::total_cmp);
    let wait_sum = metric_sum(&metrics, "stackpulse_tracking_aws_budget_wait_seconds_sum");
    let wait_count = metric_sum(
        &metrics,
        "stackpulse_tracking_aws_budget_wait_seconds_count",
    );
    let throttles = metric_sum(&metrics, "stackpulse_tracking_aws_throttles_total");
    let per_stack_minute = requests as f64 / (stack_seconds / 60.0).max(f64::EPSILON);
    println!(
        "tracking bench: {stacks} stacks × {events} events ({timeline}), push: {push}, \
         --poll-interval {poll} --push-poll-interval {pushpoll} --aws-max-rps {rps}, endpoint \
         throttles above {throttle_above} rps",
        stacks = args.stacks,
        events = expected,
        timeline = args.timeline.describe(args.event_gap),
        push = args.push,
        poll = args.poll_interval,
        pushpoll = args.push_poll_interval,
        rps = args.aws_max_rps,
    );
    println!(
        "  setup (every poller's first event): {:.1} s; deployments: {:.1} s",
        setup.as_secs_f64(),
        deploy.as_secs_f64()
    );
    println!(
        "  detection delay (event time → /ws client), {} events: median {:.3} s, p90 {:.3} s, \
         p99 {:.3} s, max {:.3} s",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  CloudFormation requests while deploying: {requests} = {per_stack_minute:.2} per \
         stack-minute ({:.2} per second)",
        requests as f64 / deploy.as_secs_f64().max(f64::EPSILON)
    );
    println!("    by API: {by_action}");
    println!(
        "  budget: mean wait {:.3} s over {wait_count} requests; throttled answers: {throttles} \
         (server), {throttled_at_endpoint} (endpoint windows over the limit)",
        if wait_count > 0.0 {
            wait_sum / wait_count
        } else {
            0.0
        }
    );
    println!(
        "  streams exact: {exact}; tracker.error frames at clients: {}",
        errors.len()
    );
    for e in errors.iter().take(5) {
        println!("    {e}");
    }
    Ok(exact && errors.is_empty())
}

/// Requests that arrived while more than `max` had arrived within the last second.
fn count_over(times: &[std::time::Instant], max: usize) -> usize {
    let mut over = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        if end + 1 - start > max {
            over += 1;
        }
    }
    over
}

/// Folds one frame into what clients saw.
fn note(
    seen: &mut HashMap<String, Seen>,
    errors: &mut Vec<String>,
    delays: &mut Vec<f64>,
    msg: Seen1,
    measure: bool,
) {
    match msg {
        Seen1::Resource {
            topic,
            id,
            event_time,
            at,
        } => {
            let s = seen.entry(topic).or_default();
            if !s.ids.insert(id) {
                s.duplicates += 1;
            }
            if let (true, Some(t)) = (measure, event_time) {
                delays.push((at - t).num_milliseconds() as f64 / 1000.0);
            }
        }
        Seen1::Deployed(topic) => seen.entry(topic).or_default().deployed = true,
        Seen1::Error(e) => errors.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn args(timeline: Timeline, resources: usize) -> TrackingArgs {
        TrackingArgs {
            stacks: 1,
            resources,
            event_gap: 2.0,
            timeline,
            push: false,
            poll_interval: 2.0,
            push_poll_interval: 30.0,
            aws_max_rps: 4.0,
            throttle_above: None,
            timeout: 60.0,
            server_bin: None,
        }
    }

    #[test]
    fn a_uniform_plan_is_one_event_at_a_time_ending_with_the_stack() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let steps = plan(&args(Timeline::Uniform, 3), "s", &mut rng);
        assert_eq!(steps.len(), Timeline::Uniform.events(3));
        let last = steps.last().expect("steps");
        assert_eq!((last.1.as_str(), last.2), ("s", "CREATE_COMPLETE"));
        for pair in steps.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            // ½…1½ of the 2 s gap.
            assert!((1.0..=3.0).contains(&gap), "gap {gap}");
        }
        for r in 0..3 {
            let id = format!("Res{r}");
            let started = steps
                .iter()
                .position(|s| s.1 == id && s.2 == "CREATE_IN_PROGRESS");
            let done = steps
                .iter()
                .position(|s| s.1 == id && s.2 == "CREATE_COMPLETE");
            assert!(started < done, "{id}: {steps:?}");
        }
    }

    #[test]
    fn a_bursty_plan_starts_half_together_and_completes_the_stack_last() {
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let steps = plan(&args(Timeline::Bursty, 6), "s", &mut rng);
            assert_eq!(steps.len(), Timeline::Bursty.events(6));
            assert!(steps.windows(2).all(|p| p[0].0 <= p[1].0), "sorted");
            let last = steps.last().expect("steps");
            assert_eq!((last.1.as_str(), last.2), ("s", "CREATE_COMPLETE"));
            let first_starts = steps
                .iter()
                .filter(|s| s.2 == "CREATE_IN_PROGRESS" && s.3.is_empty() && s.0 <= 2.5)
                .count();
            assert!(first_starts >= 3, "seed {seed}: {steps:?}");
            for r in 0..6 {
                let id = format!("Res{r}");
                let of = |status: &str, reason: &str| {
                    steps
                        .iter()
                        .find(|s| s.1 == id && s.2 == status && s.3 == reason)
                        .map(|s| s.0)
                        .expect("step")
                };
                let start = of("CREATE_IN_PROGRESS", "");
                let initiated = of("CREATE_IN_PROGRESS", "Resource creation Initiated");
                let done = of("CREATE_COMPLETE", "");
                assert!(start < initiated && initiated < start + 1.0, "{id}");
                assert!(done >= start + 2.0 && done <= start + 120.0, "{id}");
            }
        }
    }

    #[test]
    fn the_report_helpers_count_what_they_say() {
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), 5.0);
        let metrics =
            "# HELP x\nstackpulse_a{k=\"1\"} 2.5\nstackpulse_a{k=\"2\"} 1\nstackpulse_b 9\n";
        assert_eq!(metric_sum(metrics, "stackpulse_a"), 3.5);
        assert_eq!(metric_sum(metrics, "stackpulse_c"), 0.0);
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Four requests within a second, then one alone: with a limit of 2, the
        // third and fourth were over it.
        let times = [at(0), at(100), at(200), at(300), at(2000)];
        assert_eq!(count_over(&times, 2), 2);
        assert_eq!(count_over(&times, 4), 0);
    }

    #[test]
    fn frames_fold_into_what_clients_saw() {
        let mut seen = HashMap::new();
        let (mut errors, mut delays) = (Vec::new(), Vec::new());
        let t = Utc::now();
        let resource = |id: &str| Seen1::Resource {
            topic: "stack:a".into(),
            id: id.into(),
            event_time: Some(t - chrono::Duration::milliseconds(1500)),
            at: t,
        };
        note(&mut seen, &mut errors, &mut delays, resource("e1"), false);
        note(&mut seen, &mut errors, &mut delays, resource("e2"), true);
        note(&mut seen, &mut errors, &mut delays, resource("e2"), true);
        note(
            &mut seen,
            &mut errors,
            &mut delays,
            Seen1::Deployed("stack:a".into()),
            true,
        );
        note(
            &mut seen,
            &mut errors,
            &mut delays,
            Seen1::Error("boom".into()),
            true,
        );
        let a = &seen["stack:a"];
        assert_eq!((a.ids.len(), a.duplicates, a.deployed), (2, 1, true));
        assert_eq!(errors, ["boom"]);
        // Only measured frames count, each 1.5 s late.
        assert_eq!(delays, [1.5, 1.5]);
    }
}
