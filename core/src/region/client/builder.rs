//! [`RegionClientBuilder`]: discovery, trust, home region, hedging, probing, retries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::dial::{DialTrust, ServerChecks};
use super::handle::RegionClient;
use super::prober::probe_loop;
use super::routing::{Router, Seen};
use super::table::State;
use crate::call::RetryPolicy;
use crate::client::Interceptor;
use crate::discovery::Discovery;
use crate::region::budget::RetryBudget;
use crate::region::select::RegionSelector;
use crate::status::Error;
use crate::transport::{ClientTls, TransportConfig};

/// Builds a [`RegionClient`].
pub struct RegionClientBuilder {
    pub(super) discovery: Arc<dyn Discovery>,
    pub(super) tls: Option<ClientTls>,
    pub(super) home: Option<String>,
    pub(super) transport: TransportConfig,
    pub(super) probe_interval: Duration,
    pub(super) silence_limit: Duration,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) hedged: HashSet<String>,
    pub(super) retry_ratio: f64,
    pub(super) retry_policies: HashMap<String, RetryPolicy>,
    pub(super) default_retry: RetryPolicy,
    pub(super) via_proxies: bool,
    pub(super) interceptors: Vec<Arc<dyn Interceptor>>,
    pub(super) checks: ServerChecks,
}

impl std::fmt::Debug for RegionClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionClientBuilder")
            .field("home", &self.home)
            .field("probe_interval", &self.probe_interval)
            .finish_non_exhaustive()
    }
}

impl RegionClientBuilder {
    /// Prefers this region whenever it is healthy, whatever the RTTs say.
    pub fn home_region(mut self, region: impl Into<String>) -> Self {
        self.home = Some(region.into());
        self
    }

    /// Transport limits for the connections to servers. The keep-alive interval is set to
    /// the probe interval, so every connection's RTT stays fresh.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// How often connections are checked and RTTs sampled (default 250 ms). Each idle
    /// connection carries one small keep-alive packet each way per interval.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.max(Duration::from_millis(20));
        self
    }

    /// A server that sends nothing for this long, while being pinged every probe
    /// interval, is ejected (default 1 s): this bounds outage detection.
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = limit;
        self
    }

    /// Gives up a connection attempt (QUIC and TLS handshake) to one server after this
    /// long. The default is the transport's handshake timeout, capped at 3 s: a region
    /// client has other servers to try, so it should not wait long on one. Raise it for
    /// links or hosts where a handshake takes longer than that.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Hedges calls to `method`: when the first answer is later than the method's
    /// observed p95, a second copy goes to the next choice, the first answer wins and the
    /// other copy is cancelled. Only for idempotent methods.
    pub fn hedge(mut self, method: impl Into<String>) -> Self {
        self.hedged.insert(method.into());
        self
    }

    /// Reaches each region through the proxies the map lists for it (nearest proxy by
    /// RTT, failover between them) instead of calling its servers directly. Regions that
    /// list no proxy are still called directly.
    pub fn via_proxies(mut self) -> Self {
        self.via_proxies = true;
        self
    }

    /// How calls to `method` are sent again after a failure: most attempts, and after
    /// which codes an idempotent call may go again. Whether a call may go again at all
    /// stays the one rule: provably not run, or idempotent.
    pub fn retry_policy(mut self, method: impl Into<String>, policy: RetryPolicy) -> Self {
        self.retry_policies.insert(method.into(), policy);
        self
    }

    /// The retry policy of methods without one of their own (default:
    /// [`RetryPolicy::default`]: 4 attempts, after server failures).
    pub fn default_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = policy;
        self
    }

    /// Adds an interceptor to the client's chain: it sees every call once (retries and
    /// hedges included) before it is routed, and how it ended (see [`Interceptor`]);
    /// interceptors run in the order added.
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Retries and hedges together may add at most this share of calls (default 0.1).
    pub fn retry_budget(mut self, ratio: f64) -> Self {
        self.retry_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Every server of `region` must prove `server_name` (a DNS name or an IP address),
    /// whatever the region map or the registry record says. A registry (etcd, say) then
    /// decides where servers are, but not which name their certificates are checked
    /// against: a record pointing at a host that holds some other valid certificate from
    /// the same CA is refused. Proxies of the region (with
    /// [`via_proxies`](Self::via_proxies)) keep the names of their own entries.
    pub fn expect_server_name(
        mut self,
        region: impl Into<String>,
        server_name: impl Into<String>,
    ) -> Self {
        self.checks.names.insert(region.into(), server_name.into());
        self
    }

    /// Pins every server to the certificate the map publishes for it: the SHA-256 of the
    /// end-entity certificate a server presents must equal its entry's `cert_sha256`
    /// (written by a server registering in etcd, or given in a region file), on top of
    /// the normal verification. A server whose entry has no hash is not dialled; one that
    /// presents another certificate is refused during the handshake. Either way it is
    /// ejected like any server that cannot be reached, the reason shows in the error of
    /// calls that find no other server, and the other servers keep serving. A region
    /// file turns this on for one region with `pin_cert_sha256 = true`.
    ///
    /// This only helps when the hashes come from a source an attacker cannot write: see
    /// the [`discovery`](crate::discovery) module on the registry as part of the trust
    /// base.
    pub fn pin_cert_sha256(mut self) -> Self {
        self.checks.pin_all = true;
        self
    }

    /// Starts the client (its background prober runs on the current tokio runtime).
    pub fn build(self) -> Result<RegionClient, Error> {
        let trust = match self.tls {
            Some(tls) => DialTrust::Tls(tls),
            None => DialTrust::Local(Default::default()),
        };
        let mut transport = self.transport;
        transport.keep_alive_interval = Some(self.probe_interval);
        transport.handshake_timeout = self
            .connect_timeout
            .unwrap_or_else(|| transport.handshake_timeout.min(Duration::from_secs(3)));
        let mut selector = RegionSelector::new();
        selector.set_home(self.home.clone());
        let map = self.discovery.watch();
        let (closed, _) = watch::channel(());
        let inner = Arc::new(Router {
            trust,
            checks: self.checks,
            transport,
            probe_interval: self.probe_interval,
            hedged: self.hedged,
            retry_policies: self.retry_policies,
            default_retry: self.default_retry,
            via_proxies: self.via_proxies,
            interceptors: self.interceptors.into(),
            map,
            _discovery: self.discovery,
            state: Mutex::new(State::new(
                selector,
                RetryBudget::new(self.retry_ratio),
                self.silence_limit,
            )),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges_sent: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
            closed,
            last_connect_error: Mutex::new(None),
        });
        inner.sync_membership(Instant::now());
        tokio::spawn(probe_loop(Arc::downgrade(&inner)));
        Ok(RegionClient { inner })
    }
}
