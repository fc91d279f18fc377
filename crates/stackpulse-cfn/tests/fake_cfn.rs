//! The tracker against a scripted fake CloudFormation endpoint (query protocol, XML)
//! that plays deployments step by step: one step per `DescribeStacks` call, so every
//! assertion below is about a known sequence, not about timing.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use stackpulse_cfn::{ErrorCode, Outcome, ResourceUpdate, Tracker, TrackerMessage, TrackerProblem};
use support::fake_cfn::{arn, scenarios, FakeCfn, FakeStack, Fault, Step, STACK};
use support::{client, fast_config, run_built, run_tracker};

const LIMIT: Duration = Duration::from_secs(60);

fn reveal(stack: &str, n: usize) -> (String, usize) {
    (stack.to_string(), n)
}

fn ids(updates: &[ResourceUpdate]) -> Vec<String> {
    updates.iter().map(|u| u.event_id.clone()).collect()
}

fn event_ids(s: &FakeStack, range: std::ops::Range<usize>) -> Vec<String> {
    s.events[range].iter().map(|e| e.id.clone()).collect()
}

fn assert_progress_sane(updates: &[ResourceUpdate]) {
    for u in updates {
        let s = &u.stack;
        assert!(s.progress <= 100, "{s:?}");
        assert!(s.completed_resources <= s.total_resources, "{s:?}");
        assert!(
            s.completed_resources + s.in_progress_resources + s.failed_resources
                <= s.total_resources,
            "{s:?}"
        );
        let expected = (100 * s.completed_resources)
            .checked_div(s.total_resources)
            .unwrap_or(0) as u8;
        assert_eq!(
            s.progress, expected,
            "progress = floor(100*completed/total): {s:?}"
        );
    }
}

/// 250 resources, 502 events, 20 events per second, revealed in bursts of up to 247
/// events (three pages of 100) per poll; the stack's last event appears only together
/// with the terminal status, so only the final poll can see it.
#[tokio::test]
async fn five_hundred_events_over_pages_each_exactly_once_in_order() {
    let mut s = FakeStack::new("big");
    s.push("big", "CREATE_IN_PROGRESS", "User Initiated", 0);
    for i in 0..250 {
        let id = format!("R{i:03}");
        s.push(&id, "CREATE_IN_PROGRESS", "", 1 + i / 10);
        s.push(&id, "CREATE_COMPLETE", "", 1 + i / 10);
    }
    s.push("big", "CREATE_COMPLETE", "", 27);
    assert_eq!(s.events.len(), 502);
    s.template_resources = 250;
    s.outputs = vec![(
        "BucketName".into(),
        "big-bucket".into(),
        "The bucket".into(),
    )];
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("big", 150)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("big", 3)],
            ..Step::default()
        },
        Step::default(),
        Step {
            reveal: vec![reveal("big", 247)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("big", 100)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("big", 1)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let all_ids = event_ids(&s, 0..502);
    let fake = FakeCfn::start(vec![s]).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("big"));
    let calls = tracker.calls();
    let state = tracker.state();
    let c = run_built(tracker, LIMIT).await;

    assert_eq!(
        ids(&c.updates),
        all_ids,
        "every event exactly once, oldest first"
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_progress_sane(&c.updates);
    // Progress at each step, replayed from the script.
    let mut done = HashSet::new();
    for u in &c.updates {
        if u.resource.logical_id != "big" && u.resource.status == "CREATE_COMPLETE" {
            done.insert(u.resource.logical_id.clone());
        }
        assert_eq!(u.stack.total_resources, 250);
        assert_eq!(
            u.stack.completed_resources as usize,
            done.len(),
            "at {}",
            u.event_id
        );
        assert_eq!(u.stack.progress as usize, done.len() * 100 / 250);
        assert_eq!(u.resource.progress, u.stack.progress);
        assert_eq!(u.nested_stack, None);
    }
    let last = c.updates.last().expect("updates");
    assert_eq!(
        (
            last.resource.logical_id.as_str(),
            last.resource.status.as_str()
        ),
        ("big", "CREATE_COMPLETE")
    );

    let done = c.complete.clone().expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.root_cause, None);
    assert_eq!(done.duration_seconds, 27);
    assert_eq!(done.outputs.len(), 1);
    assert_eq!(done.outputs[0].key, "BucketName");
    assert_eq!(done.outputs[0].value, "big-bucket");
    assert_eq!(done.outputs[0].description, "The bucket");
    assert_eq!(done.stack.status, "CREATE_COMPLETE");
    assert_eq!(
        (
            done.stack.completed_resources,
            done.stack.total_resources,
            done.stack.progress
        ),
        (250, 250, 100)
    );
    assert!(matches!(
        c.all.last(),
        Some(TrackerMessage::DeploymentComplete(_))
    ));
    assert!(matches!(c.outcome, Some(Outcome::Completed(ref d)) if d.success));
    assert_eq!(
        c.snapshots, 2,
        "one after the first poll, one before completion"
    );

    // The watch channel holds the final state for late joiners.
    let st = state.borrow().clone();
    assert_eq!(st.stack_id, arn("big"));
    assert_eq!(st.resources.len(), 250);
    assert_eq!(st.events_seen, 502);
    assert_eq!(st.complete.as_ref().map(|d| d.success), Some(true));

    // Every request was counted; paging needed several pages per burst.
    let requests = fake.world().requests.clone();
    assert_eq!(calls.total() as usize, requests.len());
    let event_calls = requests
        .iter()
        .filter(|(a, _)| a == "DescribeStackEvents")
        .count();
    // First poll 1 page; then 150 new → 2 pages, 3 → 1, 0 → 1, 247 → 3, 100 → 2
    // (the 100 new fill page 1, page 2 meets a known event), final poll 1.
    assert_eq!(event_calls, 11, "DescribeStackEvents calls");
    // The total came from the template itself (YAML, read by GetTemplate).
    assert!(requests.iter().any(|(a, _)| a == "GetTemplate"));
    assert!(!requests.iter().any(|(a, _)| a == "GetTemplateSummary"));
    // Polled by ARN after resolving the name once.
    let by_name: Vec<_> = requests.iter().filter(|(_, s)| s == "big").collect();
    assert_eq!(
        by_name.len(),
        1,
        "only the first DescribeStacks uses the name: {by_name:?}"
    );
    eprintln!(
        "500-event stack: {} AWS calls ({event_calls} DescribeStackEvents)",
        calls.total()
    );
}

