//! The URLs an SNS message makes the server fetch (`SigningCertURL`,
//! `SubscribeURL`), and the fetching itself.
//!
//! A message is unauthenticated until its signature verifies, so every URL in it is
//! checked before any request: [`sns_url`] accepts only
//! `https://sns.<region>.amazonaws.com[.cn]/…` (no userinfo, no port), the rule of
//! AWS's own validators. [`Fetcher`] is the seam: [`HttpFetcher`] in the server
//! (rustls, no redirects, a size cap, and an optional `--sns-endpoint-url` that
//! sends the request to a local base URL instead, for tests), a fake in unit tests.
//! [`CertCache`] keeps the certificates fetched, by URL, at most [`MAX_CERTS`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use url::Url;

/// Certificates kept: SNS signs with one certificate per region at a time, and
/// rotates rarely.
pub const MAX_CERTS: usize = 32;
/// The largest certificate or confirmation reply read.
const MAX_BYTES: usize = 64 * 1024;

/// Why a URL in a message is refused (a reason for the 403).
pub fn sns_url(raw: &str, what: &str) -> Result<Url, String> {
    let refuse = |why: &str| {
        format!(
            "{what} {raw:?} is refused: {why} (it must be https://sns.<region>.amazonaws.com/…)"
        )
    };
    let url = Url::parse(raw).map_err(|e| refuse(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(refuse("not https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("it carries userinfo"));
    }
    if url.port().is_some() {
        return Err(refuse("it names a port"));
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(refuse("its host is not an SNS name"));
    };
    if !is_sns_host(host) {
        return Err(refuse("its host is not an SNS name"));
    }
    Ok(url)
}

/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`, region
/// `[a-z0-9-]{3,}` (the `url` crate has lowercased the host already).
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|r| {
        r.len() >= 3
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// `SigningCertURL`: an SNS URL whose path ends in `.pem`.
pub fn cert_url(raw: &str) -> Result<Url, String> {
    let url = sns_url(raw, "SigningCertURL")?;
    if !url.path().ends_with(".pem") || url.query().is_some() {
        return Err(format!(
            "SigningCertURL {raw:?} is refused: not a .pem file"
        ));
    }
    Ok(url)
}

/// Fetches a URL that passed [`sns_url`]; `Err` says why, in one sentence.
#[async_trait]
pub trait Fetcher: Send + Sync {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, String>;
}

/// The server's [`Fetcher`].
pub struct HttpFetcher {
    client: reqwest::Client,
    /// `--sns-endpoint-url`: requests go here, the SNS URL's path and query appended.
    endpoint: Option<Url>,
}

impl HttpFetcher {
    pub fn new(endpoint: Option<Url>) -> Result<HttpFetcher, String> {
        crate::auth::jwks_http::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the SNS HTTP client: {e}"))?;
        Ok(HttpFetcher { client, endpoint })
    }

    /// Where a request for `url` goes.
    fn target(&self, url: &Url) -> Url {
        let Some(base) = &self.endpoint else {
            return url.clone();
        };
        let mut target = base.clone();
        let path = format!("{}{}", base.path().trim_end_matches('/'), url.path());
        target.set_path(&path);
        target.set_query(url.query());
        target
    }
}

#[async_trait]
impl Fetcher for HttpFetcher {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, String> {
        let target = self.target(url);
        let mut resp = self
            .client
            .get(target.clone())
            .send()
            .await
            .map_err(|e| format!("GET {target}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {target} answered {}", resp.status()));
        }
        let too_large = || format!("GET {target}: larger than {MAX_BYTES} bytes");
        if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {target}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Certificates (DER, decoded from the PEM fetched) by `SigningCertURL`, the oldest dropped
/// past [`MAX_CERTS`].
#[derive(Default)]
pub struct CertCache {
    inner: Mutex<Certs>,
}

/// The cached certificates and their URLs, oldest first.
#[derive(Default)]
struct Certs {
    by_url: HashMap<String, Arc<Vec<u8>>>,
    order: VecDeque<String>,
}

impl CertCache {
    pub fn get(&self, url: &Url) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().by_url.get(url.as_str()).cloned()
    }

    pub fn insert(&self, url: &Url, der: Arc<Vec<u8>>) {
        let mut certs = self.inner.lock();
        if certs.by_url.insert(url.as_str().to_owned(), der).is_none() {
            certs.order.push_back(url.as_str().to_owned());
        }
        while certs.order.len() > MAX_CERTS {
            if let Some(old) = certs.order.pop_front() {
                certs.by_url.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_url.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_over_https() {
        for good in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
            "https://SNS.US-EAST-1.AMAZONAWS.COM/SimpleNotificationService-abc.pem",
            "https://sns.us-gov-west-1.amazonaws.com/a/b.pem",
        ] {
            assert!(cert_url(good).is_ok(), "{good}");
        }
        for evil in [
            "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
            "https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://user:pw@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://sns.a.amazonaws.com/x.pem",
            "https://sns.us_east.amazonaws.com/x.pem",
            "https://xsns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.comm/x.pem",
            "https://sns.us-east-1.evilamazonaws.com/x.pem",
            "https://127.0.0.1/x.pem",
            "https://[::1]/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://sns.us-east-1.amazonaws.com/x.pem?y=1",
            "file:///etc/sns.us-east-1.amazonaws.com.pem",
            "sns.us-east-1.amazonaws.com/x.pem",
            "",
        ] {
            assert!(cert_url(evil).is_err(), "{evil}");
        }
        // SubscribeURL: the same host rule, any path and query.
        assert!(sns_url(
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=t&Token=x",
            "SubscribeURL"
        )
        .is_ok());
        let err = sns_url(
            "https://example.com/?Action=ConfirmSubscription",
            "SubscribeURL",
        )
        .expect_err("evil");
        assert!(
            err.contains("SubscribeURL") && err.contains("sns.<region>"),
            "{err}"
        );
    }

    #[test]
    fn the_endpoint_override_keeps_path_and_query() {
        let f = HttpFetcher::new(Some(Url::parse("http://127.0.0.1:9/base/").expect("url")))
            .expect("client");
        let url = Url::parse("https://sns.us-east-1.amazonaws.com/?Action=Confirm&Token=a%20b")
            .expect("url");
        assert_eq!(
            f.target(&url).as_str(),
            "http://127.0.0.1:9/base/?Action=Confirm&Token=a%20b"
        );
        let pem = Url::parse("https://sns.us-east-1.amazonaws.com/Cert-1.pem").expect("url");
        assert_eq!(
            f.target(&pem).as_str(),
            "http://127.0.0.1:9/base/Cert-1.pem"
        );
        let direct = HttpFetcher::new(None).expect("client");
        assert_eq!(direct.target(&pem), pem);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = CertCache::default();
        for i in 0..MAX_CERTS + 5 {
            let url =
                Url::parse(&format!("https://sns.us-east-1.amazonaws.com/{i}.pem")).expect("url");
            cache.insert(&url, Arc::new(vec![i as u8]));
        }
        assert_eq!(cache.len(), MAX_CERTS);
        let first = Url::parse("https://sns.us-east-1.amazonaws.com/0.pem").expect("url");
        assert!(cache.get(&first).is_none(), "the oldest is dropped");
        let last = Url::parse(&format!(
            "https://sns.us-east-1.amazonaws.com/{}.pem",
            MAX_CERTS + 4
        ))
        .expect("url");
        assert!(cache.get(&last).is_some());
    }
}
