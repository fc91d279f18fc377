//! The first five minutes (issue 17), through the real binary: a server on a machine
//! without AWS credentials, or whose principal is denied, publishes one readable
//! `tracker.error` with a stable code (not one per retry, none of AWS's text) and
//! logs single lines; `serve --demo` plays a multi-stack rollout a `/ws` client can
//! follow from start to end.

mod cfn_support;
mod common;

use std::sync::{Arc, Mutex};

use cfn_support::fake_cfn::{FakeCfn, Fault};
use cfn_support::AWS_ENV;
use common::*;
use serde_json::Value;
use stackpulse::client::Frame;
use stackpulse_protocol::Event;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A server started with exactly `env` (nothing inherited), and its log lines.
struct Isolated {
    server: Server,
    log: Arc<Mutex<Vec<String>>>,
    /// Lines printed on stdout after the listening line.
    stdout: Arc<Mutex<Vec<String>>>,
    _home: tempfile::TempDir,
}

async fn spawn_isolated(args: &[&str], env: &[(&str, &str)]) -> Isolated {
    let home = tempfile::tempdir().expect("home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackpulse"));
    cmd.args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .env_clear()
        .envs(common::coverage_env())
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn stackpulse");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().expect("log").push(l);
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("server start timed out")
        .expect("read stdout")
        .expect("server exited before listening");
    let addr = line
        .strip_prefix("stackpulse listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .expect("address");
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().expect("stdout").push(l);
        }
    });
    Isolated {
        server: Server {
            child,
            addr,
            scheme: "http",
            http: http_client(),
            moto: None,
        },
        log,
        stdout: out,
        _home: home,
    }
}

