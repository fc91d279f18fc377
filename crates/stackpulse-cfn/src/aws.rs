//! The AWS edge: every CloudFormation call the tracker makes, counted, with SDK
//! errors sorted into what the tracker does about them.
//!
//! Data flow: `tracker` calls [`Api`] methods; each returns our own types
//! ([`StackInfo`], `Vec<Event>` pages, [`ResourceState`]s) or an [`AwsError`] that
//! says whether to back off (throttled), retry (transient), wait (stack not found) or
//! give up. SDK retries are switched off per call so that the tracker's own backoff is
//! the only one, and so that [`CallCounter`] counts every request sent (in total and
//! per [`CallApi`]).
//!
//! Before each request, [`Api`] waits for its [`CallLimiter`] (when it has one): the
//! server's call budget per account and region (`--aws-max-rps`), shared fairly
//! between stacks. The limiter is a trait so that this crate knows nothing of how the
//! budget is kept (in process, or shared by a cluster through Redis).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_cloudformation::config::http::HttpResponse;
use aws_sdk_cloudformation::config::retry::RetryConfig;
use aws_sdk_cloudformation::config::timeout::TimeoutConfig;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudformation::Client;
use chrono::{DateTime, Utc};

use crate::events::Event;
use crate::progress::ResourceState;
use crate::wire::{ErrorCode, StackOutput, MAX_PROBLEM_MESSAGE};

/// Counts AWS calls (requests sent, including failed ones), for a metric.
///
/// Cheap to clone; clones share the counts. Give the same counter to several
/// trackers to count them together.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<CallCounts>);

#[derive(Debug, Default)]
struct CallCounts {
    total: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
    /// Requests sent, per [`CallApi`].
    by_api: [AtomicU64; CallApi::ALL.len()],
    /// Throttled answers, per [`CallApi`].
    throttled_by_api: [AtomicU64; CallApi::ALL.len()],
}

/// The CloudFormation APIs the tracker calls (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallApi {
    DescribeStacks,
    DescribeStackEvents,
    ListStackResources,
    GetTemplate,
    GetTemplateSummary,
    ListChangeSets,
}

impl CallApi {
    /// Every API, in a fixed order.
    pub const ALL: [CallApi; 6] = [
        CallApi::DescribeStacks,
        CallApi::DescribeStackEvents,
        CallApi::ListStackResources,
        CallApi::GetTemplate,
        CallApi::GetTemplateSummary,
        CallApi::ListChangeSets,
    ];

