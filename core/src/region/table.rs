//! The routing table: what a region client knows of each server, and the bookkeeping of
//! every attempt (pick, outcome, release), membership changes and draining, and probe
//! ticks. Plain data fed with instants: no clock, no I/O, no tasks, so every decision is
//! tested in simulated time. The region client keeps one table behind a lock and moves data
//! between it and the network.
//!
//! A server is reached through a link (`L`, a channel in the region client, a fake in
//! tests); the table asks the link only what it knows now ([`Link`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::balance::{self, LoadView, ServerLoad};
use super::budget::RetryBudget;
use super::estimate::RttEstimate;
use super::hedge::HedgePolicy;
use super::rendezvous;
use super::select::RegionSelector;
use crate::discovery::{RegionMap, ServerAddr, ServerEndpoint};

/// What the table needs to know of a connected server.
pub trait Link: Clone {
    /// Whether the server's catalog lists `method`; `None` while no HELLO has arrived.
    fn serves(&self, method: &str) -> Option<bool>;
    /// Whether a connection is open now.
    fn is_connected(&self) -> bool;
    /// Datagrams received so far, and QUIC's (minimum, smoothed) RTT when connected.
    fn heard(&self) -> (u64, Option<(Duration, Duration)>);
}

/// Longest a server that left the map keeps its connection for calls still in flight.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// One server's row.
#[derive(Debug)]
pub struct Row<L> {
    /// Where the server is, as the map gave it.
    pub endpoint: ServerEndpoint,
    /// Its region.
    pub region: String,
    /// The link, once connected.
    pub link: Option<L>,
    /// A dial is under way.
    pub connecting: bool,
    /// Service time, in-flight attempts and health.
    pub load: ServerLoad,
    /// Attempts sent.
    pub calls: u64,
    /// Attempts that failed (no answer, or a server-failure answer).
    pub errors: u64,
    rx_datagrams: u64,
    last_heard: Instant,
    /// Not heard from for longer than the silence limit.
    pub silent: bool,
    /// Connected at least once.
    pub ever_connected: bool,
    /// Bumped when the server is ejected, so attempts in flight to it give up at once.
    pub ejected: watch::Sender<u64>,
    /// Since when the server has been out of the map: it gets no new calls, and its
    /// connection stays until the calls in flight to it are done (or [`DRAIN_LIMIT`]).
    pub draining_since: Option<Instant>,
    /// Membership generation the row belongs to: a claim taken before the server left
    /// and came back is not given back to the new row.
    generation: u64,
}

impl<L: Link> Row<L> {
    /// Whether new attempts may go to the server now.
    pub fn usable(&self, now: Instant) -> bool {
        self.reachable() && self.load.health.is_available(now)
    }

    /// Connected, heard from, and in the map: usable but for its health.
    fn reachable(&self) -> bool {
        self.link.is_some() && !self.silent && self.draining_since.is_none()
    }

    /// Whether the server's catalog lists `method` (`None`: not connected or no HELLO).
    pub fn serves(&self, method: &str) -> Option<bool> {
        self.link.as_ref()?.serves(method)
    }
}

/// How an attempt ended, for the server's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered: OK, or a handler's answer about the request (NOT_FOUND, ...).
    Answered,
    /// The server answered, with a code that says the handler failed (INTERNAL, UNKNOWN,
    /// UNAVAILABLE, ...). The server is alive, so its health does not suffer; the answer
    /// costs as a failure in the balancer, so a server that fails fast does not attract
    /// traffic by looking quick.
    HandlerFailed,
    /// No answer came: connection lost, deadline passed, server ejected mid-call. Counts
    /// against the server's health.
    NoAnswer,
}

/// A claim on a server taken by [`RoutingTable::pick`]: give it back exactly once, with
/// [`RoutingTable::finish`] or [`RoutingTable::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The server.
    pub addr: ServerAddr,
    generation: u64,
}