/// No credentials, no profile files, no instance metadata.
const EMPTY_AWS: &[(&str, &str)] = &[
    ("AWS_CONFIG_FILE", "/nonexistent/stackpulse-test-aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/stackpulse-test-aws-credentials",
    ),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The next event of `topic` of the given type (others are skipped).
async fn next_of(c: &mut stackpulse::client::Client, event_type: &str) -> Event {
    loop {
        match next(c).await {
            Frame::Event(e) if e.event_type == event_type => return e,
            Frame::Event(_) | Frame::Control(_) => {}
            Frame::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}

fn assert_readable(data: &Value) -> &str {
    let message = data["message"].as_str().expect("message");
    assert!(message.chars().count() <= 300, "{message}");
    for leak in [
        "arn:aws",
        "123456789012",
        "DispatchFailure",
        "ConnectorError",
        "dispatch failure",
    ] {
        assert!(!message.contains(leak), "{leak} in {message}");
    }
    assert_eq!(data["retrying"], true, "{data}");
    let retry_at = data["retry_at"].as_str().expect("retry_at");
    let retry_at = chrono::DateTime::parse_from_rfc3339(retry_at).expect("RFC 3339");
    // Configuration errors back off to minutes (with jitter: at least 30 s).
    assert!(
        retry_at.with_timezone(&chrono::Utc) > chrono::Utc::now() + chrono::Duration::seconds(25),
        "{data}"
    );
    message
}

#[tokio::test]
async fn no_credentials_is_one_readable_error_and_a_startup_line() {
    let fake = FakeCfn::start(vec![]).await;
    let s = spawn_isolated(&cfn_support::aws_flags(&fake.endpoint, &[]), EMPTY_AWS).await;
    let mut c = s.server.connect().await;
    c.subscribe("stack:my-app-prod", Some(0), None)
        .await
        .expect("subscribe");
    let e = next_of(&mut c, "tracker.error").await;
    assert_eq!(e.data["code"], "credentials", "{:?}", e.data);
    let message = assert_readable(&e.data);
    assert!(message.contains("AWS_PROFILE"), "{message}");
    assert_eq!(fake.request_count(), 0, "nothing can be sent unsigned");

    // A late joiner replays exactly one error.
    let mut late = s.server.connect().await;
    late.subscribe("stack:my-app-prod", Some(0), None)
        .await
        .expect("subscribe");
    let replayed = next_of(&mut late, "tracker.error").await;
    assert_eq!(replayed.seq, e.seq);
    let (_, topic) = s.server.get("/v1/topics/stack:my-app-prod").await;
    let topic: Value = serde_json::from_str(&topic).expect("topic JSON");
    assert_eq!(topic["seq"], e.seq, "one event in history: {topic}");

    // The start-up line said so, and the log has no multi-kilobyte lines.
    let log = s.log.lock().expect("log").clone();
    assert!(
        log.iter()
            .any(|l| l.contains("AWS credentials: none found") && l.contains("AWS_PROFILE")),
        "{log:#?}"
    );
    assert!(log.iter().all(|l| l.len() < 1000), "{log:#?}");
}

#[tokio::test]
async fn access_denied_is_one_readable_error_without_the_principal() {
    let fake = FakeCfn::start(vec![]).await;
    fake.world().faults.extend([Fault::AccessDenied; 3]);
    let s = spawn_isolated(&cfn_support::aws_flags(&fake.endpoint, &[]), AWS_ENV).await;
    let mut c = s.server.connect().await;
    c.subscribe("stack:guarded", Some(0), None)
        .await
        .expect("subscribe");
    let e = next_of(&mut c, "tracker.error").await;
    assert_eq!(e.data["code"], "access_denied", "{:?}", e.data);
    let message = assert_readable(&e.data);
    assert!(
        message.contains("cloudformation:DescribeStacks"),
        "{message}"
    );
    assert_eq!(fake.request_count(), 1, "retried minutes later, not now");
    let log = s.log.lock().expect("log").clone();
    assert!(
        log.iter()
            .any(|l| l.contains("AWS credentials: environment")),
        "{log:#?}"
    );
}

/// `serve --demo` (twenty times faster): one loop, followed over `/ws` as a user
/// would, shows each stack's operation from start to end in deployment order, the
/// nested stack, and `demo-app`'s failure with its root cause.
#[tokio::test]
async fn demo_plays_a_rollout_with_a_failure_and_its_root_cause() {
    let s = spawn_isolated(
        &["--demo", "--demo-pace", "0.05", "--poll-interval", "0.05"],
        EMPTY_AWS,
    )
    .await;
    let out = s.stdout.clone();
    let mut c = s.server.connect().await;
    for topic in [
        "stack:demo-network",
        "stack:demo-database",
        "stack:demo-app",
        "demo",
    ] {
        c.subscribe(topic, Some(0), None).await.expect("subscribe");
    }
    // (stack, status, nested stack, event timestamp) of every update event, until
    // demo-app's operation ends.
    let mut updates: Vec<(String, String, String, Option<String>, String)> = Vec::new();
    let mut completions: Vec<(String, Event)> = Vec::new();
    let mut deployment: Vec<Event> = Vec::new();
    let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let frame = tokio::time::timeout_at(limit, c.next())
            .await
            .expect("one demo loop within 90 s")
            .expect("socket open")
            .expect("frame");
        let Frame::Event(e) = frame else { continue };
        let topic = e.deployment_id.clone();
        if topic == "demo" {
            deployment.push(e);
            continue;
        }
        match e.event_type.as_str() {
            "resource.status" => {
                let r = &e.data["resource"];
                let status = r["status"].as_str().unwrap_or_default().to_owned();
                if status.starts_with("CREATE") {
                    continue; // the stacks' creation, before the first loop
                }
                updates.push((
                    topic,
                    r["logicalId"].as_str().unwrap_or_default().to_owned(),
                    status,
                    e.data["nestedStack"].as_str().map(str::to_owned),
                    e.data["eventTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            "stack.deployed" | "stack.failed" => {
                let creation = e.data["stack"]["status"] == "CREATE_COMPLETE";
                if !creation {
                    let end = topic == "stack:demo-app";
                    completions.push((topic, e));
                    if end {
                        break;
                    }
                }
            }
            "tracker.error" => panic!("no tracker errors in the demo: {:?}", e.data),
            _ => {}
        }
    }
    assert!(
        out.lock()
            .expect("stdout")
            .iter()
            .any(|l| l.starts_with("stackpulse demo: open http://")),
        "the URL to open is printed"
    );

    // Each stack: its root's first update event starts the operation, its last
    // ends it; stacks one after the other, in deployment order.
    let mut previous_end = String::new();
    for (stack, last) in [
        ("demo-network", "UPDATE_COMPLETE"),
        ("demo-database", "UPDATE_COMPLETE"),
        ("demo-app", "UPDATE_ROLLBACK_COMPLETE"),
    ] {
        let topic = format!("stack:{stack}");
        let own: Vec<_> = updates.iter().filter(|u| u.0 == topic).collect();
        let first = own
            .first()
            .unwrap_or_else(|| panic!("no events of {stack}"));
        assert_eq!(
            (first.1.as_str(), first.2.as_str()),
            (stack, "UPDATE_IN_PROGRESS")
        );
        let end = own.last().expect("last");
        assert_eq!((end.1.as_str(), end.2.as_str()), (stack, last), "{own:#?}");
        assert!(
            first.4 > previous_end,
            "{stack} started after the previous stack ended"
        );
        let times: Vec<&String> = own.iter().map(|u| &u.4).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order: {own:#?}");
        previous_end = end.4.clone();
    }
    assert!(
        updates.iter().any(|u| u
            .3
            .as_deref()
            .is_some_and(|n| n.starts_with("demo-database-Monitoring"))),
        "the nested stack's events: {updates:#?}"
    );

    let ends: Vec<(&str, &str)> = completions
        .iter()
        .map(|(t, e)| (t.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        ends,
        [
            ("stack:demo-network", "stack.deployed"),
            ("stack:demo-database", "stack.deployed"),
            ("stack:demo-app", "stack.failed")
        ]
    );
    let failed = &completions[2].1.data;
    assert_eq!(failed["root_cause"]["logicalId"], "Service", "{failed}");
    assert_eq!(failed["root_cause"]["status"], "UPDATE_FAILED");
    assert!(
        failed["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("failed ELB health checks")),
        "{failed}"
    );
    assert!(
        deployment
            .iter()
            .any(|e| e.event_type == "deployment.status"),
        "the deployment demo: {deployment:?}"
    );
}

/// Runs `stackpulse doctor` with exactly `env`; returns (exit code, stdout).
async fn doctor(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let home = tempfile::tempdir().expect("home");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .arg("doctor")
            .args(args)
            .env_clear()
            .envs(common::coverage_env())
            .env("HOME", home.path())
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("doctor finished")
    .expect("doctor ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn verdict<'a>(out: &'a str, item: &str) -> &'a str {
    out.lines()
        .find(|l| l[4..].trim_start().starts_with(item))
        .unwrap_or_else(|| panic!("no line for {item}: {out}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

#[tokio::test]
async fn doctor_gives_a_verdict_per_item() {
    let fake = FakeCfn::start(vec![]).await;
    let flags = cfn_support::aws_flags(&fake.endpoint, &[]);
    let (code, out) = doctor(&flags, AWS_ENV).await;
    assert_eq!(code, 0, "{out}");
    for item in [
        "AWS credentials",
        "AWS region",
        "CloudFormation DescribeStacks",
        "CloudFormation DescribeStackEvents",
        "CloudFormation ListStackResources",
        "CloudFormation GetTemplate",
    ] {
        assert_eq!(verdict(&out, item), "ok", "{item}: {out}");
    }
    assert_eq!(verdict(&out, "Redis"), "skip", "{out}");

    // DescribeStacks denied: that item fails, the others pass, the exit code says so.
    fake.world().faults.push_back(Fault::AccessDenied);
    let (code, out) = doctor(&flags, AWS_ENV).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        verdict(&out, "CloudFormation DescribeStacks"),
        "FAIL",
        "{out}"
    );
    assert_eq!(verdict(&out, "CloudFormation GetTemplate"), "ok", "{out}");
    assert!(out.contains("access_denied"), "{out}");
    assert!(!out.contains("123456789012"), "{out}");

    // No credentials and no region anywhere: both said, with what to set.
    let (code, out) = doctor(&flags[..2], EMPTY_AWS).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(verdict(&out, "AWS credentials"), "FAIL", "{out}");
    assert!(out.contains("AWS_PROFILE"), "{out}");
    assert_eq!(verdict(&out, "AWS region"), "FAIL", "{out}");
    assert!(out.contains("set AWS_REGION or --aws-region"), "{out}");
    assert!(out.contains("[credentials]"), "the calls say why: {out}");
}

/// A network outage (three dropped connections in a row): every retry happens, the
/// topic gets one `tracker.error` (`network`) and one `tracker.recovered`, then the
/// operation's events; the log says it once.
#[tokio::test]
async fn network_outage_is_one_error_then_recovered() {
    let fake = FakeCfn::start(vec![cfn_support::slow_stack("flaky", 1)]).await;
    fake.world().faults.extend([Fault::Reset; 3]);
    let s = spawn_isolated(
        &cfn_support::aws_flags(&fake.endpoint, &["--poll-interval", "0.05"]),
        AWS_ENV,
    )
    .await;
    let mut c = s.server.connect().await;
    c.subscribe("stack:flaky", Some(0), None)
        .await
        .expect("subscribe");
    let mut kinds = Vec::new();
    let mut error = Value::Null;
    loop {
        let Frame::Event(e) = next(&mut c).await else {
            continue;
        };
        match e.event_type.as_str() {
            "tracker.error" => {
                error = e.data.clone();
                kinds.push("error");
            }
            "tracker.recovered" => {
                assert_eq!(e.data["code"], "network", "{:?}", e.data);
                kinds.push("recovered");
            }
            "resource.status" if kinds.last() != Some(&"update") => kinds.push("update"),
            "stack.deployed" => {
                kinds.push("deployed");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(kinds, ["error", "recovered", "update", "deployed"]);
    assert_eq!(error["code"], "network", "{error}");
    assert_eq!(error["retrying"], true);
    assert!(error["retry_at"].is_string(), "{error}");
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.contains("could not be reached") && m.chars().count() <= 300));
    assert!(
        fake.world().faults.is_empty(),
        "every dropped connection was retried"
    );
    let log = s.log.lock().expect("log").clone();
    let told = log
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("could not be reached"))
        .count();
    assert_eq!(told, 1, "{log:#?}");
    assert!(log.iter().all(|l| l.len() < 1000), "{log:#?}");
}
