//! Process signals: the shutdown future the binary and `stackpulse bench`'s token
//! issuer wait on (a leaf module, so neither the CLI nor the bench imports the
//! other).

/// SIGINT or SIGTERM. The SIGTERM handler is installed by this call, not on first
/// poll, so a signal that arrives right after the listening line is not lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match term {
                Some(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                None => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}
