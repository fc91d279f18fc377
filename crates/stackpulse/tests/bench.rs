//! A smoke run of `stackpulse bench` against the real server, with tiny numbers:
//! every connection subscribes, every event reaches every subscriber, and the
//! figures are there and sane. No timing is asserted (CI is noisy); the real
//! benchmark is `bench/compare.sh`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Runs `stackpulse bench run` with `args` and returns its JSON report.
async fn bench(args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(["bench", "run", "--json"])
            .args(args)
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .expect("bench run timed out")
    .expect("run bench");
    assert!(output.status.success(), "bench run failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

fn assert_complete(report: &Value, connections: u64, deliveries: u64) {
    assert_eq!(report["connected"], connections, "{report}");
    assert_eq!(report["connect_errors"], 0, "{report}");
    assert_eq!(report["publish_errors"], 0, "{report}");
    assert_eq!(report["expected_deliveries"], deliveries, "{report}");
    assert_eq!(report["deliveries"], deliveries, "{report}");
    assert_eq!(report["latency"]["count"], deliveries, "{report}");
    assert_eq!(report["connect"]["count"], connections, "{report}");
    assert_eq!(report["ended_early"], 0, "{report}");
    let f = |path: &[&str]| {
        path.iter()
            .fold(report, |v, k| &v[*k])
            .as_f64()
            .unwrap_or(-1.0)
    };
    assert!(f(&["rss_before_kib"]) > 0.0, "{report}");
    assert!(f(&["rss_idle_kib"]) > 0.0, "{report}");
    assert!(f(&["server_cpu_load_s"]) >= 0.0, "{report}");
    assert!(f(&["deliveries_per_s"]) > 0.0, "{report}");
    assert!(
        f(&["latency", "p50_ms"]) <= f(&["latency", "p99_ms"]),
        "{report}"
    );
    assert!(
        f(&["latency", "p99_ms"]) <= f(&["latency", "max_ms"]),
        "{report}"
    );
    assert!(f(&["connect", "p50_ms"]) > 0.0, "{report}");
}

#[tokio::test]
async fn smoke_run_delivers_every_event_to_every_subscriber() {
    let server = Server::start(&["--connect-rate-per-ip", "100000"]).await;
    let pid = server.child.id().expect("pid").to_string();
    let ws = server.ws_url();
    let publish = server.url("/v1/events");
    let report = bench(&[
        "--target",
        "stackpulse",
        "--ws-url",
        &ws,
        "--publish-url",
        &publish,
        "--publisher-key",
        KEY,
        "--server-pid",
        &pid,
        "--connections",
        "20",
        "--topics",
        "2",
        "--events",
        "10",
        "--rate",
        "50",
        "--settle",
        "0.2",
        "--label",
        "smoke",
    ])
    .await;
    // 10 events over 2 topics, 10 subscribers each: 100 deliveries.
    assert_complete(&report, 20, 100);
    assert_eq!(report["target"], "stackpulse");
    assert_eq!(report["label"], "smoke");
}

#[tokio::test]
async fn smoke_run_with_rs256_auth_from_the_bench_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let mut issuer = Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args([
            "bench",
            "issuer",
            "--issuer",
            "https://bench.test",
            "--client-id",
            "bench",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn issuer");
    let mut lines = BufReader::new(issuer.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("issuer start timed out")
        .expect("read")
        .expect("issuer exited");
    let jwks = line.strip_prefix("jwks at ").expect("jwks line").to_owned();

    let server = Server::start(&[
        "--jwt-issuer",
        "https://bench.test",
        "--jwks-url",
        &jwks,
        "--cognito-client-id",
        "bench",
        "--connect-rate-per-ip",
        "100000",
        "--connect-rate-per-user",
        "100000",
    ])
    .await;
    let pid = server.child.id().expect("pid").to_string();
    let (ws, publish) = (server.ws_url(), server.url("/v1/events"));
    let token_path = token_file.to_string_lossy().into_owned();
    let report = bench(&[
        "--ws-url",
        &ws,
        "--publish-url",
        &publish,
        "--publisher-key",
        KEY,
        "--server-pid",
        &pid,
        "--token-file",
        &token_path,
        "--connections",
        "5",
        "--events",
        "4",
        "--settle",
        "0",
    ])
    .await;
    assert_complete(&report, 5, 20);

    // Without the token the same run is refused at the handshake.
    let output = Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args([
            "bench",
            "run",
            "--json",
            "--ws-url",
            &ws,
            "--publish-url",
            &publish,
        ])
        .args([
            "--publisher-key",
            KEY,
            "--server-pid",
            &pid,
            "--connections",
            "2",
        ])
        .args(["--events", "0", "--settle", "0"])
        .stderr(Stdio::null())
        .output()
        .await
        .expect("run bench");
    assert!(!output.status.success());
    let refused: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(refused["connect_errors"], 2, "{refused}");
    assert!(
        refused["first_connect_error"]
            .as_str()
            .is_some_and(|e| e.contains("401")),
        "{refused}"
    );
}

/// Runs `stackpulse bench tracking` with `args`; returns (success, stdout, stderr).
async fn bench_tracking(args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(["bench", "tracking"])
            .args(args)
            .output(),
    )
    .await
    .expect("bench tracking timed out")
    .expect("run bench tracking");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// A tiny tracking run, polled and pushed: the bench's own check (every event on
/// every stream exactly once, no `tracker.error`) holds, and the report names the
/// figures it promises.
#[tokio::test]
async fn tracking_run_sees_every_event_exactly_once() {
    let (ok, out, err) = bench_tracking(&[
        "--stacks",
        "3",
        "--resources",
        "2",
        "--event-gap",
        "0.2",
        "--poll-interval",
        "0.5",
        "--aws-max-rps",
        "20",
        "--push",
        "--timeout",
        "90",
    ])
    .await;
    assert!(ok, "bench tracking failed:\n{out}\n{err}");
    // Uniform, 2 resources: the stack's CREATE_IN_PROGRESS, 2 × 2 resource events
    // and the stack's CREATE_COMPLETE.
    assert!(
        out.contains("3 stacks × 6 events (uniform timeline"),
        "{out}"
    );
    assert!(out.contains("push: true"), "{out}");
    assert!(
        out.contains("streams exact: true; tracker.error frames at clients: 0"),
        "{out}"
    );
    assert!(out.contains("DescribeStackEvents"), "{out}");
    assert!(out.contains("detection delay"), "{out}");
}

/// A server that cannot start is an error with the reason, not a hang or a pass.
#[tokio::test]
async fn tracking_run_reports_a_server_that_cannot_start() {
    let (ok, out, err) =
        bench_tracking(&["--stacks", "1", "--server-bin", "/nonexistent/stackpulse"]).await;
    assert!(!ok, "a run without a server passed:\n{out}");
    assert!(
        err.contains("stackpulse bench tracking: cannot start the server"),
        "{err}"
    );
}
