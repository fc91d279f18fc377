//! Test harness: starts the real `stackpulse` binary on a free loopback port and
//! talks to it with the real client over real sockets.
#![allow(dead_code)]

pub mod contract;
pub mod lossy;
pub mod tokens;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use stackpulse::client::{Client, Frame};
use stackpulse_protocol::{Event, ServerMessage};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const KEY: &str = "test-publisher-key";
/// Upper bound for any single awaited frame; generous for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// An HTTP client for tests (TLS needs the process-wide rustls provider).
pub fn http_client() -> reqwest::Client {
    stackpulse::auth::jwks_http::install_crypto_provider();
    reqwest::Client::new()
}

/// The variables a test that clears a child's environment (`env_clear`) passes on
/// anyway: LLVM_PROFILE_FILE, set when `scripts/coverage-rust.sh` measures coverage,
/// so the instrumented server writes its profile where the measurement reads it
/// (without it, a cleared child's lines are not counted and it litters its cwd).
pub fn coverage_env() -> Vec<(String, String)> {
    std::env::var("LLVM_PROFILE_FILE")
        .map(|v| vec![("LLVM_PROFILE_FILE".to_owned(), v)])
        .unwrap_or_default()
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http`, or `https` for a server started with `--tls-cert`.
    pub scheme: &'static str,
    pub http: reqwest::Client,
    /// The moto server (DynamoDB) of a `lambda-local` server, kept for its life.
    pub moto: Option<stackpulse_testkit::moto::Moto>,
}

/// Which server the harness starts: `serve`, or with
/// `STACKPULSE_TEST_SERVER=lambda-local` the serverless mode on moto's DynamoDB,
/// so the same protocol tests run against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    LambdaLocal,
}

impl Mode {
    pub fn from_env() -> Mode {
        match std::env::var("STACKPULSE_TEST_SERVER").as_deref() {
            Ok("lambda-local") => Mode::LambdaLocal,
            _ => Mode::Serve,
        }
    }
}

impl Server {
    /// Starts `stackpulse serve` with a publisher key and `extra` flags.
    pub async fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[]).await
    }

    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec!["--publisher-key", KEY];
        args.extend_from_slice(extra);
        Server::spawn(&args, env).await
    }

    /// Starts `stackpulse serve --bind 127.0.0.1:0` with exactly `args` and `env`.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_as(Mode::from_env(), args, env).await
    }

    /// Starts `lambda-local` on a fresh moto, whatever `STACKPULSE_TEST_SERVER` says.
    pub async fn lambda_local(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_as(Mode::LambdaLocal, args, env).await
    }

    /// Starts the server of `mode` on `127.0.0.1:0` with exactly `args` and `env`.
    pub async fn spawn_as(mode: Mode, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackpulse"));
        let moto = match mode {
            Mode::Serve => None,
            Mode::LambdaLocal => Some(stackpulse_testkit::moto::Moto::start_serial().await),
        };
        if let Some(moto) = &moto {
            cmd.env("AWS_ENDPOINT_URL", &moto.endpoint)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", "us-east-1");
        }
        let subcommand = match mode {
            Mode::Serve => "serve",
            Mode::LambdaLocal => "lambda-local",
        };
        cmd.args([subcommand, "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("STACKPULSE_CONFIG")
            .env_remove("STACKPULSE_PUBLISHER_KEYS")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("STACKPULSE_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn stackpulse");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("server start timed out")
            .expect("read stdout")
            .expect("server exited before listening");
        let (scheme, addr) = [
            ("http", "stackpulse listening on http://"),
            ("https", "stackpulse listening on https://"),
        ]
        .into_iter()
        .find_map(|(scheme, prefix)| line.strip_prefix(prefix).map(|a| (scheme, a)))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        let addr = addr.parse().expect("address");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            addr,
            scheme,
            http: http_client(),
            moto,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(), None)
            .await
            .expect("connect")
    }

    pub async fn connect_as(&self, token: &str) -> Client {
        Client::connect(&self.ws_url(), Some(token))
            .await
            .expect("connect")
    }

    /// Sends the server SIGTERM (as an orchestrator stopping it would).
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (up to [`WAIT`]) for the server to exit, and asserts it exited 0.
    pub async fn exits_cleanly(&mut self) {
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server did not exit")
            .expect("wait");
        assert!(exit.success(), "{exit:?}");
    }

    /// A plain HTTP request with WebSocket upgrade headers, for reading refusals.
    pub fn upgrade_request(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path_and_query))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    /// A WebSocket upgrade request made with plain HTTP, to read refusals:
    /// returns the status and the body.
    pub async fn upgrade_status(&self, query: &str, authorization: Option<&str>) -> (u16, String) {
        let mut req = self.upgrade_request(&format!("/ws{query}"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("upgrade request");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        contract::contract().http("GET", &format!("/ws{query}"), status, &body);
        (status, body)
    }

    /// Publishes a raw body with the test key; returns status and JSON body.
    pub async fn publish_raw(&self, body: &Value) -> (u16, Value) {
        if let Some(t) = body["type"].as_str() {
            contract::contract().published(t);
        }
        let resp = self
            .http
            .post(self.url("/v1/events"))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("publish request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        contract::contract().http("POST", "/v1/events", status, &text);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Publishes a `deployment.status` event and returns its seq.
    pub async fn publish(&self, topic: &str, status: &str) -> u64 {
        let (code, body) = self
            .publish_raw(
                &json!({"type":"deployment.status","deployment_id":topic,"data":{"status":status}}),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        body["seq"].as_u64().expect("seq")
    }

    /// Publishes `n` `log.created` events of `bytes` bytes each to `topic` from a
    /// task of its own (asserting each is accepted), for slow-consumer tests.
    pub fn publish_in_background(
        &self,
        topic: &str,
        n: usize,
        bytes: usize,
    ) -> tokio::task::JoinHandle<()> {
        let http = self.http.clone();
        let url = self.url("/v1/events");
        let body = json!({"type":"log.created","deployment_id":topic,"data":{"level":"info","message":"x".repeat(bytes)}});
        tokio::spawn(async move {
            for _ in 0..n {
                let resp = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status().as_u16(), 202);
            }
        })
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        contract::contract().http("GET", path, status, &body);
        (status, body)
    }

    /// Reads one counter or gauge from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

/// The next frame, failing the test after [`WAIT`] or when the frame breaks the
/// contract in `docs/` ([`contract`]).
pub async fn next(client: &mut Client) -> Frame {
    let frame = tokio::time::timeout(WAIT, client.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("socket ended")
        .expect("frame");
    check_frame(&frame);
    frame
}

/// Checks one `/ws` frame against the contract.
pub fn check_frame(frame: &Frame) {
    let c = contract::contract();
    match frame {
        Frame::Control(m) => c.ws_frame(&serde_json::to_value(m).expect("encode")),
        Frame::Event(e) => c.ws_frame(&serde_json::to_value(e).expect("encode")),
        Frame::Closed(Some(closed)) => c.close_code("ws", closed.code),
        Frame::Closed(None) => {}
    }
}

pub async fn next_control(client: &mut Client) -> ServerMessage {
    match next(client).await {
        Frame::Control(c) => c,
        other => panic!("expected a control reply, got {other:?}"),
    }
}

pub async fn next_event(client: &mut Client) -> Event {
    match next(client).await {
        Frame::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Expects `subscribed` and returns (seq, epoch, recovered).
pub async fn subscribed(client: &mut Client) -> (u64, String, bool) {
    match next_control(client).await {
        ServerMessage::Subscribed {
            seq,
            epoch,
            recovered,
            ..
        } => (seq, epoch, recovered),
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// Expects an error reply and returns (code, message).
pub async fn error(client: &mut Client) -> (u16, String) {
    match next_control(client).await {
        ServerMessage::Error { code, message, .. } => (code, message),
        other => panic!("expected error, got {other:?}"),
    }
}

/// Reads frames until the server closes; returns the close code.
pub async fn close_code(client: &mut Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(frame @ Frame::Closed(_))) => {
                check_frame(&frame);
                let Frame::Closed(c) = frame else { continue };
                return c.map(|c| c.code);
            }
            Some(Ok(frame)) => check_frame(&frame),
            Some(Err(_)) | None => return None,
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with openssl.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            // A leaf, not a CA: webpki refuses a CA certificate as the server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (install it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
