//! GraphQL cost limits: fragments, aliases, body size.
//!
//! Each test speaks to the real binary over `POST /graphql`, the AppSync real-time
//! endpoint (`start`) and `graphql-transport-ws` (`subscribe`), since the document
//! check must hold on every transport. Timing bounds here are generous (seconds):
//! on the code the review read, these documents took minutes.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stackpulse_protocol::{ProtocolError, MAX_TOPIC_LEN};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::tokens::{id_claims, server_with, sign, Jwks};
use crate::common::{Server, WAIT};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for a refusal that must not wait on exponential work.
const QUICK: Duration = Duration::from_secs(2);

/// `<op> { ...F<n> }` over a fragment DAG where each fragment spreads the one
/// below it twice: 2^n selections once expanded, about 1.2 KB of text at n = 30.
fn fragment_bomb(op: &str, on: &str, n: usize) -> String {
    let mut q = format!("{op} {{ ...F{n} }} fragment F0 on {on} {{ __typename }}");
    for i in 1..=n {
        q.push_str(&format!(
            " fragment F{i} on {on} {{ ...F{} ...F{} }}",
            i - 1,
            i - 1
        ));
    }
    q
}

async fn post(server: &Server, body: &Value) -> (u16, Value) {
    let resp = server
        .http
        .post(server.url("/graphql"))
        .json(body)
        .send()
        .await
        .expect("POST /graphql");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post_query(server: &Server, query: &str) -> (u16, Value) {
    post(server, &json!({ "query": query })).await
}

/// A response body for a failure message, cut short.
fn short(body: &Value) -> String {
    body.to_string().chars().take(400).collect()
}

/// The first error message of a GraphQL response (panics when there is none).
fn first_error(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {}", short(body)))
        .to_owned()
}

/// Whether `message` is the document check's refusal of an oversized document
/// (the review's n = 30 document is also deeper than the depth limit).
fn refused_for_cost(message: &str) -> bool {
    message.contains("Query is too large") || message.contains("Query is nested too deep")
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame that is not a `ka`, as JSON; `None` when the socket closed.
async fn recv_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] != "ka" {
                    return Some(v);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn connect(server: &Server, path: &str, protocol: &str) -> Ws {
    let mut req = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    ws
}

/// An AppSync real-time socket past its handshake (no auth: loopback mode).
async fn appsync(server: &Server) -> Ws {
    let mut ws = connect(server, "/graphql/realtime", "graphql-ws").await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    let ack = recv_within(&mut ws, WAIT).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

/// A `graphql-transport-ws` socket past `connection_ack`.
async fn transport_ws(server: &Server, init: Value) -> Ws {
    let mut ws = connect(server, "/graphql", "graphql-transport-ws").await;
    send(&mut ws, json!({"type": "connection_init", "payload": init})).await;
    let ack = recv_within(&mut ws, WAIT).await.expect("ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

fn start(id: &str, query: &str, variables: Value) -> Value {
    json!({"id": id, "type": "start", "payload": {
        "data": json!({"query": query, "variables": variables}).to_string(),
    }})
}

fn subscribe(id: &str, query: &str, variables: Value) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}})
}

/// An AppSync `start` answered with `error` (no `start_ack`) within `wait`:
/// returns the first error's message.
async fn appsync_refusal(ws: &mut Ws, id: &str, wait: Duration) -> String {
    let v = recv_within(ws, wait).await.expect("socket closed");
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert_eq!(v["id"], id, "{v}");
    v["payload"]["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without message: {v}"))
        .to_owned()
}

