//! Server configuration: flags, `STACKPULSE_*` environment variables and an optional
//! TOML file, resolved into one [`Config`].
//!
//! Precedence, highest first: a flag, its environment variable (clap reads both
//! into [`ServeArgs`]), the TOML file given by `--config`, the built-in default.
//! The TOML keys are the flag names with `_` for `-` (`history_size = 5000`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub mod auth;
pub mod sns;

use self::auth as settings;
use self::auth::{AdmissionLimits, AuthArgs, AuthFile, AuthSettings};

/// What the operator configured about stack topics (applied by the server's
/// topic policy, [`crate::topic_policy`]).
#[derive(Debug, Clone)]
pub struct StackRules {
    /// `--stack-reader-group`: who may read `stack:` topics (with auth).
    pub reader_group: Option<String>,
    /// `--stack-allow`: globs (`*`, `?`) over stack names the server tracks.
    pub allow: Vec<String>,
    /// `--allow-stack-writes`: publishers may write `stack:` topics too (replaying
    /// a recorded deployment, UI tests). Off: the tracker owns them.
    pub publishers_write: bool,
}

impl Default for StackRules {
    fn default() -> StackRules {
        StackRules {
            reader_group: None,
            allow: vec!["*".into()],
            publishers_write: false,
        }
    }
}

