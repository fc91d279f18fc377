//! A scripted CloudFormation endpoint: the tests' fake for what moto cannot show
//! over time, and the stacks `stackpulse serve --demo` plays.
//!
//! It speaks the AWS query protocol the SDK uses (form-encoded POST bodies with
//! `Action=...`, XML answers shaped like AWS's, `ErrorResponse` for errors) over plain
//! HTTP/1.1 on `127.0.0.1:0`, implemented on a bare `TcpListener` so a test can also
//! drop a connection without an answer (a reset).
//!
//! A stack is played over time by its [`Step`]s: every `DescribeStacks` call on a
//! script's root stack takes the next step, which reveals more events (of the root or
//! of its nested stacks), may change the status, and may queue faults (throttling,
//! dropped connections, 500s) for the next requests. So a test advances the
//! deployment exactly one step per tracker cycle, without sleeps. A driver that
//! holds [`FakeCfn::world`] may also play stacks by the clock instead (the demo):
//! push events with [`FakeStack::push_now`] and raise `visible`.
//!
//! Data flow: the SDK's request → `serve_connection` (HTTP/1.1 framing) →
//! `handle` (one locked look at the [`World`]) → an XML answer or a fault.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fault answered instead of the next request (whatever its action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `400 <Code>Throttling</Code><Message>Rate exceeded</Message>`.
    Throttle,
    /// The connection is closed without an answer.
    Reset,
    /// `500 InternalFailure`.
    Internal,
    /// `403 AccessDenied` naming a principal and account (which users must not see).
    AccessDenied,
    /// `403 ExpiredToken`: AWS refuses the credentials.
    ExpiredToken,
    /// `400` with this error code and a message naming an account.
    Code(&'static str),
    /// This HTTP status (a 5xx) with this error code (`ServiceUnavailableException`,
    /// `RequestTimeout`...): a service error whatever its code.
    Status(u16, &'static str),
}

/// One change set of a stack (`ListChangeSets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeChangeSet {
    pub name: String,
    /// `CREATE_PENDING`, `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, `FAILED`...
    pub status: String,
    /// `UNAVAILABLE`, `AVAILABLE`, `EXECUTE_IN_PROGRESS`, `EXECUTE_COMPLETE`...
    pub execution_status: String,
    pub status_reason: String,
}

/// One stack event of a script.
#[derive(Debug, Clone)]
pub struct FakeEvent {
    pub id: String,
    pub logical_id: String,
    pub physical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: String,
    pub timestamp: DateTime<Utc>,
    pub operation_id: Option<String>,
}

/// What one `DescribeStacks` call on the root moves forward.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// (stack name, number of further events made visible).
    pub reveal: Vec<(String, usize)>,
    pub status: Option<String>,
    pub status_reason: Option<String>,
    pub faults: Vec<Fault>,
    /// Replaces `LastOperations` (ids, type).
    pub operations: Option<Vec<(String, String)>>,
    /// Replaces the stack's change sets.
    pub change_sets: Option<Vec<FakeChangeSet>>,
    /// (stack name, number of events) revealed only at the second
    /// `DescribeStackEvents` call after this step: the events API lagging behind
    /// `DescribeStacks`.
    pub reveal_late: Vec<(String, usize)>,
}

#[derive(Debug, Clone)]
pub struct FakeStack {
    pub name: String,
    pub arn: String,
    /// Every event the stack will ever have, oldest first.
    pub events: Vec<FakeEvent>,
    /// How many of `events` are visible.
    pub visible: usize,
    pub status: String,
    pub status_reason: String,
    pub outputs: Vec<(String, String, String)>,
    pub operations: Vec<(String, String)>,
    /// `ListStackResources`: (logical id, type, status).
    pub resources: Vec<(String, String, String)>,
    /// Number of resources of the template (`GetTemplate` answers a YAML body with
    /// that many, `GetTemplateSummary` that many resource types).
    pub template_resources: usize,
    /// `false`: `GetTemplate` is refused (the tracker falls back to the summary).
    pub get_template: bool,
    pub created: DateTime<Utc>,
    pub last_updated: Option<DateTime<Utc>>,
    /// `DescribeStacks` calls answered "does not exist" before the stack appears.
    pub missing_for: usize,
    /// Steps taken by `DescribeStacks` calls on this stack.
    pub steps: VecDeque<Step>,
    /// `ListChangeSets` (a stack in `REVIEW_IN_PROGRESS` has at least one, unless
    /// it was deleted).
    pub change_sets: Vec<FakeChangeSet>,
}

