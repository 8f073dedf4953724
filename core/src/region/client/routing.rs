//! The shared routing state and its decisions: following discovery, picking a server for an attempt, recording how the attempt went.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::debug;

use super::prober::connect_server;
use super::table::{ServerState, State, DRAIN_LIMIT};
use crate::client::Channel;
use crate::discovery::{Discovery, RegionMap};
use crate::region::balance::{self, ServerLoad};
use crate::region::rendezvous;
use crate::transport::{ClientTls, TransportConfig};

pub(super) struct Router {
    pub(super) tls: ClientTls,
    pub(super) transport: TransportConfig,
    pub(super) probe_interval: Duration,
    pub(super) silence_limit: Duration,
    pub(super) hedged: HashSet<String>,
    pub(super) via_proxies: bool,
    pub(super) map: watch::Receiver<RegionMap>,
    /// Held so the discovery source (and its updates) live as long as the client.
    pub(super) _discovery: Arc<dyn Discovery>,
    pub(super) state: Mutex<State>,
    pub(super) calls: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) hedges_sent: AtomicU64,
    pub(super) hedges_won: AtomicU64,
}

/// Where one attempt goes.
pub(super) struct Target {
    pub(super) addr: SocketAddr,
    pub(super) region: String,
    pub(super) channel: Channel,
    pub(super) ejected: watch::Receiver<u64>,
    /// The attempt's claim on the server's `in_flight`, given back exactly once.
    pub(super) guard: AttemptGuard,
}

/// An attempt's claim on its server, taken by [`Router::pick`] and given back exactly once:
/// with the outcome by [`settle`](Self::settle), as a slow sample by
/// [`settle_slow`](Self::settle_slow) (a hedge that lost the race), or on drop (the caller
/// gave up: a cancelled or timed-out call), which only releases the claim. So `in_flight`
/// cannot leak, whichever way an attempt ends.
pub(super) struct AttemptGuard {
    router: Weak<Router>,
    addr: SocketAddr,
    started: Instant,
    settled: bool,
}

impl AttemptGuard {
    /// Records the attempt's outcome.
    pub(super) fn settle(&mut self, latency: Duration, timeout: Option<Duration>, failed: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(router) = self.router.upgrade() {
            router.finish(self.addr, latency, timeout, failed);
        }
    }

    /// Records a copy that was still running when another answered: at least this slow,
    /// and not a failure.
    pub(super) fn settle_slow(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(router) = self.router.upgrade() {
            router.release(self.addr, Some(self.started.elapsed()));
        }
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(router) = self.router.upgrade() {
                router.release(self.addr, None);
            }
        }
    }
}

impl Router {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the routing state unusable for long:
        // every field is a sample store that the next tick refreshes.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds servers that appeared in the map and forgets those that left.
    pub(super) fn sync_membership(&self, now: Instant) {
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
                    draining_since: None,
                });
            }
        }
        // A server that left the map drains: no new calls, and its connection stays until
        // the calls in flight to it are done (a graceful shutdown deregisters first and then
        // lets them finish), or DRAIN_LIMIT passed.
        st.servers.retain(|addr, s| {
            if present.contains(addr) {
                s.draining_since = None;
                return true;
            }
            let since = *s.draining_since.get_or_insert(now);
            // Forgetting the server drops the client's handle on its channel; the
            // connection then closes once no open stream uses it any more (streams hold
            // the channel), and at once if none does.
            s.load.in_flight > 0 && now.duration_since(since) < DRAIN_LIMIT
        });
    }

    /// One probe tick: connect where needed, sample RTTs, detect silent servers, and tell
    /// the region selector what it needs.
    pub(super) fn tick(self: &Arc<Self>, now: Instant) {
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
                if !s.connecting && s.draining_since.is_none() && s.load.health.is_available(now) {
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
        // A draining server left the map: it says nothing about its region's health.
        for s in st
            .servers
            .values()
            .filter(|s| s.ever_connected && s.draining_since.is_none())
        {
            let usable = s.usable(now);
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
    pub(super) fn pick(
        self: &Arc<Self>,
        method: &str,
        key: Option<&[u8]>,
        exclude: &[SocketAddr],
    ) -> Option<Target> {
        let now = Instant::now();
        let mut st = self.lock();
        let rand = st.next_rand();
        let usable = |s: &ServerState| s.usable(now);
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
                    s.draining_since.is_none() && serves && (!only_usable || candidates.contains(a))
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
        let channel = s.channel.clone()?;
        s.load.in_flight += 1;
        s.calls += 1;
        Some(Target {
            addr,
            region,
            channel,
            ejected: s.ejected.subscribe(),
            guard: AttemptGuard {
                router: Arc::downgrade(self),
                addr,
                started: now,
                settled: false,
            },
        })
    }

    /// Whether a call that finds no usable server should wait a little: at start-up, while
    /// some server has never connected but may still (its first dial is under way), or
    /// while membership is still empty. Once every server has been tried and ejected,
    /// calls fail at once instead.
    pub(super) fn may_still_connect(&self) -> bool {
        let now = Instant::now();
        let st = self.lock();
        st.servers.is_empty()
            || st
                .servers
                .values()
                .any(|s| !s.ever_connected && s.load.health.is_available(now))
    }

    /// Gives back an attempt's claim without an outcome; a known lower bound on its
    /// latency (a hedge that lost) is kept as a service-time sample.
    fn release(&self, addr: SocketAddr, at_least: Option<Duration>) {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(s) = st.servers.get_mut(&addr) {
            s.load.in_flight = s.load.in_flight.saturating_sub(1);
            if let Some(sample) = at_least {
                s.load.service_time.observe(sample, now);
            }
        }
    }

    /// Records an attempt's outcome (through its [`AttemptGuard`]).
    fn finish(&self, addr: SocketAddr, latency: Duration, timeout: Option<Duration>, failed: bool) {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(s) = st.servers.get_mut(&addr) {
            s.load.in_flight = s.load.in_flight.saturating_sub(1);
            if failed {
                s.errors += 1;
                // `failure_cost` bounds what a failure adds beyond its real latency, so
                // neither a caller's huge timeout nor repeated failures (2 x an estimate
                // that is itself a failure cost) compound without bound.
                let estimate = s.load.service_time.get(now);
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
