//! CloudFormation endpoints for the server's tracking tests, from the shared test
//! kit: a moto server (the real wire format) and a scripted fake endpoint (stacks
//! played step by step, failures, throttling).
#![allow(dead_code)]

#[allow(unused_imports)]
pub use stackpulse_testkit::{fake_cfn, moto};

use fake_cfn::{FakeStack, Step};

/// Environment for a server or CLI process talking to a local endpoint: static
/// test credentials, and no profile files or instance metadata to consult.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_CONFIG_FILE", "/nonexistent/stackpulse-test-aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/stackpulse-test-aws-credentials",
    ),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The flags of a `serve` (or `doctor`) that tracks stacks on `endpoint`: every
/// AWS client pointed at it, in us-east-1; then `extra`.
pub fn aws_flags<'a>(endpoint: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec!["--aws-endpoint-url", endpoint, "--aws-region", "us-east-1"];
    flags.extend_from_slice(extra);
    flags
}

/// A stack that fails: Db fails ("Subnet not found"), Bucket is cancelled, rollback.
pub fn failing_stack(name: &str) -> FakeStack {
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Bucket", "CREATE_IN_PROGRESS", "", 1);
    s.push("Db", "CREATE_IN_PROGRESS", "", 1);
    s.push("Db", "CREATE_FAILED", "Subnet not found", 2);
    s.push("Bucket", "CREATE_FAILED", "Resource creation cancelled", 3);
    s.push(
        name,
        "ROLLBACK_IN_PROGRESS",
        "The following resource(s) failed to create: [Db, Bucket].",
        3,
    );
    s.push("Bucket", "DELETE_COMPLETE", "", 4);
    s.push("Db", "DELETE_COMPLETE", "", 4);
    s.push(name, "ROLLBACK_COMPLETE", "", 5);
    s.template_resources = 2;
    s.visible = 1;
    s.steps = vec![
        Step::default(),
        Step {
            reveal: vec![(name.to_string(), 3)],
            ..Step::default()
        },
        Step {
            reveal: vec![(name.to_string(), 2)],
            status: Some("ROLLBACK_IN_PROGRESS".into()),
            ..Step::default()
        },
        Step {
            reveal: vec![(name.to_string(), 3)],
            status: Some("ROLLBACK_COMPLETE".into()),
            ..Step::default()
        },
    ]
    .into();
    s
}

/// A stack that succeeds after `busy_steps` polls that show nothing new.
pub fn slow_stack(name: &str, busy_steps: usize) -> FakeStack {
    let mut s = FakeStack::new(name);
    s.push(name, "CREATE_IN_PROGRESS", "User Initiated", 0);
    s.push("Bucket", "CREATE_IN_PROGRESS", "", 1);
    s.push("Bucket", "CREATE_COMPLETE", "", 2);
    s.push("Queue", "CREATE_IN_PROGRESS", "", 2);
    s.push("Queue", "CREATE_COMPLETE", "", 3);
    s.push(name, "CREATE_COMPLETE", "", 4);
    s.template_resources = 2;
    s.visible = 2;
    s.outputs = vec![("Url".into(), "https://example.test".into(), "Entry".into())];
    let mut steps = vec![Step::default(); busy_steps];
    steps.push(Step {
        reveal: vec![(name.to_string(), 4)],
        status: Some("CREATE_COMPLETE".into()),
        ..Step::default()
    });
    s.steps = steps.into();
    s
}
