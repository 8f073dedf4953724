//! [`RegionClient`]: calls routed across regions. This file only moves data: it owns the
//! channels, feeds samples into the decision structs of the sibling modules, and asks them
//! where each call goes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, field, Instrument};

use super::balance::{self, ServerLoad};
use super::budget::RetryBudget;
use super::estimate::RttEstimate;
use super::hedge::HedgePolicy;
use super::map::{Discovery, LocalRegistry, RegionMap, ServerEndpoint};
use super::rendezvous;
use super::select::RegionSelector;
use crate::client::{CallBuilder, Channel, RequestSink, Response, ResponseFuture, Streaming};
use crate::codec::Codec;
use crate::status::{Error, Status};
use crate::transport::{ClientTls, TransportConfig};
use crate::wire::{Code, Metadata, MethodInfo};

/// Builds a [`RegionClient`].
pub struct RegionClientBuilder {
    discovery: Arc<dyn Discovery>,
    tls: Option<ClientTls>,
    home: Option<String>,
    transport: TransportConfig,
    probe_interval: Duration,
    silence_limit: Duration,
    hedged: HashSet<String>,
    retry_ratio: f64,
    via_proxies: bool,
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

    /// Retries and hedges together may add at most this share of calls (default 0.1).
    pub fn retry_budget(mut self, ratio: f64) -> Self {
        self.retry_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Starts the client (its background prober runs on the current tokio runtime).
    pub fn build(self) -> Result<RegionClient, Error> {
        let tls = match self.tls {
            Some(tls) => tls,
            None => {
                let roots = LocalRegistry::global().roots();
                ClientTls::with_roots(roots.into_iter().filter(|c| !c.is_empty()))?
            }
        };
        let mut transport = self.transport;
        transport.keep_alive_interval = Some(self.probe_interval);
        transport.handshake_timeout = transport.handshake_timeout.min(Duration::from_secs(3));
        let mut selector = RegionSelector::new();
        selector.set_home(self.home.clone());
        let map = self.discovery.watch();
        let inner = Arc::new(Inner {
            tls,
            transport,
            probe_interval: self.probe_interval,
            silence_limit: self.silence_limit,
            hedged: self.hedged,
            via_proxies: self.via_proxies,
            map,
            _discovery: self.discovery,
            state: Mutex::new(State {
                servers: HashMap::new(),
                selector,
                region_rtt: HashMap::new(),
                budget: RetryBudget::new(self.retry_ratio),
                hedges: HashMap::new(),
                rng: 0x853c_49e6_748f_ea9b,
            }),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges_sent: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
        });
        inner.sync_membership(Instant::now());
        tokio::spawn(probe_loop(Arc::downgrade(&inner)));
        Ok(RegionClient { inner })
    }
}

/// Per-server state: its channel and the samples that decide whether it gets calls.
struct ServerState {
    endpoint: ServerEndpoint,
    region: String,
    channel: Option<Channel>,
    connecting: bool,
    load: ServerLoad,
    calls: u64,
    errors: u64,
    rx_datagrams: u64,
    last_heard: Instant,
    silent: bool,
    ever_connected: bool,
    /// Bumped when the server is ejected, so attempts in flight to it give up at once.
    ejected: watch::Sender<u64>,
}

impl ServerState {
    fn serves(&self, method: &str) -> Option<bool> {
        let hello = self.channel.as_ref()?.server_info()?;
        Some(hello.methods.iter().any(|m| m.name == method))
    }
}

struct State {
    servers: HashMap<SocketAddr, ServerState>,
    selector: RegionSelector,
    region_rtt: HashMap<String, RttEstimate>,
    budget: RetryBudget,
    hedges: HashMap<String, HedgePolicy>,
    rng: u64,
}

impl State {
    fn next_rand(&mut self) -> u64 {
        // splitmix64: decisions need cheap, not secret, randomness.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Inner {
    tls: ClientTls,
    transport: TransportConfig,
    probe_interval: Duration,
    silence_limit: Duration,
    hedged: HashSet<String>,
    via_proxies: bool,
    map: watch::Receiver<RegionMap>,
    /// Held so the discovery source (and its updates) live as long as the client.
    _discovery: Arc<dyn Discovery>,
    state: Mutex<State>,
    calls: AtomicU64,
    retries: AtomicU64,
    hedges_sent: AtomicU64,
    hedges_won: AtomicU64,
}

/// Where one attempt goes.
struct Target {
    addr: SocketAddr,
    region: String,
    channel: Channel,
    ejected: watch::Receiver<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the routing state unusable for long:
        // every field is a sample store that the next tick refreshes.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds servers that appeared in the map and forgets those that left.
    fn sync_membership(&self, now: Instant) {
        let map = self.map.borrow().clone();
        let mut st = self.lock();
        let mut present = HashSet::new();
        for region in &map.regions {
            let endpoints = if self.via_proxies && !region.proxies.is_empty() {
                &region.proxies
            } else {
                &region.servers
            };
            for ep in endpoints {
                present.insert(ep.addr);
                st.servers.entry(ep.addr).or_insert_with(|| ServerState {
                    endpoint: ep.clone(),
                    region: region.name.clone(),
                    channel: None,
                    connecting: false,
                    load: ServerLoad::new(),
                    calls: 0,
                    errors: 0,
                    rx_datagrams: 0,
                    last_heard: now,
                    silent: false,
                    ever_connected: false,
                    ejected: watch::channel(0).0,
                });
            }
        }
        st.servers.retain(|addr, s| {
            let keep = present.contains(addr);
            if !keep {
                if let Some(ch) = &s.channel {
                    ch.disconnect();
                }
            }
            keep
        });
    }

