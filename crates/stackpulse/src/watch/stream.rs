//! Where `watch` gets the operation's messages from, and when it starts.
//!
//! - [`via_server`]: a running server's `/ws` topic `stack:<name>`; its hub events
//!   are turned back into tracker messages by [`crate::tracking::events::from_hub`].
//!   It reconnects (5 tries, backing off) when the connection drops.
//! - [`direct`]: a [`Tracker`] run in this process, polling CloudFormation.
//!
//! Both feed every message to a [`Watcher`] and call [`Watcher::tick`] between
//! messages (every second, or every heartbeat interval when that is shorter), until
//! the watcher says the watch ended.
//!
//! `--next` (watch the stack's next operation, not the current or last one):
//! through a server, a [`NextGate`] drops the messages of the operation that is
//! current when `watch` subscribes (the late joiner's snapshot and the rest of
//! that operation) and opens at the first event after its completion, or at the
//! root stack's own event starting an operation after the subscription; directly,
//! [`wait_for_next`] polls `DescribeStacks` until a new operation begins (or the
//! stack appears), then the tracker starts and finds that operation.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use stackpulse_cfn::aws::Api;
use stackpulse_cfn::status::{stack_phase, starts_operation};
use stackpulse_cfn::{AwsError, Outcome, Tracker, TrackerConfig, TrackerMessage};
use stackpulse_protocol::ServerMessage;
use tokio::time::Instant;

use super::{WatchEnd, Watcher};
use crate::client::{Client, Frame};
use crate::tracking::events::from_hub;

/// Lets through the messages of the stack's next operation only (`--next`
/// through a server). Problems always pass: they are about the watch itself.
#[derive(Debug)]
pub struct NextGate {
    stack: String,
    /// When `watch` subscribed: an operation the root stack starts after it is
    /// the next one, even if the server tells it first.
    since: DateTime<Utc>,
    /// The operation current at subscription has completed.
    current_done: bool,
    /// The newest event time of the operation being skipped.
    newest: Option<DateTime<Utc>>,
    open: bool,
}

impl NextGate {
    pub fn new(stack: &str, since: DateTime<Utc>) -> NextGate {
        NextGate {
            stack: stack.to_owned(),
            since,
            current_done: false,
            newest: None,
            open: false,
        }
    }

    pub fn admit(&mut self, msg: &TrackerMessage) -> bool {
        if self.open {
            return true;
        }
        match msg {
            TrackerMessage::ResourceUpdate(u) => {
                // Rows of a late joiner's snapshot carry no event id and the hub's
                // time: only real events date the skipped operation.
                let real = !u.event_id.is_empty();
                let starts_next = real
                    && u.nested_stack.is_none()
                    && u.resource.logical_id == self.stack
                    && starts_operation(&u.resource.status)
                    && u.timestamp > self.since;
                if starts_next {
                    self.open = true;
                    return true;
                }
                if !self.current_done {
                    if real {
                        self.newest = Some(self.newest.map_or(u.timestamp, |t| t.max(u.timestamp)));
                    }
                    return false;
                }
                if real && self.newest.is_some_and(|t| u.timestamp <= t) {
                    return false; // a late copy of the skipped operation
                }
                self.open = true;
                true
            }
            TrackerMessage::DeploymentComplete(_) => {
                self.current_done = true;
                false
            }
            TrackerMessage::Snapshot(_) => false,
            TrackerMessage::Problem(_)
            | TrackerMessage::Recovered(_)
            | TrackerMessage::Error(_) => true,
        }
    }
}

