//! The current state of a topic, folded from its events.
//!
//! Every stamped event is applied to its topic's [`Snapshot`]; a subscriber that
//! joins without `since` (or whose resume failed) receives the snapshot first, as
//! one `deployment.snapshot` or `stack.snapshot` event carrying the seq it is current
//! to. The fold is pure: it never looks at sockets or time.
//!
//! A tracked stack's `resources` are keyed by (nested stack, logical id): a root
//! stack's resource by its logical id (as always), a nested stack's by
//! `<nestedStack>/<logicalId>` ([`resource_key`]; logical ids are alphanumeric and
//! stack names have no `/`, so the key splits back unambiguously). So a nested
//! `CDKMetadata` never overwrites the root's, and readers that only know logical
//! ids keep working for root resources. The deletion of a *replaced* resource (a
//! `DELETE_*` for a physical id other than the row's, which CloudFormation only
//! sends during an update's cleanup) never overwrites the live row.
//!
//! An encoded snapshot stays within a byte budget (`--max-event-bytes`, like any
//! event), so a topic can always be subscribed to: over budget, long strings are
//! cut first, then the oldest log lines go, then map entries (the data then says
//! `"truncated": true`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event::encode_frame;
use axum::extract::ws::Utf8Bytes;

/// How many recent `log.created` entries a deployment snapshot keeps.
pub const SNAPSHOT_LOGS: usize = 20;

/// The state of one topic (serializable, so a shared backplane can store it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The seq of the last event applied (0: nothing yet).
    pub seq: u64,
    pub timestamp: String,
    /// `true` once a CloudFormation `resource.status` event was applied: the
    /// snapshot is then sent as `stack.snapshot`.
    tracks_stack: bool,
    state: Map<String, Value>,
}

impl Snapshot {
    /// Folds one event into the state.
    pub fn apply(
        &mut self,
        seq: u64,
        timestamp: &str,
        event_type: &str,
        data: &Map<String, Value>,
    ) {
        self.seq = seq;
        self.timestamp = timestamp.to_owned();
        match event_type {
            "deployment.status" => {
                for key in ["status", "current_layer", "total_layers"] {
                    if let Some(v) = data.get(key) {
                        self.state.insert(key.into(), v.clone());
                    }
                }
            }
            "stack.deployed" | "stack.failed" => {
                let Some(name) = data.get("stack_name").and_then(Value::as_str) else {
                    return self.touch(event_type, seq, timestamp);
                };
                let mut entry = data.clone();
                entry.remove("stack_name");
                let status = if event_type == "stack.deployed" {
                    "deployed"
                } else {
                    "failed"
                };
                entry.insert("status".into(), Value::from(status));
                entry.insert("updated_at".into(), Value::from(timestamp));
                // A tracked stack's completion carries its final summary.
                if self.tracks_stack {
                    if let Some(stack @ Value::Object(_)) = data.get("stack") {
                        self.state.insert("stack".into(), stack.clone());
                    }
                }
                self.object("stacks")
                    .insert(name.to_owned(), Value::Object(entry));
            }
            "log.created" => {
                let mut entry = data.clone();
                entry.insert("timestamp".into(), Value::from(timestamp));
                let logs = self
                    .state
                    .entry("logs")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = logs {
                    list.push(Value::Object(entry));
                    if list.len() > SNAPSHOT_LOGS {
                        let excess = list.len() - SNAPSHOT_LOGS;
                        list.drain(..excess);
                    }
                }
            }
            "resource.status" => {
                self.tracks_stack = true;
                if let Some(Value::Object(resource)) = data.get("resource") {
                    if let Some(id) = resource.get("logicalId").and_then(Value::as_str) {
                        let nested = data.get("nestedStack").and_then(Value::as_str);
                        let key = resource_key(nested, id);
                        let rows = self.object("resources");
                        if !replaced_resource_cleanup(rows.get(&key), resource) {
                            rows.insert(key, Value::Object(resource.clone()));
                        }
                    }
                }
                if let Some(stack) = data.get("stack") {
                    self.state.insert("stack".into(), stack.clone());
                }
            }
            _ => {}
        }
        self.touch(event_type, seq, timestamp);
    }

    fn touch(&mut self, event_type: &str, seq: u64, timestamp: &str) {
        let mut last = Map::new();
        last.insert("type".into(), Value::from(event_type));
        last.insert("seq".into(), Value::from(seq));
        last.insert("timestamp".into(), Value::from(timestamp));
        self.state.insert("last_event".into(), Value::Object(last));
    }

