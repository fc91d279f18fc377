//! `stackpulse watch`: a live terminal view of one stack's operation.
//!
//! Messages come either from a running server ([`via_server`]: the `/ws` topic
//! `stack:<name>`, translated back by [`crate::tracking::events::from_hub`]) or from
//! a tracker run in this process ([`direct`]); both feed one [`View`].
//!
//! On a terminal the view redraws in place, like the CDK's: a header with the stack
//! status, a progress bar, counts and the elapsed time, then one line per resource
//! with its status coloured (green complete, yellow in progress, red failed, magenta
//! rollback). Without a terminal (piped, CI) it prints one plain line per event and
//! no escape codes. Both end with a summary: duration and outputs on success, the
//! root cause on failure.
//!
//! Exit codes ([`WatchEnd::code`]): 0 the operation succeeded, 1 it failed, 2 the
//! stack could not be watched (usage, connection, auth, stack not found, or a
//! configuration error of the tracker: credentials, region, access denied, printed
//! once).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use stackpulse_cfn::{
    DeploymentComplete, Outcome, ResourceSummary, StackSummary, Tracker, TrackerConfig,
    TrackerError, TrackerMessage, TrackerProblem,
};
use stackpulse_protocol::ServerMessage;
use tokio::time::Instant;

use crate::client::{Client, Frame};
use crate::tracking::events::from_hub;

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

