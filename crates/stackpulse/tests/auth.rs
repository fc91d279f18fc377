//! Authentication and authorization against the real binary, with RS256 tokens
//! signed by fixture keys and a JWKS endpoint in the test process.

mod common;

use std::time::Duration;

use common::tokens::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use stackpulse::client::Frame;
use stackpulse_protocol::ServerMessage;

fn tamper_payload(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = id_claims("alice", &[]);
    claims["sub"] = json!("mallory");
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

fn tamper_signature(token: &str) -> String {
    let mut t = token.to_owned();
    let last = t.pop().expect("non-empty");
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256_with_public_key(claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("kid-a".into());
    let secret = fixture("key-a.pub.pem");
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("sign")
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    if let Some(m) = claims.as_object_mut() {
        m.remove(key);
    }
    claims
}

#[tokio::test]
async fn every_bad_token_is_refused_before_the_upgrade() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &["--connect-rate-per-ip", "10000"]).await;
    let good = id_claims("alice", &[]);
    let valid = sign(&good);
    let huge = sign(&with(good.clone(), "padding", json!("x".repeat(17 * 1024))));
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".into()),
        ("two segments", "abc.def".into()),
        ("four segments", format!("{valid}.extra")),
        ("bad base64 header", "!!!.e30.c2ln".into()),
        ("header not JSON", format!("{}.e30.c2ln", b64(b"nope"))),
        (
            "alg none",
            unsigned(json!({"alg":"none","kid":"kid-a"}), &good),
        ),
        ("alg none, no kid", unsigned(json!({"alg":"none"}), &good)),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key(&good),
        ),
        (
            "RS384",
            sign_with(Algorithm::RS384, "key-a", Some("kid-a"), &good),
        ),
        (
            "PS256",
            sign_with(Algorithm::PS256, "key-a", Some("kid-a"), &good),
        ),
        ("no kid", sign_with(Algorithm::RS256, "key-a", None, &good)),
        (
            "unknown kid",
            sign_with(Algorithm::RS256, "key-a", Some("kid-zzz"), &good),
        ),
        (
            "kid of another key",
            sign_with(Algorithm::RS256, "key-a", Some("kid-b"), &good),
        ),
        (
            "unpublished key",
            sign_with(Algorithm::RS256, "key-c", Some("kid-a"), &good),
        ),
        ("tampered payload", tamper_payload(&valid)),
        ("tampered signature", tamper_signature(&valid)),
        (
            "signature stripped",
            format!("{}.", valid.rsplit_once('.').map_or("", |p| p.0)),
        ),
        (
            "expired",
            sign(&with(good.clone(), "exp", json!(now() - 120))),
        ),
        (
            "not yet valid",
            sign(&with(good.clone(), "nbf", json!(now() + 3600))),
        ),
        (
            "wrong iss",
            sign(&with(good.clone(), "iss", json!("https://evil.test"))),
        ),
        ("no iss", sign(&without(good.clone(), "iss"))),
        ("no exp", sign(&without(good.clone(), "exp"))),
        (
            "exp not a number",
            sign(&with(good.clone(), "exp", json!("tomorrow"))),
        ),
        (
            "wrong aud",
            sign(&with(good.clone(), "aud", json!("client-b"))),
        ),
        ("no aud", sign(&without(good.clone(), "aud"))),
        (
            "access token, wrong client_id",
            sign(&with(
                access_claims("alice", &[]),
                "client_id",
                json!("client-b"),
            )),
        ),
        (
            "access token, aud instead of client_id",
            sign(&with(
                without(access_claims("alice", &[]), "client_id"),
                "aud",
                json!(CLIENT),
            )),
        ),
        (
            "token_use refresh",
            sign(&with(good.clone(), "token_use", json!("refresh"))),
        ),
        ("no sub", sign(&without(good.clone(), "sub"))),
        ("empty sub", sign(&with(good.clone(), "sub", json!("")))),
        ("huge token", huge),
    ];
    assert!(cases.len() >= 25);
    for (name, token) in &cases {
        let (status, body) = server
            .upgrade_status(&format!("?token={token}"), None)
            .await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(
            body, r#"{"message":"Unauthorized: Invalid token"}"#,
            "{name}"
        );
        // The same token in the header is refused the same way.
        let (status, _) = server
            .upgrade_status("", Some(&format!("Bearer {token}")))
            .await;
        assert_eq!(status, 401, "{name} (header)");
    }
    for (name, query, header) in [
        ("no token", "", None),
        ("empty ?token=", "?token=", None),
        ("Basic scheme", "", Some("Basic YWxpY2U6cHc=")),
    ] {
        let (status, body) = server.upgrade_status(query, header).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"message":"Unauthorized: Missing token"}"#),
            "{name}"
        );
    }
    // And the valid one goes through, by query and by header (an empty `?token=`
    // does not hide the header).
    let (status, _) = server
        .upgrade_status(&format!("?token={valid}"), None)
        .await;
    assert_eq!(status, 101);
    let (status, _) = server
        .upgrade_status("?token=", Some(&format!("Bearer {valid}")))
        .await;
    assert_eq!(status, 101);
    let mut c = server.connect_as(&sign(&access_claims("alice", &[]))).await;
    c.subscribe("T", None, None).await.expect("send");
    subscribed(&mut c).await;

    // Browsers pass the token as a subprotocol (Kubernetes' convention) and get
    // `stackpulse.v1` selected; a bad token there is refused like anywhere else.
    let b64 = |t: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
    };
    let offer = |t: &str| {
        format!(
            "stackpulse.v1, base64url.bearer.authorization.k8s.io.{}",
            b64(t)
        )
    };
    let refused = server
        .upgrade_request("/ws")
        .header("sec-websocket-protocol", offer(&tamper_signature(&valid)))
        .send()
        .await
        .expect("upgrade request");
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        refused.text().await.unwrap_or_default(),
        r#"{"message":"Unauthorized: Invalid token"}"#
    );
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.ws_url().into_client_request().expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            offer(&valid).parse().expect("header value"),
        );
        let (mut ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("a token in the subprotocol is accepted");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("stackpulse.v1")
        );
        use futures_util::{SinkExt, StreamExt};
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"action":"subscribe","deployment_id":"T"}"#,
        ))
        .await
        .expect("send");
        let reply = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("frame");
        assert!(
            reply
                .to_text()
                .unwrap_or_default()
                .contains(r#""type":"subscribed""#),
            "{reply:?}"
        );
    }
    assert!(
        server
            .metric("stackpulse_auth_failures_total{reason=\"signature\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let short = |sub: &str| sign(&with(id_claims(sub, &[]), "exp", json!(now() + 2)));

    let mut expiring = server.connect_as(&short("alice")).await;
    let mut refreshed = server.connect_as(&short("bob")).await;
    refreshed
        .send_text(&json!({"action":"auth","token": sign(&id_claims("bob", &[]))}).to_string())
        .await
        .expect("send");
    match next_control(&mut refreshed).await {
        ServerMessage::Authenticated { expires_at } => assert!(expires_at.ends_with('Z')),
        other => panic!("{other:?}"),
    }
    // Another user's token, or a bad one, does not extend the connection.
    refreshed
        .send_text(&json!({"action":"auth","token": sign(&id_claims("mallory", &[]))}).to_string())
        .await
        .expect("send");
    assert_eq!(error(&mut refreshed).await.0, 403);
    refreshed
        .send_text(r#"{"action":"auth","token":"junk"}"#)
        .await
        .expect("send");
    assert_eq!(
        error(&mut refreshed).await,
        (401, "Unauthorized: Invalid token".into())
    );

    assert_eq!(close_code(&mut expiring).await, Some(4001));
    // By now the first token of `refreshed` has expired too; it is still served.
    refreshed.ping().await.expect("send");
    assert!(matches!(
        next_control(&mut refreshed).await,
        ServerMessage::Pong { .. }
    ));
}

#[tokio::test]
async fn topics_are_visible_to_owner_group_and_admin_only() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let (code, _) = server
        .publish_raw(&json!({"type":"deployment.status","deployment_id":"secret",
            "data":{"status":"deploying"},"acl":{"owner":"alice","groups":["ops"]}}))
        .await;
    assert_eq!(code, 202);
    for (who, groups, allowed) in [
        ("alice", vec![], true),
        ("bob", vec!["ops"], true),
        ("root", vec!["admin"], true),
        ("eve", vec!["dev"], false),
    ] {
        let token = sign(&id_claims(who, &groups));
        let mut c = server.connect_as(&token).await;
        c.subscribe("secret", None, None).await.expect("send");
        if allowed {
            let (seq, _, _) = subscribed(&mut c).await;
            assert_eq!(seq, 1, "{who}");
            assert!(next_event(&mut c).await.is_snapshot());
        } else {
            match next_control(&mut c).await {
                ServerMessage::Error { code, message, .. } => {
                    assert_eq!((code, message.as_str()), (403, "Forbidden: secret"));
                }
                other => panic!("{who}: {other:?}"),
            }
            // The same answer for a topic that does not exist would leak nothing,
            // and here (default policy authenticated) an open topic is fine.
            c.subscribe("open-topic", None, None).await.expect("send");
            subscribed(&mut c).await;
        }
        let resp = server
            .http
            .get(server.url("/v1/topics/secret"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(
            resp.status().as_u16(),
            if allowed { 200 } else { 403 },
            "{who}"
        );
    }
    let (status, body) = server.get("/v1/topics/secret").await;
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"message":"Unauthorized: Missing token"}"#)
    );
    assert_eq!(server.get("/healthz").await.0, 200, "health needs no token");
    assert_eq!(server.get("/metrics").await.0, 200, "metrics need no token");
}

#[tokio::test]
async fn deny_policy_makes_unruled_topics_admin_only_and_hides_existence() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &["--default-topic-policy", "deny"]).await;
    server.publish("exists", "x").await;
    let mut eve = server.connect_as(&sign(&id_claims("eve", &[]))).await;
    for topic in ["exists", "does-not-exist"] {
        eve.subscribe(topic, None, None).await.expect("send");
        match next_control(&mut eve).await {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!((code, message), (403, format!("Forbidden: {topic}")));
            }
            other => panic!("{other:?}"),
        }
    }
    let mut root = server
        .connect_as(&sign(&id_claims("root", &["admin"])))
        .await;
    root.subscribe("exists", None, None).await.expect("send");
    assert_eq!(subscribed(&mut root).await.0, 1);
}