impl FakeStack {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            arn: arn(name),
            events: Vec::new(),
            visible: 0,
            status: "CREATE_IN_PROGRESS".into(),
            status_reason: String::new(),
            outputs: Vec::new(),
            operations: Vec::new(),
            resources: Vec::new(),
            template_resources: 0,
            get_template: true,
            created: base_time(),
            last_updated: None,
            missing_for: 0,
            steps: VecDeque::new(),
            change_sets: Vec::new(),
        }
    }

    /// Appends an event of a resource (or of the stack itself when `logical` is the
    /// stack's name) at `sec` seconds after the base time.
    pub fn push(&mut self, logical: &str, status: &str, reason: &str, sec: i64) -> &mut FakeEvent {
        let is_stack = logical == self.name;
        let n = self.events.len();
        self.events.push(FakeEvent {
            id: format!("{}-ev-{n:05}", self.name),
            logical_id: logical.to_string(),
            physical_id: if is_stack {
                self.arn.clone()
            } else {
                format!("{}-{logical}-phys", self.name)
            },
            resource_type: if is_stack {
                STACK.to_string()
            } else {
                "AWS::S3::Bucket".to_string()
            },
            status: status.to_string(),
            reason: reason.to_string(),
            timestamp: base_time() + Duration::seconds(sec),
            operation_id: None,
        });
        let last = self.events.len() - 1;
        &mut self.events[last]
    }

    /// Appends a whole successful earlier operation (history for the estimates):
    /// the stack's `<ACTION>_IN_PROGRESS` at `start` seconds, each resource's
    /// `<ACTION>_IN_PROGRESS` one second later and its `<ACTION>_COMPLETE` `secs`
    /// after that, the stack's `<ACTION>_COMPLETE` one second after the last one.
    /// Returns the second of that last event.
    pub fn push_operation(&mut self, action: &str, start: i64, resources: &[(&str, i64)]) -> i64 {
        let name = self.name.clone();
        self.push(
            &name,
            &format!("{action}_IN_PROGRESS"),
            "User Initiated",
            start,
        );
        for (logical, _) in resources {
            self.push(logical, &format!("{action}_IN_PROGRESS"), "", start + 1);
        }
        let mut ends: Vec<(i64, &str)> =
            resources.iter().map(|(l, d)| (start + 1 + d, *l)).collect();
        ends.sort();
        for (t, logical) in &ends {
            self.push(logical, &format!("{action}_COMPLETE"), "", *t);
        }
        let end = ends.last().map_or(start, |(t, _)| *t) + 1;
        self.push(&name, &format!("{action}_COMPLETE"), "", end);
        end
    }

    /// Appends an event stamped now and makes every event visible (a driver
    /// playing the stack by the clock). `resource_type` is the resource's type;
    /// the stack's own events (`logical` = its name) are typed as stacks.
    pub fn push_now(
        &mut self,
        logical: &str,
        resource_type: &str,
        status: &str,
        reason: &str,
    ) -> &mut FakeEvent {
        let is_stack = logical == self.name;
        let n = self.events.len();
        self.events.push(FakeEvent {
            id: format!("{}-ev-{n:05}", self.name),
            logical_id: logical.to_string(),
            physical_id: if is_stack {
                self.arn.clone()
            } else {
                format!("{}-{logical}-phys", self.name)
            },
            resource_type: if is_stack {
                STACK.to_string()
            } else {
                resource_type.to_string()
            },
            status: status.to_string(),
            reason: reason.to_string(),
            timestamp: Utc::now(),
            operation_id: None,
        });
        self.visible = self.events.len();
        let last = self.events.len() - 1;
        &mut self.events[last]
    }
}

