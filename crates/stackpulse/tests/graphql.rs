//! The GraphQL endpoints against the real binary: the AppSync real-time loop on
//! `/graphql/realtime` (handshake auth from the subprotocol or the raw query, `ka`,
//! `start_ack`/`data`/`stop`/`complete`, errors in AppSync's shape), `since`
//! resumes, `POST /graphql` queries and the mutation, `graphql-transport-ws` on
//! `/graphql`, and HTTPS with `--tls-cert`/`--tls-key`.

mod cfn_support;
mod common;

use std::path::Path;

use base64::Engine;
use common::tokens::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SUB: &str = "subscription OnDeploymentUpdated($deploymentId: ID!) {\n  onDeploymentUpdated(deployment_id: $deploymentId) {\n    deployment_id\n    status\n    updated_at\n  }\n}\n";
const SUB_SINCE: &str = "subscription S($d: ID!, $since: Int) { onDeploymentUpdated(deployment_id: $d, since: $since) { seq status } }";

async fn jwt_server(extra: &[&str]) -> (Server, Jwks) {
    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, extra).await;
    (server, jwks)
}

/// Connects to `/graphql/realtime` the way amplify does: subprotocols
/// `graphql-ws` and `header-<base64url of the auth object>`.
async fn connect_subprotocol(server: &Server, auth: &Value) -> Ws {
    let header = b64(auth.to_string().as_bytes());
    let mut req = format!("ws://{}/graphql/realtime", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("graphql-ws, header-{header}")
            .parse()
            .expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("graphql-ws"),
        "the server must select graphql-ws"
    );
    ws
}

/// Connects the way gql does: `?header=<standard base64>&payload=e30=`.
async fn connect_query(server: &Server, auth: &Value) -> Ws {
    let header = base64::engine::general_purpose::STANDARD.encode(auth.to_string());
    let url = format!(
        "ws://{}/graphql/realtime?header={header}&payload=e30=",
        server.addr
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-ws".parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame as JSON; `None` when the socket closed.
async fn recv_any(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("json")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next frame that is not a `ka`.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let v = recv_any(ws).await.expect("socket closed");
        if v["type"] != "ka" {
            return v;
        }
    }
}

async fn init(ws: &mut Ws) {
    send(ws, json!({"type": "connection_init"})).await;
    let ack = recv(ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    assert_eq!(ack["payload"]["connectionTimeoutMs"], 300000);
}

fn start(id: &str, query: &str, variables: Value, auth: Option<&Value>) -> Value {
    let mut payload = json!({
        "data": json!({"query": query, "variables": variables}).to_string(),
    });
    if let Some(a) = auth {
        payload["extensions"] = json!({"authorization": a});
    }
    json!({"id": id, "type": "start", "payload": payload})
}

async fn graphql(
    server: &Server,
    auth: &[(&str, &str)],
    query: &str,
    variables: Value,
) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url("/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    for (k, v) in auth {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("POST /graphql");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn appsync_subscription_gets_updates_until_stopped() {
    let server = Server::start(&["--graphql-keepalive", "0.2"]).await;
    let host = server.addr.to_string();
    let mut ws = connect_subprotocol(&server, &json!({"host": host})).await;
    init(&mut ws).await;
    // `ka` right after the ack, then at the configured interval.
    for _ in 0..3 {
        let ka = recv_any(&mut ws).await.expect("open");
        assert_eq!(ka["type"], "ka", "{ka}");
    }
    let id = "4f1c3a2e-7d1b-4a8e-9b3f-0c2d1e5a6b7c";
    send(
        &mut ws,
        start(
            id,
            SUB,
            json!({"deploymentId": "dep-42"}),
            Some(&json!({"host": host})),
        ),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack, json!({"type": "start_ack", "id": id}));

    server.publish("dep-42", "deploying").await;
    let data = recv(&mut ws).await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], id);
    let update = &data["payload"]["data"]["onDeploymentUpdated"];
    let keys: Vec<&String> = update.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["deployment_id", "status", "updated_at"],
        "exactly the selected fields"
    );
    assert_eq!(update["deployment_id"], "dep-42");
    assert_eq!(update["status"], "deploying");
    // updated_at is the event's own timestamp.
    let (_, state) = graphql(
        &server,
        &[],
        "{ deployment(deployment_id: \"dep-42\") { seq status recent_events { seq type timestamp } } }",
        json!({}),
    )
    .await;
    let d = &state["data"]["deployment"];
    assert_eq!(d["seq"], 1, "{state}");
    assert_eq!(d["status"], "deploying");
    assert_eq!(update["updated_at"], d["recent_events"][0]["timestamp"]);

    // Other event types on the topic are not deployment updates.
    let (code, _) = server
        .publish_raw(&json!({"type":"log.created","deployment_id":"dep-42","data":{"level":"info","message":"m"}}))
        .await;
    assert_eq!(code, 202);
    server.publish("dep-42", "deployed").await;
    let data = recv(&mut ws).await;
    assert_eq!(
        data["payload"]["data"]["onDeploymentUpdated"]["status"],
        "deployed"
    );

    send(&mut ws, json!({"id": id, "type": "stop"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "complete", "id": id}));
    // A later start on the same socket works, with gql-style ids.
    send(
        &mut ws,
        start("2", SUB, json!({"deploymentId": "dep-43"}), None),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type": "start_ack", "id": "2"}));
    server.publish("dep-42", "ignored").await;
    server.publish("dep-43", "mine").await;
    let data = recv(&mut ws).await;
    assert_eq!(data["id"], "2", "{data}");
    assert_eq!(
        data["payload"]["data"]["onDeploymentUpdated"]["deployment_id"],
        "dep-43"
    );
}

