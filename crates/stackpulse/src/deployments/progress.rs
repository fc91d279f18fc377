//! A multi-stack deployment's progress, as a pure state machine.
//!
//! In: the events of each stack's topic (`log.created`, `stack.deployed`,
//! `stack.failed`, `tracker.error`), tagged with the stack's index. Out: the events
//! to publish on the deployment's topic, in the seed-002 shapes:
//! - `log.created` of a stack, forwarded (its `environment` set to the stack's);
//!   a retrying `tracker.error` becomes a `warning` line;
//! - `stack.deployed` / `stack.failed` when a stack's operation ends (the stack's
//!   own event, forwarded; a final `tracker.error`, such as a stack that never
//!   appeared, counts as a failure with its message as `error_message`);
//! - `deployment.status {status, current_layer, total_layers}` at the start and
//!   after every stack that ends. `current_layer` is the 1-based layer in progress
//!   (`total_layers` once all are deployed); `status` is `deploying`, then
//!   `deployed` when every stack succeeded, or `failed` at the first failure, which
//!   ends the deployment.
//!
//! Each stack counts once: a second completion of the same stack (a later
//! operation) changes nothing.

use serde_json::{json, Map, Value};

use super::request::StackSpec;
use crate::tracking::events::{LOG_CREATED, STACK_DEPLOYED, STACK_FAILED, TRACKER_ERROR};

pub const DEPLOYMENT_STATUS: &str = "deployment.status";

/// An event to publish on the deployment's topic.
pub type Out = (&'static str, Map<String, Value>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Deployed,
    Failed,
}

/// The deployment's state.
#[derive(Debug)]
pub struct Progress {
    stacks: Vec<(StackSpec, Outcome)>,
    /// The label of a stack without an explicit environment: its region.
    default_region: String,
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Progress {
    pub fn new(stacks: Vec<StackSpec>, default_region: String) -> Progress {
        Progress {
            stacks: stacks.into_iter().map(|s| (s, Outcome::Running)).collect(),
            default_region,
        }
    }

    fn deployed(&self) -> usize {
        self.stacks
            .iter()
            .filter(|(_, o)| *o == Outcome::Deployed)
            .count()
    }

    fn failed(&self) -> bool {
        self.stacks.iter().any(|(_, o)| *o == Outcome::Failed)
    }

    /// Whether the deployment ended (every stack deployed, or one failed).
    pub fn finished(&self) -> bool {
        self.failed() || self.deployed() == self.stacks.len()
    }

    fn environment(&self, index: usize) -> String {
        let spec = &self.stacks[index].0;
        spec.environment
            .clone()
            .or_else(|| spec.region.clone())
            .unwrap_or_else(|| self.default_region.clone())
    }

    /// The current `deployment.status`.
    pub fn status(&self) -> Out {
        let total = self.stacks.len();
        let deployed = self.deployed();
        let (status, layer) = if self.failed() {
            ("failed", (deployed + 1).min(total))
        } else if deployed == total {
            ("deployed", total)
        } else {
            ("deploying", deployed + 1)
        };
        (
            DEPLOYMENT_STATUS,
            object(json!({"status": status, "current_layer": layer, "total_layers": total})),
        )
    }

    /// What to publish for one event of stack `index`'s topic.
    pub fn on_stack_event(
        &mut self,
        index: usize,
        event_type: &str,
        data: &Map<String, Value>,
    ) -> Vec<Out> {
        if index >= self.stacks.len() || self.finished() || self.stacks[index].1 != Outcome::Running
        {
            return Vec::new();
        }
        let name = self.stacks[index].0.name.clone();
        let environment = Value::from(self.environment(index));
        let mut forwarded = data.clone();
        forwarded.insert("stack_name".into(), Value::from(name.as_str()));
        forwarded.insert("environment".into(), environment.clone());
        match event_type {
            LOG_CREATED => vec![(LOG_CREATED, forwarded)],
            STACK_DEPLOYED => {
                self.stacks[index].1 = Outcome::Deployed;
                vec![(STACK_DEPLOYED, forwarded), self.status()]
            }
            STACK_FAILED => {
                self.stacks[index].1 = Outcome::Failed;
                vec![(STACK_FAILED, forwarded), self.status()]
            }
            TRACKER_ERROR => {
                let message = data
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the stack cannot be tracked")
                    .to_owned();
                if data.get("final").and_then(Value::as_bool) == Some(true) {
                    vec![self.fail(index, &message), self.status()]
                } else {
                    let line = object(json!({
                        "level": "warning",
                        "message": format!("[{name}] {message}"),
                        "stack_name": name,
                        "environment": environment,
                    }));
                    vec![(LOG_CREATED, line)]
                }
            }
            _ => Vec::new(),
        }
    }

    /// Marks stack `index` failed; its `stack.failed` with `message`.
    fn fail(&mut self, index: usize, message: &str) -> Out {
        self.stacks[index].1 = Outcome::Failed;
        let failed = object(json!({
            "stack_name": self.stacks[index].0.name,
            "environment": self.environment(index),
            "error_message": message,
        }));
        (STACK_FAILED, failed)
    }

    /// The deployment gave up (its time ran out, it lost its events): every stack
    /// still running fails with `reason`, then the deployment.
    pub fn give_up(&mut self, reason: &str) -> Vec<Out> {
        if self.finished() {
            return Vec::new();
        }
        let mut out: Vec<Out> = (0..self.stacks.len())
            .filter(|i| self.stacks[*i].1 == Outcome::Running)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| self.fail(i, reason))
            .collect();
        out.push(self.status());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, env: Option<&str>) -> StackSpec {
        StackSpec {
            name: name.into(),
            region: None,
            environment: env.map(str::to_owned),
        }
    }

