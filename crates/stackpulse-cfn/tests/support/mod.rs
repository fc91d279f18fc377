//! Shared test support: an SDK client for a local endpoint, a moto server, and a
//! collector of tracker messages.
#![allow(dead_code)]

pub mod fake_cfn;
pub mod moto;

use std::time::Duration;

use aws_sdk_cloudformation::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudformation::Client;
use stackpulse_cfn::{
    BackoffConfig, DeploymentComplete, ErrorCode, Outcome, ResourceUpdate, Tracker, TrackerConfig,
    TrackerMessage, TrackerProblem,
};

/// A client for `endpoint` with static test credentials in us-east-1.
pub fn client(endpoint: &str) -> Client {
    let conf = aws_sdk_cloudformation::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "stackpulse-tests",
        ))
        .build();
    Client::from_conf(conf)
}

/// Tracker settings for tests: 20 ms polls, short backoff.
pub fn fast_config(stack: &str) -> TrackerConfig {
    let mut c = TrackerConfig::new(stack);
    c.poll_interval = Duration::from_millis(20);
    c.wait_for_stack = Duration::from_secs(20);
    c.call_timeout = Duration::from_secs(5);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        max_slowdown: 4,
    };
    c.config_backoff = BackoffConfig {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        max_slowdown: 1,
    };
    c
}

/// Everything one run sent, sorted by kind, plus its outcome.
#[derive(Debug, Default)]
pub struct Collected {
    pub all: Vec<TrackerMessage>,
    pub updates: Vec<ResourceUpdate>,
    /// `Problem`s, in order.
    pub errors: Vec<TrackerProblem>,
    /// Codes of the `Recovered` messages, in order.
    pub recovered: Vec<ErrorCode>,
    pub complete: Option<DeploymentComplete>,
    pub snapshots: usize,
    pub outcome: Option<Outcome>,
}

/// Runs a tracker to its end (at most `limit`), collecting what it sends.
pub async fn run_tracker(client: Client, config: TrackerConfig, limit: Duration) -> Collected {
    let tracker = Tracker::new(client, config);
    run_built(tracker, limit).await
}

pub async fn run_built(tracker: Tracker, limit: Duration) -> Collected {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = tokio::spawn(tracker.run(tx));
    let mut c = Collected::default();
    let collect = async {
        while let Some(m) = rx.recv().await {
            match &m {
                TrackerMessage::ResourceUpdate(u) => c.updates.push(u.clone()),
                TrackerMessage::Problem(e) => c.errors.push(e.clone()),
                TrackerMessage::Recovered(r) => c.recovered.push(r.code),
                TrackerMessage::Error(e) => panic!("the tracker sends problems with codes: {e:?}"),
                TrackerMessage::DeploymentComplete(d) => c.complete = Some(d.clone()),
                TrackerMessage::Snapshot(_) => c.snapshots += 1,
            }
            c.all.push(m);
        }
    };
    tokio::time::timeout(limit, collect)
        .await
        .expect("tracker did not finish in time");
    c.outcome = Some(run.await.expect("tracker task panicked"));
    c
}
