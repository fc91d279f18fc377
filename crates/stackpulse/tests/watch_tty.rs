//! `stackpulse watch` as a person (or a CI log) sees it: the real binary with
//! `--direct`, against the scripted CloudFormation endpoint.
//!
//! - Under a pseudo-terminal (`portable-pty`, 100×30), its output fed to a terminal
//!   emulator (`vt100`): a 250-resource stack shows one progress line and only
//!   in-progress and failed rows, never more lines than the screen (nothing scrolls
//!   off), then the summary; `--chart` writes the timeline.
//! - Piped: one line per event, and a heartbeat line while nothing happens.
//! - `--next`: waits while the stack is complete, then watches the new operation.
//!
//! The scripted stacks stop in the middle of their operation (their steps run
//! out); the test looks at the screen, then adds the steps that finish them.

mod cfn_support;
mod common;

use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use cfn_support::fake_cfn::{FakeCfn, FakeStack, Fault, Step};
use cfn_support::AWS_ENV;
use chrono::{DateTime, Utc};
use portable_pty::{CommandBuilder, PtySize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Upper bound for anything awaited; generous for a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);
const ROWS: u16 = 30;
const COLS: u16 = 100;

/// Pushes an event `sec` seconds after `start` (scripts stamped near now, so
/// elapsed times and ETAs look like a real run's).
fn at(
    s: &mut FakeStack,
    start: DateTime<Utc>,
    logical: &str,
    status: &str,
    reason: &str,
    sec: i64,
) {
    s.push(logical, status, reason, 0).timestamp = start + chrono::Duration::seconds(sec);
}

/// 250 buckets: 200 created, R200 failed, 49 in progress (where the script
/// stops); then the rest is cancelled and everything rolled back.
fn big_stack(name: &str) -> (FakeStack, usize) {
    let start = Utc::now() - chrono::Duration::seconds(120);
    let mut s = FakeStack::new(name);
    at(
        &mut s,
        start,
        name,
        "CREATE_IN_PROGRESS",
        "User Initiated",
        0,
    );
    for i in 0..250 {
        at(
            &mut s,
            start,
            &format!("R{i:03}"),
            "CREATE_IN_PROGRESS",
            "",
            1,
        );
    }
    for i in 0..200 {
        at(
            &mut s,
            start,
            &format!("R{i:03}"),
            "CREATE_COMPLETE",
            "",
            2 + i / 4,
        );
    }
    at(
        &mut s,
        start,
        "R200",
        "CREATE_FAILED",
        "Bucket name taken",
        60,
    );
    let held = s.events.len();
    for i in 201..250 {
        at(
            &mut s,
            start,
            &format!("R{i:03}"),
            "CREATE_FAILED",
            "Resource creation cancelled",
            61,
        );
    }
    at(
        &mut s,
        start,
        name,
        "ROLLBACK_IN_PROGRESS",
        "The following resource(s) failed to create: [R200].",
        61,
    );
    for i in 0..250 {
        at(
            &mut s,
            start,
            &format!("R{i:03}"),
            "DELETE_COMPLETE",
            "",
            62,
        );
    }
    at(&mut s, start, name, "ROLLBACK_COMPLETE", "", 63);
    s.template_resources = 250;
    s.visible = 1;
    s.steps = vec![Step {
        reveal: vec![(name.to_string(), held - 1)],
        ..Step::default()
    }]
    .into();
    let rest = s.events.len() - held;
    (s, rest)
}

/// The finishing step of a stack held by its script.
fn finish(fake: &FakeCfn, name: &str, reveal: usize, status: &str) {
    let mut w = fake.world();
    if let Some(s) = w.stacks.iter_mut().find(|s| s.name == name) {
        s.steps.push_back(Step {
            reveal: vec![(name.to_string(), reveal)],
            status: Some(status.into()),
            ..Step::default()
        });
    }
}

fn describe_calls(fake: &FakeCfn, name: &str) -> usize {
    fake.world()
        .requests
        .iter()
        .filter(|(a, s)| a == "DescribeStacks" && s == name)
        .count()
}

