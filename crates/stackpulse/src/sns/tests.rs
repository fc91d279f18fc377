//! The verifier against messages signed here, with a self-signed RSA certificate
//! made by openssl (as the TLS tests do), served by a fake [`Fetcher`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::{json, Value};

use stackpulse_testkit::sns_keys::{sign, SnsKeys as Keys};

use super::*;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:stack-events";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";

/// A key and its self-signed certificate (PEM), made once per test process.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-03T09:00:30Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn notification(subject: Option<&str>) -> Value {
    let mut m = json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": "StackId='arn:aws:cloudformation:us-east-1:123456789012:stack/app/1'\nStackName='app'\n",
        "Timestamp": "2026-12-03T09:00:00.123Z",
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&x=1",
        "MessageAttributes": {"a": {"Type": "String", "Value": "b"}},
    });
    if let Some(s) = subject {
        m["Subject"] = json!(s);
    }
    m
}

fn confirmation(kind: &str) -> Value {
    json!({
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37f",
        "TopicArn": TOPIC,
        "Message": format!("You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37f"),
        "Timestamp": "2026-12-03T09:00:00.123Z",
        "SigningCertURL": CERT_URL,
    })
}

/// Signs `m` in place with `key` (SignatureVersion `version`).
fn signed_with(mut m: Value, version: &str, key: &std::path::Path) -> Value {
    m["SignatureVersion"] = json!(version);
    m["Signature"] = json!("");
    let parsed: SnsMessage = serde_json::from_value(m.clone()).expect("message");
    let sts = verify::string_to_sign(&parsed).expect("string to sign");
    m["Signature"] = json!(sign(key, version, &sts));
    m
}

fn signed(m: Value, version: &str) -> Value {
    signed_with(m, version, &keys().key)
}

/// Serves `cert_pem` at [`CERT_URL`], records every GET.
#[derive(Default)]
struct FakeFetcher {
    bodies: HashMap<String, Vec<u8>>,
    gets: AtomicUsize,
    seen: parking_lot::Mutex<Vec<String>>,
}

#[async_trait]
impl Fetcher for FakeFetcher {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, String> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().push(url.to_string());
        if url.path().ends_with(".pem") {
            self.bodies
                .get(url.as_str())
                .cloned()
                .ok_or_else(|| format!("GET {url} answered 404 Not Found"))
        } else {
            Ok(b"<ConfirmSubscriptionResponse/>".to_vec())
        }
    }
}

fn verifier_with(pem: &[u8]) -> (Verifier, Arc<FakeFetcher>) {
    let mut fake = FakeFetcher::default();
    fake.bodies.insert(CERT_URL.into(), pem.to_vec());
    let fake = Arc::new(fake);
    (Verifier::new(vec![TOPIC.into()], fake.clone()), fake)
}

fn verifier() -> (Verifier, Arc<FakeFetcher>) {
    verifier_with(&keys().cert_pem)
}

async fn verify(v: &Verifier, m: &Value) -> Result<Verified, Rejection> {
    v.verify(m.to_string().as_bytes(), now()).await
}

