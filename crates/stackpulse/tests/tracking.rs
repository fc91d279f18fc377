//! CloudFormation tracking through the real server binary: `POST /canvas/deploy`,
//! the `/canvas/deploy/track/{stack}` socket, `stack:<name>` topics on `/ws`, one
//! poller for many clients, and `stackpulse watch` / `deploy` exit codes.
//!
//! moto (from `scripts/ensure-moto.sh` or `STACKPULSE_MOTO_SERVER`) gives the real
//! wire format; it completes stacks at once and cannot fail one, so failures,
//! throttling and stacks that stay busy come from the scripted fake endpoint.

mod cfn_support;
mod common;

use std::process::Stdio;
use std::time::Duration;

use cfn_support::fake_cfn::{FakeCfn, Fault};
use cfn_support::moto::Moto;
use cfn_support::{failing_stack, slow_stack, AWS_ENV};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use stackpulse::client::Frame;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Whole-process commands (CLI runs) may take this long.
const CLI_LIMIT: Duration = Duration::from_secs(60);

fn template() -> String {
    json!({
        "Parameters": {"Env": {"Type": "String"}},
        "Resources": {
            "Bucket": {"Type": "AWS::S3::Bucket"},
            "Queue": {"Type": "AWS::SQS::Queue"}
        },
        "Outputs": {
            "BucketName": {"Value": {"Ref": "Bucket"}, "Description": "Where files go"},
            "Env": {"Value": {"Ref": "Env"}}
        }
    })
    .to_string()
}

/// An SDK client for a local endpoint with static test credentials.
fn sdk_client(endpoint: &str) -> aws_sdk_cloudformation::Client {
    use aws_sdk_cloudformation::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_cloudformation::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_cloudformation::Client::from_conf(conf)
}

async fn start_server(endpoint: &str, poll: &str) -> Server {
    Server::spawn(
        &cfn_support::aws_flags(endpoint, &["--poll-interval", poll]),
        AWS_ENV,
    )
    .await
}

async fn post_deploy(server: &Server, body: &Value) -> (u16, Value) {
    let resp = server
        .http
        .post(server.url("/canvas/deploy"))
        .json(body)
        .send()
        .await
        .expect("POST /canvas/deploy");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn canvas(server: &Server, stack: &str) -> Socket {
    let url = format!("ws://{}/canvas/deploy/track/{stack}", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the canvas tracker");
    ws
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a canvas message")
            .expect("canvas socket ended")
            .expect("canvas socket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("canvas JSON");
        }
    }
}

/// Canvas messages up to and including `deployment_complete`.
async fn until_complete(ws: &mut Socket) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let v = next_json(ws).await;
        let done = v["type"] == "deployment_complete";
        all.push(v);
        if done {
            return all;
        }
    }
}