#[tokio::test]
async fn since_replays_without_gaps_and_bad_starts_get_errors() {
    let server = Server::start(&[]).await;
    for s in ["s1", "s2", "s3"] {
        server.publish("D", s).await;
    }
    let mut ws = connect_query(&server, &json!({"host": "x"})).await;
    send(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        start("1", SUB_SINCE, json!({"d": "D", "since": 1}), None),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "start_ack");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let v = recv(&mut ws).await;
        seen.push(v["payload"]["data"]["onDeploymentUpdated"].clone());
    }
    assert_eq!(
        seen,
        [
            json!({"seq": 2, "status": "s2"}),
            json!({"seq": 3, "status": "s3"})
        ]
    );
    server.publish("D", "s4").await;
    let v = recv(&mut ws).await;
    assert_eq!(
        v["payload"]["data"]["onDeploymentUpdated"],
        json!({"seq": 4, "status": "s4"})
    );

    // A query is refused: subscriptions only.
    send(
        &mut ws,
        start(
            "2",
            "{ deployment(deployment_id: \"D\") { seq } }",
            json!({}),
            None,
        ),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], "2");
    assert_eq!(
        e["payload"]["errors"][0]["errorType"],
        "BadRequestException"
    );
    // An unknown field: an error, no start_ack.
    send(
        &mut ws,
        start("3", "subscription { onNothing { x } }", json!({}), None),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("error"), Some("3")),
        "{e}"
    );
    assert!(e["payload"]["errors"][0]["message"].is_string());
    // payload.data that is not JSON.
    send(
        &mut ws,
        json!({"id": "4", "type": "start", "payload": {"data": "{nope"}}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["id"], "4");
    // Unknown client messages are ignored; the connection still works.
    send(&mut ws, json!({"type": "hello"})).await;
    server.publish("D", "s5").await;
    let v = recv(&mut ws).await;
    assert_eq!(v["id"], "1");
    assert_eq!(v["payload"]["data"]["onDeploymentUpdated"]["seq"], 5);
}

