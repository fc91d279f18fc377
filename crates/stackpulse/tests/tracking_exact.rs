//! Exact CloudFormation tracking through the real server binary, on the scripted
//! endpoint's shared scenarios (`stackpulse_cfn::scripted::scenarios`): a nested
//! update with history (nothing of the child's earlier create, nested resources
//! kept apart in the snapshot), a replacement (the live row survives the cleanup,
//! a skipped delete is a warning), a failed change set (the run ends instead of
//! tracking forever) and unknown 5xx answers (retried, told once, then recovered).
//! Every `/ws` frame read is checked against the contract by `common`.

mod cfn_support;
mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use cfn_support::fake_cfn::{scenarios, FakeCfn, Fault};
use cfn_support::{slow_stack, AWS_ENV};
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use stackpulse::client::Frame;
use stackpulse_protocol::Event;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start_server(endpoint: &str) -> Server {
    Server::spawn(
        &cfn_support::aws_flags(endpoint, &["--poll-interval", "0.05"]),
        AWS_ENV,
    )
    .await
}

/// `/ws` events of `topic` from its first one up to the stack's completion.
async fn whole_operation(server: &Server, topic: &str) -> Vec<Event> {
    let mut c = server.connect().await;
    c.subscribe(topic, Some(0), None).await.expect("subscribe");
    let mut all = Vec::new();
    loop {
        match next(&mut c).await {
            Frame::Event(e) => {
                let done = e.event_type == "stack.deployed" || e.event_type == "stack.failed";
                all.push(e);
                if done {
                    return all;
                }
            }
            Frame::Control(_) => {}
            Frame::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}

/// The `stack.snapshot` a late joiner of `topic` gets first.
async fn late_snapshot(server: &Server, topic: &str) -> Event {
    let mut c = server.connect().await;
    c.subscribe(topic, None, None).await.expect("subscribe");
    loop {
        match next(&mut c).await {
            Frame::Event(e) => {
                assert_eq!(e.event_type, "stack.snapshot", "{e:?}");
                return e;
            }
            Frame::Control(_) => {}
            Frame::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}

/// Canvas messages of a socket on `stack` up to `deployment_complete`.
async fn canvas_until_complete(server: &Server, stack: &str) -> Vec<Value> {
    let url = format!("ws://{}/canvas/deploy/track/{stack}", server.addr);
    let (mut ws, _): (Socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the canvas tracker");
    let mut all = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a canvas message")
            .expect("canvas socket ended")
            .expect("canvas socket error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("canvas JSON");
            let done = v["type"] == "deployment_complete";
            all.push(v);
            if done {
                return all;
            }
        }
    }
}

/// B1 + B2 + B3: the live stream has every event of the update and nothing of
/// the child's earlier create; late joiners (`/ws` snapshot, canvas socket) see
/// the root's and the nested stack's `CDKMetadata` apart.
#[tokio::test]
async fn nested_update_with_history_through_the_server() {
    let stacks = scenarios::nested_update_with_history("app");
    let child = scenarios::nested_child("app");
    let expected: HashSet<String> = stacks.iter().flat_map(scenarios::operation_ids).collect();
    let fake = FakeCfn::start(stacks).await;
    let server = start_server(&fake.endpoint).await;

    let events = whole_operation(&server, "stack:app").await;
    let got: HashSet<String> = events
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .filter_map(|e| e.data["eventId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(got, expected, "the update's events, nothing of the create");
    let failed = events.last().expect("stack.failed");
    assert_eq!(failed.event_type, "stack.failed");
    assert_eq!(failed.data["root_cause"]["logicalId"], "Api");
    assert_eq!(failed.data["duration_seconds"], 12);

    let snap = late_snapshot(&server, "stack:app").await;
    let rows = &snap.data["resources"];
    assert_eq!(rows["CDKMetadata"]["physicalId"], "app-CDKMetadata-phys");
    let nested_key = format!("{child}/CDKMetadata");
    assert_eq!(
        rows[nested_key.as_str()]["physicalId"],
        format!("{child}-CDKMetadata-phys")
    );

    let msgs = canvas_until_complete(&server, "app").await;
    let metadata: Vec<(Value, Value)> = msgs
        .iter()
        .filter(|m| m["type"] == "resource_update" && m["resource"]["logicalId"] == "CDKMetadata")
        .map(|m| {
            (
                m["nestedStack"].clone(),
                m["resource"]["physicalId"].clone(),
            )
        })
        .collect();
    assert_eq!(
        metadata,
        [
            (Value::Null, Value::from("app-CDKMetadata-phys")),
            (
                Value::from(child.as_str()),
                Value::from(format!("{child}-CDKMetadata-phys"))
            ),
        ],
        "{msgs:?}"
    );
}

/// B4: the old bucket's deletion is streamed as such, but the snapshot keeps the
/// live bucket; the skipped delete of a removed resource is a warning and the
/// update ends at 100 %.
#[tokio::test]
async fn replacement_through_the_server() {
    let fake = FakeCfn::start(scenarios::replacement("swap")).await;
    let server = start_server(&fake.endpoint).await;
    let events = whole_operation(&server, "stack:swap").await;
    let deployed = events.last().expect("stack.deployed");
    assert_eq!(deployed.event_type, "stack.deployed", "{deployed:?}");
    assert_eq!(deployed.data["stack"]["progress"], 100, "{deployed:?}");
    assert_eq!(deployed.data["stack"]["failedResources"], 0, "{deployed:?}");
    let skipped = events
        .iter()
        .find(|e| {
            e.event_type == "log.created"
                && e.data["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Legacy") && m.contains("DELETE_FAILED"))
        })
        .expect("the skipped delete's log line");
    assert_eq!(skipped.data["level"], "warning", "{skipped:?}");

    let snap = late_snapshot(&server, "stack:swap").await;
    let bucket = &snap.data["resources"]["Bucket"];
    assert_eq!(bucket["status"], "UPDATE_COMPLETE", "{bucket}");
    assert_eq!(bucket["physicalId"], "swap-Bucket-phys", "{bucket}");
}

/// B6: a stack whose change set failed ends with the change set's reason on the
/// canvas socket, and `watch --server` exits 1 instead of waiting forever.
#[tokio::test]
async fn failed_change_set_ends_the_run() {
    let fake = FakeCfn::start(scenarios::failed_change_set("rev")).await;
    let server = start_server(&fake.endpoint).await;
    let msgs = canvas_until_complete(&server, "rev").await;
    let done = msgs.last().expect("deployment_complete");
    assert_eq!(done["success"], false, "{done}");
    assert_eq!(done["stack"]["status"], "REVIEW_IN_PROGRESS", "{done}");
    assert_eq!(done["rootCause"]["logicalId"], "deploy-1", "{done}");
    assert_eq!(
        done["rootCause"]["type"], "AWS::CloudFormation::ChangeSet",
        "{done}"
    );
    assert!(
        done["rootCause"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Unresolved resource dependencies")),
        "{done}"
    );

    let server_url = format!("http://{}", server.addr);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(["watch", "rev", "--server", &server_url])
        .env_remove("STACKPULSE_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn stackpulse watch");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("watch ends")
        .expect("watch output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("deploy-1"), "{stdout}");
}

/// B9: 5xx answers with codes the tracker does not know are retried: one
/// `tracker.error` (code `aws`, retrying) however many, then `tracker.recovered`.
#[tokio::test]
async fn unknown_5xx_is_told_once_and_recovers() {
    let fake = FakeCfn::start(vec![slow_stack("flaky", 1)]).await;
    fake.world().faults.extend([
        Fault::Status(503, "ServiceUnavailableException"),
        Fault::Status(503, "ServiceUnavailableException"),
        Fault::Status(504, "RequestTimeout"),
    ]);
    let server = start_server(&fake.endpoint).await;
    let events = whole_operation(&server, "stack:flaky").await;
    let errors: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "tracker.error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].data["code"], "aws");
    assert_eq!(errors[0].data["retrying"], true);
    let recovered: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "tracker.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{events:?}");
    assert_eq!(recovered[0].data["code"], "aws");
    assert_eq!(
        events.last().map(|e| e.event_type.as_str()),
        Some("stack.deployed")
    );
}