/// `stackpulse serve` flags. Every field is optional so that unset flags fall back
/// to the file and then to the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "STACKPULSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "STACKPULSE_BIND", value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
    /// Publisher API key for `POST /v1/events` (repeatable; env: comma-separated).
    #[arg(
        long = "publisher-key",
        env = "STACKPULSE_PUBLISHER_KEYS",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub publisher_keys: Vec<String>,
    /// SHA-256 (hex) of a publisher key, so the key itself need not be stored in
    /// config (repeatable; env: comma-separated; `stackpulse hash-key` prints it).
    #[arg(
        long = "publisher-key-sha256",
        env = "STACKPULSE_PUBLISHER_KEY_HASHES",
        value_name = "HEX",
        value_delimiter = ','
    )]
    pub publisher_key_hashes: Vec<String>,
    /// Log format [default: text].
    #[arg(long, env = "STACKPULSE_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<LogFormat>,
    /// Events kept per topic for resume [default: 2000].
    #[arg(long, env = "STACKPULSE_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// Seconds a topic's history is kept after its last event [default: 86400].
    #[arg(long, env = "STACKPULSE_HISTORY_RETENTION", value_name = "SECONDS")]
    pub history_retention: Option<f64>,
    /// WebSocket connections accepted in total [default: 50000].
    #[arg(long, env = "STACKPULSE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Subscriptions per connection [default: 100].
    #[arg(long, env = "STACKPULSE_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Largest client frame in bytes; larger ones close the socket with 1009 [default: 65536].
    #[arg(long, env = "STACKPULSE_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Outgoing messages queued per connection before it is closed as slow (4008) [default: 1024].
    #[arg(long, env = "STACKPULSE_QUEUE_SIZE", value_name = "N")]
    pub queue_size: Option<usize>,
    /// Seconds between server WebSocket pings [default: 25].
    #[arg(long, env = "STACKPULSE_PING_INTERVAL", value_name = "SECONDS")]
    pub ping_interval: Option<f64>,
    /// Seconds without any frame from a client before it is closed (4000) [default: 60].
    #[arg(long, env = "STACKPULSE_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub idle_timeout: Option<f64>,
    /// Seconds a GraphQL socket has from its upgrade to send `connection_init`
    /// (4408) [default: 10]; for tests.
    #[arg(long, hide = true, value_name = "SECONDS")]
    pub init_timeout: Option<f64>,
    /// Seconds to drain connections on shutdown [default: 5].
    #[arg(long, env = "STACKPULSE_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub shutdown_grace: Option<f64>,
    /// Least seconds between two writes to one connection: a message that finds
    /// its connection written less than this ago waits, and what queued meanwhile
    /// goes out in the same write. Fewer writes (less server CPU) for clients that
    /// get many messages a second, at up to this much latency; the first message
    /// after a quieter spell goes at once; 0 writes every message at once
    /// [default: 0, at most 1].
    #[arg(long, env = "STACKPULSE_WRITE_DELAY", value_name = "SECONDS")]
    pub write_delay: Option<f64>,
    /// Redis URL (redis:// or rediss://, with password and db) for running many
    /// nodes; without it the hub is in memory.
    #[arg(long, env = "STACKPULSE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Seconds between presence reports to Redis (cluster-wide counts) [default: 5].
    #[arg(long, env = "STACKPULSE_PRESENCE_INTERVAL", value_name = "SECONDS")]
    pub presence_interval: Option<f64>,
    /// PEM certificate chain: serve HTTPS and WSS on --bind (needs --tls-key).
    #[arg(long, env = "STACKPULSE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "STACKPULSE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Seconds between `ka` messages on `/graphql/realtime` (AppSync clients give
    /// up after 65 s without one) [default: 30].
    #[arg(long, env = "STACKPULSE_GRAPHQL_KEEPALIVE", value_name = "SECONDS")]
    pub graphql_keepalive: Option<f64>,
    /// Serve GraphQL introspection (`__schema`, `__type`): `--graphql-introspection`
    /// or `=true` turns it on, `=false` off [default: on without auth, off with auth].
    #[arg(
        long,
        env = "STACKPULSE_GRAPHQL_INTROSPECTION",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub graphql_introspection: Option<bool>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Send every AWS request to this endpoint (moto, LocalStack) [default: AWS].
    #[arg(long, env = "STACKPULSE_AWS_ENDPOINT_URL", value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Default AWS region of tracked stacks [default: the standard AWS chain].
    #[arg(long, env = "STACKPULSE_AWS_REGION", value_name = "REGION")]
    pub aws_region: Option<String>,
    /// Seconds between two CloudFormation polls of a stack, fractions allowed [default: 2].
    #[arg(long, env = "STACKPULSE_POLL_INTERVAL", value_name = "SECONDS")]
    pub poll_interval: Option<f64>,
    /// Seconds between two polls of a stack that got a push (`POST
    /// /v1/ingest/eventbridge` or `/v1/ingest/sns`) in the last 10 minutes, fractions
    /// allowed [default: 30].
    #[arg(long, env = "STACKPULSE_PUSH_POLL_INTERVAL", value_name = "SECONDS")]
    pub push_poll_interval: Option<f64>,
    /// CloudFormation requests per second per AWS account and region, for all stack
    /// pollers of the node (of the cluster with --redis-url), fractions allowed
    /// [default: 4; no limit with --aws-endpoint-url].
    #[arg(long, env = "STACKPULSE_AWS_MAX_RPS", value_name = "N")]
    pub aws_max_rps: Option<f64>,
    /// Seconds a stack poller keeps going after its last subscriber left, while the
    /// stack is not terminal [default: 60].
    #[arg(long, env = "STACKPULSE_TRACKER_GRACE", value_name = "SECONDS")]
    pub tracker_grace: Option<f64>,
    /// Seconds a stack's poller lease lasts without renewal; another node takes a
    /// dead node's stacks over within it [default: 30].
    #[arg(long, env = "STACKPULSE_POLLER_LEASE", value_name = "SECONDS")]
    pub poller_lease: Option<f64>,
    /// Seconds a `POST /v1/deployments` deployment may run before the stacks that
    /// have not finished are reported failed [default: 21600].
    #[arg(long, env = "STACKPULSE_DEPLOYMENT_TIMEOUT", value_name = "SECONDS")]
    pub deployment_timeout: Option<f64>,
    // Topic policy and caps (the hub applies them on every dialect).
    /// Topics one node stores or watches at most [default: 100000].
    #[arg(long, env = "STACKPULSE_MAX_TOPICS", value_name = "N")]
    pub max_topics: Option<usize>,
    /// Stack pollers one node runs at most [default: 1000].
    #[arg(long, env = "STACKPULSE_MAX_POLLERS", value_name = "N")]
    pub max_pollers: Option<usize>,
    /// Largest encoded event a publisher may send; larger ones get 413 [default: 262144].
    #[arg(long, env = "STACKPULSE_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub max_event_bytes: Option<usize>,
    /// With auth, only this group (and admins) may read `stack:` topics [default: any user].
    #[arg(long, env = "STACKPULSE_STACK_READER_GROUP", value_name = "GROUP")]
    pub stack_reader_group: Option<String>,
    /// Stack names the server tracks, as globs with `*` and `?` (repeatable; env:
    /// comma-separated) [default: *].
    #[arg(
        long = "stack-allow",
        env = "STACKPULSE_STACK_ALLOW",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub stack_allow: Vec<String>,
    /// Let publishers write `stack:` topics too (replaying a recorded deployment,
    /// UI tests); by default only the tracker writes them [default: false].
    #[arg(long, env = "STACKPULSE_ALLOW_STACK_WRITES")]
    pub allow_stack_writes: bool,
    // Demo mode (flags and environment only; see `crate::demo`).
    /// Play CloudFormation deployments in-process (no AWS account needed): stacks
    /// demo-network, demo-database, demo-app and the deployment `demo`, in a loop.
    #[arg(long, env = "STACKPULSE_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,
    /// Speed of --demo's scripts: seconds are multiplied by this (0.05 plays a
    /// loop twenty times faster) [default: 1].
    #[arg(long, env = "STACKPULSE_DEMO_PACE", value_name = "FACTOR")]
    pub demo_pace: Option<f64>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// `POST /v1/ingest/sns` (see [`sns`]).
    #[command(flatten)]
    pub sns: sns::SnsArgs,
}

