//! The `/ws` protocol against the real binary: replies, errors, events, resume.

mod common;

use common::*;
use serde_json::json;
use stackpulse::client::Frame;
use stackpulse_protocol::ServerMessage;
use tokio_tungstenite::tungstenite::Message;

fn is_contract_timestamp(ts: &str) -> bool {
    // 2025-10-23T10:05:00.123Z
    ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(ts).is_ok()
}

#[tokio::test]
async fn subscribe_publish_receive() {
    let server = Server::start(&[]).await;
    let mut c = server.connect().await;
    c.subscribe("D1BRV40", None, None).await.expect("send");
    let (seq, epoch, recovered) = subscribed(&mut c).await;
    assert_eq!((seq, recovered), (0, true));
    assert!(!epoch.is_empty());

    let (code, body) = server
        .publish_raw(
            &json!({"type":"deployment.status","deployment_id":"D1BRV40",
            "data":{"status":"deploying","current_layer":2,"total_layers":4}}),
        )
        .await;
    assert_eq!((code, body), (202, json!({"seq": 1})));
    let ev = next_event(&mut c).await;
    assert_eq!(ev.event_type, "deployment.status");
    assert_eq!(ev.deployment_id, "D1BRV40");
    assert_eq!(ev.seq, 1);
    assert!(is_contract_timestamp(&ev.timestamp), "{}", ev.timestamp);
    assert_eq!(
        ev.data,
        json!({"status":"deploying","current_layer":2,"total_layers":4})
    );

    for (t, data) in [
        (
            "stack.deployed",
            json!({"stack_name":"network","environment":"dev","duration_seconds":300,"resource_count":15}),
        ),
        (
            "stack.failed",
            json!({"stack_name":"database-rds","environment":"dev","error_message":"Subnet not found"}),
        ),
        (
            "log.created",
            json!({"level":"info","message":"Starting","stack_name":"security","environment":"dev"}),
        ),
    ] {
        let (code, _) = server
            .publish_raw(&json!({"type": t, "deployment_id": "D1BRV40", "data": data}))
            .await;
        assert_eq!(code, 202);
        let ev = next_event(&mut c).await;
        assert_eq!((ev.event_type.as_str(), &ev.data), (t, &data));
    }

    // Another topic's events do not arrive here.
    server.publish("other", "x").await;
    c.ping().await.expect("send");
    assert!(matches!(
        next_control(&mut c).await,
        ServerMessage::Pong { .. }
    ));
}

#[tokio::test]
async fn late_joiner_gets_snapshot_then_live() {
    let server = Server::start(&[]).await;
    server.publish("D", "deploying").await;
    let (code, _) = server
        .publish_raw(&json!({"type":"stack.deployed","deployment_id":"D","data":{"stack_name":"net","environment":"dev","duration_seconds":3,"resource_count":2}}))
        .await;
    assert_eq!(code, 202);
    let mut c = server.connect().await;
    c.subscribe("D", None, None).await.expect("send");
    let (seq, _, recovered) = subscribed(&mut c).await;
    assert_eq!((seq, recovered), (2, true));
    let snap = next_event(&mut c).await;
    assert_eq!(snap.event_type, "deployment.snapshot");
    assert_eq!(snap.seq, 2);
    assert_eq!(snap.data["status"], "deploying");
    assert_eq!(snap.data["stacks"]["net"]["status"], "deployed");
    server.publish("D", "done").await;
    assert_eq!(next_event(&mut c).await.seq, 3);
}

