//! SNS push ingest through the real server binary: `POST /v1/ingest/sns` verifies
//! the message's signature against the certificate at its `SigningCertURL`, checks
//! `TopicArn`, confirms subscriptions, and a CloudFormation notification wakes the
//! stack's poller like `POST /v1/ingest/eventbridge` does.
//!
//! No AWS: the test signs messages with its own RSA certificate (openssl), and the
//! server runs with `--sns-endpoint-url` pointing at a local HTTP server that
//! serves that certificate and records every request (certificates and
//! `SubscribeURL`s). The messages still name `https://sns.us-east-1.amazonaws.com`,
//! so the host rule is the production one. The servers poll every 30 s: an event
//! that arrives within a few seconds was fetched because of the push.

mod cfn_support;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use cfn_support::fake_cfn::FakeCfn;
use cfn_support::{slow_stack, AWS_ENV};
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};
use stackpulse::client::{Client, Frame};
use stackpulse_protocol::Event;
use stackpulse_testkit::sns_keys::{sign, SnsKeys as Keys};

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:stack-events";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
/// Without a push, the next poll would come this much later.
const POLL: &str = "30";
/// A pushed stack's next events must arrive within this (the poll is 30 s).
const PUSHED: Duration = Duration::from_secs(10);

fn keys() -> Keys {
    Keys::generate()
}

/// The string SNS signs, written out independently of the server's code.
fn string_to_sign(m: &Value) -> String {
    let keys: &[&str] = if m["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    keys.iter()
        .filter_map(|k| m[*k].as_str().map(|v| format!("{k}\n{v}\n")))
        .collect()
}

fn signed(mut m: Value, version: &str, key: &Path) -> Value {
    m["SignatureVersion"] = json!(version);
    m["Signature"] = json!(sign(key, version, &string_to_sign(&m)));
    m
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A CloudFormation stack notification for `stack` (in us-east-1).
fn notification(stack: &str) -> Value {
    let arn = format!("arn:aws:cloudformation:us-east-1:123456789012:stack/{stack}/0a1b2c3d");
    let message = format!(
        "StackId='{arn}'\nTimestamp='2026-12-03T09:00:00.123Z'\nEventId='Bucket-1'\n\
         LogicalResourceId='Bucket'\nNamespace='123456789012'\nPhysicalResourceId='bucket-1'\n\
         PrincipalId='AIDAEXAMPLE'\nResourceProperties='{{\"BucketName\":\"b\"}}\n'\n\
         ResourceStatus='CREATE_COMPLETE'\nResourceStatusReason=''\n\
         ResourceType='AWS::S3::Bucket'\nStackName='{stack}'\nClientRequestToken='null'\n"
    );
    json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Subject": "AWS CloudFormation Notification",
        "Message": message,
        "Timestamp": now(),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    })
}

fn confirmation(kind: &str) -> Value {
    json!({
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e2",
        "TopicArn": TOPIC,
        "Message": format!("You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2"),
        "Timestamp": now(),
        "SigningCertURL": CERT_URL,
    })
}

/// What the fake SNS host serves (the certificate) and what it saw (every request).
type SnsHostState = (Arc<Vec<u8>>, Arc<Mutex<Vec<String>>>);

