//! Push ingest through the real server binary: `POST /v1/ingest/eventbridge` wakes
//! the stack's poller (on whichever node holds its lease), replies as the contract
//! says, and never makes the stream inexact.
//!
//! The stacks come from the scripted CloudFormation endpoint; the servers poll every
//! 30 s, so an event that arrives within a few seconds was fetched because of the
//! push.

mod cfn_support;
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cfn_support::fake_cfn::FakeCfn;
use cfn_support::{slow_stack, AWS_ENV};
use common::*;
use serde_json::{json, Value};
use stackpulse::client::{Client, Frame};
use stackpulse_protocol::Event;
use stackpulse_testkit::RedisServer;

/// Without a push, the next poll would come this much later.
const POLL: &str = "30";
/// A pushed stack's next events must arrive within this (the poll is 30 s).
const PUSHED: Duration = Duration::from_secs(10);

async fn server(endpoint: &str, extra: &[&str]) -> Server {
    let mut args =
        cfn_support::aws_flags(endpoint, &["--publisher-key", KEY, "--poll-interval", POLL]);
    args.extend_from_slice(extra);
    Server::spawn(&args, AWS_ENV).await
}

fn event(detail_type: &str, region: &str, stack: &str) -> Value {
    let arn = format!("arn:aws:cloudformation:{region}:123456789012:stack/{stack}/0a1b2c3d-4e5f");
    json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": detail_type,
        "source": "aws.cloudformation",
        "account": "123456789012",
        "time": "2026-12-03T09:00:00Z",
        "region": region,
        "resources": [arn],
        "detail": {
            "stack-id": arn,
            "logical-resource-id": "Bucket",
            "physical-resource-id": "bucket-1",
            "status-details": {"status": "CREATE_COMPLETE", "status-reason": "", "detailed-status": "x"},
            "resource-type": "AWS::S3::Bucket",
            "client-request-token": "tok",
            "unknown-field": {"nested": [1, 2]}
        }
    })
}

fn resource_change(stack: &str) -> Value {
    event("CloudFormation Resource Status Change", "us-east-1", stack)
}