    /// AWS's name of the API.
    pub fn name(self) -> &'static str {
        match self {
            CallApi::DescribeStacks => "DescribeStacks",
            CallApi::DescribeStackEvents => "DescribeStackEvents",
            CallApi::ListStackResources => "ListStackResources",
            CallApi::GetTemplate => "GetTemplate",
            CallApi::GetTemplateSummary => "GetTemplateSummary",
            CallApi::ListChangeSets => "ListChangeSets",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which budget a call is charged to: the account (from the stack ARN; `None` until
/// a call revealed it) and the region of the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallScope {
    pub account: Option<String>,
    pub region: String,
}

/// A future a [`CallLimiter`] returns.
pub type Permit<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Waits before each AWS request until the budget of its scope allows it.
///
/// Implementations decide fairness: `stack` names who asks (the stack name or ARN
/// the call is about), so one busy stack cannot starve others.
pub trait CallLimiter: Send + Sync + std::fmt::Debug {
    /// Resolves when one request of `stack` in `scope` may be sent.
    fn acquire<'a>(&'a self, scope: &'a CallScope, stack: &'a str) -> Permit<'a>;
}

/// The account id of a CloudFormation ARN
/// (`arn:aws:cloudformation:<region>:<account>:stack/<name>/<id>`).
pub fn arn_account(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    if parts.next() != Some("arn") {
        return None;
    }
    let account = parts.nth(3)?;
    (!account.is_empty() && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

impl CallCounter {
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests sent.
    pub fn total(&self) -> u64 {
        self.0.total.load(Ordering::Relaxed)
    }
    /// Requests answered with a throttling error.
    pub fn throttled(&self) -> u64 {
        self.0.throttled.load(Ordering::Relaxed)
    }
    /// Requests that failed for any other reason.
    pub fn failed(&self) -> u64 {
        self.0.failed.load(Ordering::Relaxed)
    }
    /// Requests of one API sent.
    pub fn sent_to(&self, api: CallApi) -> u64 {
        self.0.by_api[api.index()].load(Ordering::Relaxed)
    }
    /// Requests of one API answered with a throttling error.
    pub fn throttled_by(&self, api: CallApi) -> u64 {
        self.0.throttled_by_api[api.index()].load(Ordering::Relaxed)
    }
    fn sent(&self, api: CallApi) {
        self.0.total.fetch_add(1, Ordering::Relaxed);
        self.0.by_api[api.index()].fetch_add(1, Ordering::Relaxed);
    }
    fn record(&self, api: CallApi, e: &AwsError) {
        let c = match e {
            AwsError::Throttled(_) => {
                self.0.throttled_by_api[api.index()].fetch_add(1, Ordering::Relaxed);
                &self.0.throttled
            }
            _ => &self.0.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What went wrong with one call, sorted by what to do about it.
///
/// Every variant carries AWS's (or the SDK's) own text for the log; users get
/// [`AwsError::public_message`] and [`AwsError::code`] instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// `Throttling` / "Rate exceeded": back off and poll slower.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Connection refused or reset, DNS, TLS, timeouts: retry with backoff.
    #[error("{0}")]
    Network(String),
    /// 5xx, unparseable answers (a proxy's HTML 502...): retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// No credentials in the chain (environment, profiles, SSO, instance role).
    #[error("{0}")]
    NoCredentials(String),
    /// AWS refused the credentials (`InvalidClientTokenId`, `ExpiredToken`...): the
    /// string starts with AWS's error code.
    #[error("{0}")]
    BadCredentials(String),
    /// No region could be determined.
    #[error("{0}")]
    NoRegion(String),
    /// `AccessDenied` and friends: the string starts with AWS's error code.
    #[error("{0}")]
    AccessDenied(String),
    /// `ValidationError` "Stack with id X does not exist".
    #[error("{0}")]
    NotFound(String),
    /// Any other `ValidationError` (bad template, bad parameter...).
    #[error("{0}")]
    Validation(String),
    /// `AlreadyExistsException` on create.
    #[error("{0}")]
    AlreadyExists(String),
    /// Anything else: not retried. The string starts with AWS's error code.
    #[error("{0}")]
    Other(String),
}

/// AWS's error code at the start of `text` (`AccessDenied: User: arn:…`), cut to
/// the characters an error code has: nothing else of AWS's text is shown.
fn leading_code(text: &str) -> String {
    text.split(": ")
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .take(64)
        .collect()
}

impl AwsError {
    /// The stable code clients branch on.
    pub fn code(&self) -> ErrorCode {
        match self {
            AwsError::Throttled(_) => ErrorCode::Throttled,
            AwsError::Network(_) => ErrorCode::Network,
            AwsError::NoCredentials(_) | AwsError::BadCredentials(_) => ErrorCode::Credentials,
            AwsError::NoRegion(_) => ErrorCode::Region,
            AwsError::AccessDenied(_) => ErrorCode::AccessDenied,
            AwsError::NotFound(_) => ErrorCode::NotFound,
            AwsError::Transient(_)
            | AwsError::Validation(_)
            | AwsError::AlreadyExists(_)
            | AwsError::Other(_) => ErrorCode::Aws,
        }
    }

    /// Whether the tracker retries the call (every configuration error is retried
    /// too, minutes apart: fixing the credentials or the policy needs no restart).
    pub fn is_retried(&self) -> bool {
        matches!(
            self,
            AwsError::Throttled(_)
                | AwsError::Network(_)
                | AwsError::Transient(_)
                | AwsError::NoCredentials(_)
                | AwsError::BadCredentials(_)
                | AwsError::NoRegion(_)
                | AwsError::AccessDenied(_)
        )
    }

    /// One sentence with the cause and the fix, for the people watching a stack
    /// (at most [`MAX_PROBLEM_MESSAGE`] characters). AWS's own text stays in the
    /// logs: it can name the account and the principal (`User: arn:aws:iam::…`) or
    /// carry the SDK's whole error chain. Only AWS's error code is kept.
    pub fn public_message(&self) -> String {
        let m = match self {
            AwsError::Throttled(_) => "AWS is throttling CloudFormation requests; stackpulse \
                polls slower until it stops (a larger --poll-interval helps if it persists)."
                .to_string(),
            AwsError::Network(_) => "CloudFormation could not be reached (connection failed or \
                timed out); check the network, proxy and --aws-endpoint-url. The server's log \
                has the details."
                .to_string(),
            AwsError::Transient(_) => "CloudFormation did not answer properly (a service error); \
                stackpulse retries. The server's log has the details."
                .to_string(),
            AwsError::NoCredentials(_) => "No AWS credentials found (environment, shared config, \
                SSO, instance role). Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                or use --aws-endpoint-url for moto."
                .to_string(),
            AwsError::BadCredentials(m) => format!(
                "AWS rejected the server's credentials ({}): they are invalid or expired. \
                 Refresh them (aws sso login, new access keys) and stackpulse retries.",
                leading_code(m)
            ),
            AwsError::NoRegion(_) => "No AWS region is set. Set AWS_REGION (or a profile's \
                region) or start the server with --aws-region, e.g. --aws-region eu-west-1."
                .to_string(),
            AwsError::AccessDenied(m) => format!(
                "AWS denied access ({}): grant the server's AWS principal \
                 cloudformation:DescribeStacks, DescribeStackEvents, ListStackResources and \
                 GetTemplate.",
                leading_code(m)
            ),
            AwsError::NotFound(_) => "The stack does not exist; check its name and region \
                (stack:<region>:<name> for another region)."
                .to_string(),
            AwsError::Validation(_) => "CloudFormation refused the request as invalid \
                (ValidationError)."
                .to_string(),
            AwsError::AlreadyExists(_) => "A stack of that name already exists.".to_string(),
            AwsError::Other(m) => match leading_code(m) {
                code if code.is_empty() => "The AWS request failed; the server's log has the \
                    details."
                    .to_string(),
                code => {
                    format!("The AWS request failed ({code}); the server's log has the details.")
                }
            },
        };
        m.chars().take(MAX_PROBLEM_MESSAGE).collect()
    }
}

/// Error codes of credentials AWS refused.
const BAD_CREDENTIALS: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "InvalidSignatureException",
];

/// Error codes of a principal without permission.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthorizationError",
    "NotAuthorized",
];

/// Sorts an SDK error. Never panics, whatever the answer looked like.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let context = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(se) => {
            // Any 5xx is the service's trouble, whatever its code: retried.
            let server_error = se.raw().status().is_server_error();
            let e = se.err();
            let code = e.code().unwrap_or_default();
            let message = e.message().unwrap_or_default().to_string();
            let text = if message.is_empty() {
                context.clone()
            } else {
                message.clone()
            };
            if matches!(
                code,
                "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "TooManyRequestsException"
            ) || message.contains("Rate exceeded")
            {
                AwsError::Throttled(text)
            } else if code == "ValidationError" && message.contains("does not exist") {
                AwsError::NotFound(text)
            } else if code == "ValidationError" {
                AwsError::Validation(text)
            } else if code == "AlreadyExistsException" {
                AwsError::AlreadyExists(text)
            } else if BAD_CREDENTIALS.contains(&code) {
                AwsError::BadCredentials(format!("{code}: {text}"))
            } else if DENIED.contains(&code) {
                AwsError::AccessDenied(format!("{code}: {text}"))
            } else if matches!(
                code,
                "InternalFailure" | "ServiceUnavailable" | "InternalError"
            ) || code.is_empty()
                || server_error
            {
                AwsError::Transient(context)
            } else {
                AwsError::Other(format!("{code}: {text}"))
            }
        }
        // The SDK reports a missing identity or region before anything is sent,
        // as a construction or dispatch failure whose chain names it.
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_)
            if mentions_credentials(&context) =>
        {
            AwsError::NoCredentials(context)
        }
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_)
            if context.to_ascii_lowercase().contains("region") =>
        {
            AwsError::NoRegion(context)
        }
        SdkError::ConstructionFailure(_) => AwsError::Other(context),
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => AwsError::Network(context),
        // Answers that could not be parsed (a proxy's HTML 502...).
        _ => AwsError::Transient(context),
    }
}