/// The HTTP edge's flags (`POST /canvas/deploy`, Origin/Host, proxies, HTTP
/// connections); TOML keys sit at the top level like every other flag's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EdgeArgs {
    /// Group whose members may `POST /canvas/deploy` (besides publisher keys and
    /// the admin group) [default: deployers].
    #[arg(long, env = "STACKPULSE_DEPLOYER_GROUP", value_name = "GROUP")]
    pub deployer_group: Option<String>,
    /// A capability `POST /canvas/deploy` may acknowledge, e.g. CAPABILITY_IAM
    /// (repeatable; env: comma-separated) [default: none].
    #[arg(
        long = "deploy-capabilities",
        env = "STACKPULSE_DEPLOY_CAPABILITIES",
        value_name = "CAPABILITY",
        value_delimiter = ','
    )]
    pub deploy_capabilities: Vec<String>,
    /// Service role CloudFormation assumes for stacks created by `POST /canvas/deploy`.
    #[arg(long, env = "STACKPULSE_DEPLOY_ROLE_ARN", value_name = "ARN")]
    pub deploy_role_arn: Option<String>,
    /// Without auth: a browser Origin allowed besides loopback ones, e.g.
    /// https://dash.example (repeatable; env: comma-separated).
    #[arg(
        long = "allowed-origin",
        env = "STACKPULSE_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// A proxy (address or CIDR) whose X-Forwarded-For names the client for per-IP
    /// limits (repeatable; env: comma-separated) [default: none].
    #[arg(
        long = "trusted-proxy",
        env = "STACKPULSE_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Open HTTP connections (plain or TLS) in total [default: 4 × --max-connections].
    #[arg(long, env = "STACKPULSE_MAX_HTTP_CONNECTIONS", value_name = "N")]
    pub max_http_connections: Option<usize>,
    /// Seconds a client has to send a request's headers (also bounds idle
    /// keep-alive); for tests [default: 10].
    #[arg(
        long,
        env = "STACKPULSE_HTTP_HEADER_TIMEOUT",
        value_name = "SECONDS",
        hide = true
    )]
    pub http_header_timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    publisher_keys: Option<Vec<String>>,
    publisher_key_hashes: Option<Vec<String>>,
    log_format: Option<LogFormat>,
    history_size: Option<usize>,
    history_retention: Option<f64>,
    max_connections: Option<usize>,
    max_subscriptions: Option<usize>,
    max_frame_bytes: Option<usize>,
    queue_size: Option<usize>,
    ping_interval: Option<f64>,
    idle_timeout: Option<f64>,
    shutdown_grace: Option<f64>,
    write_delay: Option<f64>,
    auth: Option<AuthFile>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    graphql_keepalive: Option<f64>,
    graphql_introspection: Option<bool>,
    redis_url: Option<String>,
    presence_interval: Option<f64>,
    aws_endpoint_url: Option<String>,
    aws_region: Option<String>,
    poll_interval: Option<f64>,
    push_poll_interval: Option<f64>,
    aws_max_rps: Option<f64>,
    tracker_grace: Option<f64>,
    poller_lease: Option<f64>,
    deployment_timeout: Option<f64>,
    max_topics: Option<usize>,
    max_pollers: Option<usize>,
    max_event_bytes: Option<usize>,
    stack_reader_group: Option<String>,
    stack_allow: Option<Vec<String>>,
    allow_stack_writes: Option<bool>,
    // The HTTP edge (EdgeArgs).
    deployer_group: Option<String>,
    deploy_capabilities: Option<Vec<String>>,
    deploy_role_arn: Option<String>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    max_http_connections: Option<usize>,
    http_header_timeout: Option<f64>,
    // SNS push ingest (sns::SnsArgs).
    sns_topic_arns: Option<Vec<String>>,
    sns_endpoint_url: Option<String>,
}

