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
    out.push(Check::new("TLS files", tls(config)));
    out
}

fn tls(config: &Config) -> Verdict {
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use clap::Parser;
    use serde_json::json;

    /// `serve`'s (and `doctor`'s) flags, resolved the way `doctor` resolves them.
    fn config(args: &[&str]) -> Config {
        // As `main` does before any HTTPS client is built.
        crate::auth::jwks_http::install_crypto_provider();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from(std::iter::once("doctor").chain(args.iter().copied()))
            .expect("args");
        Config::resolve(&cli.serve).expect("config")
    }

    /// Auth configured with issuer `{base}/{name}` and its JWKS at `{base}/{name}/jwks.json`.
    fn auth_config(base: &str, name: &str) -> Config {
        let issuer = format!("{base}/{name}");
        let jwks = format!("{issuer}/jwks.json");
        config(&[
            "--jwt-issuer",
            &issuer,
            "--jwks-url",
            &jwks,
            "--cognito-client-id",
            "app",
        ])
    }

    /// An identity provider on loopback with one issuer per behaviour.
    async fn provider() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let two_keys = json!({"keys": [{"kty": "RSA", "kid": "a"}, {"kty": "RSA", "kid": "b"}]});
        let discovery = |issuer: String| {
            let doc = json!({ "issuer": issuer });
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            })
        };
        let keys = {
            let k = two_keys.clone();
            move || {
                let k = k.clone();
                async move { axum::Json(k) }
            }
        };
        let app = Router::new()
            .route("/good/jwks.json", get(keys.clone()))
            .route(
                "/good/.well-known/openid-configuration",
                discovery(format!("{base}/good")),
            )
            .route("/other/jwks.json", get(keys.clone()))
            .route(
                "/other/.well-known/openid-configuration",
                discovery("https://someone-else.example".into()),
            )
            .route("/nodiscovery/jwks.json", get(keys))
            .route(
                "/empty/jwks.json",
                get(|| async { axum::Json(json!({"keys": []})) }),
            )
            .route(
                "/broken/jwks.json",
                get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down") }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        base
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    #[test]
    fn a_line_has_the_word_the_padded_item_and_the_detail() {
        let line = |v| Check::new("Redis", v).line();
        assert_eq!(
            line(Verdict::Ok("reachable".into())),
            format!("ok    {:<32} reachable", "Redis")
        );
        assert!(line(Verdict::Fail("down".into())).starts_with("FAIL  Redis "));
        assert!(line(Verdict::Fail("down".into())).ends_with(" down"));
        assert!(line(Verdict::Skip("off".into())).starts_with("skip  Redis "));
    }

    #[test]
    fn cloudformation_not_found_means_permitted_and_other_errors_fail_with_their_code() {
        let ok = Verdict::Ok("reachable and permitted".into());
        assert_eq!(cloudformation_verdict(Ok(())), ok);
        assert_eq!(
            cloudformation_verdict(Err(AwsError::NotFound(
                "Stack with id x does not exist".into()
            ))),
            ok
        );
        let Verdict::Fail(detail) = cloudformation_verdict(Err(AwsError::AccessDenied(
            "AccessDenied: User: arn:aws:iam::123456789012:user/x is not authorized".into(),
        ))) else {
            panic!("access denied is a failure");
        };
        assert!(detail.ends_with("[access_denied]"), "{detail}");
        assert!(
            !detail.contains("123456789012"),
            "no account in the verdict: {detail}"
        );
        let Verdict::Fail(detail) =
            cloudformation_verdict(Err(AwsError::Network("connection refused".into())))
        else {
            panic!("a network error is a failure");
        };
        assert!(detail.ends_with("[network]"), "{detail}");
    }

    #[tokio::test]
    async fn auth_checks_the_jwks_and_the_issuers_discovery_document() {
        assert_eq!(
            auth(&config(&[])).await,
            Verdict::Skip("not configured (loopback only)".into())
        );
        let base = provider().await;

        let v = auth(&auth_config(&base, "good")).await;
        assert_eq!(
            v,
            Verdict::Ok(format!("JWKS has 2 keys; issuer {base}/good matches"))
        );

        let Verdict::Fail(d) = auth(&auth_config(&base, "other")).await else {
            panic!("a discovery document naming another issuer fails");
        };
        assert!(
            d.contains("names https://someone-else.example, not the configured"),
            "{d}"
        );

        let Verdict::Ok(d) = auth(&auth_config(&base, "nodiscovery")).await else {
            panic!("no discovery document is not a failure");
        };
        assert!(
            d.starts_with("JWKS has 2 keys (no discovery document at "),
            "{d}"
        );

        let Verdict::Fail(d) = auth(&auth_config(&base, "empty")).await else {
            panic!("a JWKS without keys fails");
        };
        assert!(d.ends_with("has no keys"), "{d}");

        let Verdict::Fail(d) = auth(&auth_config(&base, "broken")).await else {
            panic!("a JWKS answering 500 fails");
        };
        assert!(d.contains("answered 500"), "{d}");

        let closed = format!("http://127.0.0.1:{}", closed_port());
        let Verdict::Fail(d) = auth(&auth_config(&closed, "x")).await else {
            panic!("an unreachable JWKS fails");
        };
        assert!(d.contains("not reachable"), "{d}");
    }

    #[tokio::test]
    async fn redis_reports_its_version_or_why_not() {
        assert_eq!(
            redis(&config(&[])).await,
            Verdict::Skip("not configured (in-memory hub)".into())
        );
        let mut server = stackpulse_testkit::RedisServer::start().await;
        let url = server.url();
        let Verdict::Ok(d) = redis(&config(&["--redis-url", &url])).await else {
            panic!("a running Redis passes");
        };
        // The version INFO reports (e.g. 7.0.15), not "unknown".
        let version = d.strip_prefix("reachable, version ").unwrap_or_default();
        assert!(
            version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{d}"
        );
        server.stop();
        let Verdict::Fail(d) = redis(&config(&["--redis-url", &url])).await else {
            panic!("a stopped Redis fails");
        };
        assert!(d.starts_with("not reachable"), "{d}");
    }

    #[test]
    fn tls_files_load_or_say_why_not() {
        assert_eq!(
            tls(&config(&[])),
            Verdict::Skip("not configured (plain HTTP)".into())
        );
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "{out:?}");
        let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
        assert_eq!(
            tls(&config(&["--tls-cert", &c, "--tls-key", &k])),
            Verdict::Ok(format!("{c} and {k} load"))
        );
        // The certificate given as the key: refused, naming the file.
        let Verdict::Fail(d) = tls(&config(&["--tls-cert", &c, "--tls-key", &c])) else {
            panic!("a certificate is not a key");
        };
        assert!(d.contains("key") && d.contains(c.as_ref()), "{d}");
        let missing = dir.path().join("missing.pem");
        let m = missing.to_string_lossy();
        let Verdict::Fail(d) = tls(&config(&["--tls-cert", &m, "--tls-key", &k])) else {
            panic!("a missing certificate fails");
        };
        assert!(d.starts_with("cannot read TLS"), "{d}");
    }
}
