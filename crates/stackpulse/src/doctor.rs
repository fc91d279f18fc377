//! `stackpulse doctor`: checks what `serve` needs and prints a verdict per item.
//!
//! It reads the same flags, environment and file as `serve` ([`ServeArgs`]), then
//! checks, each within [`CHECK_TIMEOUT`]:
//! - AWS credentials and region (where they come from, or what to set);
//! - CloudFormation, reachable and permitted: `DescribeStacks`,
//!   `DescribeStackEvents`, `ListStackResources` and `GetTemplate` on a stack that
//!   does not exist (harmless: "does not exist" means the call is permitted);
//! - authentication, when configured: the JWKS is reachable and has keys, and the
//!   issuer's discovery document names the configured issuer;
//! - Redis, when configured: reachable, and its version;
//! - TLS files, when configured: they load.
//!
//! Output: one line per item (`ok`, `FAIL` or `skip`, the item, the detail). Exit
//! code 0 only when nothing failed, 1 when something did, 2 for a bad
//! configuration.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use stackpulse_cfn::aws::Api;
use stackpulse_cfn::{AwsError, CallCounter};

use crate::config::{Config, ServeArgs};
use crate::tracking::aws::{startup_report, AwsClients, AwsSettings};

/// Longest wait for one check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// The stack name the CloudFormation calls ask about (it does not exist).
const PROBE: &str = "stackpulse-doctor-probe";

/// The verdict on one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    Fail(String),
    /// Not configured: nothing to check.
    Skip(String),
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub item: String,
    pub verdict: Verdict,
}

impl Check {
    fn new(item: impl Into<String>, verdict: Verdict) -> Check {
        Check {
            item: item.into(),
            verdict,
        }
    }

    /// `ok    credentials  environment (AWS_ACCESS_KEY_ID)`.
    pub fn line(&self) -> String {
        let (word, detail) = match &self.verdict {
            Verdict::Ok(d) => ("ok  ", d),
            Verdict::Fail(d) => ("FAIL", d),
            Verdict::Skip(d) => ("skip", d),
        };
        format!("{word}  {:<32} {detail}", self.item)
    }
}

async fn timed<F: Future<Output = Verdict>>(f: F) -> Verdict {
    tokio::time::timeout(CHECK_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Verdict::Fail(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))
        })
}

/// Runs every check.
pub async fn checks(config: &Config) -> Vec<Check> {
    let settings = AwsSettings {
        endpoint_url: config.aws_endpoint_url.clone(),
        region: config.aws_region.clone(),
    };
    let mut out = Vec::new();
    let report = startup_report(&settings).await;
    let full = report.line();
    out.push(Check::new(
        "AWS credentials",
        match &report.credentials {
            Some(from) => Verdict::Ok(from.clone()),
            None => Verdict::Fail(
                full.split("; region:")
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("AWS credentials: ")
                    .to_string(),
            ),
        },
    ));
    out.push(Check::new(
        "AWS region",
        if report.region_set {
            Verdict::Ok(report.region.clone())
        } else {
            Verdict::Fail(report.region.clone())
        },
    ));
    let clients = AwsClients::new(settings);
    let api = Api::new(
        clients.client(None).await,
        CallCounter::new(),
        CHECK_TIMEOUT,
    );
    for call in [
        "DescribeStacks",
        "DescribeStackEvents",
        "ListStackResources",
        "GetTemplate",
    ] {
        let verdict = timed(async {
            let r = match call {
                "DescribeStacks" => api.describe_stack(PROBE).await.map(|_| ()),
                "DescribeStackEvents" => api.events_page(PROBE, None).await.map(|_| ()),
                "ListStackResources" => api.list_resources(PROBE).await.map(|_| ()),
                _ => api.template_resources(PROBE).await.map(|_| ()),
            };
            cloudformation_verdict(r)
        })
        .await;
        out.push(Check::new(format!("CloudFormation {call}"), verdict));
    }
    out.push(Check::new("authentication", timed(auth(config)).await));
    out.push(Check::new("Redis", timed(redis(config)).await));
    out.push(Check::new(
        "TLS files",
        match &config.tls {
            None => Verdict::Skip("not configured (plain HTTP)".into()),
            Some(files) => match crate::tls::load(files) {
                Ok(_) => Verdict::Ok(format!(
                    "{} and {} load",
                    files.cert.display(),
                    files.key.display()
                )),
                Err(e) => Verdict::Fail(e.to_string()),
            },
        },
    ));
    out
}

/// A CloudFormation call on a stack that does not exist: "does not exist" means it
/// is reachable and permitted.
fn cloudformation_verdict(r: Result<(), AwsError>) -> Verdict {
    match r {
        Ok(()) | Err(AwsError::NotFound(_)) => Verdict::Ok("reachable and permitted".into()),
        Err(e) => Verdict::Fail(format!("{} [{}]", e.public_message(), e.code().as_str())),
    }
}

async fn auth(config: &Config) -> Verdict {
    let Some(auth) = &config.auth else {
        return Verdict::Skip("not configured (loopback only)".into());
    };
    let v = &auth.verifier;
    let http = reqwest::Client::new();
    let keys = match http.get(&v.jwks_url).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|j| j.get("keys").and_then(|k| k.as_array()).map(Vec::len))
            .unwrap_or(0),
        Ok(r) => return Verdict::Fail(format!("JWKS {} answered {}", v.jwks_url, r.status())),
        Err(e) => return Verdict::Fail(format!("JWKS {} not reachable: {e}", v.jwks_url)),
    };
    if keys == 0 {
        return Verdict::Fail(format!("JWKS {} has no keys", v.jwks_url));
    }
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        v.issuer.trim_end_matches('/')
    );
    let issuer = match http.get(&discovery).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|j| j.get("issuer").and_then(|i| i.as_str()).map(str::to_owned)),
        _ => None,
    };
    match issuer {
        Some(i) if i == v.issuer => {
            Verdict::Ok(format!("JWKS has {keys} keys; issuer {i} matches"))
        }
        Some(i) => Verdict::Fail(format!(
            "the issuer's discovery document names {i}, not the configured {}",
            v.issuer
        )),
        None => Verdict::Ok(format!(
            "JWKS has {keys} keys (no discovery document at {discovery} to compare the issuer)"
        )),
    }
}

async fn redis(config: &Config) -> Verdict {
    let Some(url) = &config.redis_url else {
        return Verdict::Skip("not configured (in-memory hub)".into());
    };
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => return Verdict::Fail(format!("invalid --redis-url: {e}")),
    };
    let mut con = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => return Verdict::Fail(format!("not reachable: {e}")),
    };
    match redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut con)
        .await
    {
        Ok(info) => {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .trim()
                .to_owned();
            Verdict::Ok(format!("reachable, version {version}"))
        }
        Err(e) => Verdict::Fail(format!("INFO failed: {e}")),
    }
}

/// `stackpulse doctor`.
pub async fn main(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stackpulse: {e}");
            return ExitCode::from(2);
        }
    };
    let checks = checks(&config).await;
    for c in &checks {
        println!("{}", c.line());
    }
    let failed = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
        .count();
    if failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{failed} check(s) failed");
        ExitCode::from(1)
    }
}