/// Watches through a running server's `/ws` topic `topic`.
pub async fn via_server<W: Write>(
    url: &str,
    token: Option<&str>,
    topic: &str,
    stack: &str,
    watcher: &mut Watcher<W>,
    next: bool,
) -> WatchEnd {
    let mut client = match Client::connect(url, token).await {
        Ok(c) => c,
        Err(e) => return WatchEnd::Error(e.to_string()),
    };
    if let Err(e) = client.subscribe(topic, None, None).await {
        return WatchEnd::Error(e.to_string());
    }
    let mut gate = next.then(|| NextGate::new(stack, Utc::now()));
    if next {
        watcher.waiting(format!("the next operation of {stack}"));
    }
    let mut tick = tokio::time::interval(watcher.tick_interval());
    let mut failures = 0u32;
    loop {
        let frame = tokio::select! {
            f = client.next() => f,
            _ = tick.tick() => { watcher.tick(); continue; }
        };
        match frame {
            Some(Ok(Frame::Event(e))) => {
                failures = 0;
                let final_error = e.event_type == crate::tracking::events::TRACKER_ERROR
                    && e.data.get("final").and_then(serde_json::Value::as_bool) == Some(true);
                let data = e.data.as_object().cloned().unwrap_or_default();
                for msg in from_hub(&e.event_type, &e.timestamp, &data, stack) {
                    if gate.as_mut().is_some_and(|g| !g.admit(&msg)) {
                        continue;
                    }
                    if let Some(end) = watcher.apply(&msg) {
                        client.close().await;
                        return end;
                    }
                }
                if final_error {
                    let message = e.data.get("message").and_then(serde_json::Value::as_str);
                    client.close().await;
                    return watcher.end(WatchEnd::Error(format!(
                        "the server stopped tracking {stack}: {}",
                        message.unwrap_or("unknown error")
                    )));
                }
            }
            Some(Ok(Frame::Control(ServerMessage::Error { code, message, .. }))) => {
                // `--region` named the server's default region: its topic is `stack:X`.
                let canonical = format!("{}{stack}", crate::tracking::TOPIC_PREFIX);
                let retry = code == 400
                    && topic != canonical
                    && message.starts_with(&format!("Use {canonical}:"));
                if retry && client.subscribe(&canonical, None, None).await.is_ok() {
                    continue;
                }
                return watcher.end(WatchEnd::Error(format!("server error {code}: {message}")));
            }
            Some(Ok(Frame::Control(_))) => {}
            Some(Ok(Frame::Closed(_))) | Some(Err(_)) | None => {
                failures += 1;
                if failures > 5 {
                    return watcher.end(WatchEnd::Error(format!("lost the connection to {url}")));
                }
                tokio::time::sleep(Duration::from_millis(250) * 2u32.pow(failures)).await;
                if let Err(e) = client.reconnect().await {
                    eprintln!("stackpulse: {e}; retrying");
                }
            }
        }
    }
}

/// Watches by running the tracker in this process (after [`wait_for_next`] with
/// `next`).
pub async fn direct<W: Write>(
    client: aws_sdk_cloudformation::Client,
    config: TrackerConfig,
    watcher: &mut Watcher<W>,
    next: bool,
) -> WatchEnd {
    if next {
        if let Err(end) = wait_for_next(&client, &config, watcher).await {
            return watcher.end(end);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let run = tokio::spawn(Tracker::new(client, config).run(tx));
    let mut tick = tokio::time::interval(watcher.tick_interval());
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => { watcher.tick(); continue; }
        };
        let Some(msg) = msg else { break };
        if let Some(end) = watcher.apply(&msg) {
            return end;
        }
    }
    let end = match run.await {
        Ok(Outcome::Completed(d)) => {
            if d.success {
                WatchEnd::Succeeded
            } else {
                WatchEnd::Failed
            }
        }
        Ok(Outcome::StackNotFound { stack }) => {
            WatchEnd::Error(format!("stack {stack} does not exist"))
        }
        Ok(Outcome::Failed(m)) => WatchEnd::Error(m),
        Ok(Outcome::Stopped) | Err(_) => WatchEnd::Error("the tracker stopped".into()),
    };
    watcher.end(end)
}

/// What [`wait_for_next`] saw first.
#[derive(Debug)]
enum Baseline {
    /// The stack does not exist (yet): its creation is the next operation.
    Missing,
    Seen {
        arn: String,
        /// An operation was running: it must end first.
        busy: bool,
        last_updated: Option<DateTime<Utc>>,
    },
}

