//! `stackpulse watch`: follows one stack's operation live, in a terminal or a CI log.
//!
//! # Layout
//! - [`stream`]: where the messages come from (a server's `/ws` topic, or a tracker
//!   run in this process with `--direct`) and `--next` (wait for the stack's next
//!   operation).
//! - [`state`]: what is known about the operation (rows, counts, timing, ETA).
//! - [`tty`]: the terminal view, a compact region redrawn in place (indicatif).
//! - [`plain`]: the view without a terminal: one line per event and a heartbeat.
//! - [`summary`]: the lines printed when the operation ends.
//! - [`chart`]: `--chart FILE.svg|.html`, the finished timeline.
//!
//! Data flow: `stream` → [`Watcher::apply`] (strings made terminal-safe, message
//! turned into its wire JSON) → [`state::State::apply`] → the view draws what
//! changed; at completion the chart is written and the view prints the summary.
//!
//! Exit codes ([`WatchEnd::code`]): 0 the operation succeeded, 1 it failed, 2 the
//! stack could not be watched (usage, connection, auth, stack not found, or a
//! configuration error of the tracker: credentials, region, access denied, printed
//! once).

pub mod chart;
pub mod plain;
pub mod state;
pub mod stream;
pub mod summary;
pub mod tty;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use stackpulse_cfn::{TrackerConfig, TrackerMessage};
use tokio::time::Instant;

use state::{Change, State};

pub use stream::{direct, via_server};

/// How a watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    Succeeded,
    Failed,
    /// Usage, connection, auth or tracking error, with what to tell the user.
    Error(String),
}

impl WatchEnd {
    pub fn code(&self) -> u8 {
        match self {
            WatchEnd::Succeeded => 0,
            WatchEnd::Failed => 1,
            WatchEnd::Error(_) => 2,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        if let WatchEnd::Error(m) = self {
            eprintln!("stackpulse: {}", terminal_safe(m));
        }
        ExitCode::from(self.code())
    }
}

/// `s` without C0 and C1 control characters (and DEL), except `\t`: strings from
/// the server (status reasons, outputs, messages, names) can carry escape
/// sequences that would rewrite the operator's terminal.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c != '\t' && (c.is_control() || ('\u{80}'..='\u{9f}').contains(&c));
    if s.chars().any(unsafe_char) {
        std::borrow::Cow::Owned(s.chars().filter(|c| !unsafe_char(*c)).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The wire JSON of `msg` with [`terminal_safe`] applied to every string, before
/// the state stores or a view prints any of it.
fn safe_wire(msg: &TrackerMessage) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) => {
                if let std::borrow::Cow::Owned(clean) = terminal_safe(s) {
                    *s = clean;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::to_value(msg) {
        Ok(mut v) => {
            walk(&mut v);
            v
        }
        Err(_) => serde_json::json!({
            "type": "error",
            "message": "a message from the server could not be displayed",
            "retrying": true,
        }),
    }
}

/// How `watch` shows the operation.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// A terminal: the live view; otherwise plain lines.
    pub tty: bool,
    /// `--all`: every resource (terminal view: every event above the region).
    pub all: bool,
    /// `--chart FILE`: written when the operation ends.
    pub chart: Option<PathBuf>,
    /// Plain view: a heartbeat line after this long without output.
    pub heartbeat: Duration,
}

enum View<W: Write> {
    Tty(tty::TtyView),
    Plain(plain::PlainView<W>),
}

/// One watch: the [`State`], the view that shows it, and the chart to write.
pub struct Watcher<W: Write> {
    state: State,
    view: View<W>,
    chart: Option<PathBuf>,
    heartbeat: Duration,
    /// `--next`: what `watch` waits for, and since when.
    waiting: Option<(String, Instant)>,
}

impl<W: Write> Watcher<W> {
    /// A watcher of `stack`; `out` is where the plain view writes (the terminal
    /// view draws on stdout).
    pub fn new(out: W, stack: &str, options: ViewOptions) -> Watcher<W> {
        let view = if options.tty {
            View::Tty(tty::TtyView::new(options.all))
        } else {
            View::Plain(plain::PlainView::new(out, options.heartbeat))
        };
        Watcher {
            state: State::new(stack),
            view,
            chart: options.chart,
            heartbeat: options.heartbeat,
            waiting: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// How often [`Watcher::tick`] should be called: every second, or every
    /// heartbeat interval when shorter.
    pub fn tick_interval(&self) -> Duration {
        self.heartbeat
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(20))
    }

    /// Applies one message; `Some` once the watch ended.
    pub fn apply(&mut self, msg: &TrackerMessage) -> Option<WatchEnd> {
        let change = self.state.apply(&safe_wire(msg));
        if matches!(change, Change::Resource(_)) {
            self.waiting = None;
        }
        match &mut self.view {
            View::Tty(v) => v.change(&self.state, &change),
            View::Plain(v) => v.change(&self.state, &change),
        }
        match change {
            Change::Fatal(m) => Some(self.end(WatchEnd::Error(m))),
            Change::Complete => Some(self.complete()),
            _ => None,
        }
    }

    /// `--next`: nothing to show yet; the view says what `watch` waits for.
    pub fn waiting(&mut self, what: String) {
        match &mut self.view {
            View::Tty(v) => v.waiting(&what, Duration::ZERO),
            View::Plain(v) => v.line(&format!("waiting for {what}")),
        }
        self.waiting = Some((what, Instant::now()));
    }

    /// Moves the times (terminal) or writes a heartbeat when due (plain).
    pub fn tick(&mut self) {
        let waiting = self
            .waiting
            .as_ref()
            .map(|(w, t)| (w.as_str(), t.elapsed()));
        match &mut self.view {
            View::Tty(v) => match waiting {
                Some((what, since)) => v.waiting(what, since),
                None => v.tick(&self.state),
            },
            View::Plain(v) => v.tick(&self.state, waiting, chrono::Utc::now()),
        }
    }

    /// Ends the view for an error (the caller prints it) and returns `end`.
    pub fn end(&mut self, end: WatchEnd) -> WatchEnd {
        if let View::Tty(v) = &mut self.view {
            v.abandon();
        }
        end
    }

    fn complete(&mut self) -> WatchEnd {
        let mut extra = Vec::new();
        if let Some(path) = &self.chart {
            extra.push(match chart::write(path, &self.state) {
                Ok(()) => format!("Chart written to {}", path.display()),
                Err(e) => format!("warning: cannot write the chart to {}: {e}", path.display()),
            });
        }
        match &mut self.view {
            View::Tty(v) => v.finish(&self.state, &extra),
            View::Plain(v) => v.finish(&self.state, &extra),
        }
        match &self.state.complete {
            Some(d) if d.success => WatchEnd::Succeeded,
            _ => WatchEnd::Failed,
        }
    }
}

/// `stackpulse watch` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Stack name.
    pub stack: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// List every resource, not only those in progress or failed (on a terminal,
    /// every event is also printed above the live view).
    #[arg(long)]
    pub all: bool,
    /// Wait for the stack's next operation to start, then watch it (instead of
    /// the current or last one).
    #[arg(long)]
    pub next: bool,
    /// When the operation ends, write its timeline to FILE: SVG, or an HTML page
    /// when FILE ends in `.html`.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Without a terminal: seconds without output before a "still waiting on …"
    /// line (tests shorten it).
    #[arg(
        long,
        env = "STACKPULSE_WATCH_HEARTBEAT",
        default_value_t = 30.0,
        value_name = "SECONDS",
        hide = true
    )]
    pub heartbeat: f64,
}

