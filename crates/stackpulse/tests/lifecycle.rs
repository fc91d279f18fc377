//! Limits, slow consumers, idle timeout, shutdown, publish API and operations,
//! against the real binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use stackpulse::client::{Client, Frame};
use stackpulse_protocol::ServerMessage;

// Multi-threaded, so the fast reader is not starved by the publisher on a loaded
// machine: the test is about the server, not about the test's own scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_others_keep_receiving() {
    const N: u64 = 600;
    // 64 queued messages of 32 KiB (2 MiB) per connection: far less than the
    // ~19 MiB published, far more than a reading client ever lags.
    let server = Server::start(&["--queue-size", "64"]).await;
    let mut slow = server.connect().await;
    slow.subscribe("S", None, None).await.expect("send");
    let mut fast = server.connect().await;
    fast.subscribe("S", None, None).await.expect("send");
    subscribed(&mut fast).await;
    // Wait until the slow subscription is live too (the topic shows 2 subscribers).
    loop {
        let (_, body) = server.get("/v1/topics/S").await;
        if serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["subscribers"].as_u64())
            == Some(2)
        {
            break;
        }
        tokio::task::yield_now().await;
    }

    // 600 events of 32 KiB: ~19 MiB, far more than the slow socket's buffers.
    let publisher = server.publish_in_background("S", N as usize, 32 * 1024);
    let mut seqs = Vec::new();
    while seqs.len() < N as usize {
        seqs.push(next_event(&mut fast).await.seq);
    }
    publisher.await.expect("publisher");
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());

    // The slow connection was closed: it is gone from the server, and what it
    // reads ends (with 4008 if the close frame made it into the socket).
    while server.metric("stackpulse_slow_consumer_closes_total").await < 1.0 {
        tokio::task::yield_now().await;
    }
    let mut received = 0u64;
    let code = loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("slow client never closed")
        {
            Some(Ok(Frame::Event(_))) => received += 1,
            Some(Ok(Frame::Control(_))) => {}
            Some(Ok(Frame::Closed(c))) => break c.map(|c| c.code),
            Some(Err(_)) | None => break None,
        }
    };
    assert!(
        received < N,
        "the slow client did not get everything: {received}"
    );
    if let Some(code) = code {
        assert_eq!(code, 4008);
    }
    assert_eq!(
        server.metric("stackpulse_slow_consumer_closes_total").await,
        1.0
    );
    assert!(server.metric("stackpulse_messages_dropped_total").await >= 1.0);
    assert_eq!(
        server.metric("stackpulse_connections").await,
        1.0,
        "only the fast client is left"
    );
}

#[tokio::test]
async fn subscription_limit_per_connection() {
    let server = Server::start(&["--max-subscriptions", "2"]).await;
    let mut c = server.connect().await;
    for t in ["a", "b"] {
        c.subscribe(t, None, None).await.expect("send");
        subscribed(&mut c).await;
    }
    c.subscribe("c", None, None).await.expect("send");
    match next_control(&mut c).await {
        ServerMessage::Error {
            code,
            message,
            deployment_id,
        } => {
            assert_eq!(code, 429);
            assert_eq!(message, "Too many subscriptions (limit 2 per connection)");
            assert_eq!(deployment_id.as_deref(), Some("c"));
        }
        other => panic!("{other:?}"),
    }
    // Re-subscribing to a topic already held is not a new subscription.
    c.subscribe("a", None, None).await.expect("send");
    subscribed(&mut c).await;
    c.unsubscribe("b").await.expect("send");
    next_control(&mut c).await;
    c.subscribe("c", None, None).await.expect("send");
    subscribed(&mut c).await;
}

#[tokio::test]
async fn connection_limit_refuses_with_503_before_upgrade() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let a = server.connect().await;
    let _b = server.connect().await;
    let err = match Client::connect(&server.ws_url(), None).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("third connection accepted"),
    };
    assert!(err.contains("503"), "{err}");
    // A plain HTTP look at the same refusal shows the reason.
    let resp = server.upgrade_request("/ws").send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["message"], "Server at connection limit (2)");
    assert!(
        server
            .metric("stackpulse_connections_refused_total{reason=\"limit\"}")
            .await
            >= 2.0
    );

    a.close().await;
    let reconnected = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = Client::connect(&server.ws_url(), None).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reconnected.is_ok(), "a freed place is reusable");
}

#[tokio::test]
async fn silent_clients_time_out_and_answering_clients_stay() {
    let server = Server::start(&["--idle-timeout", "0.5", "--ping-interval", "0.1"]).await;
    // This client reads, so its library answers the server's pings: it stays.
    let mut alive = server.connect().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), alive.next())
            .await
            .is_err(),
        "nothing but pings for three idle timeouts"
    );
    alive.ping().await.expect("send");
    assert!(matches!(
        next_control(&mut alive).await,
        ServerMessage::Pong { .. }
    ));

    // With pings far apart, a client that says nothing is closed with 4000.
    let server = Server::start(&["--idle-timeout", "0.3", "--ping-interval", "60"]).await;
    let mut silent = server.connect().await;
    assert_eq!(close_code(&mut silent).await, Some(4000));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits() {
    let mut server = Server::start(&[]).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("X", None, None).await.expect("send");
    subscribed(&mut a).await;
    server.sigterm();
    assert_eq!(close_code(&mut a).await, Some(1001));
    assert_eq!(close_code(&mut b).await, Some(1001));
    server.exits_cleanly().await;
}

