//! AWS clients for tracking and stack creation, built once from the standard chain.
//!
//! [`AwsSettings`] says what the operator chose (`--aws-endpoint-url`,
//! `--aws-region`); [`AwsClients`] loads the standard AWS configuration (credentials
//! and region from the environment, profiles, SSO, web identity, IMDS…) the first
//! time a client is needed and keeps one CloudFormation client per region. The
//! server and `stackpulse watch --direct` / `deploy` share this code.
//!
//! [`startup_report`] resolves the credentials and the region once and says in one
//! line where they came from, or exactly what to set ([`log_startup_report`]: the
//! server's start-up line, spawned so it never delays the listener).

use std::collections::HashMap;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudformation::config::ProvideCredentials;
use aws_sdk_cloudformation::Client;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

/// Regions whose CloudFormation client is kept (AWS has about 35 regions).
const MAX_CACHED_REGIONS: usize = 48;

/// Region used when neither a flag nor the AWS chain names one.
pub const FALLBACK_REGION: &str = "us-east-1";

/// What the operator configured for AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Every AWS client talks to this endpoint (moto, LocalStack) instead of AWS.
    pub endpoint_url: Option<String>,
    /// Default region; `None`: the standard chain's, else [`FALLBACK_REGION`].
    pub region: Option<String>,
}

/// Set by `serve --demo`: every AWS client of this process signs with static demo
/// credentials (the demo's in-process endpoint accepts any signature).
static DEMO_CREDENTIALS: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Makes every AWS client of this process use static demo credentials
/// (`serve --demo` only: its endpoint is in-process and never reaches AWS).
pub fn use_demo_credentials() {
    let _ = DEMO_CREDENTIALS.set(());
}