/// Whether an SDK error chain is about loading credentials.
fn mentions_credentials(context: &str) -> bool {
    let c = context.to_ascii_lowercase();
    c.contains("credential") || c.contains("identity")
}

/// What `DescribeStacks` says about one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackInfo {
    pub arn: String,
    pub name: String,
    pub status: String,
    pub status_reason: String,
    pub outputs: Vec<StackOutput>,
    /// `LastOperations[].OperationId`.
    pub operation_ids: Vec<String>,
    /// `LastOperations[].OperationType` of each id above (same order).
    pub operation_types: Vec<String>,
    pub creation_time: Option<DateTime<Utc>>,
    pub last_updated_time: Option<DateTime<Utc>>,
}

/// One page of `DescribeStackEvents`.
#[derive(Debug, Clone)]
pub struct EventsPage {
    /// Newest first.
    pub events: Vec<Event>,
    pub next_token: Option<String>,
}

/// The CloudFormation calls of the tracker.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    calls: CallCounter,
    call_timeout: Duration,
    limiter: Option<Arc<dyn CallLimiter>>,
    /// The account, once a stack ARN revealed it (shared by clones).
    account: Arc<OnceLock<String>>,
}

fn to_utc(t: Option<&aws_sdk_cloudformation::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
}

impl Api {
    pub fn new(client: Client, calls: CallCounter, call_timeout: Duration) -> Self {
        Self {
            client,
            calls,
            call_timeout,
            limiter: None,
            account: Arc::default(),
        }
    }