    /// One probe tick: connect where needed, sample RTTs, detect silent servers, and tell
    /// the region selector what it needs.
    fn tick(self: &Arc<Self>, now: Instant) {
        self.sync_membership(now);
        let mut to_connect = Vec::new();
        let mut st = self.lock();
        let st = &mut *st;
        for (addr, s) in st.servers.iter_mut() {
            // A silent server whose connection is gone (it restarted, or the outage outlived
            // the idle timeout) is dialled afresh once its ejection allows.
            if s.silent
                && s.channel.as_ref().is_some_and(|c| !c.is_connected())
                && s.load.health.is_available(now)
            {
                s.channel = None;
            }
            let Some(ch) = &s.channel else {
                if !s.connecting && s.load.health.is_available(now) {
                    s.connecting = true;
                    to_connect.push((*addr, s.endpoint.clone()));
                }
                continue;
            };
            let stats = ch.stats();
            if stats.datagrams_received != s.rx_datagrams {
                s.rx_datagrams = stats.datagrams_received;
                s.last_heard = now;
                if let (Some(min), Some(srtt)) = (stats.min_rtt, stats.rtt) {
                    st.region_rtt
                        .entry(s.region.clone())
                        .or_default()
                        .observe(min, srtt, now);
                }
                if s.silent {
                    s.silent = false;
                    debug!(server = %addr, region = %s.region, "server heard from again");
                    s.load.health.record_success(now);
                }
            } else if !s.silent && now.duration_since(s.last_heard) > self.silence_limit {
                s.silent = true;
                debug!(server = %addr, region = %s.region, "server silent, ejecting");
                s.load.health.eject_now(now);
                s.ejected.send_modify(|g| *g += 1);
            }
        }
        // A region whose servers never connected is not reported: "not yet connected" at
        // start-up is no failure, and must not start the selector's hold-down.
        let mut regions: HashMap<&str, bool> = HashMap::new();
        for s in st.servers.values().filter(|s| s.ever_connected) {
            let usable = s.channel.is_some() && !s.silent && s.load.health.is_available(now);
            *regions.entry(s.region.as_str()).or_default() |= usable;
        }
        for (region, healthy) in regions {
            let rtt = st.region_rtt.get(region).and_then(|e| e.get(now));
            st.selector.update(region, rtt, healthy, now);
        }
        for (addr, ep) in to_connect {
            tokio::spawn(connect_server(Arc::downgrade(self), addr, ep));
        }
    }

