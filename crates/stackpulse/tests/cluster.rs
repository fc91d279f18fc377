//! Scale-out on Redis: several real `stackpulse serve` processes sharing one real
//! `redis-server` (started on a free port by the test kit).

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};
use stackpulse::client::{Client, Frame};
use stackpulse_testkit::RedisServer;

async fn cluster(redis: &RedisServer, n: usize) -> Vec<Server> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Server::start(&["--redis-url", &url]).await);
    }
    for node in &nodes {
        wait_ready(node).await;
    }
    nodes
}

async fn wait_ready(node: &Server) {
    tokio::time::timeout(WAIT, async {
        while node.get("/readyz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node never became ready");
}

/// Publishes through `node`, retrying while the backplane is unavailable; returns the seq.
async fn publish_retrying(node: &Server, topic: &str, n: u64) -> u64 {
    let body =
        json!({"type":"deployment.status","deployment_id":topic,"data":{"status":format!("s{n}")}});
    tokio::time::timeout(WAIT * 2, async {
        loop {
            let (code, resp) = node.publish_raw(&body).await;
            match code {
                202 => return resp["seq"].as_u64().expect("seq"),
                503 => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                other => panic!("publish answered {other}: {resp}"),
            }
        }
    })
    .await
    .expect("publish never succeeded")
}

/// Reads events until `last` arrives; returns the seqs (panics on a gap or dup).
async fn collect_until(c: &mut Client, topic: &str, last: u64) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::new();
    while seqs.last().copied() != Some(last) {
        match next(c).await {
            Frame::Event(e) if e.deployment_id == topic && !e.is_snapshot() => {
                let expected = seqs.last().map_or(1, |s| s + 1);
                assert_eq!(e.seq, expected, "gap or duplicate after {:?}", seqs.last());
                seqs.push(e.seq);
            }
            Frame::Closed(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    seqs
}

async fn subscribe(node: &Server, topic: &str) -> Client {
    let mut c = node.connect().await;
    c.subscribe(topic, None, None).await.expect("send");
    subscribed(&mut c).await;
    c
}

#[tokio::test]
async fn three_nodes_every_client_gets_every_event_once_in_order() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 3).await;
    let mut clients = Vec::new();
    for i in 0..9 {
        let topic = if i % 2 == 0 { "even" } else { "odd" };
        clients.push((topic, subscribe(&nodes[i % 3], topic).await));
    }
    // Publishers on all three nodes, concurrently, into both topics.
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let http = node.http.clone();
        let url = node.url("/v1/events");
        publishers.push(tokio::spawn(async move {
            let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
            for n in 0..40 {
                let topic = if n % 2 == 0 { "even" } else { "odd" };
                let resp = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&json!({"type":"deployment.status","deployment_id":topic,"data":{"status":format!("n{i}-{n}")}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status().as_u16(), 202);
                let v: Value = resp.json().await.expect("json");
                seqs.entry(topic).or_default().push(v["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all: HashMap<&str, Vec<u64>> = HashMap::new();
    for p in publishers {
        for (topic, seqs) in p.await.expect("publisher") {
            all.entry(topic).or_default().extend(seqs);
        }
    }
    for (topic, mut seqs) in all {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=60).collect::<Vec<_>>(),
            "{topic}: seqs contiguous across nodes"
        );
    }
    for (topic, mut c) in clients {
        assert_eq!(collect_until(&mut c, topic, 60).await.len(), 60);
    }
}

#[tokio::test]
async fn a_client_moves_node_mid_stream_and_resumes_without_a_gap() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut c = subscribe(&nodes[0], "M").await;
    for n in 1..=30 {
        publish_retrying(&nodes[n % 2], "M", n as u64).await;
    }
    let first = collect_until(&mut c, "M", 30).await;
    let epoch = match c.positions().get("M") {
        Some(p) => p.epoch.clone(),
        None => None,
    };
    drop(c);
    // Published while the client is away.
    for n in 31..=45 {
        publish_retrying(&nodes[0], "M", n).await;
    }
    let mut moved = nodes[1].connect().await;
    moved
        .subscribe("M", Some(30), epoch.as_deref())
        .await
        .expect("send");
    let (seq, _, recovered) = subscribed(&mut moved).await;
    assert!(recovered, "the other node resumes from the shared history");
    assert!(seq >= 45);
    for n in 46..=50 {
        publish_retrying(&nodes[1], "M", n).await;
    }
    let mut rest: Vec<u64> = Vec::new();
    while rest.last().copied() != Some(50) {
        if let Frame::Event(e) = next(&mut moved).await {
            rest.push(e.seq);
        }
    }
    assert_eq!(first, (1..=30).collect::<Vec<_>>());
    assert_eq!(rest, (31..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn killed_pubsub_connections_are_repaired_from_the_stream() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut c = subscribe(&nodes[1], "K").await;
    for n in 1..=10 {
        publish_retrying(&nodes[0], "K", n).await;
    }
    // Every node's pub/sub link is cut; publishing goes on meanwhile.
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        killed.is_some_and(|r| r.starts_with(':')),
        "CLIENT KILL answered"
    );
    for n in 11..=40 {
        publish_retrying(&nodes[0], "K", n).await;
    }
    assert_eq!(
        collect_until(&mut c, "K", 40).await,
        (1..=40).collect::<Vec<_>>()
    );
    assert!(
        nodes[1]
            .metric("stackpulse_subscription_repairs_total")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_redis_restart_mid_stream_is_survived() {
    let mut redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut a = subscribe(&nodes[0], "R").await;
    let mut b = subscribe(&nodes[1], "R").await;
    for n in 1..=10 {
        publish_retrying(&nodes[n % 2], "R", n as u64).await;
    }
    redis.stop();
    // Sockets stay up; the nodes say they are not ready; publishing is refused.
    tokio::time::timeout(WAIT, async {
        while nodes[0].get("/readyz").await.0 != 503 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("readyz never reported the outage");
    let (code, body) = nodes[0]
        .publish_raw(&json!({"type":"deployment.status","deployment_id":"R","data":{"status":"x"}}))
        .await;
    assert_eq!(code, 503, "{body}");
    redis.resume().await;
    for node in &nodes {
        wait_ready(node).await;
    }
    for n in 11..=30 {
        publish_retrying(&nodes[n % 2], "R", n as u64).await;
    }
    assert_eq!(
        collect_until(&mut a, "R", 30).await,
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        collect_until(&mut b, "R", 30).await,
        (1..=30).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn snapshots_and_topic_info_are_shared() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2).await;
    publish_retrying(&nodes[0], "S", 1).await;
    let (code, _) = nodes[0]
        .publish_raw(&json!({"type":"stack.deployed","deployment_id":"S","data":{"stack_name":"net","environment":"dev","duration_seconds":3,"resource_count":2}}))
        .await;
    assert_eq!(code, 202);
    // A late joiner on the other node gets the snapshot of both events.
    let mut c = nodes[1].connect().await;
    c.subscribe("S", None, None).await.expect("send");
    let (seq, _, _) = subscribed(&mut c).await;
    assert_eq!(seq, 2);
    let snap = next_event(&mut c).await;
    assert_eq!(
        (snap.event_type.as_str(), snap.seq),
        ("deployment.snapshot", 2)
    );
    assert_eq!(snap.data["stacks"]["net"]["status"], "deployed");
    assert_eq!(snap.data["status"], "s1");
    let (code, body) = nodes[1].get("/v1/topics/S").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["seq"], 2);
}

#[tokio::test]
async fn presence_counts_subscribers_on_every_node() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = Server::start(&["--redis-url", &url, "--presence-interval", "0.1"]).await;
    let b = Server::start(&["--redis-url", &url, "--presence-interval", "0.1"]).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    publish_retrying(&a, "P", 1).await;
    let _c1 = subscribe(&a, "P").await;
    let _c2 = subscribe(&b, "P").await;
    let _c3 = subscribe(&b, "P").await;
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = a.get("/v1/topics/P").await;
            let v: Value = serde_json::from_str(&body).expect("json");
            if v["subscribers"] == 3 && v["local_subscribers"] == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node a never saw the 3 subscribers of both nodes");
    assert!(a.metric("stackpulse_cluster_connections").await >= 3.0);
    assert_eq!(a.metric("stackpulse_cluster_nodes").await, 2.0);
}

async fn aws_calls(node: &Server) -> f64 {
    // One stack is tracked in this test: the node-wide count is its count.
    node.metric("stackpulse_tracking_aws_calls_total").await
}

/// A stack of `n` resources whose events appear one per poll (three busy polls
/// between them), then succeeds.
fn gradual_stack(name: &str, n: usize) -> stackpulse_testkit::fake_cfn::FakeStack {
    use stackpulse_testkit::fake_cfn::{FakeStack, Step};
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    for i in 0..n {
        let id = format!("R{i}");
        s.push(&id, "CREATE_IN_PROGRESS", "", 1 + 2 * i as i64);
        s.push(&id, "CREATE_COMPLETE", "", 2 + 2 * i as i64);
    }
    s.push(name, "CREATE_COMPLETE", "", 2 + 2 * n as i64);
    s.template_resources = n;
    s.visible = 1;
    let mut steps = Vec::new();
    for _ in 0..2 * n {
        steps.push(Step {
            reveal: vec![(name.to_string(), 1)],
            ..Step::default()
        });
        steps.extend(std::iter::repeat_n(Step::default(), 3));
    }
    steps.push(Step {
        reveal: vec![(name.to_string(), 1)],
        status: Some("CREATE_COMPLETE".into()),
        ..Step::default()
    });
    s.steps = steps.into();
    s
}

#[tokio::test]
async fn a_killed_poller_node_is_taken_over_without_loss_or_duplicates() {
    const RESOURCES: usize = 12;
    let redis = RedisServer::start().await;
    let fake =
        stackpulse_testkit::fake_cfn::FakeCfn::start(vec![gradual_stack("takeover", RESOURCES)])
            .await;
    let env: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_CONFIG_FILE", "/nonexistent/stackpulse-test-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/stackpulse-test-aws-credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let url = redis.url();
    let args = [
        "--publisher-key",
        KEY,
        "--redis-url",
        &url,
        "--aws-endpoint-url",
        &fake.endpoint,
        "--aws-region",
        "us-east-1",
        "--poll-interval",
        "0.05",
        "--poller-lease",
        "1",
    ];
    let mut nodes = vec![
        Server::spawn(&args, env).await,
        Server::spawn(&args, env).await,
    ];
    for node in &nodes {
        wait_ready(node).await;
    }
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        c.subscribe("stack:takeover", Some(0), None)
            .await
            .expect("send");
        subscribed(&mut c).await;
        clients.push(c);
    }
    // Some events flow (read by the first client, kept for the check below),
    // then the node holding the lease dies.
    let mut seen_ids = std::collections::HashSet::new();
    let mut warmup = Vec::new();
    while warmup
        .iter()
        .filter(|e: &&stackpulse_protocol::Event| e.event_type == "resource.status")
        .count()
        < 8
    {
        if let Frame::Event(e) = next(&mut clients[0]).await {
            if !e.is_snapshot() {
                warmup.push(e);
            }
        }
    }
    let holder = if aws_calls(&nodes[0]).await > 0.0 {
        0
    } else {
        1
    };
    assert!(
        aws_calls(&nodes[1 - holder]).await == 0.0,
        "only one node polls"
    );
    eprintln!("node {holder} holds the poller lease; killing it");
    let _ = nodes[holder].child.start_kill();
    let _ = nodes[holder].child.wait().await;
    let survivor = nodes.swap_remove(1 - holder);
    let mut client = clients.swap_remove(1 - holder);
    drop(clients);

    // The survivor's client gets the whole operation: every stack event once, in
    // seq order (the client checks the order), then the completion.
    // Either node may have won the lease: when the survivor is the first node,
    // its client already read the warm-up events.
    let mut pending: std::collections::VecDeque<_> = if holder == 1 {
        warmup.into()
    } else {
        Default::default()
    };
    let mut seqs = Vec::new();
    let mut resource_updates = Vec::new();
    loop {
        let frame = match pending.pop_front() {
            Some(e) => Frame::Event(e),
            None => next(&mut client).await,
        };
        match frame {
            Frame::Event(e) if !e.is_snapshot() => {
                seqs.push(e.seq);
                if e.event_type == "resource.status" {
                    let id = e.data["resource"]["logicalId"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let status = e.data["resource"]["status"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    assert!(
                        seen_ids.insert((id.clone(), status.clone())),
                        "duplicate {id} {status}"
                    );
                    resource_updates.push((id, status));
                }
                if e.event_type == "stack.deployed" {
                    break;
                }
                assert_ne!(e.event_type, "stack.failed");
            }
            Frame::Closed(c) => panic!("closed {c:?}"),
            _ => {}
        }
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(
        resource_updates.len(),
        2 * RESOURCES + 2,
        "every stack event once: {resource_updates:?}"
    );
    assert!(
        aws_calls(&survivor).await > 0.0,
        "the survivor took the poller over"
    );
    let describe_stacks = fake
        .world()
        .requests
        .iter()
        .filter(|(a, _)| a == "DescribeStacks")
        .count();
    let steps = 8 * RESOURCES + 1;
    assert!(
        describe_stacks <= steps + 20,
        "{describe_stacks} DescribeStacks for {steps} steps: one poller's rate"
    );
}

#[tokio::test]
async fn password_and_database_in_the_url() {
    let redis = RedisServer::start().await;
    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "requirepass", "s3cret"])
            .await
            .as_deref(),
        Some("+OK")
    );
    let good = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port);
    let bad = format!("redis://:wrong@127.0.0.1:{}/3", redis.port);
    let node = Server::start(&["--redis-url", &good]).await;
    wait_ready(&node).await;
    let mut c = subscribe(&node, "db3").await;
    publish_retrying(&node, "db3", 1).await;
    assert_eq!(collect_until(&mut c, "db3", 1).await, vec![1]);
    let refused = Server::start(&["--redis-url", &bad]).await;
    let (status, body) = refused.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (code, _) = refused
        .publish_raw(
            &json!({"type":"deployment.status","deployment_id":"db3","data":{"status":"x"}}),
        )
        .await;
    assert_eq!(code, 503);
    // An invalid URL is refused at start with the reason.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            "mysql://nope",
        ])
        .output()
        .await
        .expect("run");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --redis-url"));
}

struct NoDeliver;
impl stackpulse::hub::Deliver for NoDeliver {
    fn deliver(&self, _event: &std::sync::Arc<stackpulse::hub::StampedEvent>) {}
}

fn backplane(url: &str) -> std::sync::Arc<stackpulse::hub::redis::RedisBackplane> {
    let history = stackpulse::hub::HistoryConfig {
        max_events: 100,
        retention: std::time::Duration::from_secs(60),
        max_topics: 100,
        snapshot_budget: 262_144,
    };
    stackpulse::hub::redis::RedisBackplane::start(url, history, std::sync::Arc::new(NoDeliver))
        .expect("backplane")
}

/// A lease acquire that Redis executed but whose answer was lost (the connection
/// broke): the lease is not stranded until its TTL. Other nodes are still refused,
/// and the node that asked gets it when it asks again, with a new fencing token.
#[tokio::test]
async fn a_lease_whose_answer_was_lost_goes_to_the_node_that_asks_again() {
    use stackpulse::hub::Backplane;
    let redis = RedisServer::start().await;
    let proxy = common::lossy::LossyProxy::start(redis.port).await;
    let node = backplane(&format!("redis://127.0.0.1:{}/", proxy.port));
    let other = backplane(&redis.url());
    let ttl = std::time::Duration::from_secs(60);
    // Connected, and the lease script loaded in Redis.
    let warm = node
        .acquire_lease("warm-up", ttl)
        .await
        .expect("acquire")
        .expect("free lease");
    node.release_lease(&warm).await;

    proxy.lose_next_answer();
    let lost = node.acquire_lease("poll:stack:lost", ttl).await;
    assert!(lost.is_err(), "the answer was to be lost: {lost:?}");
    assert_eq!(
        redis
            .command(&["EXISTS", "sp:lease:{poll:stack:lost}"])
            .await
            .as_deref(),
        Some(":1"),
        "Redis took the lease"
    );
    assert_eq!(
        other
            .acquire_lease("poll:stack:lost", ttl)
            .await
            .expect("acquire"),
        None,
        "another node is refused"
    );
    let mut again = None;
    for _ in 0..50 {
        // The node's connection is re-established on the next command.
        match node.acquire_lease("poll:stack:lost", ttl).await {
            Ok(l) => {
                again = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let lease = again
        .expect("no answer from Redis again")
        .expect("the node that asked gets the lease");
    assert!(node.renew_lease(&lease, ttl).await.expect("renew"));
    // The claim is spent: asking once more, while holding it, is refused.
    assert_eq!(
        node.acquire_lease("poll:stack:lost", ttl)
            .await
            .expect("acquire"),
        None
    );
    node.release_lease(&lease).await;
    assert!(other
        .acquire_lease("poll:stack:lost", ttl)
        .await
        .expect("acquire")
        .is_some());
}