/// `stackpulse watch` under a pseudo-terminal, read through a terminal emulator.
struct Screen {
    parser: vt100::Parser,
    bytes: mpsc::Receiver<Vec<u8>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Screen {
    fn spawn(args: &[&str]) -> Screen {
        let pty = portable_pty::native_pty_system();
        let pair = pty
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_stackpulse"));
        cmd.args(args);
        for (k, v) in AWS_ENV {
            cmd.env(k, v);
        }
        cmd.env("TERM", "xterm-256color");
        for k in [
            "STACKPULSE_SERVER",
            "STACKPULSE_AWS_ENDPOINT_URL",
            "STACKPULSE_WATCH_HEARTBEAT",
            "NO_COLOR",
        ] {
            cmd.env_remove(k);
        }
        let child = pair.slave.spawn_command(cmd).expect("spawn stackpulse");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let (tx, bytes) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EOF (or EIO on Linux) once the child has exited.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen {
            parser: vt100::Parser::new(ROWS, COLS, 10_000),
            bytes,
            child,
            _master: pair.master,
        }
    }

    /// The screen's rows, one line each (indicatif fills a line to the right
    /// edge instead of ending it, so `contents()` would join wrapped rows).
    fn text(&self) -> String {
        let rows: Vec<String> = self.parser.screen().rows(0, COLS).collect();
        rows.join("\n").trim_end().to_owned()
    }

    /// Feeds output to the emulator until `done(screen text)` holds.
    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + LIMIT;
        while !done(&self.text()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.bytes.recv_timeout(left) {
                Ok(b) => self.parser.process(&b),
                Err(_) => panic!("timed out waiting for {what}; screen:\n{}", self.text()),
            }
        }
    }

    /// Rows that scrolled off the top of the screen.
    fn scrolled_off(&mut self) -> usize {
        self.parser.screen_mut().set_scrollback(usize::MAX);
        let n = self.parser.screen().scrollback();
        self.parser.screen_mut().set_scrollback(0);
        n
    }