    /// Chooses the server for an attempt: region by the selector among regions that serve
    /// the method, then the key's owner or the balancer's pick inside it.
    fn pick(&self, method: &str, key: Option<&[u8]>, exclude: &[SocketAddr]) -> Option<Target> {
        let now = Instant::now();
        let mut st = self.lock();
        let rand = st.next_rand();
        let usable =
            |s: &ServerState| s.channel.is_some() && !s.silent && s.load.health.is_available(now);
        // Servers that are known to serve the method; if no catalog has arrived yet from
        // any usable server, every usable server is a candidate.
        let known_serving: Vec<SocketAddr> = st
            .servers
            .iter()
            .filter(|(a, s)| !exclude.contains(a) && usable(s) && s.serves(method) == Some(true))
            .map(|(a, _)| *a)
            .collect();
        // Then servers whose catalog is not known yet; and when no catalog lists the method
        // at all (it may have been added since the last HELLO), any usable server: its
        // answer is authoritative, and UNIMPLEMENTED moves the call on to the next one.
        let candidates: Vec<SocketAddr> = if known_serving.is_empty() {
            let unknown: Vec<SocketAddr> = st
                .servers
                .iter()
                .filter(|(a, s)| !exclude.contains(a) && usable(s) && s.serves(method).is_none())
                .map(|(a, _)| *a)
                .collect();
            if unknown.is_empty() {
                st.servers
                    .iter()
                    .filter(|(a, s)| !exclude.contains(a) && usable(s))
                    .map(|(a, _)| *a)
                    .collect()
            } else {
                unknown
            }
        } else {
            known_serving
        };
        if candidates.is_empty() {
            return None;
        }
        // The selector sees every region that serves the method, healthy or not (it knows
        // health from the probe ticks), so its current choice moves when a region fails.
        // If the chosen region has no usable server left for this attempt (all tried),
        // the nearest region that has one is used without moving the current choice.
        let serving_regions = |st: &State, only_usable: bool| -> Vec<String> {
            let mut v: Vec<String> = st
                .servers
                .iter()
                .filter(|(a, s)| {
                    let serves = s.serves(method) != Some(false) || candidates.contains(a);
                    serves && (!only_usable || candidates.contains(a))
                })
                .map(|(_, s)| s.region.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let all = serving_regions(&st, false);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut region = st.selector.choose(&refs, now, rand)?;
        let has_candidate = |st: &State, r: &str| {
            candidates
                .iter()
                .any(|a| st.servers.get(a).is_some_and(|s| s.region == r))
        };
        if !has_candidate(&st, &region) {
            let usable = serving_regions(&st, true);
            let refs: Vec<&str> = usable.iter().map(String::as_str).collect();
            region = st.selector.choose(&refs, now, rand)?;
        }
        let in_region: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|a| st.servers.get(a).is_some_and(|s| s.region == region))
            .collect();
        let addr = match key {
            Some(key) => {
                let ids: Vec<String> = in_region.iter().map(|a| a.to_string()).collect();
                let owner = rendezvous::owner(key, &ids)?;
                in_region
                    .get(ids.iter().position(|i| i == owner)?)
                    .copied()?
            }
            None => {
                let loads: Vec<&ServerLoad> = in_region
                    .iter()
                    .filter_map(|a| st.servers.get(a).map(|s| &s.load))
                    .collect();
                let i = balance::pick(&loads, now, rand.rotate_left(17))?;
                *in_region.get(i)?
            }
        };
        let s = st.servers.get_mut(&addr)?;
        s.load.in_flight += 1;
        s.calls += 1;
        Some(Target {
            addr,
            region,
            channel: s.channel.clone()?,
            ejected: s.ejected.subscribe(),
        })
    }

    /// Whether a call that finds no usable server should wait a little: at start-up, while
    /// some server has never connected but may still (its first dial is under way), or
    /// while membership is still empty. Once every server has been tried and ejected,
    /// calls fail at once instead.
    fn may_still_connect(&self) -> bool {
        let now = Instant::now();
        let st = self.lock();
        st.servers.is_empty()
            || st
                .servers
                .values()
                .any(|s| !s.ever_connected && s.load.health.is_available(now))
    }

    /// Records an attempt's outcome.
    fn finish(&self, addr: SocketAddr, latency: Duration, timeout: Option<Duration>, failed: bool) {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(s) = st.servers.get_mut(&addr) {
            s.load.in_flight = s.load.in_flight.saturating_sub(1);
            if failed {
                s.errors += 1;
                // Capped so repeated failures do not compound the estimate without bound
                // (2 x estimate, where the estimate is itself a failure cost).
                let cap = timeout.unwrap_or(Duration::from_secs(1)).max(latency);
                let estimate = s.load.service_time.get(now).map(|e| e.min(cap));
                let cost = balance::failure_cost(latency, timeout, estimate);
                s.load.service_time.observe(cost, now);
                s.load.health.record_failure(now);
            } else {
                s.load.service_time.observe(latency, now);
                s.load.health.record_success(now);
            }
        }
    }
}

async fn connect_server(inner: Weak<Inner>, addr: SocketAddr, ep: ServerEndpoint) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let result = Channel::builder(addr, strong.tls.clone())
        .server_name(ep.server_name.clone())
        .transport(strong.transport.clone())
        .connect()
        .await;
    let now = Instant::now();
    let mut st = strong.lock();
    let Some(s) = st.servers.get_mut(&addr) else {
        return;
    };
    s.connecting = false;
    match result {
        Ok(ch) => {
            debug!(server = %addr, region = %s.region, "connected");
            // The handshake already measured the round trip: use it at once, so the first
            // calls go to the nearest region rather than to whichever answered first. A
            // connection resumed with 0-RTT is usable before it heard from the server: its
            // RTT is then QUIC's initial guess, not a measure, and the next probe tick
            // brings the first real sample instead.
            let region = s.region.clone();
            let stats = ch.stats();
            let measured = stats.datagrams_received > 0;
            if let (true, Some(min), Some(srtt)) = (measured, stats.min_rtt, stats.rtt) {
                st.region_rtt
                    .entry(region.clone())
                    .or_default()
                    .observe(min, srtt, now);
                let rtt = st.region_rtt.get(&region).and_then(|e| e.get(now));
                st.selector.update(&region, rtt, true, now);
            }
            let Some(s) = st.servers.get_mut(&addr) else {
                return;
            };
            s.channel = Some(ch);
            s.ever_connected = true;
            s.last_heard = now;
            s.silent = false;
        }
        Err(e) => {
            debug!(server = %addr, region = %s.region, error = %e, "cannot connect");
            s.load.health.eject_now(now);
        }
    }
}

async fn probe_loop(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.probe_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick(Instant::now());
    }
}

/// Calls routed across regions: nearest healthy region that serves each method, balanced
/// inside it, with failover, retries within a budget, and optional hedging.
///
/// Cloning is cheap; clones share connections and estimates.
#[derive(Clone)]
pub struct RegionClient {
    inner: Arc<Inner>,
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
        hedged: HashSet::new(),
        retry_ratio: 0.1,
        via_proxies: false,
    }
}

