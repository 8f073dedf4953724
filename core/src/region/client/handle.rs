//! [`RegionClient`]: the handle users hold.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::RegionClientBuilder;
use super::call::RegionCallBuilder;
use super::routing::Router;
use super::stats::{RegionStat, RegionStats, ServerStat};
use crate::client::{CallBuilder, Response};
use crate::discovery::{Catalog, Discovery, LocalRegistry};
use crate::status::Status;
use crate::transport::{ClientTls, TransportConfig};
use crate::wire::MethodInfo;

/// Calls routed across regions: nearest healthy region that serves each method, balanced
/// inside it, with failover, retries within a budget, and optional hedging.
///
/// Cloning is cheap; clones share connections and estimates.
#[derive(Clone)]
pub struct RegionClient {
    pub(super) inner: Arc<Router>,
}

impl std::fmt::Debug for RegionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionClient").finish_non_exhaustive()
    }
}

fn defaults(discovery: Arc<dyn Discovery>, tls: Option<ClientTls>) -> RegionClientBuilder {
    RegionClientBuilder {
        discovery,
        tls,
        home: None,
        transport: TransportConfig::default(),
        probe_interval: Duration::from_millis(250),
        silence_limit: Duration::from_secs(1),
        connect_timeout: None,
        hedged: HashSet::new(),
        retry_ratio: 0.1,
        retry_policies: Default::default(),
        default_retry: Default::default(),
        via_proxies: false,
        interceptors: Vec::new(),
        checks: Default::default(),
    }
}

impl RegionClient {
    /// A client following `discovery`, verifying servers with `tls`.
    pub fn builder(discovery: Arc<dyn Discovery>, tls: ClientTls) -> RegionClientBuilder {
        defaults(discovery, Some(tls))
    }

    /// A client of the servers registered in this process (the zero-configuration case).
    /// Each server is trusted by the exact certificate it registered for its address,
    /// looked up when it is dialled: no CA is trusted, so an intermediate or CA
    /// certificate at the end of a server's chain vouches for nothing else.
    pub fn local() -> RegionClientBuilder {
        defaults(LocalRegistry::global(), None)
    }

    /// The TLS settings the client dials servers with, when it was given them
    /// ([`RegionClient::builder`]; `None` for [`RegionClient::local`], which pins each
    /// in-process server's own certificate). Reloading their roots or client certificate
    /// ([`ClientTls::reload_roots_pem_file`], [`ClientTls::reload_identity_pem_files`])
    /// applies to this client's next handshakes.
    pub fn tls(&self) -> Option<&ClientTls> {
        match &self.inner.trust {
            super::dial::DialTrust::Tls(tls) => Some(tls),
            super::dial::DialTrust::Local(_) => None,
        }
    }

    /// Starts a call to `method`.
    pub fn call(&self, method: impl Into<String>) -> RegionCallBuilder {
        CallBuilder::new(self.clone(), method.into())
    }