#[test]
fn the_string_to_sign_follows_the_aws_order() {
    let mut n = notification(None);
    n["SignatureVersion"] = json!("1");
    n["Signature"] = json!("x");
    let parsed: SnsMessage = serde_json::from_value(n.clone()).expect("message");
    assert_eq!(
        verify::string_to_sign(&parsed).expect("sts"),
        "Message\nStackId='arn:aws:cloudformation:us-east-1:123456789012:stack/app/1'\nStackName='app'\n\n\
         MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
         Timestamp\n2026-12-03T09:00:00.123Z\n\
         TopicArn\narn:aws:sns:us-east-1:123456789012:stack-events\n\
         Type\nNotification\n"
    );
    n["Subject"] = json!("AWS CloudFormation Notification");
    let parsed: SnsMessage = serde_json::from_value(n.clone()).expect("message");
    let sts = verify::string_to_sign(&parsed).expect("sts");
    assert!(
        sts.contains("MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\nSubject\nAWS CloudFormation Notification\nTimestamp\n"),
        "{sts}"
    );
    // `"Subject": null` (as Lambda delivers it) is no subject.
    n["Subject"] = Value::Null;
    let parsed: SnsMessage = serde_json::from_value(n).expect("message");
    assert!(!verify::string_to_sign(&parsed)
        .expect("sts")
        .contains("Subject"));

    let mut c = confirmation("SubscriptionConfirmation");
    c["SignatureVersion"] = json!("2");
    c["Signature"] = json!("x");
    let parsed: SnsMessage = serde_json::from_value(c.clone()).expect("message");
    let sts = verify::string_to_sign(&parsed).expect("sts");
    let expected = format!(
        "Message\n{}\nMessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n\
         SubscribeURL\n{}\nTimestamp\n2026-12-03T09:00:00.123Z\n",
        c["Message"].as_str().expect("message"),
        c["SubscribeURL"].as_str().expect("url"),
    );
    assert!(sts.starts_with(&expected), "{sts}");
    assert!(sts.ends_with("Token\n2336412f37f\nTopicArn\narn:aws:sns:us-east-1:123456789012:stack-events\nType\nSubscriptionConfirmation\n"));
    c.as_object_mut().expect("object").remove("Token");
    let parsed: SnsMessage = serde_json::from_value(c).expect("message");
    assert!(matches!(
        verify::string_to_sign(&parsed),
        Err(Rejection::Invalid(m)) if m.contains("Token")
    ));
}

#[tokio::test]
async fn both_signature_versions_verify() {
    let (v, fake) = verifier();
    for version in ["1", "2"] {
        for subject in [None, Some("AWS CloudFormation Notification")] {
            let m = signed(notification(subject), version);
            let ok = verify(&v, &m).await.expect("verifies");
            assert_eq!(ok.kind, Kind::Notification);
            assert!(ok.subscribe_url.is_none());
        }
        for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
            let ok = verify(&v, &signed(confirmation(kind), version))
                .await
                .expect("verifies");
            let url = ok.subscribe_url.expect("SubscribeURL");
            assert_eq!(url.host_str(), Some("sns.us-east-1.amazonaws.com"));
        }
    }
    assert_eq!(
        fake.gets.load(Ordering::SeqCst),
        1,
        "the certificate is fetched once, then cached"
    );
    assert_eq!(v.cached_certificates(), 1);
}

