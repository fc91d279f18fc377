//! `stackpulse tail` and `stackpulse hash-key` through the real binary: tail prints
//! each event of a topic once, as one JSON line, replays with `--since`, outlives a
//! server restart, ends quietly when its reader goes away, and exits 2 with the
//! reason on a refusal; hash-key refuses an empty key.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::tokens::*;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running `stackpulse tail`, its stdout and stderr read line by line.
struct Tail {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Tail {
    fn spawn(args: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .arg("tail")
            .args(args)
            .env_remove("STACKPULSE_SERVER")
            .env_remove("STACKPULSE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tail");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    /// The next event tail printed.
    async fn event(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("no event line from tail")
            .expect("read tail's stdout")
            .expect("tail's stdout ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Reads stderr until a line contains `what`.
    async fn stderr_until(&mut self, what: &str) -> String {
        let wait = async {
            loop {
                match self.stderr.next_line().await.expect("read tail's stderr") {
                    Some(line) if line.contains(what) => return line,
                    Some(_) => {}
                    None => panic!("tail's stderr ended before {what:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("tail never said {what:?}"))
    }

    async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tail did not exit")
            .expect("wait for tail")
            .code()
    }
}

fn status_of(event: &Value) -> (&str, u64, &str) {
    (
        event["deployment_id"].as_str().unwrap_or_default(),
        event["seq"].as_u64().unwrap_or_default(),
        event["data"]["status"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn tail_replays_since_a_seq_then_prints_live_events_once() {
    let server = Server::start(&[]).await;
    for status in ["one", "two", "three"] {
        server.publish("tail-1", status).await;
    }
    let base = server.url("");
    let mut tail = Tail::spawn(&["tail-1", "--server", &base, "--since", "1"]);
    // Events after seq 1, in order, then what is published while it runs.
    assert_eq!(status_of(&tail.event().await), ("tail-1", 2, "two"));
    assert_eq!(status_of(&tail.event().await), ("tail-1", 3, "three"));
    server.publish("tail-1", "four").await;
    let live = tail.event().await;
    assert_eq!(status_of(&live), ("tail-1", 4, "four"));
    assert_eq!(live["type"], "deployment.status");
    // Nothing else: no duplicate of a replayed event.
    server.publish("tail-1", "five").await;
    assert_eq!(status_of(&tail.event().await), ("tail-1", 5, "five"));
}

/// A port no one listens on (bound, then released).
async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// `stackpulse serve` on `port` with the test key; returns it once it listens.
async fn serve_on(port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stackpulse"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--publisher-key", KEY])
        .env_remove("STACKPULSE_CONFIG")
        .env_remove("STACKPULSE_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("serve did not start")
        .expect("read")
        .expect("serve exited");
    assert!(line.starts_with("stackpulse listening on"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn publish_to(port: u16, topic: &str, status: &str) {
    let resp = http_client()
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .bearer_auth(KEY)
        .json(&json!({"type":"deployment.status","deployment_id":topic,"data":{"status":status}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn tail_reconnects_when_the_server_comes_back() {
    let port = free_port().await;
    let mut first = serve_on(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let mut tail = Tail::spawn(&["tail-2", "--server", &base]);
    // Wait until tail's subscription is in place: a live event reaches it.
    let mut n = 0;
    let seen = loop {
        n += 1;
        publish_to(port, "tail-2", &format!("before-{n}")).await;
        let got = tokio::time::timeout(Duration::from_millis(500), tail.stdout.next_line()).await;
        if let Ok(line) = got {
            break line.expect("read").expect("tail's stdout ended");
        }
        assert!(n < 30, "tail never printed an event");
    };
    assert!(seen.contains("before-"), "{seen}");
    first.kill().await.expect("kill the server");
    let said = tail.stderr_until("disconnected; reconnecting").await;
    assert!(said.starts_with("stackpulse: "), "{said}");

    let _second = serve_on(port).await;
    // The new server is another hub (in memory): tail resubscribes and prints
    // what is published there.
    let mut n = 0;
    loop {
        n += 1;
        publish_to(port, "tail-2", &format!("after-{n}")).await;
        let got = tokio::time::timeout(Duration::from_millis(500), tail.stdout.next_line()).await;
        if let Ok(line) = got {
            let line = line.expect("read").expect("tail's stdout ended");
            if line.contains("\"after-") {
                break;
            }
        }
        assert!(n < 60, "tail printed nothing from the restarted server");
    }
    assert!(
        tail.child.try_wait().expect("try_wait").is_none(),
        "tail exited"
    );
}

#[tokio::test]
async fn tail_ends_quietly_when_its_reader_goes_away() {
    let server = Server::start(&[]).await;
    server.publish("tail-3", "one").await;
    let base = server.url("");
    let mut tail = Tail::spawn(&["tail-3", "--server", &base, "--since", "0"]);
    assert_eq!(status_of(&tail.event().await), ("tail-3", 1, "one"));
    // Like `stackpulse tail X | head -1`: the pipe's reader exits.
    drop(std::mem::replace(
        &mut tail.stdout,
        BufReader::new(dummy_stdout().await).lines(),
    ));
    server.publish("tail-3", "two").await;
    // The next write fails; tail exits 0 (SIGPIPE is ignored by Rust programs).
    let mut code = None;
    for i in 0..20 {
        if let Some(status) = tail.child.try_wait().expect("try_wait") {
            code = status.code();
            break;
        }
        // A failed write shows only on the write after the reader left.
        server.publish("tail-3", &format!("more-{i}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, Some(0), "tail did not end when its reader went away");
}

/// A stdout of a process that has ended (to put in place of a dropped one).
async fn dummy_stdout() -> ChildStdout {
    let mut c = Command::new("true")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let out = c.stdout.take().expect("stdout");
    let _ = c.wait().await;
    out
}

#[tokio::test]
async fn tail_exits_2_with_the_reason_when_refused() {
    // No server at all.
    let port = free_port().await;
    let mut nobody = Tail::spawn(&["x", "--server", &format!("http://127.0.0.1:{port}")]);
    let said = nobody.stderr_until("stackpulse: ").await;
    assert!(!said.is_empty());
    assert_eq!(nobody.exit_code().await, Some(2));
    // Not a server URL.
    let mut bad = Tail::spawn(&["x", "--server", "ftp://example.test"]);
    bad.stderr_until("stackpulse: ").await;
    assert_eq!(bad.exit_code().await, Some(2));

    let jwks = Jwks::serve("jwks.json").await;
    let server = server_with(&jwks, &[]).await;
    let (code, _) = server
        .publish_raw(&json!({"type":"deployment.status","deployment_id":"secret",
            "data":{"status":"deploying"},"acl":{"owner":"alice","groups":["ops"]}}))
        .await;
    assert_eq!(code, 202);
    let base = server.url("");
    // A token for someone who may not see the topic: the server's 403, exit 2.
    let eve = sign(&id_claims("eve", &["dev"]));
    let mut refused = Tail::spawn(&["secret", "--server", &base, "--token", &eve]);
    let said = refused.stderr_until("server error").await;
    assert_eq!(said, "stackpulse: server error 403: Forbidden: secret");
    assert_eq!(refused.exit_code().await, Some(2));
    // A bad token is refused before the upgrade: exit 2, nothing printed.
    let mut bad_token = Tail::spawn(&["secret", "--server", &base, "--token", "not-a-jwt"]);
    bad_token.stderr_until("401").await;
    assert_eq!(bad_token.exit_code().await, Some(2));
    // Alice sees it, from the start.
    let alice = sign(&id_claims("alice", &[]));
    let mut allowed = Tail::spawn(&[
        "secret", "--server", &base, "--token", &alice, "--since", "0",
    ]);
    assert_eq!(
        status_of(&allowed.event().await),
        ("secret", 1, "deploying")
    );
}

#[tokio::test]
async fn hash_key_refuses_an_empty_key_and_hashes_a_given_one() {
    let run = |stdin: &'static [u8]| async move {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stackpulse"))
            .arg("hash-key")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hash-key");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).await.expect("write stdin");
        drop(input);
        let out = child.wait_with_output().await.expect("hash-key output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(b"  \n").await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("write the key on stdin"), "{err}");
    assert!(out.is_empty(), "{out}");
    // SHA-256 of "abc", the FIPS 180-2 example.
    let (code, out, _) = run(b"abc\n").await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
