//! The HTTP edge: deployers, Origin/Host, content types, timeouts, proxies.
//!
//! One test per finding of the December review (#1, #8, #11, #12, #19, #20, #24),
//! against the real binary. CreateStack goes to a capturing fake endpoint defined
//! here, so the test can read the exact parameters the server sent to AWS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::tokens::{self, Jwks};
use crate::common::{Server, KEY, WAIT};

/// Static credentials and no profile lookups for a server that talks to a fake AWS.
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_CONFIG_FILE", "/nonexistent/stackpulse-test-aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/stackpulse-test-aws-credentials",
    ),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

const TEMPLATE: &str = r#"{"Resources":{"T":{"Type":"AWS::SNS::Topic"}}}"#;

/// A CloudFormation endpoint that records every request body and answers each
/// `CreateStack` with `answer`.
struct FakeAws {
    endpoint: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl FakeAws {
    async fn start(answer: (u16, String)) -> FakeAws {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let _ = serve_aws(sock, seen, answer).await;
                });
            }
        });
        FakeAws { endpoint, bodies }
    }

    fn create_stack_bodies(&self) -> Vec<String> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter(|b| b.contains("Action=CreateStack"))
            .cloned()
            .collect()
    }
}

async fn serve_aws(
    mut sock: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    (status, xml): (u16, String),
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(body) = stackpulse_cfn::scripted::read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        seen.lock().expect("lock").push(body);
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nx-amzn-RequestId: r\r\n\r\n{xml}",
            xml.len()
        );
        sock.write_all(resp.as_bytes()).await?;
    }
}

fn created() -> (u16, String) {
    (
        200,
        "<CreateStackResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\">\
         <CreateStackResult><StackId>arn:aws:cloudformation:us-east-1:123456789012:stack/s/1</StackId>\
         </CreateStackResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>\
         </CreateStackResponse>"
            .into(),
    )
}

fn access_denied() -> (u16, String) {
    (
        403,
        "<ErrorResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\"><Error>\
         <Type>Sender</Type><Code>AccessDenied</Code><Message>User: \
         arn:aws:iam::123456789012:user/ops is not authorized to perform: \
         cloudformation:CreateStack</Message></Error><RequestId>r</RequestId></ErrorResponse>"
            .into(),
    )
}

