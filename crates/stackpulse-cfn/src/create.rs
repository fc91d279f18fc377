//! Stack creation for `POST /canvas/deploy` and `stackpulse deploy`.
//!
//! [`create_stack`] sends `CreateStack` with the template body and parameters, naming
//! the stack `stackpulse-<8 hex>` when no name is given, and returns what the client
//! needs to track it. AWS's refusals (a bad template, a missing parameter, a name in
//! use) come back as [`CreateStackError::Invalid`] carrying AWS's own message, which
//! the server turns into a 400; anything else is [`CreateStackError::Aws`], whose
//! detail (AWS's text: principal ARNs, account ids) is for the log only and whose
//! [`CreateStackError::user_message`] is what a user is told.

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
    /// Service role CloudFormation assumes for the stack (`RoleARN`); `None`: the
    /// caller's credentials.
    #[serde(default)]
    pub role_arn: Option<String>,
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
    /// Any other failure (network, credentials, throttling): `code` is one of
    /// `credentials`, `region`, `access_denied`, `throttled`, `network`, `aws`; `detail` is
    /// AWS's text, for logs.
    #[error("CloudFormation CreateStack failed ({code}): {detail}")]
    Aws { code: &'static str, detail: String },
}

impl CreateStackError {
    /// One sentence for the user, without AWS's text (which can name the
    /// server's principal and account).
    pub fn user_message(&self) -> String {
        match self {
            CreateStackError::Invalid(m) => m.clone(),
            CreateStackError::Aws { code, .. } => match *code {
                "credentials" => "CloudFormation CreateStack failed: the server's AWS credentials are missing or invalid; the operator should check them (details in the server log)",
                "access_denied" => "CloudFormation CreateStack failed: the server's AWS identity may not create this stack; the operator should check its IAM permissions or --deploy-role-arn (details in the server log)",
                "throttled" => "CloudFormation CreateStack failed: AWS is throttling requests; try again in a minute",
                "network" => "CloudFormation CreateStack failed: AWS could not be reached; try again later (details in the server log)",
                _ => "CloudFormation CreateStack failed; the operator can find AWS's answer in the server log",
            }
            .to_owned(),
        }
    }
}

/// The `code` of an AWS failure that is not the request's fault: the tracker's
/// [`AwsError::code`], except that a service error (`Transient`) reads as
/// `network` here, and an untyped error is sorted by AWS's error code.
fn failure_code(err: &AwsError) -> &'static str {
    match err {
        AwsError::Transient(_) => "network",
        AwsError::Other(m) => {
            let code = m.split(':').next().unwrap_or_default();
            if code.contains("AccessDenied") || code.contains("Unauthorized") {
                "access_denied"
            } else if matches!(
                code,
                "InvalidClientTokenId"
                    | "ExpiredToken"
                    | "ExpiredTokenException"
                    | "UnrecognizedClientException"
                    | "SignatureDoesNotMatch"
                    | "IncompleteSignature"
                    | "MissingAuthenticationToken"
            ) || m.contains("credentials")
            {
                "credentials"
            } else {
                "aws"
            }
        }
        other => other.code().as_str(),
    }
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
        .set_role_arn(req.role_arn.filter(|r| !r.is_empty()))
        .send()
        .await
        .map_err(|err| match classify(&err) {
            AwsError::Validation(m) | AwsError::AlreadyExists(m) | AwsError::NotFound(m) => {
                CreateStackError::Invalid(m)
            }
            AwsError::Other(m) if m.starts_with("InsufficientCapabilities") => {
                CreateStackError::Invalid(m)
            }
            e => CreateStackError::Aws {
                code: failure_code(&e),
                detail: e.to_string(),
            },
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

    #[test]
    fn failures_keep_aws_text_out_of_the_user_message() {
        let denied = AwsError::Other(
            "AccessDenied: User: arn:aws:iam::123456789012:user/ops is not authorized".into(),
        );
        assert_eq!(failure_code(&denied), "access_denied");
        let e = CreateStackError::Aws {
            code: failure_code(&denied),
            detail: denied.to_string(),
        };
        assert!(!e.user_message().contains("123456789012"));
        assert!(e.to_string().contains("123456789012"), "the log keeps it");
        assert_eq!(
            failure_code(&AwsError::Other("InvalidClientTokenId: bad".into())),
            "credentials"
        );
        assert_eq!(failure_code(&AwsError::Throttled("x".into())), "throttled");
        assert_eq!(failure_code(&AwsError::Transient("x".into())), "network");
        assert_eq!(
            failure_code(&AwsError::AccessDenied("AccessDenied: x".into())),
            "access_denied"
        );
        assert_eq!(
            failure_code(&AwsError::NoCredentials("no provider".into())),
            "credentials"
        );
        assert_eq!(failure_code(&AwsError::Network("reset".into())), "network");
    }
}