/// An update that fails and rolls back, on a stack with an earlier create in its
/// history, with throttling, dropped connections and a 500 along the way.
#[tokio::test]
async fn failed_update_scoped_with_rollback_root_cause_and_faults() {
    let mut s = FakeStack::new("app");
    let create: [(&str, &str, &str, i64); 6] = [
        ("app", "CREATE_IN_PROGRESS", "User Initiated", 0),
        ("A", "CREATE_IN_PROGRESS", "", 1),
        ("A", "CREATE_COMPLETE", "", 2),
        ("B", "CREATE_IN_PROGRESS", "", 2),
        ("B", "CREATE_COMPLETE", "", 3),
        ("app", "CREATE_COMPLETE", "", 4),
    ];
    for (l, st, r, t) in create {
        s.push(l, st, r, t).operation_id = Some("op-1".into());
    }
    let update: [(&str, &str, &str, i64, &str); 13] = [
        ("app", "UPDATE_IN_PROGRESS", "User Initiated", 100, "op-2"),
        ("A", "UPDATE_IN_PROGRESS", "", 101, "op-2"),
        ("C", "CREATE_IN_PROGRESS", "", 101, "op-2"),
        (
            "C",
            "CREATE_IN_PROGRESS",
            "Resource creation Initiated",
            102,
            "op-2",
        ),
        (
            "C",
            "CREATE_FAILED",
            "my-bucket already exists",
            103,
            "op-2",
        ),
        (
            "A",
            "UPDATE_FAILED",
            "Resource update cancelled",
            103,
            "op-2",
        ),
        (
            "app",
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to create: [C].",
            104,
            "op-3",
        ),
        ("A", "UPDATE_IN_PROGRESS", "", 105, "op-3"),
        ("A", "UPDATE_COMPLETE", "", 106, "op-3"),
        (
            "app",
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "",
            107,
            "op-3",
        ),
        ("C", "DELETE_IN_PROGRESS", "", 107, "op-3"),
        ("C", "DELETE_COMPLETE", "", 108, "op-3"),
        ("app", "UPDATE_ROLLBACK_COMPLETE", "", 108, "op-3"),
    ];
    for (l, st, r, t, op) in update {
        s.push(l, st, r, t).operation_id = Some(op.into());
    }
    s.status = "UPDATE_IN_PROGRESS".into();
    s.last_updated = Some(support::fake_cfn::base_time() + chrono::Duration::seconds(100));
    s.operations = vec![("op-2".into(), "UPDATE_STACK".into())];
    s.outputs = vec![(
        "Url".into(),
        "https://example.invalid".into(),
        String::new(),
    )];
    s.template_resources = 3;
    s.resources = vec![
        (
            "A".into(),
            "AWS::S3::Bucket".into(),
            "UPDATE_IN_PROGRESS".into(),
        ),
        (
            "B".into(),
            "AWS::S3::Bucket".into(),
            "CREATE_COMPLETE".into(),
        ),
    ];
    s.visible = 8;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("app", 2)],
            faults: vec![Fault::Throttle, Fault::Throttle, Fault::Throttle],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("app", 2)],
            faults: vec![Fault::Reset, Fault::Reset],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("app", 1)],
            status: Some("UPDATE_ROLLBACK_IN_PROGRESS".into()),
            operations: Some(vec![
                ("op-3".into(), "ROLLBACK".into()),
                ("op-2".into(), "UPDATE_STACK".into()),
            ]),
            faults: vec![Fault::Internal],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("app", 3)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("app", 2)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("app", 1)],
            status: Some("UPDATE_ROLLBACK_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let expected = event_ids(&s, 6..19);
    let fake = FakeCfn::start(vec![s]).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("app"));
    let calls = tracker.calls();
    let c = run_built(tracker, LIMIT).await;

    assert_eq!(
        ids(&c.updates),
        expected,
        "only the update's events, each once, in order"
    );
    assert_progress_sane(&c.updates);
    for u in &c.updates {
        assert_eq!(u.stack.total_resources, 3);
    }
    let after_failure = c
        .updates
        .iter()
        .find(|u| u.resource.status == "CREATE_FAILED")
        .expect("C failed");
    let s = &after_failure.stack;
    assert_eq!(
        (
            s.completed_resources,
            s.in_progress_resources,
            s.failed_resources,
            s.progress
        ),
        (1, 1, 1, 33)
    );

    // 2 resets and a 500: told to the clients once each (not per retry), retried,
    // and their end told; throttling: backed off.
    let codes: Vec<ErrorCode> = c.errors.iter().map(|e| e.code).collect();
    assert_eq!(
        codes,
        [ErrorCode::Network, ErrorCode::Aws],
        "{:?}",
        c.errors
    );
    assert!(c.errors.iter().all(|e| e.retrying), "{:?}", c.errors);
    assert_eq!(c.recovered, [ErrorCode::Network, ErrorCode::Aws]);
    assert_eq!(calls.throttled(), 3);
    assert_eq!(calls.failed(), 3);

    let done = c.complete.expect("deployment_complete");
    assert!(!done.success);
    assert_eq!(done.stack.status, "UPDATE_ROLLBACK_COMPLETE");
    assert!(done.outputs.is_empty(), "no outputs on failure");
    assert_eq!(done.duration_seconds, 8);
    let rc = done.root_cause.expect("root cause");
    assert_eq!(
        (
            rc.logical_id.as_str(),
            rc.resource_type.as_str(),
            rc.status.as_str(),
            rc.reason.as_str()
        ),
        (
            "C",
            "AWS::S3::Bucket",
            "CREATE_FAILED",
            "my-bucket already exists"
        )
    );
    // Rollback counts follow the latest status: A updated back, B untouched, C deleted.
    assert_eq!(
        (done.stack.completed_resources, done.stack.failed_resources),
        (3, 0)
    );
}