/// Stands in for `https://sns.us-east-1.amazonaws.com`: serves the test's
/// certificate at any `.pem` path, answers every other GET 200, records them all.
struct SnsHost {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl SnsHost {
    async fn start(cert_pem: Vec<u8>) -> SnsHost {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = (Arc::new(cert_pem), requests.clone());
        let app = axum::Router::new()
            .fallback(
                |State((pem, seen)): State<SnsHostState>, uri: Uri| async move {
                    seen.lock().push(uri.to_string());
                    if uri.path().ends_with(".pem") {
                        (StatusCode::OK, pem.as_ref().clone()).into_response()
                    } else {
                        (StatusCode::OK, "<ConfirmSubscriptionResponse/>").into_response()
                    }
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SnsHost { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().clone()
    }
}

async fn server(endpoint: &str, sns: &SnsHost, extra: &[&str]) -> Server {
    let sns_url = sns.url();
    let mut args = cfn_support::aws_flags(
        endpoint,
        &[
            "--poll-interval",
            POLL,
            "--sns-topic-arn",
            TOPIC,
            "--sns-endpoint-url",
            &sns_url,
        ],
    );
    args.extend_from_slice(extra);
    Server::spawn(&args, AWS_ENV).await
}

/// Posts a body as SNS does (text/plain, the type header), checked against
/// openapi.yaml.
async fn post(server: &Server, body: String, kind: Option<&str>) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url("/v1/ingest/sns"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("user-agent", "Amazon Simple Notification Service Agent")
        .body(body);
    if let Some(kind) = kind {
        req = req.header("x-amz-sns-message-type", kind);
    }
    let resp = req.send().await.expect("POST /v1/ingest/sns");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    contract::contract().http("POST", "/v1/ingest/sns", status, &text);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn push(server: &Server, m: &Value) -> (u16, Value) {
    post(server, m.to_string(), m["Type"].as_str()).await
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

/// Subscribes to `stack`, sees its first poll, then one signed notification makes
/// the poller fetch the rest at once instead of 30 s later.
async fn pushed_stack_completes_fast(node: &Server, keys: &Keys, stack: &str, version: &str) {
    let topic = format!("stack:{stack}");
    let mut c = node.connect().await;
    c.subscribe(&topic, Some(0), None).await.expect("subscribe");
    let mut resources = 0;
    while resources < 2 {
        if next_event(&mut c).await.event_type == "resource.status" {
            resources += 1;
        }
    }
    // Let the poller reach its 30 s wait.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let (code, body) = push(node, &signed(notification(stack), version, &keys.key)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"stack": stack, "region": "us-east-1", "topic": topic})
    );
    loop {
        let e = next_event(&mut c).await;
        if e.event_type == "stack.deployed" {
            break;
        }
        assert_ne!(e.event_type, "stack.failed", "{e:?}");
    }
    let took = started.elapsed();
    assert!(
        took < PUSHED,
        "the SNS push (v{version}) did not wake the poller: {took:?}"
    );
}

#[tokio::test]
async fn signed_v1_and_v2_notifications_wake_the_poller() {
    let keys = keys();
    let sns = SnsHost::start(keys.cert_pem.clone()).await;
    let fake = FakeCfn::start(vec![slow_stack("sns-one", 2), slow_stack("sns-two", 2)]).await;
    let node = server(&fake.endpoint, &sns, &[]).await;
    pushed_stack_completes_fast(&node, &keys, "sns-one", "1").await;
    pushed_stack_completes_fast(&node, &keys, "sns-two", "2").await;
    let certs: Vec<String> = sns
        .requests()
        .into_iter()
        .filter(|r| r.ends_with(".pem"))
        .collect();
    assert_eq!(
        certs,
        ["/SimpleNotificationService-test.pem"],
        "the certificate is fetched once (the SNS URL's path on the local host), then cached"
    );
    assert_eq!(
        node.metric("stackpulse_ingest_sns_messages_total{result=\"woken\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_subscription_confirmation_gets_the_subscribe_url() {
    let keys = keys();
    let sns = SnsHost::start(keys.cert_pem.clone()).await;
    let fake = FakeCfn::start(vec![]).await;
    let node = server(&fake.endpoint, &sns, &[]).await;
    let m = signed(confirmation("SubscriptionConfirmation"), "1", &keys.key);
    let (code, body) = push(&node, &m).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({ "confirmed": TOPIC }));
    let confirms: Vec<String> = sns
        .requests()
        .into_iter()
        .filter(|r| r.contains("Action=ConfirmSubscription"))
        .collect();
    assert_eq!(confirms.len(), 1, "{:?}", sns.requests());
    assert!(
        confirms[0].contains("Token=2336412f37fb687f5d51e6e2"),
        "{confirms:?}"
    );

    let m = signed(confirmation("UnsubscribeConfirmation"), "2", &keys.key);
    let (code, body) = push(&node, &m).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["ignored"].as_str().is_some(), "{body}");
    assert_eq!(
        sns.requests()
            .iter()
            .filter(|r| r.contains("Action=ConfirmSubscription"))
            .count(),
        1,
        "an unsubscribe confirmation is not confirmed"
    );
}

#[tokio::test]
async fn forged_and_foreign_messages_are_refused_and_wake_nothing() {
    let keys = keys();
    let sns = SnsHost::start(keys.cert_pem.clone()).await;
    let fake = FakeCfn::start(vec![]).await;
    let node = server(&fake.endpoint, &sns, &["--stack-allow", "app-*"]).await;
    let good = signed(notification("app-one"), "2", &keys.key);

    let mut tampered = good.clone();
    tampered["Message"] = json!(notification("app-two")["Message"]);
    let mut wrong_topic = signed(notification("app-one"), "2", &keys.key);
    wrong_topic["TopicArn"] = json!("arn:aws:sns:us-east-1:123456789012:someone-else");
    let mut evil_host = notification("app-one");
    evil_host["SigningCertURL"] =
        json!("https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-test.pem");
    let evil_host = signed(evil_host, "2", &keys.key);
    let mut plain_http = notification("app-one");
    plain_http["SigningCertURL"] =
        json!("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem");
    let plain_http = signed(plain_http, "1", &keys.key);
    let mut old = notification("app-one");
    old["Timestamp"] = json!("2026-01-01T00:00:00.000Z");
    let old = signed(old, "2", &keys.key);
    let stranger = self::keys();
    let foreign_key = signed(notification("app-one"), "2", &stranger.key);
    let mut evil_confirm = confirmation("SubscriptionConfirmation");
    evil_confirm["SubscribeURL"] = json!("https://evil.example/?Action=ConfirmSubscription");
    let evil_confirm = signed(evil_confirm, "2", &keys.key);
    for (what, m, reason) in [
        ("tampered", &tampered, "signature"),
        ("foreign key", &foreign_key, "signature"),
        ("wrong topic", &wrong_topic, "--sns-topic-arn"),
        ("evil host", &evil_host, "SigningCertURL"),
        ("http", &plain_http, "SigningCertURL"),
        ("replay", &old, "replay"),
        ("evil SubscribeURL", &evil_confirm, "SubscribeURL"),
    ] {
        let (code, body) = push(&node, m).await;
        assert_eq!(code, 403, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{what}: {body}");
    }

    // Malformed: 400 with a reason.
    let mut no_signature = good.clone();
    no_signature
        .as_object_mut()
        .expect("object")
        .remove("Signature");
    let mut bad_stack = notification("app-one");
    bad_stack["Message"] = json!("StackId='arn:aws:s3:::bucket'\n");
    let bad_stack = signed(bad_stack, "2", &keys.key);
    for (what, body, kind) in [
        ("not json", "{".to_string(), None),
        (
            "no signature",
            no_signature.to_string(),
            Some("Notification"),
        ),
        ("bad StackId", bad_stack.to_string(), Some("Notification")),
        (
            "header disagrees",
            good.to_string(),
            Some("SubscriptionConfirmation"),
        ),
    ] {
        let (code, reply) = post(&node, body, kind).await;
        assert_eq!(code, 400, "{what}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {reply}"
        );
    }

    // Nothing above was woken, no confirmation was sent, and no URL outside the
    // SNS host rule was fetched.
    assert_eq!(
        node.metric("stackpulse_ingest_sns_messages_total{result=\"woken\"}")
            .await,
        0.0
    );
    let requests = sns.requests();
    assert!(
        requests
            .iter()
            .all(|r| r == "/SimpleNotificationService-test.pem"),
        "{requests:?}"
    );

    // Verified but asking for nothing: 200 ignored.
    let mut other = notification("app-one");
    other["Message"] = json!("hello, not a stack notification");
    let (code, body) = push(&node, &signed(other, "1", &keys.key)).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["ignored"]
            .as_str()
            .is_some_and(|r| r.contains("StackId")),
        "{body}"
    );
    let (code, body) = push(&node, &signed(notification("db-one"), "1", &keys.key)).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["ignored"]
            .as_str()
            .is_some_and(|r| r.contains("--stack-allow")),
        "{body}"
    );
    // And the genuine one is accepted.
    let (code, body) = push(&node, &good).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["topic"], "stack:app-one");
    drop(stranger.dir);
}

#[tokio::test]
async fn without_a_topic_arn_the_endpoint_is_off() {
    let fake = FakeCfn::start(vec![]).await;
    let node = Server::spawn(&cfn_support::aws_flags(&fake.endpoint, &[]), AWS_ENV).await;
    let (code, body) = post(&node, "{}".into(), Some("Notification")).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("--sns-topic-arn")),
        "{body}"
    );
}

#[tokio::test]
async fn an_unreachable_certificate_is_503_so_sns_retries() {
    let keys = keys();
    let fake = FakeCfn::start(vec![]).await;
    // Nothing listens there once the listener is dropped: the certificate fetch fails.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let node = Server::spawn(
        &cfn_support::aws_flags(
            &fake.endpoint,
            &[
                "--sns-topic-arn",
                TOPIC,
                "--sns-endpoint-url",
                &format!("http://{closed}"),
            ],
        ),
        AWS_ENV,
    )
    .await;
    let (code, body) = push(&node, &signed(notification("app-one"), "2", &keys.key)).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("signing certificate")),
        "{body}"
    );
}
