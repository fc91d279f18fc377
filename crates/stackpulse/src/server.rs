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

use crate::app::{router, AppState};
use crate::config::Config;
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

/// The hub's limits from the configuration (every backplane alike).
pub fn hub_config(config: &Config) -> HubConfig {
    HubConfig {
        history: HistoryConfig {
            max_events: config.history_size,
            retention: config.history_retention,
            max_topics: config.max_topics,
            snapshot_budget: config.max_event_bytes,
        },
        max_subscriptions_per_connection: config.max_subscriptions,
        replay_timeout: REPLAY_TIMEOUT,
        max_event_bytes: config.max_event_bytes,
    }
}

/// Builds the application state with the embedded in-memory hub and starts its
/// retention and admission sweepers.
pub fn build_state(config: Config) -> Result<AppState, String> {
    let hub_config = hub_config(&config);
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
    let limits = HttpLimits {
        max_connections: state.config.max_http_connections(),
        header_timeout: state.config.edge.http_header_timeout,
    };
    accept_loop(
        listener,
        app,
        tls.map(crate::tls::acceptor),
        limits,
        shutdown,
        grace,
    )
    .await;
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

/// What bounds the HTTP connections, plain and TLS alike.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    /// Open connections (`--max-http-connections`): the accept loop waits for a
    /// place before it accepts, so the kernel's backlog queues the rest.
    max_connections: usize,
    /// Time to send a request's headers. hyper restarts it whenever it waits for
    /// the next request of a keep-alive connection, so it bounds idle keep-alive
    /// too (slowloris and idle sockets both end within it).
    header_timeout: Duration,
}

/// The one accept loop for plain HTTP and TLS: wait for a place, accept,
/// handshake (TLS), then hyper serves the router with upgrades (WebSockets) and
/// its timer. On shutdown it stops accepting and gives open HTTP exchanges up to
/// `grace` to finish; upgraded sockets are drained by [`serve`].
///
/// It uses hyper's own HTTP/1 connection, not hyper-util's `auto` builder: the
/// latter wraps the socket in a private type, so an upgraded plain-TCP socket
/// could not be recovered as a `TcpStream` and the fan-out's direct writes
/// (`ws::raw`) would never run.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tower_service::Service;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let places = Arc::new(tokio::sync::Semaphore::new(
        limits
            .max_connections
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let stop = CancellationToken::new();
    let open = TaskTracker::new();
    let mut make = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => match place {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = match make.call(remote).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let service = TowerToHyperService::new(service);
        let (http, tls, stop) = (http.clone(), tls.clone(), stop.clone());
        open.spawn(async move {
            let _place = place;
            let result = match tls {
                Some(acceptor) => {
                    let Some(stream) = crate::tls::handshake(&acceptor, tcp, remote).await else {
                        return;
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
                None => {
                    let conn = http
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades();
                    until_stopped(conn, &stop).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.cancel();
    open.close();
    if tokio::time::timeout(grace, open.wait()).await.is_err() {
        tracing::debug!("HTTP connections still open after the grace period");
    }
}

/// Serves one HTTP/1 connection until it ends; once `stop` fires, hyper is
/// asked to finish the exchange in flight and close (an idle keep-alive
/// connection closes at once). Upgraded sockets have left hyper by then.
async fn until_stopped<I, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &tokio_util::sync::CancellationToken,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
