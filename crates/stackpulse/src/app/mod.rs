//! The application: the state every handler and socket shares, how it is built,
//! and the router that maps every path.
//!
//! Dependency direction: the adapters (`http`, `ws`, `canvas`, `graphql`) import
//! [`AppState`] from here; only [`router`] imports the adapters, and nothing below
//! imports `app::router`, so no module imports "upward".
//!
//! # Layout
//! - [`router`]: every route of the server, behind the HTTP edge layer.
//! - [`registry`]: every open connection and the admission counter.

pub mod registry;
pub mod router;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::gate::Gate;
use crate::auth::PublisherKeys;
use crate::config::Config;
use crate::deployments::{Deployments, DeploymentsConfig};
use crate::hub::Hub;
use crate::tracking::{aws::AwsSettings, Tracking, TrackingConfig};
use registry::Registry;

pub use router::router;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub publishers: Arc<PublisherKeys>,
    /// Authentication, topic authorization and admission limits.
    pub gate: Arc<Gate>,
    /// Cancelled when shutdown starts: `/readyz` turns 503, new sockets are refused.
    pub shutdown: CancellationToken,
    /// Every WebSocket connection (and deployment follower), so shutdown can wait
    /// for them to drain.
    pub tasks: TaskTracker,
    /// The CloudFormation pollers of `stack:*` topics.
    pub tracking: Arc<Tracking>,
    /// Multi-stack deployments followed by this node.
    pub deployments: Arc<Deployments>,
}

impl AppState {
    pub fn new(hub: Hub, config: Config) -> Result<AppState, String> {
        let gate = Gate::new(config.auth.clone(), config.admission)?;
        crate::http::ingest::describe_metrics();
        let tracking = Tracking::new(
            hub.clone(),
            TrackingConfig {
                aws: AwsSettings {
                    endpoint_url: config.aws_endpoint_url.clone(),
                    region: config.aws_region.clone(),
                },
                poll_interval: config.poll_interval,
                grace: config.tracker_grace,
                lease_ttl: config.poller_lease,
                max_pollers: config.max_pollers,
                push_poll_interval: config.push_poll_interval,
                aws_max_rps: config.aws_max_rps,
                budget_redis_url: config.redis_url.clone(),
            },
        )?;
        let gate = Arc::new(gate);
        hub.set_rules(crate::hub::Rules {
            policy: Arc::new(crate::topic_policy::ServerPolicy::new(
                gate.clone(),
                tracking.clone(),
                config.stacks.clone(),
            )),
            interest: tracking.clone(),
        });
        let tasks = TaskTracker::new();
        let deployments = Deployments::new(
            hub.clone(),
            tracking.clone(),
            tasks.clone(),
            DeploymentsConfig {
                timeout: config.deployment_timeout,
                lease_ttl: config.poller_lease,
            },
        );
        Ok(AppState {
            tracking,
            deployments,
            hub,
            gate,
            publishers: Arc::new(PublisherKeys::new(
                &config.publisher_keys,
                &config.publisher_key_hashes,
            )),
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
            shutdown: CancellationToken::new(),
            tasks,
        })
    }
}
