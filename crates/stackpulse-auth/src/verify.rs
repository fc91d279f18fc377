//! Token verification.
//!
//! The order matters: cheap structural checks first (size, header, algorithm,
//! `kid`), then the key lookup (which may fetch), then the signature and time
//! claims, then the Cognito rules. Every failure is an [`AuthError`]; its text is
//! for logs and metrics only: clients always get "Unauthorized: Invalid token".

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::keys::{KeyFetcher, KeyStore};
use crate::user::User;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted (RS256 only)")]
    Algorithm(String),
    #[error("token header has no kid")]
    MissingKid,
    #[error("unknown signing key {0}")]
    UnknownKid(String),
    #[error("invalid signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("token is not for an allowed client")]
    Audience,
    #[error("token_use {0} is not accepted")]
    TokenUse(String),
    #[error("token has no subject")]
    Subject,
    #[error("invalid claims: {0}")]
    Claims(String),
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::MissingKid => "missing_kid",
            AuthError::UnknownKid(_) => "unknown_kid",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::TokenUse(_) => "token_use",
            AuthError::Subject => "subject",
            AuthError::Claims(_) => "claims",
        }
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: User,
    /// `exp` plus the leeway, in Unix seconds: the first second at which this token
    /// is refused, so the connection must re-authenticate before it.
    pub expires_at: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, allowed: &[String]) -> bool {
        match self {
            Audience::One(a) => allowed.contains(a),
            Audience::Many(list) => list.iter().any(|a| allowed.contains(a)),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    aud: Option<Audience>,
    client_id: Option<String>,
    token_use: Option<String>,
    #[serde(rename = "cognito:username")]
    cognito_username: Option<String>,
    username: Option<String>,
    preferred_username: Option<String>,
    email: Option<String>,
    #[serde(rename = "cognito:groups", default)]
    cognito_groups: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

pub struct Verifier {
    config: AuthConfig,
    keys: KeyStore,
    validation: Validation,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(config: AuthConfig, fetcher: Arc<dyn KeyFetcher>) -> Verifier {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Audience depends on token_use; checked below.
        validation.validate_aud = false;
        Verifier {
            keys: KeyStore::new(fetcher, config.unknown_kid_interval),
            config,
            validation,
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Verifies a raw token (no `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed("not three dot-separated parts".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::MissingKid)?;
        let key = self
            .keys
            .key(&kid)
            .await
            .ok_or_else(|| AuthError::UnknownKid(kid.chars().take(64).collect()))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(map_jwt_error)?;
        let claims = data.claims;
        let allowed = &self.config.client_ids;
        match claims.token_use.as_deref() {
            Some("id") => {
                if !claims.aud.as_ref().is_some_and(|a| a.contains_any(allowed)) {
                    return Err(AuthError::Audience);
                }
            }
            Some("access") => {
                if !claims
                    .client_id
                    .as_ref()
                    .is_some_and(|c| allowed.contains(c))
                {
                    return Err(AuthError::Audience);
                }
            }
            // A generic OIDC token (no token_use): its audience must be ours.
            None => {
                if !claims.aud.as_ref().is_some_and(|a| a.contains_any(allowed)) {
                    return Err(AuthError::Audience);
                }
            }
            Some(other) => return Err(AuthError::TokenUse(other.chars().take(32).collect())),
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Subject)?;
        let username = claims
            .cognito_username
            .or(claims.username)
            .or(claims.preferred_username)
            .unwrap_or_else(|| sub.clone());
        let mut groups = claims.cognito_groups;
        groups.extend(claims.groups);
        // One rule for "expired", shared with the connection's expiry timer: the
        // token is good while now < exp + leeway (RFC 7519: "on or after" exp is
        // expired). jsonwebtoken alone would still accept it at exactly exp + leeway.
        let expires_at = claims.exp.saturating_add(self.validation.leeway);
        if now_secs() >= expires_at {
            return Err(AuthError::Expired);
        }
        Ok(Verified {
            user: User {
                sub,
                username,
                email: claims.email,
                groups,
            },
            expires_at,
        })
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm("mismatch".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("missing {c}")),
        ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::Base64(_)
        | ErrorKind::InvalidToken => AuthError::Malformed(e.to_string()),
        _ => AuthError::Claims(e.to_string()),
    }
}