    fn object(&mut self, key: &str) -> &mut Map<String, Value> {
        let slot = self
            .state
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(m) => m,
            _ => unreachable!("slot was just made an object"),
        }
    }

    /// The snapshot's event type.
    pub fn event_type(&self) -> &'static str {
        if self.tracks_stack {
            "stack.snapshot"
        } else {
            "deployment.snapshot"
        }
    }

    /// The state as a JSON object.
    pub fn data(&self) -> &Map<String, Value> {
        &self.state
    }

    /// The snapshot as a text frame for `topic`, within `budget` bytes when it
    /// can be (see the module doc for what is cut first).
    pub fn encode(&self, topic: &str, budget: usize) -> Utf8Bytes {
        let frame = |state: &Map<String, Value>| {
            encode_frame(self.event_type(), topic, self.seq, &self.timestamp, state)
        };
        let full = frame(&self.state);
        if full.len() <= budget {
            return full;
        }
        let mut state = self.state.clone();
        state.insert("truncated".into(), Value::Bool(true));
        cut_strings(&mut state, MAX_SNAPSHOT_STRING);
        let mut out = frame(&state);
        // Then whole entries: old log lines first, then stacks and resources.
        for key in ["logs", "stacks", "resources"] {
            while out.len() > budget {
                let removed = match state.get_mut(key) {
                    Some(Value::Array(list)) if !list.is_empty() => {
                        list.remove(0);
                        true
                    }
                    Some(Value::Object(map)) => map.keys().next().cloned().is_some_and(|k| {
                        map.remove(&k);
                        true
                    }),
                    _ => false,
                };
                if !removed {
                    break;
                }
                out = frame(&state);
            }
        }
        out
    }
}

/// The key of a resource in a stack snapshot's `resources`: its logical id for the
/// root stack, `<nestedStack>/<logicalId>` for a nested stack's.
pub fn resource_key(nested_stack: Option<&str>, logical_id: &str) -> String {
    match nested_stack {
        Some(n) if !n.is_empty() => format!("{n}/{logical_id}"),
        _ => logical_id.to_owned(),
    }
}

/// A `resources` key split back into (nested stack, logical id).
pub fn split_resource_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((nested, logical)) => (Some(nested), logical),
        None => (None, key),
    }
}

/// `true` when `update` is the deletion of a resource other than the one the row
/// holds (the old resource of a replacement, deleted during cleanup).
fn replaced_resource_cleanup(row: Option<&Value>, update: &Map<String, Value>) -> bool {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let Some(row) = row else { return false };
    let status = text(update.get("status"));
    let new_id = text(update.get("physicalId"));
    let row_id = text(row.get("physicalId"));
    status.starts_with("DELETE_") && !new_id.is_empty() && !row_id.is_empty() && new_id != row_id
}

/// Longest string kept in a snapshot that is over its budget.
const MAX_SNAPSHOT_STRING: usize = 1024;