pub const STACK: &str = "AWS::CloudFormation::Stack";

pub fn arn(name: &str) -> String {
    format!("arn:aws:cloudformation:us-east-1:123456789012:stack/{name}/0000-{name}")
}

pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 10, 23, 10, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Everything the endpoint knows and did.
#[derive(Debug, Default)]
pub struct World {
    pub stacks: Vec<FakeStack>,
    pub faults: VecDeque<Fault>,
    /// Faults for the next request naming a stack (its `StackName` parameter), taken
    /// before `faults`: a test can fail one stack's call while other pollers run.
    pub stack_faults: Vec<(String, Fault)>,
    /// (action, StackName parameter) of every request received.
    pub requests: Vec<(String, String)>,
    pub page_size: usize,
    /// Lagging reveals: (stack name, events, `DescribeStackEvents` calls to go).
    pub late: Vec<(String, usize, usize)>,
    /// When each of `requests` arrived.
    pub request_times: Vec<std::time::Instant>,
    /// Throttle mode: a request arriving when more than this many arrived within the
    /// last second (itself included) is answered `Throttling`, as AWS does.
    pub max_rps: Option<usize>,
}

impl World {
    /// Steps of stack `name` not taken yet.
    pub fn steps_left(&self, name: &str) -> usize {
        self.stacks
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.steps.len())
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.stacks.iter().position(|s| {
            s.arn == id || (s.name == id && s.missing_for == 0 && s.status != "DELETE_COMPLETE")
        })
    }
}

/// The running endpoint; stops when dropped.
pub struct FakeCfn {
    pub endpoint: String,
    pub world: Arc<Mutex<World>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCfn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCfn {
    /// Starts on a free loopback port; panics if it cannot (tests).
    pub async fn start(stacks: Vec<FakeStack>) -> FakeCfn {
        match FakeCfn::bind(stacks).await {
            Ok(f) => f,
            Err(e) => panic!("cannot start the fake CloudFormation endpoint: {e}"),
        }
    }

    /// Starts on a free loopback port.
    pub async fn bind(stacks: Vec<FakeStack>) -> std::io::Result<FakeCfn> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let world = Arc::new(Mutex::new(World {
            stacks,
            page_size: 100,
            ..World::default()
        }));
        let w = world.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let w = w.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, w).await;
                });
            }
        });
        Ok(FakeCfn {
            endpoint: format!("http://{addr}"),
            world,
            task,
        })
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request_count(&self) -> usize {
        self.world().requests.len()
    }
}

/// Reads one HTTP/1.1 request from `sock` (headers, then `Content-Length` bytes
/// of body), keeping what follows it in `buf` for the next one; returns its body,
/// or `None` when the peer closed the connection.
pub async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    let header_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + len]).to_string();
    buf.drain(..header_end + len);
    Ok(Some(body))
}

async fn serve_connection(mut sock: TcpStream, world: Arc<Mutex<World>>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(body) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        let params = parse_form(&body);
        let answer = {
            let mut w = world.lock().unwrap_or_else(|p| p.into_inner());
            handle(&mut w, &params)
        };
        let Some((status, xml)) = answer else {
            // Reset: close without answering.
            return Ok(());
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Internal Server Error",
        };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nx-amzn-RequestId: fake\r\n\r\n{xml}",
            xml.len()
        );
        sock.write_all(resp.as_bytes()).await?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const NS: &str = "http://cloudformation.amazonaws.com/doc/2010-05-15/";

fn error(status: u16, kind: &str, code: &str, message: &str) -> Option<(u16, String)> {
    Some((
        status,
        format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>fake</RequestId></ErrorResponse>",
            esc(message)
        ),
    ))
}

fn ok(action: &str, result: &str) -> Option<(u16, String)> {
    Some((
        200,
        format!(
            "<{action}Response xmlns=\"{NS}\"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></{action}Response>"
        ),
    ))
}