#[tokio::test]
async fn tampering_and_foreign_keys_are_refused() {
    let (v, _) = verifier();
    for version in ["1", "2"] {
        let good = signed(notification(None), version);
        let mut tampered = good.clone();
        tampered["Message"] =
            json!("StackId='arn:aws:cloudformation:us-east-1:123456789012:stack/other/1'\n");
        let mut with_subject = good.clone();
        with_subject["Subject"] = json!("added");
        let mut other_version = good.clone();
        other_version["SignatureVersion"] = json!(if version == "1" { "2" } else { "1" });
        for (what, m) in [
            ("message", tampered),
            ("subject", with_subject),
            ("version", other_version),
        ] {
            match verify(&v, &m).await {
                Err(Rejection::Refused(reason)) => {
                    assert!(
                        reason.contains("signature does not verify"),
                        "{what}: {reason}"
                    )
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    // Signed by another key than the certificate's.
    let stranger = Keys::generate();
    let m = signed_with(notification(None), "2", &stranger.key);
    assert!(matches!(verify(&v, &m).await, Err(Rejection::Refused(_))));
    // A certificate URL that serves another certificate.
    let (v2, _) = verifier_with(&stranger.cert_pem);
    let m = signed(notification(None), "1");
    assert!(matches!(verify(&v2, &m).await, Err(Rejection::Refused(_))));
}

#[tokio::test]
async fn topic_url_and_age_are_checked_before_any_fetch() {
    let (v, fake) = verifier();
    let mut wrong_topic = signed(notification(None), "2");
    wrong_topic["TopicArn"] = json!("arn:aws:sns:us-east-1:123456789012:other");
    match verify(&v, &wrong_topic).await {
        Err(Rejection::Refused(r)) => assert!(r.contains("--sns-topic-arn"), "{r}"),
        other => panic!("{other:?}"),
    }
    for evil in [
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-test.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://evil.example/SimpleNotificationService-test.pem",
    ] {
        let mut m = notification(None);
        m["SigningCertURL"] = json!(evil);
        let m = signed(m, "2");
        match verify(&v, &m).await {
            Err(Rejection::Refused(r)) => assert!(r.contains("SigningCertURL"), "{r}"),
            other => panic!("{evil}: {other:?}"),
        }
    }
    let mut old = notification(None);
    old["Timestamp"] = json!("2026-12-03T07:59:00.000Z");
    match verify(&v, &signed(old, "2")).await {
        Err(Rejection::Refused(r)) => assert!(r.contains("replay"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.gets.load(Ordering::SeqCst), 0, "nothing fetched");

    // A confirmation whose SubscribeURL is not SNS's: refused after the signature.
    let mut c = confirmation("SubscriptionConfirmation");
    c["SubscribeURL"] = json!("https://evil.example/?Action=ConfirmSubscription");
    match verify(&v, &signed(c, "1")).await {
        Err(Rejection::Refused(r)) => assert!(r.contains("SubscribeURL"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_messages_and_fetch_failures() {
    let (v, _) = verifier();
    for body in [
        "".to_string(),
        "{".to_string(),
        "[]".to_string(),
        json!({"Type": "Notification"}).to_string(),
    ] {
        assert!(
            matches!(
                v.verify(body.as_bytes(), now()).await,
                Err(Rejection::Invalid(_))
            ),
            "{body}"
        );
    }
    let good = signed(notification(None), "2");
    let mut bad_type = good.clone();
    bad_type["Type"] = json!("Gossip");
    let mut bad_version = good.clone();
    bad_version["SignatureVersion"] = json!("3");
    let mut bad_base64 = good.clone();
    bad_base64["Signature"] = json!("!!not base64!!");
    let mut bad_time = good.clone();
    bad_time["Timestamp"] = json!("yesterday");
    for (what, m) in [
        ("type", bad_type),
        ("version", bad_version),
        ("base64", bad_base64),
        ("time", bad_time),
    ] {
        match verify(&v, &m).await {
            Err(Rejection::Invalid(reason)) => assert!(!reason.is_empty()),
            other => panic!("{what}: {other:?}"),
        }
    }
    // The certificate cannot be fetched: 503 (SNS retries), and nothing is cached.
    let mut m = notification(None);
    m["SigningCertURL"] = json!("https://sns.us-east-1.amazonaws.com/missing.pem");
    match verify(&v, &signed(m, "2")).await {
        Err(Rejection::Unavailable(r)) => assert!(r.contains("404"), "{r}"),
        other => panic!("{other:?}"),
    }
    // Not a certificate: refused.
    let (v, _) = verifier_with(b"<html>hello</html>");
    assert!(matches!(
        verify(&v, &signed(notification(None), "2")).await,
        Err(Rejection::Refused(_))
    ));
    assert_eq!(v.cached_certificates(), 0);
}

#[tokio::test]
async fn confirm_gets_the_subscribe_url() {
    let (v, fake) = verifier();
    let ok = verify(&v, &signed(confirmation("SubscriptionConfirmation"), "2"))
        .await
        .expect("verifies");
    v.confirm(ok.subscribe_url.as_ref().expect("url"))
        .await
        .expect("confirmed");
    let seen = fake.seen.lock().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].contains("Action=ConfirmSubscription"), "{seen:?}");
}