/// The server chosen for an attempt.
#[derive(Debug)]
pub struct Pick<L> {
    /// The claim to give back.
    pub claim: Claim,
    /// The server's region.
    pub region: String,
    /// Its link.
    pub link: L,
    /// Changes when the server is ejected.
    pub ejected: watch::Receiver<u64>,
}

/// Why no server was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// No connected server in the map can take the call.
    NoServer,
    /// A re-send was asked for, and the retry budget is spent.
    NoBudget,
}

/// The routing table of one region client.
#[derive(Debug)]
pub struct RoutingTable<L> {
    /// Servers by address.
    pub servers: HashMap<ServerAddr, Row<L>>,
    /// Which region calls go to.
    pub selector: RegionSelector,
    /// Network RTT per region.
    pub region_rtt: HashMap<String, RttEstimate>,
    /// Tokens for re-sends and hedges.
    pub budget: RetryBudget,
    /// Hedge delays per method.
    pub hedges: HashMap<String, HedgePolicy>,
    /// A server not heard from for this long is ejected.
    pub silence_limit: Duration,
    rng: u64,
    generations: u64,
}

impl<L: Link> RoutingTable<L> {
    /// An empty table.
    pub fn new(selector: RegionSelector, budget: RetryBudget, silence_limit: Duration) -> Self {
        RoutingTable {
            servers: HashMap::new(),
            selector,
            region_rtt: HashMap::new(),
            budget,
            hedges: HashMap::new(),
            silence_limit,
            rng: 0x853c_49e6_748f_ea9b,
            generations: 0,
        }
    }