/// A graphql-transport-ws `subscribe` answered with errors (`next` with
/// `errors` then `complete`, or `error`) within `wait`: the first message.
async fn transport_ws_refusal(ws: &mut Ws, id: &str, wait: Duration) -> String {
    let v = recv_within(ws, wait).await.expect("socket closed");
    assert_eq!(v["id"], id, "{v}");
    let errors = match v["type"].as_str() {
        Some("next") => &v["payload"]["errors"],
        Some("error") => &v["payload"],
        _ => panic!("expected errors, got {v}"),
    };
    assert!(v["payload"]["data"].is_null(), "nothing may run: {v}");
    let message = errors[0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected errors, got {v}"))
        .to_owned();
    if v["type"] == "next" {
        let done = recv_within(ws, WAIT).await.expect("socket closed");
        assert_eq!(done, json!({"type": "complete", "id": id}));
    }
    message
}

/// Finding #2 (HTTP): the 1.2 KB fragment-doubling document is refused at once.
#[tokio::test]
async fn fragment_doubling_is_refused_quickly_over_post() {
    let server = Server::start(&[]).await;
    let bomb = fragment_bomb("query", "Query", 30);
    assert!(bomb.len() < 2048, "{}", bomb.len());
    let t = Instant::now();
    let (code, body) = tokio::time::timeout(QUICK, post_query(&server, &bomb))
        .await
        .expect("the fragment bomb was not refused in time");
    assert_eq!(code, 200, "{body}");
    assert!(body["data"].is_null(), "{body}");
    let message = first_error(&body);
    assert!(refused_for_cost(&message), "{message}");
    eprintln!("POST refusal took {:?}", t.elapsed());
    // Shallower (n = 20, a million selections): refused for its size.
    let (_, body) = tokio::time::timeout(
        QUICK,
        post_query(&server, &fragment_bomb("query", "Query", 20)),
    )
    .await
    .expect("refused in time");
    let message = first_error(&body);
    assert!(message.contains("Query is too large"), "{message}");

    // A fragment cycle is refused by the same check (and never loops).
    let cycle = "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }";
    let (_, body) = tokio::time::timeout(QUICK, post_query(&server, cycle))
        .await
        .expect("cycle refused in time");
    let message = first_error(&body);
    assert!(message.contains("cycle"), "{message}");
}

/// Finding #2 (sockets): the same document as an AppSync `start` and as a
/// graphql-transport-ws `subscribe`.
#[tokio::test]
async fn fragment_doubling_is_refused_quickly_over_both_sockets() {
    let server = Server::start(&[]).await;
    let bomb = fragment_bomb("subscription", "Subscription", 30);

    let mut ws = appsync(&server).await;
    send(&mut ws, start("bomb", &bomb, json!({}))).await;
    let message = appsync_refusal(&mut ws, "bomb", QUICK).await;
    assert!(refused_for_cost(&message), "{message}");

    let mut ws = transport_ws(&server, json!({})).await;
    send(&mut ws, subscribe("bomb", &bomb, json!({}))).await;
    let message = transport_ws_refusal(&mut ws, "bomb", QUICK).await;
    assert!(refused_for_cost(&message), "{message}");
    // A query over graphql-transport-ws goes through the same check.
    let query = fragment_bomb("query", "Query", 30);
    send(&mut ws, subscribe("q", &query, json!({}))).await;
    let message = transport_ws_refusal(&mut ws, "q", QUICK).await;
    assert!(refused_for_cost(&message), "{message}");
}

/// Finding #2: `/healthz` stays responsive while four bombs are in flight.
#[tokio::test]
async fn healthz_answers_while_four_fragment_bombs_are_in_flight() {
    let server = Server::start(&[]).await;
    let bomb = fragment_bomb("query", "Query", 30);
    let mut bombs = Vec::new();
    for _ in 0..4 {
        let http = server.http.clone();
        let url = server.url("/graphql");
        let body = json!({ "query": bomb });
        bombs.push(tokio::spawn(async move {
            http.post(url).json(&body).send().await.map(|r| r.status())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _) = tokio::time::timeout(QUICK, server.get("/healthz"))
        .await
        .expect("/healthz did not answer while the bombs were in flight");
    assert_eq!(code, 200);
    for b in bombs {
        let status = tokio::time::timeout(QUICK, b)
            .await
            .expect("a bomb was still running")
            .expect("join")
            .expect("request");
        assert_eq!(status.as_u16(), 200);
    }
}

/// Finding #7: aliases, root fields and `recent_events(limit)` are costed before
/// anything runs, and bodies over 64 KiB get 413 with a JSON error.
#[tokio::test]
async fn aliases_and_recent_events_limits_are_costed() {
    let server = Server::start(&[]).await;
    for i in 0..3 {
        server.publish("busy", &format!("s{i}")).await;
    }
    let alias = |i: usize| {
        format!(
            "a{i}: deployment(deployment_id: \"busy\") {{ recent_events(limit: 500) {{ data }} }}"
        )
    };

    // The review's 1500 aliases (about 105 KB): too large a body.
    let big: String = (0..1500).map(alias).collect::<Vec<_>>().join(" ");
    let big = format!("{{ {big} }}");
    assert!(big.len() > 64 * 1024);
    let (code, body) = post_query(&server, &big).await;
    assert_eq!(code, 413, "{}", short(&body));
    assert_eq!(body["errors"][0]["errorType"], "PayloadTooLarge", "{body}");
    assert!(first_error(&body).contains("65536"), "{body}");

    // 300 aliases fit in the body but not in the alias budget.
    let many: String = (0..300)
        .map(|i| format!("a{i}: deployment(deployment_id: \"busy\") {{ seq }}"))
        .collect::<Vec<_>>()
        .join(" ");
    let (code, body) = post_query(&server, &format!("{{ {many} }}")).await;
    assert_eq!(code, 200);
    assert!(
        body["data"].is_null(),
        "refused before execution: {}",
        short(&body)
    );
    let message = first_error(&body);
    assert!(message.contains("aliases"), "{message}");

    // The same document over graphql-transport-ws.
    let mut gws = transport_ws(&server, json!({})).await;
    send(
        &mut gws,
        subscribe("many", &format!("{{ {many} }}"), json!({})),
    )
    .await;
    let message = transport_ws_refusal(&mut gws, "many", WAIT).await;
    assert!(message.contains("aliases"), "{message}");

    // Root fields are capped whether or not they are aliased (the same field
    // repeated with the same arguments).
    let same = "deployment(deployment_id: \"busy\") { seq } ".repeat(100);
    let (_, body) = post_query(&server, &format!("{{ {same} }}")).await;
    assert!(body["data"].is_null(), "{}", short(&body));
    assert!(
        first_error(&body).contains("root fields"),
        "{}",
        short(&body)
    );

    // `limit` multiplies what each event costs: a dozen aliases of
    // recent_events(limit: 500) are too complex, while limit 20 is fine.
    let twelve: String = (0..12).map(alias).collect::<Vec<_>>().join(" ");
    let (_, body) = post_query(&server, &format!("{{ {twelve} }}")).await;
    assert!(body["data"].is_null(), "{}", short(&body));
    assert!(
        first_error(&body).contains("too complex"),
        "{}",
        short(&body)
    );
    let twelve = twelve.replace("limit: 500", "limit: 20");
    let (_, body) = post_query(&server, &format!("{{ {twelve} }}")).await;
    assert!(body["errors"].is_null(), "{}", short(&body));
    assert_eq!(
        body["data"]["a11"]["recent_events"][2]["data"]["status"],
        "s2",
        "{}",
        short(&body)
    );

    // A body over 64 KiB is refused whatever it holds.
    let padded = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(70_000) } });
    let (code, body) = post(&server, &padded).await;
    assert_eq!(code, 413, "{body}");
}

/// DESIGN: "a GraphQL subscription operation may hold one root field"; more are
/// refused before any feed opens, on both socket dialects.
#[tokio::test]
async fn a_subscription_operation_holds_one_root_field() {
    let server = Server::start(&[]).await;
    let two = "subscription { a: onDeploymentUpdated(deployment_id: \"r1\") { seq } b: onLogLine(deployment_id: \"r1\") { seq } }";
    let via_fragment = "subscription { ...S onLogLine(deployment_id: \"r2\") { seq } } fragment S on Subscription { onDeploymentUpdated(deployment_id: \"r2\") { seq } }";

    let mut ws = appsync(&server).await;
    for (id, q) in [("two", two), ("frag", via_fragment)] {
        send(&mut ws, start(id, q, json!({}))).await;
        let message = appsync_refusal(&mut ws, id, WAIT).await;
        assert!(message.contains("one root field"), "{message}");
    }
    let mut gws = transport_ws(&server, json!({})).await;
    send(&mut gws, subscribe("two", two, json!({}))).await;
    let message = transport_ws_refusal(&mut gws, "two", WAIT).await;
    assert!(message.contains("one root field"), "{message}");
    // No feed was opened by either socket.
    assert_eq!(server.metric("stackpulse_subscriptions").await, 0.0);

    // One root field still works on both.
    let one = "subscription { onDeploymentUpdated(deployment_id: \"r1\", since: 0) { seq } }";
    send(&mut ws, start("one", one, json!({}))).await;
    let ack = recv_within(&mut ws, WAIT).await.expect("open");
    assert_eq!(ack["type"], "start_ack", "{ack}");
    server.publish("r1", "x").await;
    let data = recv_within(&mut ws, WAIT).await.expect("open");
    assert_eq!(data["payload"]["data"]["onDeploymentUpdated"]["seq"], 1);
    send(&mut gws, subscribe("one", one, json!({}))).await;
    let next = recv_within(&mut gws, WAIT).await.expect("open");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["payload"]["data"]["onDeploymentUpdated"]["seq"], 1);
}