/// [`terminal_safe`] applied to every string of a message, before the view
/// stores or prints any of it.
fn terminal_safe_message(msg: &TrackerMessage) -> TrackerMessage {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(clean) = terminal_safe(s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            serde_json::Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    let cleaned = serde_json::to_value(msg).and_then(|mut v| {
        walk(&mut v);
        serde_json::from_value(v)
    });
    cleaned.unwrap_or_else(|_| {
        TrackerMessage::Error(stackpulse_cfn::TrackerError {
            message: "a message from the server could not be displayed".into(),
            retrying: true,
        })
    })
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const MAGENTA: &str = "\x1b[35m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";
const BAR_WIDTH: usize = 30;

fn colour(status: &str) -> &'static str {
    if status.ends_with("_FAILED") {
        RED
    } else if status.contains("ROLLBACK") {
        MAGENTA
    } else if status.ends_with("_IN_PROGRESS") {
        YELLOW
    } else if status.ends_with("_COMPLETE") {
        GREEN
    } else {
        ""
    }
}

fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// One resource line of the view.
struct Row {
    nested: Option<String>,
    resource: ResourceSummary,
}

/// The terminal view of one stack.
pub struct View<W: Write> {
    out: W,
    tty: bool,
    stack: String,
    summary: StackSummary,
    rows: Vec<Row>,
    last_error: Option<String>,
    started: Instant,
    /// Lines drawn by the last redraw (TTY only), erased by the next one.
    drawn: usize,
}

impl<W: Write> View<W> {
    pub fn new(out: W, tty: bool, stack: &str) -> View<W> {
        View {
            out,
            tty,
            stack: stack.to_owned(),
            summary: StackSummary {
                name: stack.to_owned(),
                ..StackSummary::default()
            },
            rows: Vec::new(),
            last_error: None,
            started: Instant::now(),
            drawn: 0,
        }
    }

    /// Applies one message; `Some` once the operation ended.
    pub fn apply(&mut self, msg: &TrackerMessage) -> Option<WatchEnd> {
        let msg = &terminal_safe_message(msg);
        match msg {
            TrackerMessage::ResourceUpdate(u) => {
                self.summary = u.stack.clone();
                let r = &u.resource;
                match self.rows.iter_mut().find(|row| {
                    row.nested == u.nested_stack && row.resource.logical_id == r.logical_id
                }) {
                    Some(row) => row.resource = r.clone(),
                    None => self.rows.push(Row {
                        nested: u.nested_stack.clone(),
                        resource: r.clone(),
                    }),
                }
                if self.tty {
                    self.redraw();
                } else {
                    let id = match &u.nested_stack {
                        Some(n) => format!("{n}/{}", r.logical_id),
                        None => r.logical_id.clone(),
                    };
                    let mut line = format!(
                        "{}  {:<32} {:<24} {:<28} {}/{} ({}%)",
                        stackpulse_cfn::wire::timestamp::format(&u.timestamp),
                        id,
                        r.status,
                        r.resource_type,
                        u.stack.completed_resources,
                        u.stack.total_resources,
                        u.stack.progress
                    );
                    if !r.status_reason.is_empty() {
                        line.push_str("  ");
                        line.push_str(&r.status_reason);
                    }
                    self.line(&line);
                }
                None
            }
            // A configuration error (credentials, region, access denied) does not
            // go away by waiting: said once, and `watch` ends with exit 2.
            TrackerMessage::Problem(p) if p.code.is_configuration() => Some(WatchEnd::Error(
                format!("cannot track {}: {}", self.stack, p.message),
            )),
            TrackerMessage::Recovered(_) => {
                if self.tty && self.last_error.take().is_some() {
                    self.redraw();
                }
                None
            }
            TrackerMessage::Problem(TrackerProblem {
                message, retrying, ..
            })
            | TrackerMessage::Error(TrackerError { message, retrying }) => {
                let text = if *retrying {
                    format!("warning: {message} (retrying)")
                } else {
                    format!("error: {message}")
                };
                if self.tty {
                    self.last_error = Some(text);
                    self.redraw();
                } else {
                    self.line(&text);
                }
                None
            }
            TrackerMessage::DeploymentComplete(d) => {
                self.summary = d.stack.clone();
                if self.tty {
                    self.last_error = None;
                    self.redraw();
                    self.drawn = 0;
                }
                self.finish(d);
                Some(if d.success {
                    WatchEnd::Succeeded
                } else {
                    WatchEnd::Failed
                })
            }
            TrackerMessage::Snapshot(_) => None,
        }
    }

    /// Redraws (TTY only) so the elapsed time moves.
    pub fn tick(&mut self) {
        if self.tty && self.drawn > 0 {
            self.redraw();
        }
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.tty && !code.is_empty() {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn redraw(&mut self) {
        let s = &self.summary;
        let filled = (usize::from(s.progress.min(100)) * BAR_WIDTH) / 100;
        let bar = format!("{}{}", "█".repeat(filled), "░".repeat(BAR_WIDTH - filled));
        let mut lines = vec![format!(
            "{} {} [{}] {:>3}% ({}/{}{}) {}",
            self.paint(BOLD, &self.stack),
            self.paint(
                colour(&s.status),
                if s.status.is_empty() {
                    "WAITING"
                } else {
                    &s.status
                }
            ),
            self.paint(colour(&s.status), &bar),
            s.progress,
            s.completed_resources,
            s.total_resources,
            if s.failed_resources > 0 {
                format!(", {} failed", s.failed_resources)
            } else {
                String::new()
            },
            self.paint(DIM, &elapsed(self.started.elapsed())),
        )];
        let width = self
            .rows
            .iter()
            .map(|r| r.resource.logical_id.len() + r.nested.as_ref().map_or(0, |n| n.len() + 1))
            .max()
            .unwrap_or(0);
        for row in &self.rows {
            let r = &row.resource;
            let id = match &row.nested {
                Some(n) => format!("{n}/{}", r.logical_id),
                None => r.logical_id.clone(),
            };
            let mut line = format!(
                "  {:<width$}  {}  {}",
                id,
                self.paint(colour(&r.status), &format!("{:<24}", r.status)),
                self.paint(DIM, &r.resource_type),
            );
            if r.status.ends_with("_FAILED") && !r.status_reason.is_empty() {
                line.push_str("  ");
                line.push_str(&self.paint(RED, &r.status_reason));
            }
            lines.push(line);
        }
        if let Some(e) = &self.last_error {
            lines.push(self.paint(YELLOW, e));
        }
        let mut text = String::new();
        if self.drawn > 0 {
            // Back to the first line of the last drawing, and clear below.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        self.drawn = lines.len();
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    fn finish(&mut self, d: &DeploymentComplete) {
        let s = &d.stack;
        let verdict = if d.success { "succeeded" } else { "failed" };
        let head = format!(
            "Stack {} {} {} in {} s ({}/{} resources)",
            self.stack,
            s.status,
            verdict,
            d.duration_seconds,
            s.completed_resources,
            s.total_resources
        );
        let head = self.paint(if d.success { GREEN } else { RED }, &head);
        self.line(&head);
        for o in &d.outputs {
            let line = if o.description.is_empty() {
                format!("  Output {} = {}", o.key, o.value)
            } else {
                format!("  Output {} = {}  ({})", o.key, o.value, o.description)
            };
            self.line(&line);
        }
        if let Some(c) = &d.root_cause {
            let line = format!(
                "  Root cause: {} ({}) {}: {}",
                c.logical_id, c.resource_type, c.status, c.reason
            );
            let line = self.paint(RED, &line);
            self.line(&line);
        }
    }
}

/// Watches through a running server's `/ws` topic `topic`.
pub async fn via_server<W: Write>(
    url: &str,
    token: Option<&str>,
    topic: &str,
    stack: &str,
    view: &mut View<W>,
) -> WatchEnd {
    let mut client = match Client::connect(url, token).await {
        Ok(c) => c,
        Err(e) => return WatchEnd::Error(e.to_string()),
    };
    if let Err(e) = client.subscribe(topic, None, None).await {
        return WatchEnd::Error(e.to_string());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failures = 0u32;
    loop {
        let frame = tokio::select! {
            f = client.next() => f,
            _ = tick.tick() => { view.tick(); continue; }
        };
        match frame {
            Some(Ok(Frame::Event(e))) => {
                failures = 0;
                let final_error = e.event_type == crate::tracking::events::TRACKER_ERROR
                    && e.data.get("final").and_then(serde_json::Value::as_bool) == Some(true);
                let data = e.data.as_object().cloned().unwrap_or_default();
                for msg in from_hub(&e.event_type, &e.timestamp, &data, stack) {
                    if let Some(end) = view.apply(&msg) {
                        client.close().await;
                        return end;
                    }
                }
                if final_error {
                    let message = e.data.get("message").and_then(serde_json::Value::as_str);
                    client.close().await;
                    return WatchEnd::Error(format!(
                        "the server stopped tracking {stack}: {}",
                        message.unwrap_or("unknown error")
                    ));
                }
            }
            Some(Ok(Frame::Control(ServerMessage::Error { code, message, .. }))) => {
                // `--region` named the server's default region: its topic is `stack:X`.
                let canonical = format!("{}{stack}", crate::tracking::TOPIC_PREFIX);
                let retry = code == 400
                    && topic != canonical
                    && message.starts_with(&format!("Use {canonical}:"));
                if retry && client.subscribe(&canonical, None, None).await.is_ok() {
                    continue;
                }
                return WatchEnd::Error(format!("server error {code}: {message}"));
            }
            Some(Ok(Frame::Control(_))) => {}
            Some(Ok(Frame::Closed(_))) | Some(Err(_)) | None => {
                failures += 1;
                if failures > 5 {
                    return WatchEnd::Error(format!("lost the connection to {url}"));
                }
                tokio::time::sleep(Duration::from_millis(250) * 2u32.pow(failures)).await;
                if let Err(e) = client.reconnect().await {
                    eprintln!("stackpulse: {e}; retrying");
                }
            }
        }
    }
}

/// Watches by running the tracker in this process.
pub async fn direct<W: Write>(
    client: aws_sdk_cloudformation::Client,
    config: TrackerConfig,
    view: &mut View<W>,
) -> WatchEnd {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let run = tokio::spawn(Tracker::new(client, config).run(tx));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => { view.tick(); continue; }
        };
        let Some(msg) = msg else { break };
        if let Some(end) = view.apply(&msg) {
            return end;
        }
    }
    match run.await {
        Ok(Outcome::Completed(d)) => {
            if d.success {
                WatchEnd::Succeeded
            } else {
                WatchEnd::Failed
            }
        }
        Ok(Outcome::StackNotFound { stack }) => {
            WatchEnd::Error(format!("stack {stack} does not exist"))
        }
        Ok(Outcome::Failed(m)) => WatchEnd::Error(m),
        Ok(Outcome::Stopped) | Err(_) => WatchEnd::Error("the tracker stopped".into()),
    }
}

/// `stackpulse watch` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Stack name.
    pub stack: String,
    #[command(flatten)]
    pub source: SourceArgs,
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

async fn watch_stack(stack: &str, source: &SourceArgs) -> WatchEnd {
    if let Err(e) = check_names(stack, source.region.as_deref()) {
        return e;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut view = View::new(std::io::stdout(), tty, stack);
    if source.direct {
        let sdk = crate::tracking::aws::load(&source.aws()).await;
        let client = crate::tracking::aws::cfn_client(&sdk, None);
        let config = TrackerConfig::new(stack).with_poll_interval_secs(source.poll_interval);
        direct(client, config, &mut view).await
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
        via_server(&url, source.token.as_deref(), &topic, stack, &mut view).await
    }
}

/// `stackpulse watch STACK`.
pub async fn watch(args: WatchArgs) -> ExitCode {
    watch_stack(&args.stack, &args.source).await.exit_code()
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
    watch_stack(&created.stack_name, &args.source)
        .await
        .exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackpulse_cfn::{ResourceUpdate, RootCause};

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

    #[test]
    fn plain_lines_without_a_terminal() {
        let mut out = Vec::new();
        let mut view = View::new(&mut out, false, "s");
        assert_eq!(view.apply(&update("CREATE_FAILED")), None);
        assert_eq!(view.apply(&failed()), Some(WatchEnd::Failed));
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
        for tty in [false, true] {
            let mut out = Vec::new();
            let mut view = View::new(&mut out, tty, "s");
            view.apply(&TrackerMessage::ResourceUpdate(u.clone()));
            view.apply(&TrackerMessage::DeploymentComplete(done.clone()));
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

    #[tokio::test]
    async fn redraws_in_place_on_a_terminal() {
        let mut out = Vec::new();
        let mut view = View::new(&mut out, true, "s");
        view.apply(&update("CREATE_IN_PROGRESS"));
        view.apply(&update("CREATE_FAILED"));
        view.apply(&failed());
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("\x1b[2F\x1b[J"), "{text:?}");
        assert!(text.contains(&format!("{RED}CREATE_FAILED")), "{text:?}");
        assert!(text.contains("Root cause"), "{text:?}");
    }
}
