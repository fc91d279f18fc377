//! The hub's topic policy: ACLs, reserved `stack:*`, caps.
//!
//! Findings 3, 5, 6, 10, 13, 14, 16 and 22 of the security review, each against
//! the real binary: the rule is enforced once, in the hub's topic policy, so every
//! dialect gets it (the dialect table in [`super::dialects`] checks the ones that a
//! socket can reach on all four endpoints).

use futures_util::StreamExt;
use serde_json::{json, Value};
use stackpulse_protocol::ServerMessage;
use stackpulse_testkit::RedisServer;

use super::cfn_support::fake_cfn::FakeCfn;
use super::cfn_support::{slow_stack, AWS_ENV};
use super::common::tokens::*;
use super::common::*;
use super::dialects::{Conn, Dialect, Reply};

/// A token for `sub` in `groups`.
fn token(sub: &str, groups: &[&str]) -> String {
    sign(&id_claims(sub, groups))
}

/// Publishes `body` with the test publisher key through `server`.
async fn publish(server: &Server, topic: &str, acl: Option<Value>) -> (u16, Value) {
    let mut body = json!({"type":"deployment.status","deployment_id":topic,
        "data":{"status":"deploying","secret":"db-password=hunter2"}});
    if let Some(acl) = acl {
        body["acl"] = acl;
    }
    server.publish_raw(&body).await
}

/// Finding 3: an ACL attached by a later publish ends the subscriptions it does
/// not admit, at once, before they see the event that set it; on one node (memory)
/// and across nodes (Redis: the subscriber's node learns the ACL from the event).
#[tokio::test]
async fn f03_an_acl_published_after_subscribing_locks_out_live_subscribers() {
    let jwks = Jwks::serve("jwks.json").await;
    let redis = RedisServer::start().await;
    let url = redis.url();
    for mode in ["memory", "redis"] {
        let extra: Vec<&str> = match mode {
            "memory" => vec![],
            _ => vec!["--redis-url", &url],
        };
        let publisher = server_with(&jwks, &extra).await;
        let reader_node = match mode {
            "memory" => None,
            _ => Some(server_with(&jwks, &extra).await),
        };
        let reader = reader_node.as_ref().unwrap_or(&publisher);
        let topic = format!("alice-private-{mode}");
        let mut eve = reader.connect_as(&token("eve", &[])).await;
        let mut alice = reader.connect_as(&token("alice", &[])).await;
        for c in [&mut eve, &mut alice] {
            c.subscribe(&topic, None, None).await.expect("subscribe");
            assert_eq!(subscribed(c).await.0, 0, "{mode}: no ACL yet");
        }
        let (code, body) = publish(&publisher, &topic, Some(json!({"owner":"alice"}))).await;
        assert_eq!(code, 202, "{body}");
        let (code, body) = publish(&publisher, &topic, None).await;
        assert_eq!(code, 202, "{body}");

        assert_eq!(next_event(&mut alice).await.seq, 1, "{mode}");
        assert_eq!(next_event(&mut alice).await.seq, 2, "{mode}");
        match next_control(&mut eve).await {
            ServerMessage::Error {
                code,
                message,
                deployment_id,
            } => {
                assert_eq!(code, 403, "{mode}");
                assert_eq!(message, format!("Forbidden: {topic}"));
                assert_eq!(deployment_id.as_deref(), Some(topic.as_str()));
            }
            other => panic!("{mode}: eve must get 403 before any event, got {other:?}"),
        }
        // The subscription ended: the connection stays usable and gets nothing more
        // of the topic (the next frame eve sees is the reply to her ping).
        eve.ping().await.expect("ping");
        assert!(
            matches!(next_control(&mut eve).await, ServerMessage::Pong { .. }),
            "{mode}: nothing of {topic} after the 403"
        );
        // A fresh subscribe is refused the same way.
        eve.subscribe(&topic, None, None).await.expect("send");
        assert_eq!(error(&mut eve).await.0, 403, "{mode}");
    }
}