fn not_found(id: &str) -> Option<(u16, String)> {
    error(
        400,
        "Sender",
        "ValidationError",
        &format!("Stack with id {id} does not exist"),
    )
}

/// Answers one request; `None` means "drop the connection".
fn handle(w: &mut World, p: &HashMap<String, String>) -> Option<(u16, String)> {
    let action = p.get("Action").cloned().unwrap_or_default();
    let stack = p.get("StackName").cloned().unwrap_or_default();
    w.requests.push((action.clone(), stack.clone()));
    let now = std::time::Instant::now();
    w.request_times.push(now);
    if let Some(max) = w.max_rps {
        let window_start = now.checked_sub(std::time::Duration::from_secs(1));
        let recent = w
            .request_times
            .iter()
            .rev()
            .take_while(|t| window_start.is_none_or(|s| **t > s))
            .count();
        if recent > max {
            return error(400, "Sender", "Throttling", "Rate exceeded");
        }
    }
    let stack_fault = w
        .stack_faults
        .iter()
        .position(|(name, _)| *name == stack)
        .map(|i| w.stack_faults.remove(i).1);
    if let Some(f) = stack_fault.or_else(|| w.faults.pop_front()) {
        return match f {
            Fault::Throttle => error(400, "Sender", "Throttling", "Rate exceeded"),
            Fault::Reset => None,
            Fault::Internal => error(500, "Receiver", "InternalFailure", "We encountered an internal error"),
            Fault::AccessDenied => error(
                403,
                "Sender",
                "AccessDenied",
                "User: arn:aws:iam::123456789012:user/t is not authorized to perform: cloudformation:DescribeStacks",
            ),
            Fault::ExpiredToken => error(
                403,
                "Sender",
                "ExpiredToken",
                "The security token included in the request is expired (account 123456789012)",
            ),
            Fault::Code(code) => error(
                400,
                "Sender",
                code,
                "arn:aws:iam::123456789012:user/t cannot do that",
            ),
            Fault::Status(status, code) => {
                error(status, "Receiver", code, "The service is not available")
            }
        };
    }
    match action.as_str() {
        "DescribeStacks" => {
            // A stack that does not exist yet answers "does not exist" a few times.
            if let Some(s) = w
                .stacks
                .iter_mut()
                .find(|s| s.name == stack && s.missing_for > 0)
            {
                s.missing_for -= 1;
                return not_found(&stack);
            }
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            if let Some(step) = w.stacks[i].steps.pop_front() {
                apply_step(w, i, step);
            }
            let s = &w.stacks[i];
            let mut x = String::new();
            let _ = write!(
                x,
                "<Stacks><member><StackId>{}</StackId><StackName>{}</StackName><CreationTime>{}</CreationTime>",
                esc(&s.arn),
                esc(&s.name),
                ts(&s.created)
            );
            if let Some(t) = &s.last_updated {
                let _ = write!(x, "<LastUpdatedTime>{}</LastUpdatedTime>", ts(t));
            }
            let _ = write!(x, "<StackStatus>{}</StackStatus>", esc(&s.status));
            if !s.status_reason.is_empty() {
                let _ = write!(
                    x,
                    "<StackStatusReason>{}</StackStatusReason>",
                    esc(&s.status_reason)
                );
            }
            x.push_str("<Outputs>");
            for (k, v, d) in &s.outputs {
                let _ = write!(
                    x,
                    "<member><OutputKey>{}</OutputKey><OutputValue>{}</OutputValue><Description>{}</Description></member>",
                    esc(k),
                    esc(v),
                    esc(d)
                );
            }
            x.push_str("</Outputs>");
            if !s.operations.is_empty() {
                x.push_str("<LastOperations>");
                for (id, kind) in &s.operations {
                    let _ = write!(
                        x,
                        "<member><OperationType>{}</OperationType><OperationId>{}</OperationId></member>",
                        esc(kind),
                        esc(id)
                    );
                }
                x.push_str("</LastOperations>");
            }
            x.push_str("</member></Stacks>");
            ok("DescribeStacks", &x)
        }
        "DescribeStackEvents" => {
            reveal_lagging(w);
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            let page = w.page_size.max(1);
            let s = &w.stacks[i];
            // The token is the index (oldest first) of the newest event of the page:
            // stable while new events arrive, like AWS's.
            let start: Option<usize> = match p.get("NextToken") {
                Some(t) => t.strip_prefix("idx-").and_then(|n| n.parse().ok()),
                None => s.visible.checked_sub(1),
            };
            let mut x = String::from("<StackEvents>");
            let mut next = None;
            if let Some(start) = start {
                let end = start.saturating_sub(page - 1);
                for idx in (end..=start).rev() {
                    let e = &s.events[idx];
                    let _ = write!(
                        x,
                        "<member><StackId>{}</StackId><EventId>{}</EventId><StackName>{}</StackName>",
                        esc(&s.arn),
                        esc(&e.id),
                        esc(&s.name)
                    );
                    if let Some(op) = &e.operation_id {
                        let _ = write!(x, "<OperationId>{}</OperationId>", esc(op));
                    }
                    let _ = write!(
                        x,
                        "<LogicalResourceId>{}</LogicalResourceId><PhysicalResourceId>{}</PhysicalResourceId><ResourceType>{}</ResourceType><Timestamp>{}</Timestamp><ResourceStatus>{}</ResourceStatus>",
                        esc(&e.logical_id),
                        esc(&e.physical_id),
                        esc(&e.resource_type),
                        ts(&e.timestamp),
                        esc(&e.status)
                    );
                    if !e.reason.is_empty() {
                        let _ = write!(
                            x,
                            "<ResourceStatusReason>{}</ResourceStatusReason>",
                            esc(&e.reason)
                        );
                    }
                    x.push_str("</member>");
                }
                if end > 0 {
                    next = Some(end - 1);
                }
            }
            x.push_str("</StackEvents>");
            if let Some(n) = next {
                let _ = write!(x, "<NextToken>idx-{n}</NextToken>");
            }
            ok("DescribeStackEvents", &x)
        }
        "ListStackResources" => {
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            let s = &w.stacks[i];
            let mut x = String::from("<StackResourceSummaries>");
            for (l, t, st) in &s.resources {
                let _ = write!(
                    x,
                    "<member><LogicalResourceId>{}</LogicalResourceId><PhysicalResourceId>{}-{}-phys</PhysicalResourceId><ResourceType>{}</ResourceType><LastUpdatedTimestamp>{}</LastUpdatedTimestamp><ResourceStatus>{}</ResourceStatus></member>",
                    esc(l),
                    esc(&s.name),
                    esc(l),
                    esc(t),
                    ts(&s.created),
                    esc(st)
                );
            }
            x.push_str("</StackResourceSummaries>");
            ok("ListStackResources", &x)
        }
        "GetTemplate" => {
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            let s = &w.stacks[i];
            if !s.get_template {
                return error(
                    403,
                    "Sender",
                    "AccessDenied",
                    "not authorized to perform: cloudformation:GetTemplate",
                );
            }
            let mut body = String::from("AWSTemplateFormatVersion: '2010-09-09'\nResources:\n");
            for n in 0..s.template_resources {
                let _ = write!(body, "  R{n:03}:\n    Type: AWS::S3::Bucket\n    Properties:\n      Tags:\n        - Key: k\n          Value: v\n");
            }
            body.push_str("Outputs:\n  Out:\n    Value: x\n");
            ok(
                "GetTemplate",
                &format!("<TemplateBody>{}</TemplateBody><StagesAvailable><member>Original</member><member>Processed</member></StagesAvailable>", esc(&body)),
            )
        }
        "GetTemplateSummary" => {
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            let mut x = String::from("<ResourceTypes>");
            for _ in 0..w.stacks[i].template_resources {
                x.push_str("<member>AWS::S3::Bucket</member>");
            }
            x.push_str("</ResourceTypes><Parameters/>");
            ok("GetTemplateSummary", &x)
        }
        "ListChangeSets" => {
            let Some(i) = w.find(&stack) else {
                return not_found(&stack);
            };
            let s = &w.stacks[i];
            let mut x = String::from("<Summaries>");
            for c in &s.change_sets {
                let _ = write!(
                    x,
                    "<member><StackId>{}</StackId><StackName>{}</StackName><ChangeSetId>arn:aws:cloudformation:us-east-1:123456789012:changeSet/{}/0000</ChangeSetId><ChangeSetName>{}</ChangeSetName><Status>{}</Status><ExecutionStatus>{}</ExecutionStatus><CreationTime>{}</CreationTime>",
                    esc(&s.arn),
                    esc(&s.name),
                    esc(&c.name),
                    esc(&c.name),
                    esc(&c.status),
                    esc(&c.execution_status),
                    ts(&s.created)
                );
                if !c.status_reason.is_empty() {
                    let _ = write!(x, "<StatusReason>{}</StatusReason>", esc(&c.status_reason));
                }
                x.push_str("</member>");
            }
            x.push_str("</Summaries>");
            ok("ListChangeSets", &x)
        }
        other => error(
            400,
            "Sender",
            "InvalidAction",
            &format!("Could not find operation {other}"),
        ),
    }
}

