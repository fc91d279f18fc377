//! Request authentication and topic authorization for every endpoint.
//!
//! With auth configured, a request's token comes from `?token=` (browsers cannot
//! set headers on a WebSocket) or `Authorization: Bearer`; it is verified by the
//! `stackpulse-auth` verifier and becomes a [`Verified`] user. Without auth, every
//! request is the anonymous user and every topic is visible (the server then
//! listens on loopback only). Tokens are never logged; failures are counted by
//! reason in `stackpulse_auth_failures_total`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use stackpulse_auth::{Acl, AuthError, Policy, User, Verified, Verifier};

use super::jwks_http::HttpKeyFetcher;
use super::limits::Admission;
use super::{bearer, PublisherKeys};
use crate::config::auth::{AdmissionLimits, AuthSettings};

/// Why a request was not authenticated; each is a 401 with the contract's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    Missing,
    Invalid,
}

impl Unauthorized {
    pub fn message(&self) -> &'static str {
        match self {
            Unauthorized::Missing => "Unauthorized: Missing token",
            Unauthorized::Invalid => "Unauthorized: Invalid token",
        }
    }
}

struct Enabled {
    verifier: Arc<Verifier>,
    policy: Policy,
    publisher_group: String,
}

pub struct Gate {
    enabled: Option<Enabled>,
    pub admission: Admission,
}

/// The subprotocol a browser offers beside [`BEARER_SUBPROTOCOL_PREFIX`]`<token>`
/// (browsers cannot set `Authorization` on a WebSocket); the server selects it.
pub const SUBPROTOCOL: &str = "stackpulse.v1";
/// Kubernetes' convention for a bearer token in `Sec-WebSocket-Protocol`: this
/// prefix, then the token in unpadded base64url.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// The token of a request: `?token=` first, then `Authorization: Bearer`, then a
/// `Sec-WebSocket-Protocol` entry [`BEARER_SUBPROTOCOL_PREFIX`]`<base64url token>`.
pub fn request_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k == "token" && !v.is_empty() {
                return Some(v.into_owned());
            }
        }
    }
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Some(token.to_owned());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        // An entry that does not decode is a token that cannot verify: keep it
        // so the refusal says "Invalid token", not "Missing token".
        .map(|b64| base64url_text(b64).unwrap_or_else(|| b64.to_owned()))
}