/// Loads the standard AWS configuration with the operator's overrides.
pub async fn load(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if DEMO_CREDENTIALS.get().is_some() {
        loader = loader.credentials_provider(aws_sdk_cloudformation::config::Credentials::new(
            "demo",
            "demo",
            None,
            None,
            "stackpulse-demo",
        ));
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

/// A CloudFormation client for `region` (or the configuration's own region).
pub fn cfn_client(sdk: &SdkConfig, region: Option<&str>) -> Client {
    let mut builder = aws_sdk_cloudformation::config::Builder::from(sdk);
    match region {
        Some(r) => builder = builder.region(Region::new(r.to_owned())),
        None if sdk.region().is_none() => {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        None => {}
    }
    Client::from_conf(builder.build())
}

/// The region a configuration resolves to.
pub fn region_of(sdk: &SdkConfig) -> String {
    sdk.region()
        .map_or_else(|| FALLBACK_REGION.to_owned(), |r| r.to_string())
}

/// Lazily loaded AWS configuration and one CloudFormation client per region.
pub struct AwsClients {
    settings: AwsSettings,
    sdk: OnceCell<SdkConfig>,
    clients: Mutex<HashMap<String, Client>>,
}

impl AwsClients {
    pub fn new(settings: AwsSettings) -> AwsClients {
        AwsClients {
            settings,
            sdk: OnceCell::new(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    async fn sdk(&self) -> &SdkConfig {
        self.sdk.get_or_init(|| load(&self.settings)).await
    }

    /// The default region (flag, then chain, then [`FALLBACK_REGION`]).
    pub async fn default_region(&self) -> String {
        region_of(self.sdk().await)
    }

    /// The client for `region` (`None`: the default region).
    pub async fn client(&self, region: Option<&str>) -> Client {
        let region = match region {
            Some(r) => r.to_owned(),
            None => self.default_region().await,
        };
        if let Some(c) = self.clients.lock().get(&region) {
            return c.clone();
        }
        let client = cfn_client(self.sdk().await, Some(&region));
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CACHED_REGIONS && !clients.contains_key(&region) {
            // Regions are named by users: keep the first few, build the rest anew.
            return client;
        }
        clients.entry(region).or_insert(client).clone()
    }
}

/// How long the start-up check waits for the credential chain (an instance role
/// on a machine without one waits for IMDS timeouts).
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupReport {
    /// Where the credentials came from; `None`: none found.
    pub credentials: Option<String>,
    /// The region and where it came from.
    pub region: String,
    /// Whether a region was set anywhere (else [`FALLBACK_REGION`] is used).
    pub region_set: bool,
}

impl StartupReport {
    /// One line for the log.
    pub fn line(&self) -> String {
        let credentials = match &self.credentials {
            Some(from) => format!("AWS credentials: {from}"),
            None => "AWS credentials: none found (environment, shared config, SSO, web \
                     identity, instance role), so stack tracking cannot work; set AWS_PROFILE \
                     or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or run aws sso login), or use \
                     --aws-endpoint-url for moto, or try serve --demo"
                .to_string(),
        };
        format!("{credentials}; region: {}", self.region)
    }

    /// Whether tracking can work as configured.
    pub fn ok(&self) -> bool {
        self.credentials.is_some() && self.region_set
    }
}

/// The name of a credentials provider as a person knows it.
fn provider_label(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    if n.contains("environment") {
        "environment (AWS_ACCESS_KEY_ID)".to_string()
    } else if n.contains("sso") || n.contains("login") {
        format!("SSO (profile {profile})")
    } else if n.contains("profile") || n.contains("process") {
        format!("profile {profile}")
    } else if n.contains("webidentity") {
        "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".to_string()
    } else if n.contains("imds") {
        "instance role (IMDS)".to_string()
    } else if n.contains("ecs") || n.contains("http") {
        "container role".to_string()
    } else {
        name.to_string()
    }
}

/// The provider that made `c` ("EnvironmentVariable", "ProfileFile", "SSO"...):
/// the SDK shows it only in `Debug` (which redacts the secret).
fn provider_name(c: &aws_sdk_cloudformation::config::Credentials) -> String {
    let debug = format!("{c:?}");
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "unknown".to_string(), |(name, _)| name.to_string())
}

/// Resolves the credentials and the region once, as the trackers will.
pub async fn startup_report(settings: &AwsSettings) -> StartupReport {
    let sdk = load(settings).await;
    let credentials = match sdk.credentials_provider() {
        Some(p) => match tokio::time::timeout(REPORT_TIMEOUT, p.provide_credentials()).await {
            Ok(Ok(c)) => Some(provider_label(&provider_name(&c))),
            Ok(Err(e)) => {
                tracing::debug!(error = %aws_sdk_cloudformation::error::DisplayErrorContext(&e), "no AWS credentials");
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .into_iter()
        .find(|v| std::env::var(v).is_ok_and(|r| !r.is_empty()));
    let (region, region_set) = match (&settings.region, sdk.region(), env_region) {
        (Some(r), _, _) => (format!("{r} (--aws-region)"), true),
        (None, Some(r), Some(var)) => (format!("{r} ({var})"), true),
        (None, Some(r), None) => (format!("{r} (shared config)"), true),
        (None, None, _) => (
            format!(
                "none set, using {FALLBACK_REGION}; set AWS_REGION or --aws-region for another"
            ),
            false,
        ),
    };
    StartupReport {
        credentials,
        region,
        region_set,
    }
}

/// Logs the start-up line: info when tracking can work, a warning with what to set
/// when it cannot.
pub async fn log_startup_report(settings: AwsSettings) {
    let report = startup_report(&settings).await;
    if report.credentials.is_some() {
        tracing::info!("{}", report.line());
    } else {
        tracing::warn!("{}", report.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::config::Credentials;

    /// Settings that never reach AWS: a closed loopback endpoint and a region.
    fn offline(region: &str) -> AwsSettings {
        AwsSettings {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: Some(region.into()),
        }
    }

    fn region(c: &Client) -> Option<String> {
        c.config().region().map(|r| r.to_string())
    }

    #[tokio::test]
    async fn clients_use_the_region_asked_for_else_the_default_one() {
        let aws = AwsClients::new(offline("us-west-2"));
        assert_eq!(aws.default_region().await, "us-west-2");
        assert_eq!(
            region(&aws.client(None).await).as_deref(),
            Some("us-west-2")
        );
        let eu = aws.client(Some("eu-west-1")).await;
        assert_eq!(region(&eu).as_deref(), Some("eu-west-1"));
        assert_eq!(aws.clients.lock().len(), 2, "one client per region");
        aws.client(Some("eu-west-1")).await;
        assert_eq!(aws.clients.lock().len(), 2, "kept, not built again");
    }

    /// Region names come from users: past the cap, clients are built but not kept.
    #[tokio::test]
    async fn at_most_max_cached_regions_are_kept() {
        let aws = AwsClients::new(offline("us-east-1"));
        for i in 0..MAX_CACHED_REGIONS + 5 {
            let name = format!("xx-test-{i}");
            let c = aws.client(Some(&name)).await;
            assert_eq!(region(&c), Some(name), "each client has its own region");
        }
        assert_eq!(aws.clients.lock().len(), MAX_CACHED_REGIONS);
    }

    #[test]
    fn a_configuration_without_a_region_falls_back_to_us_east_1() {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        assert_eq!(region_of(&sdk), FALLBACK_REGION);
        assert_eq!(
            region(&cfn_client(&sdk, None)).as_deref(),
            Some(FALLBACK_REGION)
        );
        assert_eq!(
            region(&cfn_client(&sdk, Some("ap-south-1"))).as_deref(),
            Some("ap-south-1")
        );
        let with_region = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("ca-central-1"))
            .build();
        assert_eq!(region_of(&with_region), "ca-central-1");
        assert_eq!(
            region(&cfn_client(&with_region, None)).as_deref(),
            Some("ca-central-1"),
            "the configuration's own region"
        );
    }

    #[test]
    fn providers_are_named_as_people_know_them() {
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
        for (provider, label) in [
            (
                "EnvironmentVariable",
                "environment (AWS_ACCESS_KEY_ID)".to_owned(),
            ),
            ("SSO", format!("SSO (profile {profile})")),
            ("Login", format!("SSO (profile {profile})")),
            ("ProfileFile", format!("profile {profile}")),
            ("CredentialProcess", format!("profile {profile}")),
            (
                "WebIdentityToken",
                "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".to_owned(),
            ),
            ("IMDSv2", "instance role (IMDS)".to_owned()),
            ("EcsContainer", "container role".to_owned()),
            ("HttpProvider", "container role".to_owned()),
            ("my-vault", "my-vault".to_owned()),
        ] {
            assert_eq!(provider_label(provider), label, "{provider}");
        }
    }

    /// The provider's name is read from the credentials' `Debug`, and the secret
    /// never shows in it.
    #[test]
    fn the_provider_name_is_read_from_the_credentials() {
        let c = Credentials::new("AKIDTEST", "s3cr3t-value", None, None, "ProfileFile");
        assert_eq!(provider_name(&c), "ProfileFile");
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn tracking_works_only_with_credentials_and_a_region() {
        let report = |credentials: Option<&str>, region_set| StartupReport {
            credentials: credentials.map(str::to_owned),
            region: "us-east-1 (--aws-region)".into(),
            region_set,
        };
        assert!(report(Some("profile default"), true).ok());
        assert!(!report(None, true).ok(), "no credentials");
        assert!(
            !report(Some("profile default"), false).ok(),
            "no region set"
        );
        assert_eq!(
            report(Some("profile default"), true).line(),
            "AWS credentials: profile default; region: us-east-1 (--aws-region)"
        );
        let none = report(None, true).line();
        assert!(none.starts_with("AWS credentials: none found"), "{none}");
        assert!(none.contains("AWS_PROFILE"), "says what to set: {none}");
    }
}