/// Finding 6: subscribing to names nobody published to leaves no state behind,
/// in memory and in Redis; `--max-topics` caps what a node watches.
#[tokio::test]
async fn f06_never_published_names_leave_nothing_and_topics_are_capped() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let memory = Server::start(&["--max-topics", "3"]).await;
    let mut c = memory.connect().await;
    for round in 0..20 {
        let topic = format!("junk-{round}");
        c.subscribe(&topic, None, None).await.expect("send");
        let (seq, _, _) = subscribed(&mut c).await;
        assert_eq!(seq, 0);
        c.unsubscribe(&topic).await.expect("send");
        assert!(matches!(
            next_control(&mut c).await,
            ServerMessage::Unsubscribed { .. }
        ));
    }
    assert_eq!(memory.metric("stackpulse_topics").await, 0.0);
    for topic in ["a", "b", "c"] {
        c.subscribe(topic, None, None).await.expect("send");
        subscribed(&mut c).await;
    }
    c.subscribe("d", None, None).await.expect("send");
    let (code, message) = error(&mut c).await;
    assert_eq!(code, 503);
    assert!(message.contains("--max-topics 3"), "{message}");

    let node = Server::start(&["--redis-url", &url]).await;
    let mut c = node.connect().await;
    for round in 0..20 {
        let topic = format!("junk-{round}");
        c.subscribe(&topic, None, None).await.expect("send");
        subscribed(&mut c).await;
        c.unsubscribe(&topic).await.expect("send");
        next_control(&mut c).await;
    }
    // A subscribe to a name nobody published to fixes only its epoch, for 10
    // minutes, not for the 24 h history retention.
    let longest = redis
        .command(&[
            "EVAL",
            "local m = 0 for _, k in ipairs(redis.call('KEYS', 'sp:{junk*')) do \
             local t = redis.call('PTTL', k) if t < 0 then return -1 end \
             if t > m then m = t end end return m",
            "0",
        ])
        .await;
    let longest: i64 = longest
        .as_deref()
        .and_then(|s| s.trim_start_matches(':').parse().ok())
        .expect("PTTL");
    assert!(
        (0..=600_000).contains(&longest),
        "never-published topics expire within 10 minutes on Redis: {longest} ms"
    );
    // A topic is born at its first publish, and a subscriber that saw it unborn
    // gets its first event.
    c.subscribe("born", None, None).await.expect("send");
    subscribed(&mut c).await;
    node.publish("born", "deploying").await;
    assert_eq!(next_event(&mut c).await.seq, 1);
}

/// Findings 5 and 10: pollers are capped per node (`--max-pollers`); stack names
/// and regions follow AWS's grammar; `/metrics` has no per-topic series.
#[tokio::test]
async fn f05_f10_pollers_are_capped_and_regions_checked() {
    let fake = FakeCfn::start(vec![
        slow_stack("one", 50),
        slow_stack("two", 50),
        slow_stack("three", 50),
    ])
    .await;
    let server = Server::spawn(
        &[
            "--publisher-key",
            KEY,
            "--aws-endpoint-url",
            &fake.endpoint,
            "--aws-region",
            "us-east-1",
            "--poll-interval",
            "0.05",
            "--max-pollers",
            "2",
        ],
        AWS_ENV,
    )
    .await;
    let mut c = server.connect().await;
    for stack in ["one", "two"] {
        c.subscribe(&format!("stack:{stack}"), None, None)
            .await
            .expect("send");
        subscribed(&mut c).await;
    }
    c.subscribe("stack:three", None, None).await.expect("send");
    let (code, message) = loop {
        // Events of the two tracked stacks may come first.
        match next(&mut c).await {
            stackpulse::client::Frame::Control(ServerMessage::Error { code, message, .. }) => {
                break (code, message)
            }
            _ => continue,
        }
    };
    assert_eq!(code, 503);
    assert!(message.contains("--max-pollers 2"), "{message}");
    assert_eq!(server.metric("stackpulse_tracking_pollers").await, 2.0);

    for bad in ["stack:zz-1-region:s", "stack:us-east-1:one", "stack:a_b"] {
        c.subscribe(bad, None, None).await.expect("send");
        let (code, message) = loop {
            match next(&mut c).await {
                stackpulse::client::Frame::Control(ServerMessage::Error {
                    code, message, ..
                }) => break (code, message),
                _ => continue,
            }
        };
        assert_eq!(code, 400, "{bad}: {message}");
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        !metrics.contains("topic=\""),
        "no per-topic label on /metrics"
    );
}