/// A nested stack fails; its events are merged (marked with its name), its terminal
/// event does not end the run, the parent's deletion of it wakes its poller again,
/// and the root cause is the child's resource, not the wrapper.
#[tokio::test]
async fn nested_stack_failure_is_merged_and_its_cause_found() {
    let child_name = "root-Net-ABC";
    let child_arn = arn(child_name);
    let mut p = FakeStack::new("root");
    let mut ch = FakeStack::new(child_name);
    let nested = |e: &mut support::fake_cfn::FakeEvent, phys: &str| {
        e.resource_type = STACK.into();
        e.physical_id = phys.into();
    };
    p.push("root", "CREATE_IN_PROGRESS", "User Initiated", 0);
    nested(p.push("Net", "CREATE_IN_PROGRESS", "", 1), "");
    nested(
        p.push(
            "Net",
            "CREATE_IN_PROGRESS",
            "Resource creation Initiated",
            1,
        ),
        &child_arn,
    );
    p.push("Api", "CREATE_IN_PROGRESS", "", 1);
    let wrapper = format!(
        "Embedded stack {child_arn} was not successfully created: The following resource(s) failed to create: [Subnet]."
    );
    nested(p.push("Net", "CREATE_FAILED", &wrapper, 7), &child_arn);
    p.push("Api", "CREATE_FAILED", "Resource creation cancelled", 7);
    p.push(
        "root",
        "ROLLBACK_IN_PROGRESS",
        "The following resource(s) failed to create: [Net, Api].",
        7,
    );
    p.push("Api", "DELETE_COMPLETE", "", 8);
    nested(p.push("Net", "DELETE_IN_PROGRESS", "", 8), &child_arn);
    nested(p.push("Net", "DELETE_COMPLETE", "", 9), &child_arn);
    p.push("root", "ROLLBACK_COMPLETE", "", 10);

    ch.push(child_name, "CREATE_IN_PROGRESS", "", 1);
    ch.push("Vpc", "CREATE_IN_PROGRESS", "", 2);
    ch.push("Vpc", "CREATE_COMPLETE", "", 3);
    ch.push("Subnet", "CREATE_IN_PROGRESS", "", 3);
    ch.push(
        "Subnet",
        "CREATE_FAILED",
        "The CIDR '10.0.0.0/8' is invalid.",
        4,
    );
    ch.push(child_name, "ROLLBACK_IN_PROGRESS", "", 4);
    ch.push("Vpc", "DELETE_IN_PROGRESS", "", 5);
    ch.push("Vpc", "DELETE_COMPLETE", "", 6);
    ch.push(child_name, "ROLLBACK_COMPLETE", "", 6);
    ch.push(child_name, "DELETE_IN_PROGRESS", "", 8);
    ch.push(child_name, "DELETE_COMPLETE", "", 9);

    p.template_resources = 2;
    p.get_template = false; // the total comes from GetTemplateSummary
    p.visible = 1;
    p.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("root", 3), reveal(child_name, 1)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal(child_name, 4)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal(child_name, 4)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("root", 3)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("root", 2), reveal(child_name, 1)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal(child_name, 1), reveal("root", 1)],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("root", 1)],
            status: Some("ROLLBACK_COMPLETE".into()),
            status_reason: Some("The following resource(s) failed to create: [Net, Api].".into()),
            ..Step::default()
        },
    ]
    .into();
    let parent_ids: HashSet<String> = p.events.iter().map(|e| e.id.clone()).collect();
    let child_ids: Vec<String> = ch.events.iter().map(|e| e.id.clone()).collect();
    let n_parent = p.events.len();
    let fake = FakeCfn::start(vec![p, ch]).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("root"), LIMIT).await;

    let got = ids(&c.updates);
    assert_eq!(got.len(), n_parent + child_ids.len(), "{got:?}");
    assert_eq!(
        got.iter().collect::<HashSet<_>>().len(),
        got.len(),
        "no duplicates"
    );
    let got_child: Vec<String> = c
        .updates
        .iter()
        .filter(|u| u.nested_stack.as_deref() == Some(child_name))
        .map(|u| u.event_id.clone())
        .collect();
    assert_eq!(
        got_child, child_ids,
        "child events in order, marked with the child's name"
    );
    for u in &c.updates {
        assert_eq!(u.nested_stack.is_none(), parent_ids.contains(&u.event_id));
        assert_eq!(u.stack.name, "root", "the summary is the root stack's");
    }
    for w in c.updates.windows(2) {
        assert!(
            w[0].timestamp <= w[1].timestamp,
            "chronological: {:?} then {:?}",
            w[0].event_id,
            w[1].event_id
        );
    }
    // The child's ROLLBACK_COMPLETE came long before the end.
    let child_terminal = c
        .updates
        .iter()
        .position(|u| u.nested_stack.is_some() && u.resource.status == "ROLLBACK_COMPLETE")
        .expect("child terminal event");
    assert!(child_terminal < c.updates.len() - 5);
    assert_progress_sane(&c.updates);

    let done = c.complete.expect("deployment_complete");
    assert!(!done.success);
    assert_eq!(done.stack.status, "ROLLBACK_COMPLETE");
    assert_eq!(done.duration_seconds, 10);
    let rc = done.root_cause.expect("root cause");
    assert_eq!(
        (rc.logical_id.as_str(), rc.status.as_str()),
        ("Subnet", "CREATE_FAILED")
    );
    assert_eq!(rc.reason, "The CIDR '10.0.0.0/8' is invalid.");
    // GetTemplate was refused: the total came from GetTemplateSummary.
    assert!(fake
        .world()
        .requests
        .iter()
        .any(|(a, _)| a == "GetTemplateSummary"));
    assert_eq!(done.stack.total_resources, 2);
    // The child was polled by its ARN.
    assert!(fake
        .world()
        .requests
        .iter()
        .any(|(a, s)| a == "DescribeStackEvents" && *s == child_arn));
}