#[tokio::test]
async fn every_bad_message_gets_a_clear_error_and_the_connection_stays_usable() {
    let server = Server::start(&[]).await;
    let mut c = server.connect().await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "Invalid JSON: "),
        ("[1,2,3]", "Message must be a JSON object"),
        ("\"subscribe\"", "Message must be a JSON object"),
        (r#"{"deployment_id":"D"}"#, "Missing action"),
        (r#"{"action":"foo"}"#, "Unknown action: foo"),
        (r#"{"action":"subscribe"}"#, "Missing deployment_id"),
        (
            r#"{"action":"subscribe","deployment_id":""}"#,
            "Missing deployment_id",
        ),
        (r#"{"action":"unsubscribe"}"#, "Missing deployment_id"),
        (
            r#"{"action":"subscribe","deployment_id":"D","since":-4}"#,
            "Invalid since: must be a non-negative integer",
        ),
        (
            r#"{"action":"subscribe","deployment_id":"D","since":"4"}"#,
            "Invalid since: must be a non-negative integer",
        ),
        (
            r#"{"action":"auth","token":"a.b.c"}"#,
            "Authentication is not enabled on this server",
        ),
    ];
    for (frame, expected) in cases {
        c.send_text(frame).await.expect("send");
        let (code, message) = error(&mut c).await;
        assert_eq!(code, 400, "{frame}");
        assert!(
            message.starts_with(expected),
            "{frame}: got {message:?}, want {expected:?}"
        );
    }
    c.send_message(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send");
    let (code, message) = error(&mut c).await;
    assert_eq!(code, 400);
    assert!(
        message.contains("Binary frames are not supported"),
        "{message}"
    );

    c.subscribe("D", None, None).await.expect("send");
    subscribed(&mut c).await;
    server.publish("D", "still works").await;
    assert_eq!(next_event(&mut c).await.data["status"], "still works");
    c.unsubscribe("D").await.expect("send");
    assert_eq!(
        next_control(&mut c).await,
        ServerMessage::Unsubscribed {
            deployment_id: "D".into()
        }
    );
    server.publish("D", "after unsubscribe").await;
    c.ping().await.expect("send");
    assert!(
        matches!(next_control(&mut c).await, ServerMessage::Pong { .. }),
        "no event arrives after unsubscribe, the pong comes first"
    );
    assert!(server.metric("stackpulse_client_errors_total").await >= 11.0);
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_spares_other_connections() {
    let server = Server::start(&["--max-frame-bytes", "1024"]).await;
    let mut other = server.connect().await;
    other.subscribe("D", None, None).await.expect("send");
    subscribed(&mut other).await;

    let mut c = server.connect().await;
    let big = format!(
        r#"{{"action":"subscribe","deployment_id":"{}"}}"#,
        "x".repeat(2000)
    );
    c.send_text(&big).await.expect("send");
    assert_eq!(close_code(&mut c).await, Some(1009));

    server.publish("D", "fine").await;
    assert_eq!(next_event(&mut other).await.data["status"], "fine");
}

#[tokio::test]
async fn resume_after_disconnect_while_events_keep_flowing_is_gap_free() {
    const N: u64 = 400;
    let server = Server::start(&[]).await;
    let mut c = server.connect().await;
    c.subscribe("R", None, None).await.expect("send");
    subscribed(&mut c).await;

    let publisher = {
        let http = server.http.clone();
        let url = server.url("/v1/events");
        tokio::spawn(async move {
            for i in 0..N {
                let resp = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&json!({"type":"deployment.status","deployment_id":"R","data":{"status":format!("s{i}")}}))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status().as_u16(), 202);
                if i % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    let mut seqs = Vec::new();
    let mut reconnects = 0;
    while seqs.last().copied() != Some(N) {
        match next(&mut c).await {
            Frame::Event(e) => {
                seqs.push(e.seq);
                // Drop the connection three times mid-stream, at different points.
                if [37, 150, 290].contains(&e.seq) {
                    reconnects += 1;
                    c.reconnect().await.expect("reconnect");
                    let (_, _, recovered) = subscribed(&mut c).await;
                    assert!(recovered, "history covers the gap");
                }
            }
            Frame::Control(other) => panic!("unexpected {other:?}"),
            // The contract's "reconnect and resume with since" (serverless mode
            // says so when a topic publishes faster than a subscribe's hand-over).
            Frame::Closed(Some(close)) if close.code == 1012 => {
                c.reconnect().await.expect("reconnect");
                let (_, _, recovered) = subscribed(&mut c).await;
                assert!(recovered, "history covers the gap");
            }
            Frame::Closed(code) => panic!("closed {code:?}"),
        }
    }
    publisher.await.expect("publisher");
    assert_eq!(reconnects, 3);
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "every seq exactly once, in order"
    );
}

#[tokio::test]
async fn resume_beyond_history_or_in_another_epoch_is_not_recovered() {
    let server = Server::start(&["--history-size", "5"]).await;
    for i in 0..12 {
        server.publish("H", &format!("s{i}")).await;
    }
    let mut c = server.connect().await;
    c.subscribe("H", None, None).await.expect("send");
    let (seq, epoch, _) = subscribed(&mut c).await;
    assert_eq!(seq, 12);
    assert!(next_event(&mut c).await.is_snapshot());

    // since 3: events 4..7 are gone.
    c.subscribe("H", Some(3), Some(&epoch)).await.expect("send");
    let (seq, _, recovered) = subscribed(&mut c).await;
    assert_eq!((seq, recovered), (12, false));
    let snap = next_event(&mut c).await;
    assert_eq!(
        (snap.event_type.as_str(), snap.seq),
        ("deployment.snapshot", 12)
    );

    // since 8: 9..12 are retained.
    c.subscribe("H", Some(8), Some(&epoch)).await.expect("send");
    let (_, _, recovered) = subscribed(&mut c).await;
    assert!(recovered);
    for want in 9..=12 {
        assert_eq!(next_event(&mut c).await.seq, want);
    }

    // A different epoch: the counter the client knew is gone.
    c.subscribe("H", Some(10), Some("not-this-epoch"))
        .await
        .expect("send");
    let (_, _, recovered) = subscribed(&mut c).await;
    assert!(!recovered);
    assert!(next_event(&mut c).await.is_snapshot());

    // From the future.
    c.subscribe("H", Some(99), Some(&epoch))
        .await
        .expect("send");
    let (_, _, recovered) = subscribed(&mut c).await;
    assert!(!recovered);
    assert!(next_event(&mut c).await.is_snapshot());
}

#[tokio::test]
async fn a_restarted_server_has_a_new_epoch() {
    let first = Server::start(&[]).await;
    first.publish("E", "a").await;
    let mut c = first.connect().await;
    c.subscribe("E", None, None).await.expect("send");
    let (_, epoch1, _) = subscribed(&mut c).await;
    drop(first);
    let second = Server::start(&[]).await;
    second.publish("E", "b").await;
    let mut c = second.connect().await;
    c.subscribe("E", Some(1), Some(&epoch1))
        .await
        .expect("send");
    let (_, epoch2, recovered) = subscribed(&mut c).await;
    assert_ne!(epoch1, epoch2);
    assert!(
        !recovered,
        "same seq numbers, different counter: the client must refetch"
    );
}

/// Over the real server's plain-TCP sockets, live events to an idle subscriber are
/// written by the fan-out itself (`stackpulse_messages_delivered_direct_total`),
/// not handed to the connection's writer. This failed while the accept loop used
/// hyper-util's `auto` builder, whose private socket wrapper hid the `TcpStream`.
#[tokio::test]
async fn live_events_to_an_idle_socket_are_written_by_the_fan_out() {
    // Sockets of `serve` only: serverless mode delivers through API Gateway, so
    // this runs the socket server even in the suite's lambda-local rerun.
    let server = Server::spawn_as(Mode::Serve, &["--publisher-key", KEY], &[]).await;
    let mut c = server.connect().await;
    c.subscribe("T", None, None).await.expect("send");
    subscribed(&mut c).await;
    for seq in 1..=10 {
        server.publish("T", "live").await;
        assert_eq!(next_event(&mut c).await.seq, seq);
    }
    assert_eq!(
        server.metric("stackpulse_messages_delivered_total").await,
        10.0
    );
    // Each event reaches an idle socket; a writer still finishing the previous
    // reply on a loaded machine may take one or two, hence 8, not 10.
    let direct = server
        .metric("stackpulse_messages_delivered_direct_total")
        .await;
    assert!(
        (8.0..=10.0).contains(&direct),
        "the fan-out wrote {direct} of 10 events to an idle socket"
    );
}

/// With `--write-delay`, a connection's writes are at least that far apart and
/// what queues meanwhile goes out together: ten events published back to back
/// (within a second of the `subscribed` reply, itself a write) reach the
/// subscriber once each, in order, in at most a few writes
/// (`stackpulse_event_writes_total`), where without the delay each is its own.
#[tokio::test]
async fn a_write_delay_sends_a_burst_of_events_in_a_few_writes() {
    // The writer of `serve`'s sockets (serverless mode posts each event itself).
    let server = Server::spawn_as(
        Mode::Serve,
        &["--publisher-key", KEY, "--write-delay", "1"],
        &[],
    )
    .await;
    let mut c = server.connect().await;
    c.subscribe("T", None, None).await.expect("send");
    subscribed(&mut c).await;
    for _ in 1..=10 {
        server.publish("T", "burst").await;
    }
    for seq in 1..=10 {
        assert_eq!(next_event(&mut c).await.seq, seq);
    }
    assert_eq!(
        server.metric("stackpulse_messages_delivered_total").await,
        10.0
    );
    // Ten publishes take far less than the second's delay: one write, or a few
    // if the machine is slow enough that they straddle it.
    let writes = server.metric("stackpulse_event_writes_total").await;
    assert!(
        (1.0..=3.0).contains(&writes),
        "10 events took {writes} writes"
    );
}

/// The fan-out writes a live event straight to an idle socket and leaves it to the
/// connection's writer once the socket is full (a frame the socket took only part
/// of is finished by the writer). A subscriber that reads, stops reading while
/// ~10 MB of events arrive (far beyond the loopback socket's buffers, so writes
/// block and queue), then drains while more arrive, gets every event once, whole
/// and in seq order.
#[tokio::test]
async fn direct_and_queued_writes_interleave_in_order_when_a_socket_fills_and_drains() {
    // The client stops reading (and so answering pings) while 600 publishes run,
    // which on a loaded 2-core CI machine took over the 60 s default idle timeout.
    let server = Server::start(&["--queue-size", "4096", "--idle-timeout", "600"]).await;
    let mut c = server.connect().await;
    c.subscribe("T", None, None).await.expect("send");
    subscribed(&mut c).await;
    // Reading along: the socket is idle at each publish (direct writes).
    for seq in 1..=20 {
        server.publish("T", "reading").await;
        assert_eq!(next_event(&mut c).await.seq, seq);
    }
    // Not reading: 600 events of 16 KiB fill the socket, the rest queue.
    server
        .publish_in_background("T", 600, 16 * 1024)
        .await
        .expect("publisher");
    // Draining, while more events arrive.
    let more = server.publish_in_background("T", 300, 100);
    for seq in 21..=920 {
        let ev = next_event(&mut c).await;
        assert_eq!(ev.seq, seq, "every event once, in order");
    }
    more.await.expect("publisher");
    // And direct again once drained.
    let seq = server.publish("T", "reading again").await;
    assert_eq!(next_event(&mut c).await.seq, seq);
    assert_eq!(seq, 921);
}
