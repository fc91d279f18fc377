//! A real `redis-server` on a free loopback port for one test, persistent (AOF,
//! fsync always) in a private directory so it can be stopped and started again
//! with its data, the way a production Redis with persistence restarts.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    exe: String,
    child: Option<Child>,
}

fn redis_server_path() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-redis.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ensure-redis.sh");
    assert!(out.status.success(), "scripts/ensure-redis.sh failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl RedisServer {
    /// Starts a fresh Redis.
    pub async fn start() -> RedisServer {
        let exe = redis_server_path();
        let dir = std::env::temp_dir().join(format!(
            "stackpulse-redis-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = RedisServer {
            port,
            dir,
            exe,
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGKILL: no goodbye to clients; the AOF keeps the data).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data, and waits for it.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.exe)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if self.command(&["PING"]).await.as_deref() == Some("+PONG") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Sends one inline command; returns the first reply line.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let (r, mut w) = stream.into_split();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        w.write_all(req.as_bytes()).await.ok()?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(2),
            BufReader::new(r).read_line(&mut line),
        )
        .await
        .ok()?
        .ok()?;
        Some(line.trim_end().to_owned())
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