/// Posts a raw body to the ingest endpoint (checked against openapi.yaml).
async fn push_raw(server: &Server, body: String, key: Option<&str>) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url("/v1/ingest/eventbridge"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.expect("POST /v1/ingest/eventbridge");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    contract::contract().http("POST", "/v1/ingest/eventbridge", status, &text);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn push(server: &Server, body: &Value) -> (u16, Value) {
    push_raw(server, body.to_string(), Some(KEY)).await
}

/// The next event (control frames skipped).
async fn next_event(c: &mut Client) -> Event {
    loop {
        match next(c).await {
            Frame::Event(e) => return e,
            Frame::Control(_) => {}
            Frame::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}

/// Events up to and including `resource.status` number `n` (counted from the start).
async fn until_resources(c: &mut Client, all: &mut Vec<Event>, n: usize) {
    while all
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .count()
        < n
    {
        all.push(next_event(c).await);
    }
}

/// Events up to and including `stack.deployed`.
async fn until_deployed(c: &mut Client, all: &mut Vec<Event>) {
    loop {
        let e = next_event(c).await;
        let done = e.event_type == "stack.deployed" || e.event_type == "stack.failed";
        all.push(e);
        if done {
            return;
        }
    }
}

/// Seqs contiguous from 1, each resource event once.
fn assert_exact(all: &[Event]) {
    let seqs: Vec<u64> = all
        .iter()
        .filter(|e| !e.is_snapshot())
        .map(|e| e.seq)
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs are not contiguous");
    let mut ids = HashSet::new();
    for e in all.iter().filter(|e| e.event_type == "resource.status") {
        let id = e.data["eventId"].as_str().expect("eventId").to_owned();
        assert!(ids.insert(id.clone()), "event {id} published twice");
    }
}

/// Subscribes to the stack, sees its first poll (two events visible), then the
/// push makes the poller fetch the rest at once instead of 30 s later.
async fn pushed_stack_completes_fast(watcher: &Server, pushed: &Server, stack: &str) {
    let topic = format!("stack:{stack}");
    let mut c = watcher.connect().await;
    c.subscribe(&topic, Some(0), None).await.expect("subscribe");
    let mut all = Vec::new();
    until_resources(&mut c, &mut all, 2).await;
    // Let the poller reach its 30 s wait.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let (code, body) = push(pushed, &resource_change(stack)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"stack": stack, "region": "us-east-1", "topic": topic})
    );
    until_deployed(&mut c, &mut all).await;
    let took = started.elapsed();
    assert!(took < PUSHED, "the push did not wake the poller: {took:?}");

    // More (duplicate, late) deliveries: accepted, and nothing is published twice.
    for _ in 0..3 {
        assert_eq!(push(pushed, &resource_change(stack)).await.0, 202);
        let status = event("CloudFormation Stack Status Change", "us-east-1", stack);
        assert_eq!(push(pushed, &status).await.0, 202);
    }
    let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(frame)) = tokio::time::timeout_at(quiet, c.next()).await {
        if let Ok(Frame::Event(e)) = frame {
            panic!("an event after completion: {e:?}");
        }
    }
    let resources = all
        .iter()
        .filter(|e| e.event_type == "resource.status")
        .count();
    assert_eq!(resources, 6, "every stack event once");
    assert_exact(&all);
}

#[tokio::test]
async fn a_push_wakes_the_poller_at_once() {
    let fake = FakeCfn::start(vec![slow_stack("pushed", 2)]).await;
    let node = server(&fake.endpoint, &[]).await;
    pushed_stack_completes_fast(&node, &node, "pushed").await;
    assert!(
        node.metric("stackpulse_ingest_pushes_total{result=\"woken\"}")
            .await
            >= 7.0,
        "pushes counted"
    );
}

#[tokio::test]
async fn a_push_to_another_node_wakes_the_lease_holder() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let fake = FakeCfn::start(vec![slow_stack("remote", 2)]).await;
    let a = server(&fake.endpoint, &["--redis-url", &url]).await;
    let b = server(&fake.endpoint, &["--redis-url", &url]).await;
    for node in [&a, &b] {
        tokio::time::timeout(WAIT, async {
            while node.get("/readyz").await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("node never became ready");
    }
    // Only `a` has a subscriber, so only `a` runs a poller (and holds the lease).
    pushed_stack_completes_fast(&a, &b, "remote").await;
}

#[tokio::test]
async fn refusals_and_ignored_events() {
    let fake = FakeCfn::start(vec![]).await;
    let node = server(&fake.endpoint, &["--stack-allow", "app-*"]).await;
    let good = resource_change("app-one");

    // Credential first.
    assert_eq!(push_raw(&node, good.to_string(), None).await.0, 401);
    assert_eq!(
        push_raw(&node, good.to_string(), Some("wrong-key")).await.0,
        401
    );

    // Malformed: 400 with a message.
    let mut no_stack = good.clone();
    no_stack["detail"]
        .as_object_mut()
        .expect("detail")
        .remove("stack-id");
    let mut bad_arn = good.clone();
    bad_arn["detail"]["stack-id"] = json!("arn:aws:s3:::bucket");
    let mut bad_region = good.clone();
    bad_region["region"] = json!("nowhere");
    let mut no_type = good.clone();
    no_type
        .as_object_mut()
        .expect("event")
        .remove("detail-type");
    for body in [
        "{".to_string(),
        "[1,2]".to_string(),
        "\"text\"".to_string(),
        no_stack.to_string(),
        bad_arn.to_string(),
        bad_region.to_string(),
        no_type.to_string(),
    ] {
        let (code, reply) = push_raw(&node, body.clone(), Some(KEY)).await;
        assert_eq!(code, 400, "{body} → {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }

    // Other detail-types and excluded stacks: 200 ignored (not retried).
    let drift = event(
        "CloudFormation Drift Detection Status Change",
        "us-east-1",
        "app-one",
    );
    let (code, reply) = push(&node, &drift).await;
    assert_eq!(code, 200, "{reply}");
    assert!(reply["ignored"].as_str().is_some(), "{reply}");
    let (code, reply) = push(&node, &resource_change("other")).await;
    assert_eq!(code, 200, "{reply}");
    assert!(
        reply["ignored"]
            .as_str()
            .is_some_and(|r| r.contains("--stack-allow")),
        "{reply}"
    );

    // Allowed stacks: the canonical topic (region left out when it is the default).
    let (code, reply) = push(&node, &good).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["topic"], "stack:app-one");
    let regional = event("CloudFormation Stack Status Change", "eu-west-1", "app-two");
    let (code, reply) = push(&node, &regional).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(
        reply,
        json!({"stack": "app-two", "region": "eu-west-1", "topic": "stack:eu-west-1:app-two"})
    );
}

#[tokio::test]
async fn a_push_while_the_backplane_is_down_is_503_then_accepted() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let fake = FakeCfn::start(vec![]).await;
    let node = server(&fake.endpoint, &["--redis-url", &url]).await;
    redis.stop();
    tokio::time::timeout(WAIT, async {
        while node.get("/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("readyz never reported the outage");
    let (code, body) = push(&node, &resource_change("down")).await;
    assert_eq!(code, 503, "{body}");
    // EventBridge retries a 503; once Redis is back the retry is accepted.
    redis.resume().await;
    tokio::time::timeout(WAIT, async {
        loop {
            match push(&node, &resource_change("down")).await {
                (202, _) => return,
                (503, _) => tokio::time::sleep(Duration::from_millis(50)).await,
                (code, body) => panic!("{code}: {body}"),
            }
        }
    })
    .await
    .expect("the push was never accepted after Redis came back");
}