/// `/ws` events up to and including the stack's `stack.deployed`/`stack.failed`.
async fn ws_until_complete(c: &mut stackpulse::client::Client) -> Vec<stackpulse_protocol::Event> {
    let mut all = Vec::new();
    loop {
        match next(c).await {
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

/// Runs the `stackpulse` binary; returns (exit code, stdout, stderr).
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("STACKPULSE_SERVER")
        .env_remove("STACKPULSE_AWS_ENDPOINT_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn stackpulse");
    let out = tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .expect("stackpulse CLI timed out")
        .expect("stackpulse CLI output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn deploy_track_and_watch_a_stack_on_moto() {
    let moto = Moto::start().await;
    let server = start_server(&moto.endpoint, "0.1").await;

    // AWS's validation error comes back as 400 with AWS's own message.
    let (code, body) = post_deploy(
        &server,
        &json!({"templateBody": template(), "stackName": "needs-a-parameter"}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let direct = stackpulse_cfn::create_stack(
        &sdk_client(&moto.endpoint),
        stackpulse_cfn::CreateStackRequest {
            template_body: template(),
            stack_name: Some("needs-a-parameter".into()),
            ..Default::default()
        },
    )
    .await;
    match direct {
        Err(stackpulse_cfn::CreateStackError::Invalid(m)) => assert_eq!(body["message"], m),
        other => panic!("expected AWS's validation error, got {other:?}"),
    }
    assert_eq!(body["message"], "Missing parameter Env");
    let (code, body) = post_deploy(&server, &json!({"stackName": "x"})).await;
    assert_eq!(code, 400, "{body}");

    // Created: 201 with a generated name and the stack's ARN.
    let (code, body) = post_deploy(
        &server,
        &json!({"templateBody": template(), "parameters": {"Env": "test"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let name = body["stackName"].as_str().expect("stackName").to_string();
    assert!(name.starts_with("stackpulse-"), "{name}");
    assert!(
        body["stackId"]
            .as_str()
            .is_some_and(|id| id.starts_with("arn:aws:cloudformation:us-east-1:")),
        "{body}"
    );

    // A /ws subscriber from seq 0 sees every event the poller published, in order.
    let topic = format!("stack:{name}");
    let mut c = server.connect().await;
    c.subscribe(&topic, Some(0), None).await.expect("subscribe");
    // And a canvas socket on the same stack shares its poller.
    let mut ws = canvas(&server, &name).await;

    let events = ws_until_complete(&mut c).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{events:?}");
    }
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .map(|e| e.data["resource"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["CREATE_IN_PROGRESS", "CREATE_COMPLETE"],
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.event_type == "log.created"
        && e.data["stack_name"] == name.as_str()
        && e.data["level"] == "info"));
    let deployed = events.last().expect("stack.deployed");
    assert_eq!(deployed.event_type, "stack.deployed");
    assert_eq!(deployed.data["stack_name"], name.as_str());
    assert_eq!(deployed.data["environment"], "us-east-1");
    assert_eq!(deployed.data["resource_count"], 2);
    assert!(deployed.data["duration_seconds"].is_u64());
    assert_eq!(deployed.data["root_cause"], Value::Null);
    assert!(deployed.data["outputs"]
        .as_array()
        .is_some_and(|o| o.iter().any(|o| o["key"] == "Env" && o["value"] == "test")));

    let msgs = until_complete(&mut ws).await;
    let updates: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["type"] == "resource_update")
        .collect();
    assert!(!updates.is_empty(), "{msgs:?}");
    for u in &updates {
        assert_eq!(u["stack"]["name"], name.as_str());
        assert!(
            u["resource"]["logicalId"].is_string() && u["timestamp"].is_string(),
            "{u}"
        );
        assert!(u.get("eventId").is_none(), "{u}");
    }
    let done = msgs.last().expect("deployment_complete");
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(done["rootCause"], Value::Null);
    assert!(done["durationSeconds"].is_u64(), "{done}");
    assert_eq!(done["stack"]["status"], "CREATE_COMPLETE");
    assert_eq!(done["stack"]["progress"], 100);
    let bucket = done["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["key"] == "BucketName"))
        .expect("BucketName output");
    assert_eq!(bucket["description"], "Where files go");
    assert!(bucket["value"].as_str().is_some_and(|v| !v.is_empty()));

    // A late canvas joiner gets the current state, then the completion.
    let mut late = canvas(&server, &name).await;
    let msgs = until_complete(&mut late).await;
    assert!(msgs.len() >= 2, "{msgs:?}");
    assert_eq!(msgs[0]["type"], "resource_update");
    assert_eq!(
        msgs.last().map(|m| m["success"].clone()),
        Some(Value::Bool(true))
    );

    // `watch` through the server and directly: exit 0 and the stack's lines.
    let server_url = format!("http://{}", server.addr);
    let (code, out, err) = cli(&["watch", &name, "--server", &server_url], &[]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("Stack {name} CREATE_COMPLETE succeeded")),
        "{out}"
    );
    assert!(out.contains("Output BucketName = "), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no escape codes without a terminal: {out:?}"
    );
    let (code, out, err) = cli(
        &[
            "watch",
            &name,
            "--direct",
            "--aws-endpoint-url",
            &moto.endpoint,
            "--region",
            "us-east-1",
            "--poll-interval",
            "0.1",
        ],
        AWS_ENV,
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("CREATE_IN_PROGRESS"), "{out}");
    assert!(
        out.contains(&format!("Stack {name} CREATE_COMPLETE succeeded")),
        "{out}"
    );

    // The stack is updated while the /ws subscriber stays: the finished poller sees
    // the new operation and tracks it too.
    let mut updated: Value = serde_json::from_str(&template()).expect("template");
    updated["Resources"]["Topic"] = json!({"Type": "AWS::SNS::Topic"});
    sdk_client(&moto.endpoint)
        .update_stack()
        .stack_name(&name)
        .template_body(updated.to_string())
        .parameters(
            aws_sdk_cloudformation::types::Parameter::builder()
                .parameter_key("Env")
                .parameter_value("test")
                .build(),
        )
        .send()
        .await
        .expect("update_stack");
    let events = ws_until_complete(&mut c).await;
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .map(|e| e.data["resource"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"],
        "{events:?}"
    );
    let deployed = events.last().expect("stack.deployed");
    assert_eq!(deployed.event_type, "stack.deployed");
    assert_eq!(deployed.data["resource_count"], 3);

    // `deploy --watch` creates through the SDK and watches through the server.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("template.json");
    std::fs::write(&file, template()).expect("write template");
    let file = file.to_string_lossy().into_owned();
    let (code, out, err) = cli(
        &[
            "deploy",
            &file,
            "--stack-name",
            "cli-deployed",
            "--parameter",
            "Env=ci",
            "--watch",
            "--server",
            &server_url,
            "--aws-endpoint-url",
            &moto.endpoint,
            "--region",
            "us-east-1",
        ],
        AWS_ENV,
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("Created stack cli-deployed (arn:aws:cloudformation:"),
        "{out}"
    );
    assert!(out.contains("Output Env = ci"), "{out}");

    // One poller per stack, one tracker run per operation: the first stack's create
    // and update, the second stack's create.
    assert_eq!(
        server
            .metric("stackpulse_tracking_pollers_started_total")
            .await,
        3.0
    );
}

#[tokio::test]
async fn fifty_clients_on_one_stack_share_one_poller() {
    const BUSY: usize = 40;
    let fake = FakeCfn::start(vec![slow_stack("busy", BUSY)]).await;
    let server = start_server(&fake.endpoint, "0.05").await;

    let mut sockets = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..25 {
        sockets.push(canvas(&server, "busy").await);
        let mut c = server.connect().await;
        c.subscribe("stack:busy", Some(0), None)
            .await
            .expect("subscribe");
        clients.push(c);
    }
    for ws in &mut sockets {
        let msgs = until_complete(ws).await;
        let done = msgs.last().expect("complete");
        assert_eq!(done["success"], true, "{done}");
        assert_eq!(done["outputs"][0]["key"], "Url", "{done}");
        assert_eq!(done["stack"]["completedResources"], 2, "{done}");
    }
    for c in &mut clients {
        let events = ws_until_complete(c).await;
        let updates = events
            .iter()
            .filter(|e| e.event_type == "resource.status")
            .count();
        assert_eq!(updates, 6, "every stack event once: {events:?}");
    }

    let started = server
        .metric("stackpulse_tracking_pollers_started_total")
        .await;
    // The finished poller still checks the stack now and then: read the metric
    // between two equal request counts, so no call is in flight while it is read (the
    // endpoint counts a request when it arrives, the metric when its answer does).
    let mut consistent = None;
    for _ in 0..100 {
        let before = fake.request_count();
        let calls = server.metric("stackpulse_tracking_aws_calls_total").await;
        if fake.request_count() == before && calls as usize == before {
            consistent = Some((calls, before));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (calls, requests) = consistent.unwrap_or_else(|| {
        panic!(
            "the AWS-call metric never matched the endpoint's request count ({} requests)",
            fake.request_count()
        )
    });
    let (describe_stacks, templates) = {
        let w = fake.world();
        (
            w.requests
                .iter()
                .filter(|(a, _)| a == "DescribeStacks")
                .count(),
            w.requests
                .iter()
                .filter(|(a, _)| a == "GetTemplate")
                .count(),
        )
    };
    eprintln!(
        "50 clients on one stack: {started} poller(s), {calls} AWS calls \
         ({requests} requests at the endpoint, {describe_stacks} DescribeStacks, {BUSY} busy polls)"
    );
    assert_eq!(started, 1.0, "one poller for 50 clients");
    assert_eq!(templates, 1, "one tracker start");
    assert_eq!(
        calls as usize, requests,
        "every AWS call came from that poller"
    );
    assert!(
        describe_stacks <= BUSY + 4,
        "{describe_stacks} DescribeStacks"
    );
    let (_, topic) = server.get("/v1/topics/stack:busy").await;
    let topic: Value = serde_json::from_str(&topic).expect("topic JSON");
    assert_eq!(topic["subscribers"], 50, "{topic}");
}

#[tokio::test]
async fn failing_stack_throttling_and_watch_exit_codes() {
    // Through the server, with AWS throttling the first requests.
    let mut stack = failing_stack("failing");
    if let Some(first) = stack.steps.front_mut() {
        first.faults = vec![Fault::Throttle; 4];
    }
    let fake = FakeCfn::start(vec![stack]).await;
    let server = start_server(&fake.endpoint, "0.05").await;
    let mut ws = canvas(&server, "failing").await;
    let msgs = until_complete(&mut ws).await;
    let throttled = msgs
        .iter()
        .find(|m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error message: {msgs:?}"));
    assert_eq!(throttled["retrying"], true, "{throttled}");
    assert!(
        throttled["message"]
            .as_str()
            .is_some_and(|m| m.contains("throttling")),
        "{throttled}"
    );
    let done = msgs.last().expect("complete");
    assert_eq!(done["success"], false, "{done}");
    assert_eq!(done["outputs"], json!([]));
    assert_eq!(
        done["rootCause"],
        json!({"logicalId": "Db", "type": "AWS::S3::Bucket", "status": "CREATE_FAILED", "reason": "Subnet not found"})
    );
    assert_eq!(done["stack"]["status"], "ROLLBACK_COMPLETE");
    let ids: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "resource_update")
        .map(|m| m["resource"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 9, "every event once: {msgs:?}");

    // `watch --server` of the failed stack: exit 1 with the root cause.
    let server_url = format!("http://{}", server.addr);
    let (code, out, err) = cli(&["watch", "failing", "--server", &server_url], &[]).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("Root cause: Db (AWS::S3::Bucket) CREATE_FAILED: Subnet not found"),
        "{out}"
    );
    // `--region` naming the server's default region watches the same topic (and
    // poller): `stack:us-east-1:failing` is refused with the name to use.
    let (code, out, err) = cli(
        &[
            "watch",
            "failing",
            "--server",
            &server_url,
            "--region",
            "us-east-1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("Root cause: Db"), "{out}");
    let mut c = server.connect().await;
    c.subscribe("stack:us-east-1:failing", None, None)
        .await
        .expect("send");
    assert_eq!(
        error(&mut c).await,
        (
            400,
            "Use stack:failing: us-east-1 is this server's default region".to_string()
        )
    );
    assert_eq!(
        server
            .metric("stackpulse_tracking_pollers_started_total")
            .await,
        1.0,
        "one poller for the stack, however it was named"
    );
    // A stack the server cannot track (access denied): exit 2 with AWS's reason.
    // The fault is for `denied`'s own call: the finished poller of `failing` keeps
    // polling and must not take it.
    fake.world()
        .stack_faults
        .push(("denied".to_string(), Fault::AccessDenied));
    let (code, out, err) = cli(&["watch", "denied", "--server", &server_url], &[]).await;
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("cannot track denied") && err.contains("AccessDenied"),
        "{err}"
    );
    assert!(!err.contains("123456789012"), "{err}");
    assert_eq!(err.lines().count(), 1, "said once: {err}");

    // The /ws topic has the seed-002 failure event.
    let mut c = server.connect().await;
    c.subscribe("stack:failing", Some(0), None)
        .await
        .expect("subscribe");
    let events = ws_until_complete(&mut c).await;
    let failed = events.last().expect("stack.failed");
    assert_eq!(failed.event_type, "stack.failed");
    assert_eq!(failed.data["error_message"], "Subnet not found");
    assert!(events
        .iter()
        .any(|e| e.event_type == "tracker.error" && e.data["retrying"] == true));

    // `watch --direct` of the same script: exit 1, plain lines, root cause.
    let fake2 = FakeCfn::start(vec![failing_stack("failing")]).await;
    let (code, out, err) = cli(
        &[
            "watch",
            "failing",
            "--direct",
            "--aws-endpoint-url",
            &fake2.endpoint,
            "--region",
            "us-east-1",
            "--poll-interval",
            "0.05",
        ],
        AWS_ENV,
    )
    .await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("CREATE_FAILED"), "{out}");
    assert!(
        out.contains("Stack failing ROLLBACK_COMPLETE failed"),
        "{out}"
    );
    assert!(out.contains("Root cause: Db"), "{out}");

    fake2.world().faults.push_back(Fault::AccessDenied);
    let (code, out, err) = cli(
        &[
            "watch",
            "denied",
            "--direct",
            "--aws-endpoint-url",
            &fake2.endpoint,
            "--region",
            "us-east-1",
        ],
        AWS_ENV,
    )
    .await;
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("AccessDenied"), "{err}");

    // Nothing listening: a connection error is exit 2; so is a bad stack name.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (code, _, err) = cli(
        &[
            "watch",
            "failing",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    let (code, _, err) = cli(&["watch", "not_a_stack"], &[]).await;
    assert_eq!(code, 2, "{err}");
}

/// Waits (polling `/metrics`, bounded) until a gauge reaches `value`.
async fn await_metric(server: &Server, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if server.metric(name).await == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn poller_stops_after_the_grace_time_and_a_new_one_publishes_no_duplicates() {
    let fake = FakeCfn::start(vec![slow_stack("graceful", 60)]).await;
    let server = Server::spawn(
        &cfn_support::aws_flags(
            &fake.endpoint,
            &["--poll-interval", "0.05", "--tracker-grace", "0.3"],
        ),
        AWS_ENV,
    )
    .await;

    // The first subscriber sees the first events, then leaves mid-operation.
    let mut ws = canvas(&server, "graceful").await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "resource_update", "{first}");
    drop(ws);
    await_metric(&server, "stackpulse_tracking_pollers", 0.0).await;
    let requests = fake.request_count();
    let (_, topic) = server.get("/v1/topics/stack:graceful").await;
    let topic: Value = serde_json::from_str(&topic).expect("topic JSON");
    assert_eq!(topic["subscribers"], 0, "{topic}");
    assert!(
        fake.world().steps_left("graceful") > 0,
        "the stack was still busy when its poller stopped"
    );

    // A new subscriber starts a new poller, which publishes only what is new.
    let mut c = server.connect().await;
    c.subscribe("stack:graceful", Some(0), None)
        .await
        .expect("subscribe");
    let events = ws_until_complete(&mut c).await;
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .map(|e| e.data["eventId"].as_str().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (0..6).map(|n| format!("graceful-ev-{n:05}")).collect();
    assert_eq!(ids, expected, "every stack event exactly once, in order");
    assert!(fake.request_count() > requests);
    assert_eq!(
        server
            .metric("stackpulse_tracking_pollers_started_total")
            .await,
        2.0
    );
}