/// Counts one `DescribeStackEvents` call down for every lagging reveal; reveals
/// those whose time came.
fn reveal_lagging(w: &mut World) {
    let mut due = Vec::new();
    w.late.retain_mut(|(name, n, calls)| {
        *calls = calls.saturating_sub(1);
        if *calls == 0 {
            due.push((name.clone(), *n));
        }
        *calls > 0
    });
    for (name, n) in due {
        if let Some(s) = w.stacks.iter_mut().find(|s| s.name == name) {
            s.visible = (s.visible + n).min(s.events.len());
        }
    }
}

fn apply_step(w: &mut World, root: usize, step: Step) {
    for (name, n) in &step.reveal {
        if let Some(s) = w.stacks.iter_mut().find(|s| &s.name == name) {
            s.visible = (s.visible + n).min(s.events.len());
        }
    }
    let s = &mut w.stacks[root];
    if let Some(st) = step.status {
        s.status = st;
    }
    if let Some(r) = step.status_reason {
        s.status_reason = r;
    }
    if let Some(ops) = step.operations {
        s.operations = ops;
    }
    if let Some(c) = step.change_sets {
        s.change_sets = c;
    }
    w.late
        .extend(step.reveal_late.into_iter().map(|(name, n)| (name, n, 2)));
    w.faults.extend(step.faults);
}

