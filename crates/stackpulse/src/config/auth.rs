//! The authentication flags and their resolution.
//!
//! Auth is on as soon as an issuer can be derived: `--cognito-region` +
//! `--cognito-user-pool-id` (Cognito), or `--jwt-issuer` (any OIDC provider). The
//! JWKS URL defaults to `<issuer>/.well-known/jwks.json`; `--jwks-url` overrides it
//! (moto serves it on localhost). At least one `--cognito-client-id` is required:
//! without one, any token of the issuer (another app's included) would pass.
//! In a TOML file these keys live in an `[auth]` table.

use std::time::Duration;

use serde::Deserialize;
use stackpulse_auth::{AuthConfig, DefaultPolicy, Policy};

use crate::config::ConfigError;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// AWS region of the Cognito user pool.
    #[arg(long, env = "STACKPULSE_COGNITO_REGION", value_name = "REGION")]
    pub cognito_region: Option<String>,
    /// Cognito user pool id (e.g. eu-west-1_AbCdEf123).
    #[arg(long, env = "STACKPULSE_COGNITO_USER_POOL_ID", value_name = "ID")]
    pub cognito_user_pool_id: Option<String>,
    /// App client id accepted in tokens (repeatable; env: comma-separated).
    #[arg(
        long = "cognito-client-id",
        env = "STACKPULSE_COGNITO_CLIENT_IDS",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub cognito_client_ids: Vec<String>,
    /// Token issuer (`iss`); overrides the one derived from the Cognito pool.
    #[arg(long, env = "STACKPULSE_JWT_ISSUER", value_name = "URL")]
    pub jwt_issuer: Option<String>,
    /// JWKS URL; defaults to <issuer>/.well-known/jwks.json.
    #[arg(long, env = "STACKPULSE_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Clock skew tolerated on exp/nbf, seconds [default: 30].
    #[arg(long, env = "STACKPULSE_JWT_LEEWAY", value_name = "SECONDS")]
    pub jwt_leeway: Option<f64>,
    /// Seconds between scheduled JWKS refreshes [default: 3600].
    #[arg(long, env = "STACKPULSE_JWKS_REFRESH", value_name = "SECONDS")]
    pub jwks_refresh: Option<f64>,
    /// Minimum seconds between JWKS refetches caused by unknown kids [default: 30].
    #[arg(long, env = "STACKPULSE_JWKS_MIN_REFETCH", value_name = "SECONDS")]
    pub jwks_min_refetch: Option<f64>,
    /// Group whose members may see every topic [default: admin].
    #[arg(long, env = "STACKPULSE_ADMIN_GROUP", value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Group whose members may publish with their JWT [default: publishers].
    #[arg(long, env = "STACKPULSE_PUBLISHER_GROUP", value_name = "GROUP")]
    pub publisher_group: Option<String>,
    /// Who may subscribe to topics without an ACL [default: authenticated].
    #[arg(
        long,
        env = "STACKPULSE_DEFAULT_TOPIC_POLICY",
        value_name = "authenticated|deny"
    )]
    pub default_topic_policy: Option<String>,
    /// WebSocket connections per user [default: 100].
    #[arg(long, env = "STACKPULSE_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    pub max_connections_per_user: Option<usize>,
    /// Connection attempts per second per client IP [default: 50].
    #[arg(long, env = "STACKPULSE_CONNECT_RATE_PER_IP", value_name = "N")]
    pub connect_rate_per_ip: Option<f64>,
    /// Connection attempts per second per user [default: 20].
    #[arg(long, env = "STACKPULSE_CONNECT_RATE_PER_USER", value_name = "N")]
    pub connect_rate_per_user: Option<f64>,
}

/// The `[auth]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    cognito_region: Option<String>,
    cognito_user_pool_id: Option<String>,
    cognito_client_ids: Option<Vec<String>>,
    jwt_issuer: Option<String>,
    jwks_url: Option<String>,
    jwt_leeway: Option<f64>,
    jwks_refresh: Option<f64>,
    jwks_min_refetch: Option<f64>,
    admin_group: Option<String>,
    publisher_group: Option<String>,
    default_topic_policy: Option<String>,
    max_connections_per_user: Option<usize>,
    connect_rate_per_ip: Option<f64>,
    connect_rate_per_user: Option<f64>,
}

/// Connection admission limits (they apply with and without auth; the per-user
/// ones only matter with it).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_connections_per_user: usize,
    pub connect_rate_per_ip: f64,
    pub connect_rate_per_user: f64,
}

/// Resolved authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub verifier: AuthConfig,
    pub policy: Policy,
    pub publisher_group: String,
}

fn secs(name: &'static str, v: f64) -> Result<Duration, ConfigError> {
    // More than 30 days is a typo, and timer arithmetic on it could overflow later.
    const MAX: f64 = 30.0 * 86_400.0;
    let d = Duration::try_from_secs_f64(v).map_err(|_| ConfigError::Invalid {
        name,
        message: format!("{v} is not a non-negative number of seconds"),
    })?;
    if v > MAX {
        return Err(ConfigError::Invalid {
            name,
            message: format!("{v} is more than the {MAX} seconds allowed"),
        });
    }
    Ok(d)
}