async fn deploy(server: &Server, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = server.http.post(server.url("/canvas/deploy")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST /canvas/deploy");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs `stackpulse serve` with `args` expecting it to refuse to start; returns stderr.
async fn start_up_error(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("STACKPULSE_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server should refuse to start, not run")
    .expect("run stackpulse");
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// #1: only deployers create stacks, with allowed capabilities only, under
/// `--deploy-role-arn`.
#[tokio::test]
async fn canvas_deploy_needs_a_deployer_and_allowed_capabilities() {
    let aws = FakeAws::start(created()).await;
    let jwks = Jwks::serve("jwks.json").await;
    let role = "arn:aws:iam::123456789012:role/cfn-deployer";
    let server = Server::start_with_env(
        &[
            "--jwt-issuer",
            tokens::ISSUER,
            "--jwks-url",
            &jwks.url,
            "--cognito-client-id",
            tokens::CLIENT,
            "--jwt-leeway",
            "0",
            "--aws-endpoint-url",
            &aws.endpoint,
            "--aws-region",
            "us-east-1",
            "--deploy-capabilities",
            "CAPABILITY_IAM",
            "--deploy-role-arn",
            role,
        ],
        AWS_ENV,
    )
    .await;
    let eve = tokens::sign(&tokens::id_claims("eve", &[]));
    let dora = tokens::sign(&tokens::id_claims("dora", &["deployers"]));
    let ada = tokens::sign(&tokens::id_claims("ada", &["admin"]));

    let (code, body) = deploy(&server, Some(&eve), &json!({"templateBody": TEMPLATE})).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("deployer")),
        "{body}"
    );
    assert!(aws.create_stack_bodies().is_empty());

    let (code, body) = deploy(
        &server,
        Some(&dora),
        &json!({"templateBody": TEMPLATE, "capabilities": ["CAPABILITY_NAMED_IAM"]}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("--deploy-capabilities")),
        "{body}"
    );
    assert!(aws.create_stack_bodies().is_empty());

    let (code, body) = deploy(
        &server,
        Some(&dora),
        &json!({"templateBody": TEMPLATE, "stackName": "by-dora", "capabilities": ["CAPABILITY_IAM"]}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let sent = aws.create_stack_bodies();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].contains("Capabilities.member.1=CAPABILITY_IAM"),
        "{}",
        sent[0]
    );
    assert!(
        sent[0].contains("RoleARN=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcfn-deployer"),
        "{}",
        sent[0]
    );

    for who in [ada.as_str(), KEY] {
        let (code, body) = deploy(&server, Some(who), &json!({"templateBody": TEMPLATE})).await;
        assert_eq!(code, 201, "{body}");
    }
    assert_eq!(aws.create_stack_bodies().len(), 3);
}

/// #20: AWS's error text (principal ARN, account id) stays in the server log.
#[tokio::test]
async fn canvas_deploy_does_not_echo_aws_error_text() {
    let aws = FakeAws::start(access_denied()).await;
    let server = Server::start_with_env(
        &[
            "--aws-endpoint-url",
            &aws.endpoint,
            "--aws-region",
            "us-east-1",
        ],
        AWS_ENV,
    )
    .await;
    let (code, body) = deploy(&server, Some(KEY), &json!({"templateBody": TEMPLATE})).await;
    assert_eq!(code, 502, "{body}");
    let text = body.to_string();
    assert!(!text.contains("123456789012"), "{text}");
    assert!(!text.contains("arn:aws:iam"), "{text}");
    assert_eq!(body["code"], "access_denied", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// #11: without auth, a foreign `Host` (DNS rebinding) or a foreign `Origin` on a
/// socket or a POST is refused with 403, on every route and socket dialect.
#[tokio::test]
async fn loopback_mode_refuses_foreign_host_and_origin() {
    let server = Server::start(&["--allowed-origin", "https://dash.example"]).await;
    let port = server.addr.port();
    let forbidden = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    };

    // Host: rebinding names are refused on plain routes; loopback names are not.
    for path in ["/healthz", "/v1/topics/x", "/"] {
        let resp = server
            .http
            .get(server.url(path))
            .header("host", format!("rebind.evil.example:{port}"))
            .send()
            .await
            .expect("get");
        let (status, body) = forbidden(resp).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".into(),
    ] {
        let resp = server
            .http
            .get(server.url("/healthz"))
            .header("host", host.clone())
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200, "{host}");
    }

    // Origin: every socket dialect refuses a foreign page, accepts loopback and
    // the listed origins.
    let dialects: [(&str, Option<&str>); 4] = [
        ("/ws", None),
        ("/canvas/deploy/track/some-stack", None),
        ("/graphql/realtime", Some("graphql-ws")),
        ("/graphql", Some("graphql-transport-ws")),
    ];
    for (path, protocol) in dialects {
        for (origin, want) in [
            ("https://evil.example", 403),
            ("http://localhost:5173", 101),
            ("https://dash.example", 101),
        ] {
            let mut req = server.upgrade_request(path).header("origin", origin);
            if let Some(p) = protocol {
                req = req.header("sec-websocket-protocol", p);
            }
            let resp = req.send().await.expect("upgrade");
            let (status, body) = forbidden(resp).await;
            assert_eq!(status, want, "{path} from {origin}: {body}");
            if want == 403 {
                assert!(body["message"].is_string(), "{body}");
            }
        }
    }

    // A cross-site POST (a CSRF form or a no-cors fetch) is refused too.
    let resp = server
        .http
        .post(server.url("/v1/events"))
        .bearer_auth(KEY)
        .header("origin", "https://evil.example")
        .json(&json!({"type":"deployment.status","deployment_id":"d","data":{"status":"x"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        server.get("/v1/topics/d").await.0,
        404,
        "nothing was published"
    );
}

/// #11: JSON POST endpoints refuse other content types (a CORS "simple request").
#[tokio::test]
async fn json_posts_need_a_json_content_type() {
    let server = Server::start(&[]).await;
    for path in [
        "/v1/events",
        "/v1/deployments",
        "/canvas/deploy",
        "/graphql",
    ] {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut req = server
                .http
                .post(server.url(path))
                .bearer_auth(KEY)
                .body(r#"{"query":"{ __typename }"}"#);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let resp = req.send().await.expect("post");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 415, "{path} {content_type:?}: {body}");
            assert!(body["message"].is_string(), "{body}");
        }
    }
    let resp = server
        .http
        .post(server.url("/graphql"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"query":"{ __typename }"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
}

/// Reads until the server closes the connection; `true` if it did within `limit`.
async fn closed_within(sock: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// The harness's self-signed certificate, as path strings for flags.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = super::common::self_signed(dir);
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// #8: a half-sent request is closed by the server (header read timeout), and so
/// is an idle keep-alive connection, on plain HTTP and on TLS alike.
#[tokio::test]
async fn half_sent_requests_and_idle_keep_alive_are_closed() {
    const HALF: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    let limit = Duration::from_secs(15);
    let server = Server::start(&["--http-header-timeout", "1"]).await;
    let mut sock = TcpStream::connect(server.addr).await.expect("connect");
    sock.write_all(HALF).await.expect("write");
    assert!(
        closed_within(&mut sock, limit).await,
        "a half-sent request was still open after 15 s"
    );
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut idle, limit).await,
        "an idle keep-alive connection was still open after 15 s"
    );
    assert_eq!(server.get("/healthz").await.0, 200);

    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed(dir.path());
    let tls = Server::start(&[
        "--http-header-timeout",
        "1",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
    .await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).expect("cert");
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = connector.connect(name, tcp).await.expect("handshake");
    stream.write_all(HALF).await.expect("write");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a half-sent TLS request was still open after 15 s"
    );
}

/// #8: `--max-http-connections` caps open TCP connections; a freed place is reused.
#[tokio::test]
async fn http_connections_are_capped() {
    let server = Server::start(&["--max-http-connections", "2"]).await;
    let idle_a = TcpStream::connect(server.addr).await.expect("connect");
    let _idle_b = TcpStream::connect(server.addr).await.expect("connect");
    let third = tokio::time::timeout(Duration::from_secs(2), server.get("/healthz")).await;
    assert!(third.is_err(), "a third connection was served: {third:?}");
    drop(idle_a);
    let fourth = tokio::time::timeout(WAIT, server.get("/healthz"))
        .await
        .expect("served once a place is free");
    assert_eq!(fourth.0, 200);
}

async fn upgrade_from(server: &Server, xff: Option<&str>) -> u16 {
    let mut req = server.upgrade_request("/ws");
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.expect("upgrade").status().as_u16()
}

/// #12: behind a trusted proxy the per-IP bucket is the client's (the right-most
/// untrusted `X-Forwarded-For` entry, IPv6 by /64); otherwise the header is ignored.
#[tokio::test]
async fn per_ip_limits_use_the_forwarded_client_behind_a_trusted_proxy() {
    // Rate 1/s: a burst of 2 per bucket.
    let behind = Server::start(&[
        "--connect-rate-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.0/8",
    ])
    .await;
    assert_eq!(upgrade_from(&behind, Some("203.0.113.7")).await, 101);
    assert_eq!(
        upgrade_from(&behind, Some("198.51.100.1, 203.0.113.7")).await,
        101
    );
    assert_eq!(upgrade_from(&behind, Some("203.0.113.7")).await, 429);
    // Another client behind the same proxy has its own bucket, even if it prepends
    // a forged entry.
    assert_eq!(
        upgrade_from(&behind, Some("203.0.113.7, 203.0.113.8")).await,
        101
    );
    // IPv6 clients share a bucket per /64.
    assert_eq!(upgrade_from(&behind, Some("2001:db8::1")).await, 101);
    assert_eq!(upgrade_from(&behind, Some("2001:db8::2")).await, 101);
    assert_eq!(upgrade_from(&behind, Some("2001:db8::3")).await, 429);
    assert_eq!(upgrade_from(&behind, Some("2001:db8:0:1::1")).await, 101);

    // Without --trusted-proxy the header means nothing: one bucket for the peer.
    let direct = Server::start(&["--connect-rate-per-ip", "1"]).await;
    assert_eq!(upgrade_from(&direct, Some("203.0.113.1")).await, 101);
    assert_eq!(upgrade_from(&direct, Some("203.0.113.2")).await, 101);
    assert_eq!(upgrade_from(&direct, Some("203.0.113.3")).await, 429);
}

/// #19: the JWKS is fetched without following redirects, `http://` only on
/// loopback, and the leeway is bounded.
#[tokio::test]
async fn jwks_fetch_and_auth_settings_are_hardened() {
    // A JWKS URL that redirects to a valid key set: not followed, so no key loads.
    let jwks = Jwks::serve("jwks.json").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let redirect = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let target = jwks.url.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    let server = Server::start(&[
        "--jwt-issuer",
        tokens::ISSUER,
        "--jwks-url",
        &redirect,
        "--cognito-client-id",
        tokens::CLIENT,
        "--jwt-leeway",
        "0",
    ])
    .await;
    let alice = tokens::sign(&tokens::id_claims("alice", &[]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = server
        .upgrade_status("", Some(&format!("Bearer {alice}")))
        .await;
    assert_eq!(status, 401, "a redirected JWKS was followed");
    assert_eq!(jwks.fetch_count(), 0);

    let common = [
        "--jwt-issuer",
        tokens::ISSUER,
        "--cognito-client-id",
        tokens::CLIENT,
    ];
    let mut args = common.to_vec();
    args.extend(["--jwks-url", "http://keys.example.com/jwks.json"]);
    let err = start_up_error(&args).await;
    assert!(err.contains("jwks-url"), "{err}");

    let mut args = common.to_vec();
    args.extend(["--jwks-url", &jwks.url, "--jwt-leeway", "3600"]);
    let err = start_up_error(&args).await;
    assert!(err.contains("jwt-leeway"), "{err}");
}

/// #24: absurd durations are start-up errors naming the flag, not panics later.
#[tokio::test]
async fn absurd_durations_are_start_up_errors() {
    for flag in [
        "--poll-interval",
        "--tracker-grace",
        "--deployment-timeout",
        "--idle-timeout",
        "--history-retention",
    ] {
        let err = start_up_error(&[flag, "1e15"]).await;
        assert!(err.contains(&flag[2..]), "{flag}: {err}");
    }
}
