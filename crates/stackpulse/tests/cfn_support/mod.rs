//! CloudFormation endpoints for the server's tracking tests, from the shared test
//! kit: a moto server (the real wire format) and a scripted fake endpoint (stacks
//! played step by step, failures, throttling).
#![allow(dead_code)]

#[allow(unused_imports)]
pub use stackpulse_testkit::{fake_cfn, moto};

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
