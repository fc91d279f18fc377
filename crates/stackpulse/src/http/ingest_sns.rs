//! `POST /v1/ingest/sns`: push ingest from the SNS topic CloudFormation stacks
//! notify (`NotificationARNs`), through an HTTPS subscription.
//!
//! SNS cannot send a bearer key: the credential is the message's signature and its
//! `TopicArn` in `--sns-topic-arn` ([`crate::sns::Verifier`]). SNS posts JSON as
//! `text/plain`, so this route has no JSON content-type layer (a browser's simple
//! request gets no further than the signature check). Without `--sns-topic-arn`
//! the endpoint is off and answers 404 saying so.
//!
//! After verification, by `Type`:
//! - `Notification`: the `Message` is read as a CloudFormation stack notification
//!   ([`crate::sns::cfn`]); its `StackId` names the stack whose poller is woken,
//!   exactly as `POST /v1/ingest/eventbridge` does ([`super::ingest::wake_stack`]:
//!   `--stack-allow`, 202 `{"stack","region","topic"}`, 503 when the backplane is
//!   down). Another message on the topic: 200 `{"ignored": reason}`.
//! - `SubscriptionConfirmation`: GET of `SubscribeURL` (SNS host rule), then
//!   200 `{"confirmed": topic}`.
//! - `UnsubscribeConfirmation`: logged, 200 `{"ignored": reason}`.
//!
//! Refusals: 400 malformed, 403 not allowed / not signed by SNS / replayed (SNS
//! does not retry 4xx), 503 when a certificate or `SubscribeURL` cannot be fetched
//! (SNS retries 5xx). Metric: `stackpulse_ingest_sns_messages_total{result}`,
//! `result` one of `woken`, `ignored`, `confirmed`, `invalid`, `refused`,
//! `unavailable`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::AppError;
use super::ingest::{ignored, stack_of_arn, wake_stack};
use crate::app::AppState;
use crate::config::sns::SnsConfig;
use crate::sns::cert::{Fetcher, HttpFetcher};
use crate::sns::cfn::CfnNotification;
use crate::sns::{Kind, Rejection, Verified, Verifier};
use crate::tracking::valid_stack_name;

/// The endpoint's state: the verifier when the endpoint is on.
#[derive(Clone)]
pub struct SnsIngest {
    verifier: Result<Arc<Verifier>, String>,
}

impl SnsIngest {
    /// From the resolved flags: certificates and confirmations over HTTP(S).
    pub fn new(config: &SnsConfig) -> SnsIngest {
        let verifier = if config.topic_arns.is_empty() {
            Err(
                "SNS ingest is off: start the server with --sns-topic-arn <topic ARN> \
                 (STACKPULSE_SNS_TOPIC_ARNS) to accept that topic's notifications"
                    .to_owned(),
            )
        } else {
            HttpFetcher::new(config.endpoint_url.clone()).map(|f| {
                let fetcher: Arc<dyn Fetcher> = Arc::new(f);
                Arc::new(Verifier::new(config.topic_arns.clone(), fetcher))
            })
        };
        SnsIngest { verifier }
    }
}

fn count(result: &'static str) {
    metrics::counter!("stackpulse_ingest_sns_messages_total", "result" => result).increment(1);
}

fn refusal(rejection: Rejection) -> Response {
    let (status, result) = match &rejection {
        Rejection::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        Rejection::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
        Rejection::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    count(result);
    if status.is_server_error() {
        tracing::warn!(reason = %rejection, "SNS ingest: cannot verify or confirm");
    } else {
        tracing::debug!(reason = %rejection, "SNS ingest: refused");
    }
    AppError::new(status, rejection.to_string()).into_response()
}

pub async fn sns(
    State(state): State<AppState>,
    Extension(ingest): Extension<SnsIngest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let verifier = match &ingest.verifier {
        Ok(v) => v,
        Err(off) => {
            count("refused");
            return AppError::new(StatusCode::NOT_FOUND, off.clone()).into_response();
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            count("invalid");
            return AppError::new(
                rejection.status(),
                format!("Invalid body: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    let verified = match verifier.verify(&body, chrono::Utc::now()).await {
        Ok(v) => v,
        Err(rejection) => return refusal(rejection),
    };
    // SNS names the type in a header too; a disagreement is not SNS.
    if let Some(header) = headers.get("x-amz-sns-message-type") {
        if header.as_bytes() != verified.message.kind.as_bytes() {
            return refusal(Rejection::Invalid(format!(
                "x-amz-sns-message-type {header:?} disagrees with the body's Type {:?}",
                verified.message.kind
            )));
        }
    }
    match verified.kind {
        Kind::Notification => notification(&state, &verified).await,
        Kind::SubscriptionConfirmation => {
            let Some(url) = &verified.subscribe_url else {
                return refusal(Rejection::Invalid(
                    "SubscriptionConfirmation without SubscribeURL".into(),
                ));
            };
            if let Err(rejection) = verifier.confirm(url).await {
                return refusal(rejection);
            }
            count("confirmed");
            tracing::info!(topic = %verified.message.topic_arn, "SNS subscription confirmed");
            (
                StatusCode::OK,
                Json(serde_json::json!({ "confirmed": verified.message.topic_arn })),
            )
                .into_response()
        }
        Kind::UnsubscribeConfirmation => {
            count("ignored");
            tracing::info!(topic = %verified.message.topic_arn, "SNS subscription removed");
            ignored(format!(
                "unsubscribed from {} (logged)",
                verified.message.topic_arn
            ))
        }
    }
}

/// A verified notification: the stack it names, woken.
async fn notification(state: &AppState, verified: &Verified) -> Response {
    let cfn = CfnNotification::parse(&verified.message.message);
    let Some(stack_id) = cfn.get("StackId") else {
        count("ignored");
        return ignored(
            "the message is not a CloudFormation stack notification (no StackId)".into(),
        );
    };
    let Some((region, stack)) = stack_of_arn(stack_id) else {
        return refusal(Rejection::Invalid(format!(
            "StackId {stack_id:?} is not a stack ARN \
             (arn:aws:cloudformation:<region>:<account>:stack/<name>/<id>)"
        )));
    };
    if let Some(name) = cfn.get("StackName") {
        if name != stack || !valid_stack_name(name) {
            return refusal(Rejection::Invalid(format!(
                "StackName {name:?} is not the stack of StackId {stack_id:?}"
            )));
        }
    }
    wake_stack(state, region.to_owned(), stack.to_owned(), count).await
}

/// Declares the SNS ingest metric.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "stackpulse_ingest_sns_messages_total",
        "Messages received on POST /v1/ingest/sns, by result \
         (woken, ignored, confirmed, invalid, refused, unavailable)"
    );
}