#[tokio::test]
async fn appsync_auth_at_handshake_and_at_start() {
    let (server, _jwks) = jwt_server(&[]).await;
    let alice = sign(&access_claims("alice", &[]));
    let host = server.addr.to_string();

    // Bad token, and no token, at the handshake: connection_error 401, then close.
    for auth in [
        json!({"host": host, "Authorization": "not.a.jwt"}),
        json!({"host": host}),
    ] {
        let mut ws = connect_subprotocol(&server, &auth).await;
        send(&mut ws, json!({"type": "connection_init"})).await;
        let e = recv(&mut ws).await;
        assert_eq!(e["type"], "connection_error", "{e}");
        assert_eq!(
            e["payload"]["errors"][0]["errorType"],
            "UnauthorizedException"
        );
        assert_eq!(e["payload"]["errors"][0]["errorCode"], 401);
        assert!(
            recv_any(&mut ws).await.is_none(),
            "closed after connection_error"
        );
    }

    // The query-parameter form, whose standard base64 holds a `+`.
    let auth = json!({"host": host, "Authorization": alice, "x": ">>>~~~"});
    let b64std = base64::engine::general_purpose::STANDARD.encode(auth.to_string());
    assert!(b64std.contains('+'), "{b64std}");
    let mut ws = connect_query(&server, &auth).await;
    init(&mut ws).await;

    // A start with a bad token: error 401 for that id.
    let bad = json!({"host": host, "Authorization": "Bearer x.y.z"});
    send(
        &mut ws,
        start("1", SUB, json!({"deploymentId": "open"}), Some(&bad)),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], "1");
    assert_eq!(
        e["payload"]["errors"][0]["errorType"],
        "UnauthorizedException"
    );
    assert_eq!(e["payload"]["errors"][0]["errorCode"], 401);

    // A topic alice may not see: error, not data.
    let (code, _) = server
        .publish_raw(&json!({"type":"deployment.status","deployment_id":"secret",
            "data":{"status":"s"},"acl":{"groups":["ops"]}}))
        .await;
    assert_eq!(code, 202);
    let good = json!({"host": host, "Authorization": alice});
    send(
        &mut ws,
        start("2", SUB, json!({"deploymentId": "secret"}), Some(&good)),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], "2");
    assert_eq!(e["payload"]["errors"][0]["errorType"], "Unauthorized");
    assert_eq!(
        e["payload"]["errors"][0]["message"],
        "Not Authorized to access onDeploymentUpdated on type Subscription"
    );
    // An ops member sees it, on the same socket.
    let bob = sign(&access_claims("bob", &["ops"]));
    let as_bob = json!({"host": host, "Authorization": bob});
    send(
        &mut ws,
        start("3", SUB, json!({"deploymentId": "secret"}), Some(&as_bob)),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type": "start_ack", "id": "3"}));
    server.publish("secret", "visible").await;
    let v = recv(&mut ws).await;
    assert_eq!(v["id"], "3", "{v}");
    assert_eq!(
        v["payload"]["data"]["onDeploymentUpdated"]["status"],
        "visible"
    );
}