/// The largest `--jwt-leeway`.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// A JWKS must come over HTTPS (whoever can alter it can forge tokens); plain
/// `http://` only from this machine.
fn check_jwks_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: "jwks-url",
        message,
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(invalid(format!(
            "{url} is plain HTTP: a JWKS must be fetched over https:// (http:// only from localhost)"
        ))),
        other => Err(invalid(format!("{url}: unsupported scheme {other:?} (use https://)"))),
    }
}

fn rate(name: &'static str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            name,
            message: format!("{v} is not a positive rate"),
        })
    }
}

/// Resolves the admission limits.
pub fn resolve_limits(args: &AuthArgs, file: &AuthFile) -> Result<AdmissionLimits, ConfigError> {
    let per_user = args
        .max_connections_per_user
        .or(file.max_connections_per_user)
        .unwrap_or(100);
    if per_user == 0 {
        return Err(ConfigError::Invalid {
            name: "max-connections-per-user",
            message: "must be at least 1".into(),
        });
    }
    Ok(AdmissionLimits {
        max_connections_per_user: per_user,
        connect_rate_per_ip: rate(
            "connect-rate-per-ip",
            args.connect_rate_per_ip
                .or(file.connect_rate_per_ip)
                .unwrap_or(50.0),
        )?,
        connect_rate_per_user: rate(
            "connect-rate-per-user",
            args.connect_rate_per_user
                .or(file.connect_rate_per_user)
                .unwrap_or(20.0),
        )?,
    })
}

