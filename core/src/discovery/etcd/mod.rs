//! Discovery in etcd (feature `etcd`): servers register themselves under a key prefix with
//! a lease they keep alive, and clients read the prefix and then watch it.
//!
//! Why etcd: a fleet spread over regions needs a registry that is itself replicated, and
//! teams that run services in several regions usually run etcd already.
//!
//! How it works:
//! - A server's [`EtcdRegistration`] grants a lease of [`EtcdConfig::lease_ttl`], writes one
//!   key `{prefix}{region}/{server_id}` whose value is a JSON [`ServerRecord`] (region, id,
//!   address, certificate name and fingerprint, method catalog, load), and keeps the lease
//!   alive (a keep-alive every third of the TTL). A clean stop revokes the lease, so the key
//!   goes at once; a server that dies stops the keep-alives and etcd deletes the key when the
//!   lease expires, one TTL later at most.
//! - An [`EtcdDiscovery`] reads the prefix, then watches it from the revision after the one
//!   it read, so no change falls in between. When the watch breaks (etcd restarted, network
//!   cut) it is opened again from the last revision applied; if etcd has compacted that
//!   revision away, the prefix is read again. Until etcd answers again, the last known
//!   membership stays in force: a registry outage never empties the region map.
//! - A value that does not parse is logged and skipped (the key counts as no server).
//!
//! From code:
//!
//! ```no_run
//! # async fn demo(tls: meridian::ClientTls) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use meridian::region::{EtcdConfig, EtcdDiscovery, RegionClient};
//! let config = EtcdConfig::new(["http://127.0.0.1:2379"]).lease_ttl(Duration::from_secs(5));
//! let discovery = EtcdDiscovery::connect(config).await?;
//! let client = RegionClient::builder(discovery, tls).build()?;
//! # Ok(()) }
//! ```
//!
//! From a region file, an `[etcd]` table next to (or instead of) the `[[region]]` lists
//! (files without it keep working; [`RegionMap`](crate::discovery::RegionMap) leaves the table to this module):
//!
//! ```toml
//! [etcd]
//! endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]
//! prefix = "/meridian/"    # default
//! lease_ttl = 10           # seconds, default 10
//!
//! [etcd.tls]               # optional: https endpoints
//! ca = "etcd-ca.pem"
//! cert = "client.pem"      # optional client certificate and key (mutual TLS)
//! key = "client-key.pem"
//! domain = "etcd.example.com"
//! ```

mod config;
mod follow;
mod record;
mod registration;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use config::{EtcdConfig, EtcdTls};
pub use follow::EtcdDiscovery;
pub use record::{CatalogEntry, ServerRecord};
pub use registration::EtcdRegistration;

/// Errors of the etcd backend.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration is not usable (no endpoints, a bad TLS file, a bad TOML table).
    #[error("etcd configuration error: {0}")]
    Config(String),
    /// etcd refused a request or could not be reached. Displayed with the root cause in
    /// a few words (`connection refused`), not the gRPC client's debug dump.
    #[error("etcd: {context}: {}", root_cause(source))]
    Etcd {
        /// What was being done.
        context: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// etcd did not answer within the connect timeout.
    #[error("etcd: {0}: no answer within the connect timeout")]
    Timeout(String),
}

impl EtcdError {
    /// Whether etcd could not be reached at all (nothing listening, no route, no answer
    /// in time), as opposed to a bad configuration or a request etcd refused.
    pub fn is_unreachable(&self) -> bool {
        match self {
            EtcdError::Timeout(_) => true,
            EtcdError::Config(_) => false,
            EtcdError::Etcd { source, .. } => match source {
                etcd_client::Error::IoError(_) | etcd_client::Error::TransportError(_) => true,
                // gRPC's UNAVAILABLE (14): what a failed connection becomes.
                etcd_client::Error::GRpcStatus(s) => i32::from(s.code()) == 14,
                _ => false,
            },
        }
    }

    /// Why, in a few words: `connection refused`, `no answer within the connect timeout`,
    /// or etcd's own message.
    pub fn cause(&self) -> String {
        match self {
            EtcdError::Config(why) => why.clone(),
            EtcdError::Etcd { source, .. } => root_cause(source),
            EtcdError::Timeout(_) => "no answer within the connect timeout".into(),
        }
    }
}

/// The root of an etcd client error, in a few words: the innermost error of its source
/// chain (an I/O error named by its kind), or etcd's own message.
pub(crate) fn root_cause(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::TransportError(t) => t.source(),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    let mut innermost = None;
    while let Some(err) = next {
        innermost = Some(err);
        next = err.source();
    }
    if let Some(err) = innermost {
        return match err.downcast_ref::<std::io::Error>() {
            Some(io) => io_words(io),
            None => err.to_string(),
        };
    }
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => s.message().to_string(),
        other => other.to_string(),
    }
}

/// An I/O error in a few words: `connection refused` rather than `Connection refused (os
/// error 111)`.
fn io_words(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "connection timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        AddrNotAvailable => "address not available".into(),
        _ => io.to_string(),
    }
}

pub(super) fn etcd_err(context: &str) -> impl FnOnce(etcd_client::Error) -> EtcdError + '_ {
    move |source| EtcdError::Etcd {
        context: context.to_string(),
        source,
    }
}

/// Runs `fut` with the connect timeout.
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(etcd_err(what)),
        Err(_) => Err(EtcdError::Timeout(what.to_string())),
    }
}