/// A stack that does not exist yet is waited for and reported, then tracked.
#[tokio::test]
async fn stack_that_appears_later_is_waited_for() {
    let mut s = FakeStack::new("late");
    s.missing_for = 3;
    s.push("late", "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Q", "CREATE_IN_PROGRESS", "", 1);
    s.push("Q", "CREATE_COMPLETE", "", 2);
    s.push("late", "CREATE_COMPLETE", "", 3);
    s.template_resources = 1;
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("late", 3)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("late"), LIMIT).await;
    match c.all.first() {
        Some(TrackerMessage::Problem(e)) => {
            assert!(e.retrying);
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(
                e.message.contains("late does not exist yet"),
                "{}",
                e.message
            );
        }
        other => panic!("first message should report the wait: {other:?}"),
    }
    assert_eq!(c.errors.len(), 1, "reported once: {:?}", c.errors);
    assert_eq!(c.recovered, [ErrorCode::NotFound], "the stack appeared");
    assert_eq!(c.updates.len(), 4);
    let done = c.complete.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(
        (done.stack.progress, done.stack.completed_resources),
        (100, 1)
    );
}

/// A stack that never appears ends the run with a clear error.
#[tokio::test]
async fn stack_that_never_appears_is_reported() {
    let fake = FakeCfn::start(vec![]).await;
    let mut cfg = fast_config("ghost");
    cfg.wait_for_stack = Duration::from_millis(150);
    let c = run_tracker(client(&fake.endpoint), cfg, LIMIT).await;
    assert_eq!(
        c.outcome,
        Some(Outcome::StackNotFound {
            stack: "ghost".into()
        })
    );
    let last = c.errors.last().expect("an error");
    assert!(!last.retrying);
    assert!(
        last.message.contains("ghost does not exist"),
        "{}",
        last.message
    );
    assert!(c.complete.is_none());
}

/// A tracker taking over from another node (given the EventIds already delivered)
/// emits only the rest, with counts that include everything.
#[tokio::test]
async fn takeover_continues_without_duplicates() {
    let mut s = FakeStack::new("handoff");
    s.push("handoff", "CREATE_IN_PROGRESS", "User Initiated", 0);
    for r in ["A", "B", "C"] {
        s.push(r, "CREATE_IN_PROGRESS", "", 1);
        s.push(r, "CREATE_COMPLETE", "", 2);
    }
    s.push("handoff", "CREATE_COMPLETE", "", 3);
    s.template_resources = 3;
    s.visible = 5;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("handoff", 3)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let already: Vec<String> = event_ids(&s, 0..4);
    let rest = event_ids(&s, 4..8);
    let fake = FakeCfn::start(vec![s]).await;
    let mut cfg = fast_config("handoff");
    cfg.seen_event_ids = already.into_iter().collect();
    let c = run_tracker(client(&fake.endpoint), cfg, LIMIT).await;
    assert_eq!(ids(&c.updates), rest);
    // The first emitted event (B complete) already counts A as complete.
    assert_eq!(c.updates[0].stack.completed_resources, 2);
    assert!(c.complete.expect("complete").success);
}

/// A stack that completes at its second `DescribeStacks`.
fn quick_stack(name: &str) -> FakeStack {
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Q", "CREATE_IN_PROGRESS", "", 1);
    s.push("Q", "CREATE_COMPLETE", "", 2);
    s.push(name, "CREATE_COMPLETE", "", 3);
    s.template_resources = 1;
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal(name, 3)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    s
}