/// Resolves flags over the `[auth]` table; `None` when auth is not configured.
pub fn resolve(args: &AuthArgs, file: &AuthFile) -> Result<Option<AuthSettings>, ConfigError> {
    let region = args
        .cognito_region
        .clone()
        .or_else(|| file.cognito_region.clone());
    let pool = args
        .cognito_user_pool_id
        .clone()
        .or_else(|| file.cognito_user_pool_id.clone());
    let explicit_issuer = args.jwt_issuer.clone().or_else(|| file.jwt_issuer.clone());
    let issuer = match (&region, &pool, explicit_issuer) {
        (_, _, Some(issuer)) => Some(issuer),
        (Some(r), Some(p), None) => Some(AuthConfig::cognito_issuer(r, p)),
        (Some(_), None, None) => {
            return Err(ConfigError::Invalid {
                name: "cognito-user-pool-id",
                message: "--cognito-region needs --cognito-user-pool-id".into(),
            })
        }
        (None, Some(_), None) => {
            return Err(ConfigError::Invalid {
                name: "cognito-region",
                message: "--cognito-user-pool-id needs --cognito-region".into(),
            })
        }
        (None, None, None) => None,
    };
    let client_ids: Vec<String> = if args.cognito_client_ids.is_empty() {
        file.cognito_client_ids.clone().unwrap_or_default()
    } else {
        args.cognito_client_ids.clone()
    }
    .into_iter()
    .map(|c| c.trim().to_owned())
    .filter(|c| !c.is_empty())
    .collect();
    let jwks_url = args.jwks_url.clone().or_else(|| file.jwks_url.clone());
    let Some(issuer) = issuer else {
        if jwks_url.is_some() || !client_ids.is_empty() {
            return Err(ConfigError::Invalid {
                name: "jwt-issuer",
                message: "auth needs an issuer: --cognito-region with --cognito-user-pool-id, or --jwt-issuer".into(),
            });
        }
        return Ok(None);
    };
    if client_ids.is_empty() {
        return Err(ConfigError::Invalid {
            name: "cognito-client-id",
            message: "auth needs at least one --cognito-client-id (the app clients whose tokens are accepted)".into(),
        });
    }
    let jwks_url = jwks_url.unwrap_or_else(|| AuthConfig::jwks_url_for(&issuer));
    check_jwks_url(&jwks_url)?;
    let mut verifier = AuthConfig::new(issuer, jwks_url, client_ids);
    if let Some(v) = args.jwt_leeway.or(file.jwt_leeway) {
        verifier.leeway = secs("jwt-leeway", v)?;
        if verifier.leeway > MAX_LEEWAY {
            return Err(ConfigError::Invalid {
                name: "jwt-leeway",
                message: format!(
                    "{v} is more than {} seconds (expired tokens would stay valid that long)",
                    MAX_LEEWAY.as_secs()
                ),
            });
        }
    }
    if let Some(v) = args.jwks_refresh.or(file.jwks_refresh) {
        verifier.refresh_interval = secs("jwks-refresh", v)?.max(Duration::from_secs(1));
    }
    if let Some(v) = args.jwks_min_refetch.or(file.jwks_min_refetch) {
        // Less than a second re-enables refetch storms on unknown `kid`s.
        verifier.unknown_kid_interval = secs("jwks-min-refetch", v)?.max(Duration::from_secs(1));
    }
    let default = match args
        .default_topic_policy
        .clone()
        .or_else(|| file.default_topic_policy.clone())
    {
        Some(p) => p
            .parse::<DefaultPolicy>()
            .map_err(|message| ConfigError::Invalid {
                name: "default-topic-policy",
                message,
            })?,
        None => DefaultPolicy::Authenticated,
    };
    Ok(Some(AuthSettings {
        verifier,
        policy: Policy {
            admin_group: args
                .admin_group
                .clone()
                .or_else(|| file.admin_group.clone())
                .unwrap_or_else(|| "admin".into()),
            default,
        },
        publisher_group: args
            .publisher_group
            .clone()
            .or_else(|| file.publisher_group.clone())
            .unwrap_or_else(|| "publishers".into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leeway_and_refetch_bounds() {
        let base = AuthArgs {
            jwt_issuer: Some("https://issuer.example".into()),
            cognito_client_ids: vec!["c".into()],
            ..AuthArgs::default()
        };
        let args = AuthArgs {
            jwt_leeway: Some(301.0),
            ..base.clone()
        };
        let e = resolve(&args, &AuthFile::default()).expect_err("leeway");
        assert!(e.to_string().contains("jwt-leeway"), "{e}");
        let args = AuthArgs {
            jwks_refresh: Some(1e13),
            ..base.clone()
        };
        let e = resolve(&args, &AuthFile::default()).expect_err("refresh");
        assert!(e.to_string().contains("jwks-refresh"), "{e}");
        let args = AuthArgs {
            jwks_min_refetch: Some(0.0),
            jwt_leeway: Some(300.0),
            ..base
        };
        let s = resolve(&args, &AuthFile::default())
            .expect("valid")
            .expect("auth on");
        assert_eq!(s.verifier.unknown_kid_interval, Duration::from_secs(1));
        assert_eq!(s.verifier.leeway, Duration::from_secs(300));
    }

    #[test]
    fn jwks_urls_need_https_off_loopback() {
        assert!(check_jwks_url(
            "https://cognito-idp.us-east-1.amazonaws.com/x/.well-known/jwks.json"
        )
        .is_ok());
        assert!(check_jwks_url("http://127.0.0.1:9000/jwks.json").is_ok());
        assert!(check_jwks_url("http://localhost/jwks.json").is_ok());
        assert!(check_jwks_url("http://[::1]:1/jwks.json").is_ok());
        for bad in [
            "http://keys.example.com/jwks.json",
            "ftp://127.0.0.1/x",
            "nope",
        ] {
            let e = check_jwks_url(bad).expect_err(bad);
            assert!(e.to_string().contains("jwks-url"), "{e}");
        }
    }

    #[test]
    fn cognito_flags_derive_issuer_and_jwks() {
        let args = AuthArgs {
            cognito_region: Some("us-east-1".into()),
            cognito_user_pool_id: Some("us-east-1_X".into()),
            cognito_client_ids: vec!["c1".into()],
            jwks_url: Some("http://127.0.0.1:5000/us-east-1_X/.well-known/jwks.json".into()),
            ..AuthArgs::default()
        };
        let s = resolve(&args, &AuthFile::default())
            .expect("valid")
            .expect("on");
        assert_eq!(
            s.verifier.issuer,
            "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_X"
        );
        assert_eq!(
            s.verifier.jwks_url,
            "http://127.0.0.1:5000/us-east-1_X/.well-known/jwks.json"
        );
        assert_eq!(s.policy.admin_group, "admin");
        assert_eq!(s.publisher_group, "publishers");
    }

    #[test]
    fn incomplete_auth_is_refused_with_the_missing_flag() {
        let none = resolve(&AuthArgs::default(), &AuthFile::default()).expect("valid");
        assert!(none.is_none());
        let no_client = AuthArgs {
            jwt_issuer: Some("https://issuer".into()),
            ..AuthArgs::default()
        };
        let e = resolve(&no_client, &AuthFile::default()).expect_err("needs client");
        assert!(e.to_string().contains("--cognito-client-id"), "{e}");
        let no_pool = AuthArgs {
            cognito_region: Some("us-east-1".into()),
            cognito_client_ids: vec!["c".into()],
            ..AuthArgs::default()
        };
        assert!(resolve(&no_pool, &AuthFile::default())
            .expect_err("needs pool")
            .to_string()
            .contains("--cognito-user-pool-id"));
        let bad_policy = AuthArgs {
            jwt_issuer: Some("https://issuer".into()),
            cognito_client_ids: vec!["c".into()],
            default_topic_policy: Some("open".into()),
            ..AuthArgs::default()
        };
        assert!(resolve(&bad_policy, &AuthFile::default()).is_err());
    }
}