impl RegionClient {
    /// A client following `discovery`, verifying servers with `tls`.
    pub fn builder(discovery: Arc<dyn Discovery>, tls: ClientTls) -> RegionClientBuilder {
        defaults(discovery, Some(tls))
    }

    /// A client of the servers registered in this process (the zero-configuration case),
    /// trusting their certificates.
    pub fn local() -> RegionClientBuilder {
        defaults(LocalRegistry::global(), None)
    }

    /// Starts a call to `method`.
    pub fn call(&self, method: impl Into<String>) -> RegionCallBuilder {
        RegionCallBuilder {
            client: self.clone(),
            method: method.into(),
            timeout: None,
            metadata: Metadata::new(),
            idempotent: None,
            key: None,
            codec: Codec::Postcard,
            forward: false,
        }
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
        let end = Instant::now() + timeout;
        loop {
            let ok = {
                let st = self.inner.lock();
                st.servers
                    .values()
                    .any(|s| s.channel.is_some() && !s.silent && s.serves(method) == Some(true))
            };
            if ok {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the servers' catalogs say about `method` (the first catalog that lists it).
    pub fn method_info(&self, method: &str) -> Option<MethodInfo> {
        let st = self.inner.lock();
        st.servers.values().find_map(|s| {
            let hello = s.channel.as_ref()?.server_info()?;
            hello.methods.iter().find(|m| m.name == method).cloned()
        })
    }

    /// Every method some connected server's catalog lists, by name.
    pub fn catalog(&self) -> Vec<MethodInfo> {
        let st = self.inner.lock();
        let mut all: HashMap<String, MethodInfo> = HashMap::new();
        for s in st.servers.values() {
            let Some(hello) = s.channel.as_ref().and_then(Channel::server_info) else {
                continue;
            };
            for m in &hello.methods {
                all.entry(m.name.clone()).or_insert_with(|| m.clone());
            }
        }
        let mut v: Vec<MethodInfo> = all.into_values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Per-region and per-server figures.
    pub fn stats(&self) -> RegionStats {
        let now = Instant::now();
        let st = self.inner.lock();
        let current = st.selector.current().map(str::to_string);
        let mut regions: HashMap<String, RegionStat> = HashMap::new();
        let mut servers = Vec::new();
        for (addr, s) in &st.servers {
            let usable = s.channel.is_some() && !s.silent && s.load.health.is_available(now);
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
            servers.push(ServerStat {
                region: s.region.clone(),
                addr: *addr,
                service_time: s.load.service_time.get(now),
                in_flight: s.load.in_flight,
                calls: s.calls,
                errors: s.errors,
                ejected: !s.load.health.is_available(now) || s.silent,
                connected: s.channel.is_some(),
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
        }
    }
}

/// Figures of one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStat {
    /// Region name.
    pub name: String,
    /// Network RTT estimate (QUIC's own, not including server time).
    pub rtt: Option<Duration>,
    /// At least one server can take calls.
    pub healthy: bool,
    /// Calls in flight to the region.
    pub in_flight: u32,
    /// Attempts sent to the region.
    pub calls: u64,
    /// Attempts that failed.
    pub errors: u64,
    /// The region selector's current choice.
    pub chosen: bool,
}

/// Figures of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStat {
    /// Region of the server.
    pub region: String,
    /// Server address.
    pub addr: SocketAddr,
    /// Smoothed service-time estimate (peak-EWMA of call latencies).
    pub service_time: Option<Duration>,
    /// Calls in flight.
    pub in_flight: u32,
    /// Attempts sent.
    pub calls: u64,
    /// Attempts that failed.
    pub errors: u64,
    /// Ejected (failing or silent) right now.
    pub ejected: bool,
    /// A connection is established.
    pub connected: bool,
}

/// Everything [`RegionClient::stats`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStats {
    /// Regions, nearest first.
    pub regions: Vec<RegionStat>,
    /// Servers, by region.
    pub servers: Vec<ServerStat>,
    /// The region calls currently go to.
    pub current_region: Option<String>,
    /// How many times the selector changed region (flaps would show here).
    pub region_switches: u64,
    /// Calls made.
    pub calls: u64,
    /// Attempts sent again after a failure.
    pub retries: u64,
    /// Hedge copies sent.
    pub hedges: u64,
    /// Hedge copies that answered first.
    pub hedges_won: u64,
}

/// Options of one routed call, then the call.
#[derive(Debug)]
#[must_use = "a call does nothing until `unary` is awaited"]
pub struct RegionCallBuilder {
    client: RegionClient,
    method: String,
    timeout: Option<Duration>,
    metadata: Metadata,
    idempotent: Option<bool>,
    key: Option<Bytes>,
    codec: Codec,
    forward: bool,
}

/// How one attempt ended.
enum Attempt<T> {
    Done(Result<Response<T>, Status>),
    /// The server was ejected while the attempt was in flight.
    Abandoned,
}

impl RegionCallBuilder {
    /// Gives up after `timeout`, across all attempts.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Declares the call safe (or not) to run more than once; by default the server's
    /// catalog decides.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// Routes by key: the call goes to the key's owner (rendezvous hashing) inside the
    /// chosen region.
    pub fn routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The codec of typed messages (default postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Forwards messages already encoded with `codec` (see `CallBuilder::forwarding`),
    /// with all of `metadata`.
    pub(crate) fn forwarding(mut self, codec: Codec, metadata: Metadata) -> Self {
        self.codec = codec;
        self.forward = true;
        self.metadata = metadata;
        self
    }

    /// The call's own flag, else the catalog of the first server that lists the method
    /// (idempotency is the method's property, the same on every server serving it).
    fn is_idempotent(&self) -> bool {
        if let Some(i) = self.idempotent {
            return i;
        }
        let st = self.client.inner.lock();
        st.servers
            .values()
            .find_map(|s| {
                let hello = s.channel.as_ref()?.server_info()?;
                let m = hello.methods.iter().find(|m| m.name == self.method)?;
                Some(m.idempotent)
            })
            .unwrap_or(false)
    }

    /// The channel-level call for one attempt, with this call's options.
    fn channel_call(
        &self,
        target: &Target,
        idempotent: bool,
        deadline: Option<Instant>,
    ) -> CallBuilder {
        let mut call = target
            .channel
            .call(self.method.clone())
            .codec(self.codec)
            .idempotent(idempotent);
        if self.forward {
            call = call.forwarding(self.codec);
        }
        if let Some(d) = deadline {
            call = call.timeout(d.saturating_duration_since(Instant::now()));
        }
        for (k, v) in self.metadata.iter() {
            call = call.metadata(k, v.clone());
        }
        if let Some(k) = &self.key {
            call = call.routing_key(k.clone());
        }
        call
    }

    /// Opens a streaming call on the chosen server. If opening fails in a way that proves
    /// nothing ran (no such method there, server refused or unreachable), the next choice
    /// is tried once. Streams are not moved once open.
    async fn open_streaming<T, F, Fut>(self, open: F) -> Result<T, Status>
    where
        F: Fn(CallBuilder) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let inner = self.client.inner.clone();
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let idempotent = self.is_idempotent();
        let mut tried = Vec::new();
        let mut last = None;
        let started = Instant::now();
        while tried.len() < 2 {
            let Some(target) = inner.pick(&self.method, self.key.as_deref(), &tried) else {
                // Nothing connected yet (startup): wait a little for the prober, as unary
                // calls do.
                let waited = started.elapsed() < Duration::from_secs(5)
                    && deadline.is_none_or(|d| Instant::now() + Duration::from_millis(50) < d)
                    && inner.may_still_connect();
                if tried.is_empty() && waited {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                break;
            };
            let started = Instant::now();
            let result = open(self.channel_call(&target, idempotent, deadline)).await;
            let failed = result.as_ref().is_err_and(|s| server_failure(s.code()));
            inner.finish(target.addr, started.elapsed(), None, failed);
            match result {
                Ok(stream) => return Ok(stream),
                Err(s)
                    if s.code() == Code::Unimplemented
                        || (s.code() == Code::Unavailable
                            && (idempotent || s.is_known_not_run())) =>
                {
                    tried.push(target.addr);
                    last = Some(s);
                }
                Err(s) => return Err(s),
            }
        }
        // With no attempt made, nothing ran anywhere.
        Err(last.unwrap_or_else(|| {
            Status::unavailable(format!("no healthy region serves {:?}", self.method))
                .mark_not_run()
        }))
    }

    /// A server-streaming call on raw bytes, opened on the chosen server.
    pub async fn server_streaming_raw(self, request: Bytes) -> Result<Streaming<Bytes>, Status> {
        self.open_streaming(|call| call.server_streaming_raw(request.clone()))
            .await
    }

    /// A server-streaming call, opened on the chosen server.
    pub async fn server_streaming<Req: Serialize, Resp: DeserializeOwned>(
        self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status> {
        self.open_streaming(|call| call.server_streaming(request))
            .await
    }

    /// A client-streaming call, opened on the chosen server.
    pub async fn client_streaming<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status> {
        self.open_streaming(|call| call.client_streaming()).await
    }

    /// A client-streaming call on raw bytes, opened on the chosen server.
    pub async fn client_streaming_raw(
        self,
    ) -> Result<(RequestSink<Bytes>, ResponseFuture<Bytes>), Status> {
        self.open_streaming(|call| call.client_streaming_raw())
            .await
    }

    /// A bidirectional call on raw bytes, opened on the chosen server.
    pub async fn bidi_raw(self) -> Result<(RequestSink<Bytes>, Streaming<Bytes>), Status> {
        self.open_streaming(|call| call.bidi_raw()).await
    }

    /// A bidirectional call, opened on the chosen server.
    pub async fn bidi<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, Streaming<Resp>), Status> {
        self.open_streaming(|call| call.bidi()).await
    }

    async fn attempt<T, F, Fut>(
        &self,
        target: &mut Target,
        make: &F,
        idempotent: bool,
        deadline: Option<Instant>,
    ) -> Attempt<T>
    where
        F: Fn(CallBuilder) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let call = self.channel_call(target, idempotent, deadline);
        let started = Instant::now();
        let fut = make(call);
        let result = tokio::select! {
            r = fut => Some(r),
            _ = target.ejected.changed() => None,
        };
        let latency = started.elapsed();
        let timeout = deadline.map(|d| d.saturating_duration_since(started));
        match result {
            Some(r) => {
                let failed = r.as_ref().is_err_and(|s| server_failure(s.code()));
                self.client
                    .inner
                    .finish(target.addr, latency, timeout, failed);
                Attempt::Done(r)
            }
            None => {
                self.client
                    .inner
                    .finish(target.addr, latency, timeout, true);
                Attempt::Abandoned
            }
        }
    }

    /// A unary call with typed messages, routed, retried and hedged as configured.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        self,
        request: &Req,
    ) -> Result<Response<Resp>, Status> {
        self.unary_with(|call| call.unary::<Req, Resp>(request))
            .await
    }

    /// A unary call on raw bytes, routed, retried and hedged as configured.
    pub async fn unary_raw(self, request: Bytes) -> Result<Response<Bytes>, Status> {
        self.unary_with(|call| call.unary_raw(request.clone()))
            .await
    }

    async fn unary_with<T, F, Fut>(self, make: F) -> Result<Response<T>, Status>
    where
        F: Fn(CallBuilder) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let inner = self.client.inner.clone();
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = self.timeout.map(|t| started + t);
        let idempotent = self.is_idempotent();
        {
            let mut st = inner.lock();
            st.budget.record_call(started);
        }
        let span = tracing::debug_span!(
            "rpc.region",
            method = %self.method,
            region = field::Empty,
            server = field::Empty,
            attempts = field::Empty,
            code = field::Empty
        );
        let fut = async {
            let mut tried: Vec<SocketAddr> = Vec::new();
            let mut attempts = 0u32;
            let mut last: Option<Status> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(
                        last.unwrap_or_else(|| Status::deadline_exceeded("deadline exceeded"))
                    );
                }
                let Some(mut target) = inner
                    .pick(&self.method, self.key.as_deref(), &tried)
                    .or_else(|| {
                        // Every candidate tried: allow the ones tried before.
                        if tried.is_empty() {
                            None
                        } else {
                            inner.pick(&self.method, self.key.as_deref(), &[])
                        }
                    })
                else {
                    if attempts == 0
                        && deadline.is_none_or(|d| Instant::now() + Duration::from_millis(50) < d)
                        && inner.may_still_connect()
                    {
                        // Nothing connected yet (startup): wait a little for the prober.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if started.elapsed() < Duration::from_secs(5) {
                            continue;
                        }
                    }
                    // With no attempt made, nothing ran anywhere.
                    return Err(last.unwrap_or_else(|| {
                        Status::unavailable(format!("no healthy region serves {:?}", self.method))
                            .mark_not_run()
                    }));
                };
                attempts += 1;
                tracing::Span::current().record("region", target.region.as_str());
                tracing::Span::current().record("server", field::display(target.addr));
                tracing::Span::current().record("attempts", attempts);
                let hedge_delay = if idempotent && inner.hedged.contains(&self.method) {
                    inner
                        .lock()
                        .hedges
                        .get(&self.method)
                        .and_then(HedgePolicy::delay)
                } else {
                    None
                };
                let t0 = Instant::now();
                let (outcome, hedge_sent) = match hedge_delay {
                    None => (
                        self.attempt(&mut target, &make, idempotent, deadline).await,
                        false,
                    ),
                    Some(delay) => self.hedged(&mut target, &make, deadline, delay).await,
                };
                match outcome {
                    Attempt::Done(Ok(r)) => {
                        if inner.hedged.contains(&self.method) {
                            // A hedged call's own latency hides how slow the first copy
                            // was; record it as slower than the delay, so the p95 is not
                            // dragged down by hedging itself (which would hedge ever more).
                            let mut sample = t0.elapsed();
                            if hedge_sent {
                                sample = sample.max(hedge_delay.unwrap_or_default() * 2);
                            }
                            inner
                                .lock()
                                .hedges
                                .entry(self.method.clone())
                                .or_default()
                                .observe(sample);
                        }
                        return Ok(r);
                    }
                    Attempt::Done(Err(status)) => {
                        let retryable = match status.code() {
                            // Provably not run here: another region may serve it.
                            Code::Unimplemented => true,
                            Code::Unavailable => idempotent || status.is_known_not_run(),
                            Code::DeadlineExceeded => {
                                idempotent && deadline.is_some_and(|d| Instant::now() < d)
                            }
                            // The server broke: an idempotent call may try another.
                            code => idempotent && server_failure(code),
                        };
                        if !retryable || attempts >= MAX_ATTEMPTS {
                            return Err(status);
                        }
                        last = Some(status);
                    }
                    Attempt::Abandoned => {
                        if !idempotent || attempts >= MAX_ATTEMPTS {
                            return Err(Status::unavailable(
                                "the server stopped answering with the call in flight; it may or may not have run",
                            ));
                        }
                        last = Some(Status::unavailable("the server stopped answering"));
                    }
                }
                if !inner.lock().budget.try_spend(Instant::now()) {
                    return Err(
                        last.unwrap_or_else(|| Status::unavailable("retry budget exhausted"))
                    );
                }
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tried.push(target.addr);
            }
        };
        let result = fut.instrument(span.clone()).await;
        span.record(
            "code",
            field::display(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)),
        );
        result
    }

    /// Sends a first copy; if it has not answered after `delay`, a second copy to the next
    /// choice (budget permitting). The first answer wins; the other copy is dropped, which
    /// cancels it on its server.
    async fn hedged<T, F, Fut>(
        &self,
        first: &mut Target,
        make: &F,
        deadline: Option<Instant>,
        delay: Duration,
    ) -> (Attempt<T>, bool)
    where
        F: Fn(CallBuilder) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.client.inner;
        let first_addr = first.addr;
        let a = self.attempt(first, make, true, deadline);
        tokio::pin!(a);
        tokio::select! {
            r = &mut a => return (r, false),
            _ = tokio::time::sleep(delay) => {}
        }
        let second = {
            let ok = inner.lock().budget.try_spend(Instant::now());
            if ok {
                inner.pick(&self.method, self.key.as_deref(), &[first_addr])
            } else {
                None
            }
        };
        let Some(mut second) = second else {
            return (a.await, false);
        };
        inner.hedges_sent.fetch_add(1, Ordering::Relaxed);
        let b = self.attempt(&mut second, make, true, deadline);
        tokio::pin!(b);
        let r = tokio::select! {
            r = &mut a => r,
            r = &mut b => {
                inner.hedges_won.fetch_add(1, Ordering::Relaxed);
                r
            }
        };
        (r, true)
    }
}

