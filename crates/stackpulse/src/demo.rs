//! `stackpulse serve --demo`: realistic CloudFormation deployments with no AWS
//! account.
//!
//! This module owns the demo's CloudFormation *world*: the scripted endpoint of
//! [`stackpulse_cfn::scripted`] on a loopback port, and a driver that plays a
//! multi-stack rollout on it by the clock, in a loop. Everything downstream is the
//! real server: the trackers poll the endpoint through the AWS SDK (the server's
//! `--aws-endpoint-url` points at it, with static demo credentials), publish into
//! the hub, and every socket, GraphQL, the dashboard, `watch` and `tail` read the
//! hub as usual.
//!
//! Data flow of one loop ([`Demo::run`]):
//! 1. `POST /v1/deployments` (the real route, with a publisher key made up for the
//!    run) starts the deployment `demo` over [`STACKS`];
//! 2. `demo-network` is updated, then `demo-database` (with its nested stack
//!    `demo-database-Monitoring-…`), then `demo-app`, whose update fails on every
//!    other loop (the first included) with a real-looking root cause and rolls back;
//! 3. a pause, then the next loop. A loop takes at most 60 s at pace 1.
//!
//! Before the first loop the stacks exist already (created when the demo started);
//! the driver subscribes to their topics over `/ws` and waits for those creations
//! to be published, so that the first deployment counts the first loop's
//! operations and not the creations.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use stackpulse_cfn::scripted::{arn, FakeCfn, FakeStack, World, STACK};

use crate::client::{Client, Frame};

/// The demo's stacks, in deployment order.
pub const STACKS: [&str; 3] = ["demo-network", "demo-database", "demo-app"];
/// The deployment the demo starts on each loop.
pub const DEPLOYMENT: &str = "demo";
/// The nested stack of `demo-database`.
const NESTED: &str = "demo-database-Monitoring-1TQ5RJ8KX2Z9";
/// The nested stack's logical id in its parent.
const NESTED_LOGICAL: &str = "Monitoring";
/// Region of the demo's stacks.
pub const REGION: &str = "us-east-1";

/// The root cause of the failing update of `demo-app`.
pub const APP_FAILURE: &str = "Resource handler returned message: \"Service demo-app did not \
    stabilize: 3 tasks failed ELB health checks on /healthz (HTTP 503) in target group \
    demo-app-tg\" (HandlerErrorCode: NotStabilized)";

/// One stack event of a script: wait `after` (seconds at pace 1), then append it.
struct Beat {
    after: f64,
    stack: &'static str,
    logical: &'static str,
    resource_type: &'static str,
    status: &'static str,
    reason: &'static str,
}

const fn beat(
    after: f64,
    stack: &'static str,
    logical: &'static str,
    resource_type: &'static str,
    status: &'static str,
    reason: &'static str,
) -> Beat {
    Beat {
        after,
        stack,
        logical,
        resource_type,
        status,
        reason,
    }
}

/// The resources of each stack (logical id, type), as its template has them.
fn resources(stack: &str) -> &'static [(&'static str, &'static str)] {
    match stack {
        "demo-network" => &[
            ("Vpc", "AWS::EC2::VPC"),
            ("PublicSubnetA", "AWS::EC2::Subnet"),
            ("PrivateSubnetA", "AWS::EC2::Subnet"),
            ("NatGateway", "AWS::EC2::NatGateway"),
        ],
        "demo-database" => &[
            ("DbSubnetGroup", "AWS::RDS::DBSubnetGroup"),
            ("Cluster", "AWS::RDS::DBCluster"),
            (NESTED_LOGICAL, STACK),
        ],
        NESTED => &[
            ("AlarmTopic", "AWS::SNS::Topic"),
            ("CpuAlarm", "AWS::CloudWatch::Alarm"),
        ],
        _ => &[
            ("TargetGroup", "AWS::ElasticLoadBalancingV2::TargetGroup"),
            ("TaskDefinition", "AWS::ECS::TaskDefinition"),
            ("Service", "AWS::ECS::Service"),
        ],
    }
}

const NET: &str = "demo-network";
const DB: &str = "demo-database";
const APP: &str = "demo-app";
const UIP: &str = "UPDATE_IN_PROGRESS";
const UC: &str = "UPDATE_COMPLETE";
const CLEANUP: &str = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS";

