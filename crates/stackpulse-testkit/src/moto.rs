//! A moto server (real CloudFormation wire format) for the duration of one test.
//!
//! The executable comes from `STACKPULSE_MOTO_SERVER`, else from
//! `scripts/ensure-moto.sh` (which installs moto into a cached venv). The server
//! listens on a free loopback port and is killed when [`Moto`] is dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server_path() -> String {
    if let Ok(p) = std::env::var("STACKPULSE_MOTO_SERVER") {
        if !p.is_empty() {
            return p;
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-moto.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-moto.sh");
    assert!(
        out.status.success(),
        "scripts/ensure-moto.sh failed: {:?}",
        out.status
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(!path.is_empty(), "scripts/ensure-moto.sh printed no path");
    path
}

/// `moto_server`'s own start-up with `threaded=False` (same flags `-H`, `-p`).
const SERIAL_SERVER: &str = "\
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
run_simple(sys.argv[2], int(sys.argv[4]), app, threaded=False, request_handler=MotoRequestHandler)
";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub async fn start() -> Moto {
        Moto::launch(false).await
    }

    /// Starts moto serving one request at a time. moto's threaded server is not
    /// linearizable for concurrent conditional writes (its `TransactWriteItems`
    /// deep-copies tables while other threads write them, and checks conditions
    /// without a lock), where DynamoDB is: tests of concurrent writers use this.
    pub async fn start_serial() -> Moto {
        Moto::launch(true).await
    }

    async fn launch(serial: bool) -> Moto {
        let exe = moto_server_path();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = if serial {
                let python = std::path::Path::new(&exe).with_file_name("python");
                let mut cmd = Command::new(python);
                cmd.args(["-c", SERIAL_SERVER]);
                cmd
            } else {
                Command::new(&exe)
            };
            // The request recorder (`/moto-api/recorder/…`) writes its file outside
            // the source tree.
            let recording = std::env::temp_dir().join(format!("stackpulse-moto-recording-{port}"));
            let child = cmd
                .env("MOTO_RECORDER_FILEPATH", recording)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server");
            let mut moto = Moto {
                endpoint: format!("http://127.0.0.1:{port}"),
                child,
            };
            if moto.wait_ready(Duration::from_secs(60)).await {
                return moto;
            }
            // Port taken meanwhile, or moto died: try another port.
        }
        panic!("moto_server did not start");
    }

    async fn wait_ready(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let url = format!("{}/moto-api/", self.endpoint);
            if http_get_ok(&url).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// A minimal HTTP GET (no client library needed): true on any HTTP answer.
async fn http_get_ok(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(host)).await
    else {
        return false;
    };
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/")
    )
}