    /// Waits for the exit, draining the rest of the output; the exit code.
    fn exit_code(&mut self) -> u32 {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(b) = self.bytes.recv_timeout(Duration::from_millis(200)) {
                    self.parser.process(&b);
                }
                return status.exit_code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "watch did not exit:\n{}",
                self.text()
            );
            if let Ok(b) = self.bytes.recv_timeout(Duration::from_millis(50)) {
                self.parser.process(&b);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_250_resource_stack_fits_the_terminal() {
    let (stack, rest) = big_stack("big");
    let fake = FakeCfn::start(vec![stack]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = dir.path().join("big.svg");
    let chart_arg = chart.to_string_lossy().into_owned();
    let mut screen = Screen::spawn(&[
        "watch",
        "big",
        "--direct",
        "--aws-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "--poll-interval",
        "0.05",
        "--chart",
        &chart_arg,
    ]);

    // Held in the middle: 200 created, 1 failed, 49 in progress.
    screen.wait_for("the progress line at 200/250", |t| {
        t.contains("200/250 (80%)") && t.contains("49 in progress") && t.contains("and 24 more")
    });
    let text = screen.text();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("big CREATE_IN_PROGRESS"))
        .unwrap_or_else(|| panic!("no progress line:\n{text}"));
    assert!(lines[header].contains("200/250 (80%)"), "{text}");
    let stats = lines[header + 1];
    assert!(
        stats.starts_with("  49 in progress · 1 failed · elapsed 2m"),
        "{text}"
    );
    assert!(stats.contains(" · ETA ~"), "{text}");
    // The failure was printed once above the live view, with its reason.
    assert!(
        lines[..header]
            .iter()
            .any(|l| l.contains("✗ R200 CREATE_FAILED Bucket name taken")),
        "{text}"
    );
    let rows: Vec<&str> = lines[header + 2..]
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        rows[0].trim_start().starts_with("R200") && rows[0].contains("CREATE_FAILED"),
        "failed first:\n{text}"
    );
    let (last, resource_rows) = rows.split_last().expect("rows");
    assert_eq!(last.trim(), "… and 24 more (24 in progress)", "{text}");
    assert_eq!(resource_rows.len(), 26, "{text}");
    assert!(
        resource_rows[1..]
            .iter()
            .all(|r| r.contains("CREATE_IN_PROGRESS")),
        "only in-progress rows after the failed one:\n{text}"
    );
    assert!(
        !text.contains("CREATE_COMPLETE"),
        "no completed rows:\n{text}"
    );
    assert!(
        2 + rows.len() < usize::from(ROWS),
        "the view fits the screen:\n{text}"
    );
    assert_eq!(
        screen.scrolled_off(),
        0,
        "redrawn in place, nothing scrolled off"
    );

    // The rest: cancelled, rolled back.
    finish(&fake, "big", rest, "ROLLBACK_COMPLETE");
    assert_eq!(screen.exit_code(), 1, "{}", screen.text());
    let text = screen.text();
    assert!(
        text.contains("Stack big ROLLBACK_COMPLETE failed in 63 s"),
        "{text}"
    );
    assert!(
        text.contains("Root cause: R200 (AWS::S3::Bucket) CREATE_FAILED: Bucket name taken"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Chart written to {chart_arg}")),
        "{text}"
    );
    assert!(
        !text.contains("in progress ·"),
        "the live view is gone:\n{text}"
    );
    let off = screen.scrolled_off();
    assert!(
        off < 5,
        "the summary, not the rows, went to the scrollback ({off} rows):\n{text}"
    );
    let svg = std::fs::read_to_string(&chart).expect("chart");
    let doc = roxmltree::Document::parse(&svg).expect("chart is XML");
    let bars = doc
        .descendants()
        .filter(|n| {
            n.has_tag_name("rect") && n.attribute("class").is_some_and(|c| c.starts_with("bar"))
        })
        .count();
    assert_eq!(bars, 250);
}

/// `stackpulse watch` with stdout piped; its stdout lines as they come.
struct Piped {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Piped {
    fn spawn(args: &[&str]) -> Piped {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(args)
            .envs(AWS_ENV.iter().copied())
            .env_remove("STACKPULSE_SERVER")
            .env_remove("STACKPULSE_AWS_ENDPOINT_URL")
            .env_remove("STACKPULSE_WATCH_HEARTBEAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn stackpulse");
        let stdout = child.stdout.take().expect("stdout");
        Piped {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until `done(line)`; that line.
    async fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(LIMIT, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", self.seen))
                .expect("read")
                .unwrap_or_else(|| panic!("exited before {what}: {:#?}", self.seen));
            self.seen.push(line.clone());
            if done(&line) {
                return line;
            }
        }
    }

    /// Reads to the end; the exit code.
    async fn exit_code(&mut self) -> i32 {
        while let Ok(Ok(Some(line))) = tokio::time::timeout(LIMIT, self.lines.next_line()).await {
            self.seen.push(line);
        }
        let status = tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("exit timed out")
            .expect("wait");
        status.code().unwrap_or(-1)
    }
}

/// A line of the plain log for `logical` with `status`.
fn is_event(line: &str, logical: &str, status: &str) -> bool {
    let mut words = line.split_whitespace().skip(1);
    words.next() == Some(logical) && words.next() == Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_one_line_per_event_and_a_heartbeat() {
    let start = Utc::now() - chrono::Duration::seconds(5);
    let mut s = FakeStack::new("quiet");
    at(
        &mut s,
        start,
        "quiet",
        "CREATE_IN_PROGRESS",
        "User Initiated",
        0,
    );
    at(&mut s, start, "Queue", "CREATE_IN_PROGRESS", "", 1);
    at(&mut s, start, "Table", "CREATE_IN_PROGRESS", "", 1);
    at(&mut s, start, "Queue", "CREATE_COMPLETE", "", 2);
    at(&mut s, start, "Table", "CREATE_COMPLETE", "", 30);
    at(&mut s, start, "quiet", "CREATE_COMPLETE", "", 31);
    s.template_resources = 2;
    s.visible = 4;
    let fake = FakeCfn::start(vec![s]).await;
    let mut watch = Piped::spawn(&[
        "watch",
        "quiet",
        "--direct",
        "--aws-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "--poll-interval",
        "0.05",
        "--heartbeat",
        "0.3",
    ]);
    // Table stays in progress: heartbeats name it.
    for _ in 0..2 {
        let beat = watch
            .until("a heartbeat", |l| l.starts_with("still waiting"))
            .await;
        assert!(beat.starts_with("still waiting on Table ("), "{beat}");
        assert!(beat.ends_with("s)"), "{beat}");
    }
    finish(&fake, "quiet", 2, "CREATE_COMPLETE");
    assert_eq!(watch.exit_code().await, 0, "{:#?}", watch.seen);
    let seen = &watch.seen;
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "no escape codes: {seen:#?}"
    );
    let events: Vec<&String> = seen
        .iter()
        .filter(|l| {
            !l.starts_with("still waiting") && !l.starts_with("Stack ") && !l.starts_with("  ")
        })
        .collect();
    assert_eq!(events.len(), 6, "one line per event: {seen:#?}");
    for (logical, status) in [
        ("quiet", "CREATE_IN_PROGRESS"),
        ("Queue", "CREATE_IN_PROGRESS"),
        ("Table", "CREATE_IN_PROGRESS"),
        ("Queue", "CREATE_COMPLETE"),
        ("Table", "CREATE_COMPLETE"),
        ("quiet", "CREATE_COMPLETE"),
    ] {
        assert_eq!(
            events
                .iter()
                .filter(|l| is_event(l, logical, status))
                .count(),
            1,
            "{logical} {status} once: {seen:#?}"
        );
    }
    // The heartbeats came while Table was in progress, not after it finished.
    let table_done = seen
        .iter()
        .position(|l| is_event(l, "Table", "CREATE_COMPLETE"));
    let last_beat = seen.iter().rposition(|l| l.starts_with("still waiting"));
    assert!(last_beat < table_done, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("Stack quiet CREATE_COMPLETE succeeded")),
        "{seen:#?}"
    );
}

/// A created stack: its creation done long ago, nothing running.
fn created_stack(name: &str) -> FakeStack {
    let start = Utc::now() - chrono::Duration::seconds(600);
    let mut s = FakeStack::new(name);
    at(
        &mut s,
        start,
        name,
        "CREATE_IN_PROGRESS",
        "User Initiated",
        0,
    );
    at(&mut s, start, "Bucket", "CREATE_IN_PROGRESS", "", 1);
    at(&mut s, start, "Bucket", "CREATE_COMPLETE", "", 2);
    at(&mut s, start, name, "CREATE_COMPLETE", "", 3);
    s.visible = s.events.len();
    s.status = "CREATE_COMPLETE".into();
    s.template_resources = 1;
    s.resources = vec![(
        "Bucket".into(),
        "AWS::S3::Bucket".into(),
        "CREATE_COMPLETE".into(),
    )];
    s
}

/// An update of `name` begins now: its first two events are visible, the rest
/// (and `UPDATE_COMPLETE`) come on the third `DescribeStacks` after this.
fn begin_update(fake: &FakeCfn, name: &str) {
    begin_update_at(fake, name, Utc::now());
}

/// [`begin_update`] with the update's events dated from `updated`.
fn begin_update_at(fake: &FakeCfn, name: &str, updated: DateTime<Utc>) {
    let mut w = fake.world();
    let Some(s) = w.stacks.iter_mut().find(|s| s.name == name) else {
        panic!("no stack {name}");
    };
    for (logical, status, sec) in [
        (name, "UPDATE_IN_PROGRESS", 0),
        ("Bucket", "UPDATE_IN_PROGRESS", 1),
        ("Bucket", "UPDATE_COMPLETE", 2),
        (name, "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", 3),
        (name, "UPDATE_COMPLETE", 3),
    ] {
        let reason = if sec == 0 { "User Initiated" } else { "" };
        at(s, updated, logical, status, reason, sec);
    }
    s.visible += 2;
    s.status = "UPDATE_IN_PROGRESS".into();
    s.last_updated = Some(updated);
    s.steps = vec![
        Step::default(),
        Step::default(),
        Step {
            reveal: vec![(name.to_string(), 3)],
            status: Some("UPDATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
}

/// `--next` waited for an update and showed it, and nothing of the creation.
async fn shows_only_the_update(watch: &mut Piped, name: &str) {
    assert_eq!(watch.exit_code().await, 0, "{:#?}", watch.seen);
    let seen = &watch.seen;
    assert!(
        seen.iter()
            .any(|l| is_event(l, "Bucket", "UPDATE_IN_PROGRESS")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| is_event(l, "Bucket", "UPDATE_COMPLETE")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("CREATE_")),
        "nothing of the creation: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("Stack {name} UPDATE_COMPLETE succeeded"))),
        "{seen:#?}"
    );
}

/// Reads the waiting line and a heartbeat: `watch --next` is waiting.
async fn is_waiting(watch: &mut Piped, name: &str) {
    let first = watch.until("the waiting line", |_| true).await;
    assert_eq!(first, format!("waiting for the next operation of {name}"));
    let beat = watch
        .until("a heartbeat", |l| l.starts_with("still waiting"))
        .await;
    assert!(
        beat.starts_with(&format!("still waiting for the next operation of {name} (")),
        "{beat}"
    );
    assert!(
        watch.child.try_wait().expect("try_wait").is_none(),
        "still waiting: {:#?}",
        watch.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_waits_for_the_next_operation() {
    let fake = FakeCfn::start(vec![created_stack("nx")]).await;
    let mut watch = Piped::spawn(&[
        "watch",
        "nx",
        "--next",
        "--direct",
        "--aws-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "--poll-interval",
        "0.05",
        "--heartbeat",
        "0.3",
    ]);
    is_waiting(&mut watch, "nx").await;
    let polled = describe_calls(&fake, "nx");
    assert!(
        polled >= 2,
        "it polls while waiting: {polled} DescribeStacks calls"
    );
    begin_update(&fake, "nx");
    shows_only_the_update(&mut watch, "nx").await;
}

/// A server tracking the stacks of `fake` (polling every 0.05 s); returns it (kept
/// for the test's life) and its URL for `watch --server`.
async fn tracking_server(fake: &FakeCfn) -> (common::Server, String) {
    let server = common::Server::spawn(
        &[
            "--aws-endpoint-url",
            &fake.endpoint,
            "--aws-region",
            "us-east-1",
            "--poll-interval",
            "0.05",
        ],
        AWS_ENV,
    )
    .await;
    let url = format!("http://{}", server.addr);
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_through_a_server_skips_the_last_operation() {
    let fake = FakeCfn::start(vec![created_stack("srv")]).await;
    let (server, url) = tracking_server(&fake).await;
    let mut watch = Piped::spawn(&[
        "watch",
        "srv",
        "--next",
        "--server",
        &url,
        "--heartbeat",
        "0.3",
    ]);
    is_waiting(&mut watch, "srv").await;
    // The server tracked the creation (and told it); `watch` kept it to itself.
    let mut c = server.connect().await;
    c.subscribe("stack:srv", Some(0), None)
        .await
        .expect("subscribe");
    loop {
        match common::next(&mut c).await {
            stackpulse::client::Frame::Event(e) if e.event_type == "stack.deployed" => break,
            stackpulse::client::Frame::Closed(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert!(
        !watch.seen.iter().any(|l| l.contains("CREATE_")),
        "{:#?}",
        watch.seen
    );
    begin_update(&fake, "srv");
    shows_only_the_update(&mut watch, "srv").await;
}

/// `watch --next --direct` for `name` on `fake`.
fn watch_next_direct(fake: &FakeCfn, name: &str) -> Piped {
    Piped::spawn(&[
        "watch",
        name,
        "--next",
        "--direct",
        "--aws-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "--poll-interval",
        "0.05",
        "--heartbeat",
        "0.3",
    ])
}

/// Waits until `done` holds for the stack `name` of `fake` (its state changes
/// on the DescribeStacks calls `watch` makes; there is nothing to await).
async fn until_stack(fake: &FakeCfn, name: &str, what: &str, done: impl Fn(&FakeStack) -> bool) {
    let give_up = tokio::time::Instant::now() + LIMIT;
    loop {
        if fake
            .world()
            .stacks
            .iter()
            .any(|s| s.name == name && done(s))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--next` on a stack that does not exist yet: its creation is the next
/// operation, watched once the stack appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_on_a_missing_stack_watches_its_creation() {
    let mut s = created_stack("nw");
    s.missing_for = 3;
    let fake = FakeCfn::start(vec![s]).await;
    let mut watch = watch_next_direct(&fake, "nw");
    let first = watch.until("the waiting line", |_| true).await;
    assert_eq!(first, "waiting for the next operation of nw");
    assert_eq!(watch.exit_code().await, 0, "{:#?}", watch.seen);
    assert!(
        watch
            .seen
            .iter()
            .any(|l| l.starts_with("Stack nw CREATE_COMPLETE succeeded")),
        "{:#?}",
        watch.seen
    );
    assert!(
        describe_calls(&fake, "nw") > 3,
        "it polled until the stack appeared"
    );
}

/// `--next` while an operation runs: that operation is skipped (its end too),
/// and the one after it is watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_while_an_operation_runs_watches_the_one_after() {
    let fake = FakeCfn::start(vec![created_stack("nb")]).await;
    // Dated a minute ago, so its events all come before the next update's.
    begin_update_at(&fake, "nb", Utc::now() - chrono::Duration::seconds(60));
    let mut watch = watch_next_direct(&fake, "nb");
    is_waiting(&mut watch, "nb").await;
    // The running update ends on a DescribeStacks call; once `watch` polled again
    // after it, it has seen the end.
    until_stack(&fake, "nb", "the running update to end", |s| {
        s.status == "UPDATE_COMPLETE"
    })
    .await;
    let seen_end = describe_calls(&fake, "nb");
    let give_up = tokio::time::Instant::now() + LIMIT;
    while describe_calls(&fake, "nb") <= seen_end {
        assert!(
            tokio::time::Instant::now() < give_up,
            "no poll after the end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch
        .until("a heartbeat after the end", |l| {
            l.starts_with("still waiting")
        })
        .await;
    assert!(
        watch.child.try_wait().expect("try_wait").is_none(),
        "the update running at the start is not the next one: {:#?}",
        watch.seen
    );
    assert!(
        !watch.seen.iter().any(|l| l.contains("UPDATE_")),
        "{:#?}",
        watch.seen
    );
    begin_update(&fake, "nb");
    shows_only_the_update(&mut watch, "nb").await;
}

/// Runs `stackpulse watch` to its end; (exit code, stderr).
async fn watch_to_end(args: &[&str]) -> (i32, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(args)
        .envs(AWS_ENV.iter().copied())
        .env_remove("STACKPULSE_SERVER")
        .env_remove("STACKPULSE_AWS_ENDPOINT_URL")
        .env_remove("STACKPULSE_WATCH_HEARTBEAT")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .expect("watch did not end")
        .expect("run stackpulse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server that refuses the stack's topic (not in `--stack-allow`): `watch`
/// ends at once with exit 2 and the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_topic_ends_the_watch_with_the_servers_reason() {
    let fake = FakeCfn::start(vec![created_stack("other")]).await;
    let server = common::Server::spawn(
        &[
            "--aws-endpoint-url",
            &fake.endpoint,
            "--aws-region",
            "us-east-1",
            "--stack-allow",
            "app-*",
        ],
        AWS_ENV,
    )
    .await;
    let url = format!("http://{}", server.addr);
    let (code, stderr) = watch_to_end(&["watch", "other", "--server", &url]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("server error 403: "),
        "the server's answer: {stderr}"
    );
    assert_eq!(
        describe_calls(&fake, "other"),
        0,
        "the refused stack is not tracked"
    );
}

/// Credentials that may not describe the stack: the watch ends with exit 2 and
/// the reason (no AWS account number), directly and with `--next`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_stack_ends_a_direct_watch_with_the_reason() {
    let fake = FakeCfn::start(vec![created_stack("locked")]).await;
    for next in [false, true] {
        fake.world().faults.extend([Fault::AccessDenied; 8]);
        let mut args = vec![
            "watch",
            "locked",
            "--aws-endpoint-url",
            &fake.endpoint,
            "--region",
            "us-east-1",
            "--direct",
            "--poll-interval",
            "0.05",
        ];
        if next {
            args.push("--next");
        }
        let (code, stderr) = watch_to_end(&args).await;
        assert_eq!(code, 2, "next {next}: {stderr}");
        assert_denied(&stderr);
        fake.world().faults.clear();
    }
}

/// Through a server that cannot track the stack (its credentials are denied): the
/// server's final `tracker.error` ends the watch with exit 2 and its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_final_tracker_error_ends_the_watch() {
    let fake = FakeCfn::start(vec![created_stack("locked")]).await;
    fake.world().faults.extend([Fault::AccessDenied; 50]);
    let (_server, url) = tracking_server(&fake).await;
    let (code, stderr) = watch_to_end(&["watch", "locked", "--server", &url]).await;
    assert_eq!(code, 2, "{stderr}");
    assert_denied(&stderr);
}

/// The one line a denied watch ends with: what failed and what to grant, without
/// the account or principal AWS named.
fn assert_denied(stderr: &str) {
    assert!(
        stderr.contains("stackpulse: cannot track locked: AWS denied access (AccessDenied)"),
        "{stderr}"
    );
    assert!(stderr.contains("cloudformation:DescribeStacks"), "{stderr}");
    assert!(!stderr.contains("123456789012"), "{stderr}");
}
