//! [`Proxy`]: the running proxy's handle and its counters.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::builder::ProxyBuilder;
use super::config::ProxyConfig;
use super::upstream::Upstream;
use crate::region::{RegionClient, RegionMap, StaticDiscovery};
use crate::server::Server;
use crate::status::Error;
use crate::telemetry::{MetricsSource, MetricsWriter};
use crate::transport::{ClientTls, Identity, ServerTls, TransportConfig};

/// Counters of a running proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Calls forwarded since the proxy started.
    pub calls: u64,
    /// Forwarded calls that ended with a status other than `OK`.
    pub failed: u64,
}

/// A running proxy. Dropping it closes its endpoint at once; [`Proxy::shutdown`] lets
/// calls in flight finish.
#[derive(Debug)]
pub struct Proxy {
    pub(super) server: Server,
    pub(super) tls: ServerTls,
    pub(super) upstream: Arc<Upstream>,
    pub(super) refresher: AbortOnDrop,
}

/// A proxy's figures: its own server's, its region client's, and the forwarding counters.
struct ProxyMetrics {
    server: Arc<dyn MetricsSource>,
    upstream_client: Arc<dyn MetricsSource>,
    upstream: std::sync::Weak<Upstream>,
}

impl MetricsSource for ProxyMetrics {
    fn encode(&self, w: &mut MetricsWriter<'_>) -> std::fmt::Result {
        self.server.encode(w)?;
        self.upstream_client.encode(w)?;
        if let Some(u) = self.upstream.upgrade() {
            w.counter(
                "proxy_forwarded",
                "Calls forwarded upstream.",
                &[(Vec::new(), u.calls.load(Ordering::Relaxed))],
            )?;
            w.counter(
                "proxy_forward_failed",
                "Forwarded calls that ended with a status other than OK.",
                &[(Vec::new(), u.failed.load(Ordering::Relaxed))],
            )?;
        }
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        self.server.ready()?;
        self.upstream_client.ready()
    }
}

impl Proxy {
    /// The proxy's figures for a [`Metrics`](crate::telemetry::Metrics) registry: its own
    /// server's (calls by method and status, latency, connections...), its upstream region
    /// client's (RTT, health, ejections, hedges, retries...) and the forwarding counters.
    /// Ready while it serves and some upstream region is healthy.
    pub fn metrics_source(&self) -> Arc<dyn MetricsSource> {
        Arc::new(ProxyMetrics {
            server: self.server.metrics_source(),
            upstream_client: self.upstream.client.metrics_source(),
            upstream: Arc::downgrade(&self.upstream),
        })
    }

    /// A proxy forwarding through `upstream`.
    pub fn builder(upstream: RegionClient) -> ProxyBuilder {
        ProxyBuilder {
            upstream,
            region: "proxy".into(),
            server_id: None,
            transport: TransportConfig::default(),
            max_calls_per_client: Self::DEFAULT_MAX_CALLS_PER_CLIENT,
            access_log: false,
            interceptors: Vec::new(),
        }
    }

    /// Default [`ProxyBuilder::max_calls_per_client`]: a quarter of the streams an
    /// upstream server grants one connection by default, so one caller cannot take every
    /// upstream stream the proxy shares between its callers.
    pub const DEFAULT_MAX_CALLS_PER_CLIENT: u32 =
        TransportConfig::DEFAULT_MAX_CONCURRENT_STREAMS / 4;