#[tokio::test]
async fn post_graphql_queries_and_the_publish_mutation() {
    let (server, _jwks) = jwt_server(&[]).await;
    let alice = sign(&access_claims("alice", &[]));
    let ci = sign(&id_claims("ci", &["publishers"]));
    let mutation = "mutation P($d: ID!, $s: String!) { publishDeploymentUpdate(deployment_id: $d, status: $s, current_layer: 1, total_layers: 3) { deployment_id status seq updated_at current_layer } }";

    let (code, body) = graphql(&server, &[], "{ __typename }", json!({})).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["errors"][0]["errorType"], "UnauthorizedException");
    let (code, _) = graphql(
        &server,
        &[("authorization", "garbage")],
        "{ __typename }",
        json!({}),
    )
    .await;
    assert_eq!(code, 401);

    // The publisher key as x-api-key, then a publisher-group JWT (Bearer).
    let (code, body) = graphql(
        &server,
        &[("x-api-key", KEY)],
        mutation,
        json!({"d": "G1", "s": "deploying"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let p = &body["data"]["publishDeploymentUpdate"];
    assert_eq!(
        (p["seq"].as_u64(), p["status"].as_str()),
        (Some(1), Some("deploying")),
        "{body}"
    );
    assert_eq!(p["current_layer"], 1);
    let bearer = format!("Bearer {ci}");
    let (_, body) = graphql(
        &server,
        &[("authorization", &bearer)],
        mutation,
        json!({"d": "G1", "s": "deployed"}),
    )
    .await;
    assert_eq!(body["data"]["publishDeploymentUpdate"]["seq"], 2, "{body}");
    // A user outside the publisher group may not publish; a refused publish uses no seq.
    let (_, body) = graphql(
        &server,
        &[("authorization", &alice)],
        mutation,
        json!({"d": "G1", "s": "x"}),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["errorType"], "Unauthorized",
        "{body}"
    );

    // Alice reads the state with her raw token (the AppSync way).
    let query = "query Q($d: ID!) { deployment(deployment_id: $d) { deployment_id seq status snapshot_type recent_events(limit: 5) { seq type data } } unknown: deployment(deployment_id: \"nope\") { seq } }";
    let (code, body) = graphql(
        &server,
        &[("authorization", &alice)],
        query,
        json!({"d": "G1"}),
    )
    .await;
    assert_eq!(code, 200);
    let d = &body["data"]["deployment"];
    assert_eq!(d["seq"], 2, "{body}");
    assert_eq!(d["status"], "deployed");
    assert_eq!(d["snapshot_type"], "deployment.snapshot");
    assert_eq!(d["recent_events"][1]["data"]["status"], "deployed");
    assert_eq!(d["recent_events"][0]["type"], "deployment.status");
    assert!(body["data"]["unknown"].is_null());
    // A publisher key alone may not read.
    let (_, body) = graphql(&server, &[("x-api-key", KEY)], query, json!({"d": "G1"})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["errorType"], "UnauthorizedException",
        "{body}"
    );
}

#[tokio::test]
async fn graphql_transport_ws_subscription() {
    let (server, _jwks) = jwt_server(&[]).await;
    let alice = sign(&id_claims("alice", &[]));
    let connect = || async {
        let mut req = format!("ws://{}/graphql", server.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "graphql-transport-ws"
        );
        ws
    };
    // Refused credential: close 4403.
    let mut ws = connect().await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": "bad"}}),
    )
    .await;
    assert_eq!(ws_close_code(&mut ws).await, Some(4403));

    let mut ws = connect().await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": alice}}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    // `since: 0` replays what is already there, so the first `next` needs no race.
    server.publish("T1", "first").await;
    send(
        &mut ws,
        json!({"id": "s1", "type": "subscribe", "payload": {"query": SUB_SINCE, "variables": {"d": "T1", "since": 0}}}),
    )
    .await;
    let next = recv(&mut ws).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["id"], "s1");
    assert_eq!(
        next["payload"]["data"]["onDeploymentUpdated"],
        json!({"seq": 1, "status": "first"})
    );
    server.publish("T1", "second").await;
    let next = recv(&mut ws).await;
    assert_eq!(
        next["payload"]["data"]["onDeploymentUpdated"],
        json!({"seq": 2, "status": "second"})
    );
    send(&mut ws, json!({"id": "s1", "type": "complete"})).await;
}

#[tokio::test]
async fn https_with_tls_cert_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed(dir.path());
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let server = Server::start(&["--tls-cert", &cert_s, "--tls-key", &key_s]).await;
    assert_eq!(server.scheme, "https");
    let pem = std::fs::read(&cert).expect("cert");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let resp = client
        .post(server.url("/graphql"))
        .header("x-api-key", KEY)
        .json(&json!({"query": "mutation { publishDeploymentUpdate(deployment_id: \"tls\", status: \"ok\") { seq } }"}))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["publishDeploymentUpdate"]["seq"], 1, "{body}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = http_client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.expect("resp").status().is_success());
}

#[tokio::test]
async fn unusable_tls_files_are_start_up_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, _key) = self_signed(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").expect("write");
    let run = |cert: &Path, key: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(["serve", "--bind", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("STACKPULSE_CONFIG")
            .output()
            .expect("run stackpulse")
    };
    let missing = dir.path().join("missing.pem");
    let out = run(&missing, &garbage);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read TLS certificate") && err.contains("missing.pem"),
        "{err}"
    );
    let out = run(&cert, &garbage);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid TLS key") && err.contains("garbage.pem"),
        "{err}"
    );
    let out = run(&garbage, &cert);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid TLS certificate"), "{err}");
}