/// The files `--tls-cert` and `--tls-key` name (read by [`crate::tls::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub publisher_keys: Vec<String>,
    /// SHA-256 digests of further publisher keys.
    pub publisher_key_hashes: Vec<[u8; 32]>,
    pub log_format: LogFormat,
    pub history_size: usize,
    pub history_retention: Duration,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub queue_size: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// From the upgrade of a GraphQL socket to its `connection_init` (never reset).
    pub init_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The least time between two writes of messages to one connection (zero:
    /// every message at once).
    pub write_delay: Duration,
    /// The shared backplane; `None` keeps the hub in memory.
    pub redis_url: Option<String>,
    pub presence_interval: Duration,
    /// Token verification and topic policy; `None` serves loopback only.
    pub auth: Option<AuthSettings>,
    pub admission: AdmissionLimits,
    /// Certificate and key files: serve HTTPS/WSS; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Interval of the AppSync `ka` keep-alive message.
    pub graphql_keepalive: Duration,
    /// Whether GraphQL introspection is served.
    pub graphql_introspection: bool,
    /// Endpoint of every AWS client (moto, LocalStack); `None`: AWS itself.
    pub aws_endpoint_url: Option<String>,
    /// Default region of tracked stacks; `None`: from the standard AWS chain.
    pub aws_region: Option<String>,
    /// Time between two polls of one stack.
    pub poll_interval: Duration,
    /// Time between two polls of a stack pushed within the last 10 minutes.
    pub push_poll_interval: Duration,
    /// CloudFormation requests per second per account and region (`--aws-max-rps`);
    /// `None`: no limit (a local endpoint, `--aws-endpoint-url`, without the flag).
    pub aws_max_rps: Option<f64>,
    /// How long a poller outlives its last subscriber while the stack is busy.
    pub tracker_grace: Duration,
    /// How long a poller lease lasts without renewal.
    pub poller_lease: Duration,
    /// How long a multi-stack deployment may run.
    pub deployment_timeout: Duration,
    /// Topics one node stores or watches at most.
    pub max_topics: usize,
    /// Stack pollers one node runs at most.
    pub max_pollers: usize,
    /// Largest encoded event a publisher may send (and the snapshot budget).
    pub max_event_bytes: usize,
    /// Who may read `stack:` topics and which stacks are tracked.
    pub stacks: StackRules,
    /// Who may deploy, what they may acknowledge, the service role, the origins
    /// and proxies trusted, and the HTTP connection limits.
    pub edge: EdgeConfig,
    /// `serve --demo`: the trackers poll the demo's in-process endpoint, and
    /// `/healthz` says so (the dashboard then offers the demo stacks).
    pub demo: bool,
    /// Which SNS topics may push to `POST /v1/ingest/sns`.
    pub sns: sns::SnsConfig,
}