/// The beats of loop `n`: every stack updated in turn; `demo-app` fails when `n`
/// is even.
fn rollout(n: u64) -> Vec<Beat> {
    let mut b = vec![
        beat(0.0, NET, NET, STACK, UIP, "User Initiated"),
        beat(1.5, NET, "PublicSubnetA", "AWS::EC2::Subnet", UIP, ""),
        beat(2.0, NET, "PublicSubnetA", "AWS::EC2::Subnet", UC, ""),
        beat(0.5, NET, "NatGateway", "AWS::EC2::NatGateway", UIP, ""),
        beat(2.5, NET, "NatGateway", "AWS::EC2::NatGateway", UC, ""),
        beat(1.0, NET, NET, STACK, CLEANUP, ""),
        beat(1.0, NET, NET, STACK, UC, ""),
        beat(1.5, DB, DB, STACK, UIP, "User Initiated"),
        beat(1.5, DB, "Cluster", "AWS::RDS::DBCluster", UIP, ""),
        beat(1.0, DB, NESTED_LOGICAL, STACK, UIP, ""),
        beat(0.5, NESTED, NESTED, STACK, UIP, ""),
        beat(1.0, NESTED, "CpuAlarm", "AWS::CloudWatch::Alarm", UIP, ""),
        beat(1.5, NESTED, "CpuAlarm", "AWS::CloudWatch::Alarm", UC, ""),
        beat(0.5, NESTED, NESTED, STACK, CLEANUP, ""),
        beat(0.5, NESTED, NESTED, STACK, UC, ""),
        beat(0.5, DB, NESTED_LOGICAL, STACK, UC, ""),
        beat(2.0, DB, "Cluster", "AWS::RDS::DBCluster", UC, ""),
        beat(1.0, DB, DB, STACK, CLEANUP, ""),
        beat(0.5, DB, DB, STACK, UC, ""),
        beat(1.5, APP, APP, STACK, UIP, "User Initiated"),
        beat(
            1.5,
            APP,
            "TaskDefinition",
            "AWS::ECS::TaskDefinition",
            UIP,
            "",
        ),
        beat(
            1.5,
            APP,
            "TaskDefinition",
            "AWS::ECS::TaskDefinition",
            UC,
            "",
        ),
        beat(0.5, APP, "Service", "AWS::ECS::Service", UIP, ""),
    ];
    if n % 2 == 0 {
        b.extend([
            beat(
                4.0,
                APP,
                "Service",
                "AWS::ECS::Service",
                "UPDATE_FAILED",
                APP_FAILURE,
            ),
            beat(
                0.5,
                APP,
                APP,
                STACK,
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "The following resource(s) failed to update: [Service].",
            ),
            beat(1.0, APP, "Service", "AWS::ECS::Service", UIP, ""),
            beat(3.0, APP, "Service", "AWS::ECS::Service", UC, ""),
            beat(
                0.5,
                APP,
                APP,
                STACK,
                "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
                "",
            ),
            beat(1.0, APP, APP, STACK, "UPDATE_ROLLBACK_COMPLETE", ""),
        ]);
    } else {
        b.extend([
            beat(4.0, APP, "Service", "AWS::ECS::Service", UC, ""),
            beat(0.5, APP, APP, STACK, CLEANUP, ""),
            beat(1.0, APP, APP, STACK, UC, ""),
        ]);
    }
    b
}

/// Pause between two loops (seconds at pace 1).
const PAUSE: f64 = 6.0;

/// A stack of the demo world, created (all events visible, `CREATE_COMPLETE`).
fn created(name: &str) -> FakeStack {
    let mut s = FakeStack::new(name);
    s.created = chrono::Utc::now();
    s.template_resources = resources(name).len();
    s.resources = resources(name)
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string(), "CREATE_COMPLETE".to_string()))
        .collect();
    let op = format!("{name}-create");
    s.operations = vec![(op.clone(), "CREATE_STACK".to_string())];
    s.push_now(name, STACK, "CREATE_IN_PROGRESS", "User Initiated")
        .operation_id = Some(op.clone());
    for status in ["CREATE_IN_PROGRESS", "CREATE_COMPLETE"] {
        for (logical, resource_type) in resources(name) {
            let e = s.push_now(logical, resource_type, status, "");
            e.operation_id = Some(op.clone());
            if *logical == NESTED_LOGICAL {
                e.physical_id = arn(NESTED);
            }
        }
    }
    s.push_now(name, STACK, "CREATE_COMPLETE", "").operation_id = Some(op);
    s.status = "CREATE_COMPLETE".into();
    s
}

/// The demo's CloudFormation endpoint and its driver.
pub struct Demo {
    fake: FakeCfn,
    /// Seconds of the scripts are multiplied by this (0.05: twenty times faster).
    pace: f64,
}

impl Demo {
    /// Starts the endpoint with the stacks created.
    pub async fn start(pace: f64) -> std::io::Result<Demo> {
        let mut stacks: Vec<FakeStack> = STACKS.iter().map(|s| created(s)).collect();
        stacks.push(created(NESTED));
        let fake = FakeCfn::bind(stacks).await?;
        let pace = if pace.is_finite() && pace > 0.0 {
            pace
        } else {
            1.0
        };
        Ok(Demo { fake, pace })
    }

