//! Amazon SNS messages delivered to an HTTPS subscription, verified: the credential
//! of `POST /v1/ingest/sns` ([`crate::http::ingest_sns`]), since SNS cannot send a
//! bearer key.
//!
//! Data flow of [`Verifier::verify`], cheapest refusal first: the body (JSON, even
//! though SNS labels it `text/plain`) → [`SnsMessage`] → its `TopicArn` must be in
//! `--sns-topic-arn` → its `Timestamp` must be at most [`MAX_AGE`] old (SNS stops
//! retrying an HTTP/S delivery within an hour, so anything older is a replay) →
//! `SigningCertURL` must pass [`cert::cert_url`] → the certificate (from
//! [`cert::CertCache`], else fetched) → the signature ([`verify::check`]) → for a
//! confirmation, `SubscribeURL` must pass [`cert::sns_url`] too. Only a verified
//! message reaches the handler, which wakes a poller ([`cfn`] reads the stack out
//! of the notification) or confirms the subscription ([`Verifier::confirm`]).
//!
//! # Layout
//! - [`cert`]: the SNS host rule for URLs, the fetcher seam, the certificate cache.
//! - [`verify`]: the string to sign and the RSA signature check.
//! - [`cfn`]: the `Key='value'` lines of a CloudFormation stack notification.

pub mod cert;
pub mod cfn;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use url::Url;

use cert::{CertCache, Fetcher};

/// Older messages are refused as replays.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// One SNS message as delivered over HTTP(S) (unknown fields ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    /// Absent (or `null`) when the publisher set none.
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// Confirmations only.
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    /// Confirmations only.
    #[serde(default)]
    pub token: Option<String>,
}

/// The message types SNS sends to an HTTP(S) endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl SnsMessage {
    pub fn parse(body: &[u8]) -> Result<SnsMessage, Rejection> {
        serde_json::from_slice(body)
            .map_err(|e| Rejection::Invalid(format!("Not an SNS message: {e}")))
    }

    pub fn kind(&self) -> Result<Kind, Rejection> {
        match self.kind.as_str() {
            "Notification" => Ok(Kind::Notification),
            "SubscriptionConfirmation" => Ok(Kind::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Ok(Kind::UnsubscribeConfirmation),
            other => Err(Rejection::Invalid(format!(
                "`Type` {other:?} is not an SNS message type (Notification, \
                 SubscriptionConfirmation, UnsubscribeConfirmation)"
            ))),
        }
    }
}

/// Why a message is not accepted; the handler maps each to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed: 400 (SNS does not retry 4xx).
    #[error("{0}")]
    Invalid(String),
    /// Not from an allowed topic, not signed by SNS, or a replay: 403.
    #[error("{0}")]
    Refused(String),
    /// The certificate or `SubscribeURL` could not be fetched: 503 (SNS retries).
    #[error("{0}")]
    Unavailable(String),
}

/// A message whose signature verified.
#[derive(Debug)]
pub struct Verified {
    pub kind: Kind,
    pub message: SnsMessage,
    /// Confirmations: the `SubscribeURL`, checked against the SNS host rule.
    pub subscribe_url: Option<Url>,
}

/// Verifies messages for the allowed topics (see the module docs).
pub struct Verifier {
    topics: Vec<String>,
    fetcher: Arc<dyn Fetcher>,
    certs: CertCache,
}

impl Verifier {
    pub fn new(topics: Vec<String>, fetcher: Arc<dyn Fetcher>) -> Verifier {
        Verifier {
            topics,
            fetcher,
            certs: CertCache::default(),
        }
    }

    /// Reads and verifies one delivered body, as of `now`.
    pub async fn verify(&self, body: &[u8], now: DateTime<Utc>) -> Result<Verified, Rejection> {
        let message = SnsMessage::parse(body)?;
        let kind = message.kind()?;
        if !self.topics.contains(&message.topic_arn) {
            return Err(Rejection::Refused(format!(
                "TopicArn {:?} is not allowed here (--sns-topic-arn)",
                message.topic_arn
            )));
        }
        let sent = DateTime::parse_from_rfc3339(&message.timestamp).map_err(|e| {
            Rejection::Invalid(format!(
                "`Timestamp` {:?} is not an ISO 8601 time: {e}",
                message.timestamp
            ))
        })?;
        let age = now.signed_duration_since(sent);
        if age.num_seconds() > MAX_AGE.as_secs() as i64 {
            return Err(Rejection::Refused(format!(
                "the message is {} s old (Timestamp {}); messages older than {} s are refused as replays",
                age.num_seconds(),
                message.timestamp,
                MAX_AGE.as_secs()
            )));
        }
        let cert_url = cert::cert_url(&message.signing_cert_url).map_err(Rejection::Refused)?;
        // Checked before the signature so that a malformed message is a 400.
        verify::string_to_sign(&message)?;
        let der = self.certificate(&cert_url).await?;
        verify::check(&message, &der)?;
        let subscribe_url = match (kind, &message.subscribe_url) {
            (Kind::Notification, _) | (_, None) => None,
            (_, Some(raw)) => Some(cert::sns_url(raw, "SubscribeURL").map_err(Rejection::Refused)?),
        };
        Ok(Verified {
            kind,
            message,
            subscribe_url,
        })
    }

    /// The certificate at `url` (DER), from the cache or fetched.
    async fn certificate(&self, url: &Url) -> Result<Arc<Vec<u8>>, Rejection> {
        if let Some(der) = self.certs.get(url) {
            return Ok(der);
        }
        let pem = self.fetcher.get(url).await.map_err(|e| {
            Rejection::Unavailable(format!("cannot fetch the signing certificate: {e}"))
        })?;
        let der = CertificateDer::from_pem_slice(&pem).map_err(|e| {
            Rejection::Refused(format!(
                "SigningCertURL {url} did not return a PEM certificate: {e}"
            ))
        })?;
        let der = Arc::new(der.as_ref().to_vec());
        self.certs.insert(url, der.clone());
        Ok(der)
    }

    /// Confirms a subscription: GET of its (checked) `SubscribeURL`.
    pub async fn confirm(&self, subscribe_url: &Url) -> Result<(), Rejection> {
        self.fetcher
            .get(subscribe_url)
            .await
            .map(|_| ())
            .map_err(|e| Rejection::Unavailable(format!("cannot confirm the subscription: {e}")))
    }

    /// Certificates cached (for tests).
    pub fn cached_certificates(&self) -> usize {
        self.certs.len()
    }
}

#[cfg(test)]
mod tests;