/// The resolved [`EdgeArgs`].
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub deployer_group: String,
    /// Capabilities `POST /canvas/deploy` may pass to CreateStack; empty: none.
    pub deploy_capabilities: Vec<String>,
    pub deploy_role_arn: Option<String>,
    /// Origins (`scheme://host[:port]`, lowercase) allowed besides loopback ones
    /// when auth is off.
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// `None`: 4 × [`Config::max_connections`].
    pub max_http_connections: Option<usize>,
    pub http_header_timeout: Duration,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig {
            deployer_group: "deployers".into(),
            deploy_capabilities: Vec::new(),
            deploy_role_arn: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_http_connections: None,
            http_header_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The cap on open HTTP connections.
    pub fn max_http_connections(&self) -> usize {
        self.edge
            .max_http_connections
            .unwrap_or_else(|| self.max_connections.saturating_mul(4))
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            publisher_keys: Vec::new(),
            publisher_key_hashes: Vec::new(),
            log_format: LogFormat::Text,
            history_size: 2000,
            history_retention: Duration::from_secs(86_400),
            max_connections: 50_000,
            max_subscriptions: 100,
            max_frame_bytes: 64 * 1024,
            queue_size: 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            init_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            write_delay: Duration::ZERO,
            redis_url: None,
            presence_interval: Duration::from_secs(5),
            auth: None,
            admission: AdmissionLimits {
                max_connections_per_user: 100,
                connect_rate_per_ip: 50.0,
                connect_rate_per_user: 20.0,
            },
            tls: None,
            graphql_keepalive: Duration::from_secs(30),
            graphql_introspection: true,
            aws_endpoint_url: None,
            aws_region: None,
            poll_interval: Duration::from_secs(2),
            push_poll_interval: Duration::from_secs(30),
            aws_max_rps: Some(DEFAULT_AWS_RPS),
            tracker_grace: Duration::from_secs(60),
            poller_lease: Duration::from_secs(30),
            deployment_timeout: Duration::from_secs(6 * 3600),
            max_topics: 100_000,
            max_pollers: 1000,
            max_event_bytes: 256 * 1024,
            stacks: StackRules::default(),
            demo: false,
            edge: EdgeConfig::default(),
            sns: sns::SnsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// The longest duration any flag accepts: more is a typo, and timers and
/// `Instant` arithmetic on it would overflow (a panic in a task) later.
const MAX_SECONDS: f64 = 30.0 * 86_400.0;

/// Largest `--aws-max-rps` (CloudFormation's own limits are far below).
const MAX_AWS_RPS: f64 = 1000.0;
/// Default `--aws-max-rps` against AWS.
const DEFAULT_AWS_RPS: f64 = 4.0;

fn seconds(name: &'static str, value: f64) -> Result<Duration, ConfigError> {
    seconds_at_most(name, value, MAX_SECONDS)
}

/// A positive duration of at most `max` seconds.
fn seconds_at_most(name: &'static str, value: f64, max: f64) -> Result<Duration, ConfigError> {
    let d = Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(ConfigError::Invalid {
            name,
            message: format!("{value} is not a positive number of seconds"),
        })?;
    if value > max {
        return Err(ConfigError::Invalid {
            name,
            message: format!("{value} is more than the {max} seconds allowed"),
        });
    }
    Ok(d)
}

/// The longest `--write-delay`: past it a client would take the delay for an outage.
const MAX_WRITE_DELAY: f64 = 1.0;

/// Zero, or a positive duration of at most `max` seconds.
fn seconds_or_zero(name: &'static str, value: f64, max: f64) -> Result<Duration, ConfigError> {
    if value == 0.0 {
        return Ok(Duration::ZERO);
    }
    if value.is_nan() || value < 0.0 {
        return Err(ConfigError::Invalid {
            name,
            message: format!("{value} is not zero or a positive number of seconds"),
        });
    }
    seconds_at_most(name, value, max)
}

/// The longest poll interval: a stack polled less often is not being tracked.
const MAX_POLL_INTERVAL: f64 = 3600.0;

/// Resolves [`EdgeArgs`] over the file.
fn resolve_edge(args: &EdgeArgs, file: &FileConfig) -> Result<EdgeConfig, ConfigError> {
    let d = EdgeConfig::default();
    let list = |flag: &Vec<String>, file: &Option<Vec<String>>| -> Vec<String> {
        let v = if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag.clone()
        };
        v.into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let trusted_proxies = list(&args.trusted_proxies, &file.trusted_proxies)
        .iter()
        .map(|c| {
            c.parse::<crate::net::Cidr>()
                .map_err(|message| ConfigError::Invalid {
                    name: "trusted-proxy",
                    message,
                })
        })
        .collect::<Result<_, _>>()?;
    let allowed_origins = list(&args.allowed_origins, &file.allowed_origins)
        .iter()
        .map(|o| crate::net::normalize_origin(o))
        .collect();
    Ok(EdgeConfig {
        deployer_group: non_empty(args.deployer_group.clone().or(file.deployer_group.clone()))
            .unwrap_or(d.deployer_group),
        deploy_capabilities: list(&args.deploy_capabilities, &file.deploy_capabilities),
        deploy_role_arn: non_empty(
            args.deploy_role_arn
                .clone()
                .or(file.deploy_role_arn.clone()),
        ),
        allowed_origins,
        trusted_proxies,
        max_http_connections: args
            .max_http_connections
            .or(file.max_http_connections)
            .map(|n| positive("max-http-connections", n))
            .transpose()?,
        http_header_timeout: match args.http_header_timeout.or(file.http_header_timeout) {
            Some(s) => seconds_at_most("http-header-timeout", s, 3600.0)?,
            None => d.http_header_timeout,
        },
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn positive(name: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            name,
            message: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// Parses hex SHA-256 digests (64 hex digits each).
fn parse_hashes(list: Vec<String>) -> Result<Vec<[u8; 32]>, ConfigError> {
    let invalid = |h: &str| ConfigError::Invalid {
        name: "publisher-key-sha256",
        message: format!("{h:?} is not 64 hex digits"),
    };
    list.iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.len() != 64 || !h.is_ascii() {
                return Err(invalid(h));
            }
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| invalid(h))?;
            }
            Ok(out)
        })
        .collect()
}

impl Config {
    /// Resolves flags/env over the optional file over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let edge = resolve_edge(&args.edge, &file)?;
        let sns = sns::resolve(
            &args.sns,
            file.sns_topic_arns.clone(),
            file.sns_endpoint_url.clone(),
        )?;
        let auth_file = file.auth.unwrap_or_default();
        let keys = if args.publisher_keys.is_empty() {
            file.publisher_keys.unwrap_or_default()
        } else {
            args.publisher_keys.clone()
        };
        let keys: Vec<String> = keys
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        let auth = settings::resolve(&args.auth, &auth_file)?;
        Ok(Config {
            demo: args.demo,
            // Introspection defaults to on in loopback dev mode only.
            graphql_introspection: args
                .graphql_introspection
                .or(file.graphql_introspection)
                .unwrap_or(auth.is_none()),
            bind: args.bind.or(file.bind).unwrap_or(d.bind),
            publisher_keys: keys,
            publisher_key_hashes: parse_hashes(if args.publisher_key_hashes.is_empty() {
                file.publisher_key_hashes.clone().unwrap_or_default()
            } else {
                args.publisher_key_hashes.clone()
            })?,
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            history_size: positive(
                "history-size",
                args.history_size
                    .or(file.history_size)
                    .unwrap_or(d.history_size),
            )?,
            history_retention: match args.history_retention.or(file.history_retention) {
                Some(s) => seconds("history-retention", s)?,
                None => d.history_retention,
            },
            max_connections: positive(
                "max-connections",
                args.max_connections
                    .or(file.max_connections)
                    .unwrap_or(d.max_connections),
            )?,
            max_subscriptions: positive(
                "max-subscriptions",
                args.max_subscriptions
                    .or(file.max_subscriptions)
                    .unwrap_or(d.max_subscriptions),
            )?,
            max_frame_bytes: positive(
                "max-frame-bytes",
                args.max_frame_bytes
                    .or(file.max_frame_bytes)
                    .unwrap_or(d.max_frame_bytes),
            )?,
            queue_size: positive(
                "queue-size",
                args.queue_size.or(file.queue_size).unwrap_or(d.queue_size),
            )?,
            ping_interval: match args.ping_interval.or(file.ping_interval) {
                Some(s) => seconds("ping-interval", s)?,
                None => d.ping_interval,
            },
            init_timeout: match args.init_timeout {
                Some(s) => seconds("init-timeout", s)?,
                None => d.init_timeout,
            },
            idle_timeout: match args.idle_timeout.or(file.idle_timeout) {
                Some(s) => seconds("idle-timeout", s)?,
                None => d.idle_timeout,
            },
            shutdown_grace: match args.shutdown_grace.or(file.shutdown_grace) {
                Some(s) => seconds("shutdown-grace", s)?,
                None => d.shutdown_grace,
            },
            write_delay: match args.write_delay.or(file.write_delay) {
                Some(s) => seconds_or_zero("write-delay", s, MAX_WRITE_DELAY)?,
                None => d.write_delay,
            },
            redis_url: args.redis_url.clone().or(file.redis_url),
            presence_interval: match args.presence_interval.or(file.presence_interval) {
                Some(s) => seconds("presence-interval", s)?,
                None => d.presence_interval,
            },
            auth,
            admission: settings::resolve_limits(&args.auth, &auth_file)?,
            tls: match (
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        name: "tls-key",
                        message: "--tls-cert needs --tls-key (the certificate's private key)"
                            .into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        name: "tls-cert",
                        message: "--tls-key needs --tls-cert (the certificate chain)".into(),
                    })
                }
            },
            graphql_keepalive: match args.graphql_keepalive.or(file.graphql_keepalive) {
                Some(s) => seconds("graphql-keepalive", s)?,
                None => d.graphql_keepalive,
            },
            aws_endpoint_url: non_empty(args.aws_endpoint_url.clone().or(file.aws_endpoint_url.clone())),
            aws_region: non_empty(args.aws_region.clone().or(file.aws_region)),
            poll_interval: match args.poll_interval.or(file.poll_interval) {
                Some(s) => seconds_at_most("poll-interval", s, MAX_POLL_INTERVAL)?,
                None => d.poll_interval,
            },
            push_poll_interval: match args.push_poll_interval.or(file.push_poll_interval) {
                Some(s) => seconds_at_most("push-poll-interval", s, MAX_POLL_INTERVAL)?,
                None => d.push_poll_interval,
            },
            aws_max_rps: match args.aws_max_rps.or(file.aws_max_rps) {
                Some(n) if n.is_finite() && n > 0.0 && n <= MAX_AWS_RPS => Some(n),
                Some(n) => {
                    return Err(ConfigError::Invalid {
                        name: "aws-max-rps",
                        message: format!(
                            "{n} is not a number of requests per second above 0 and at most {MAX_AWS_RPS}"
                        ),
                    })
                }
                // moto, LocalStack, the demo: no AWS API limits to protect.
                None if non_empty(args.aws_endpoint_url.clone().or(file.aws_endpoint_url.clone()))
                    .is_some() =>
                {
                    None
                }
                None => d.aws_max_rps,
            },
            tracker_grace: match args.tracker_grace.or(file.tracker_grace) {
                Some(s) => seconds("tracker-grace", s)?,
                None => d.tracker_grace,
            },
            poller_lease: match args.poller_lease.or(file.poller_lease) {
                Some(s) => seconds("poller-lease", s)?,
                None => d.poller_lease,
            },
            deployment_timeout: match args.deployment_timeout.or(file.deployment_timeout) {
                Some(s) => seconds("deployment-timeout", s)?,
                None => d.deployment_timeout,
            },
            max_topics: positive(
                "max-topics",
                args.max_topics.or(file.max_topics).unwrap_or(d.max_topics),
            )?,
            max_pollers: positive(
                "max-pollers",
                args.max_pollers
                    .or(file.max_pollers)
                    .unwrap_or(d.max_pollers),
            )?,
            max_event_bytes: positive(
                "max-event-bytes",
                args.max_event_bytes
                    .or(file.max_event_bytes)
                    .unwrap_or(d.max_event_bytes),
            )?,
            stacks: StackRules {
                reader_group: non_empty(
                    args.stack_reader_group.clone().or(file.stack_reader_group),
                ),
                allow: {
                    let globs: Vec<String> = if args.stack_allow.is_empty() {
                        file.stack_allow.unwrap_or_default()
                    } else {
                        args.stack_allow.clone()
                    };
                    let globs: Vec<String> = globs
                        .into_iter()
                        .map(|g| g.trim().to_owned())
                        .filter(|g| !g.is_empty())
                        .collect();
                    if globs.is_empty() {
                        d.stacks.allow.clone()
                    } else {
                        globs
                    }
                },
                publishers_write: args.allow_stack_writes
                    || file.allow_stack_writes.unwrap_or(false),
            },
            edge,
            sns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn graphql_introspection_defaults_to_on_without_auth() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let resolve = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                .expect("args");
            Config::resolve(&cli.serve).expect("config")
        };
        assert!(resolve(&[]).graphql_introspection);
        assert!(resolve(&["--graphql-introspection"]).graphql_introspection);
        assert!(!resolve(&["--graphql-introspection=false"]).graphql_introspection);
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(file, "graphql_introspection = false").expect("write");
        let path = file.path().to_string_lossy().into_owned();
        assert!(!resolve(&["--config", &path]).graphql_introspection);
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(file, "bind = \"127.0.0.1:9000\"\nhistory_size = 10\nqueue_size = 7\npublisher_keys = [\"f\"]")
            .expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            history_size: Some(20),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&args).expect("valid");
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.history_size, 20);
        assert_eq!(c.queue_size, 7);
        assert_eq!(c.publisher_keys, vec!["f".to_string()]);
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.tracker_grace, Duration::from_secs(60));
        assert_eq!(c.aws_endpoint_url, None);
        assert_eq!(c.tls, None);
    }

    #[test]
    fn tls_files_from_file_and_flags_need_each_other() {
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            file,
            "tls_cert = \"/etc/sp/cert.pem\"\ngraphql_keepalive = 5"
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            tls_key: Some("/etc/sp/key.pem".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&args).expect("valid");
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/sp/cert.pem".into(),
                key: "/etc/sp/key.pem".into()
            })
        );
        assert_eq!(c.graphql_keepalive, Duration::from_secs(5));
        let only_cert = ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&only_cert).expect_err("needs key");
        assert!(e.to_string().contains("--tls-cert needs --tls-key"), "{e}");
    }

    #[test]
    fn aws_settings_from_flags_and_file() {
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            file,
            "aws_region = \"eu-west-1\"\npoll_interval = 0.5\ntracker_grace = 5"
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            aws_endpoint_url: Some("http://127.0.0.1:5000".into()),
            poll_interval: Some(0.25),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&args).expect("valid");
        assert_eq!(c.aws_region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.aws_endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.tracker_grace, Duration::from_secs(5));
    }

    #[test]
    fn absurd_durations_and_edge_values_are_named() {
        let cases: [(ServeArgs, &str); 5] = [
            (
                ServeArgs {
                    poll_interval: Some(7200.0),
                    ..ServeArgs::default()
                },
                "poll-interval",
            ),
            (
                ServeArgs {
                    tracker_grace: Some(1e12),
                    ..ServeArgs::default()
                },
                "tracker-grace",
            ),
            (
                ServeArgs {
                    deployment_timeout: Some(1e20),
                    ..ServeArgs::default()
                },
                "deployment-timeout",
            ),
            (
                ServeArgs {
                    idle_timeout: Some(f64::INFINITY),
                    ..ServeArgs::default()
                },
                "idle-timeout",
            ),
            (
                ServeArgs {
                    edge: EdgeArgs {
                        trusted_proxies: vec!["10.0.0.0/99".into()],
                        ..EdgeArgs::default()
                    },
                    ..ServeArgs::default()
                },
                "trusted-proxy",
            ),
        ];
        for (args, name) in cases {
            let e = Config::resolve(&args).expect_err(name);
            assert!(e.to_string().contains(name), "{e}");
        }
        let ok = ServeArgs {
            deployment_timeout: Some(7.0 * 86_400.0),
            max_connections: Some(10),
            edge: EdgeArgs {
                allowed_origins: vec!["https://Dash.example/".into()],
                deploy_capabilities: vec!["CAPABILITY_IAM".into(), " ".into()],
                ..EdgeArgs::default()
            },
            ..ServeArgs::default()
        };
        let c = Config::resolve(&ok).expect("valid");
        assert_eq!(c.max_http_connections(), 40, "4 × --max-connections");
        assert_eq!(
            c.edge.allowed_origins,
            vec!["https://dash.example".to_string()]
        );
        assert_eq!(
            c.edge.deploy_capabilities,
            vec!["CAPABILITY_IAM".to_string()]
        );
        assert_eq!(c.edge.deployer_group, "deployers");
        assert_eq!(c.edge.http_header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_are_named() {
        let args = ServeArgs {
            idle_timeout: Some(-1.0),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&args).expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "invalid value for idle-timeout: -1 is not a positive number of seconds"
        );
        for (value, message) in [
            (-0.5, "-0.5 is not zero or a positive number of seconds"),
            (2.0, "2 is more than the 1 seconds allowed"),
            (f64::NAN, "NaN is not zero or a positive number of seconds"),
        ] {
            let args = ServeArgs {
                write_delay: Some(value),
                ..ServeArgs::default()
            };
            let e = Config::resolve(&args).expect_err("invalid write delay");
            assert_eq!(
                e.to_string(),
                format!("invalid value for write-delay: {message}")
            );
        }
        for (value, delay) in [(0.0, Duration::ZERO), (0.02, Duration::from_millis(20))] {
            let args = ServeArgs {
                write_delay: Some(value),
                ..ServeArgs::default()
            };
            let c = Config::resolve(&args).expect("a valid write delay");
            assert_eq!(c.write_delay, delay);
        }
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(file, "bnid = 1").expect("write");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&args).expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `bnid`"), "{e}");
        let args = ServeArgs {
            publisher_key_hashes: vec!["abc".into()],
            ..ServeArgs::default()
        };
        let e = Config::resolve(&args).expect_err("bad hash");
        assert!(e.to_string().contains("is not 64 hex digits"), "{e}");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&args).expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `bnid`"), "{e}");
    }
}
