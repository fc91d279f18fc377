//! EventBridge in serverless mode: CloudFormation status changes (push ingest) and
//! the scheduled safety-net poll.
//!
//! A `CloudFormation Resource/Stack Status Change` names a stack (its ARN in
//! `detail.stack-id`). The handler maps it to the stack's topic (the tracking
//! rules: `stack:<name>` in the default region, else `stack:<region>:<name>`;
//! `--stack-allow` applies), records the stack as in progress (an item `pk =
//! tracked`, `sk = <topic>` of the topics table, with a TTL), and unless another
//! invocation holds the topic's poller lease, runs the server's own poller for it
//! in this invocation ([`crate::tracking::Tracking`] as the hub's topic interest:
//! lease `poll:<topic>` in DynamoDB, dedup seeded from the topic's history, the
//! `stackpulse-cfn` tracker, events published with the lease as fence and fanned
//! out to subscribers) until the operation's completion is published or
//! [`MAX_RUN`] passes. The scheduled event (`source: aws.events`, `Scheduled
//! Event`) does the same for every stack still recorded as in progress.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::Serverless;
use crate::hub::dynamo::{get_s, n, now_secs, s, unavailable};
use crate::hub::BackplaneError;

/// How long one invocation polls a stack at most (the function's timeout must
/// be longer: the SAM template sets 15 minutes).
pub const MAX_RUN: Duration = Duration::from_secs(12 * 60);
/// How long a stack stays recorded as in progress without news.
const TRACKED_TTL: Duration = Duration::from_secs(3 * 3600);
/// Stacks one scheduled invocation polls at once.
const SCHEDULED_CONCURRENCY: usize = 8;

/// The stack an EventBridge CloudFormation event is about: (name, region).
fn stack_of(event: &Value) -> Option<(String, String)> {
    let arn = event.pointer("/detail/stack-id")?.as_str()?;
    // arn:aws:cloudformation:<region>:<account>:stack/<name>/<id>
    let mut parts = arn.splitn(6, ':');
    let region = parts.nth(3)?.to_owned();
    let resource = parts.nth(1)?;
    let name = resource
        .strip_prefix("stack/")?
        .split('/')
        .next()?
        .to_owned();
    let region = if region.is_empty() {
        event.get("region")?.as_str()?.to_owned()
    } else {
        region
    };
    (!name.is_empty()).then_some((name, region))
}

impl Serverless {
    /// One EventBridge event.
    pub async fn eventbridge(&self, payload: Value) -> Value {
        let source = payload
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let detail_type = payload
            .get("detail-type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (source, detail_type) {
            ("aws.events", "Scheduled Event") => self.scheduled().await,
            (
                "aws.cloudformation",
                "CloudFormation Resource Status Change" | "CloudFormation Stack Status Change",
            ) => self.pushed(&payload).await,
            _ => json!({"ignored": format!("detail-type {detail_type:?} from {source:?}")}),
        }
    }