/// Finding #6 (GraphQL part): topic names over `MAX_TOPIC_LEN` bytes are refused
/// with `/ws`'s own message, on queries and both socket dialects.
#[tokio::test]
async fn topic_names_over_256_bytes_are_refused() {
    let server = Server::start(&[]).await;
    let long = "x".repeat(MAX_TOPIC_LEN + 1);
    let expected = ProtocolError::InvalidDeploymentId.to_string();
    let q = "query Q($d: ID!) { deployment(deployment_id: $d) { seq } }";
    let (_, body) = post(&server, &json!({"query": q, "variables": {"d": long}})).await;
    assert_eq!(first_error(&body), expected, "{body}");
    let (_, body) = post(
        &server,
        &json!({"query": "query Q($s: String!) { stack(stack_name: $s) { seq } }", "variables": {"s": long}}),
    )
    .await;
    assert!(
        first_error(&body).contains(&format!("at most {MAX_TOPIC_LEN} bytes")),
        "{body}"
    );
    // The longest allowed name still works.
    let ok = "x".repeat(MAX_TOPIC_LEN);
    let (_, body) = post(&server, &json!({"query": q, "variables": {"d": ok}})).await;
    assert!(body["errors"].is_null(), "{body}");

    let sub = "subscription S($d: ID!) { onDeploymentUpdated(deployment_id: $d) { seq } }";
    let logs = "subscription S($d: ID!) { onLogLine(deployment_id: $d) { seq } }";
    let mut ws = appsync(&server).await;
    send(&mut ws, start("long", sub, json!({"d": long}))).await;
    assert_eq!(appsync_refusal(&mut ws, "long", WAIT).await, expected);
    let mut gws = transport_ws(&server, json!({})).await;
    send(&mut gws, subscribe("long", logs, json!({"d": long}))).await;
    assert_eq!(transport_ws_refusal(&mut gws, "long", WAIT).await, expected);
}

