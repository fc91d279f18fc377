//! Timing and estimates end to end: the tracker reads a stack's earlier operations
//! once (over several pages of the scripted endpoint) and annotates every
//! `resource_update` and snapshot with `startedAt`, `finishedAt`, `expectedSeconds`
//! and the stack's `etaAt`.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use stackpulse_cfn::{Seconds, Tracker, TrackerMessage};
use support::fake_cfn::{base_time, FakeCfn, FakeStack, Step};
use support::{client, fast_config, run_built};

const LIMIT: Duration = Duration::from_secs(60);

fn at(sec: i64) -> Option<DateTime<Utc>> {
    Some(base_time() + chrono::Duration::seconds(sec))
}

fn secs(s: u64) -> Option<Seconds> {
    Some(Seconds::from_millis(s * 1000))
}

#[tokio::test]
async fn an_update_is_annotated_from_the_last_three_earlier_operations() {
    let mut s = FakeStack::new("est");
    s.push_operation("CREATE", 0, &[("A", 10), ("B", 4)]);
    // Four earlier updates; only the last three count (A: 20, 30, 40; B: 6, 7, 8).
    s.push_operation("UPDATE", 100, &[("A", 1000), ("B", 1000)]);
    s.push_operation("UPDATE", 2200, &[("A", 20), ("B", 6)]);
    s.push_operation("UPDATE", 2300, &[("A", 30), ("B", 7)]);
    s.push_operation("UPDATE", 2400, &[("A", 40), ("B", 8)]);
    let history = s.events.len();
    for (l, st, t) in [
        ("est", "UPDATE_IN_PROGRESS", 3000),
        ("A", "UPDATE_IN_PROGRESS", 3001),
        ("B", "UPDATE_IN_PROGRESS", 3001),
        ("B", "UPDATE_COMPLETE", 3008),
        ("A", "UPDATE_COMPLETE", 3035),
        ("est", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", 3036),
        ("est", "UPDATE_COMPLETE", 3037),
    ] {
        s.push(l, st, "", t);
    }
    s.status = "UPDATE_IN_PROGRESS".into();
    s.last_updated = at(3000);
    s.template_resources = 2;
    s.visible = history + 3;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![("est".into(), 1)],
            ..Step::default()
        },
        Step {
            reveal: vec![("est".into(), 3)],
            status: Some("UPDATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    // Small pages: the history spans several of them.
    fake.world().page_size = 6;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("est"));
    let state = tracker.state();
    let c = run_built(tracker, LIMIT).await;
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let updates: Vec<_> = c
        .updates
        .iter()
        .map(|u| (u.resource.logical_id.as_str(), u.resource.status.as_str()))
        .collect();
    assert_eq!(updates.len(), 7, "only the current operation: {updates:?}");

    let a_started = &c.updates[1];
    assert_eq!(a_started.resource.logical_id, "A");
    assert_eq!(a_started.resource.started_at, at(3001));
    assert_eq!(a_started.resource.finished_at, None);
    assert_eq!(a_started.resource.expected_seconds, secs(30));
    assert_eq!(a_started.stack.started_at, at(3000));
    // Stack updates took 22, 32 and 42 s.
    assert_eq!(a_started.stack.expected_seconds, secs(32));
    // max(stack 3000 + 32, A 3001 + 30, B 3001 + 7)
    assert_eq!(a_started.stack.eta_at, at(3032));

    let b_done = &c.updates[3];
    assert_eq!(
        (
            b_done.resource.logical_id.as_str(),
            b_done.resource.status.as_str()
        ),
        ("B", "UPDATE_COMPLETE")
    );
    assert_eq!(b_done.resource.started_at, at(3001));
    assert_eq!(b_done.resource.finished_at, at(3008));
    assert_eq!(b_done.resource.expected_seconds, secs(7));

    // A ran late: the ETA is never before the latest event.
    let a_done = &c.updates[4];
    assert_eq!(a_done.resource.finished_at, at(3035));
    assert_eq!(a_done.stack.eta_at, at(3035));

    let done = c.complete.clone().expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.stack.eta_at, None, "no ETA once it ended");
    assert_eq!(done.stack.started_at, at(3000));

    // The late joiner's state carries the same timing.
    let st = state.borrow().clone();
    let a = st
        .resources
        .iter()
        .find(|r| r.logical_id == "A")
        .expect("A in the state");
    assert_eq!(
        (a.started_at, a.finished_at, a.expected_seconds),
        (at(3001), at(3035), secs(30))
    );
    let c_snap = c.all.iter().find_map(|m| match m {
        TrackerMessage::Snapshot(s) => Some(s.clone()),
        _ => None,
    });
    let first = c_snap.expect("a first snapshot");
    assert_eq!(first.stack.eta_at, at(3032));

    // On the wire: camelCase, seconds as a number.
    let v = serde_json::to_value(a_started).expect("serialize");
    assert_eq!(v["resource"]["expectedSeconds"], 30.0);
    assert_eq!(v["resource"]["startedAt"], "2025-10-23T10:50:01.000Z");
    assert!(v["resource"].get("finishedAt").is_none());
    assert_eq!(v["stack"]["etaAt"], "2025-10-23T10:50:32.000Z");

    // Bounded: the history stopped once the third earlier operation began, so the
    // first update (A took 1000 s) and the create were not learned from.
    let event_calls = fake
        .world()
        .requests
        .iter()
        .filter(|(a, _)| a == "DescribeStackEvents")
        .count();
    // First poll: 1 page, then 3 pages of history (6 events each) until the third
    // earlier update began; the tail of the first update on the last page is cut
    // (its start is not there) and ignored. Then one page per later poll (2).
    assert_eq!(event_calls, 6, "DescribeStackEvents calls");
}

#[tokio::test]
async fn a_create_has_timing_but_no_estimates() {
    let mut s = FakeStack::new("fresh");
    for (l, st, t) in [
        ("fresh", "CREATE_IN_PROGRESS", 0),
        ("A", "CREATE_IN_PROGRESS", 1),
        ("A", "CREATE_COMPLETE", 5),
        ("fresh", "CREATE_COMPLETE", 6),
    ] {
        s.push(l, st, "", t);
    }
    s.template_resources = 1;
    s.visible = 2;
    s.steps = vec![Step {
        reveal: vec![("fresh".into(), 2)],
        status: Some("CREATE_COMPLETE".into()),
        ..Step::default()
    }]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    let c = run_built(
        Tracker::new(client(&fake.endpoint), fast_config("fresh")),
        LIMIT,
    )
    .await;
    let a = &c.updates[1];
    assert_eq!(
        (a.resource.started_at, a.resource.expected_seconds),
        (at(1), None)
    );
    assert_eq!(
        (a.stack.started_at, a.stack.expected_seconds, a.stack.eta_at),
        (at(0), None, None)
    );
    let v = serde_json::to_value(a).expect("serialize");
    assert!(v["resource"].get("expectedSeconds").is_none());
    assert!(v["stack"].get("etaAt").is_none());
}
