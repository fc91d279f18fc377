//! Serverless mode against real parts: the DynamoDB backplane on moto, and the real
//! `stackpulse` binary as a Lambda function (named `bootstrap`) under a Lambda
//! Runtime API served by this test, with a Management API endpoint that records
//! what the function posts and answers 410 Gone for closed connections.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use stackpulse::hub::dynamo::DynamoBackplane;
use stackpulse::hub::{Backplane, Deliver, Draft, HistoryConfig, StampedEvent};
use stackpulse_testkit::moto::Moto;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

const CONNECTIONS: &str = "sp-connections";
const TOPICS: &str = "sp-topics";

async fn dynamodb(moto: &Moto) -> aws_sdk_dynamodb::Client {
    dynamodb_at(&moto.endpoint)
}

fn dynamodb_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let creds = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test");
    let conf = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

async fn tables(moto: &Moto) -> aws_sdk_dynamodb::Client {
    let client = dynamodb(moto).await;
    stackpulse::serverless::store::ensure_tables(&client, CONNECTIONS, TOPICS)
        .await
        .expect("create tables");
    client
}

struct NoDeliver;
impl Deliver for NoDeliver {
    fn deliver(&self, _event: &Arc<StampedEvent>) {}
}

fn history() -> HistoryConfig {
    HistoryConfig {
        max_events: 2000,
        retention: Duration::from_secs(3600),
        max_topics: 1000,
        snapshot_budget: 262_144,
    }
}

fn status(status: &str) -> Draft {
    let mut data = Map::new();
    data.insert("status".into(), Value::from(status));
    Draft {
        event_type: "deployment.status".into(),
        data,
        acl: None,
        fence: None,
    }
}