#[tokio::test]
async fn publish_api_refuses_bad_credentials_and_bodies() {
    let server = Server::start(&[]).await;
    let url = server.url("/v1/events");
    let good = json!({"type":"deployment.status","deployment_id":"P","data":{"status":"x"}});

    let resp = server
        .http
        .post(&url)
        .json(&good)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("json");
    assert!(body["message"]
        .as_str()
        .expect("msg")
        .starts_with("Unauthorized: Missing publisher key"));

    let resp = server
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&good)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["message"], "Unauthorized: Invalid publisher key");

    for (body, want) in [
        (json!([]), "Body must be a JSON object"),
        (json!({"deployment_id":"P","data":{}}), "Missing type"),
        (
            json!({"type":"deployment.status","data":{"status":"x"}}),
            "Missing deployment_id",
        ),
        (
            json!({"type":"deployment.status","deployment_id":"P"}),
            "Missing data",
        ),
        (
            json!({"type":"deployment.status","deployment_id":"P","data":{}}),
            "Missing data.status for type deployment.status",
        ),
    ] {
        let (code, resp) = server.publish_raw(&body).await;
        assert_eq!(
            (code, resp["message"].as_str()),
            (400, Some(want)),
            "{body}"
        );
    }
    let resp = server
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert!(body["message"]
        .as_str()
        .expect("msg")
        .starts_with("Invalid JSON"));

    // None of the refused publishes used a seq.
    assert_eq!(server.publish("P", "first").await, 1);
    assert_eq!(server.publish("P", "second").await, 2);
}

#[tokio::test]
async fn without_a_configured_key_publishing_says_how_to_enable_it() {
    let server = Server::spawn(&[], &[]).await;
    let resp = server
        .http
        .post(server.url("/v1/events"))
        .bearer_auth("anything")
        .json(&json!({"type":"deployment.status","deployment_id":"P","data":{"status":"x"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("json");
    assert!(body["message"]
        .as_str()
        .expect("msg")
        .contains("--publisher-key"));
}

#[tokio::test]
async fn publisher_keys_from_the_environment() {
    let server = Server::spawn(&[], &[("STACKPULSE_PUBLISHER_KEYS", "k-one, k-two")]).await;
    let resp = server
        .http
        .post(server.url("/v1/events"))
        .bearer_auth("k-two")
        .json(&json!({"type":"deployment.status","deployment_id":"P","data":{"status":"x"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn operational_endpoints() {
    let server = Server::start(&[]).await;
    assert_eq!(
        server.get("/healthz").await,
        (200, r#"{"status":"ok"}"#.to_string())
    );
    assert_eq!(
        server.get("/readyz").await,
        (200, r#"{"status":"ready"}"#.to_string())
    );

    let (code, body) = server.get("/v1/topics/T").await;
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["message"],
        "Unknown topic: T"
    );

    let mut c = server.connect().await;
    c.subscribe("T", None, None).await.expect("send");
    subscribed(&mut c).await;
    server.publish("T", "deploying").await;
    next_event(&mut c).await;
    let (code, body) = server.get("/v1/topics/T").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["subscribers"], 1);
    assert_eq!(v["snapshot"]["type"], "deployment.snapshot");
    assert_eq!(v["snapshot"]["data"]["status"], "deploying");

    let (code, metrics) = server.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "stackpulse_connections 1",
        "stackpulse_subscriptions 1",
        "stackpulse_topics 1",
        "stackpulse_events_published_total 1",
        "stackpulse_messages_delivered_total 1",
        "stackpulse_delivery_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let (code, body) = server.get("/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("Not found: GET /nope"));
}

#[tokio::test]
async fn refuses_a_public_address_without_auth() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_configuration_exits_2_with_the_reason() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(["serve", "--bind", "127.0.0.1:0", "--queue-size", "0"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value for queue-size"));
}

#[tokio::test]
async fn publisher_keys_can_be_configured_by_their_hash() {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hashed-secret\n").await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("run");
    assert!(out.status.success());
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(hash.len(), 64);
    let server = Server::spawn(&["--publisher-key-sha256", &hash], &[]).await;
    let url = server.url("/v1/events");
    let body = json!({"type":"deployment.status","deployment_id":"P","data":{"status":"x"}});
    let ok = server
        .http
        .post(&url)
        .bearer_auth("hashed-secret")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status().as_u16(), 202);
    let bad = server
        .http
        .post(&url)
        .bearer_auth(&hash)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status().as_u16(), 401, "the digest itself is not a key");
}
