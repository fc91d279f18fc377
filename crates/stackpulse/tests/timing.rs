//! Timing and estimates on `/ws`, through the real server binary: a stack whose
//! earlier updates are in its history (the scripted endpoint's `push_operation`)
//! is tracked, and its `resource.status` events carry `startedAt`, `finishedAt`,
//! `expectedSeconds` and the stack's `etaAt`, and so does a late joiner's
//! `stack.snapshot`; every frame is validated against the specs by the harness.

mod cfn_support;
mod common;

use cfn_support::fake_cfn::{base_time, FakeCfn, FakeStack, Step};
use cfn_support::AWS_ENV;
use common::*;
use stackpulse::client::Frame;

/// Two earlier updates (Queue: 20 and 30 s), then the update being tracked.
fn stack_with_history(name: &str) -> FakeStack {
    let mut s = FakeStack::new(name);
    s.push_operation("CREATE", 0, &[("Queue", 5)]);
    s.push_operation("UPDATE", 100, &[("Queue", 20)]);
    s.push_operation("UPDATE", 200, &[("Queue", 30)]);
    let history = s.events.len();
    s.push(name, "UPDATE_IN_PROGRESS", "User Initiated", 1000);
    s.push("Queue", "UPDATE_IN_PROGRESS", "", 1001);
    s.push("Queue", "UPDATE_COMPLETE", "", 1021);
    s.push(name, "UPDATE_COMPLETE", "", 1022);
    s.status = "UPDATE_IN_PROGRESS".into();
    s.last_updated = Some(base_time() + chrono::Duration::seconds(1000));
    s.template_resources = 1;
    s.visible = history + 2;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![(name.to_string(), 2)],
            status: Some("UPDATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    s
}

#[tokio::test]
async fn resource_status_carries_timing_and_estimates() {
    let fake = FakeCfn::start(vec![stack_with_history("timed")]).await;
    let server = Server::spawn(
        &cfn_support::aws_flags(&fake.endpoint, &["--poll-interval", "0.05"]),
        AWS_ENV,
    )
    .await;
    let mut c = server.connect().await;
    c.subscribe("stack:timed", Some(0), None)
        .await
        .expect("subscribe");
    let mut statuses = Vec::new();
    loop {
        match next(&mut c).await {
            Frame::Event(e) if e.event_type == "resource.status" => statuses.push(e.data),
            Frame::Event(e) if e.event_type == "stack.deployed" => break,
            Frame::Event(e) if e.event_type == "stack.failed" => panic!("{:?}", e.data),
            _ => {}
        }
    }
    let queue: Vec<_> = statuses
        .iter()
        .filter(|d| d["resource"]["logicalId"] == "Queue")
        .collect();
    assert_eq!(queue.len(), 2, "{statuses:#?}");
    let started = queue[0];
    assert_eq!(started["resource"]["startedAt"], "2025-10-23T10:16:41.000Z");
    assert!(started["resource"].get("finishedAt").is_none());
    // The median of its 20 and 30 s.
    assert_eq!(started["resource"]["expectedSeconds"], 25.0);
    assert_eq!(started["stack"]["startedAt"], "2025-10-23T10:16:40.000Z");
    // The updates took 22 and 32 s.
    assert_eq!(started["stack"]["expectedSeconds"], 27.0);
    // max(10:16:40 + 27 s, 10:16:41 + 25 s)
    assert_eq!(started["stack"]["etaAt"], "2025-10-23T10:17:07.000Z");
    let done = queue[1];
    assert_eq!(done["resource"]["finishedAt"], "2025-10-23T10:17:01.000Z");

    // A late joiner's snapshot keeps the same fields.
    let mut late = server.connect().await;
    late.subscribe("stack:timed", None, None)
        .await
        .expect("subscribe");
    let snapshot = loop {
        if let Frame::Event(e) = next(&mut late).await {
            if e.event_type == "stack.snapshot" {
                break e.data;
            }
        }
    };
    let q = &snapshot["resources"]["Queue"];
    assert_eq!(q["startedAt"], "2025-10-23T10:16:41.000Z", "{snapshot:#}");
    assert_eq!(q["finishedAt"], "2025-10-23T10:17:01.000Z");
    assert_eq!(q["expectedSeconds"], 25.0);
    assert_eq!(snapshot["stack"]["expectedSeconds"], 27.0);
}
