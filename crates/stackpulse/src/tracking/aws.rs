//! AWS clients for tracking and stack creation, built once from the standard chain.
//!
//! [`AwsSettings`] says what the operator chose (`--aws-endpoint-url`,
//! `--aws-region`); [`AwsClients`] loads the standard AWS configuration (credentials
//! and region from the environment, profiles, SSO, web identity, IMDS…) the first
//! time a client is needed and keeps one CloudFormation client per region. The
//! server and `stackpulse watch --direct` / `deploy` share this code.

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region, SdkConfig};
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

/// Loads the standard AWS configuration with the operator's overrides.
pub async fn load(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
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
