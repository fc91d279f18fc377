//! Fetching the JWKS over HTTP(S) for the verifier's key cache.
//!
//! TLS is rustls with the aws-lc-rs provider (the one the AWS SDK already builds)
//! and the Mozilla root set, so no system OpenSSL is involved. Redirects are not
//! followed (a JWKS that moves is a configuration to fix, not to trust), and the
//! body is read with a cap: a `Content-Length` over it is refused before any byte
//! is read, and a streamed body is cut off at it.

use std::time::Duration;

use async_trait::async_trait;
use stackpulse_auth::{FetchError, KeyFetcher};

/// Installs the process-wide rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub struct HttpKeyFetcher {
    url: String,
    client: reqwest::Client,
}

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

impl HttpKeyFetcher {
    pub fn new(url: String) -> Result<HttpKeyFetcher, FetchError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FetchError(format!("cannot build HTTP client: {e}")))?;
        Ok(HttpKeyFetcher { url, client })
    }
}

#[async_trait]
impl KeyFetcher for HttpKeyFetcher {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| FetchError(format!("{}: {e}", self.url)))?;
        if !resp.status().is_success() {
            return Err(FetchError(format!(
                "{} answered {}",
                self.url,
                resp.status()
            )));
        }
        let too_large = || {
            FetchError(format!(
                "{}: JWKS larger than {MAX_JWKS_BYTES} bytes",
                self.url
            ))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError(format!("{}: {e}", self.url)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        metrics::counter!("stackpulse_jwks_fetches_total").increment(1);
        Ok(body)
    }
}
