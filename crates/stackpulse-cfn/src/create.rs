//! Stack creation for `POST /canvas/deploy` and `stackpulse deploy`.
//!
//! [`create_stack`] sends `CreateStack` with the template body and parameters, naming
//! the stack `stackpulse-<8 hex>` when no name is given, and returns what the client
//! needs to track it. AWS's refusals (a bad template, a missing parameter, a name in
//! use) come back as [`CreateStackError::Invalid`] carrying AWS's own message, which
//! the server turns into a 400; anything else is [`CreateStackError::Aws`].

use std::collections::BTreeMap;

use aws_sdk_cloudformation::types::{Capability, Parameter};
use aws_sdk_cloudformation::Client;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::aws::{classify, AwsError};

/// What to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateStackRequest {
    pub template_body: String,
    /// Generated (`stackpulse-<8 hex>`) when absent or empty.
    #[serde(default)]
    pub stack_name: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Capabilities to acknowledge (`CAPABILITY_IAM`, ...); none by default.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// The created stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedStack {
    pub stack_name: String,
    pub stack_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateStackError {
    /// AWS refused the request (validation error, name in use, missing
    /// capability); the message is AWS's.
    #[error("{0}")]
    Invalid(String),
    /// Any other failure (network, credentials, throttling).
    #[error("CloudFormation CreateStack failed: {0}")]
    Aws(String),
}

/// A fresh stack name: `stackpulse-` and 8 lowercase hex digits.
pub fn generate_stack_name() -> String {
    format!("stackpulse-{:08x}", rand::rng().random::<u32>())
}

/// Creates the stack (see the module docs).
pub async fn create_stack(
    client: &Client,
    req: CreateStackRequest,
) -> Result<CreatedStack, CreateStackError> {
    let stack_name = req
        .stack_name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(generate_stack_name);
    let parameters: Vec<Parameter> = req
        .parameters
        .into_iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect();
    let capabilities: Vec<Capability> = req
        .capabilities
        .iter()
        .map(|c| Capability::from(c.as_str()))
        .collect();
    let out = client
        .create_stack()
        .stack_name(&stack_name)
        .template_body(req.template_body)
        .set_parameters((!parameters.is_empty()).then_some(parameters))
        .set_capabilities((!capabilities.is_empty()).then_some(capabilities))
        .send()
        .await
        .map_err(|err| match classify(&err) {
            AwsError::Validation(m) | AwsError::AlreadyExists(m) | AwsError::NotFound(m) => {
                CreateStackError::Invalid(m)
            }
            AwsError::Other(m) if m.starts_with("InsufficientCapabilities") => {
                CreateStackError::Invalid(m)
            }
            e => CreateStackError::Aws(e.to_string()),
        })?;
    let stack_id = out.stack_id().unwrap_or_default().to_string();
    Ok(CreatedStack {
        stack_name,
        stack_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names() {
        let n = generate_stack_name();
        assert_eq!(n.len(), "stackpulse-".len() + 8);
        assert!(n.starts_with("stackpulse-"));
        assert!(n["stackpulse-".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let req: CreateStackRequest = serde_json::from_value(
            serde_json::json!({"templateBody": "{}", "parameters": {"K": "V"}}),
        )
        .expect("parse");
        assert_eq!(req.stack_name, None);
        assert_eq!(req.parameters.get("K").map(String::as_str), Some("V"));
    }
}