/// Four publishers (four clients, as four Lambda instances would be) × 200 events
/// on one topic: the conditional write gives seqs exactly 1..=800, the history
/// holds them in order and the snapshot folded the last one.
#[tokio::test]
async fn concurrent_publishers_get_every_seq_exactly_once() {
    let moto = Moto::start_serial().await;
    tables(&moto).await;
    let mut tasks = Vec::new();
    for p in 0..4 {
        let client = dynamodb(&moto).await;
        let backplane = DynamoBackplane::new(client, TOPICS, history(), Arc::new(NoDeliver));
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200 {
                let event = backplane
                    .publish("D-race", status(&format!("p{p}-{i}")))
                    .await
                    .expect("publish");
                seqs.push(event.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("publisher");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one publisher's seqs increase"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());

    let reader = DynamoBackplane::new(
        dynamodb(&moto).await,
        TOPICS,
        history(),
        Arc::new(NoDeliver),
    );
    let read = reader.read("D-race", Some(0)).await.expect("read");
    assert_eq!(read.latest_seq, 800);
    assert!(read.covers(0));
    let replayed: Vec<u64> = read.events.iter().map(|e| e.seq).collect();
    assert_eq!(replayed, (1..=800).collect::<Vec<u64>>());
    let snapshot: Value =
        serde_json::from_str(read.snapshot.expect("snapshot").as_str()).expect("json");
    assert_eq!(snapshot["seq"], 800);
    assert_eq!(snapshot["type"], "deployment.snapshot");
    // The last stored event is the one the snapshot says it is current to.
    let last: Value = serde_json::from_str(read.events[799].frame.as_str()).expect("json");
    assert_eq!(snapshot["data"]["status"], last["data"]["status"]);
}

/// History is bounded: beyond `max_events`, the oldest events are deleted in the
/// same transaction, and a resume from before them is not covered.
#[tokio::test]
async fn history_is_bounded_and_resume_knows_it() {
    let moto = Moto::start().await;
    tables(&moto).await;
    let small = HistoryConfig {
        max_events: 5,
        ..history()
    };
    let backplane = DynamoBackplane::new(dynamodb(&moto).await, TOPICS, small, Arc::new(NoDeliver));
    for i in 0..8 {
        backplane
            .publish("D", status(&format!("s{i}")))
            .await
            .expect("publish");
    }
    let read = backplane.read("D", Some(5)).await.expect("read");
    assert!(read.covers(5));
    assert_eq!(
        read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    let read = backplane.read("D", Some(1)).await.expect("read");
    assert!(!read.covers(1), "events 2 and 3 are gone");
    assert_eq!(read.first_retained, 4);
    let unborn = backplane.read("nothing", Some(0)).await.expect("read");
    assert_eq!(
        (unborn.latest_seq, &*unborn.epoch),
        (0, stackpulse::hub::UNBORN_EPOCH)
    );
}

// ---- The Lambda function under a Runtime API -------------------------------------

/// Queued invocations: request id and event.
type Invocations = mpsc::UnboundedReceiver<(String, Value)>;

/// A Lambda Runtime API: `next` hands out queued events, `response` and `error`
/// complete them.
#[derive(Clone, Default)]
struct Runtime {
    queue: Arc<tokio::sync::Mutex<Option<Invocations>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
}

async fn next(State(rt): State<Runtime>) -> Response {
    let mut guard = rt.queue.lock().await;
    let Some(rx) = guard.as_mut() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match rx.recv().await {
        Some((id, event)) => {
            let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
            (
                [
                    ("lambda-runtime-aws-request-id", id),
                    ("lambda-runtime-deadline-ms", deadline.to_string()),
                    (
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:stackpulse".to_owned(),
                    ),
                    (
                        "lambda-runtime-trace-id",
                        "Root=1-5e9f0c65-1de4d666d4dd26aced652b6c".to_owned(),
                    ),
                    ("content-type", "application/json".to_owned()),
                ],
                event.to_string(),
            )
                .into_response()
        }
        None => StatusCode::GONE.into_response(),
    }
}

async fn respond(State(rt): State<Runtime>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(tx) = rt.waiting.lock().remove(&id) {
        let _ = tx.send(value);
    }
    StatusCode::ACCEPTED
}

async fn fail(State(rt): State<Runtime>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    if let Some(tx) = rt.waiting.lock().remove(&id) {
        let _ = tx.send(json!({ "invocation_error": text }));
    }
    StatusCode::ACCEPTED
}

/// What the function posted, and which connections answer 410.
#[derive(Clone, Default)]
struct Management {
    posts: Arc<Mutex<Vec<(String, Value)>>>,
    deleted: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<HashSet<String>>>,
}

async fn post_to_connection(
    State(m): State<Management>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if m.closed.lock().contains(&id) {
        return (
            StatusCode::GONE,
            [
                ("x-amzn-ErrorType", "GoneException"),
                ("content-type", "application/json"),
            ],
            r#"{"message":"Gone"}"#,
        )
            .into_response();
    }
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    m.posts.lock().push((id, value));
    StatusCode::OK.into_response()
}

async fn delete_connection(State(m): State<Management>, Path(id): Path<String>) -> StatusCode {
    m.deleted.lock().push(id);
    StatusCode::NO_CONTENT
}

async fn serve_router(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct Function {
    tx: mpsc::UnboundedSender<(String, Value)>,
    runtime: Runtime,
    next_id: u64,
}

impl Function {
    async fn invoke(&mut self, event: Value) -> Value {
        self.next_id += 1;
        let id = format!("req-{}", self.next_id);
        let (done, wait) = oneshot::channel();
        self.runtime.waiting.lock().insert(id.clone(), done);
        self.tx.send((id, event)).expect("queue");
        tokio::time::timeout(common::WAIT, wait)
            .await
            .expect("invocation timed out")
            .expect("response")
    }
}

/// An API Gateway WebSocket event in the shape API Gateway sends (cf.
/// aws_lambda_events' `example-apigw-websocket-request*.json`).
fn ws_event(
    kind: &str,
    connection: &str,
    body: Option<&str>,
    headers: Value,
    query: Value,
) -> Value {
    let route = match kind {
        "CONNECT" => "$connect",
        "DISCONNECT" => "$disconnect",
        _ => "$default",
    };
    let mut event = json!({
        "headers": headers,
        "multiValueHeaders": {},
        "requestContext": {
            "routeKey": route,
            "eventType": kind,
            "extendedRequestId": "LfP0WE7CIAMFqBA=",
            "requestTime": "03/Dec/2026:13:30:00 +0000",
            "messageDirection": "IN",
            "stage": "prod",
            "connectedAt": 1_796_304_600_000_i64,
            "requestTimeEpoch": 1_796_304_600_123_i64,
            "identity": {"sourceIp": "192.0.2.10", "userAgent": "test"},
            "requestId": "LfP0WHoIIAMF7Jg=",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection,
            "apiId": "abc123"
        },
        "isBase64Encoded": false
    });
    if !query.is_null() {
        event["queryStringParameters"] = query;
    }
    if let Some(body) = body {
        event["body"] = Value::from(body);
        event["requestContext"]["messageId"] = Value::from("LfP0cdgOoAMCJyg=");
    }
    event
}

/// An HTTP API (payload 2.0) request for `POST /v1/events`.
fn publish_event(authorization: Option<&str>, body: &Value) -> Value {
    let mut headers = json!({"content-type": "application/json", "host": "abc.execute-api.us-east-1.amazonaws.com"});
    if let Some(a) = authorization {
        headers["authorization"] = Value::from(a);
    }
    json!({
        "version": "2.0",
        "routeKey": "POST /v1/events",
        "rawPath": "/v1/events",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc",
            "http": {"method": "POST", "path": "/v1/events", "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.10", "userAgent": "test"},
            "requestId": "LV7fzho-PHcEJPw=",
            "routeKey": "POST /v1/events",
            "stage": "$default",
            "time": "03/Dec/2026:13:30:00 +0000",
            "timeEpoch": 1_796_304_600_067_i64
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

fn posts_to(m: &Management, id: &str) -> Vec<Value> {
    m.posts
        .lock()
        .iter()
        .filter(|(c, _)| c == id)
        .map(|(_, v)| v.clone())
        .collect()
}

async fn connection_exists(ddb: &aws_sdk_dynamodb::Client, id: &str) -> bool {
    ddb.get_item()
        .table_name(CONNECTIONS)
        .key("connectionId", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get_item")
        .item
        .is_some()
}

/// DynamoDB requests moto saw between `reset` and now, by operation.
async fn recorded_operations(http: &reqwest::Client, moto: &Moto) -> HashMap<String, usize> {
    let text = http
        .get(format!(
            "{}/moto-api/recorder/download-recording",
            moto.endpoint
        ))
        .send()
        .await
        .expect("recording")
        .text()
        .await
        .expect("text");
    let mut ops = HashMap::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let target = entry["headers"]["X-Amz-Target"]
            .as_str()
            .or_else(|| entry["headers"]["x-amz-target"].as_str())
            .unwrap_or_default();
        if let Some(op) = target.strip_prefix("DynamoDB_20120810.") {
            *ops.entry(op.to_owned()).or_insert(0) += 1;
        }
    }
    ops
}

async fn recorder(http: &reqwest::Client, moto: &Moto, action: &str) {
    http.post(format!("{}/moto-api/recorder/{action}", moto.endpoint))
        .send()
        .await
        .expect("recorder");
}

#[tokio::test]
async fn lambda_function_serves_websocket_routes_and_publishes() {
    let moto = Moto::start().await;
    let ddb = tables(&moto).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = Runtime {
        queue: Arc::new(tokio::sync::Mutex::new(Some(rx))),
        ..Runtime::default()
    };
    let runtime_addr = serve_router(
        Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .with_state(runtime.clone()),
    )
    .await;
    let management = Management::default();
    let management_addr = serve_router(
        Router::new()
            .route(
                "/prod/@connections/{id}",
                post(post_to_connection).delete(delete_connection),
            )
            .with_state(management.clone()),
    )
    .await;

    // Packaged as `provided.al2023` wants it: the binary is called `bootstrap`.
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = dir.path().join("bootstrap");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stackpulse"), &bootstrap).expect("symlink");
    let started = Instant::now();
    let mut child = Command::new(&bootstrap)
        .env_clear()
        .envs(common::coverage_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", runtime_addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "stackpulse")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("STACKPULSE_CONNECTIONS_TABLE", CONNECTIONS)
        .env("STACKPULSE_TOPICS_TABLE", TOPICS)
        .env(
            "STACKPULSE_WS_ENDPOINT",
            format!("http://{management_addr}/prod"),
        )
        .env("STACKPULSE_PUBLISHER_KEYS", common::KEY)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("STACKPULSE_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bootstrap");
    let mut f = Function {
        tx,
        runtime,
        next_id: 0,
    };

    // $connect, with and without the subprotocol.
    let r = f
        .invoke(ws_event(
            "CONNECT",
            "connA=",
            None,
            json!({"Host": "abc"}),
            Value::Null,
        ))
        .await;
    let cold = started.elapsed();
    eprintln!("cold start (process start to first response): {cold:?}");
    assert_eq!(r["statusCode"], 200, "{r}");
    let r = f
        .invoke(ws_event(
            "CONNECT",
            "connB=",
            None,
            json!({"Sec-WebSocket-Protocol": "stackpulse.v1"}),
            Value::Null,
        ))
        .await;
    assert_eq!(r["statusCode"], 200, "{r}");
    assert_eq!(r["headers"]["Sec-WebSocket-Protocol"], "stackpulse.v1");
    assert!(connection_exists(&ddb, "connA=").await);

    // $default: subscribe, errors with serve's texts, ping.
    for id in ["connA=", "connB="] {
        let r = f
            .invoke(ws_event(
                "MESSAGE",
                id,
                Some(r#"{"action":"subscribe","deployment_id":"D1"}"#),
                json!({}),
                Value::Null,
            ))
            .await;
        assert_eq!(r["statusCode"], 200, "{r}");
    }
    for (body, message) in [
        (r#"{"action":"foo"}"#, "Unknown action: foo"),
        (r#"{"action":"subscribe"}"#, "Missing deployment_id"),
        ("[1]", "Message must be a JSON object"),
    ] {
        f.invoke(ws_event(
            "MESSAGE",
            "connA=",
            Some(body),
            json!({}),
            Value::Null,
        ))
        .await;
        let last = posts_to(&management, "connA=").pop().expect("a reply");
        assert_eq!(
            (
                last["type"].as_str(),
                last["code"].as_u64(),
                last["message"].as_str()
            ),
            (Some("error"), Some(400), Some(message))
        );
    }
    let a = posts_to(&management, "connA=");
    assert_eq!(a[0]["type"], "subscribed");
    assert_eq!(
        (a[0]["seq"].as_u64(), a[0]["recovered"].as_bool()),
        (Some(0), Some(true))
    );

    // POST /v1/events through the HTTP API: the credential first.
    let body =
        json!({"type":"deployment.status","deployment_id":"D1","data":{"status":"deploying"}});
    let r = f.invoke(publish_event(None, &body)).await;
    assert_eq!(r["statusCode"], 401, "{r}");
    recorder(&common::http_client(), &moto, "reset-recording").await;
    recorder(&common::http_client(), &moto, "start-recording").await;
    let r = f
        .invoke(publish_event(
            Some(&format!("Bearer {}", common::KEY)),
            &body,
        ))
        .await;
    recorder(&common::http_client(), &moto, "stop-recording").await;
    assert_eq!(r["statusCode"], 202, "{r}");
    let answer: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
    assert_eq!(answer, json!({"seq": 1}));
    let ops = recorded_operations(&common::http_client(), &moto).await;
    eprintln!("DynamoDB requests for one publish to 2 subscribers: {ops:?}");
    for id in ["connA=", "connB="] {
        let got = posts_to(&management, id);
        let event = got.last().expect("event");
        assert_eq!(
            (event["type"].as_str(), event["seq"].as_u64()),
            (Some("deployment.status"), Some(1))
        );
    }

    // A connection that is gone (410) is deleted at the next fan-out.
    management.closed.lock().insert("connB=".into());
    let r = f
        .invoke(publish_event(
            Some(&format!("Bearer {}", common::KEY)),
            &body,
        ))
        .await;
    assert_eq!(r["statusCode"], 202, "{r}");
    assert_eq!(
        posts_to(&management, "connA=").last().expect("event")["seq"],
        2
    );
    assert!(
        !connection_exists(&ddb, "connB=").await,
        "the gone connection was deleted"
    );

    // A resume on a new connection replays what it missed, after `subscribed`.
    f.invoke(ws_event("CONNECT", "connC=", None, json!({}), Value::Null))
        .await;
    let epoch = a[0]["epoch"].as_str().expect("epoch").to_owned();
    let resume =
        json!({"action":"subscribe","deployment_id":"D1","since":1,"epoch": epoch}).to_string();
    f.invoke(ws_event(
        "MESSAGE",
        "connC=",
        Some(&resume),
        json!({}),
        Value::Null,
    ))
    .await;
    let c = posts_to(&management, "connC=");
    assert_eq!(c[0]["type"], "subscribed");
    // The topic's epoch was born at its first publish (the earlier subscribers saw
    // the unborn one, which any epoch matches).
    assert_eq!(
        (c[0]["seq"].as_u64(), c[0]["recovered"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(c[1]["seq"], 2);
    assert_eq!(c.len(), 2);

    // $disconnect forgets the connection.
    let r = f
        .invoke(ws_event(
            "DISCONNECT",
            "connA=",
            None,
            json!({}),
            Value::Null,
        ))
        .await;
    assert_eq!(r["statusCode"], 200);
    assert!(!connection_exists(&ddb, "connA=").await);

    // EventBridge: a CloudFormation status change makes this invocation track the
    // stack with the server's poller and publish its events to the stack topic.
    let cfn = aws_sdk_cloudformation::Client::from_conf(
        aws_sdk_cloudformation::config::Builder::new()
            .behavior_version(aws_sdk_cloudformation::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudformation::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_cloudformation::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(&moto.endpoint)
            .build(),
    );
    let template = json!({"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}).to_string();
    let created = cfn
        .create_stack()
        .stack_name("pushed-app")
        .template_body(template)
        .send()
        .await
        .expect("create stack");
    let stack_id = created.stack_id().expect("stack id").to_owned();
    f.invoke(ws_event("CONNECT", "connD=", None, json!({}), Value::Null))
        .await;
    f.invoke(ws_event(
        "MESSAGE",
        "connD=",
        Some(r#"{"action":"subscribe","deployment_id":"stack:pushed-app"}"#),
        json!({}),
        Value::Null,
    ))
    .await;
    let push = json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "CloudFormation Stack Status Change", "source": "aws.cloudformation",
        "account": "123456789012", "time": "2026-12-03T13:30:00Z", "region": "us-east-1",
        "resources": [stack_id],
        "detail": {"stack-id": stack_id, "status-details": {"status": "CREATE_COMPLETE",
            "status-reason": ""}, "client-request-token": "tok"}
    });
    let r = f.invoke(push.clone()).await;
    assert_eq!(r["poll"], "completed", "{r}");
    assert_eq!(r["topic"], "stack:pushed-app");
    let d = posts_to(&management, "connD=");
    let types: Vec<&str> = d.iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"subscribed"));
    assert!(types.contains(&"resource.status"), "{types:?}");
    assert!(types.contains(&"stack.deployed"), "{types:?}");
    let seqs: Vec<u64> = d.iter().filter_map(|p| p["seq"].as_u64()).skip(1).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs 1, 2, …"
    );
    // The push of an operation already tracked to its end polls nothing, and the
    // scheduled safety net has no stack left in progress.
    let again = f.invoke(push.clone()).await;
    assert_eq!(again["poll"], "already complete", "{again}");
    let scheduled = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-12-03T13:35:00Z",
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/stackpulse-poll"],
        "detail": {}
    });
    assert_eq!(f.invoke(scheduled).await, json!({"polled": []}));
    // An unrelated event is ignored.
    let other = json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}});
    assert!(f.invoke(other).await["ignored"].is_string());

    // An event of no known shape is answered, not fatal.
    let r = f.invoke(json!({"hello": "world"})).await;
    assert_eq!(r["statusCode"], 400);

    // Events the function cannot use are answered 400/404/405 with the reason.
    let message = |r: &Value| -> String {
        let body: Value =
            serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        body["message"].as_str().unwrap_or_default().to_owned()
    };
    let mut malformed = ws_event("CONNECT", "connE=", None, json!({}), Value::Null);
    malformed["requestContext"]["connectedAt"] = json!("yesterday");
    let r = f.invoke(malformed).await;
    assert_eq!(r["statusCode"], 400, "{r}");
    assert!(message(&r).starts_with("Malformed WebSocket event"), "{r}");
    let r = f
        .invoke(ws_event(
            "RECONNECT",
            "connE=",
            None,
            json!({}),
            Value::Null,
        ))
        .await;
    assert_eq!(
        (r["statusCode"].as_u64(), message(&r).as_str()),
        (
            Some(400),
            "Unknown WebSocket event type Some(\"RECONNECT\")"
        ),
        "{r}"
    );
    let mut malformed = publish_event(None, &body);
    malformed["requestContext"]["timeEpoch"] = json!("now");
    let r = f.invoke(malformed).await;
    assert_eq!(r["statusCode"], 400, "{r}");
    assert!(message(&r).starts_with("Malformed HTTP event"), "{r}");
    let mut elsewhere = publish_event(None, &body);
    elsewhere["rawPath"] = json!("/v1/topics/D1");
    let r = f.invoke(elsewhere).await;
    assert_eq!(
        (r["statusCode"].as_u64(), message(&r).as_str()),
        (Some(404), "Not found: /v1/topics/D1"),
        "{r}"
    );
    let mut get = publish_event(None, &body);
    get["requestContext"]["http"]["method"] = json!("GET");
    let r = f.invoke(get).await;
    assert_eq!(
        (r["statusCode"].as_u64(), message(&r).as_str()),
        (Some(405), "Method not allowed: use POST"),
        "{r}"
    );
    let key = format!("Bearer {}", common::KEY);
    let mut garbled = publish_event(Some(&key), &body);
    garbled["body"] = json!("not base64 at all!");
    garbled["isBase64Encoded"] = json!(true);
    let r = f.invoke(garbled).await;
    assert_eq!(r["statusCode"], 400, "{r}");
    assert!(message(&r).starts_with("Invalid body: not base64"), "{r}");
    // API Gateway base64-encodes bodies it takes for binary: decoded, they publish.
    use base64::Engine;
    let mut encoded = publish_event(Some(&key), &body);
    encoded["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body.to_string()));
    encoded["isBase64Encoded"] = json!(true);
    let r = f.invoke(encoded).await;
    assert_eq!(r["statusCode"], 202, "{r}");
    // A binary WebSocket message (not UTF-8) gets serve's error frame.
    f.invoke(ws_event("CONNECT", "connF=", None, json!({}), Value::Null))
        .await;
    let mut binary = ws_event("MESSAGE", "connF=", Some("/w=="), json!({}), Value::Null);
    binary["isBase64Encoded"] = json!(true);
    let r = f.invoke(binary).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let last = posts_to(&management, "connF=").pop().expect("a reply");
    assert_eq!(
        (
            last["type"].as_str(),
            last["code"].as_u64(),
            last["message"].as_str()
        ),
        (
            Some("error"),
            Some(400),
            Some("Binary frames are not supported; send JSON text frames")
        )
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the function keeps running"
    );
}

/// Runs `stackpulse lambda` with only `env` (plus PATH and the coverage variable);
/// returns its exit code and stderr.
async fn lambda_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    start_failing(&["lambda"], env).await
}

/// Runs the binary with `args` and only `env` (plus PATH and the coverage
/// variable), expecting it to exit by itself; returns its exit code and stderr.
async fn start_failing(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        common::WAIT,
        Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(args)
            .env_clear()
            .envs(common::coverage_env())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("lambda did not exit")
    .expect("run lambda");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A function that cannot work says why at its start and exits 2, instead of
/// failing every invocation (or serving anyone on a public API).
#[tokio::test]
async fn lambda_refuses_to_start_without_its_endpoint_or_authentication() {
    let (code, err) = lambda_start(&[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("STACKPULSE_WS_ENDPOINT is not set"), "{err}");

    // The runtime API is remote (a real Lambda): no authentication is refused…
    let endpoint = (
        "STACKPULSE_WS_ENDPOINT",
        "https://abc.execute-api.us-east-1.amazonaws.com/prod",
    );
    let (code, err) =
        lambda_start(&[("AWS_LAMBDA_RUNTIME_API", "169.254.100.1:9001"), endpoint]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("refusing to run as a Lambda function without authentication"),
        "{err}"
    );
    assert!(err.contains("STACKPULSE_ALLOW_ANONYMOUS=true"), "{err}");

    // …and a bad setting is the configuration's own error.
    let (code, err) = lambda_start(&[
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9"),
        endpoint,
        ("STACKPULSE_POLL_INTERVAL", "-1"),
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("stackpulse: "), "{err}");
}

/// DynamoDB leases between two functions: one holder at a time, renew and release
/// by its token only, and an acquire whose answer was lost (DynamoDB wrote it, the
/// connection broke) does not strand the lease: the function that asked gets it
/// when its call is retried or it asks again.
#[tokio::test]
async fn dynamodb_leases_are_exclusive_and_survive_a_lost_answer() {
    let moto = Moto::start_serial().await;
    tables(&moto).await;
    let port: u16 = moto
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("moto port");
    let proxy = common::lossy::LossyProxy::start(port).await;
    let node = DynamoBackplane::new(
        dynamodb_at(&format!("http://127.0.0.1:{}", proxy.port)),
        TOPICS,
        history(),
        Arc::new(NoDeliver),
    );
    let other = DynamoBackplane::new(
        dynamodb(&moto).await,
        TOPICS,
        history(),
        Arc::new(NoDeliver),
    );
    let ttl = Duration::from_secs(60);

    let first = other
        .acquire_lease("poll:a", ttl)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        node.acquire_lease("poll:a", ttl).await.expect("acquire"),
        None
    );
    assert!(other.renew_lease(&first, ttl).await.expect("renew"));
    let forged = stackpulse::hub::Lease {
        name: "poll:a".into(),
        token: first.token + 7,
    };
    assert!(!node.renew_lease(&forged, ttl).await.expect("renew"));
    node.release_lease(&forged).await;
    assert_eq!(
        node.acquire_lease("poll:a", ttl).await.expect("acquire"),
        None,
        "not released by a wrong token"
    );
    other.release_lease(&first).await;
    let taken = node
        .acquire_lease("poll:a", ttl)
        .await
        .expect("acquire")
        .expect("released");
    assert!(taken.token > first.token, "the fencing token grows");

    proxy.lose_next_answer();
    let mut got = None;
    for _ in 0..20 {
        match node.acquire_lease("poll:lost", ttl).await {
            Ok(lease) => {
                got = Some(lease);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let lease = got
        .expect("no answer from DynamoDB")
        .expect("the function that asked holds the lease");
    assert_eq!(
        other
            .acquire_lease("poll:lost", ttl)
            .await
            .expect("acquire"),
        None
    );
    assert!(node.renew_lease(&lease, ttl).await.expect("renew"));
}

/// `lambda-local` that cannot start says why and exits 2: DynamoDB unreachable, a
/// public address without authentication, a bad setting.
#[tokio::test]
async fn lambda_local_says_why_it_cannot_start() {
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let aws = [
        ("AWS_ENDPOINT_URL", nobody.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let (code, err) = start_failing(&["lambda-local", "--bind", "127.0.0.1:0"], &aws).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("stackpulse: cannot prepare the DynamoDB tables"),
        "{err}"
    );
    let (code, err) = start_failing(&["lambda-local", "--bind", "0.0.0.0:0"], &aws).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("stackpulse: "), "{err}");
    assert!(err.contains("authentication"), "{err}");
    let mut bad = aws.to_vec();
    bad.push(("STACKPULSE_POLL_INTERVAL", "-1"));
    let (code, err) = start_failing(&["lambda-local", "--bind", "127.0.0.1:0"], &bad).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("stackpulse: "), "{err}");
}

/// A subscribe whose hand-over to the fan-out keeps losing to new events (here
/// after one round, `STACKPULSE_TEST_HANDOVER_ROUNDS=1`) closes the connection with
/// 1012 instead of going live and maybe sending an event twice; a client that
/// resumes as the contract says gets every seq once, in order.
#[tokio::test]
async fn a_subscribe_outpaced_by_publishing_resumes_without_a_duplicate() {
    let server = common::Server::lambda_local(
        &["--publisher-key", common::KEY],
        &[("STACKPULSE_TEST_HANDOVER_ROUNDS", "1")],
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publisher = Some({
        let (http, url, stop) = (server.http.clone(), server.url("/v1/events"), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let resp = http
                    .post(&url)
                    .bearer_auth(common::KEY)
                    .json(&json!({"type":"deployment.status","deployment_id":"fast","data":{"status":"x"}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status().as_u16(), 202);
                let body: Value = resp.json().await.expect("json");
                last = body["seq"].as_u64().expect("seq");
            }
            last
        })
    });
    let mut c = server.connect().await;
    c.subscribe("fast", Some(0), None).await.expect("send");
    let mut seqs: Vec<u64> = Vec::new();
    let mut resyncs = 0;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let publisher_done = resyncs >= 1;
        if let Some(p) = publisher.take_if(|_| publisher_done) {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            last = Some(p.await.expect("publisher"));
            // Events published meanwhile may come by a hand-over that ends in 1012
            // again; the loop goes on until the last one arrived.
        }
        if last.is_some() && seqs.last() == last.as_ref() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {:?} ({resyncs} resyncs)",
            seqs.last()
        );
        match common::next(&mut c).await {
            stackpulse::client::Frame::Event(e) if e.event_type == "deployment.status" => {
                seqs.push(e.seq)
            }
            stackpulse::client::Frame::Event(_) => {} // the snapshot of a new topic
            stackpulse::client::Frame::Control(_) => {}
            stackpulse::client::Frame::Closed(Some(close)) if close.code == 1012 => {
                resyncs += 1;
                c.reconnect().await.expect("reconnect");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(resyncs >= 1);
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "every seq once, in order, across {resyncs} resyncs"
    );
}
