//! [`ProxyBuilder`]: the proxy's upstream client, region, listening address and TLS.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use super::forward::{
    forward_bidi, forward_client_streaming, forward_server_streaming, forward_unary,
};
use super::handle::{AbortOnDrop, Proxy};
use super::upstream::Upstream;
use super::CATALOG_REFRESH;
use crate::discovery::Catalog;
use crate::region::RegionClient;
use crate::server::Server;
use crate::status::Error;
use crate::transport::{ServerTls, TransportConfig};

/// Builds a [`Proxy`] around a [`RegionClient`] that reaches the upstream servers.
pub struct ProxyBuilder {
    pub(super) upstream: RegionClient,
    pub(super) region: String,
    pub(super) server_id: Option<String>,
    pub(super) transport: TransportConfig,
    pub(super) max_calls_per_client: u32,
    pub(super) access_log: bool,
    pub(super) interceptors: Vec<Arc<dyn crate::server::Interceptor>>,
}

impl std::fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("region", &self.region)
            .field("interceptors", &self.interceptors.len())
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// The region the proxy announces in its HELLO (where it runs). Default `proxy`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The id announced in the HELLO (default: the bound address).
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }

    /// Limits of the proxy's own endpoint (message size, streams, windows).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Calls one downstream connection may have in flight through the proxy at once
    /// (default [`Proxy::DEFAULT_MAX_CALLS_PER_CLIENT`], 256). It caps the proxy
    /// endpoint's stream credit ([`TransportConfig::max_concurrent_streams`] is lowered to
    /// it), so a caller beyond it waits for credit, within its deadline, and cannot take
    /// every stream of the upstream connections the proxy shares between its callers.
    pub fn max_calls_per_client(mut self, calls: u32) -> Self {
        self.max_calls_per_client = calls;
        self
    }

    /// Logs one line per forwarded call at `info` under the target `meridian::access`:
    /// method, status, caller, the time inside the proxy, upstream and on the server, and
    /// the W3C trace ids (the proxy continues a caller's `traceparent`, or starts a trace
    /// when the caller sent none). Off by default.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Adds an interceptor the proxy's callers pass before their call is forwarded (see
    /// [`Interceptor`](crate::server::Interceptor)): authorization by the caller's
    /// certificate, per-caller limits, audit.
    pub fn intercept(mut self, interceptor: impl crate::server::Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Binds `addr` and starts forwarding on the current tokio runtime.
    pub async fn bind(mut self, addr: SocketAddr, tls: ServerTls) -> Result<Proxy, Error> {
        self.transport.max_concurrent_streams = self
            .transport
            .max_concurrent_streams
            .min(self.max_calls_per_client.max(1));
        let up = Arc::new(Upstream {
            client: self.upstream,
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            access_log: self.access_log,
            catalog: RwLock::new(Arc::new(Catalog::default())),
        });
        let templates = {
            let (u1, u2, u3, u4) = (up.clone(), up.clone(), up.clone(), up.clone());
            Server::builder()
                .raw()
                .unary("unary", move |req, ctx| forward_unary(u1.clone(), req, ctx))
                .server_streaming("server_streaming", move |req, ctx, sink| {
                    forward_server_streaming(u2.clone(), req, ctx, sink)
                })
                .client_streaming("client_streaming", move |reqs, ctx| {
                    forward_client_streaming(u3.clone(), reqs, ctx)
                })
                .bidi("bidi", move |reqs, ctx, sink| {
                    forward_bidi(u4.clone(), reqs, ctx, sink)
                })
                .typed()
        };
        let resolver = up.clone();
        let mut builder = Server::builder()
            .region(self.region)
            .transport(self.transport)
            .no_local_registry()
            .fallback(move |name| resolver.resolve(name), templates);
        if let Some(id) = self.server_id {
            builder = builder.server_id(id);
        }
        for i in self.interceptors {
            builder = builder.intercept(i);
        }
        let server = builder.bind(addr, tls.clone()).await?;
        let announce = server.catalog_handle();
        let refreshed = Arc::downgrade(&up);
        let refresher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CATALOG_REFRESH);
            let mut seen = None;
            let started = std::time::Instant::now();
            let mut hedges_checked = false;
            loop {
                ticker.tick().await;
                let Some(up) = refreshed.upgrade() else {
                    return;
                };
                if !hedges_checked {
                    hedges_checked = warn_about_hedges(&up.client, started);
                }
                // Merge only when some upstream catalog changed: the check is a hash of a
                // few numbers, the merge clones every catalog.
                let version = up.client.catalog_version();
                if seen == Some(version) {
                    continue;
                }
                seen = Some(version);
                let catalog = up.client.merged_catalog();
                let methods = catalog.methods().to_vec();
                up.remember(catalog);
                if !announce.set(methods) {
                    return;
                }
            }
        });
        Ok(Proxy {
            server,
            tls,
            upstream: up,
            refresher: AbortOnDrop(refresher),
        })
    }
}

/// Logs a warning for each hedged method that can never be hedged (no upstream serves
/// it, or it is not idempotent), once every upstream server is connected and has sent its
/// catalog, or after
/// [`HEDGE_CHECK_WAIT`] with those that are; returns whether the check was made.
fn warn_about_hedges(client: &RegionClient, started: std::time::Instant) -> bool {
    let stats = client.stats();
    // Connected, with its catalog (HELLO) known.
    let connected = stats
        .servers
        .iter()
        .filter(|s| s.connected)
        .filter(|s| {
            client
                .server_channel(&s.addr)
                .is_some_and(|c| c.server_info().is_some())
        })
        .count();
    let all = connected == stats.servers.len();
    if connected == 0 || (!all && started.elapsed() < HEDGE_CHECK_WAIT) {
        return false;
    }
    for problem in client.hedge_problems() {
        tracing::warn!("proxy configuration: {problem}");
    }
    true
}

/// How long the hedge check waits for every upstream server to connect.
const HEDGE_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
