//! The AWS call budget (`--aws-max-rps`) through the real server binary: two nodes
//! sharing one Redis stay within one budget together, and the tracking metrics
//! (calls by API and region, push wake-ups, detection delay) appear on `/metrics`.
//!
//! The scripted endpoint records when each request arrived; the budget is checked
//! on those arrival times, per sliding one-second window. Slots are spaced exactly
//! `1 / max_rps` apart on Redis's clock, so a window holds at most `max_rps` of
//! them; a request reaches the endpoint a little after its slot (the Redis answer,
//! the HTTP request), which may let one more into a window: the bound checked is
//! `max_rps + 1`.

mod cfn_support;
mod common;

use std::time::{Duration, Instant};

use cfn_support::fake_cfn::FakeCfn;
use cfn_support::{slow_stack, AWS_ENV};
use common::*;
use serde_json::json;
use stackpulse::client::{Client, Frame};
use stackpulse_testkit::RedisServer;

async fn node(endpoint: &str, extra: &[&str]) -> Server {
    let mut args = cfn_support::aws_flags(endpoint, &["--publisher-key", KEY]);
    args.extend_from_slice(extra);
    Server::spawn(&args, AWS_ENV).await
}

/// Subscribes to `stack:<name>` from the start.
async fn watch(server: &Server, stack: &str) -> Client {
    let mut c = server.connect().await;
    c.subscribe(&format!("stack:{stack}"), Some(0), None)
        .await
        .expect("subscribe");
    c
}

/// Events up to `stack.deployed`; returns how many `resource.status` there were
/// (each event id once) and whether a `tracker.error` came.
async fn until_deployed(c: &mut Client) -> (usize, bool) {
    until(c, usize::MAX).await
}

/// Events up to `stack.deployed` or the `n`th `resource.status`: see
/// [`until_deployed`].
async fn until(c: &mut Client, n: usize) -> (usize, bool) {
    let mut ids = std::collections::HashSet::new();
    let mut errors = false;
    loop {
        if ids.len() >= n {
            return (ids.len(), errors);
        }
        match tokio::time::timeout(WAIT * 4, c.next())
            .await
            .expect("timed out waiting for the stack")
        {
            Some(Ok(Frame::Event(e))) => match e.event_type.as_str() {
                "resource.status" => {
                    let id = e.data["eventId"].as_str().expect("eventId").to_owned();
                    assert!(ids.insert(id.clone()), "event {id} twice");
                }
                "tracker.error" => errors = true,
                "stack.deployed" | "stack.failed" => return (ids.len(), errors),
                _ => {}
            },
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The most requests that arrived within any one-second window.
fn busiest_second(times: &[Instant]) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

#[tokio::test]
async fn two_nodes_share_one_budget() {
    const RPS: usize = 8;
    const STACKS: usize = 8;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let names: Vec<String> = (0..STACKS).map(|i| format!("shared{i}")).collect();
    let fake = FakeCfn::start(names.iter().map(|n| slow_stack(n, 3)).collect()).await;
    let rps = RPS.to_string();
    let flags = [
        "--redis-url",
        &url,
        "--poll-interval",
        "0.05",
        "--aws-max-rps",
        &rps,
    ];
    let a = node(&fake.endpoint, &flags).await;
    let b = node(&fake.endpoint, &flags).await;

    // Half of the stacks polled by each node, all wanting ~40 requests a second.
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        clients.push(watch(server, name).await);
    }
    for c in &mut clients {
        let (resources, errors) = until_deployed(c).await;
        assert_eq!(resources, 6, "every stack event once");
        assert!(!errors, "no error reached the client");
    }

    let times = fake.world().request_times.clone();
    let most = busiest_second(&times);
    let span = times
        .last()
        .zip(times.first())
        .map_or(Duration::ZERO, |(l, f)| *l - *f);
    let (calls_a, calls_b) = (
        a.metric("stackpulse_tracking_aws_calls_total").await,
        b.metric("stackpulse_tracking_aws_calls_total").await,
    );
    eprintln!(
        "two nodes, --aws-max-rps {RPS}: {} requests in {span:?} ({calls_a} from a, {calls_b} \
         from b), at most {most} in one second",
        times.len()
    );
    assert!(calls_a > 0.0 && calls_b > 0.0, "both nodes polled");
    assert!(
        (calls_a + calls_b) as usize >= times.len(),
        "every request the endpoint saw was counted by a node (finished pollers may have \
         made more since)"
    );
    // Two nodes each within RPS alone would reach 2 × RPS in a second. The slots are
    // spaced by Redis's clock, but requests reach the endpoint with this loaded
    // machine's scheduling jitter, so a second may catch a slot early or late.
    assert!(
        most <= RPS + RPS / 2,
        "{most} requests within one second (budget {RPS} for both nodes)"
    );
    // Each node alone would have been allowed RPS: together they were held to it
    // (the whole run took at least as long as the budget says).
    assert!(
        span >= Duration::from_secs_f64((times.len() - 1) as f64 / RPS as f64 * 0.9),
        "{} requests in {span:?}",
        times.len()
    );
}

#[tokio::test]
async fn tracking_metrics_appear_on_metrics() {
    let fake = FakeCfn::start(vec![slow_stack("measured", 2)]).await;
    let server = node(
        &fake.endpoint,
        &[
            "--poll-interval",
            "0.05",
            "--push-poll-interval",
            "0.05",
            "--aws-max-rps",
            "100",
        ],
    )
    .await;
    let mut c = watch(&server, "measured").await;
    // The poller runs (its first events came); a push for the stack.
    let (first, _) = until(&mut c, 2).await;
    let arn = cfn_support::fake_cfn::arn("measured");
    let push = json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation",
        "account": "123456789012",
        "time": "2026-12-03T09:00:00Z",
        "region": "us-east-1",
        "resources": [arn],
        "detail": {
            "stack-id": arn,
            "logical-resource-id": "measured",
            "physical-resource-id": arn,
            "status-details": {"status": "CREATE_IN_PROGRESS", "status-reason": "", "detailed-status": "x"},
            "resource-type": "AWS::CloudFormation::Stack",
            "client-request-token": "tok"
        }
    });
    let resp = server
        .http
        .post(server.url("/v1/ingest/eventbridge"))
        .bearer_auth(KEY)
        .json(&push)
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 202);
    let (rest, _) = until_deployed(&mut c).await;
    assert_eq!(first + rest, 6);

    let (_, text) = server.get("/metrics").await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                let (n, v) = l.rsplit_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    };
    let stacks = value(
        "stackpulse_tracking_aws_api_calls_total{api=\"DescribeStacks\",region=\"us-east-1\"}",
    );
    let events = value(
        "stackpulse_tracking_aws_api_calls_total{api=\"DescribeStackEvents\",region=\"us-east-1\"}",
    );
    let template =
        value("stackpulse_tracking_aws_api_calls_total{api=\"GetTemplate\",region=\"us-east-1\"}");
    let total = value("stackpulse_tracking_aws_calls_total");
    assert!(stacks >= 3.0, "DescribeStacks counted: {stacks}\n{text}");
    assert!(events >= 1.0, "DescribeStackEvents counted: {events}");
    assert_eq!(template, 1.0, "one GetTemplate");
    assert!(
        stacks + events + template <= total,
        "by API ≤ total ({total})"
    );
    assert_eq!(
        value("stackpulse_tracking_push_wakeups_total{poller=\"here\"}"),
        1.0
    );
    // Four events found after the first poll: their detection delay is recorded.
    assert!(
        value("stackpulse_tracking_detection_delay_seconds_count") >= 4.0,
        "detection delay recorded\n{text}"
    );
    assert!(text.contains("stackpulse_tracking_detection_delay_seconds_bucket{le=\"0.5\"}"));
    assert!(text.contains("stackpulse_tracking_aws_budget_wait_seconds_bucket"));
}