    /// Starts a proxy from a parsed configuration.
    pub async fn from_config(config: ProxyConfig) -> Result<Proxy, Error> {
        let identity = Identity::from_pem_files(&config.tls.cert, &config.tls.key)?;
        let mut upstream_tls = match &config.tls.ca {
            Some(ca) => ClientTls::with_roots_pem_file(ca)?,
            None => return Err(Error::Config(
                "proxy: [tls] needs `ca`, the roots that upstream servers' certificates lead to"
                    .into(),
            )),
        };
        match (&config.tls.upstream_cert, &config.tls.upstream_key) {
            (Some(cert), Some(key)) => {
                upstream_tls = upstream_tls.with_identity(Identity::from_pem_files(cert, key)?);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "proxy: [tls] upstream_cert and upstream_key go together".into(),
                ))
            }
        }
        let mut server_tls = ServerTls::new(identity);
        if let Some(ca) = &config.tls.client_ca {
            server_tls = server_tls.require_client_certs_pem_file(ca)?;
        }
        let map = RegionMap {
            regions: config.regions,
        };
        #[cfg(feature = "etcd")]
        let discovery: Arc<dyn crate::region::Discovery> = match config.etcd {
            Some(etcd) => crate::region::EtcdDiscovery::connect_with_base(etcd, map)
                .await
                .map_err(|e| Error::Config(format!("proxy: {e}")))?,
            None => static_upstream(map)?,
        };
        #[cfg(not(feature = "etcd"))]
        let discovery = match config.etcd {
            Some(_) => {
                return Err(Error::Config(
                    "proxy: the [etcd] table needs a build with the `etcd` cargo feature \
                     (`--features cli,etcd`; the build needs protoc and libprotobuf-dev)"
                        .into(),
                ))
            }
            None => static_upstream(map)?,
        };
        if let Some(home) = &config.home_region {
            // Checked at load against the [[region]] tables; etcd may list it instead.
            if discovery
                .watch()
                .borrow()
                .regions
                .iter()
                .all(|r| &r.name != home)
            {
                tracing::warn!(
                    home_region = %home,
                    "proxy: home_region {home:?} is neither a [[region]] of the configuration \
                     nor registered in etcd (yet); calls go to the nearest region until it appears"
                );
            }
        }
        let mut client = RegionClient::builder(discovery, upstream_tls);
        if let Some(home) = config.home_region {
            client = client.home_region(home);
        }
        for m in config.hedge {
            client = client.hedge(m);
        }
        let upstream = client.build()?;
        let mut builder = Proxy::builder(upstream).region(config.proxy_region);
        if let Some(id) = config.server_id {
            builder = builder.server_id(id);
        }
        builder = builder.access_log(config.access_log);
        if let Some(n) = config.max_calls_per_client {
            builder = builder.max_calls_per_client(n);
        }
        let listen = config
            .listen
            .resolve()
            .await
            .map_err(|e| Error::Config(format!("proxy: listen: {e}")))?;
        builder.bind(listen, server_tls).await
    }

    /// Reads a TOML configuration file (see [`ProxyConfig`]) and starts the proxy.
    pub async fn from_toml_file(path: impl AsRef<Path>) -> Result<Proxy, Error> {
        Proxy::from_config(ProxyConfig::from_toml_file(path)?).await
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The TLS settings the proxy serves with: [`ServerTls::set_identity`] rotates the
    /// certificate it presents to callers (new handshakes; open connections stay).
    pub fn server_tls(&self) -> &ServerTls {
        &self.tls
    }

    /// Rereads every certificate file `files` names (a `SIGHUP` handler does this with the
    /// proxy's `[tls]` table): the certificate presented to callers, the CAs callers'
    /// certificates must lead to (`client_ca`), the roots trusted upstream (`ca`) and the
    /// certificate presented upstream (`upstream_cert`, `upstream_key`). New handshakes use
    /// them; open connections stay. Each file set is tried; the first failure is returned
    /// and leaves its own setting as it was.
    pub fn reload_tls(&self, files: &super::config::ProxyTlsConfig) -> Result<(), Error> {
        files.reload(&self.tls, self.upstream().tls())
    }

    /// The region client the proxy forwards through (its stats show the upstream side).
    pub fn upstream(&self) -> &RegionClient {
        &self.upstream.client
    }

    /// Current counters.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            calls: self.upstream.calls.load(Ordering::Relaxed),
            failed: self.upstream.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking calls, lets calls in flight finish for up to `grace`, then closes.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.refresher);
        self.server.shutdown(grace).await;
    }
}

/// Stops the catalog refresher when the proxy goes.
#[derive(Debug)]
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Upstream servers listed in the configuration itself: at least one is needed.
fn static_upstream(map: RegionMap) -> Result<Arc<dyn crate::region::Discovery>, Error> {
    if map.regions.iter().all(|r| r.servers.is_empty()) {
        return Err(Error::Config(
            "proxy: no upstream server in any [[region]] (and no [etcd] table)".into(),
        ));
    }
    Ok(StaticDiscovery::new(map))
}