/// Cuts every string in `map` (at any depth) to at most `max` bytes.
fn cut_strings(map: &mut Map<String, Value>, max: usize) {
    fn cut(value: &mut Value, max: usize) {
        match value {
            Value::String(s) if s.len() > max => {
                let mut end = max;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
                s.push('…');
            }
            Value::Array(list) => list.iter_mut().for_each(|v| cut(v, max)),
            Value::Object(map) => map.values_mut().for_each(|v| cut(v, max)),
            _ => {}
        }
    }
    map.values_mut().for_each(|v| cut(v, max));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn folds_seed_events() {
        let mut s = Snapshot::default();
        s.apply(
            1,
            "t1",
            "deployment.status",
            &obj(json!({"status":"deploying","current_layer":1,"total_layers":3})),
        );
        s.apply(2, "t2", "stack.deployed", &obj(json!({"stack_name":"network","environment":"dev","duration_seconds":30,"resource_count":4})));
        s.apply(
            3,
            "t3",
            "stack.failed",
            &obj(json!({"stack_name":"db","environment":"dev","error_message":"Subnet not found"})),
        );
        s.apply(
            4,
            "t4",
            "deployment.status",
            &obj(json!({"status":"failed"})),
        );
        let d = Value::Object(s.data().clone());
        assert_eq!(s.seq, 4);
        assert_eq!(d["status"], "failed");
        assert_eq!(
            d["current_layer"], 1,
            "fields not in the new event are kept"
        );
        assert_eq!(d["stacks"]["network"]["status"], "deployed");
        assert_eq!(d["stacks"]["network"]["resource_count"], 4);
        assert_eq!(d["stacks"]["db"]["error_message"], "Subnet not found");
        assert_eq!(d["last_event"]["seq"], 4);
        assert_eq!(s.event_type(), "deployment.snapshot");
    }

    #[test]
    fn keeps_only_recent_logs() {
        let mut s = Snapshot::default();
        for i in 1..=(SNAPSHOT_LOGS as u64 + 5) {
            s.apply(
                i,
                "t",
                "log.created",
                &obj(json!({"level":"info","message":format!("m{i}")})),
            );
        }
        let logs = s.data()["logs"].as_array().expect("array");
        assert_eq!(logs.len(), SNAPSHOT_LOGS);
        assert_eq!(logs[0]["message"], "m6");
    }

    #[test]
    fn an_oversized_snapshot_is_cut_to_its_budget() {
        let mut s = Snapshot::default();
        for i in 1..=SNAPSHOT_LOGS as u64 {
            s.apply(
                i,
                "t",
                "log.created",
                &obj(json!({"level":"info","message":"x".repeat(40_000)})),
            );
        }
        s.apply(
            21,
            "t",
            "deployment.status",
            &obj(json!({"status":"deploying"})),
        );
        let budget = 16 * 1024;
        let frame = s.encode("D", budget);
        assert!(frame.len() <= budget, "{} > {budget}", frame.len());
        let v: Value = serde_json::from_str(frame.as_str()).expect("json");
        assert_eq!(v["data"]["status"], "deploying", "the state is kept");
        assert_eq!(v["data"]["truncated"], true);
        assert!(!v["data"]["logs"].as_array().expect("logs").is_empty());
        assert!(
            s.encode("D", 1 << 22).len() > 800_000,
            "within budget: untouched"
        );
    }

    /// B3: a nested stack's resource never overwrites the root's of the same
    /// logical id; B4: a replaced resource's cleanup never overwrites the live row.
    #[test]
    fn resources_are_keyed_by_nested_stack_and_cleanups_skipped() {
        let mut s = Snapshot::default();
        let ev = |id: &str, status: &str, phys: &str, nested: Option<&str>| {
            let mut d = obj(json!({
                "resource": {"logicalId": id, "status": status, "physicalId": phys},
                "stack": {"name": "app", "progress": 0}}));
            if let Some(n) = nested {
                d.insert("nestedStack".into(), Value::from(n));
            }
            d
        };
        s.apply(
            1,
            "t",
            "resource.status",
            &ev("CDKMetadata", "CREATE_COMPLETE", "m1", None),
        );
        s.apply(
            2,
            "t",
            "resource.status",
            &ev("CDKMetadata", "CREATE_FAILED", "m2", Some("app-Net-X")),
        );
        s.apply(
            3,
            "t",
            "resource.status",
            &ev("Bucket", "UPDATE_COMPLETE", "new", None),
        );
        s.apply(
            4,
            "t",
            "resource.status",
            &ev("Bucket", "DELETE_COMPLETE", "old", None),
        );
        let d = Value::Object(s.data().clone());
        assert_eq!(d["resources"]["CDKMetadata"]["status"], "CREATE_COMPLETE");
        assert_eq!(
            d["resources"]["app-Net-X/CDKMetadata"]["status"],
            "CREATE_FAILED"
        );
        assert_eq!(d["resources"]["Bucket"]["physicalId"], "new");
        assert_eq!(d["resources"]["Bucket"]["status"], "UPDATE_COMPLETE");
        // A resource removed by the update is deleted with its own id: shown.
        s.apply(
            5,
            "t",
            "resource.status",
            &ev("Bucket", "DELETE_COMPLETE", "new", None),
        );
        assert_eq!(s.data()["resources"]["Bucket"]["status"], "DELETE_COMPLETE");
        assert_eq!(
            split_resource_key("app-Net-X/CDKMetadata"),
            (Some("app-Net-X"), "CDKMetadata")
        );
        assert_eq!(split_resource_key("Bucket"), (None, "Bucket"));
    }

    #[test]
    fn resource_events_make_a_stack_snapshot() {
        let mut s = Snapshot::default();
        s.apply(
            1,
            "t",
            "resource.status",
            &obj(json!({
            "resource":{"logicalId":"Bucket","status":"CREATE_IN_PROGRESS"},
            "stack":{"name":"s","progress":0}})),
        );
        s.apply(
            2,
            "t",
            "resource.status",
            &obj(json!({
            "resource":{"logicalId":"Bucket","status":"CREATE_COMPLETE"},
            "stack":{"name":"s","progress":100}})),
        );
        assert_eq!(s.event_type(), "stack.snapshot");
        let d = Value::Object(s.data().clone());
        assert_eq!(d["resources"]["Bucket"]["status"], "CREATE_COMPLETE");
        assert_eq!(d["stack"]["progress"], 100);
        let frame = s.encode("s", 1 << 20);
        assert!(frame
            .as_str()
            .starts_with(r#"{"type":"stack.snapshot","deployment_id":"s","seq":2,"#));
    }
}
