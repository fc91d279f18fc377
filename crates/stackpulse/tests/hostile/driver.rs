//! The connection driver: admission, init deadline, idle timeout, slots, the
//! per-connection feed count, per-subscription token expiry and close frames.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::tokens::{id_claims, now, server_with, sign, Jwks};
use crate::common::{Server, KEY, WAIT};
use crate::dialects::{Dialect, Reply, GRAPHQL};

/// `--max-subscriptions` counts a GraphQL connection's feeds across its
/// operations (each feed is its own hub session), and a stopped operation gives
/// its topic back, on both GraphQL dialects.
#[tokio::test]
async fn graphql_feeds_share_one_budget_per_connection() {
    let server = Server::start(&["--max-subscriptions", "2"]).await;
    for topic in ["F1", "F2", "F3"] {
        server.publish(topic, "up").await;
    }
    for dialect in GRAPHQL {
        let mut conn = dialect.connect(&server, None).await;
        for topic in ["F1", "F2"] {
            conn.subscribe(topic).await;
            assert_eq!(conn.reply().await, Reply::Ok, "{dialect:?} {topic}");
        }
        conn.subscribe("F3").await;
        assert_eq!(
            conn.reply().await,
            Reply::Error("Too many subscriptions (limit 2 per connection)".into()),
            "{dialect:?}"
        );
        // Ids are 1, 2, 3 in order: stop the first, then F3 fits.
        let stop = match dialect {
            Dialect::AppSync => json!({"id": "1", "type": "stop"}),
            _ => json!({"id": "1", "type": "complete"}),
        };
        conn.send(stop).await;
        let mut admitted = false;
        for _ in 0..50 {
            conn.subscribe("F3").await;
            match conn.reply().await {
                Reply::Ok => {
                    admitted = true;
                    break;
                }
                // An AppSync `stop` aborts the operation's task, which drops its
                // feed on the runtime's next turn: a round trip later at most.
                Reply::Error(e) if e.starts_with("Too many") => {}
                other => panic!("{dialect:?}: {other:?}"),
            }
        }
        assert!(admitted, "{dialect:?}: the stopped feed kept its topic");
    }
}

/// #17: a `start` with its own short-lived token ends when that token expires,
/// although the connection's token is good for an hour.
#[tokio::test]
async fn an_appsync_start_token_expires_on_its_own() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let long = sign(&id_claims("alice", &[]));
    let mut short_claims = id_claims("alice", &[]);
    short_claims["exp"] = json!(now() + 2);
    let short = sign(&short_claims);
    let mut conn = Dialect::AppSync.connect(&server, Some(&long)).await;
    let data = json!({"query": "subscription S($d: ID!) { onDeploymentUpdated(deployment_id: $d) { seq } }", "variables": {"d": "E"}}).to_string();
    conn.send(json!({"id": "1", "type": "start", "payload": {"data": data, "extensions": {"authorization": {"Authorization": short}}}}))
        .await;
    assert_eq!(conn.reply().await, Reply::Ok);
    assert_eq!(conn.close_code().await, Some(4001));
}

/// #17: a connection made with a publisher key alone holds no user subscriptions.
#[tokio::test]
async fn a_publisher_key_connection_may_not_hold_user_subscriptions() {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let alice = sign(&id_claims("alice", &[]));
    // AppSync: a `start` with alice's token on a publisher-key connection.
    let mut conn = Dialect::AppSync.connect(&server, Some(KEY)).await;
    let data = json!({"query": "subscription S($d: ID!) { onDeploymentUpdated(deployment_id: $d) { seq } }", "variables": {"d": "P"}}).to_string();
    conn.send(json!({"id": "1", "type": "start", "payload": {"data": data, "extensions": {"authorization": {"Authorization": alice}}}}))
        .await;
    match conn.reply().await {
        Reply::Error(message) => assert!(message.contains("publisher key"), "{message}"),
        other => panic!("expected an auth error, got {other:?}"),
    }
    // graphql-transport-ws: the credential is the connection's; 4403.
    let mut conn = Dialect::TransportWs.upgrade(&server, None).await;
    conn.send(json!({"type": "connection_init", "payload": {"x-api-key": KEY}}))
        .await;
    assert_eq!(conn.close_code().await, Some(4403));
}

/// #24: a graphql-transport-ws close reason longer than a close frame allows is
/// cut to 123 bytes, so the client reads the code instead of a protocol error.
#[tokio::test]
async fn graphql_close_reasons_fit_a_close_frame() {
    let server = Server::start(&[]).await;
    let mut conn = Dialect::TransportWs.connect(&server, None).await;
    let long = "é".repeat(200);
    conn.send(json!({"type": long})).await;
    let frame = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut conn.ws))
            .await
            .expect("timed out")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    // async-graphql closes an unreadable message with 1002 and serde's text.
    assert_eq!(u16::from(frame.code), 1002);
    assert!(frame.reason.len() <= 123, "{}", frame.reason.len());
}

/// #9: an event frame larger than the old 512 KiB write cap reaches a `/ws`
/// subscriber instead of dropping it without a close code.
#[tokio::test]
async fn a_large_event_reaches_its_subscriber() {
    let server = Server::start(&["--max-event-bytes", "1048576"]).await;
    let mut conn = Dialect::Ws.connect(&server, None).await;
    conn.subscribe("BIG").await;
    assert_eq!(conn.reply().await, Reply::Ok);
    let body = json!({"type": "blob.stored", "deployment_id": "BIG", "data": {"blob": "x".repeat(600 * 1024)}});
    let (status, reply) = server.publish_raw(&body).await;
    assert!(status < 300, "{status} {reply}");
    let event = conn.recv().await;
    let event = event.unwrap_or_else(|code| panic!("closed with {code:?} instead of the event"));
    assert_eq!(event["type"], "blob.stored");
}

/// #4: sockets awaiting `connection_init` have a budget of their own (a tenth of
/// `--max-connections`, at least 64), refused with 503 beyond it, and a
/// `subscribe` before `connection_init` is the protocol's 4401.
#[tokio::test]
async fn sockets_awaiting_init_have_their_own_budget() {
    let server = Server::start(&["--max-connections", "10"]).await;
    let mut pending = Vec::new();
    for _ in 0..64 {
        pending.push(Dialect::AppSync.upgrade(&server, None).await);
    }
    let refused = tokio_tungstenite::connect_async(Dialect::AppSync.request(&server, None)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // A place is still free for a socket with a credential.
    let mut ws = Dialect::Ws.connect(&server, None).await;
    ws.subscribe("S").await;
    assert_eq!(ws.reply().await, Reply::Ok);
    drop(pending);

    let mut early = Dialect::TransportWs.upgrade(&server, None).await;
    early
        .send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}}))
        .await;
    assert_eq!(early.close_code().await, Some(4401));
}
