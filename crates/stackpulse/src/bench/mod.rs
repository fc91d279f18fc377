//! `stackpulse bench`: a load generator for WebSocket fan-out servers, aimed at
//! stackpulse itself or at nchan with the same client, so both are measured alike.
//!
//! `bench run` opens N connections (each from one of several 127.0.0.x source
//! addresses, so the ephemeral ports of one address do not run out), subscribes
//! them to K topics at a given connect rate, publishes M events at rate R through
//! the server's HTTP publish API with the send time in the payload, and reports:
//! connect+subscribe latency, delivery latency, deliveries per second, and the
//! **server's** CPU seconds and RSS read from `/proc` before and after — so the
//! headline figures, deliveries per server CPU-second and RSS per idle connection,
//! hold even when the load generator competes with the server for the same cores.
//! `bench issuer` is the RS256 issuer of the auth scenario: it makes a key, serves
//! its JWKS on loopback and writes a token for `bench run --token-file`.
//!
//! `bench tracking` measures stack tracking on the scripted CloudFormation
//! endpoint: detection delay, AWS requests per stack-minute, the call budget
//! ([`tracking`]).
//!
//! `bench/compare.sh` runs the scenarios against both servers; `BENCHMARKS.md` has
//! a run's results.
//!
//! # Layout
//! - [`target`]: the dialects (stackpulse's `/ws` protocol, nchan's raw payloads):
//!   URLs, subscribe handshake, publish request, send time in a frame.
//! - [`connect`]: one connection from a chosen source address, and its reader.
//! - [`publish`]: the paced publisher.
//! - [`procfs`]: a server's CPU time and RSS from `/proc`.
//! - [`stats`]: percentiles and the report.
//! - [`load`]: one run, phase by phase.
//! - [`issuer`]: the RS256 key, JWKS endpoint and token.
//! - [`tracking`]: the stack-tracking scenario.

pub mod connect;
pub mod issuer;
pub mod load;
pub mod procfs;
pub mod publish;
pub mod stats;
pub mod target;
pub mod tracking;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use target::Target;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open connections, publish events, and report latency, throughput and the
    /// server's CPU and memory.
    Run(RunArgs),
    /// Serve an RS256 JWKS on loopback and write a token signed by its key.
    Issuer(issuer::IssuerArgs),
    /// Track stacks deploying on the scripted CloudFormation endpoint and report
    /// detection delay, AWS requests per stack-minute and the call budget's effect.
    Tracking(tracking::TrackingArgs),
}

/// `stackpulse bench run` flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Server dialect.
    #[arg(long, value_enum, default_value = "stackpulse")]
    pub target: Target,
    /// WebSocket URL; `{topic}` is replaced by the topic (nchan takes the channel in
    /// the path, e.g. ws://127.0.0.1:8080/sub/{topic}).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub ws_url: String,
    /// Publish URL; `{topic}` is replaced by the topic (nchan: http://…/pub/{topic}).
    #[arg(long, default_value = "http://127.0.0.1:8000/v1/events")]
    pub publish_url: String,
    /// Publisher key sent as `Authorization: Bearer` on publishes (stackpulse).
    #[arg(long, env = "STACKPULSE_BENCH_PUBLISHER_KEY")]
    pub publisher_key: Option<String>,
    /// User token sent as `Authorization: Bearer` on every WebSocket connect.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the user token (what `bench issuer --token-file` writes).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Server process(es) whose CPU and RSS are measured (repeatable: nginx's
    /// master and workers are summed).
    #[arg(long = "server-pid", required = true)]
    pub server_pids: Vec<u32>,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Topics; connection i subscribes to topic i mod K.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Events to publish (round-robin over the topics); 0 measures idle cost only.
    #[arg(long, default_value_t = 10)]
    pub events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Connection attempts per second (open loop: one starts every 1/rate s).
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N) the connections are spread over.
    #[arg(long, default_value_t = 32)]
    pub source_addrs: u8,
    /// Seconds to wait after the last connect before measuring idle RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds to wait for outstanding deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Publishes in flight at most.
    #[arg(long, default_value_t = 16)]
    pub publish_concurrency: usize,
    /// Bytes of filler in each event's payload.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Label of this run in the report (e.g. the scenario).
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Print the report as one JSON object on stdout (the summary still goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
}

/// Runs `stackpulse bench …`.
pub async fn main(args: BenchArgs) -> ExitCode {
    match args.command {
        BenchCommand::Run(args) => match load::run(args.clone()).await {
            Ok(report) => {
                eprintln!("{}", report.summary());
                if args.json {
                    println!("{}", report.to_json());
                }
                if report.complete() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("stackpulse bench: incomplete run (see the counts above)");
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("stackpulse bench: {e}");
                ExitCode::from(2)
            }
        },
        BenchCommand::Tracking(args) => {
            match tracking::run(args).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("stackpulse bench tracking: a stream was not exact or a client got an error");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("stackpulse bench tracking: {e}");
                    ExitCode::from(2)
                }
            }
        }
        BenchCommand::Issuer(args) => match issuer::serve(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stackpulse bench issuer: {e}");
                ExitCode::from(2)
            }
        },
    }
}
