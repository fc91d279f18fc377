//! The issuer's signing keys (JWKS), cached.
//!
//! The [`KeyStore`] holds the RSA keys of the last JWKS fetched, by `kid`. A lookup
//! of a known `kid` never waits. An unknown `kid` (a rotation, or a forged token)
//! triggers one refetch, but at most once per `unknown_kid_interval`, and
//! concurrent lookups share that one fetch, so a flood of bogus kids costs the
//! issuer one request per interval. [`KeyStore::refresh`] is also called on a
//! schedule by the server. Keys that are not RSA, not for signing, or that declare
//! an algorithm other than RS256 are never used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use parking_lot::RwLock;
use tokio::time::Instant;

/// Why fetching the JWKS failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot fetch JWKS: {0}")]
pub struct FetchError(pub String);

/// Fetches the JWKS document (the server implements it over HTTP(S)).
#[async_trait]
pub trait KeyFetcher: Send + Sync {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError>;
}

type Keys = HashMap<String, Arc<DecodingKey>>;

pub struct KeyStore {
    fetcher: Arc<dyn KeyFetcher>,
    keys: RwLock<Arc<Keys>>,
    /// Serializes fetches; holds when the last one started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    unknown_kid_interval: Duration,
}

/// The usable keys of a JWKS document, by kid. Unusable keys are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FetchError(format!("JWKS is not JSON: {e}")))?;
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err(FetchError("JWKS has no \"keys\" array".into()));
    };
    let mut keys = HashMap::new();
    for raw in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            tracing::debug!("skipping a JWKS entry that is not a valid JWK");
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let rsa = matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
        let for_signing =
            !matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature);
        let rs256 = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
        if !(rsa && for_signing && rs256) {
            tracing::debug!(kid, "skipping a JWKS key that is not an RS256 signing key");
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, Arc::new(key));
        }
    }
    Ok(keys)
}

impl KeyStore {
    pub fn new(fetcher: Arc<dyn KeyFetcher>, unknown_kid_interval: Duration) -> KeyStore {
        KeyStore {
            fetcher,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            unknown_kid_interval,
        }
    }

    /// Fetches the JWKS now and replaces the cached keys; returns how many.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let body = self.fetcher.fetch().await?;
        let keys = parse_jwks(&body)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().get(kid).cloned()
    }

    /// The key for `kid`, refetching the JWKS (rate-limited) if it is unknown.
    pub async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let mut last = self.last_fetch.lock().await;
        // Another caller may have fetched while we waited.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.unknown_kid_interval) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.cached(kid)
    }

    /// Number of usable keys cached.
    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Counting {
        pub body: parking_lot::Mutex<Vec<u8>>,
        pub calls: AtomicUsize,
    }

    #[async_trait]
    impl KeyFetcher for Counting {
        async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.body.lock().clone())
        }
    }

    const JWKS: &str = include_str!("../tests/fixtures/jwks.json");
    const ROTATED: &str = include_str!("../tests/fixtures/jwks-rotated.json");
    const PS: &str = include_str!("../tests/fixtures/jwks-ps.json");

    #[test]
    fn only_rs256_signing_keys_are_kept() {
        assert_eq!(parse_jwks(JWKS.as_bytes()).expect("parses").len(), 2);
        let ps = parse_jwks(PS.as_bytes()).expect("parses");
        assert!(
            !ps.contains_key("kid-c-ps"),
            "a key declaring PS256 is not used for RS256"
        );
        let odd = br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},"junk"]}"#;
        assert!(parse_jwks(odd).expect("parses").is_empty());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"nope").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let fetcher = Arc::new(Counting {
            body: parking_lot::Mutex::new(JWKS.as_bytes().to_vec()),
            calls: AtomicUsize::new(0),
        });
        let store = KeyStore::new(fetcher.clone(), Duration::from_secs(30));
        store.refresh().await.expect("fetch");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
        assert!(store.key("kid-a").await.is_some());
        for i in 0..100 {
            assert!(store.key(&format!("bogus-{i}")).await.is_none());
        }
        assert_eq!(
            fetcher.calls.load(Ordering::SeqCst),
            1,
            "still inside the interval"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        *fetcher.body.lock() = ROTATED.as_bytes().to_vec();
        assert!(
            store.key("kid-c").await.is_some(),
            "a rotated-in key is found"
        );
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
        for i in 0..100 {
            assert!(store.key(&format!("bogus-{i}")).await.is_none());
        }
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
    }
}
