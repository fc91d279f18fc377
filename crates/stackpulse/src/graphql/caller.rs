//! Who is asking: GraphQL credentials resolved once per request or `start`.
//!
//! AppSync clients send the Cognito token raw (`Authorization: <jwt>`), others send
//! `Bearer <jwt>`; API-key clients send `x-api-key`. A credential that is one of
//! the server's publisher keys makes a caller that may only publish (the contract:
//! reading needs a user token once auth is on); anything else is verified as a JWT
//! by the [`crate::auth::gate::Gate`]. Without auth configured every caller is the
//! anonymous user, as on `/ws`.

use axum::http::HeaderMap;
use serde_json::{Map, Value};
use stackpulse_auth::User;

use crate::app::AppState;
use crate::auth::bearer;
use crate::auth::gate::Unauthorized;

/// The resolved caller, put into every async-graphql request's data.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential as sent (the mutation re-checks it as a publisher credential).
    pub credential: Option<String>,
    /// The user, when the credential was a user token (or auth is off).
    pub user: Option<User>,
    /// Unix seconds when the token expires (`u64::MAX` without one).
    pub expires_at: u64,
}

/// `Authorization` without an optional `Bearer ` prefix.
pub fn strip_bearer(value: &str) -> &str {
    bearer(value).unwrap_or(value.trim())
}

/// A credential from an AppSync-style auth object (`{"Authorization": …}` or
/// `{"x-api-key": …}`, keys in any case; other keys such as `host` are ignored).
pub fn credential_from_object(object: &Map<String, Value>) -> Option<String> {
    let find = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(strip_bearer)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    find("authorization")
        .or_else(|| find("x-api-key"))
        .or_else(|| find("token"))
}

/// The credential of an HTTP request: `Authorization` (raw or Bearer), else
/// `x-api-key`.
pub fn header_credential(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(strip_bearer)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    get("authorization").or_else(|| get("x-api-key"))
}

/// The credential of a WebSocket upgrade: `?token=`, then the headers.
pub fn upgrade_credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k == "token" && !v.is_empty() {
                return Some(v.into_owned());
            }
        }
    }
    header_credential(headers)
}

/// Resolves a credential into a caller.
pub async fn resolve(state: &AppState, credential: Option<String>) -> Result<Caller, Unauthorized> {
    if !state.gate.is_enabled() {
        return Ok(Caller {
            credential,
            user: Some(User::anonymous()),
            expires_at: u64::MAX,
        });
    }
    if let Some(c) = &credential {
        if state.publishers.matches(c) {
            return Ok(Caller {
                credential,
                user: None,
                expires_at: u64::MAX,
            });
        }
    }
    let verified = state.gate.authenticate(credential.as_deref()).await?;
    Ok(Caller {
        credential,
        user: Some(verified.user),
        expires_at: verified.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_auth_objects() {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(
            credential_from_object(&obj(
                serde_json::json!({"host": "h", "Authorization": "a.b.c"})
            )),
            Some("a.b.c".into())
        );
        assert_eq!(
            credential_from_object(&obj(serde_json::json!({"authorization": "Bearer a.b.c"}))),
            Some("a.b.c".into())
        );
        assert_eq!(
            credential_from_object(&obj(serde_json::json!({"host": "h", "x-api-key": "k"}))),
            Some("k".into())
        );
        assert_eq!(
            credential_from_object(&obj(serde_json::json!({"host": "h"}))),
            None
        );
    }
}
