//! `POST /canvas/deploy`: create a CloudFormation stack from a template.
//!
//! Body `{"templateBody", "stackName"?, "parameters"?: {k: v}, "region"?,
//! "capabilities"?: [..]}` → `201 {"stackName", "stackId"}`. A stack name is
//! generated (`stackpulse-<8 hex>`) when absent. Only deployers may call it
//! ([`crate::auth::gate::Gate::authorize_deployer`]); `capabilities` must be in
//! `--deploy-capabilities` (400 naming the flag otherwise), and the stack is
//! created under `--deploy-role-arn` when set. AWS's refusals (bad template,
//! missing parameter, name in use) answer 400 with AWS's own message; other AWS
//! failures (credentials, network) answer 502 with one sentence and a `code`,
//! AWS's text going to the log only. The client then opens
//! `/canvas/deploy/track/{stackName}` to watch it.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use stackpulse_cfn::{create_stack, CreateStackError, CreateStackRequest};

use crate::app::AppState;
use crate::http::error::AppError;
use crate::tracking::{valid_region, valid_stack_name};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeployBody {
    template_body: String,
    #[serde(default)]
    stack_name: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

/// A parameter value as CloudFormation wants it: strings as they are, numbers and
/// booleans in their JSON spelling, lists comma-separated.
fn parameter_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(parameter_value)
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let token = crate::auth::gate::request_token(&headers, query.as_deref());
    let edge = &state.config.edge;
    if let Err(refusal) = state
        .gate
        .authorize_deployer(token.as_deref(), &state.publishers, &edge.deployer_group)
        .await
    {
        return AppError::from(refusal).into_response();
    }
    let body: DeployBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return AppError::new(StatusCode::BAD_REQUEST, format!("Invalid body: {e}"))
                .into_response()
        }
    };
    if body.template_body.trim().is_empty() {
        return AppError::new(StatusCode::BAD_REQUEST, "Missing templateBody").into_response();
    }
    let stack_name = body.stack_name.filter(|n| !n.trim().is_empty());
    if let Some(name) = &stack_name {
        if !valid_stack_name(name) {
            return AppError::new(
                StatusCode::BAD_REQUEST,
                format!("Invalid stackName: {name} (letters, digits and '-', starting with a letter, at most 128)"),
            )
            .into_response();
        }
    }
    let region = body.region.filter(|r| !r.is_empty());
    if let Some(r) = &region {
        if !valid_region(r) {
            return AppError::new(StatusCode::BAD_REQUEST, format!("Invalid region: {r}"))
                .into_response();
        }
    }
    let capabilities = match allowed_capabilities(&body.capabilities, &edge.deploy_capabilities) {
        Ok(c) => c,
        Err(message) => return AppError::new(StatusCode::BAD_REQUEST, message).into_response(),
    };
    let client = state.tracking.aws().client(region.as_deref()).await;
    let request = CreateStackRequest {
        template_body: body.template_body,
        stack_name,
        parameters: body
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_value(v)))
            .collect(),
        capabilities,
        role_arn: edge.deploy_role_arn.clone(),
    };
    match create_stack(&client, request).await {
        Ok(created) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "stackName": created.stack_name,
                "stackId": created.stack_id,
            })),
        )
            .into_response(),
        Err(CreateStackError::Invalid(message)) => {
            AppError::new(StatusCode::BAD_REQUEST, message).into_response()
        }
        Err(e @ CreateStackError::Aws { code, .. }) => {
            tracing::warn!(error = %e, "CreateStack failed");
            AppError::new(StatusCode::BAD_GATEWAY, e.user_message())
                .with_code(code)
                .into_response()
        }
    }
}

/// The requested capabilities in the operator's spelling, or why one is refused.
fn allowed_capabilities(requested: &[String], allowed: &[String]) -> Result<Vec<String>, String> {
    requested
        .iter()
        .map(|c| {
            allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(c.trim()))
                .cloned()
                .ok_or_else(|| {
                    let list = if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    };
                    format!(
                        "Capability {c:?} is not allowed on this server (allowed by --deploy-capabilities: {list})"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_must_be_allowed() {
        let allowed = vec!["CAPABILITY_IAM".to_owned()];
        assert_eq!(
            allowed_capabilities(&["capability_iam".into()], &allowed),
            Ok(vec!["CAPABILITY_IAM".to_owned()])
        );
        let e =
            allowed_capabilities(&["CAPABILITY_NAMED_IAM".into()], &allowed).expect_err("refused");
        assert!(e.contains("--deploy-capabilities"), "{e}");
        let e = allowed_capabilities(&["CAPABILITY_IAM".into()], &[]).expect_err("none allowed");
        assert!(e.contains("none"), "{e}");
        assert_eq!(allowed_capabilities(&[], &[]), Ok(vec![]));
    }

    #[test]
    fn parameter_values() {
        assert_eq!(parameter_value(&serde_json::json!("x")), "x");
        assert_eq!(parameter_value(&serde_json::json!(3)), "3");
        assert_eq!(parameter_value(&serde_json::json!(true)), "true");
        assert_eq!(parameter_value(&serde_json::json!(["a", "b"])), "a,b");
    }
}
