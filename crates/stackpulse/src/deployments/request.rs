//! The body of `POST /v1/deployments` and its validation (pure; no hub, no AWS).
//!
//! `{"deployment_id": "D1", "stacks": [{"name": "network", "region"?: "eu-west-1",
//! "environment"?: "dev"}, …], "acl"?: {"owner", "groups"}}`. Every error is the
//! message of a 400 response, naming the field a user must fix.

use serde_json::Value;
use stackpulse_protocol::{Acl, MAX_TOPIC_LEN};

use crate::tracking::{valid_region, valid_stack_name, TOPIC_PREFIX};

/// Most stacks one deployment may track.
pub const MAX_STACKS: usize = 50;

/// One stack of a deployment, in the order given (its layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    pub name: String,
    /// `None`: the server's default region.
    pub region: Option<String>,
    /// The `environment` label of the deployment's seed events; the stack's region
    /// when absent.
    pub environment: Option<String>,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRequest {
    pub deployment_id: String,
    pub stacks: Vec<StackSpec>,
    pub acl: Option<Acl>,
}

fn optional_string(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("Invalid {at}.{key}: must be a string")),
    }
}

fn stack_spec(i: usize, v: &Value) -> Result<StackSpec, String> {
    let at = format!("stacks[{i}]");
    let Value::Object(obj) = v else {
        return Err(format!("Invalid {at}: must be an object"));
    };
    if let Some(extra) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "region" | "environment"))
    {
        return Err(format!("Unknown field {at}.{extra}"));
    }
    let name = optional_string(obj, "name", &at)?.ok_or_else(|| format!("Missing {at}.name"))?;
    if !valid_stack_name(&name) {
        return Err(format!(
            "Invalid {at}.name: {name:?} is not a CloudFormation stack name \
             (a letter, then letters, digits and '-', at most 128)"
        ));
    }
    let region = optional_string(obj, "region", &at)?;
    if let Some(r) = &region {
        if !valid_region(r) {
            return Err(format!("Invalid {at}.region: {r:?} is not an AWS region"));
        }
    }
    Ok(StackSpec {
        name,
        region,
        environment: optional_string(obj, "environment", &at)?,
    })
}

impl DeploymentRequest {
    /// Validates a request body.
    pub fn from_json(body: &[u8]) -> Result<DeploymentRequest, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("Invalid JSON: {e}"))?;
        let Value::Object(mut obj) = value else {
            return Err("Body must be a JSON object".into());
        };
        let deployment_id = match obj.remove("deployment_id") {
            None | Some(Value::Null) => return Err("Missing deployment_id".into()),
            Some(Value::String(s)) if s.is_empty() => return Err("Missing deployment_id".into()),
            Some(Value::String(s)) if s.starts_with(TOPIC_PREFIX) => {
                return Err(format!(
                    "Invalid deployment_id: {TOPIC_PREFIX}* topics belong to tracked stacks"
                ))
            }
            Some(Value::String(s)) if s.len() <= MAX_TOPIC_LEN => s,
            Some(_) => {
                return Err(format!(
                    "Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes"
                ))
            }
        };
        let stacks = match obj.remove("stacks") {
            None | Some(Value::Null) => return Err("Missing stacks".into()),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err("Invalid stacks: must name at least one stack".into())
            }
            Some(Value::Array(a)) if a.len() > MAX_STACKS => {
                return Err(format!("Invalid stacks: at most {MAX_STACKS} stacks"))
            }
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| stack_spec(i, v))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("Invalid stacks: must be an array".into()),
        };
        for (i, s) in stacks.iter().enumerate() {
            if stacks[..i]
                .iter()
                .any(|o| o.name == s.name && o.region == s.region)
            {
                return Err(format!("Invalid stacks[{i}]: {} is listed twice", s.name));
            }
        }
        let acl = match obj.remove("acl") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(serde_json::from_value::<Acl>(v).map_err(|e| format!("Invalid acl: {e}"))?)
            }
        };
        if let Some(extra) = obj.keys().next() {
            return Err(format!("Unknown field {extra}"));
        }
        Ok(DeploymentRequest {
            deployment_id,
            stacks,
            acl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<DeploymentRequest, String> {
        DeploymentRequest::from_json(body.as_bytes())
    }

    #[test]
    fn a_valid_request() {
        let r = parse(
            r#"{"deployment_id":"D1","stacks":[{"name":"network","environment":"dev"},
                {"name":"db","region":"eu-west-1"}],"acl":{"groups":["ops"]}}"#,
        )
        .expect("valid");
        assert_eq!(r.deployment_id, "D1");
        assert_eq!(r.stacks.len(), 2);
        assert_eq!(r.stacks[0].environment.as_deref(), Some("dev"));
        assert_eq!(r.stacks[1].region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.acl.expect("acl").groups, vec!["ops".to_string()]);
    }

    #[test]
    fn every_bad_body_names_its_field() {
        let cases = [
            ("nope", "Invalid JSON"),
            ("[]", "Body must be a JSON object"),
            (r#"{"stacks":[{"name":"a"}]}"#, "Missing deployment_id"),
            (
                r#"{"deployment_id":"","stacks":[{"name":"a"}]}"#,
                "Missing deployment_id",
            ),
            (
                r#"{"deployment_id":"stack:x","stacks":[{"name":"a"}]}"#,
                "tracked stacks",
            ),
            (r#"{"deployment_id":"D"}"#, "Missing stacks"),
            (r#"{"deployment_id":"D","stacks":[]}"#, "at least one stack"),
            (r#"{"deployment_id":"D","stacks":"a"}"#, "must be an array"),
            (
                r#"{"deployment_id":"D","stacks":[1]}"#,
                "stacks[0]: must be an object",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{}]}"#,
                "Missing stacks[0].name",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"9x"}]}"#,
                "Invalid stacks[0].name",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"a","region":"EU"}]}"#,
                "stacks[0].region",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"a","zone":1}]}"#,
                "Unknown field stacks[0].zone",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"a"},{"name":"a"}]}"#,
                "listed twice",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"a"}],"x":1}"#,
                "Unknown field x",
            ),
            (
                r#"{"deployment_id":"D","stacks":[{"name":"a"}],"acl":3}"#,
                "Invalid acl",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body).expect_err(body);
            assert!(err.contains(want), "{body}: {err}");
        }
        let many: Vec<String> = (0..=MAX_STACKS)
            .map(|i| format!(r#"{{"name":"s{i}"}}"#))
            .collect();
        let body = format!(r#"{{"deployment_id":"D","stacks":[{}]}}"#, many.join(","));
        assert!(parse(&body).expect_err("too many").contains("at most"));
    }
}