/// Findings 13 and 14: `stack:` topics are read by `--stack-reader-group` (and
/// admins) only, for the stacks `--stack-allow` names; publishers cannot write
/// them, through the publish API or the GraphQL mutation.
#[tokio::test]
async fn f13_f14_stack_topics_have_readers_and_one_writer() {
    let jwks = Jwks::serve("jwks.json").await;
    let fake = FakeCfn::start(vec![slow_stack("prod-db", 50), slow_stack("dev-db", 50)]).await;
    let server = {
        let mut args = vec![
            "--jwt-issuer",
            ISSUER,
            "--jwks-url",
            &jwks.url,
            "--cognito-client-id",
            CLIENT,
            "--jwt-leeway",
            "0",
            "--aws-endpoint-url",
            &fake.endpoint,
            "--aws-region",
            "us-east-1",
            "--stack-reader-group",
            "ops",
            "--stack-allow",
            "prod-*",
            "--publisher-key",
            KEY,
        ];
        args.extend_from_slice(&["--poll-interval", "0.05"]);
        Server::spawn(&args, AWS_ENV).await
    };
    let mut eve = server.connect_as(&token("eve", &[])).await;
    eve.subscribe("stack:prod-db", None, None)
        .await
        .expect("send");
    assert_eq!(
        error(&mut eve).await,
        (403, "Forbidden: stack:prod-db".to_string())
    );
    let mut ops = server.connect_as(&token("olga", &["ops"])).await;
    ops.subscribe("stack:dev-db", None, None)
        .await
        .expect("send");
    assert_eq!(
        error(&mut ops).await,
        (403, "Forbidden: stack:dev-db".to_string()),
        "--stack-allow prod-* excludes dev-db"
    );
    assert_eq!(
        server.metric("stackpulse_tracking_pollers").await,
        0.0,
        "refused readers start no poller"
    );
    ops.subscribe("stack:prod-db", None, None)
        .await
        .expect("send");
    subscribed(&mut ops).await;

    let (code, body) = server
        .publish_raw(
            &json!({"type":"stack.deployed","deployment_id":"stack:prod-db",
            "data":{"stack_name":"prod-db"}}),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["message"], "stack: topics are written by the tracker");

    let resp = server
        .http
        .post(server.url("/graphql"))
        .header("x-api-key", KEY)
        .json(&json!({
            "query": "mutation { publishDeploymentUpdate(deployment_id: \"stack:prod-db\", status: \"deployed\") { seq } }"
        }))
        .send()
        .await
        .expect("POST /graphql");
    let body: Value = resp.json().await.expect("json");
    let error = &body["errors"][0];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("stack: topics are written by the tracker")),
        "{body}"
    );
}

/// Finding 16: on Redis, a `since` beyond 1e14 is an unrecovered resume, not a
/// 503 carrying Redis's error text.
#[tokio::test]
async fn f16_a_huge_since_on_redis_is_not_recovered() {
    let redis = RedisServer::start().await;
    let node = Server::start(&["--redis-url", &redis.url()]).await;
    node.publish("D-huge", "deploying").await;
    let mut c = node.connect().await;
    c.subscribe("D-huge", Some(100_000_000_000_000), None)
        .await
        .expect("send");
    let (seq, _, recovered) = subscribed(&mut c).await;
    assert_eq!((seq, recovered), (1, false));
}

/// Finding 9 (publish side) and 21: an event over `--max-event-bytes` is refused
/// with 413 and uses no seq; a topic whose snapshot would be larger stays
/// subscribable (the snapshot is cut to the budget).
#[tokio::test]
async fn f09_f21_event_and_snapshot_sizes_are_bounded() {
    let server = Server::start(&["--max-event-bytes", "65536"]).await;
    let (code, body) = server
        .publish_raw(&json!({"type":"log.created","deployment_id":"big",
            "data":{"level":"info","message":"x".repeat(70_000)}}))
        .await;
    assert_eq!(code, 413, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("--max-event-bytes")));
    for _ in 0..20 {
        let (code, body) = server
            .publish_raw(&json!({"type":"log.created","deployment_id":"big",
                "data":{"level":"info","message":"y".repeat(40_000)}}))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    let mut c = server.connect().await;
    c.subscribe("big", None, None).await.expect("send");
    let (seq, _, _) = subscribed(&mut c).await;
    assert_eq!(seq, 20, "the refused event used no seq");
    match next(&mut c).await {
        stackpulse::client::Frame::Event(snapshot) => {
            assert_eq!(snapshot.event_type, "deployment.snapshot");
            assert_eq!(snapshot.data["truncated"], true);
        }
        other => panic!("expected the snapshot, got {other:?}"),
    }
}

/// The next frame of a GraphQL or `/ws` subscription that is not a keep-alive:
/// `Err(message)` for an error, `Ok(frame)` for anything else (data, `next`).
async fn first_answer(conn: &mut Conn) -> Result<Value, String> {
    let v = conn
        .recv()
        .await
        .map_err(|code| format!("closed {code:?}"))?;
    let errors = match v["type"].as_str().unwrap_or_default() {
        "error" if conn.dialect == Dialect::Ws => {
            return Err(v["message"].as_str().unwrap_or_default().to_owned())
        }
        "error" if conn.dialect == Dialect::AppSync => v["payload"]["errors"].clone(),
        "error" => v["payload"].clone(),
        "next" if v["payload"]["errors"].is_array() => v["payload"]["errors"].clone(),
        _ => return Ok(v),
    };
    Err(errors[0]["message"].as_str().unwrap_or_default().to_owned())
}

