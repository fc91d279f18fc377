//! Hub behaviour through its public API: seqs, replay, snapshots, concurrency.

use super::*;
use serde_json::{json, Value};

/// The server itself, which may read every topic.
fn allow() -> Arc<Reader> {
    Arc::new(Reader::System)
}

fn user(sub: &str) -> Arc<Reader> {
    Reader::user(crate::auth::User {
        sub: sub.into(),
        username: sub.into(),
        email: None,
        groups: Vec::new(),
    })
}

/// A topic with an owner is read by its owner only; stack topics are reserved.
struct OwnerPolicy;

#[async_trait::async_trait]
impl TopicPolicy for OwnerPolicy {
    async fn check_name(&self, topic: &str) -> Result<(), SubscribeError> {
        match topic.len() {
            0..=32 => Ok(()),
            _ => Err(SubscribeError::Invalid("too long".into())),
        }
    }

    fn may_read(&self, reader: &Reader, _topic: &str, acl: Option<&Acl>) -> bool {
        match (reader, acl.and_then(|a| a.owner.as_deref())) {
            (Reader::System, _) | (_, None) => true,
            (Reader::User(u), Some(owner)) => u.sub == owner,
        }
    }

    fn may_write(&self, topic: &str) -> Result<(), WriteRefused> {
        match topic.starts_with("stack:") {
            true => Err(WriteRefused("reserved".into())),
            false => Ok(()),
        }
    }
}

/// Records what the hub tells a topic's interest.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl TopicInterest for Recorder {
    fn wanted(&self, topic: &Arc<str>) -> Result<(), SubscribeError> {
        if &**topic == "capped" {
            return Err(SubscribeError::Capacity("capped".into()));
        }
        self.0.lock().push(format!("+{topic}"));
        Ok(())
    }

    fn unwanted(&self, topic: &Arc<str>) {
        self.0.lock().push(format!("-{topic}"));
    }
}

fn config(max_events: usize) -> HubConfig {
    HubConfig {
        history: HistoryConfig {
            max_events,
            retention: Duration::from_secs(3600),
            max_topics: 4,
            snapshot_budget: 1 << 20,
        },
        max_subscriptions_per_connection: 3,
        replay_timeout: Duration::from_secs(5),
        max_event_bytes: 4096,
    }
}

/// A hub with [`OwnerPolicy`] and a [`Recorder`] as its interest.
fn ruled_hub() -> (Hub, Arc<memory::MemoryBackplane>, Arc<Recorder>) {
    let (hub, memory) = Hub::in_memory(config(100));
    let recorder = Arc::new(Recorder::default());
    hub.set_rules(Rules {
        policy: Arc::new(OwnerPolicy),
        interest: recorder.clone(),
    });
    (hub, memory, recorder)
}

fn status(topic: &str, s: &str) -> PublishRequest {
    let Value::Object(data) = json!({ "status": s }) else {
        unreachable!()
    };
    PublishRequest {
        event_type: "deployment.status".into(),
        deployment_id: topic.into(),
        data,
        acl: None,
    }
}

/// What a connection received, in order, decoded for assertions.
#[derive(Debug, PartialEq)]
enum Got {
    Subscribed { seq: u64, recovered: bool },
    Snapshot { seq: u64 },
    Event(u64),
    Forbidden(String),
}

fn take(rx: &mut super::outbox::Receiver) -> Vec<Got> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(match d {
            Delivery::Subscribed(i) => Got::Subscribed {
                seq: i.seq,
                recovered: i.recovered,
            },
            Delivery::Event(e) => Got::Event(e.seq),
            Delivery::Frame(f) => {
                let v: Value = serde_json::from_str(f.as_str()).expect("json");
                Got::Snapshot {
                    seq: v["seq"].as_u64().expect("seq"),
                }
            }
            Delivery::Forbidden(t) => Got::Forbidden(t.to_string()),
            Delivery::Rest(_) => unreachable!("no direct writes without a socket"),
        });
    }
    out
}

#[tokio::test]
async fn subscribe_without_since_gets_snapshot_then_live() {
    let (hub, _) = Hub::in_memory(config(100));
    for s in ["a", "b"] {
        hub.publish(status("D", s)).await.expect("publish");
    }
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.subscribe(&session, "D", None, None, &allow())
        .await
        .expect("subscribe");
    hub.publish(status("D", "c")).await.expect("publish");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 2,
                recovered: true
            },
            Got::Snapshot { seq: 2 },
            Got::Event(3)
        ]
    );
}