/// Decodes unpadded (or padded) base64url into UTF-8 text.
fn base64url_text(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

impl Gate {
    /// Builds the gate; with auth, the verifier's first JWKS fetch and its
    /// scheduled refresh start in the background.
    pub fn new(settings: Option<AuthSettings>, limits: AdmissionLimits) -> Result<Gate, String> {
        let enabled = match settings {
            None => None,
            Some(s) => {
                let fetcher =
                    HttpKeyFetcher::new(s.verifier.jwks_url.clone()).map_err(|e| e.to_string())?;
                let verifier = Arc::new(Verifier::new(s.verifier, Arc::new(fetcher)));
                spawn_refresh(Arc::downgrade(&verifier));
                Some(Enabled {
                    verifier,
                    policy: s.policy,
                    publisher_group: s.publisher_group,
                })
            }
        };
        Ok(Gate {
            enabled,
            admission: Admission::new(limits),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    /// Authenticates a request's token (anonymous when auth is off).
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Verified, Unauthorized> {
        let Some(e) = &self.enabled else {
            return Ok(Verified {
                user: User::anonymous(),
                expires_at: u64::MAX,
            });
        };
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            metrics::counter!("stackpulse_auth_failures_total", "reason" => "missing").increment(1);
            return Err(Unauthorized::Missing);
        };
        e.verifier.verify(token).await.map_err(|err: AuthError| {
            metrics::counter!("stackpulse_auth_failures_total", "reason" => err.label())
                .increment(1);
            tracing::debug!(reason = %err, "token refused");
            Unauthorized::Invalid
        })
    }

    /// Whether `user` may subscribe to (or read) a topic with this ACL.
    pub fn may_subscribe(&self, user: &User, acl: Option<&Acl>) -> bool {
        match &self.enabled {
            None => true,
            Some(e) => e.policy.may_subscribe(user, acl),
        }
    }

    /// Whether `user` is in the admin group (nobody is without auth).
    pub fn is_admin(&self, user: &User) -> bool {
        self.enabled
            .as_ref()
            .is_some_and(|e| user.in_group(&e.policy.admin_group))
    }

    /// Checks a publish request's credential: a publisher key, or (with auth) a
    /// user token whose user is in the publisher group.
    pub async fn authorize_publisher(
        &self,
        headers: &HeaderMap,
        keys: &PublisherKeys,
    ) -> Result<(), (StatusCode, String)> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        self.authorize_publisher_token(token, keys).await
    }

    /// [`Gate::authorize_publisher`] for a credential already taken from its
    /// request (GraphQL sends it raw, as `x-api-key`, or in a WebSocket message).
    pub async fn authorize_publisher_token(
        &self,
        token: Option<&str>,
        keys: &PublisherKeys,
    ) -> Result<(), (StatusCode, String)> {
        let unauthorized = |m: &str| (StatusCode::UNAUTHORIZED, m.to_owned());
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "Unauthorized: Missing publisher key (send Authorization: Bearer <key>)",
            ));
        };
        if keys.matches(token) {
            return Ok(());
        }
        match &self.enabled {
            Some(e) if looks_like_jwt(token) => {
                let verified = self
                    .authenticate(Some(token))
                    .await
                    .map_err(|u| unauthorized(u.message()))?;
                if verified.user.in_group(&e.publisher_group) || verified.user.in_group(&e.policy.admin_group) {
                    Ok(())
                } else {
                    Err((
                        StatusCode::FORBIDDEN,
                        format!(
                            "Forbidden: user {} is not in the publisher group {:?}",
                            verified.user.username, e.publisher_group
                        ),
                    ))
                }
            }
            None if keys.is_empty() => Err(unauthorized(
                "Unauthorized: no publisher key is configured on this server (start it with --publisher-key KEY or STACKPULSE_PUBLISHER_KEYS)",
            )),
            _ => Err(unauthorized("Unauthorized: Invalid publisher key")),
        }
    }
}

impl Gate {
    /// Checks a `POST /canvas/deploy` credential: a publisher key, or (with auth)
    /// a user in `deployer_group` or the admin group. Without auth the local
    /// anonymous user deploys: the server then answers loopback requests only, and
    /// the HTTP edge refuses foreign `Host`s, foreign `Origin`s and non-JSON bodies.
    pub async fn authorize_deployer(
        &self,
        token: Option<&str>,
        keys: &PublisherKeys,
        deployer_group: &str,
    ) -> Result<(), (StatusCode, String)> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        if token.is_some_and(|t| keys.matches(t)) {
            return Ok(());
        }
        let Some(e) = &self.enabled else {
            return Ok(());
        };
        let verified = self
            .authenticate(token)
            .await
            .map_err(|u| (StatusCode::UNAUTHORIZED, u.message().to_owned()))?;
        let user = &verified.user;
        if user.in_group(deployer_group) || user.in_group(&e.policy.admin_group) {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: user {} may not deploy (deployers are publisher keys and members of the deployer group {:?} or the admin group {:?})",
                    user.username, deployer_group, e.policy.admin_group
                ),
            ))
        }
    }
}

fn spawn_refresh(verifier: std::sync::Weak<Verifier>) {
    tokio::spawn(async move {
        loop {
            let Some(v) = verifier.upgrade() else { return };
            let every = v.config().refresh_interval;
            match v.keys().refresh().await {
                Ok(n) => tracing::info!(keys = n, url = %v.config().jwks_url, "JWKS loaded"),
                Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; will retry"),
            }
            // Retry sooner while no key could be loaded.
            let wait = if v.keys().is_empty() {
                every.min(std::time::Duration::from_secs(5))
            } else {
                every
            };
            drop(v);
            tokio::time::sleep(wait).await;
        }
    });
}