    /// The endpoint the server's AWS clients use.
    pub fn endpoint(&self) -> &str {
        &self.fake.endpoint
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.fake.world)
    }

    /// Plays the rollout forever against the server at `base` (`http://addr`),
    /// starting each loop's deployment with the publisher `key`.
    pub async fn run(self, base: String, key: String) {
        let http = reqwest::Client::new();
        let watcher = match self.await_creations(&base).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "demo: cannot follow the demo stacks over /ws ({e}); playing anyway"
                );
                None
            }
        };
        // Keep the driver's subscriptions: they keep the pollers of the stacks
        // running between loops (answering pings as it reads).
        if let Some(mut c) = watcher {
            tokio::spawn(async move { while let Some(Ok(_)) = c.next().await {} });
        }
        let mut n: u64 = 0;
        loop {
            self.start_deployment(&http, &base, &key).await;
            let op: Arc<str> = format!("op-{n}").into();
            for b in rollout(n) {
                tokio::time::sleep(self.secs(b.after)).await;
                self.play(&b, &op);
            }
            tracing::info!(round = n, "demo: rollout played");
            tokio::time::sleep(self.secs(PAUSE)).await;
            n += 1;
        }
    }

    fn secs(&self, s: f64) -> Duration {
        Duration::try_from_secs_f64(s * self.pace).unwrap_or_default()
    }

    /// Subscribes to the stacks' topics and waits (bounded) until each has
    /// published its creation.
    async fn await_creations(&self, base: &str) -> Result<Client, String> {
        let url = crate::client::ws_url(base).map_err(|e| e.to_string())?;
        let mut c = Client::connect(&url, None)
            .await
            .map_err(|e| e.to_string())?;
        for s in STACKS {
            c.subscribe(&format!("stack:{s}"), Some(0), None)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut done = std::collections::HashSet::new();
        let wait = async {
            while done.len() < STACKS.len() {
                match c.next().await {
                    Some(Ok(Frame::Event(e))) if e.event_type == "stack.deployed" => {
                        done.insert(e.deployment_id.clone());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the socket closed".to_string()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(r) => r?,
            Err(_) => return Err("the stacks' creations were not published".into()),
        }
        Ok(c)
    }

    async fn start_deployment(&self, http: &reqwest::Client, base: &str, key: &str) {
        let stacks: Vec<_> = STACKS.iter().map(|s| json!({"name": s})).collect();
        let r = http
            .post(format!("{base}/v1/deployments"))
            .bearer_auth(key)
            .json(&json!({"deployment_id": DEPLOYMENT, "stacks": stacks}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "demo: the deployment was not started"),
            Err(e) => tracing::warn!(error = %e, "demo: the deployment was not started"),
        }
    }

    /// Appends one beat's event to its stack (and moves the stack's status).
    fn play(&self, b: &Beat, op: &str) {
        let mut w = self.world();
        let Some(s) = w.stacks.iter_mut().find(|s| s.name == b.stack) else {
            return;
        };
        let is_stack = b.logical == b.stack;
        if is_stack && b.reason == "User Initiated"
            || b.stack == NESTED && is_stack && b.status == UIP
        {
            // A new operation: CloudFormation's LastOperations and update time.
            let id = format!("{}-{op}", b.stack);
            s.operations = vec![(id, "UPDATE_STACK".into())];
            s.last_updated = Some(chrono::Utc::now());
        }
        let op_id = s.operations.first().map(|(id, _)| id.clone());
        let e = s.push_now(b.logical, b.resource_type, b.status, b.reason);
        e.operation_id = op_id;
        if b.logical == NESTED_LOGICAL {
            e.physical_id = arn(NESTED);
        }
        if is_stack {
            s.status = b.status.to_string();
            s.status_reason = b.reason.to_string();
        }
    }
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_fits_in_a_minute_and_every_other_one_fails() {
        for n in [0, 1] {
            let total: f64 = rollout(n).iter().map(|b| b.after).sum::<f64>() + PAUSE;
            assert!(total <= 60.0, "{total}");
        }
        assert!(rollout(0).iter().any(|b| b.status == "UPDATE_FAILED"));
        assert!(!rollout(1).iter().any(|b| b.status == "UPDATE_FAILED"));
        // Each stack's operation starts after the previous one ended.
        let order: Vec<&str> = rollout(0)
            .iter()
            .filter(|b| b.reason == "User Initiated")
            .map(|b| b.stack)
            .collect();
        assert_eq!(order, STACKS);
    }
}