/// Most attempts of one routed call (first try included).
const MAX_ATTEMPTS: u32 = 4;

/// Whether a status says the server (not the request) failed, for health and balancing.
fn server_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
    )
}

/// Read-only views for tools such as the `meridian` command-line tool (`probe`,
/// `call --describe`). Neither sends anything nor changes a routing decision.
impl RegionClient {
    /// The open channel to the server at `addr`, if it is connected: its
    /// [`stats`](Channel::stats) give QUIC's RTT estimate to that one server and its
    /// [`server_info`](Channel::server_info) the server's HELLO (region, method catalog).
    /// Send calls through [`RegionClient::call`], not through this channel, or the
    /// balancer will not see them.
    pub fn server_channel(&self, addr: SocketAddr) -> Option<Channel> {
        self.inner.lock().servers.get(&addr)?.channel.clone()
    }

    /// The region a call to `method` (any method, with `None`) would be sent to now: the
    /// region selector's answer on a copy of its state, among the regions with a usable
    /// server that serves the method (or whose catalog is not known yet). `None` when no
    /// region can take the call. The selector's real state is left untouched, so asking
    /// moves nothing; during a ramp between two regions the answer is the region traffic
    /// is moving to.
    pub fn preview_region(&self, method: Option<&str>) -> Option<String> {
        let now = Instant::now();
        let st = self.inner.lock();
        let mut regions: Vec<&str> = st
            .servers
            .values()
            .filter(|s| s.channel.is_some() && !s.silent && s.load.health.is_available(now))
            .filter(|s| method.is_none_or(|m| s.serves(m) != Some(false)))
            .map(|s| s.region.as_str())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let mut selector = st.selector.clone();
        selector.choose(&regions, now, 0)
    }
}