    /// Makes every request wait for `limiter` first (`None`: no limit).
    pub fn with_limiter(mut self, limiter: Option<Arc<dyn CallLimiter>>) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// The budget the calls are charged to: the account once known (from `target`
    /// when it is an ARN, else from an ARN seen before), and the client's region.
    pub fn scope(&self, target: &str) -> CallScope {
        if let Some(account) = arn_account(target) {
            let _ = self.account.set(account.to_owned());
        }
        CallScope {
            account: self.account.get().cloned(),
            region: self
                .client
                .config()
                .region()
                .map_or_else(String::new, |r| r.to_string()),
        }
    }

    /// Waits for the limiter (if any) before a request about `target`.
    pub(crate) async fn permit(&self, target: &str) {
        if let Some(limiter) = &self.limiter {
            let scope = self.scope(target);
            limiter.acquire(&scope, target).await;
        }
    }

    /// Per-call config: no SDK retries (the tracker backs off itself) and a timeout
    /// per attempt so a hung connection cannot stall a poller.
    pub(crate) fn overrides(&self) -> aws_sdk_cloudformation::config::Builder {
        aws_sdk_cloudformation::config::Builder::default()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(self.call_timeout)
                    .build(),
            )
    }

    pub(crate) fn result<T, E>(
        &self,
        r: Result<T, SdkError<E, HttpResponse>>,
        api: CallApi,
        target: &str,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.calls.sent(api);
        r.map_err(|err| {
            let e = classify(&err);
            self.calls.record(api, &e);
            tracing::debug!(call = api.name(), stack = target, error = %DisplayErrorContext(&err), "AWS call failed");
            e
        })
    }

    /// `DescribeStacks` for one stack (by name or ARN).
    pub async fn describe_stack(&self, stack: &str) -> Result<StackInfo, AwsError> {
        self.permit(stack).await;
        let r = self
            .client
            .describe_stacks()
            .stack_name(stack)
            .customize()
            .config_override(self.overrides())
            .send()
            .await;
        let out = self.result(r, CallApi::DescribeStacks, stack)?;
        if let Some(account) = out
            .stacks()
            .first()
            .and_then(|s| s.stack_id())
            .and_then(arn_account)
        {
            let _ = self.account.set(account.to_owned());
        }
        let Some(s) = out.stacks().first() else {
            return Err(AwsError::NotFound(format!(
                "Stack with id {stack} does not exist"
            )));
        };
        Ok(StackInfo {
            arn: s.stack_id().unwrap_or(stack).to_string(),
            name: s.stack_name().unwrap_or(stack).to_string(),
            status: s
                .stack_status()
                .map(|x| x.as_str().to_string())
                .unwrap_or_default(),
            status_reason: s.stack_status_reason().unwrap_or_default().to_string(),
            outputs: s
                .outputs()
                .iter()
                .map(|o| StackOutput {
                    key: o.output_key().unwrap_or_default().to_string(),
                    value: o.output_value().unwrap_or_default().to_string(),
                    description: o.description().unwrap_or_default().to_string(),
                })
                .collect(),
            operation_ids: s
                .last_operations()
                .iter()
                .filter_map(|o| o.operation_id().map(str::to_string))
                .collect(),
            operation_types: s
                .last_operations()
                .iter()
                .filter(|o| o.operation_id().is_some())
                .map(|o| o.operation_type().map_or("", |t| t.as_str()).to_string())
                .collect(),
            creation_time: to_utc(s.creation_time()),
            last_updated_time: to_utc(s.last_updated_time()),
        })
    }

    /// One page of `DescribeStackEvents` (newest first).
    pub async fn events_page(
        &self,
        stack_arn: &str,
        token: Option<String>,
    ) -> Result<EventsPage, AwsError> {
        self.permit(stack_arn).await;
        let r = self
            .client
            .describe_stack_events()
            .stack_name(stack_arn)
            .set_next_token(token)
            .customize()
            .config_override(self.overrides())
            .send()
            .await;
        let out = self.result(r, CallApi::DescribeStackEvents, stack_arn)?;
        let mut events = Vec::with_capacity(out.stack_events().len());
        for e in out.stack_events() {
            match Event::from_sdk(e) {
                Some(e) => events.push(e),
                None => tracing::warn!(stack = stack_arn, "stack event without EventId ignored"),
            }
        }
        Ok(EventsPage {
            events,
            next_token: out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
    }

    /// All resources of the stack (`ListStackResources`, every page).
    pub async fn list_resources(&self, stack_arn: &str) -> Result<Vec<ResourceState>, AwsError> {
        let mut token: Option<String> = None;
        let mut all = Vec::new();
        // Bounded: CloudFormation stacks hold at most a few thousand resources.
        for _ in 0..1000 {
            self.permit(stack_arn).await;
            let r = self
                .client
                .list_stack_resources()
                .stack_name(stack_arn)
                .set_next_token(token.take())
                .customize()
                .config_override(self.overrides())
                .send()
                .await;
            let out = self.result(r, CallApi::ListStackResources, stack_arn)?;
            for s in out.stack_resource_summaries() {
                all.push(ResourceState {
                    logical_id: s.logical_resource_id().unwrap_or_default().to_string(),
                    resource_type: s.resource_type().unwrap_or_default().to_string(),
                    status: s
                        .resource_status()
                        .map(|x| x.as_str().to_string())
                        .unwrap_or_default(),
                    physical_id: s.physical_resource_id().unwrap_or_default().to_string(),
                    reason: s.resource_status_reason().unwrap_or_default().to_string(),
                    updated: None,
                });
            }
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(all)
    }

    /// Number of resources in the stack's template (`GetTemplate`, processed stage);
    /// `None` when the body cannot be read.
    pub async fn template_resources(&self, stack_arn: &str) -> Result<Option<usize>, AwsError> {
        self.permit(stack_arn).await;
        let r = self
            .client
            .get_template()
            .stack_name(stack_arn)
            .template_stage(aws_sdk_cloudformation::types::TemplateStage::Processed)
            .customize()
            .config_override(self.overrides())
            .send()
            .await;
        let out = self.result(r, CallApi::GetTemplate, stack_arn)?;
        Ok(out
            .template_body()
            .and_then(crate::template::count_resources))
    }

    /// Number of resource types in the stack's template (`GetTemplateSummary`): a
    /// lower bound of the resource count, used when the template cannot be read.
    pub async fn template_resource_count(&self, stack_arn: &str) -> Result<usize, AwsError> {
        self.permit(stack_arn).await;
        let r = self
            .client
            .get_template_summary()
            .stack_name(stack_arn)
            .customize()
            .config_override(self.overrides())
            .send()
            .await;
        let out = self.result(r, CallApi::GetTemplateSummary, stack_arn)?;
        Ok(out.resource_types().len())
    }

    /// The client, for calls outside the tracker (`create_stack`).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_of_an_arn() {
        assert_eq!(
            arn_account("arn:aws:cloudformation:eu-west-1:123456789012:stack/s/0000"),
            Some("123456789012")
        );
        assert_eq!(
            arn_account("arn:aws-cn:cloudformation:cn-north-1:000011112222:stack/s/x"),
            Some("000011112222")
        );
        for not in [
            "my-stack",
            "arn:aws:cloudformation:eu-west-1::stack/s",
            "arn:x",
        ] {
            assert_eq!(arn_account(not), None, "{not}");
        }
    }

    #[test]
    fn calls_are_counted_per_api() {
        let c = CallCounter::new();
        c.sent(CallApi::DescribeStacks);
        c.sent(CallApi::DescribeStackEvents);
        c.sent(CallApi::DescribeStackEvents);
        c.record(
            CallApi::DescribeStackEvents,
            &AwsError::Throttled("x".into()),
        );
        assert_eq!(c.total(), 3);
        assert_eq!(c.sent_to(CallApi::DescribeStackEvents), 2);
        assert_eq!(c.throttled_by(CallApi::DescribeStackEvents), 1);
        assert_eq!(c.throttled_by(CallApi::DescribeStacks), 0);
        assert_eq!(c.throttled(), 1);
    }
}