    async fn pushed(&self, payload: &Value) -> Value {
        let Some((stack, region)) = stack_of(payload) else {
            return json!({"error": "Malformed CloudFormation event: no detail.stack-id ARN"});
        };
        if !crate::tracking::valid_stack_name(&stack) || !crate::tracking::valid_region(&region) {
            return json!({"error": "Malformed CloudFormation event: bad stack name or region"});
        }
        let topic = self.state.tracking.topic_for(&stack, Some(&region)).await;
        if let Err(e) = self.state.hub.rules().policy.check_name(&topic).await {
            return json!({"ignored": e.to_string()});
        }
        // A stack's final status whose completion the topic already has: nothing
        // to poll (the push of an operation an earlier invocation tracked to the end).
        let status = payload
            .pointer("/detail/status-details/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let stack_event = payload.get("detail-type").and_then(Value::as_str)
            == Some("CloudFormation Stack Status Change");
        if stack_event
            && stackpulse_cfn::status::stack_phase(status).is_terminal()
            && self.completed(&topic).await
        {
            if let Err(e) = self.clear_tracked(&topic).await {
                tracing::warn!(error = %e, "could not clear a finished stack");
            }
            return json!({"stack": stack, "region": region, "topic": topic, "poll": "already complete"});
        }
        if let Err(e) = self.set_tracked(&topic).await {
            tracing::warn!(error = %e, "could not record a stack in progress");
        }
        let outcome = self.poll(&topic).await;
        json!({"stack": stack, "region": region, "topic": topic, "poll": outcome})
    }

    /// Polls every stack recorded as in progress.
    async fn scheduled(&self) -> Value {
        let topics = match self.tracked().await {
            Ok(t) => t,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let results: Vec<Value> = stream::iter(topics)
            .map(|topic| async move {
                let outcome = self.poll(&topic).await;
                json!({"topic": topic, "poll": outcome})
            })
            .buffer_unordered(SCHEDULED_CONCURRENCY)
            .collect()
            .await;
        json!({ "polled": results })
    }

    /// Runs the topic's poller here until its operation completes (then the stack
    /// is no longer in progress) or [`MAX_RUN`]; `"elsewhere"` when another
    /// invocation holds the poller lease.
    async fn poll(&self, topic: &str) -> &'static str {
        let backplane = self.state.hub.backplane();
        let lease_name = format!("poll:{topic}");
        match backplane
            .acquire_lease(&lease_name, Duration::from_secs(1))
            .await
        {
            Ok(Some(lease)) => backplane.release_lease(&lease).await,
            Ok(None) => return "elsewhere",
            Err(e) => {
                tracing::warn!(error = %e, "poller lease check failed");
                return "unavailable";
            }
        }
        let start = match backplane.info(topic).await {
            Ok(info) => info.map_or(0, |i| i.latest_seq),
            Err(_) => 0,
        };
        let topic_arc: Arc<str> = Arc::from(topic);
        let interest = &self.state.hub.rules().interest;
        if let Err(e) = interest.wanted(&topic_arc) {
            tracing::warn!(error = %e, "could not start a poller");
            return "refused";
        }
        let deadline = tokio::time::Instant::now() + MAX_RUN;
        let mut outcome = "timeout";
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(Some(info)) = backplane.info(topic).await else {
                continue;
            };
            let last = info
                .snapshot
                .as_ref()
                .and_then(|s| s.get("last_event"))
                .and_then(|l| l.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if info.latest_seq > start && matches!(last, "stack.deployed" | "stack.failed") {
                outcome = "completed";
                if let Err(e) = self.clear_tracked(topic).await {
                    tracing::warn!(error = %e, "could not clear a finished stack");
                }
                break;
            }
        }
        interest.unwanted(&topic_arc);
        outcome
    }

    /// Whether the topic's last event is an operation's completion.
    async fn completed(&self, topic: &str) -> bool {
        matches!(self.state.hub.backplane().info(topic).await, Ok(Some(info))
            if info.snapshot.as_ref().and_then(|s| s.get("last_event")).and_then(|l| l.get("type"))
                .and_then(Value::as_str).is_some_and(|t| matches!(t, "stack.deployed" | "stack.failed")))
    }

    async fn set_tracked(&self, topic: &str) -> Result<(), BackplaneError> {
        let backplane = self.store.client();
        backplane
            .put_item()
            .table_name(self.store.topics_table())
            .item("pk", s("tracked"))
            .item("sk", s(topic))
            .item("ttl", n(now_secs() + TRACKED_TTL.as_secs()))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }

    async fn clear_tracked(&self, topic: &str) -> Result<(), BackplaneError> {
        self.store
            .client()
            .delete_item()
            .table_name(self.store.topics_table())
            .key("pk", s("tracked"))
            .key("sk", s(topic))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        Ok(())
    }

    async fn tracked(&self) -> Result<Vec<String>, BackplaneError> {
        let now = now_secs();
        let out = self
            .store
            .client()
            .query()
            .table_name(self.store.topics_table())
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s("tracked"))
            .send()
            .await
            .map_err(|e| unavailable("Query", e))?;
        Ok(out
            .items()
            .iter()
            .filter(|i| !crate::hub::dynamo::expired(i, now))
            .filter_map(|i| get_s(i, "sk").map(str::to_owned))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_from_event() {
        let event = json!({"region": "eu-west-1", "detail": {"stack-id":
            "arn:aws:cloudformation:eu-west-1:123456789012:stack/my-app/0f3e1a10-5a7b-11ee-8c99-0242ac120002"}});
        assert_eq!(
            stack_of(&event),
            Some(("my-app".to_owned(), "eu-west-1".to_owned()))
        );
        assert_eq!(stack_of(&json!({"detail": {"stack-id": "nope"}})), None);
        assert_eq!(stack_of(&json!({"detail": {}})), None);
    }
}
