//! The `stackpulse` command line: `serve`, `tail`, `watch`, `deploy` (the last
//! two live in [`crate::watch`]), `bench` (in [`crate::bench`]) and `doctor` (in
//! [`crate::doctor`]).
//!
//! Parsing lives here; the work lives in the library ([`crate::server::serve`],
//! [`crate::client::Client`]). Exit codes: 0 success, 2 usage, connection or
//! configuration errors.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::client::{self, Client, Frame};
use crate::config::{Config, LogFormat, ServeArgs};
use stackpulse_protocol::ServerMessage;

#[derive(Debug, Parser)]
#[command(
    name = "stackpulse",
    version,
    about = "Live cloud deployments over WebSocket"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of `ServeArgs` does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the server (in-memory hub, 127.0.0.1:8000 by default).
    Serve(Box<ServeArgs>),
    /// Print a topic's events as JSON lines, resuming across reconnects.
    Tail(TailArgs),
    /// Print the SHA-256 of a publisher key (read from stdin) for --publisher-key-sha256.
    HashKey,
    /// Watch one CloudFormation stack's operation live (exit 0 success, 1 failure,
    /// 2 usage/connection/auth error).
    Watch(crate::watch::WatchArgs),
    /// Create a stack from a template (with this machine's AWS credentials), and
    /// with `--watch` watch it.
    Deploy(crate::watch::DeployArgs),
    /// Load-test a fan-out server (stackpulse or nchan): connections, latency,
    /// deliveries per server CPU-second, RSS per connection.
    Bench(crate::bench::BenchArgs),
    /// Check what `serve` needs (AWS credentials, region, CloudFormation
    /// permissions, auth, Redis, TLS) with serve's flags; exit 0 only when all pass.
    Doctor(Box<ServeArgs>),
    /// Run as an AWS Lambda function (API Gateway WebSocket, HTTP API, EventBridge;
    /// state in DynamoDB). The binary does this when it is named `bootstrap`.
    Lambda(Box<crate::serverless::LambdaArgs>),
    /// Serverless mode on this machine: real WebSockets driving the Lambda
    /// handlers, DynamoDB at --aws-endpoint-url / AWS_ENDPOINT_URL (e.g. moto).
    LambdaLocal(Box<crate::serverless::LambdaArgs>),
}

impl Cli {
    /// Parses the command line; a binary named `bootstrap` (a Lambda
    /// `provided.al2023` package) runs `lambda`, with any arguments after it.
    pub fn parse_for_process() -> Cli {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let bootstrap = args
            .first()
            .map(std::path::Path::new)
            .and_then(|p| p.file_name())
            .is_some_and(|name| name == "bootstrap");
        if bootstrap {
            args.splice(0..1.min(args.len()), ["stackpulse".into(), "lambda".into()]);
        }
        Cli::parse_from(args)
    }
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Topic (deployment id or stack name).
    pub topic: String,
    /// Server URL.
    #[arg(
        long,
        env = "STACKPULSE_SERVER",
        default_value = "http://127.0.0.1:8000"
    )]
    pub server: String,
    /// Replay events after this seq first.
    #[arg(long)]
    pub since: Option<u64>,
    /// Bearer token for the server.
    #[arg(long, env = "STACKPULSE_TOKEN")]
    pub token: Option<String>,
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STACKPULSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The AWS SDK's warnings: one line per distinct cause per minute.
    let limit = crate::log_limit::SdkWarnLimit::new;
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().with_filter(limit())).try_init(),
        LogFormat::Text => registry.with(layer.with_filter(limit())).try_init(),
    };
}

