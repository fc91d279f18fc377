//! The signature of an SNS message: the string AWS signs, and the RSA check of it
//! against the certificate from `SigningCertURL`.
//!
//! String to sign ("Verifying the signatures of Amazon SNS messages", SNS developer
//! guide): `"<Key>\n<Value>\n"` for each key in this order, with the JSON strings
//! unescaped —
//! `Notification`: Message, MessageId, Subject (only when present), Timestamp,
//! TopicArn, Type; `SubscriptionConfirmation` / `UnsubscribeConfirmation`:
//! Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type.
//! `SignatureVersion` 1 is RSA PKCS#1 v1.5 with SHA-1, 2 the same with SHA-256;
//! `Signature` is base64. The certificate is parsed by webpki (already in the
//! TLS stack) and the signature checked by aws-lc-rs.

use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY};
use base64::Engine;
use rustls::pki_types::{
    alg_id, AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
};

use super::{Kind, Rejection, SnsMessage};

/// The string SNS signed for `m`; `Err` names a field a confirmation lacks.
pub fn string_to_sign(m: &SnsMessage) -> Result<String, Rejection> {
    let mut out = String::new();
    let mut field = |key: &str, value: &str| {
        out.push_str(key);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    };
    let missing =
        |name: &str| Rejection::Invalid(format!("{} without `{name}`: not an SNS message", m.kind));
    field("Message", &m.message);
    field("MessageId", &m.message_id);
    match m.kind()? {
        Kind::Notification => {
            if let Some(subject) = &m.subject {
                field("Subject", subject);
            }
        }
        Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
            field(
                "SubscribeURL",
                m.subscribe_url
                    .as_deref()
                    .ok_or_else(|| missing("SubscribeURL"))?,
            );
        }
    }
    field("Timestamp", &m.timestamp);
    if m.kind()? != Kind::Notification {
        field("Token", m.token.as_deref().ok_or_else(|| missing("Token"))?);
    }
    field("TopicArn", &m.topic_arn);
    field("Type", &m.kind);
    Ok(out)
}

/// RSA PKCS#1 v1.5 with SHA-1 (SignatureVersion 1), which webpki does not offer:
/// webpki parses the certificate and hands over the RSA key, aws-lc-rs checks.
#[derive(Debug)]
struct RsaSha1;

/// sha1WithRSAEncryption (1.2.840.113549.1.1.5) with NULL parameters, without the
/// outer SEQUENCE (the form `alg_id` uses).
const RSA_PKCS1_SHA1: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
]);

impl SignatureVerificationAlgorithm for RsaSha1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        RSA_PKCS1_SHA1
    }
}

/// Checks `m`'s signature with the certificate `cert_der`.
pub fn check(m: &SnsMessage, cert_der: &[u8]) -> Result<(), Rejection> {
    let alg: &dyn SignatureVerificationAlgorithm = match m.signature_version.as_str() {
        "1" => &RsaSha1,
        "2" => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        other => {
            return Err(Rejection::Invalid(format!(
                "SignatureVersion {other:?} is not supported (1 or 2)"
            )))
        }
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(m.signature.trim())
        .map_err(|e| Rejection::Invalid(format!("`Signature` is not base64: {e}")))?;
    let sts = string_to_sign(m)?;
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| {
        Rejection::Refused(format!(
            "the certificate at SigningCertURL does not parse: {e}"
        ))
    })?;
    cert.verify_signature(alg, sts.as_bytes(), &signature)
        .map_err(|_| {
            Rejection::Refused(format!(
                "the signature does not verify (SignatureVersion {}, certificate {})",
                m.signature_version, m.signing_cert_url
            ))
        })
}