/// Scripted deployments shared by the tracker's tests and the server's end-to-end
/// tests (one vocabulary): each returns the stacks to give [`FakeCfn::start`]. The
/// operation being tracked starts at 100 s after [`base_time`]; what comes before
/// is history.
pub mod scenarios {
    use super::{arn, base_time, FakeChangeSet, FakeEvent, FakeStack, Step, STACK};

    /// Events of `s` from the tracked operation on (at or after 100 s).
    pub fn operation_ids(s: &FakeStack) -> Vec<String> {
        let start = base_time() + chrono::Duration::seconds(100);
        s.events
            .iter()
            .filter(|e| e.timestamp >= start)
            .map(|e| e.id.clone())
            .collect()
    }

    /// Events of `s` before the tracked operation (its history).
    pub fn history_ids(s: &FakeStack) -> Vec<String> {
        let start = base_time() + chrono::Duration::seconds(100);
        s.events
            .iter()
            .filter(|e| e.timestamp < start)
            .map(|e| e.id.clone())
            .collect()
    }

    fn nested(e: &mut FakeEvent, phys: &str) {
        e.resource_type = STACK.into();
        e.physical_id = phys.into();
    }

    fn reveal(stack: &str, n: usize) -> (String, usize) {
        (stack.to_string(), n)
    }

    /// The name of [`nested_update_with_history`]'s nested stack.
    pub fn nested_child(parent: &str) -> String {
        format!("{parent}-Net-X")
    }