/// What users may see of an AWS error: one short sentence, none of AWS's text.
fn assert_public(message: &str) {
    assert!(
        !message.contains("arn:aws") && !message.contains("123456789012"),
        "AWS's text (principal, account) stays out of what users see: {message}"
    );
    assert!(message.chars().count() <= 300, "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// Configuration errors (access denied, refused credentials) are retried with
/// their own backoff, told once however many retries, and their end is told.
#[tokio::test]
async fn configuration_errors_are_told_once_and_recover() {
    for (fault, code, words) in [
        (
            Fault::AccessDenied,
            ErrorCode::AccessDenied,
            "cloudformation:DescribeStacks",
        ),
        (Fault::ExpiredToken, ErrorCode::Credentials, "ExpiredToken"),
        (Fault::Reset, ErrorCode::Network, "could not be reached"),
    ] {
        let fake = FakeCfn::start(vec![quick_stack("guarded")]).await;
        fake.world().faults.extend([fault; 5]);
        let c = run_tracker(client(&fake.endpoint), fast_config("guarded"), LIMIT).await;
        assert_eq!(c.errors.len(), 1, "once, not per retry: {:?}", c.errors);
        let e = &c.errors[0];
        assert_eq!(e.code, code, "{e:?}");
        assert!(e.retrying);
        assert!(e.retry_at.is_some(), "{e:?}");
        assert!(e.message.contains(words), "{}", e.message);
        assert_public(&e.message);
        assert_eq!(c.recovered, [code]);
        assert!(matches!(c.all.first(), Some(TrackerMessage::Problem(_))));
        assert!(matches!(c.all.get(1), Some(TrackerMessage::Recovered(_))));
        assert!(c.complete.expect("complete").success);
        assert_eq!(fake.world().faults.len(), 0, "every fault was retried");
    }
}

/// The default backoff of configuration errors is minutes, not seconds.
#[test]
fn configuration_errors_back_off_for_minutes() {
    let c = stackpulse_cfn::TrackerConfig::new("s");
    assert!(c.config_backoff.delay(0) >= Duration::from_secs(30));
    assert!(c.config_backoff.ceiling(10) >= Duration::from_secs(300));
    assert!(c.backoff.ceiling(0) < Duration::from_secs(1));
}

/// An unknown AWS error ends the run with `retrying: false`, code `aws`.
#[tokio::test]
async fn permanent_errors_end_the_run() {
    let fake = FakeCfn::start(vec![]).await;
    fake.world().faults.push_back(Fault::Code("OptInRequired"));
    let c = run_tracker(client(&fake.endpoint), fast_config("secret"), LIMIT).await;
    let Some(Outcome::Failed(message)) = &c.outcome else {
        panic!("expected a failed run: {:?}", c.outcome)
    };
    assert!(message.contains("OptInRequired"), "{message}");
    assert_public(message);
    let last = c.errors.last().expect("an error");
    assert!(!last.retrying);
    assert_eq!(last.code, ErrorCode::Aws);
    assert_eq!(last.retry_at, None);
    assert_eq!(&last.message, message);
}

/// The first problem a tracker sends with `client` (then the tracker is dropped).
async fn first_problem(client: aws_sdk_cloudformation::Client) -> TrackerProblem {
    let tracker = Tracker::new(client, fast_config("anything"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let run = tokio::spawn(tracker.run(tx));
    let first = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("a message");
    run.abort();
    match first {
        Some(TrackerMessage::Problem(p)) => p,
        other => panic!("expected a problem: {other:?}"),
    }
}

/// No credentials at all, or no region: codes `credentials` and `region`, with
/// what to set.
#[tokio::test]
async fn missing_credentials_and_region_say_what_to_set() {
    use aws_sdk_cloudformation::config::{BehaviorVersion, Credentials, Region};
    let fake = FakeCfn::start(vec![]).await;
    let no_credentials = aws_sdk_cloudformation::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&fake.endpoint)
        .region(Region::new("us-east-1"))
        .build();
    let p = first_problem(aws_sdk_cloudformation::Client::from_conf(no_credentials)).await;
    assert_eq!(p.code, ErrorCode::Credentials, "{p:?}");
    assert!(p.message.contains("AWS_PROFILE"), "{}", p.message);
    assert_public(&p.message);
    let no_region = aws_sdk_cloudformation::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("t", "t", None, None, "tests"))
        .build();
    let p = first_problem(aws_sdk_cloudformation::Client::from_conf(no_region)).await;
    assert_eq!(p.code, ErrorCode::Region, "{p:?}");
    assert!(p.message.contains("AWS_REGION"), "{}", p.message);
    assert_eq!(fake.request_count(), 0, "nothing was sent");
}

/// A receiver that goes away stops the tracker.
#[tokio::test]
async fn dropped_receiver_stops_the_tracker() {
    let mut s = FakeStack::new("forever");
    s.push("forever", "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.visible = 1;
    let fake = FakeCfn::start(vec![s]).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("forever"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let run = tokio::spawn(tracker.run(tx));
    // Wait for the first event and the snapshot, then leave.
    assert!(matches!(
        rx.recv().await,
        Some(TrackerMessage::ResourceUpdate(_))
    ));
    assert!(matches!(rx.recv().await, Some(TrackerMessage::Snapshot(_))));
    drop(rx);
    let outcome = tokio::time::timeout(LIMIT, run)
        .await
        .expect("stops")
        .expect("no panic");
    assert_eq!(outcome, Outcome::Stopped);
}

/// Long throttling: the tracker backs off, tells clients once, and carries on.
#[tokio::test]
async fn sustained_throttling_is_survived_and_reported_once() {
    let mut s = FakeStack::new("busy");
    s.push("busy", "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("T", "CREATE_IN_PROGRESS", "", 1);
    s.push("T", "CREATE_COMPLETE", "", 2);
    s.push("busy", "CREATE_COMPLETE", "", 3);
    s.template_resources = 1;
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("busy", 2)],
            faults: vec![Fault::Throttle; 6],
            ..Step::default()
        },
        Step {
            reveal: vec![reveal("busy", 1)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let all = event_ids(&s, 0..4);
    let fake = FakeCfn::start(vec![s]).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("busy"));
    let calls = tracker.calls();
    let c = run_built(tracker, LIMIT).await;
    assert_eq!(ids(&c.updates), all);
    assert_eq!(calls.throttled(), 6);
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert!(c.errors[0].retrying);
    assert_eq!(c.errors[0].code, ErrorCode::Throttled);
    assert_eq!(c.recovered, [ErrorCode::Throttled]);
    assert!(
        c.errors[0].message.contains("throttling"),
        "{}",
        c.errors[0].message
    );
    assert!(c.complete.expect("complete").success);
}

/// B1 + B2: an update of a stack whose nested stack has history. The child is
/// found through the parent's UPDATE_IN_PROGRESS before its own start event is
/// visible: its earlier create must not be replayed. Later the child completes,
/// then moves again on its own (a rollback reaching into it) before the parent
/// says so: its own `*_IN_PROGRESS` keeps it polled to the end.
#[tokio::test]
async fn nested_update_with_history_neither_replays_nor_drops_the_child() {
    let stacks = scenarios::nested_update_with_history("app");
    let child = scenarios::nested_child("app");
    let parent_ids = scenarios::operation_ids(&stacks[0]);
    let child_ids = scenarios::operation_ids(&stacks[1]);
    let old_child_ids = scenarios::history_ids(&stacks[1]);
    let fake = FakeCfn::start(stacks).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("app"), LIMIT).await;

    let got = ids(&c.updates);
    for old in &old_child_ids {
        assert!(
            !got.contains(old),
            "the child's create was replayed: {got:?}"
        );
    }
    let got_child: Vec<String> = c
        .updates
        .iter()
        .filter(|u| u.nested_stack.as_deref() == Some(child.as_str()))
        .map(|u| u.event_id.clone())
        .collect();
    assert_eq!(
        got_child, child_ids,
        "every child event of the update, in order"
    );
    let got_parent: Vec<String> = c
        .updates
        .iter()
        .filter(|u| u.nested_stack.is_none())
        .map(|u| u.event_id.clone())
        .collect();
    assert_eq!(got_parent, parent_ids);
    let done = c.complete.expect("deployment_complete");
    assert!(!done.success);
    assert_eq!(
        done.duration_seconds, 12,
        "from the update's start, not the create's"
    );
    let rc = done.root_cause.expect("root cause");
    assert_eq!(
        (rc.logical_id.as_str(), rc.reason.as_str()),
        ("Api", "Api quota exceeded")
    );
}

/// B4: an update that replaces Bucket and removes Legacy (which cannot be
/// deleted). The cleanup deletes the *old* Bucket: shown as such, but the row stays
/// the live bucket; Legacy's DELETE_FAILED during cleanup is skipped, not a failure.
#[tokio::test]
async fn replacement_cleanup_does_not_overwrite_the_live_row() {
    let fake = FakeCfn::start(scenarios::replacement("swap")).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("swap"));
    let state = tracker.state();
    let c = run_built(tracker, LIMIT).await;

    // The old bucket's deletion is in the stream as what it is.
    let deleted = c
        .updates
        .iter()
        .find(|u| u.resource.status == "DELETE_COMPLETE")
        .expect("the old bucket's deletion");
    assert_eq!(deleted.resource.physical_id, "old-bucket");
    let done = c.complete.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(
        (
            done.stack.failed_resources,
            done.stack.completed_resources,
            done.stack.progress
        ),
        (0, 2, 100),
        "{:?}",
        done.stack
    );
    let st = state.borrow().clone();
    let bucket = st
        .resources
        .iter()
        .find(|r| r.logical_id == "Bucket")
        .expect("Bucket row");
    assert_eq!(
        (bucket.status.as_str(), bucket.physical_id.as_str()),
        ("UPDATE_COMPLETE", "swap-Bucket-phys"),
        "the live bucket, not the deleted one"
    );
}

/// B7: a tracker that starts mid-rollback, when `LastOperations` lists only the
/// rollback: the failed update stays in scope, and its real failure is the cause.
#[tokio::test]
async fn rollback_only_last_operations_keep_the_failed_update() {
    let mut s = FakeStack::new("rb");
    let events: [(&str, &str, &str, i64, &str); 10] = [
        ("rb", "CREATE_IN_PROGRESS", "User Initiated", 0, "op-1"),
        ("A", "CREATE_COMPLETE", "", 1, "op-1"),
        ("rb", "CREATE_COMPLETE", "", 2, "op-1"),
        ("rb", "UPDATE_IN_PROGRESS", "User Initiated", 100, "op-2"),
        ("C", "CREATE_IN_PROGRESS", "", 101, "op-2"),
        (
            "C",
            "CREATE_FAILED",
            "my-bucket already exists",
            102,
            "op-2",
        ),
        (
            "rb",
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to create: [C].",
            103,
            "op-3",
        ),
        ("C", "DELETE_COMPLETE", "", 104, "op-3"),
        (
            "rb",
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "",
            105,
            "op-3",
        ),
        ("rb", "UPDATE_ROLLBACK_COMPLETE", "", 105, "op-3"),
    ];
    for (l, st, r, t, op) in events {
        s.push(l, st, r, t).operation_id = Some(op.into());
    }
    s.status = "UPDATE_ROLLBACK_IN_PROGRESS".into();
    s.status_reason = "The following resource(s) failed to create: [C].".into();
    s.last_updated = Some(support::fake_cfn::base_time() + chrono::Duration::seconds(100));
    s.operations = vec![("op-3".into(), "ROLLBACK".into())];
    s.template_resources = 1;
    s.visible = 8;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("rb", 2)],
            status: Some("UPDATE_ROLLBACK_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let expected = event_ids(&s, 3..10);
    let fake = FakeCfn::start(vec![s]).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("rb"), LIMIT).await;
    assert_eq!(
        ids(&c.updates),
        expected,
        "the failed update and its rollback"
    );
    let done = c.complete.expect("deployment_complete");
    assert_eq!(done.duration_seconds, 5);
    let rc = done.root_cause.expect("root cause");
    assert_eq!(
        (
            rc.logical_id.as_str(),
            rc.status.as_str(),
            rc.reason.as_str()
        ),
        ("C", "CREATE_FAILED", "my-bucket already exists")
    );
}

/// B9: 5xx answers with codes the tracker does not know are service errors:
/// retried, told once, and their end told.
#[tokio::test]
async fn unknown_5xx_codes_are_retried_and_told_once() {
    let fake = FakeCfn::start(vec![quick_stack("flaky")]).await;
    fake.world().faults.extend([
        Fault::Status(503, "ServiceUnavailableException"),
        Fault::Status(503, "ServiceUnavailableException"),
        Fault::Status(504, "RequestTimeout"),
    ]);
    let c = run_tracker(client(&fake.endpoint), fast_config("flaky"), LIMIT).await;
    assert!(
        matches!(c.outcome, Some(Outcome::Completed(ref d)) if d.success),
        "{:?}",
        c.outcome
    );
    assert_eq!(c.errors.len(), 1, "once, not per retry: {:?}", c.errors);
    assert_eq!(c.errors[0].code, ErrorCode::Aws);
    assert!(c.errors[0].retrying);
    assert_public(&c.errors[0].message);
    assert_eq!(c.recovered, [ErrorCode::Aws]);
    assert_eq!(fake.world().faults.len(), 0);
}

/// B6: a stack created through a change set that failed stays in
/// REVIEW_IN_PROGRESS forever; the run ends with the change set's reason.
#[tokio::test]
async fn failed_change_set_review_ends_with_its_reason() {
    let fake = FakeCfn::start(scenarios::failed_change_set("rev")).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("rev"), LIMIT).await;
    let done = c.complete.expect("deployment_complete");
    assert!(!done.success);
    assert_eq!(done.stack.status, "REVIEW_IN_PROGRESS");
    let rc = done.root_cause.expect("root cause");
    assert_eq!(
        (
            rc.logical_id.as_str(),
            rc.resource_type.as_str(),
            rc.status.as_str()
        ),
        ("deploy-1", "AWS::CloudFormation::ChangeSet", "FAILED")
    );
    assert!(
        rc.reason.contains("Unresolved resource dependencies"),
        "{}",
        rc.reason
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
}

/// B6: a change set that is ready but never executed ends the run after
/// `review_wait`; one that is executed meanwhile is tracked as usual.
#[tokio::test]
async fn unexecuted_change_set_ends_after_the_review_wait() {
    use support::fake_cfn::FakeChangeSet;
    let mut s = FakeStack::new("idle");
    s.push("idle", "REVIEW_IN_PROGRESS", "User Initiated", 0);
    s.status = "REVIEW_IN_PROGRESS".into();
    s.visible = 1;
    s.change_sets = vec![FakeChangeSet {
        name: "deploy-2".into(),
        status: "CREATE_COMPLETE".into(),
        execution_status: "AVAILABLE".into(),
        status_reason: String::new(),
    }];
    let fake = FakeCfn::start(vec![s]).await;
    let mut cfg = fast_config("idle");
    cfg.review_wait = Duration::from_millis(300);
    let c = run_tracker(client(&fake.endpoint), cfg, LIMIT).await;
    let rc = c
        .complete
        .expect("deployment_complete")
        .root_cause
        .expect("root cause");
    assert_eq!(rc.logical_id, "deploy-2");
    assert!(rc.reason.contains("not executed"), "{}", rc.reason);
}

/// B10: `DescribeStackEvents` lags behind `DescribeStacks`: the stack's terminal
/// event shows up only at the second events call after the terminal status. The
/// final poll waits for it (bounded), so it is emitted and ends the duration.
#[tokio::test]
async fn final_poll_waits_for_the_lagging_terminal_event() {
    let mut s = quick_stack("lag");
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("lag", 2)],
            reveal_late: vec![reveal("lag", 1)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let all = event_ids(&s, 0..4);
    let fake = FakeCfn::start(vec![s]).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("lag"), LIMIT).await;
    assert_eq!(ids(&c.updates), all, "the terminal event too");
    let done = c.complete.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.duration_seconds, 3, "to the terminal event");
}