#[tokio::test]
async fn empty_topic_has_seq_zero_and_no_snapshot() {
    let (hub, _) = Hub::in_memory(config(100));
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.subscribe(&session, "new", None, None, &allow())
        .await
        .expect("subscribe");
    hub.publish(status("new", "a")).await.expect("publish");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 0,
                recovered: true
            },
            Got::Event(1)
        ]
    );
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events() {
    let (hub, _) = Hub::in_memory(config(100));
    for i in 0..5 {
        hub.publish(status("D", &i.to_string()))
            .await
            .expect("publish");
    }
    let epoch = hub
        .backplane()
        .read("D", None)
        .await
        .expect("read")
        .epoch
        .to_string();
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.subscribe(&session, "D", Some(2), Some(epoch), &allow())
        .await
        .expect("subscribe");
    hub.publish(status("D", "x")).await.expect("publish");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 5,
                recovered: true
            },
            Got::Event(3),
            Got::Event(4),
            Got::Event(5),
            Got::Event(6)
        ]
    );
}

#[tokio::test]
async fn resume_that_history_cannot_serve_is_not_recovered() {
    let (hub, _) = Hub::in_memory(config(3));
    for i in 0..10 {
        hub.publish(status("D", &i.to_string()))
            .await
            .expect("publish");
    }
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    // Too old: events 3..7 were trimmed.
    hub.subscribe(&session, "D", Some(2), None, &allow())
        .await
        .expect("subscribe");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 10,
                recovered: false
            },
            Got::Snapshot { seq: 10 }
        ]
    );
    // From the future.
    hub.subscribe(&session, "D", Some(99), None, &allow())
        .await
        .expect("subscribe");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 10,
                recovered: false
            },
            Got::Snapshot { seq: 10 }
        ]
    );
    // Another epoch.
    hub.subscribe(&session, "D", Some(9), Some("other".into()), &allow())
        .await
        .expect("subscribe");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 10,
                recovered: false
            },
            Got::Snapshot { seq: 10 }
        ]
    );
    // Just recent enough.
    hub.subscribe(&session, "D", Some(7), None, &allow())
        .await
        .expect("subscribe");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 10,
                recovered: true
            },
            Got::Event(8),
            Got::Event(9),
            Got::Event(10)
        ]
    );
    assert_eq!(session.subscription_count(), 1, "re-subscribing replaces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_publishing_loses_and_doubles_nothing() {
    let (hub, _) = Hub::in_memory(config(10_000));
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..2000 {
                hub.publish(status("D", &i.to_string()))
                    .await
                    .expect("publish");
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut receivers = Vec::new();
    for n in 0..20u64 {
        let (outbox, rx) = Outbox::new(8192);
        let session = hub.open_session(outbox);
        hub.subscribe(&session, "D", Some(n * 7), None, &allow())
            .await
            .expect("subscribe");
        receivers.push((n * 7, session, rx));
        tokio::task::yield_now().await;
    }
    publisher.await.expect("publisher");
    for (since, _session, mut rx) in receivers {
        let got = take(&mut rx);
        let Got::Subscribed { seq, recovered } = got[0] else {
            panic!("{:?}", got[0])
        };
        let mut rest = &got[1..];
        let start = if recovered {
            since
        } else {
            // A since beyond the latest seq at subscribe time: the snapshot (when
            // the topic has events) stands for everything up to `seq`.
            assert!(since > seq, "since {since}, seq {seq}");
            if seq > 0 {
                assert_eq!(rest[0], Got::Snapshot { seq });
                rest = &rest[1..];
            }
            seq
        };
        let seqs: Vec<u64> = rest
            .iter()
            .map(|g| match g {
                Got::Event(s) => *s,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(seqs, ((start + 1)..=2000).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let (hub, _) = Hub::in_memory(config(100));
    let (slow_box, _slow_rx) = Outbox::new(4);
    let (fast_box, mut fast_rx) = Outbox::new(1024);
    let slow = hub.open_session(slow_box.clone());
    let fast = hub.open_session(fast_box);
    hub.subscribe(&slow, "D", None, None, &allow())
        .await
        .expect("subscribe");
    hub.subscribe(&fast, "D", None, None, &allow())
        .await
        .expect("subscribe");
    for i in 0..100 {
        hub.publish(status("D", &i.to_string()))
            .await
            .expect("publish");
    }
    assert_eq!(slow_box.closing().await, CloseReason::SlowConsumer);
    let got = take(&mut fast_rx);
    assert_eq!(got.len(), 101, "subscribed + 100 events");
}

#[tokio::test]
async fn subscription_limit_is_enforced_and_freed_by_unsubscribe() {
    let (hub, _) = Hub::in_memory(config(100));
    let (outbox, _rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    for t in ["a", "b", "c"] {
        hub.subscribe(&session, t, None, None, &allow())
            .await
            .expect("subscribe");
    }
    let err = hub
        .subscribe(&session, "d", None, None, &allow())
        .await
        .expect_err("limit");
    assert_eq!(
        err.to_string(),
        "Too many subscriptions (limit 3 per connection)"
    );
    assert_eq!(err.code(), 429);
    assert!(hub.unsubscribe(&session, "a").await);
    assert!(!hub.unsubscribe(&session, "a").await);
    hub.subscribe(&session, "d", None, None, &allow())
        .await
        .expect("room again");
    assert_eq!(hub.subscription_count(), 3);
    hub.close_session(&session).await;
    assert_eq!(hub.subscription_count(), 0);
    assert_eq!(hub.local_subscribers("b"), 0);
}

#[tokio::test]
async fn unsubscribed_sessions_receive_nothing_more() {
    let (hub, _) = Hub::in_memory(config(100));
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.subscribe(&session, "D", None, None, &allow())
        .await
        .expect("subscribe");
    hub.unsubscribe(&session, "D").await;
    hub.publish(status("D", "a")).await.expect("publish");
    assert_eq!(
        take(&mut rx),
        vec![Got::Subscribed {
            seq: 0,
            recovered: true
        }]
    );
}

#[tokio::test]
async fn access_is_decided_on_the_topic_acl_before_anything_is_sent() {
    let (hub, _) = Hub::in_memory(config(100));
    let mut req = status("secret", "a");
    req.acl = Some(Acl {
        owner: Some("alice".into()),
        groups: vec![],
    });
    hub.publish(req).await.expect("publish");
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.set_rules(Rules {
        policy: Arc::new(OwnerPolicy),
        interest: Arc::new(Recorder::default()),
    });
    let err = hub
        .subscribe(&session, "secret", None, None, &user("eve"))
        .await
        .expect_err("refused");
    assert_eq!(
        (err.code(), err.to_string()),
        (403, "Forbidden: secret".to_string())
    );
    assert!(
        take(&mut rx).is_empty(),
        "nothing leaks, not even subscribed"
    );
    assert_eq!(session.subscription_count(), 0);
    hub.subscribe(&session, "secret", None, None, &user("alice"))
        .await
        .expect("the owner may");
    assert_eq!(
        take(&mut rx)[0],
        Got::Subscribed {
            seq: 1,
            recovered: true
        }
    );
}

#[tokio::test]
async fn an_acl_set_after_subscribing_ends_the_subscriptions_it_excludes() {
    let (hub, _, _) = ruled_hub();
    let (eve_box, mut eve) = Outbox::new(64);
    let (alice_box, mut alice) = Outbox::new(64);
    let eve_session = hub.open_session(eve_box);
    let alice_session = hub.open_session(alice_box);
    for (session, reader) in [(&eve_session, user("eve")), (&alice_session, user("alice"))] {
        hub.subscribe(session, "D", None, None, &reader)
            .await
            .expect("no ACL yet: anyone");
    }
    let mut req = status("D", "secret");
    req.acl = Some(Acl {
        owner: Some("alice".into()),
        groups: vec![],
    });
    let acl = req.acl.clone();
    hub.publish(req).await.expect("publish");
    // A publisher sends the ACL with every event: the later one is checked too,
    // while eve's ended subscription may still be listed (one 403 all the same).
    let mut later = status("D", "later");
    later.acl = acl;
    hub.publish(later).await.expect("publish");
    let got = take(&mut eve);
    assert_eq!(
        got,
        vec![
            Got::Subscribed {
                seq: 0,
                recovered: true
            },
            Got::Forbidden("D".into())
        ],
        "eve never sees the event that locked her out, nor any later one"
    );
    let got = take(&mut alice);
    assert_eq!(&got[1..], &[Got::Event(1), Got::Event(2)]);
    // Eve's subscription is gone (she may subscribe to something else).
    tokio::time::timeout(Duration::from_secs(5), async {
        while eve_session.subscription_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the forbidden subscription leaves the session");
}

#[tokio::test]
async fn subscribing_to_a_never_published_topic_stores_nothing() {
    let (hub, memory, recorder) = ruled_hub();
    let (outbox, mut rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    hub.subscribe(&session, "ghost", None, None, &user("eve"))
        .await
        .expect("subscribe");
    let Some(Delivery::Subscribed(info)) = rx.try_recv().ok() else {
        panic!("subscribed first")
    };
    assert_eq!(info.seq, 0);
    assert_ne!(&*info.epoch, UNBORN_EPOCH, "a watched topic has its epoch");
    assert_eq!(memory.topic_count(), 1, "kept while watched");
    hub.unsubscribe(&session, "ghost").await;
    assert_eq!(memory.topic_count(), 0, "forgotten with its last watcher");
    assert_eq!(*recorder.0.lock(), vec!["+ghost", "-ghost"]);

    // A subscriber of a topic not yet published to gets its first events, in the
    // epoch it was told.
    hub.subscribe(&session, "born", None, None, &user("eve"))
        .await
        .expect("subscribe");
    let Some(Delivery::Subscribed(info)) = rx.try_recv().ok() else {
        panic!("subscribed first")
    };
    let first = hub.publish(status("born", "a")).await.expect("publish");
    assert_eq!(first.epoch, info.epoch, "the watched topic's epoch is kept");
    assert_eq!(take(&mut rx), vec![Got::Event(1)]);
    // A resume naming the unborn epoch (as GET /v1/topics shows a topic nobody
    // watches) matches the topic's epoch.
    hub.unsubscribe(&session, "born").await;
    hub.subscribe(
        &session,
        "born",
        Some(0),
        Some(UNBORN_EPOCH.into()),
        &user("eve"),
    )
    .await
    .expect("resume");
    assert_eq!(
        take(&mut rx),
        vec![
            Got::Subscribed {
                seq: 1,
                recovered: true
            },
            Got::Event(1)
        ]
    );
}

#[tokio::test]
async fn names_caps_and_writes_follow_the_policy() {
    let (hub, memory, _) = ruled_hub();
    let (outbox, _rx) = Outbox::new(64);
    let session = hub.open_session(outbox);
    let err = hub
        .subscribe(&session, &"x".repeat(33), None, None, &user("eve"))
        .await
        .expect_err("name refused");
    assert_eq!(err.code(), 400);
    let err = hub
        .subscribe(&session, "capped", None, None, &user("eve"))
        .await
        .expect_err("the interest refuses");
    assert_eq!(err.code(), 503);
    assert_eq!(
        session.subscription_count(),
        0,
        "a refused subscribe leaves nothing"
    );
    let err = hub
        .publish(status("stack:prod", "x"))
        .await
        .expect_err("reserved");
    assert_eq!(err.status(), 403);
    let mut big = status("D", "x");
    big.data
        .insert("blob".into(), Value::from("y".repeat(5000)));
    let err = hub.publish(big).await.expect_err("too large");
    assert_eq!(err.status(), 413);
    // --max-topics: 4 stored topics, then the fifth is refused.
    for t in ["t1", "t2", "t3", "t4"] {
        hub.publish(status(t, "a")).await.expect("publish");
    }
    assert_eq!(memory.topic_count(), 4);
    let err = hub.publish(status("t5", "a")).await.expect_err("topic cap");
    assert_eq!(err.status(), 503);
    assert!(err.to_string().contains("--max-topics 4"), "{err}");
}

/// A socket with unlimited room that counts what the fan-out wrote to it.
#[derive(Default)]
struct CountingSocket(std::sync::atomic::AtomicUsize);

impl DirectWrite for CountingSocket {
    fn try_write_event(&self, _event: &StampedEvent) -> Written {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Written::All
    }
}

/// One event's fan-out writes directly to at most `direct_budget()` idle
/// sockets; every other subscriber gets it through its queue (its writer task),
/// and each subscriber gets it exactly once.
#[tokio::test]
async fn one_events_direct_writes_stop_at_the_budget_and_the_rest_queue() {
    let budget = outbox::direct_budget();
    assert!(budget > 0, "direct writes are on by default");
    let (hub, _) = Hub::in_memory(HubConfig {
        max_subscriptions_per_connection: 1,
        ..config(100)
    });
    let mut subscribers = Vec::new();
    for _ in 0..budget + 8 {
        let (outbox, mut rx) = Outbox::new(16);
        let socket = Arc::new(CountingSocket::default());
        outbox.set_direct(socket.clone());
        let session = hub.open_session(outbox);
        hub.subscribe(&session, "D", None, None, &allow())
            .await
            .expect("subscribe");
        take(&mut rx);
        rx.release();
        subscribers.push((session, rx, socket));
    }
    hub.publish(status("D", "go")).await.expect("publish");
    let (mut direct, mut queued) = (0, 0);
    for (_, rx, socket) in &mut subscribers {
        let written = socket.0.load(std::sync::atomic::Ordering::Relaxed);
        let got = take(rx);
        match (written, got.as_slice()) {
            (1, []) => direct += 1,
            (0, [Got::Event(1)]) => queued += 1,
            other => panic!("delivered other than once: {other:?}"),
        }
    }
    assert_eq!((direct, queued), (budget, 8));
}
