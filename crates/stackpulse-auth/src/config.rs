//! What the verifier checks tokens against.
//!
//! Cognito: `--cognito-region` and `--cognito-user-pool-id` give the issuer
//! `https://cognito-idp.<region>.amazonaws.com/<pool>` and its JWKS at
//! `<issuer>/.well-known/jwks.json`; `--jwt-issuer` and `--jwks-url` override either
//! (moto serves the JWKS on localhost while its tokens name the AWS issuer; any OIDC
//! provider is configured with these two alone).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The exact `iss` every token must carry.
    pub issuer: String,
    pub jwks_url: String,
    /// Allowed app clients: an id token's `aud`, an access token's `client_id`.
    pub client_ids: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Refetch the JWKS this often, to pick up rotations before they are used.
    pub refresh_interval: Duration,
    /// Refetch on an unknown `kid` at most this often (bogus kids cannot hammer
    /// the issuer).
    pub unknown_kid_interval: Duration,
}

impl AuthConfig {
    /// The issuer of a Cognito user pool.
    pub fn cognito_issuer(region: &str, user_pool_id: &str) -> String {
        format!("https://cognito-idp.{region}.amazonaws.com/{user_pool_id}")
    }

    /// The JWKS URL of an issuer that follows the OIDC/Cognito convention.
    pub fn jwks_url_for(issuer: &str) -> String {
        format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'))
    }

    /// A configuration with the defaults for everything but the issuer, JWKS and clients.
    pub fn new(
        issuer: impl Into<String>,
        jwks_url: impl Into<String>,
        client_ids: Vec<String>,
    ) -> AuthConfig {
        AuthConfig {
            issuer: issuer.into(),
            jwks_url: jwks_url.into(),
            client_ids,
            leeway: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(3600),
            unknown_kid_interval: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cognito_derivation() {
        let iss = AuthConfig::cognito_issuer("eu-west-1", "eu-west-1_AbC");
        assert_eq!(
            iss,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC"
        );
        assert_eq!(
            AuthConfig::jwks_url_for(&iss),
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/jwks.json"
        );
        assert_eq!(
            AuthConfig::jwks_url_for("https://x/"),
            "https://x/.well-known/jwks.json"
        );
    }
}