const INTROSPECT: &str = "{ __schema { queryType { name } } }";

/// graphql-js's `getIntrospectionQuery()` (what GraphiQL and codegen send).
const STANDARD_INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name }
    mutationType { name }
    subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description
    args { ...InputValue }
    type { ...TypeRef }
    isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue {
  name description
  type { ...TypeRef }
  defaultValue
}
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;

/// Finding #24 (introspection): off by default when auth is on, on with
/// `--graphql-introspection`; loopback dev mode (no auth) keeps it on.
#[tokio::test]
async fn introspection_is_off_with_auth_unless_enabled() {
    let jwks = Jwks::serve("jwks.json").await;
    let token = sign(&id_claims("alice", &[]));
    let ask = |server: &Server| {
        let req = server
            .http
            .post(server.url("/graphql"))
            .header("authorization", token.clone())
            .json(&json!({ "query": INTROSPECT }));
        async move {
            let resp = req.send().await.expect("POST");
            resp.json::<Value>().await.expect("json")
        }
    };
    let server = server_with(&jwks, &[]).await;
    let body = ask(&server).await;
    assert!(
        body["data"].is_null() || body["data"]["__schema"].is_null(),
        "{body}"
    );
    assert!(!first_error(&body).is_empty());
    // graphql-transport-ws too.
    let mut gws = transport_ws(&server, json!({"Authorization": token})).await;
    send(&mut gws, subscribe("i", INTROSPECT, json!({}))).await;
    let message = transport_ws_refusal(&mut gws, "i", WAIT).await;
    assert!(message.contains("introspection is disabled"), "{message}");
    drop(server);

    let server = server_with(&jwks, &["--graphql-introspection"]).await;
    let body = ask(&server).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
    // The standard introspection query fits the cost limits.
    let resp = server
        .http
        .post(server.url("/graphql"))
        .header("authorization", token.clone())
        .json(&json!({ "query": STANDARD_INTROSPECTION }))
        .send()
        .await
        .expect("POST");
    let body: Value = resp.json().await.expect("json");
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["__schema"]["subscriptionType"]["name"],
        "Subscription"
    );
    drop(server);

    let server = Server::start(&["--graphql-introspection=false"]).await;
    let (_, body) = post_query(&server, INTROSPECT).await;
    assert!(
        first_error(&body).contains("introspection is disabled"),
        "{body}"
    );
    let server = Server::start(&[]).await;
    let (_, body) = post_query(&server, INTROSPECT).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
}

/// Sends `POST /graphql` with a chunked body (no length) made of `chunks`, then
/// reads the whole answer.
async fn post_chunked(server: &Server, chunks: &[Vec<u8>]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    sock.write_all(head.as_bytes()).await.expect("write");
    for chunk in chunks {
        sock.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("write");
        sock.write_all(chunk).await.expect("write");
        sock.write_all(b"\r\n").await.expect("write");
    }
    sock.write_all(b"0\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut answer))
        .await
        .expect("no answer in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A chunked body (no length to refuse up front) over 64 KiB gets 413 once it
/// passes the limit, and what the client still sends is read first, so it gets
/// the answer rather than a reset.
#[tokio::test]
async fn an_oversized_chunked_body_gets_413() {
    let server = Server::start(&[]).await;
    let chunks = vec![vec![b' '; 8 * 1024]; 32]; // 256 KiB
    let answer = post_chunked(&server, &chunks).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(answer.contains("PayloadTooLarge"), "{answer}");

    assert_eq!(server.get("/healthz").await.0, 200);
}
