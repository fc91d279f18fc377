//! Measures what an idle WebSocket connection costs the server: opens N connections
//! (each subscribed to one of 100 topics), then reads the server's RSS from
//! `/proc/PID/status` before and after.
//!
//! Run with `bench/idle-rss.sh [N]`, or by hand:
//! `cargo run --release --example idle_rss -- PID ws://127.0.0.1:8000/ws 5000`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: idle_rss PID WS_URL N");
        std::process::exit(2);
    }
    let pid: u32 = args[1].parse().expect("PID");
    let url = args[2].clone();
    let n: usize = args[3].parse().expect("N");
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        let sub = format!(
            r#"{{"action":"subscribe","deployment_id":"idle-{}"}}"#,
            i % 100
        );
        ws.send(Message::Text(sub.into())).await.expect("subscribe");
        // Wait for `subscribed` so the subscription really exists server-side.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => break,
                Some(Ok(_)) => continue,
                other => panic!("connection {i}: {other:?}"),
            }
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // let the allocator settle
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) as f64 * 1024.0) / n as f64;
    println!("connections: {n}");
    println!("server RSS before: {before} KiB");
    println!("server RSS after:  {after} KiB");
    println!(
        "per idle subscribed connection: {:.0} bytes ({:.2} KiB)",
        per,
        per / 1024.0
    );
    drop(sockets);
}