/// B12: during an IMPORT, resources not being imported count as done from the
/// start (as during an update).
#[tokio::test]
async fn import_counts_untouched_resources_as_done() {
    let mut s = FakeStack::new("imp");
    s.push("imp", "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Kept", "CREATE_COMPLETE", "", 1);
    s.push("imp", "CREATE_COMPLETE", "", 2);
    s.push("imp", "IMPORT_IN_PROGRESS", "User Initiated", 100);
    s.push("Table", "IMPORT_IN_PROGRESS", "", 101);
    s.push("Table", "IMPORT_COMPLETE", "", 102);
    s.push("imp", "IMPORT_COMPLETE", "", 103);
    s.status = "IMPORT_IN_PROGRESS".into();
    s.template_resources = 2;
    s.resources = vec![
        (
            "Kept".into(),
            "AWS::S3::Bucket".into(),
            "CREATE_COMPLETE".into(),
        ),
        (
            "Table".into(),
            "AWS::S3::Bucket".into(),
            "IMPORT_IN_PROGRESS".into(),
        ),
    ];
    s.visible = 5;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("imp", 2)],
            status: Some("IMPORT_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    let c = run_tracker(client(&fake.endpoint), fast_config("imp"), LIMIT).await;
    let first = c.updates.first().expect("updates");
    assert_eq!(first.resource.status, "IMPORT_IN_PROGRESS");
    assert_eq!(
        (first.stack.completed_resources, first.stack.progress),
        (1, 50),
        "Kept is done from the start: {:?}",
        first.stack
    );
    assert!(c.complete.expect("complete").success);
}

