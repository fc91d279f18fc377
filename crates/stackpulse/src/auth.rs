//! Who is on the other end: users of connections and publisher credentials.
//!
//! Today every WebSocket user is [`User::anonymous`] (the server serves loopback
//! only without auth); Cognito JWT verification plugs in here. Publisher keys are
//! kept only as SHA-256 digests and compared in constant time.

use sha2::{Digest, Sha256};

/// The identity attached to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub sub: String,
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl User {
    /// The user of every connection while no authentication is configured.
    pub fn anonymous() -> User {
        User {
            sub: "anonymous".into(),
            username: "anonymous".into(),
            email: None,
            groups: Vec::new(),
        }
    }
}

/// Why a publish credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublisherRefusal {
    #[error("Unauthorized: no publisher key is configured on this server (start it with --publisher-key KEY or STACKPULSE_PUBLISHER_KEYS)")]
    NoneConfigured,
    #[error("Unauthorized: Missing publisher key (send Authorization: Bearer <key>)")]
    Missing,
    #[error("Unauthorized: Invalid publisher key")]
    Invalid,
}

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
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> PublisherKeys {
        PublisherKeys {
            digests: keys.into_iter().map(|k| digest(k.as_ref())).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), PublisherRefusal> {
        if self.digests.is_empty() {
            return Err(PublisherRefusal::NoneConfigured);
        }
        let Some(value) = authorization else {
            return Err(PublisherRefusal::Missing);
        };
        let key = bearer(value).ok_or(PublisherRefusal::Missing)?;
        let d = digest(key);
        // Compare against every key so timing does not tell which one matched.
        let matched = self
            .digests
            .iter()
            .fold(false, |acc, k| acc | constant_time_eq(k, &d));
        if matched {
            Ok(())
        } else {
            Err(PublisherRefusal::Invalid)
        }
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
        let keys = PublisherKeys::new(["k1", "k2"]);
        assert_eq!(keys.check(Some("Bearer k2")), Ok(()));
        assert_eq!(keys.check(Some("bearer  k1 ")), Ok(()));
        assert_eq!(
            keys.check(Some("Bearer nope")),
            Err(PublisherRefusal::Invalid)
        );
        assert_eq!(keys.check(Some("Basic k1")), Err(PublisherRefusal::Missing));
        assert_eq!(keys.check(None), Err(PublisherRefusal::Missing));
        assert_eq!(
            PublisherKeys::default().check(Some("Bearer k1")),
            Err(PublisherRefusal::NoneConfigured)
        );
    }
}