    /// A unary call with typed messages and default options.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        self.call(method)
            .unary(request)
            .await
            .map(Response::into_inner)
    }

    /// Waits until some region can take calls to `method` (its servers connected and, when
    /// catalogs are known, serving the method), up to `timeout`.
    pub async fn ready(&self, method: &str, timeout: Duration) -> bool {
        // A timeout too long to add to the clock means no limit.
        let end = Instant::now().checked_add(timeout);
        loop {
            let ok = {
                let st = self.inner.lock();
                st.servers.values().any(|s| {
                    s.link.is_some()
                        && !s.silent
                        && s.draining_since.is_none()
                        && s.serves(method) == Some(true)
                })
            };
            if ok {
                return true;
            }
            if end.is_some_and(|end| Instant::now() >= end) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the connected servers' catalogs, merged, say of `method` (see
    /// [`Catalog::merge`]: idempotent only if every server listing it agrees).
    pub fn method_info(&self, method: &str) -> Option<MethodInfo> {
        let catalogs = self.server_catalogs();
        Catalog::merge_method(catalogs.iter().map(|c| c.as_ref()), method)
    }

    /// Every method some connected server's catalog lists, by name, merged by
    /// [`Catalog::merge`].
    pub fn catalog(&self) -> Vec<MethodInfo> {
        self.merged_catalog().methods().to_vec()
    }

    /// The connected servers' catalogs merged by the one policy.
    pub fn merged_catalog(&self) -> Catalog {
        let catalogs = self.server_catalogs();
        Catalog::merge(catalogs.iter().map(|c| c.as_ref()))
    }

    /// A number that changes whenever the catalogs [`merged_catalog`](Self::merged_catalog)
    /// merges change (a HELLO arrived, a server joined, left or reconnected); cheap to read,
    /// so a gateway re-merges only when it moves.
    pub fn catalog_version(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let st = self.inner.lock();
        let mut versions: Vec<(crate::discovery::ServerAddr, u64)> = st
            .servers
            .iter()
            .filter(|(_, s)| s.draining_since.is_none())
            .filter_map(|(a, s)| Some((a.clone(), s.link.as_ref()?.catalog_version())))
            .collect();
        drop(st);
        versions.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        versions.hash(&mut h);
        h.finish()
    }

    /// The catalogs of the servers that have sent a HELLO and are not draining.
    fn server_catalogs(&self) -> Vec<std::sync::Arc<Catalog>> {
        let st = self.inner.lock();
        st.servers
            .values()
            .filter(|s| s.draining_since.is_none())
            .filter_map(|s| {
                let channel = s.link.as_ref()?;
                channel.server_info()?;
                Some(channel.catalog())
            })
            .collect()
    }

    /// The client's figures for a [`Metrics`](crate::telemetry::Metrics) registry: per
    /// region RTT, health and attempts; per server RTT, health, connection, attempts,
    /// errors, ejections and 0-RTT outcomes; calls, retries, hedges sent and won, retry
    /// budget exhaustion and region switches. It does not keep the client alive.
    pub fn metrics_source(&self) -> Arc<dyn crate::telemetry::MetricsSource> {
        Arc::new(super::metrics::RegionMetrics(Arc::downgrade(&self.inner)))
    }

    /// Per-region and per-server figures.
    pub fn stats(&self) -> RegionStats {
        let now = Instant::now();
        let st = self.inner.lock();
        let current = st.selector.current().map(str::to_string);
        let mut regions: HashMap<String, RegionStat> = HashMap::new();
        let mut servers = Vec::new();
        for (addr, s) in &st.servers {
            let usable = s.usable(now);
            let r = regions
                .entry(s.region.clone())
                .or_insert_with(|| RegionStat {
                    name: s.region.clone(),
                    rtt: st.region_rtt.get(&s.region).and_then(|e| e.get(now)),
                    healthy: false,
                    in_flight: 0,
                    calls: 0,
                    errors: 0,
                    chosen: current.as_deref() == Some(s.region.as_str()),
                });
            r.healthy |= usable;
            r.in_flight += s.load.in_flight;
            r.calls += s.calls;
            r.errors += s.errors;
            let link_stats = s.link.as_ref().map(|l| l.stats());
            servers.push(ServerStat {
                region: s.region.clone(),
                addr: addr.clone(),
                service_time: s.load.service_time.get(now),
                in_flight: s.load.in_flight,
                calls: s.calls,
                errors: s.errors,
                ejected: !s.load.health.is_available(now) || s.silent,
                connected: s.link.is_some(),
                rtt: link_stats.as_ref().and_then(|l| l.rtt),
                ejections: s.load.health.ejections_total(),
                zero_rtt_accepted: link_stats.as_ref().map_or(0, |l| l.zero_rtt_accepted),
                zero_rtt_rejected: link_stats.as_ref().map_or(0, |l| l.zero_rtt_rejected),
            });
        }
        let mut regions: Vec<RegionStat> = regions.into_values().collect();
        regions.sort_by(|a, b| a.rtt.cmp(&b.rtt).then(a.name.cmp(&b.name)));
        servers.sort_by(|a, b| a.region.cmp(&b.region).then(a.addr.cmp(&b.addr)));
        RegionStats {
            regions,
            servers,
            current_region: current,
            region_switches: st.selector.switches(),
            calls: self.inner.calls.load(Ordering::Relaxed),
            retries: self.inner.retries.load(Ordering::Relaxed),
            hedges: self.inner.hedges_sent.load(Ordering::Relaxed),
            hedges_won: self.inner.hedges_won.load(Ordering::Relaxed),
            retry_budget_exhausted: self.inner.budget_exhausted.load(Ordering::Relaxed),
        }
    }
}

/// A region client is a tower [`Service`](tower_service::Service) of unary calls, like a
/// [`Channel`](crate::Channel): each call is routed, retried and hedged as configured.
/// Always ready; put a tower limit in front to bound callers.
impl tower_service::Service<crate::client::UnaryRequest> for RegionClient {
    type Response = Response<bytes::Bytes>;
    type Error = Status;
    type Future = crate::client::CallFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: crate::client::UnaryRequest) -> crate::client::CallFuture {
        let client = self.clone();
        Box::pin(async move {
            client
                .call(request.method)
                .options(request.options)
                .raw()
                .unary(&request.message)
                .await
        })
    }
}