/// B11: an event without a status (a hook-only event) never turns a row into
/// `""` nor is emitted as a resource update.
#[tokio::test]
async fn events_without_a_status_are_not_rows() {
    let mut s = FakeStack::new("hooked");
    s.push("hooked", "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Q", "CREATE_IN_PROGRESS", "", 1);
    s.push("Q", "CREATE_COMPLETE", "", 2);
    s.push("Q", "", "Hook invoked", 2);
    s.push("hooked", "CREATE_COMPLETE", "", 3);
    s.template_resources = 1;
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![reveal("hooked", 4)],
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    let tracker = Tracker::new(client(&fake.endpoint), fast_config("hooked"));
    let state = tracker.state();
    let c = run_built(tracker, LIMIT).await;
    assert!(
        c.updates.iter().all(|u| !u.resource.status.is_empty()),
        "{:?}",
        c.updates
    );
    assert_eq!(c.updates.len(), 4);
    let done = c.complete.expect("complete");
    assert_eq!(
        (done.stack.completed_resources, done.stack.progress),
        (1, 100)
    );
    let st = state.borrow().clone();
    assert_eq!(st.resources[0].status, "CREATE_COMPLETE");
}

/// Requests the endpoint saw, per action.
fn requests_by_action(fake: &FakeCfn) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for (action, _) in &fake.world().requests {
        *by.entry(action.clone()).or_insert(0) += 1;
    }
    by
}