/// Where `watch` (and `deploy --watch`) get the stack's events from.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Server to watch through (its `/ws` topic `stack:<STACK>`).
    #[arg(
        long,
        env = "STACKPULSE_SERVER",
        default_value = "http://127.0.0.1:8000"
    )]
    pub server: String,
    /// Poll CloudFormation from this process instead of a server (AWS settings
    /// from the standard chain).
    #[arg(long)]
    pub direct: bool,
    /// Region of the stack [default: the server's (or the AWS chain's) default].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "STACKPULSE_TOKEN")]
    pub token: Option<String>,
    /// AWS endpoint (moto, LocalStack) for `--direct` and `deploy`.
    #[arg(long, env = "STACKPULSE_AWS_ENDPOINT_URL", value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Seconds between two polls with `--direct` (fractions allowed).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub poll_interval: f64,
}

impl SourceArgs {
    fn aws(&self) -> crate::tracking::aws::AwsSettings {
        crate::tracking::aws::AwsSettings {
            endpoint_url: self.aws_endpoint_url.clone(),
            region: self.region.clone(),
        }
    }
}

fn check_names(stack: &str, region: Option<&str>) -> Result<(), WatchEnd> {
    if !crate::tracking::valid_stack_name(stack) {
        return Err(WatchEnd::Error(format!(
            "invalid stack name {stack:?} (letters, digits and '-', starting with a letter)"
        )));
    }
    if let Some(r) = region {
        if !crate::tracking::valid_region(r) {
            return Err(WatchEnd::Error(format!("invalid region {r:?}")));
        }
    }
    Ok(())
}