    /// An update of `parent`, whose nested stack `Net` (see [`nested_child`]) has
    /// history (both were created long ago). The child is found through the
    /// parent's `UPDATE_IN_PROGRESS` before its own start event is visible; it
    /// completes, then moves again on its own (the parent's failure of `Api` rolls
    /// back into it) before the parent shows anything about it. Both stacks have a
    /// `CDKMetadata` (the child's physical id differs). Ends
    /// `UPDATE_ROLLBACK_COMPLETE` after 12 s; root cause: `Api` "Api quota exceeded".
    pub fn nested_update_with_history(parent: &str) -> Vec<FakeStack> {
        let child = nested_child(parent);
        let child_arn = arn(&child);
        let mut p = FakeStack::new(parent);
        let mut ch = FakeStack::new(&child);
        p.push(parent, "CREATE_IN_PROGRESS", "User Initiated", 0);
        nested(p.push("Net", "CREATE_IN_PROGRESS", "", 1), "");
        nested(
            p.push(
                "Net",
                "CREATE_IN_PROGRESS",
                "Resource creation Initiated",
                1,
            ),
            &child_arn,
        );
        p.push("Api", "CREATE_IN_PROGRESS", "", 1);
        p.push("Api", "CREATE_COMPLETE", "", 2);
        nested(p.push("Net", "CREATE_COMPLETE", "", 5), &child_arn);
        p.push(parent, "CREATE_COMPLETE", "", 6);
        p.push(parent, "UPDATE_IN_PROGRESS", "User Initiated", 100);
        nested(p.push("Net", "UPDATE_IN_PROGRESS", "", 101), &child_arn);
        p.push("Api", "UPDATE_IN_PROGRESS", "", 101);
        p.push("CDKMetadata", "UPDATE_COMPLETE", "", 102);
        nested(p.push("Net", "UPDATE_COMPLETE", "", 106), &child_arn);
        p.push("Api", "UPDATE_FAILED", "Api quota exceeded", 107);
        p.push(
            parent,
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to update: [Api].",
            107,
        );
        p.push("Api", "UPDATE_COMPLETE", "", 108);
        nested(p.push("Net", "UPDATE_COMPLETE", "", 111), &child_arn);
        p.push(
            parent,
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "",
            112,
        );
        p.push(parent, "UPDATE_ROLLBACK_COMPLETE", "", 112);

        ch.push(&child, "CREATE_IN_PROGRESS", "User Initiated", 1);
        ch.push("Sub", "CREATE_IN_PROGRESS", "", 2);
        ch.push("Sub", "CREATE_COMPLETE", "", 3);
        ch.push(&child, "CREATE_COMPLETE", "", 4);
        ch.push(&child, "UPDATE_IN_PROGRESS", "", 102);
        ch.push("Sub", "UPDATE_IN_PROGRESS", "", 103);
        ch.push("CDKMetadata", "UPDATE_COMPLETE", "", 103);
        ch.push("Sub", "UPDATE_COMPLETE", "", 104);
        ch.push(&child, "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "", 105);
        ch.push(&child, "UPDATE_COMPLETE", "", 105);
        ch.push(&child, "UPDATE_ROLLBACK_IN_PROGRESS", "", 108);
        ch.push("Sub", "UPDATE_IN_PROGRESS", "", 109);
        ch.push("Sub", "UPDATE_COMPLETE", "", 110);
        ch.push(
            &child,
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "",
            110,
        );
        ch.push(&child, "UPDATE_ROLLBACK_COMPLETE", "", 110);

        p.status = "UPDATE_IN_PROGRESS".into();
        p.last_updated = Some(base_time() + chrono::Duration::seconds(100));
        p.template_resources = 3;
        p.visible = 8;
        ch.visible = 4;
        ch.status = "CREATE_COMPLETE".into();
        p.steps = vec![
            Step::default(),
            // The parent's event about Net; the child's own start is not visible.
            Step {
                reveal: vec![reveal(parent, 3)],
                ..Step::default()
            },
            Step::default(),
            Step {
                reveal: vec![reveal(&child, 6), reveal(parent, 1)],
                ..Step::default()
            },
            // The child moves again before the parent shows anything about it.
            Step {
                reveal: vec![reveal(parent, 2), reveal(&child, 1)],
                status: Some("UPDATE_ROLLBACK_IN_PROGRESS".into()),
                ..Step::default()
            },
            Step::default(),
            Step {
                reveal: vec![reveal(&child, 4), reveal(parent, 1)],
                ..Step::default()
            },
            Step {
                reveal: vec![reveal(parent, 3)],
                status: Some("UPDATE_ROLLBACK_COMPLETE".into()),
                ..Step::default()
            },
        ]
        .into();
        vec![p, ch]
    }

    /// An update of `name` that replaces `Bucket` (old physical id `old-bucket`,
    /// new `<name>-Bucket-phys`) and removes `Legacy`, whose deletion fails during
    /// the cleanup (skipped: the update succeeds).
    pub fn replacement(name: &str) -> Vec<FakeStack> {
        let mut s = FakeStack::new(name);
        s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
        s.push("Bucket", "CREATE_IN_PROGRESS", "", 1).physical_id = "old-bucket".into();
        s.push("Bucket", "CREATE_COMPLETE", "", 2).physical_id = "old-bucket".into();
        s.push("Legacy", "CREATE_COMPLETE", "", 2);
        s.push(name, "CREATE_COMPLETE", "", 3);
        s.push(name, "UPDATE_IN_PROGRESS", "User Initiated", 100);
        s.push(
            "Bucket",
            "UPDATE_IN_PROGRESS",
            "Requested update requires the creation of a new physical resource; hence creating one.",
            101,
        );
        s.push("Bucket", "UPDATE_COMPLETE", "", 102);
        s.push(name, "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "", 103);
        s.push("Bucket", "DELETE_IN_PROGRESS", "", 104).physical_id = "old-bucket".into();
        s.push("Bucket", "DELETE_COMPLETE", "", 105).physical_id = "old-bucket".into();
        s.push("Legacy", "DELETE_FAILED", "Resource is in use", 105);
        s.push(name, "UPDATE_COMPLETE", "", 106);
        s.status = "UPDATE_IN_PROGRESS".into();
        s.last_updated = Some(base_time() + chrono::Duration::seconds(100));
        s.template_resources = 1;
        s.resources = vec![(
            "Bucket".into(),
            "AWS::S3::Bucket".into(),
            "UPDATE_COMPLETE".into(),
        )];
        s.visible = 6;
        s.steps = vec![
            Step::default(),
            Step {
                reveal: vec![reveal(name, 3)],
                status: Some("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS".into()),
                ..Step::default()
            },
            Step {
                reveal: vec![reveal(name, 3)],
                ..Step::default()
            },
            Step {
                reveal: vec![reveal(name, 1)],
                status: Some("UPDATE_COMPLETE".into()),
                ..Step::default()
            },
        ]
        .into();
        vec![s]
    }

    /// A stack `name` created through change set `deploy-1`, which fails at the
    /// third `DescribeStacks`: it stays in `REVIEW_IN_PROGRESS` for good.
    pub fn failed_change_set(name: &str) -> Vec<FakeStack> {
        let mut s = FakeStack::new(name);
        s.push(name, "REVIEW_IN_PROGRESS", "User Initiated", 100);
        s.status = "REVIEW_IN_PROGRESS".into();
        s.visible = 1;
        let set = |status: &str, reason: &str| FakeChangeSet {
            name: "deploy-1".into(),
            status: status.into(),
            execution_status: "UNAVAILABLE".into(),
            status_reason: reason.into(),
        };
        s.change_sets = vec![set("CREATE_IN_PROGRESS", "")];
        s.steps = vec![
            Step::default(),
            Step::default(),
            Step {
                change_sets: Some(vec![set(
                    "FAILED",
                    "Template format error: Unresolved resource dependencies [Vpc]",
                )]),
                ..Step::default()
            },
        ]
        .into();
        vec![s]
    }
}