    fn data(v: Value) -> Map<String, Value> {
        object(v)
    }

    fn status(out: &Out) -> (String, u64, u64) {
        assert_eq!(out.0, DEPLOYMENT_STATUS);
        (
            out.1["status"].as_str().unwrap_or_default().to_owned(),
            out.1["current_layer"].as_u64().unwrap_or(99),
            out.1["total_layers"].as_u64().unwrap_or(99),
        )
    }

    #[test]
    fn layers_advance_as_stacks_finish_in_any_order() {
        let mut p = Progress::new(
            vec![spec("net", Some("dev")), spec("db", None)],
            "us-east-1".into(),
        );
        assert_eq!(status(&p.status()), ("deploying".into(), 1, 2));
        let log = p.on_stack_event(
            1,
            LOG_CREATED,
            &data(json!({"level":"info","message":"m","environment":"us-east-1"})),
        );
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].1["stack_name"], "db");
        assert_eq!(log[0].1["environment"], "us-east-1");

        let out = p.on_stack_event(
            1,
            STACK_DEPLOYED,
            &data(json!({"stack_name":"db","duration_seconds":3})),
        );
        assert_eq!(out[0].0, STACK_DEPLOYED);
        assert_eq!(out[0].1["duration_seconds"], 3);
        assert_eq!(status(&out[1]), ("deploying".into(), 2, 2));
        assert!(
            p.on_stack_event(1, STACK_DEPLOYED, &Map::new()).is_empty(),
            "a stack counts once"
        );
        assert!(!p.finished());

        let out = p.on_stack_event(0, STACK_DEPLOYED, &data(json!({"stack_name":"net"})));
        assert_eq!(out[0].1["environment"], "dev");
        assert_eq!(status(&out[1]), ("deployed".into(), 2, 2));
        assert!(p.finished());
        assert!(
            p.on_stack_event(0, LOG_CREATED, &Map::new()).is_empty(),
            "nothing after the end"
        );
    }

    #[test]
    fn the_first_failure_ends_the_deployment() {
        let mut p = Progress::new(
            vec![spec("a", None), spec("b", None), spec("c", None)],
            "r".into(),
        );
        p.on_stack_event(0, STACK_DEPLOYED, &Map::new());
        let retry = p.on_stack_event(
            1,
            TRACKER_ERROR,
            &data(json!({"message":"Rate exceeded","retrying":true})),
        );
        assert_eq!(retry[0].0, LOG_CREATED);
        assert_eq!(retry[0].1["level"], "warning");
        assert!(!p.finished());
        let out = p.on_stack_event(
            1,
            STACK_FAILED,
            &data(json!({"error_message":"Subnet not found"})),
        );
        assert_eq!(out[0].1["error_message"], "Subnet not found");
        assert_eq!(status(&out[1]), ("failed".into(), 2, 3));
        assert!(p.finished());
        assert!(p.on_stack_event(2, STACK_DEPLOYED, &Map::new()).is_empty());
    }

    #[test]
    fn a_final_tracker_error_or_giving_up_is_a_failure() {
        let mut p = Progress::new(vec![spec("a", None)], "r".into());
        let out = p.on_stack_event(
            0,
            TRACKER_ERROR,
            &data(json!({"message":"Stack [a] does not exist","final":true})),
        );
        assert_eq!(out[0].0, STACK_FAILED);
        assert_eq!(out[0].1["error_message"], "Stack [a] does not exist");
        assert_eq!(status(&out[1]).0, "failed");

        let mut p = Progress::new(
            vec![
                spec("a", None),
                spec("b", None),
                spec("c", None),
                spec("d", None),
            ],
            "r".into(),
        );
        p.on_stack_event(0, STACK_DEPLOYED, &Map::new());
        p.on_stack_event(2, STACK_DEPLOYED, &Map::new());
        let out = p.give_up("timed out");
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            (
                out[0].1["stack_name"].as_str(),
                out[1].1["stack_name"].as_str()
            ),
            (Some("b"), Some("d"))
        );
        assert_eq!(out[1].1["error_message"], "timed out");
        assert_eq!(status(&out[2]), ("failed".into(), 3, 4));
        assert!(p.finished());
        assert!(p.give_up("again").is_empty());
    }
}