/// What `watch` does besides following the operation.
#[derive(Debug, Clone, Default)]
struct WatchOptions {
    all: bool,
    next: bool,
    chart: Option<PathBuf>,
    heartbeat: Option<Duration>,
}

async fn watch_stack(stack: &str, source: &SourceArgs, options: WatchOptions) -> WatchEnd {
    if let Err(e) = check_names(stack, source.region.as_deref()) {
        return e;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let view = ViewOptions {
        tty,
        all: options.all,
        chart: options.chart,
        heartbeat: options.heartbeat.unwrap_or(Duration::from_secs(30)),
    };
    let mut watcher = Watcher::new(std::io::stdout(), stack, view);
    if source.direct {
        let sdk = crate::tracking::aws::load(&source.aws()).await;
        let client = crate::tracking::aws::cfn_client(&sdk, None);
        let config = TrackerConfig::new(stack).with_poll_interval_secs(source.poll_interval);
        direct(client, config, &mut watcher, options.next).await
    } else {
        let url = match crate::client::ws_url(&source.server) {
            Ok(u) => u,
            Err(e) => return WatchEnd::Error(e.to_string()),
        };
        let topic = crate::tracking::StackTopic {
            region: source.region.clone(),
            stack: stack.to_owned(),
        }
        .topic();
        via_server(
            &url,
            source.token.as_deref(),
            &topic,
            stack,
            &mut watcher,
            options.next,
        )
        .await
    }
}

/// `stackpulse watch STACK`.
pub async fn watch(args: WatchArgs) -> ExitCode {
    let heartbeat = match Duration::try_from_secs_f64(args.heartbeat) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            return WatchEnd::Error(format!(
                "invalid --heartbeat {}: a positive number of seconds",
                args.heartbeat
            ))
            .exit_code()
        }
    };
    let options = WatchOptions {
        all: args.all,
        next: args.next,
        chart: args.chart.clone(),
        heartbeat: Some(heartbeat),
    };
    watch_stack(&args.stack, &args.source, options)
        .await
        .exit_code()
}

/// `stackpulse deploy` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// Template file (JSON or YAML).
    pub template: std::path::PathBuf,
    /// Stack name [default: stackpulse-<8 hex>].
    #[arg(long)]
    pub stack_name: Option<String>,
    /// Template parameter (repeatable).
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_parameter)]
    pub parameters: Vec<(String, String)>,
    /// Capability to acknowledge, e.g. CAPABILITY_IAM (repeatable).
    #[arg(long = "capability", value_name = "CAPABILITY")]
    pub capabilities: Vec<String>,
    /// Watch the new stack's creation until it ends (exit codes as `watch`).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn parse_parameter(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `stackpulse deploy TEMPLATE`: creates the stack with this machine's AWS