/// Receives until `updates` holds `n` event ids, or the completion (returned).
async fn receive_until(
    rx: &mut tokio::sync::mpsc::Receiver<TrackerMessage>,
    updates: &mut Vec<String>,
    n: usize,
) -> Option<stackpulse_cfn::DeploymentComplete> {
    let wait = async {
        while updates.len() < n {
            match rx.recv().await {
                Some(TrackerMessage::ResourceUpdate(u)) => updates.push(u.event_id),
                Some(TrackerMessage::DeploymentComplete(d)) => return Some(d),
                Some(TrackerMessage::Problem(p)) => panic!("{p:?}"),
                Some(_) => {}
                None => return None,
            }
        }
        None
    };
    tokio::time::timeout(LIMIT, wait).await.expect("in time")
}

/// B13, push cost: a stack whose events are pushed is read with
/// `DescribeStackEvents` alone, one read per burst of pushes, and `DescribeStacks`
/// only when its own status changed (the root's event). The timers are an hour, so
/// every read after the first poll is a push's. Exact counts per API for six
/// bursts of two events each, every event once.
#[tokio::test]
async fn pushes_read_events_only_until_the_stack_itself_changes() {
    const BURSTS: usize = 6;
    let name = "pushed";
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    for r in 0..BURSTS {
        let id = format!("R{r}");
        s.push(&id, "CREATE_IN_PROGRESS", "", 1 + 2 * r as i64);
        s.push(&id, "CREATE_COMPLETE", "", 2 + 2 * r as i64);
    }
    s.push(name, "CREATE_COMPLETE", "", 60);
    s.template_resources = BURSTS;
    s.resources = (0..BURSTS)
        .map(|r| {
            (
                format!("R{r}"),
                "AWS::S3::Bucket".into(),
                "CREATE_COMPLETE".into(),
            )
        })
        .collect();
    s.visible = 1;
    let all = event_ids(&s, 0..s.events.len());
    let fake = FakeCfn::start(vec![s]).await;

    let wake = std::sync::Arc::new(stackpulse_cfn::Wake::new());
    let mut cfg = fast_config(name);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.push_poll_interval = Duration::from_secs(3600);
    cfg.wake = Some(wake.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = tokio::spawn(Tracker::new(client(&fake.endpoint), cfg).run(tx));
    let mut updates = Vec::new();
    receive_until(&mut rx, &mut updates, 1).await;
    for b in 0..BURSTS {
        // Two events, two pushes (EventBridge sends one per event).
        {
            let mut w = fake.world();
            w.stacks[0].visible += 2;
        }
        wake.wake();
        wake.wake();
        receive_until(&mut rx, &mut updates, 2 + 2 * b + 1).await;
    }
    {
        let mut w = fake.world();
        w.stacks[0].visible += 1;
        w.stacks[0].status = "CREATE_COMPLETE".into();
    }
    wake.wake();
    let done = receive_until(&mut rx, &mut updates, usize::MAX)
        .await
        .expect("deployment_complete");
    assert!(done.success);
    assert_eq!(updates, all, "every event once, in order");
    let outcome = tokio::time::timeout(LIMIT, run)
        .await
        .expect("ends")
        .expect("run");
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");

    let by = requests_by_action(&fake);
    let count = |a: &str| by.get(a).copied().unwrap_or(0);
    // Resolve, the first cycle's status, and the one after the root's terminal
    // event; none per push.
    assert_eq!(count("DescribeStacks"), 3, "{by:?}");
    // The first poll, one read per burst, the terminal event's read, the final poll.
    assert_eq!(count("DescribeStackEvents"), 1 + BURSTS + 1 + 1, "{by:?}");
    assert_eq!(count("GetTemplate"), 1, "{by:?}");
    assert_eq!(count("ListStackResources"), 2, "{by:?}");
    assert_eq!(by.values().sum::<usize>(), 3 + BURSTS + 3 + 1 + 2, "{by:?}");
}

/// A push read that shows the root's terminal event while `DescribeStacks` still
/// says the operation runs (the two APIs are not updated together): the tracker
/// looks again after the poll interval, not the push poll interval (an hour here).
#[tokio::test]
async fn a_lagging_status_after_a_pushed_terminal_event_is_asked_again_soon() {
    let name = "laggy";
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("R", "CREATE_IN_PROGRESS", "", 1);
    s.push("R", "CREATE_COMPLETE", "", 2);
    s.push(name, "CREATE_COMPLETE", "", 3);
    s.template_resources = 1;
    s.visible = 1;
    // DescribeStacks: resolve, the first cycle, the pushed terminal event's (still
    // in progress), then the next one says complete.
    s.steps = vec![
        Step::default(),
        Step::default(),
        Step::default(),
        Step {
            status: Some("CREATE_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    let fake = FakeCfn::start(vec![s]).await;
    let wake = std::sync::Arc::new(stackpulse_cfn::Wake::new());
    let mut cfg = fast_config(name);
    cfg.push_poll_interval = Duration::from_secs(3600);
    cfg.wake = Some(wake.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = tokio::spawn(Tracker::new(client(&fake.endpoint), cfg).run(tx));
    let mut updates = Vec::new();
    receive_until(&mut rx, &mut updates, 1).await;
    fake.world().stacks[0].visible = 4;
    wake.wake();
    let done = receive_until(&mut rx, &mut updates, usize::MAX)
        .await
        .expect("deployment_complete within the test's limit, not an hour later");
    assert!(done.success);
    assert_eq!(updates.len(), 4);
    assert_eq!(fake.world().steps_left(name), 0);
    let outcome = tokio::time::timeout(LIMIT, run)
        .await
        .expect("ends")
        .expect("run");
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
}