/// The close code the server sends (skipping other frames).
async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn sigterm_closes_graphql_sockets_with_1001() {
    let mut server = Server::start(&[]).await;
    let mut appsync = connect_subprotocol(&server, &json!({"host": "h"})).await;
    init(&mut appsync).await;
    send(
        &mut appsync,
        start("1", SUB, json!({"deploymentId": "Z"}), None),
    )
    .await;
    assert_eq!(recv(&mut appsync).await["type"], "start_ack");
    let mut req = format!("ws://{}/graphql", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut gws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    send(&mut gws, json!({"type": "connection_init"})).await;
    assert_eq!(recv(&mut gws).await["type"], "connection_ack");

    server.sigterm();
    assert_eq!(ws_close_code(&mut appsync).await, Some(1001));
    assert_eq!(ws_close_code(&mut gws).await, Some(1001));
    server.exits_cleanly().await;
}

#[tokio::test]
async fn a_tls_server_shuts_down_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed(dir.path());
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let mut server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    server.sigterm();
    server.exits_cleanly().await;
}

#[tokio::test]
async fn log_lines_stack_resources_and_introspection() {
    let env = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    // Stack topics are written by the tracker only: "web" is played by the fake
    // CloudFormation endpoint (its first two events are visible at once).
    let fake =
        cfn_support::fake_cfn::FakeCfn::start(vec![cfn_support::slow_stack("web", 50)]).await;
    let server = Server::start_with_env(
        &cfn_support::aws_flags(&fake.endpoint, &["--poll-interval", "0.05"]),
        &env,
    )
    .await;
    let (code, _) = server
        .publish_raw(&json!({"type":"log.created","deployment_id":"L1",
            "data":{"level":"warn","message":"disk 91%","stack_name":"web"}}))
        .await;
    assert_eq!(code, 202);

    let mut ws = connect_subprotocol(&server, &json!({"host": "h"})).await;
    init(&mut ws).await;
    let logs = "subscription L($d: ID!) { onLogLine(deployment_id: $d, since: 0) { seq level message stack_name environment } }";
    send(&mut ws, start("logs", logs, json!({"d": "L1"}), None)).await;
    assert_eq!(recv(&mut ws).await["type"], "start_ack");
    let v = recv(&mut ws).await;
    assert_eq!(
        v["payload"]["data"]["onLogLine"],
        json!({"seq": 1, "level": "warn", "message": "disk 91%", "stack_name": "web", "environment": null})
    );
    let res = "subscription R { onStackResourceUpdated(stack_name: \"web\", since: 0) { deployment_id logical_id resource_type status physical_id stack_status progress updated_at } }";
    send(&mut ws, start("res", res, json!({}), None)).await;
    assert_eq!(recv(&mut ws).await["type"], "start_ack");
    // The subscription started the stack's poller; its first event is the stack's own.
    let v = recv(&mut ws).await;
    assert_eq!(v["id"], "res", "{v}");
    let update = &v["payload"]["data"]["onStackResourceUpdated"];
    assert_eq!(update["deployment_id"], "stack:web", "{v}");
    assert_eq!(update["logical_id"], "web", "{v}");
    assert_eq!(update["status"], "CREATE_IN_PROGRESS", "{v}");
    assert_eq!(update["stack_status"], "CREATE_IN_PROGRESS", "{v}");
    assert!(
        update["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    // The stack query reads the same topic's snapshot.
    let (_, body) = graphql(
        &server,
        &[],
        "{ stack(stack_name: \"web\") { deployment_id snapshot_type } }",
        json!({}),
    )
    .await;
    assert_eq!(
        body["data"]["stack"]["deployment_id"], "stack:web",
        "{body}"
    );
    let (_, body) = graphql(
        &server,
        &[],
        "{ stack(stack_name: \"no such stack!\") { seq } }",
        json!({}),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["errorType"], "BadRequestException",
        "{body}"
    );

    // The standard introspection query's depth (ofType seven levels down) is allowed.
    let introspect = "{ __schema { subscriptionType { name } types { name fields { name type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } } } } }";
    let (code, body) = graphql(&server, &[], introspect, json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(
        body["data"]["__schema"]["subscriptionType"]["name"], "Subscription",
        "{body}"
    );
}

#[tokio::test]
async fn a_slow_appsync_subscriber_is_cut_off_without_slowing_a_fast_one() {
    const N: u64 = 600;
    let server = Server::start(&["--queue-size", "64"]).await;
    let sub = "subscription L($d: ID!) { onLogLine(deployment_id: $d) { seq message } }";
    let mut slow = connect_subprotocol(&server, &json!({"host": "h"})).await;
    init(&mut slow).await;
    send(&mut slow, start("1", sub, json!({"d": "S"}), None)).await;
    assert_eq!(recv(&mut slow).await["type"], "start_ack");
    let mut fast = connect_subprotocol(&server, &json!({"host": "h"})).await;
    init(&mut fast).await;
    send(&mut fast, start("1", sub, json!({"d": "S"}), None)).await;
    assert_eq!(recv(&mut fast).await["type"], "start_ack");

    // 600 events of 32 KiB: ~19 MiB, far more than the slow socket's buffers.
    let publisher = server.publish_in_background("S", N as usize, 32 * 1024);
    let mut seqs = Vec::new();
    while seqs.len() < N as usize {
        let v = recv(&mut fast).await;
        assert_eq!(
            v["type"],
            "data",
            "{}",
            &v.to_string()[..200.min(v.to_string().len())]
        );
        seqs.push(
            v["payload"]["data"]["onLogLine"]["seq"]
                .as_u64()
                .expect("seq"),
        );
    }
    publisher.await.expect("publisher");
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "the fast subscriber got everything in order"
    );

    // The slow one got part of it, then its subscription's error, or the socket's
    // close (4008 if the close frame made it into the socket).
    let mut received = 0u64;
    let end = loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("the slow client was never cut off")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                match v["type"].as_str() {
                    Some("data") => received += 1,
                    Some("error") => {
                        break format!("error {}", v["payload"]["errors"][0]["errorType"])
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break format!("close {:?}", frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break "closed".to_owned(),
        }
    };
    assert!(
        received < N,
        "the slow client did not get everything: {received}"
    );
    assert!(
        ["error \"SlowConsumer\"", "close Some(4008)", "closed"].contains(&end.as_str()),
        "{end}"
    );
    assert!(server.metric("stackpulse_slow_consumer_closes_total").await >= 1.0);
}

#[tokio::test]
async fn a_mutation_on_one_node_reaches_a_subscriber_on_another() {
    let redis = stackpulse_testkit::RedisServer::start().await;
    let url = redis.url();
    let a = Server::start(&["--redis-url", &url]).await;
    let b = Server::start(&["--redis-url", &url]).await;
    for node in [&a, &b] {
        tokio::time::timeout(WAIT, async {
            while node.get("/readyz").await.0 != 200 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("node never became ready");
    }
    let mut ws = connect_subprotocol(&a, &json!({"host": "a"})).await;
    init(&mut ws).await;
    send(&mut ws, start("1", SUB_SINCE, json!({"d": "X1"}), None)).await;
    assert_eq!(recv(&mut ws).await["type"], "start_ack");
    let mutation =
        "mutation { publishDeploymentUpdate(deployment_id: \"X1\", status: \"from-b\") { seq } }";
    let (code, body) = graphql(&b, &[("x-api-key", KEY)], mutation, json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["publishDeploymentUpdate"]["seq"], 1, "{body}");
    let v = recv(&mut ws).await;
    assert_eq!(
        v["payload"]["data"]["onDeploymentUpdated"],
        json!({"seq": 1, "status": "from-b"})
    );
}