/// credentials (like `aws cloudformation create-stack`), then optionally watches it.
pub async fn deploy(args: DeployArgs) -> ExitCode {
    let template_body = match std::fs::read_to_string(&args.template) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stackpulse: cannot read {}: {e}", args.template.display());
            return ExitCode::from(2);
        }
    };
    let sdk = crate::tracking::aws::load(&args.source.aws()).await;
    let client = crate::tracking::aws::cfn_client(&sdk, None);
    let request = stackpulse_cfn::CreateStackRequest {
        template_body,
        stack_name: args.stack_name.clone(),
        parameters: args.parameters.iter().cloned().collect(),
        capabilities: args.capabilities.clone(),
        role_arn: None,
    };
    let created = match stackpulse_cfn::create_stack(&client, request).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "Created stack {} ({})",
        created.stack_name, created.stack_id
    );
    if !args.watch {
        return ExitCode::SUCCESS;
    }
    watch_stack(&created.stack_name, &args.source, WatchOptions::default())
        .await
        .exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackpulse_cfn::{
        DeploymentComplete, ResourceSummary, ResourceUpdate, RootCause, StackSummary,
    };

    fn update(status: &str) -> TrackerMessage {
        TrackerMessage::ResourceUpdate(ResourceUpdate {
            timestamp: chrono::Utc::now(),
            resource: ResourceSummary {
                logical_id: "Db".into(),
                resource_type: "AWS::RDS::DBInstance".into(),
                status: status.into(),
                physical_id: String::new(),
                status_reason: "boom".into(),
                progress: 0,
                ..ResourceSummary::default()
            },
            stack: StackSummary {
                name: "s".into(),
                status: "CREATE_IN_PROGRESS".into(),
                total_resources: 1,
                ..StackSummary::default()
            },
            nested_stack: None,
            event_id: String::new(),
        })
    }

    fn failed() -> TrackerMessage {
        TrackerMessage::DeploymentComplete(DeploymentComplete {
            success: false,
            stack: StackSummary {
                name: "s".into(),
                status: "ROLLBACK_COMPLETE".into(),
                total_resources: 1,
                ..StackSummary::default()
            },
            outputs: vec![],
            duration_seconds: 7,
            root_cause: Some(RootCause {
                logical_id: "Db".into(),
                resource_type: "AWS::RDS::DBInstance".into(),
                status: "CREATE_FAILED".into(),
                reason: "boom".into(),
            }),
        })
    }

    fn plain(out: &mut Vec<u8>, chart: Option<PathBuf>) -> Watcher<&mut Vec<u8>> {
        Watcher::new(
            out,
            "s",
            ViewOptions {
                tty: false,
                all: false,
                chart,
                heartbeat: Duration::from_secs(30),
            },
        )
    }

    #[test]
    fn plain_lines_without_a_terminal() {
        let mut out = Vec::new();
        let mut w = plain(&mut out, None);
        assert_eq!(w.apply(&update("CREATE_FAILED")), None);
        assert_eq!(w.apply(&failed()), Some(WatchEnd::Failed));
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("Db"), "{text}");
        assert!(text.contains("CREATE_FAILED"), "{text}");
        assert!(
            text.contains("Stack s ROLLBACK_COMPLETE failed in 7 s"),
            "{text}"
        );
        assert!(
            text.contains("Root cause: Db (AWS::RDS::DBInstance) CREATE_FAILED: boom"),
            "{text}"
        );
    }

    #[test]
    fn the_chart_is_written_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.svg");
        let mut out = Vec::new();
        let mut w = plain(&mut out, Some(path.clone()));
        w.apply(&update("CREATE_IN_PROGRESS"));
        assert!(!path.exists(), "not before the end");
        w.apply(&update("CREATE_FAILED"));
        w.apply(&failed());
        let svg = std::fs::read_to_string(&path).expect("chart");
        assert!(svg.contains("data-id=\"Db\""), "{svg}");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains(&format!("Chart written to {}", path.display())),
            "{text}"
        );
    }

    #[test]
    fn a_configuration_problem_ends_the_watch() {
        let mut out = Vec::new();
        let mut w = plain(&mut out, None);
        let problem = TrackerMessage::Problem(stackpulse_cfn::TrackerProblem {
            code: stackpulse_cfn::ErrorCode::Credentials,
            message: "No AWS credentials.".into(),
            retrying: true,
            retry_at: None,
        });
        assert_eq!(
            w.apply(&problem),
            Some(WatchEnd::Error(
                "cannot track s: No AWS credentials.".into()
            ))
        );
    }

    #[test]
    fn control_characters_are_stripped() {
        assert_eq!(terminal_safe("plain\ttext"), "plain\ttext");
        assert_eq!(
            terminal_safe("a\x1b]0;pwned\x07b\x1b[2J\r\nc\u{9b}31m\u{7f}d"),
            "a]0;pwnedb[2Jc31md"
        );
        assert!(matches!(terminal_safe("ok"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn server_strings_reach_the_terminal_without_escapes() {
        let TrackerMessage::ResourceUpdate(mut u) = update("CREATE_FAILED") else {
            unreachable!()
        };
        u.resource.status_reason =
            "\x1b[2J\x1b]0;owned\x07fake\nStack s CREATE_COMPLETE succeeded".into();
        u.resource.logical_id = "Db\x1b[31m".into();
        let TrackerMessage::DeploymentComplete(mut done) = failed() else {
            unreachable!()
        };
        done.outputs.push(stackpulse_cfn::StackOutput {
            key: "Url\u{9b}2J".into(),
            value: "https://x\x1b[0m".into(),
            description: String::new(),
        });
        let mut out = Vec::new();
        let mut w = plain(&mut out, None);
        w.apply(&TrackerMessage::ResourceUpdate(u.clone()));
        // The terminal view draws from the same (cleaned) state.
        let frame = tty::frame(w.state(), chrono::Utc::now(), 100, 30, true);
        assert!(
            !frame.message.contains("\x1b[2J") && !frame.message.contains('\x07'),
            "{frame:?}"
        );
        assert!(frame.message.contains("Db[31m"), "{frame:?}");
        w.apply(&TrackerMessage::DeploymentComplete(done.clone()));
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            !text.contains("\x1b[2J") && !text.contains("\x1b]0"),
            "{text:?}"
        );
        assert!(
            !text.contains('\u{9b}') && !text.contains('\x07'),
            "{text:?}"
        );
        assert!(!text.contains("fake\n"), "{text:?}");
        assert!(text.contains("Output Url2J = https://x[0m"), "{text:?}");
    }
}