    /// Seeds the table's randomness (balancing and ramp splits), for reproducible runs.
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed;
    }

    fn next_rand(&mut self) -> u64 {
        // splitmix64: decisions need cheap, not secret, randomness.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Whether `map` lists a server this table does not know yet.
    pub fn adds_servers(&self, map: &RegionMap, via_proxies: bool) -> bool {
        map.regions.iter().any(|region| {
            let endpoints = if via_proxies && !region.proxies.is_empty() {
                &region.proxies
            } else {
                &region.servers
            };
            endpoints
                .iter()
                .any(|ep| !self.servers.contains_key(&ep.addr))
        })
    }

    /// Adds servers that appeared in `map` and starts draining those that left: a draining
    /// server gets no new calls and is forgotten once no attempt to it is in flight (a
    /// graceful shutdown deregisters first and then lets its calls finish), or after
    /// [`DRAIN_LIMIT`]. With `via_proxies`, a region's proxies stand for its servers.
    pub fn sync_membership(&mut self, map: &RegionMap, via_proxies: bool, now: Instant) {
        let mut present = HashSet::new();
        for region in &map.regions {
            let endpoints = if via_proxies && !region.proxies.is_empty() {
                &region.proxies
            } else {
                &region.servers
            };
            for ep in endpoints {
                present.insert(ep.addr.clone());
                if let Some(row) = self.servers.get_mut(&ep.addr) {
                    // A record rewritten in place (a new certificate hash or name) is what
                    // the next dial uses; the open connection, verified when it was made,
                    // stays.
                    if row.endpoint != *ep {
                        row.endpoint = ep.clone();
                    }
                    continue;
                }
                self.generations += 1;
                self.servers.insert(
                    ep.addr.clone(),
                    Row {
                        endpoint: ep.clone(),
                        region: region.name.clone(),
                        link: None,
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
                        generation: self.generations,
                    },
                );
            }
        }
        self.servers.retain(|addr, s| {
            if present.contains(addr) {
                s.draining_since = None;
                return true;
            }
            let since = *s.draining_since.get_or_insert(now);
            // Forgetting the row drops the table's link; the connection then closes once
            // no open stream uses it any more.
            s.load.in_flight > 0 && now.duration_since(since) < DRAIN_LIMIT
        });
    }

    /// One probe tick: notes who was heard from (and their RTT), ejects servers silent for
    /// longer than the silence limit, drops links that died, and tells the region selector
    /// each region's health. Returns the servers to dial.
    pub fn tick(&mut self, now: Instant) -> Vec<(ServerAddr, ServerEndpoint)> {
        let mut to_connect = Vec::new();
        for (addr, s) in self.servers.iter_mut() {
            // A silent server whose connection is gone (it restarted, or the outage
            // outlived the idle timeout) is dialled afresh once its ejection allows.
            if s.silent
                && s.link.as_ref().is_some_and(|l| !l.is_connected())
                && s.load.health.is_available(now)
            {
                s.link = None;
            }
            let Some(link) = &s.link else {
                if !s.connecting && s.draining_since.is_none() && s.load.health.is_available(now) {
                    s.connecting = true;
                    to_connect.push((addr.clone(), s.endpoint.clone()));
                }
                continue;
            };
            let (datagrams, rtt) = link.heard();
            if datagrams != s.rx_datagrams {
                s.rx_datagrams = datagrams;
                s.last_heard = now;
                if let Some((min, srtt)) = rtt {
                    self.region_rtt
                        .entry(s.region.clone())
                        .or_default()
                        .observe(min, srtt, now);
                }
                if s.silent {
                    s.silent = false;
                    s.load.health.record_success(now);
                }
            } else if !s.silent && now.duration_since(s.last_heard) > self.silence_limit {
                s.silent = true;
                s.load.health.eject_now(now);
                s.ejected.send_modify(|g| *g += 1);
            }
        }
        // A region whose servers never connected is not reported: "not yet connected" at
        // start-up is no failure, and must not start the selector's hold-down. A draining
        // server left the map: it says nothing about its region's health.
        let mut regions: HashMap<&str, bool> = HashMap::new();
        for s in self
            .servers
            .values()
            .filter(|s| s.ever_connected && s.draining_since.is_none())
        {
            *regions.entry(s.region.as_str()).or_default() |= s.usable(now);
        }
        for (region, healthy) in regions {
            let rtt = self.region_rtt.get(region).and_then(|e| e.get(now));
            self.selector.update(region, rtt, healthy, now);
        }
        to_connect
    }

    /// A dial finished. A connection's handshake already measured the round trip, used at
    /// once so the first calls go to the nearest region rather than to whichever answered
    /// first (a 0-RTT connection that heard nothing yet has only QUIC's initial guess, and
    /// waits for the next tick). A failed dial ejects the server for a while.
    pub fn connected(&mut self, addr: impl Into<ServerAddr>, link: Option<L>, now: Instant) {
        let addr = addr.into();
        let Some(s) = self.servers.get_mut(&addr) else {
            return;
        };
        s.connecting = false;
        let Some(link) = link else {
            s.load.health.eject_now(now);
            return;
        };
        let (datagrams, rtt) = link.heard();
        let region = s.region.clone();
        s.link = Some(link);
        s.ever_connected = true;
        s.last_heard = now;
        s.silent = false;
        if let (true, Some((min, srtt))) = (datagrams > 0, rtt) {
            self.region_rtt
                .entry(region.clone())
                .or_default()
                .observe(min, srtt, now);
            let rtt = self.region_rtt.get(&region).and_then(|e| e.get(now));
            self.selector.update(&region, rtt, true, now);
        }
    }

    /// Notes a call for the retry budget (re-sends are allowed in proportion to calls).
    pub fn record_call(&mut self, now: Instant) {
        self.budget.record_call(now);
    }

    /// Chooses the server for an attempt: the region by the selector among regions that
    /// serve the method, then the key's owner or the balancer's pick inside it; servers in
    /// `exclude` are skipped. A `resend` (a retry or a hedge) is paid from the retry budget,
    /// only once a server is found.
    ///
    /// Ejection never fails a call some server could answer: when every connected server
    /// that could take the call is ejected, the call goes to them anyway (a panic mode, as
    /// in Envoy), chosen by the same rules.
    pub fn pick(
        &mut self,
        method: &str,
        key: Option<&[u8]>,
        exclude: &[ServerAddr],
        resend: bool,
        now: Instant,
    ) -> Result<Pick<L>, NoPick> {
        let rand = self.next_rand();
        let healthy = |s: &Row<L>| s.usable(now);
        let mut panic = false;
        let candidates = match self.candidates(method, exclude, &healthy) {
            c if !c.is_empty() => c,
            _ => {
                panic = true;
                self.candidates(method, exclude, &|s: &Row<L>| s.reachable())
            }
        };
        if candidates.is_empty() {
            return Err(NoPick::NoServer);
        }
        let region = self
            .choose_region(method, &candidates, now, rand)
            .ok_or(NoPick::NoServer)?;
        let in_region: Vec<ServerAddr> = candidates
            .into_iter()
            .filter(|a| self.servers.get(a).is_some_and(|s| s.region == region))
            .collect();
        let addr = match key {
            Some(key) => {
                let ids: Vec<String> = in_region.iter().map(|a| a.to_string()).collect();
                let owner = rendezvous::owner(key, &ids).ok_or(NoPick::NoServer)?;
                let i = ids
                    .iter()
                    .position(|i| i == owner)
                    .ok_or(NoPick::NoServer)?;
                in_region[i].clone()
            }
            None => {
                let loads: Vec<Balanced<'_>> = in_region
                    .iter()
                    .filter_map(|a| self.servers.get(a))
                    .map(|s| Balanced {
                        load: &s.load,
                        panic,
                    })
                    .collect();
                let i = balance::pick(&loads, now, rand.rotate_left(17)).ok_or(NoPick::NoServer)?;
                in_region[i].clone()
            }
        };
        if resend && !self.budget.try_spend(now) {
            return Err(NoPick::NoBudget);
        }
        let s = self.servers.get_mut(&addr).ok_or(NoPick::NoServer)?;
        let link = s.link.clone().ok_or(NoPick::NoServer)?;
        s.load.in_flight += 1;
        s.calls += 1;
        Ok(Pick {
            claim: Claim {
                addr,
                generation: s.generation,
            },
            region,
            link,
            ejected: s.ejected.subscribe(),
        })
    }

    /// Servers allowed by `allowed` that may take `method`: those whose catalog lists it;
    /// else those whose catalog is not known yet; and when no catalog lists the method at
    /// all (it may have been added since the last HELLO), any of them: its answer is
    /// authoritative, and an unknown method moves the call on.
    fn candidates(
        &self,
        method: &str,
        exclude: &[ServerAddr],
        allowed: &dyn Fn(&Row<L>) -> bool,
    ) -> Vec<ServerAddr> {
        let pool = || {
            self.servers
                .iter()
                .filter(|(a, s)| !exclude.contains(a) && allowed(s))
        };
        for wanted in [Some(true), None] {
            let found: Vec<ServerAddr> = pool()
                .filter(|(_, s)| s.serves(method) == wanted)
                .map(|(a, _)| a.clone())
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        pool().map(|(a, _)| a.clone()).collect()
    }

    /// The region for an attempt. The selector sees every region that serves the method,
    /// healthy or not (it knows health from the ticks), so its current choice moves when a
    /// region fails. If the chosen region has no candidate left for this attempt (all
    /// tried, or all ejected), the nearest region that has one is used without moving the
    /// current choice.
    fn choose_region(
        &mut self,
        method: &str,
        candidates: &[ServerAddr],
        now: Instant,
        rand: u64,
    ) -> Option<String> {
        let serving = |only_candidates: bool| -> Vec<String> {
            let mut v: Vec<String> = self
                .servers
                .iter()
                .filter(|(a, s)| {
                    let candidate = candidates.contains(a);
                    let serves = s.serves(method) != Some(false) || candidate;
                    s.draining_since.is_none() && serves && (!only_candidates || candidate)
                })
                .map(|(_, s)| s.region.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let all = serving(false);
        let with_candidate = serving(true);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        if let Some(region) = self.selector.choose(&refs, now, rand) {
            if with_candidate.contains(&region) {
                return Some(region);
            }
        }
        // The current region has no candidate here, so this answers without moving it.
        let refs: Vec<&str> = with_candidate.iter().map(String::as_str).collect();
        self.selector
            .choose(&refs, now, rand)
            .or_else(|| self.selector.nearest_any(&refs, now))
    }

    /// Whether a server of the map has never connected and may now (it just appeared):
    /// a call that no connected server serves may wait for it.
    pub fn has_new_server(&self, now: Instant) -> bool {
        self.servers.values().any(|s| {
            !s.ever_connected && s.draining_since.is_none() && s.load.health.is_available(now)
        })
    }

    /// Whether a call that finds no usable server should wait a little: while membership
    /// has never listed a server (discovery has not answered yet), or some server has
    /// never connected but may still (its first dial is under way). Once every server has
    /// been tried and ejected, or every server has left the map, calls fail at once (as
    /// gRPC's do when its resolver returns no address).
    pub fn may_still_connect(&self, now: Instant) -> bool {
        (self.servers.is_empty() && self.generations == 0)
            || self
                .servers
                .values()
                .any(|s| !s.ever_connected && s.load.health.is_available(now))
    }

    /// Gives back a claim without an outcome (the caller gave up); a known lower bound on
    /// the attempt's latency (a hedge that lost the race) is kept as a service-time sample.
    pub fn release(&mut self, claim: Claim, at_least: Option<Duration>, now: Instant) {
        if let Some(s) = self.row_of(&claim) {
            s.load.in_flight = s.load.in_flight.saturating_sub(1);
            if let Some(sample) = at_least {
                s.load.service_time.observe(sample, now);
            }
        }
    }

    /// Gives back a claim with the attempt's outcome. A failure's cost is bounded by
    /// [`balance::failure_cost`], so neither a caller's huge timeout nor repeated failures
    /// compound without bound; only a missing answer counts against health.
    pub fn finish(
        &mut self,
        claim: Claim,
        latency: Duration,
        timeout: Option<Duration>,
        outcome: Outcome,
        now: Instant,
    ) {
        let Some(s) = self.row_of(&claim) else {
            return;
        };
        s.load.in_flight = s.load.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Answered => {
                s.load.service_time.observe(latency, now);
                s.load.health.record_success(now);
            }
            Outcome::HandlerFailed | Outcome::NoAnswer => {
                s.errors += 1;
                let estimate = s.load.service_time.get(now);
                let cost = balance::failure_cost(latency, timeout, estimate);
                s.load.service_time.observe(cost, now);
                if outcome == Outcome::NoAnswer {
                    s.load.health.record_failure(now);
                } else {
                    s.load.health.record_success(now);
                }
            }
        }
    }

    /// The row a claim was taken on, if the server has not left (and come back) since.
    fn row_of(&mut self, claim: &Claim) -> Option<&mut Row<L>> {
        self.servers
            .get_mut(&claim.addr)
            .filter(|s| s.generation == claim.generation)
    }
}

/// A server's load as the balancer sees it; in panic mode (every candidate ejected)
/// ejection is ignored and the service time alone decides.
struct Balanced<'a> {
    load: &'a ServerLoad,
    panic: bool,
}

impl LoadView for Balanced<'_> {
    fn estimate(&self, now: Instant) -> Option<Duration> {
        self.load.estimate(now)
    }

    fn in_flight(&self) -> u32 {
        self.load.in_flight
    }

    fn is_available(&self, now: Instant) -> bool {
        self.panic || self.load.is_available(now)
    }

    fn weight(&self, now: Instant) -> f64 {
        if self.panic {
            1.0
        } else {
            self.load.weight(now)
        }
    }
}

#[cfg(test)]
mod tests;