/// Polls `DescribeStacks` every poll interval until the stack's next operation
/// begins: the stack appears, is replaced, goes from a terminal status to an
/// operation in progress, or its `LastUpdatedTime` moves (an operation that began,
/// and maybe ended, between two polls). Ticks the watcher while it waits. A
/// configuration error ends the wait (exit 2); other errors are retried.
pub async fn wait_for_next<W: Write>(
    client: &aws_sdk_cloudformation::Client,
    config: &TrackerConfig,
    watcher: &mut Watcher<W>,
) -> Result<(), WatchEnd> {
    let api = Api::new(client.clone(), config.calls.clone(), config.call_timeout);
    watcher.waiting(format!("the next operation of {}", config.stack));
    let mut baseline: Option<Baseline> = None;
    let mut tick = tokio::time::interval(watcher.tick_interval());
    loop {
        match api.describe_stack(&config.stack).await {
            Ok(info) => {
                let terminal = stack_phase(&info.status).is_terminal();
                match &mut baseline {
                    None => {
                        baseline = Some(Baseline::Seen {
                            arn: info.arn,
                            busy: !terminal,
                            last_updated: info.last_updated_time,
                        })
                    }
                    Some(Baseline::Missing) => return Ok(()),
                    Some(Baseline::Seen { arn, .. }) if *arn != info.arn => return Ok(()),
                    Some(Baseline::Seen {
                        busy, last_updated, ..
                    }) => {
                        if *busy {
                            if terminal {
                                *busy = false;
                                *last_updated = info.last_updated_time;
                            }
                        } else if !terminal || info.last_updated_time != *last_updated {
                            return Ok(());
                        }
                    }
                }
            }
            Err(AwsError::NotFound(_)) => baseline = Some(Baseline::Missing),
            Err(e) if e.code().is_configuration() => {
                return Err(WatchEnd::Error(format!(
                    "cannot track {}: {}",
                    config.stack,
                    e.public_message()
                )));
            }
            Err(e) => tracing::debug!(error = %e, "DescribeStacks failed while waiting; retrying"),
        }
        let deadline = Instant::now() + config.poll_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick() => watcher.tick(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackpulse_cfn::{
        DeploymentComplete, ResourceSummary, ResourceUpdate, StackSummary, TrackerError,
    };

    fn at(sec: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(sec)
    }

    fn ev(sec: i64, event_id: &str) -> TrackerMessage {
        stack_ev("A", sec, event_id)
    }

    fn stack_ev(logical: &str, sec: i64, event_id: &str) -> TrackerMessage {
        TrackerMessage::ResourceUpdate(ResourceUpdate {
            timestamp: at(sec),
            resource: ResourceSummary {
                logical_id: logical.into(),
                resource_type: "AWS::S3::Bucket".into(),
                status: "UPDATE_IN_PROGRESS".into(),
                physical_id: String::new(),
                status_reason: String::new(),
                progress: 0,
                ..ResourceSummary::default()
            },
            stack: StackSummary::default(),
            nested_stack: None,
            event_id: event_id.into(),
        })
    }

    fn done() -> TrackerMessage {
        TrackerMessage::DeploymentComplete(DeploymentComplete {
            success: true,
            stack: StackSummary::default(),
            outputs: vec![],
            duration_seconds: 1,
            root_cause: None,
        })
    }

    #[test]
    fn the_gate_skips_the_current_operation_and_opens_on_the_next() {
        let mut g = NextGate::new("s", at(1000));
        assert!(!g.admit(&ev(100, "")), "a snapshot row");
        assert!(!g.admit(&ev(10, "e1")), "the current operation");
        assert!(g.admit(&TrackerMessage::Error(TrackerError {
            message: "x".into(),
            retrying: true
        })));
        assert!(!g.admit(&done()), "its completion");
        let state = stackpulse_cfn::TrackerState::default();
        assert!(
            !g.admit(&TrackerMessage::Snapshot(state)),
            "a tracker snapshot does not open the gate"
        );
        assert!(!g.admit(&ev(10, "e1")), "a late copy of it");
        assert!(g.admit(&ev(20, "e2")), "the next operation");
        assert!(g.admit(&done()), "and its completion");
    }

    #[test]
    fn the_gate_opens_on_an_operation_started_after_subscribing() {
        let mut g = NextGate::new("s", at(1000));
        assert!(
            !g.admit(&stack_ev("s", 900, "e0")),
            "started before: the current one"
        );
        assert!(!g.admit(&ev(1001, "e1")), "a resource of it");
        assert!(
            g.admit(&stack_ev("s", 1002, "e2")),
            "the stack starts a new one"
        );
        assert!(g.admit(&ev(1003, "e3")));
    }
}
