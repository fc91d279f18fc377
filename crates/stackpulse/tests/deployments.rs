//! `POST /v1/deployments` through the real server binary: several stacks played by
//! the scripted fake CloudFormation endpoint, followed as one deployment topic on
//! `/ws` (`deployment.status` per layer, the stacks' `stack.deployed` /
//! `stack.failed` and log lines), and every refusal of the endpoint.

mod cfn_support;
mod common;

use cfn_support::fake_cfn::{FakeCfn, Step};
use cfn_support::{failing_stack, slow_stack, AWS_ENV};
use common::*;
use serde_json::{json, Value};
use stackpulse::client::Frame;
use stackpulse_protocol::Event;

async fn start_server(endpoint: &str) -> Server {
    start_server_with(endpoint, &[]).await
}

/// A server tracking stacks on `endpoint` quickly, plus `extra` flags.
async fn start_server_with(endpoint: &str, extra: &[&str]) -> Server {
    let mut args = cfn_support::aws_flags(
        endpoint,
        &["--publisher-key", KEY, "--poll-interval", "0.05"],
    );
    args.extend_from_slice(extra);
    Server::spawn(&args, AWS_ENV).await
}

async fn post(server: &Server, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url("/v1/deployments"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.expect("POST /v1/deployments");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Events of the deployment topic up to the `deployment.status` that ends it.
async fn until_finished(c: &mut stackpulse::client::Client) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        match next(c).await {
            Frame::Event(e) => {
                let status = e.data.get("status").and_then(Value::as_str).unwrap_or("");
                let done = e.event_type == "deployment.status"
                    && (status == "deployed" || status == "failed");
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

/// Makes the fake endpoint's stack `name` complete at its next poll (its
/// remaining steps replaced by one CREATE_COMPLETE).
fn complete_now(fake: &FakeCfn, name: &str) {
    let mut w = fake.world();
    let s = w.stacks.iter_mut().find(|s| s.name == name).expect("stack");
    s.steps.clear();
    s.steps.push_back(Step {
        reveal: vec![(name.to_string(), 4)],
        status: Some("CREATE_COMPLETE".into()),
        ..Step::default()
    });
}

fn statuses(events: &[Event]) -> Vec<(String, u64, u64)> {
    events
        .iter()
        .filter(|e| e.event_type == "deployment.status")
        .map(|e| {
            (
                e.data["status"].as_str().unwrap_or_default().to_owned(),
                e.data["current_layer"].as_u64().unwrap_or(0),
                e.data["total_layers"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_stacks_deploy_as_one_deployment_topic() {
    let fake = FakeCfn::start(vec![slow_stack("network", 2), slow_stack("app", 8)]).await;
    let server = start_server(&fake.endpoint).await;
    let mut client = server.connect().await;
    client
        .subscribe("D1", Some(0), None)
        .await
        .expect("subscribe to the deployment");

    // Only the tracker writes stack topics: a publisher cannot forge a stack's
    // completion into a deployment (security review #14).
    let (code, body) = server
        .publish_raw(
            &json!({"type": "stack.deployed", "deployment_id": "stack:network",
            "data": {"stack_name": "network"}}),
        )
        .await;
    assert_eq!(code, 403, "{body}");

    let body = json!({"deployment_id": "D1", "stacks": [
        {"name": "network", "environment": "dev"},
        {"name": "app", "environment": "dev"}
    ]})
    .to_string();
    let (code, reply) = post(&server, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["deployment_id"], "D1");
    assert_eq!(reply["seq"], 1, "{reply}");
    assert_eq!(reply["stacks"][0]["topic"], "stack:network", "{reply}");

    // The same deployment cannot be followed twice at once.
    let (code, again) = post(&server, Some(KEY), &body).await;
    assert_eq!(code, 409, "{again}");
    assert_eq!(again["message"], "Deployment D1 is already being tracked");

    let events = until_finished(&mut client).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "contiguous seqs from 1: {events:?}");
    assert_eq!(
        statuses(&events),
        vec![
            ("deploying".to_string(), 1, 2),
            ("deploying".to_string(), 2, 2),
            ("deployed".to_string(), 2, 2),
        ],
        "{events:?}"
    );
    let deployed: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "stack.deployed")
        .map(|e| e.data["stack_name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(deployed, vec!["network", "app"], "network finishes first");
    let first = events
        .iter()
        .find(|e| e.event_type == "stack.deployed")
        .expect("stack.deployed");
    assert_eq!(first.data["environment"], "dev");
    assert_eq!(first.data["resource_count"], 2, "{first:?}");
    let logs = events
        .iter()
        .filter(|e| e.event_type == "log.created")
        .count();
    assert_eq!(
        logs, 12,
        "one log line per stack event of both stacks: {events:?}"
    );

    // The deployment's state is its snapshot.
    let (code, topic) = server.get("/v1/topics/D1").await;
    assert_eq!(code, 200, "{topic}");
    let topic: Value = serde_json::from_str(&topic).expect("topic JSON");
    assert_eq!(topic["snapshot"]["data"]["status"], "deployed", "{topic}");

    // Once it ended, the same id may be started again.
    let mut restarted = None;
    for _ in 0..100 {
        let (code, reply) = post(&server, Some(KEY), &body).await;
        if code == 202 {
            restarted = Some(reply);
            break;
        }
        assert_eq!(code, 409, "{reply}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let restarted = restarted.expect("the finished deployment's follower left");
    assert!(restarted["seq"].as_u64().expect("seq") > expected.len() as u64);
}

#[tokio::test]
async fn a_failing_stack_fails_the_deployment_with_its_root_cause() {
    let fake = FakeCfn::start(vec![failing_stack("db"), slow_stack("app", 200)]).await;
    let server = start_server(&fake.endpoint).await;
    let mut client = server.connect().await;
    client
        .subscribe("D2", Some(0), None)
        .await
        .expect("subscribe");
    let body =
        json!({"deployment_id": "D2", "stacks": [{"name": "db"}, {"name": "app"}]}).to_string();
    let (code, reply) = post(&server, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");

    let events = until_finished(&mut client).await;
    let failed = events
        .iter()
        .find(|e| e.event_type == "stack.failed")
        .unwrap_or_else(|| panic!("no stack.failed: {events:?}"));
    assert_eq!(failed.data["stack_name"], "db");
    assert_eq!(
        failed.data["environment"], "us-east-1",
        "the region labels it"
    );
    assert_eq!(failed.data["error_message"], "Subnet not found");
    assert_eq!(
        statuses(&events).last().cloned(),
        Some(("failed".to_string(), 1, 2)),
        "{events:?}"
    );
    let errors = events
        .iter()
        .filter(|e| e.event_type == "log.created" && e.data["level"] == "error")
        .count();
    assert_eq!(errors, 2, "the two CREATE_FAILED lines: {events:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_and_use_no_seq() {
    let fake = FakeCfn::start(vec![]).await;
    let server = start_server(&fake.endpoint).await;
    let ok = json!({"deployment_id": "D3", "stacks": [{"name": "a"}]}).to_string();
    let (code, body) = post(&server, None, &ok).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(&server, Some("wrong-key"), &ok).await;
    assert_eq!(code, 401, "{body}");
    for (bad, message) in [
        ("{", "Invalid JSON"),
        (r#"{"deployment_id":"D3"}"#, "Missing stacks"),
        (
            r#"{"deployment_id":"D3","stacks":[{"name":"no_underscores"}]}"#,
            "Invalid stacks[0].name",
        ),
        (
            r#"{"deployment_id":"stack:x","stacks":[{"name":"a"}]}"#,
            "tracked stacks",
        ),
    ] {
        let (code, body) = post(&server, Some(KEY), bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        let got = body["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{bad}: {got}");
    }
    let (code, _) = server.get("/v1/topics/D3").await;
    assert_eq!(code, 404, "no refused request created the topic");

    // The same stack twice, once with the default region spelled out.
    let twice = json!({"deployment_id": "D5", "stacks": [
        {"name": "a"}, {"name": "a", "region": "us-east-1"}]})
    .to_string();
    let (code, body) = post(&server, Some(KEY), &twice).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["message"],
        "Invalid stacks: stacks[1] is stack:a again (the server's default region is implied)"
    );
    let (code, _) = server.get("/v1/topics/D5").await;
    assert_eq!(code, 404);

    // More stacks than one subscriber may follow: refused with the limit.
    let limited = Server::spawn(
        &cfn_support::aws_flags(
            &fake.endpoint,
            &["--publisher-key", KEY, "--max-subscriptions", "1"],
        ),
        AWS_ENV,
    )
    .await;
    let two = json!({"deployment_id": "D4", "stacks": [{"name": "a"}, {"name": "b"}]}).to_string();
    let (code, body) = post(&limited, Some(KEY), &two).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["message"],
        "Cannot track stack:b: a deployment follows at most 1 stacks here (--max-subscriptions)"
    );
    let (code, _) = limited.get("/v1/topics/D4").await;
    assert_eq!(code, 404, "a refused deployment publishes nothing");
    // And the id is free again.
    let one = json!({"deployment_id": "D4", "stacks": [{"name": "a"}]}).to_string();
    let (code, body) = post(&limited, Some(KEY), &one).await;
    assert_eq!(code, 202, "{body}");
}

/// `--deployment-timeout`: a deployment still running when its time is up fails
/// the stacks that have not finished, with the reason, and then itself.
#[tokio::test]
async fn a_deployment_out_of_time_fails_its_running_stacks() {
    let fake = FakeCfn::start(vec![slow_stack("stuck", 100_000)]).await;
    let server = Server::spawn(
        &cfn_support::aws_flags(
            &fake.endpoint,
            &[
                "--publisher-key",
                KEY,
                "--poll-interval",
                "0.05",
                "--deployment-timeout",
                "1",
            ],
        ),
        AWS_ENV,
    )
    .await;
    let mut client = server.connect().await;
    client
        .subscribe("D6", Some(0), None)
        .await
        .expect("subscribe");
    let body = json!({"deployment_id": "D6", "stacks": [{"name": "stuck", "environment": "prod"}]})
        .to_string();
    let (code, reply) = post(&server, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");

    let events = until_finished(&mut client).await;
    let failed = events
        .iter()
        .find(|e| e.event_type == "stack.failed")
        .unwrap_or_else(|| panic!("no stack.failed: {events:?}"));
    assert_eq!(failed.data["stack_name"], "stuck");
    assert_eq!(failed.data["environment"], "prod");
    assert_eq!(
        failed.data["error_message"],
        "Deployment D6 did not finish within 1 s"
    );
    assert!(
        !events.iter().any(|e| e.event_type == "stack.deployed"),
        "{events:?}"
    );
    assert_eq!(
        statuses(&events),
        [
            ("deploying".to_string(), 1, 1),
            ("failed".to_string(), 1, 1)
        ],
        "{events:?}"
    );
}

/// Redis, the backplane, goes away in the middle of a deployment and comes back:
/// the deployment is still followed to its end, on a topic with contiguous seqs.
#[tokio::test]
async fn a_deployment_outlives_a_redis_restart() {
    let mut redis = stackpulse_testkit::RedisServer::start().await;
    let fake = FakeCfn::start(vec![slow_stack("held", 100_000)]).await;
    let server = start_server_with(&fake.endpoint, &["--redis-url", &redis.url()]).await;
    let ready = |want: u16| {
        let server = &server;
        async move {
            tokio::time::timeout(WAIT, async {
                while server.get("/readyz").await.0 != want {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("/readyz never answered {want}"));
        }
    };
    ready(200).await;
    let mut client = server.connect().await;
    client
        .subscribe("DR", Some(0), None)
        .await
        .expect("subscribe");
    let body = json!({"deployment_id": "DR", "stacks": [{"name": "held"}]}).to_string();
    let (code, reply) = post(&server, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");

    redis.stop();
    ready(503).await;
    redis.resume().await;
    ready(200).await;
    // Now the stack completes.
    complete_now(&fake, "held");
    let events = until_finished(&mut client).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert_eq!(
        statuses(&events).last().map(|s| s.0.as_str()),
        Some("deployed"),
        "{events:?}"
    );
}

/// A running deployment's lease passes to another node (its key is gone, as when
/// the first node stalled past `--poller-lease`, and the second node starts the
/// deployment): the first node's follower stops on its next renewal or fenced
/// publish without touching the new lease, the second follows the deployment to
/// its end on contiguous seqs, and only then may the first start it again.
#[tokio::test]
async fn a_deployment_whose_lease_passed_to_another_node_is_followed_there_only() {
    let redis = stackpulse_testkit::RedisServer::start().await;
    let fake = FakeCfn::start(vec![slow_stack("handed", 100_000)]).await;
    let url = redis.url();
    let flags = ["--redis-url", url.as_str(), "--poller-lease", "1"];
    let a = start_server_with(&fake.endpoint, &flags).await;
    let b = start_server_with(&fake.endpoint, &flags).await;
    let mut client = b.connect().await;
    client
        .subscribe("DH", Some(0), None)
        .await
        .expect("subscribe");
    subscribed(&mut client).await;
    let body = json!({"deployment_id": "DH", "stacks": [{"name": "handed"}]}).to_string();
    let (code, reply) = post(&a, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(next_event(&mut client).await.seq, 1);
    let (code, reply) = post(&b, Some(KEY), &body).await;
    assert_eq!(code, 409, "one follower cluster-wide: {reply}");

    // The lease expires under node A; node B takes the deployment over.
    let deleted = redis
        .command(&[
            "DEL",
            "sp:lease:{deployment:DH}",
            "sp:lease-claim:{deployment:DH}",
        ])
        .await;
    assert_eq!(deleted.as_deref(), Some(":2"), "the lease and its claim");
    let (code, reply) = post(&b, Some(KEY), &body).await;
    assert_eq!(code, 202, "{reply}");
    complete_now(&fake, "handed");
    let events = until_finished(&mut client).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..=seqs.len() as u64 + 1).collect::<Vec<_>>());
    assert_eq!(
        statuses(&events).last().map(|s| s.0.as_str()),
        Some("deployed"),
        "{events:?}"
    );
    // Node B released the lease at the end, and node A's follower has stopped
    // (its renewal found the lease gone, or its publish of the stack's
    // completion was fenced; it logs "deployment lease lost; stopping"), so A may
    // start the deployment again.
    let again = tokio::time::timeout(WAIT, async {
        loop {
            let (code, reply) = post(&a, Some(KEY), &body).await;
            if code != 409 {
                return (code, reply);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node A never let the deployment go");
    assert_eq!(again.0, 202, "{}", again.1);
    assert_eq!(next_event(&mut client).await.seq, seqs.len() as u64 + 2);
}