#[tokio::test]
async fn publishers_use_a_key_or_a_token_in_the_publisher_group() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let url = server.url("/v1/events");
    let body = json!({"type":"deployment.status","deployment_id":"P","data":{"status":"x"}});
    let post = |token: String| server.http.post(&url).bearer_auth(token).json(&body).send();

    let resp = post(sign(&id_claims("ci", &["publishers"])))
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 202);
    let resp = post(sign(&id_claims("dev", &["dev"]))).await.expect("send");
    assert_eq!(resp.status().as_u16(), 403);
    let msg: Value = resp.json().await.expect("json");
    assert!(
        msg["message"]
            .as_str()
            .expect("msg")
            .contains("publisher group"),
        "{msg}"
    );
    let resp = post(tamper_signature(&sign(&id_claims("ci", &["publishers"]))))
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        server.publish("P", "by key").await,
        2,
        "refused publishes used no seq"
    );
}

#[tokio::test]
async fn admission_limits_per_user_and_per_address() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(
        &jwks,
        &[
            "--max-connections-per-user",
            "2",
            "--connect-rate-per-ip",
            "10000",
        ],
    )
    .await;
    let token = sign(&id_claims("alice", &[]));
    let _a = server.connect_as(&token).await;
    let _b = server.connect_as(&token).await;
    let (status, body) = server
        .upgrade_status(&format!("?token={token}"), None)
        .await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        r#"{"message":"Too many connections for this user (limit 2)"}"#
    );
    let other = sign(&id_claims("bob", &[]));
    let (status, _) = server
        .upgrade_status(&format!("?token={other}"), None)
        .await;
    assert_eq!(status, 101, "other users are not affected");

    let server = server_with(&jwks, &["--connect-rate-per-ip", "2"]).await;
    let mut refused = 0;
    for _ in 0..12 {
        let (status, _) = server
            .upgrade_status(&format!("?token={other}"), None)
            .await;
        if status == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 6, "burst of 4 at 2/s: {refused} of 12 refused");
    assert!(
        server
            .metric("stackpulse_connections_refused_total{reason=\"rate_ip\"}")
            .await
            >= 6.0
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_bogus_kids_do_not_hammer_the_jwks() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(
        &jwks,
        &[
            "--jwks-min-refetch",
            "3600",
            "--connect-rate-per-ip",
            "10000",
        ],
    )
    .await;
    // Wait for the startup fetch to have happened.
    let ok = sign(&id_claims("alice", &[]));
    assert_eq!(
        server.upgrade_status(&format!("?token={ok}"), None).await.0,
        101
    );
    let baseline = jwks.fetch_count();
    for i in 0..50 {
        let t = sign_with(
            Algorithm::RS256,
            "key-a",
            Some(&format!("bogus-{i}")),
            &id_claims("x", &[]),
        );
        assert_eq!(
            server.upgrade_status(&format!("?token={t}"), None).await.0,
            401
        );
    }
    assert!(
        jwks.fetch_count() <= baseline + 1,
        "{} fetches for 50 bogus kids",
        jwks.fetch_count() - baseline
    );

    // With the shortest refetch interval (`0` is clamped to 1 s), a key rotated in
    // is accepted once that second has passed.
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &["--jwks-min-refetch", "0"]).await;
    let new_key = sign_with(
        Algorithm::RS256,
        "key-c",
        Some("kid-c"),
        &id_claims("alice", &[]),
    );
    assert_eq!(
        server
            .upgrade_status(&format!("?token={new_key}"), None)
            .await
            .0,
        401
    );
    jwks.rotate_to("jwks-rotated.json");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        server
            .upgrade_status(&format!("?token={new_key}"), None)
            .await
            .0,
        101
    );
}

