//! Ctrl-C and SIGTERM; SIGHUP to reload certificates.

/// Waits for Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// On Unix, runs `reload` on every SIGHUP (rereading certificate files: new handshakes
/// use them, open connections stay). A failed reload (a file being rewritten, a key that
/// does not match) keeps what was in use and is logged.
pub fn reload_on_sighup(
    what: String,
    reload: impl Fn() -> Result<(), meridian::Error> + Send + 'static,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: certificates will not be reloaded");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match reload() {
                    Ok(()) => tracing::info!(
                        files = %what,
                        "certificates reloaded: new handshakes use them"
                    ),
                    Err(e) => tracing::warn!(
                        files = %what,
                        error = %e,
                        "certificate reload failed; keeping what was in use"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (what, reload);
    }
}