pub async fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let demo = match args.demo {
        true => match demo_setup(&args, &mut config).await {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("stackpulse: cannot start the demo: {e}");
                return ExitCode::from(2);
            }
        },
        false => None,
    };
    if let Err(e) = crate::server::check_bind(&config) {
        eprintln!("stackpulse: {e}");
        return ExitCode::from(2);
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let tls = match config.tls.as_ref().map(crate::tls::load).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stackpulse: cannot listen on {}: {e}", config.bind);
            return ExitCode::from(2);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    // Tests and scripts read this line to learn the port.
    let shutdown = crate::signal::shutdown_signal();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("stackpulse listening on {scheme}://{addr}");
    match demo {
        Some((demo, key)) => {
            println!(
                "stackpulse demo: open {scheme}://{addr}/ to watch {} and the deployment {} \
                 (played in-process, no AWS account needed)",
                crate::demo::STACKS.join(", "),
                crate::demo::DEPLOYMENT
            );
            tokio::spawn(demo.run(format!("{scheme}://{addr}"), key));
        }
        // Said once, in the background: the credential chain may take seconds.
        None => {
            tokio::spawn(crate::tracking::aws::log_startup_report(
                crate::tracking::aws::AwsSettings {
                    endpoint_url: config.aws_endpoint_url.clone(),
                    region: config.aws_region.clone(),
                },
            ));
        }
    }
    let _ = std::io::stdout().flush();
    let no_keys = config.publisher_keys.is_empty() && config.publisher_key_hashes.is_empty();
    if config.auth.is_none() {
        tracing::warn!(
            "no authentication configured: serving loopback only ({addr}); anyone on this machine can subscribe"
        );
        if no_keys {
            tracing::warn!(
                "no publisher key configured: POST /v1/events will answer 401 (set --publisher-key)"
            );
        }
    } else if no_keys {
        tracing::info!(
            "no publisher key configured: only tokens of the publisher group may publish"
        );
    }
    match crate::server::serve_with_tls(listener, config, tls, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackpulse: server error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--demo`: starts the demo's CloudFormation endpoint and points the server's
/// trackers at it (static demo credentials, its region, a quicker poll unless one
/// was set); returns the demo and the publisher key its driver uses.
async fn demo_setup(
    args: &ServeArgs,
    config: &mut Config,
) -> std::io::Result<(crate::demo::Demo, String)> {
    let demo = crate::demo::Demo::start(args.demo_pace.unwrap_or(1.0)).await?;
    crate::tracking::aws::use_demo_credentials();
    config.aws_endpoint_url = Some(demo.endpoint().to_owned());
    config.aws_region = Some(crate::demo::REGION.to_owned());
    if args.poll_interval.is_none() {
        config.poll_interval = Duration::from_millis(500);
    }
    if args.aws_max_rps.is_none() {
        // The demo's endpoint is in-process: no AWS limits to protect.
        config.aws_max_rps = None;
    }
    let key = format!("demo-{:032x}", rand::random::<u128>());
    config.publisher_keys.push(key.clone());
    Ok((demo, key))
}

/// Reads a key from stdin and prints its SHA-256 in hex.
pub fn hash_key() -> ExitCode {
    let mut key = String::new();
    if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
        eprintln!(
            "stackpulse: write the key on stdin, e.g. `printf %s \"$KEY\" | stackpulse hash-key`"
        );
        return ExitCode::from(2);
    }
    println!("{}", crate::auth::PublisherKeys::hash_hex(key.trim()));
    ExitCode::SUCCESS
}

pub async fn tail(args: TailArgs) -> ExitCode {
    let url = match client::ws_url(&args.server) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = match Client::connect(&url, args.token.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = client.subscribe(&args.topic, args.since, None).await {
        eprintln!("stackpulse: {e}");
        return ExitCode::from(2);
    }
    let mut backoff = Duration::from_millis(250);
    let mut stdout = std::io::stdout();
    loop {
        match client.next().await {
            Some(Ok(Frame::Event(event))) => {
                backoff = Duration::from_millis(250);
                if let Ok(line) = serde_json::to_string(&event) {
                    if writeln!(stdout, "{line}")
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
                    }
                }
            }
            Some(Ok(Frame::Control(ServerMessage::Error { code, message, .. }))) => {
                eprintln!("stackpulse: server error {code}: {message}");
                if code == 401 || code == 403 {
                    return ExitCode::from(2);
                }
            }
            Some(Ok(Frame::Control(_))) => {}
            Some(Ok(Frame::Closed(_))) | Some(Err(_)) | None => {
                eprintln!("stackpulse: disconnected; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                if let Err(e) = client.reconnect().await {
                    eprintln!("stackpulse: {e}");
                }
            }
        }
    }
}
