//! Who is on the other end, and what they may do: the server's side of auth.
//!
//! Token verification and topic policy live in the `stackpulse-auth` crate (no
//! web framework inside); this module adapts them to HTTP and WebSocket requests.
//! A request flows through [`gate::Gate`]: the token is taken from `?token=` or
//! `Authorization: Bearer`, verified, rate-limited ([`limits`]) and turned into a
//! [`User`]; subscriptions and reads are checked against the topic's ACL.
//! Publisher keys are kept only as SHA-256 digests and compared in constant time.
//!
//! # Layout
//! - [`jwks_http`]: fetching the JWKS over HTTP(S).
//! - [`gate`]: request authentication and topic authorization.
//! - [`limits`]: connection-attempt rate limits and per-user connection counts.

pub mod gate;
pub mod jwks_http;
pub mod limits;

use sha2::{Digest, Sha256};

pub use stackpulse_auth::User;

/// The configured publisher API keys, hashed.
#[derive(Debug, Clone, Default)]
pub struct PublisherKeys {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl PublisherKeys {
    /// Keys given in clear and keys given as SHA-256 digests.
    pub fn new<S: AsRef<str>>(keys: &[S], digests: &[[u8; 32]]) -> PublisherKeys {
        PublisherKeys {
            digests: keys
                .iter()
                .map(|k| digest(k.as_ref()))
                .chain(digests.iter().copied())
                .collect(),
        }
    }

    /// The hex SHA-256 of a key, as `--publisher-key-sha256` takes it.
    pub fn hash_hex(key: &str) -> String {
        digest(key).iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of the configured keys.
    pub fn matches(&self, key: &str) -> bool {
        let d = digest(key);
        // Compare against every key so timing does not tell which one matched.
        self.digests
            .iter()
            .fold(false, |acc, k| acc | constant_time_eq(k, &d))
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_keys() {
        let k3 = digest("k3");
        let keys = PublisherKeys::new(&["k1", "k2"], &[k3]);
        assert!(keys.matches("k2"));
        assert!(keys.matches("k3"), "a key configured by its digest");
        assert!(!keys.matches("nope"));
        assert!(!PublisherKeys::default().matches("k1"));
        assert_eq!(PublisherKeys::hash_hex("dev-secret").len(), 64);
        assert_eq!(bearer("bearer  k1 "), Some("k1"));
        assert_eq!(bearer("Basic k1"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
