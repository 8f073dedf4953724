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

/// On Unix, reloads the server certificate from `cert` and `key` on every SIGHUP: new
/// handshakes present the new one, open connections stay. A failed reload (a file being
/// rewritten, a key that does not match) keeps the current certificate and is logged.
pub fn reload_on_sighup(
    tls: meridian::ServerTls,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
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
                match tls.reload_pem_files(&cert, &key) {
                    Ok(()) => tracing::info!(
                        cert = %cert.display(),
                        "certificate reloaded: new handshakes present it"
                    ),
                    Err(e) => tracing::warn!(
                        cert = %cert.display(),
                        error = %e,
                        "certificate reload failed; keeping the current one"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, cert, key);
    }
}