/// Finding 3 on every dialect that can hold an ACL'd topic (a canvas socket holds
/// a `stack:` topic, which never has an ACL): the event that sets an ACL excluding
/// the subscriber is never delivered to it; it gets the dialect's 403 instead.
#[tokio::test]
async fn f03_on_every_dialect_an_acl_change_ends_the_subscription() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let eve = token("eve", &[]);
    for dialect in [Dialect::Ws, Dialect::AppSync, Dialect::TransportWs] {
        let topic = format!("private-{dialect:?}");
        server.publish(&topic, "open").await;
        let mut conn = dialect.connect(&server, Some(&eve)).await;
        conn.subscribe(&topic).await;
        assert_eq!(conn.reply().await, Reply::Ok, "{dialect:?}");
        if dialect == Dialect::AppSync {
            // AppSync sends the replayed event after start_ack.
            let replay = first_answer(&mut conn).await.expect("the replayed event");
            assert_eq!(replay["type"], "data", "{dialect:?}: {replay}");
        }
        if dialect == Dialect::Ws {
            let snapshot = first_answer(&mut conn).await.expect("snapshot");
            assert_eq!(snapshot["type"], "deployment.snapshot", "{snapshot}");
        }
        let (code, body) = publish(&server, &topic, Some(json!({"owner": "alice"}))).await;
        assert_eq!(code, 202, "{body}");
        match first_answer(&mut conn).await {
            Err(message) => assert!(
                message.contains("Forbidden"),
                "{dialect:?}: the 403 names the cause: {message}"
            ),
            Ok(frame) => panic!("{dialect:?}: got {frame} instead of a 403"),
        }
    }
}

/// Findings 13 and 22 on every dialect: the default region spelled out is refused
/// (one stack, one topic, one poller), and so is a stack `--stack-allow` excludes.
#[tokio::test]
async fn f13_f22_stack_names_are_checked_on_every_dialect() {
    let server = Server::spawn(
        &[
            "--publisher-key",
            KEY,
            "--aws-endpoint-url",
            "http://127.0.0.1:9",
            "--aws-region",
            "us-east-1",
            "--stack-allow",
            "prod-*",
        ],
        AWS_ENV,
    )
    .await;
    for dialect in [Dialect::Ws, Dialect::AppSync, Dialect::TransportWs] {
        let mut conn = dialect.connect(&server, None).await;
        conn.subscribe("stack:us-east-1:prod-db").await;
        match conn.reply().await {
            Reply::Error(m) => assert!(m.contains("Use stack:prod-db"), "{dialect:?}: {m}"),
            other => panic!("{dialect:?}: {other:?}"),
        }
        conn.subscribe("stack:dev-db").await;
        match conn.reply().await {
            Reply::Error(m) => assert!(
                m.contains("Forbidden") || m.contains("Not Authorized"),
                "{dialect:?}: {m}"
            ),
            other => panic!("{dialect:?}: {other:?}"),
        }
    }
    // The canvas socket names its stack in the path: same rule.
    let url = format!("ws://{}/canvas/deploy/track/dev-db", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("canvas");
    let mut conn_error = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == "error" {
                conn_error = Some(v);
                break;
            }
        }
    }
    let error = conn_error.expect("an error frame");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("Forbidden: stack:dev-db")),
        "{error}"
    );
    assert_eq!(error["retrying"], false);
    assert_eq!(
        server.metric("stackpulse_tracking_pollers").await,
        0.0,
        "no refused name started a poller"
    );
}

/// Finding 17 (groups): an in-band `auth` with a fresh token whose groups no longer
/// admit an ACL'd subscription ends that subscription with a 403; the others stay.
#[tokio::test]
async fn f17_a_refreshed_token_without_the_group_loses_the_groups_topics() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let (code, body) = publish(&server, "ops-only", Some(json!({"groups": ["ops"]}))).await;
    assert_eq!(code, 202, "{body}");
    server.publish("open-topic", "deploying").await;
    let mut olga = server.connect_as(&token("olga", &["ops"])).await;
    for topic in ["ops-only", "open-topic"] {
        olga.subscribe(topic, Some(1), None).await.expect("send");
        assert_eq!(subscribed(&mut olga).await.0, 1, "{topic}");
    }
    let refreshed = token("olga", &[]);
    olga.send_text(&json!({"action": "auth", "token": refreshed}).to_string())
        .await
        .expect("send");
    let mut forbidden = None;
    let mut authenticated = false;
    while forbidden.is_none() || !authenticated {
        match next_control(&mut olga).await {
            ServerMessage::Authenticated { .. } => authenticated = true,
            ServerMessage::Error {
                code,
                deployment_id,
                ..
            } => forbidden = Some((code, deployment_id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(forbidden, Some((403, Some("ops-only".to_string()))));
    // The open topic is still delivered.
    server.publish("open-topic", "deployed").await;
    assert_eq!(next_event(&mut olga).await.deployment_id, "open-topic");
}
