//! Running the server: build the hub and the routes, serve until shutdown, drain.
//!
//! [`serve`] takes a bound listener and a shutdown future (tests pass their own;
//! the binary passes SIGINT/SIGTERM). Shutdown: stop accepting, mark not ready,
//! ask every socket to close with 1001, then wait up to the grace period for the
//! connections to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{router, AppState};
use crate::hub::{CloseReason, HistoryConfig, Hub, HubConfig};

/// How long a replay may wait for room in a slow client's queue.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0}: no authentication is configured, so stackpulse serves \
         loopback addresses only (use --bind 127.0.0.1:PORT)"
    )]
    PublicWithoutAuth(SocketAddr),
}

/// Checks the configuration against the rules that keep an unauthenticated
/// server private.
pub fn check_bind(config: &Config) -> Result<(), StartError> {
    if config.auth.is_none() && !config.bind.ip().is_loopback() {
        return Err(StartError::PublicWithoutAuth(config.bind));
    }
    Ok(())
}

/// Builds the application state with the embedded in-memory hub and starts its
/// retention and admission sweepers.
pub fn build_state(config: Config) -> Result<AppState, String> {
    let hub_config = HubConfig {
        history: HistoryConfig {
            max_events: config.history_size,
            retention: config.history_retention,
            max_topics: config.max_topics,
            snapshot_budget: config.max_event_bytes,
        },
        max_subscriptions_per_connection: config.max_subscriptions,
        replay_timeout: REPLAY_TIMEOUT,
        max_event_bytes: config.max_event_bytes,
    };
    if let Some(url) = &config.redis_url {
        let history = hub_config.history;
        let (hub, _) = Hub::try_new(hub_config, |sink| {
            crate::hub::redis::RedisBackplane::start(url, history, sink)
        })?;
        tracing::info!("hub on Redis (history, seqs, leases shared by every node)");
        let every = config.presence_interval;
        let state = finish_state(hub, config)?;
        let (hub, registry) = (state.hub.clone(), Arc::downgrade(&state.registry));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                if let Err(e) = hub.report_presence(registry.len()).await {
                    tracing::debug!(error = %e, "presence report failed");
                }
            }
        });
        return Ok(state);
    }
    let (hub, memory) = Hub::in_memory(hub_config);
    let every =
        (config.history_retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let weak = std::sync::Arc::downgrade(&memory);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(memory) = weak.upgrade() else { return };
            memory.sweep(std::time::Instant::now());
        }
    });
    finish_state(hub, config)
}

/// The state around a built hub, and the admission sweeper.
fn finish_state(hub: Hub, config: Config) -> Result<AppState, String> {
    let state = AppState::new(hub, config)?;
    let gate = Arc::downgrade(&state.gate);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let Some(gate) = gate.upgrade() else { return };
            gate.admission.sweep();
        }
    });
    Ok(state)
}

/// Serves on `listener` until `shutdown` resolves, then drains. With
/// [`Config::tls`] set, the certificate and key are loaded first and the server
/// speaks HTTPS/WSS.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::load(files).map_err(std::io::Error::other)?),
        None => None,
    };
    serve_with_tls(listener, config, tls, shutdown).await
}

/// [`serve`] with the TLS config already loaded (the binary loads it before it
/// prints its listening line, so a bad file is a start-up error).
pub async fn serve_with_tls(
    listener: TcpListener,
    config: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::metrics::spawn_upkeep();
    let grace = config.shutdown_grace;
    let state = build_state(config).map_err(std::io::Error::other)?;
    let app = router(state.clone());
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections with 1001");
        closing.shutdown.cancel();
        closing.registry.close_all(CloseReason::Shutdown);
    };
    match tls {
        Some(tls) => crate::tls::serve(listener, app, tls, shutdown, grace).await?,
        None => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?
        }
    }
    state.registry.close_all(CloseReason::Shutdown);
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = state.registry.len(),
            "shutdown grace period over; dropping remaining connections"
        );
    }
    Ok(())
}