/// The Redis key of the budget is per account and region: a node's calls before
/// it knows its account go to `sp:budget:<region>`, then to
/// `sp:budget:<account>/<region>`; a node of another account in the same region
/// reserves from its own key, so one account's full budget does not hold the
/// other's back, while a second node of the same account shares it.
#[tokio::test]
async fn redis_budget_keys_are_per_account_and_region() {
    use stackpulse::tracking::budget::{Budget, Slots};
    use stackpulse_cfn::aws::CallScope;

    let redis = RedisServer::start().await;
    let url = redis.url();
    let node = || Budget::new(10.0, Slots::redis(&url).expect("redis slots"));
    let scope = |account: Option<&str>| CallScope {
        account: account.map(str::to_owned),
        region: "eu-west-1".into(),
    };
    let exists = |key: &'static str| {
        let redis = &redis;
        async move { redis.command(&["EXISTS", key]).await }
    };
    let (one, two) = ("111111111111", "222222222222");

    let a = node();
    // Before the first ARN: the region-only lane.
    a.acquire(&scope(None), "s1").await;
    assert_eq!(exists("sp:budget:eu-west-1").await.as_deref(), Some(":1"));
    assert_eq!(a.redis_key("eu-west-1"), "sp:budget:eu-west-1");
    // The first ARN tells the account: from then on the account's key.
    a.acquire(&scope(Some(one)), "s1").await;
    assert_eq!(
        a.redis_key("eu-west-1"),
        format!("sp:budget:{one}/eu-west-1")
    );
    assert_eq!(
        exists("sp:budget:111111111111/eu-west-1").await.as_deref(),
        Some(":1")
    );

    // Account one's budget is taken for the next hour (its next slot is then).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    let later = (now + 3_600_000_000).to_string();
    let key = format!("sp:budget:{one}/eu-west-1");
    assert_eq!(
        redis.command(&["SET", &key, &later]).await.as_deref(),
        Some("+OK")
    );
    // A node of account two in the same region is not held back by it...
    let b = node();
    tokio::time::timeout(WAIT, async {
        b.acquire(&scope(None), "t1").await;
        b.acquire(&scope(Some(two)), "t1").await;
        b.acquire(&scope(Some(two)), "t1").await;
    })
    .await
    .expect("account two has a budget of its own");
    assert_eq!(
        b.redis_key("eu-west-1"),
        format!("sp:budget:{two}/eu-west-1")
    );
    // ...while a second node of account one shares account one's key and waits.
    let c = node();
    let account_one = scope(Some(one));
    let held = tokio::time::timeout(Duration::from_secs(2), c.acquire(&account_one, "u1"));
    assert!(
        held.await.is_err(),
        "a node of account one waits for account one's next slot (an hour away)"
    );
}