#[tokio::test]
async fn with_auth_a_public_address_is_allowed_and_tokens_are_never_logged() {
    let jwks = Jwks::serve("jwks.json").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args([
            "serve",
            "--bind",
            "0.0.0.0:0",
            "--jwt-issuer",
            ISSUER,
            "--jwks-url",
            &jwks.url,
        ])
        .args(["--cognito-client-id", CLIENT, "--publisher-key", KEY])
        .env("STACKPULSE_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    use tokio::io::AsyncBufReadExt;
    // The log is read from the start: at trace level a server whose stderr pipe is
    // full blocks on its next log line. A line with the refusal is signalled.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (refused_tx, mut refused_rx) = tokio::sync::watch::channel(false);
    let log_reader = tokio::spawn(async move {
        let mut logs = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("token refused") {
                let _ = refused_tx.send(true);
            }
            logs.push_str(&line);
            logs.push('\n');
        }
        logs
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("start")
        .expect("read")
        .expect("line");
    let port = line.rsplit(':').next().expect("port").to_owned();
    assert!(
        line.starts_with("stackpulse listening on http://0.0.0.0:"),
        "{line}"
    );

    let valid = sign(&id_claims("alice", &[]));
    let invalid = tamper_signature(&valid);
    let http = http_client();
    for t in [&valid, &invalid] {
        let _ = http
            .get(format!("http://127.0.0.1:{port}/ws?token={t}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }
    let refused = tokio::time::timeout(WAIT, refused_rx.wait_for(|seen| *seen))
        .await
        .is_ok_and(|r| r.is_ok());
    let _ = child.start_kill();
    let _ = child.wait().await;
    let logs = log_reader.await.expect("log reader");
    assert!(refused, "the refusal is logged (without the token): {logs}");
    let signature = valid.rsplit('.').next().expect("sig");
    assert!(!logs.contains(signature), "a token leaked into the logs");
}

/// Serverless mode has no timer per connection (a Lambda invocation ends): an
/// expired token's subscriptions are no longer served, and its connection is closed
/// at its next message; `auth` with a fresh token of the same user moves the expiry
/// forward there too.
#[tokio::test]
async fn serverless_enforces_expiry_at_the_next_message() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_as(Mode::LambdaLocal, &jwks, &[]).await;
    server.publish("expiring", "deploying").await;
    let exp = now() + 3;
    let short = |sub: &str| sign(&with(id_claims(sub, &[]), "exp", json!(exp)));
    // alice is sent an event after expiry, carol sends a message, bob refreshes.
    let mut alice = server.connect_as(&short("alice")).await;
    let mut carol = server.connect_as(&short("carol")).await;
    let mut bob = server.connect_as(&short("bob")).await;
    for c in [&mut alice, &mut bob] {
        c.subscribe("expiring", None, None).await.expect("send");
        assert_eq!(subscribed(c).await.0, 1);
        assert!(next_event(c).await.is_snapshot());
    }
    let auth = |token: &str| json!({"action":"auth","token": token}).to_string();
    bob.send_text(&auth(&sign(&id_claims("bob", &[]))))
        .await
        .expect("send");
    match next_control(&mut bob).await {
        ServerMessage::Authenticated { expires_at } => assert!(expires_at.ends_with('Z')),
        other => panic!("{other:?}"),
    }
    bob.send_text(&auth(&sign(&id_claims("mallory", &[]))))
        .await
        .expect("send");
    assert_eq!(
        error(&mut bob).await,
        (403, "Forbidden: the token belongs to another user".into())
    );
    bob.send_text(&auth("junk")).await.expect("send");
    assert_eq!(
        error(&mut bob).await,
        (401, "Unauthorized: Invalid token".into())
    );

    // Past the short tokens' expiry (a wall-clock time: nothing to await).
    let left = exp.saturating_sub(now()) + 1;
    tokio::time::sleep(Duration::from_secs(left)).await;
    server.publish("expiring", "deployed").await;
    let event = next_event(&mut bob).await;
    assert_eq!(
        (event.seq, event.data["status"].as_str()),
        (2, Some("deployed"))
    );
    // alice's subscription ended with her token: the event is not sent to her, and
    // her next message closes the connection.
    alice.ping().await.expect("send");
    match tokio::time::timeout(WAIT, alice.next()).await {
        Ok(Some(Ok(Frame::Closed(close)))) => {
            assert_eq!(close.map(|c| c.code), Some(4001));
        }
        other => panic!("an expired connection got {other:?} (the first frame must be the close)"),
    }
    carol.ping().await.expect("send");
    assert_eq!(close_code(&mut carol).await, Some(4001), "carol's message");
    bob.ping().await.expect("send");
    assert!(matches!(
        next_control(&mut bob).await,
        ServerMessage::Pong { .. }
    ));
}

/// A publish that narrows a topic's ACL ends the live subscriptions it no longer
/// admits (a 403 naming the topic, then nothing more of it) and spares the others;
/// the same on `serve` and in serverless mode.
#[tokio::test]
async fn a_narrower_acl_ends_the_subscriptions_it_no_longer_admits() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let publish = |status: &str, groups: &[&str]| {
        json!({"type":"deployment.status","deployment_id":"narrowed",
            "data":{"status":status},"acl":{"owner":"alice","groups":groups}})
    };
    assert_eq!(server.publish_raw(&publish("one", &["ops"])).await.0, 202);
    let mut alice = server.connect_as(&sign(&id_claims("alice", &[]))).await;
    let mut bob = server.connect_as(&sign(&id_claims("bob", &["ops"]))).await;
    for c in [&mut alice, &mut bob] {
        c.subscribe("narrowed", None, None).await.expect("send");
        assert_eq!(subscribed(c).await.0, 1);
        assert!(next_event(c).await.is_snapshot());
    }
    assert_eq!(server.publish_raw(&publish("two", &[])).await.0, 202);
    assert_eq!(next_event(&mut alice).await.data["status"], "two");
    assert_eq!(
        error(&mut bob).await,
        (403, "Forbidden: narrowed".to_string())
    );
    // bob's connection stays, without the topic.
    assert_eq!(server.publish_raw(&publish("three", &[])).await.0, 202);
    assert_eq!(next_event(&mut alice).await.data["status"], "three");
    bob.ping().await.expect("send");
    assert!(
        matches!(next_control(&mut bob).await, ServerMessage::Pong { .. }),
        "nothing of the topic reaches bob any more"
    );
}
