//! The shared routing state and the glue around its decisions: following discovery,
//! dialling servers, and the attempt guard that gives every claim back exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::dial::{DialTrust, ServerChecks};
use super::prober::connect_server;
use super::table::State;
use crate::call::is_server_failure;
use crate::client::Channel;
use crate::discovery::{Discovery, RegionMap, ServerAddr};
use crate::region::table::{Claim, NoPick, Outcome};
use crate::status::Status;
use crate::transport::TransportConfig;

pub(super) struct Router {
    /// Whom servers are verified against.
    pub(super) trust: DialTrust,
    /// Client-side names and pinning, which a map cannot override.
    pub(super) checks: ServerChecks,
    pub(super) transport: TransportConfig,
    pub(super) probe_interval: Duration,
    pub(super) hedged: HashSet<String>,
    pub(super) retry_policies: std::collections::HashMap<String, crate::call::RetryPolicy>,
    pub(super) default_retry: crate::call::RetryPolicy,
    pub(super) via_proxies: bool,
    /// The client's interceptor chain, run once per call.
    pub(super) interceptors: crate::client::Chain,
    pub(super) map: watch::Receiver<RegionMap>,
    /// Held so the discovery source (and its updates) live as long as the client.
    pub(super) _discovery: Arc<dyn Discovery>,
    pub(super) state: Mutex<State>,
    pub(super) calls: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) hedges_sent: AtomicU64,
    pub(super) hedges_won: AtomicU64,
    /// Re-sends refused by the retry budget.
    pub(super) budget_exhausted: AtomicU64,
    /// What the last probe tick saw, to log what changed since.
    pub(super) seen: Mutex<Seen>,
    /// Dropped with the router: dials under way watch it and give up at once, so a freed
    /// client leaves no socket or handshake behind.
    pub(super) closed: watch::Sender<()>,
    /// The most recent failed dial (server and why), so a call that finds no server can
    /// say why rather than only that none is healthy.
    pub(super) last_connect_error: Mutex<Option<(ServerAddr, String)>>,
}

/// What the last probe tick saw: whether each server was in service, and the region
/// calls went to.
#[derive(Debug, Default)]
pub(super) struct Seen {
    usable: HashMap<ServerAddr, bool>,
    regions: HashMap<String, bool>,
    region: Option<String>,
}

/// Where one attempt goes.
pub(super) struct Target {
    pub(super) addr: ServerAddr,
    pub(super) region: String,
    pub(super) channel: Channel,
    pub(super) ejected: watch::Receiver<u64>,
    /// The attempt's claim on the server's `in_flight`, given back exactly once.
    pub(super) guard: AttemptGuard,
}

/// An attempt's claim on its server, taken by [`Router::pick`] and given back exactly once:
/// with the outcome by [`settle`](Self::settle), as a slow sample by
/// [`settle_slow`](Self::settle_slow) (a hedge that lost the race), or on drop (the caller
/// gave up: a cancelled or timed-out call, or a stream that ended), which only releases
/// the claim. So `in_flight` cannot leak, whichever way an attempt ends.
pub(crate) struct AttemptGuard {
    router: Weak<Router>,
    claim: Claim,
    started: Instant,
    settled: bool,
}

impl AttemptGuard {
    /// Records the attempt's outcome.
    pub(super) fn settle(
        &mut self,
        latency: Duration,
        timeout: Option<Duration>,
        outcome: Outcome,
    ) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(router) = self.router.upgrade() {
            router.lock().finish(
                self.claim.clone(),
                latency,
                timeout,
                outcome,
                Instant::now(),
            );
        }
    }

    /// Records a copy that was still running when another answered: at least this slow,
    /// and not a failure.
    pub(super) fn settle_slow(&mut self) {
        self.release(Some(self.started.elapsed()));
    }

    fn release(&mut self, at_least: Option<Duration>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(router) = self.router.upgrade() {
            router
                .lock()
                .release(self.claim.clone(), at_least, Instant::now());
        }
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.release(None);
    }
}

/// How an attempt's result bears on its server: an answer (even a handler's error) proves
/// the server alive; only a missing answer counts against its health.
pub(super) fn outcome_of<T>(result: &Result<T, Status>) -> Outcome {
    match result {
        Err(s) if is_server_failure(s.code()) && s.is_answer() => Outcome::HandlerFailed,
        Err(s) if is_server_failure(s.code()) => Outcome::NoAnswer,
        _ => Outcome::Answered,
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

    /// Adds servers that appeared in the map and drains those that left.
    pub(super) fn sync_membership(&self, now: Instant) {
        let map = self.map.borrow().clone();
        self.lock().sync_membership(&map, self.via_proxies, now);
    }

    /// Whether the map lists a server the table does not know yet.
    pub(super) fn map_adds_servers(&self) -> bool {
        // Cloned first: the map's read lock is never held while taking the table's lock.
        let map = self.map.borrow().clone();
        self.lock().adds_servers(&map, self.via_proxies)
    }

    /// One probe tick: follow the map, then the table's tick; dial who needs it.
    /// Logs what changed since the last tick: servers leaving or rejoining service, and
    /// the region calls go to.
    fn log_changes(&self, now: Instant) {
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let st = self.lock();
        for (addr, s) in st.servers.iter().filter(|(_, s)| s.ever_connected) {
            let usable = s.usable(now);
            let before = seen.usable.insert(addr.clone(), usable);
            if before == Some(usable) || (before.is_none() && usable) {
                continue;
            }
            if usable {
                tracing::info!(region = %s.region, server = %addr, "server back in service");
            } else {
                let why = if s.draining_since.is_some() {
                    "left the map (draining)"
                } else if s.silent {
                    "not heard from (silent past the limit)"
                } else if s.link.is_none() {
                    "disconnected"
                } else {
                    "ejected after failed calls"
                };
                tracing::warn!(
                    region = %s.region,
                    server = %addr,
                    why,
                    ejections = s.load.health.ejections_total(),
                    "server out of service"
                );
            }
        }
        seen.usable.retain(|a, _| st.servers.contains_key(a));
        let mut regions: HashMap<&str, bool> = HashMap::new();
        for s in st.servers.values().filter(|s| s.ever_connected) {
            *regions.entry(s.region.as_str()).or_default() |= s.usable(now);
        }
        for (region, healthy) in regions {
            let before = seen.regions.insert(region.to_string(), healthy);
            match (before, healthy) {
                (Some(true), false) => tracing::warn!(
                    region = %region,
                    "region unhealthy: none of its servers can take calls"
                ),
                (Some(false), true) => tracing::info!(region = %region, "region healthy again"),
                _ => {}
            }
        }
        let current = st.selector.current();
        if current != seen.region.as_deref() {
            match current {
                Some(to) => tracing::info!(
                    from = %seen.region.as_deref().unwrap_or("none"),
                    to = %to,
                    rtt_ms = st
                        .region_rtt
                        .get(to)
                        .and_then(|e| e.get(now))
                        .map_or(-1.0, |d| d.as_secs_f64() * 1e3),
                    "calls now go to region"
                ),
                None => tracing::warn!(
                    from = %seen.region.as_deref().unwrap_or("none"),
                    "no region is healthy"
                ),
            }
            seen.region = current.map(str::to_string);
        }
    }

    pub(super) fn tick(self: &Arc<Self>, now: Instant) {
        self.sync_membership(now);
        let to_connect = self.lock().tick(now);
        self.log_changes(now);
        for (addr, ep) in to_connect {
            tokio::spawn(connect_server(Arc::downgrade(self), addr, ep));
        }
    }

    /// Chooses the server for an attempt (see [`RoutingTable::pick`]); a `resend` is paid
    /// from the retry budget once a server is found.
    ///
    /// [`RoutingTable::pick`]: crate::region::table::RoutingTable::pick
    pub(super) fn pick(
        self: &Arc<Self>,
        method: &str,
        key: Option<&[u8]>,
        exclude: &[ServerAddr],
        resend: bool,
    ) -> Result<Target, NoPick> {
        let now = Instant::now();
        let p = self
            .lock()
            .pick(method, key, exclude, resend, now)
            .inspect_err(|why| {
                if *why == NoPick::NoBudget {
                    self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(Target {
            addr: p.claim.addr.clone(),
            region: p.region,
            channel: p.link,
            ejected: p.ejected,
            guard: AttemptGuard {
                router: Arc::downgrade(self),
                claim: p.claim,
                started: now,
                settled: false,
            },
        })
    }

    /// The retry policy of `method`.
    pub(super) fn retry_policy(&self, method: &str) -> &crate::call::RetryPolicy {
        self.retry_policies
            .get(method)
            .unwrap_or(&self.default_retry)
    }

    /// Remembers why dialling `addr` failed; a later successful dial of it forgets it.
    pub(super) fn note_connect(&self, addr: ServerAddr, error: Option<String>) {
        let mut last = match self.last_connect_error.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match error {
            Some(e) => *last = Some((addr, e)),
            None if last.as_ref().is_some_and(|(a, _)| *a == addr) => *last = None,
            None => {}
        }
    }

    /// The most recent failed dial, as ` (last connect error from ADDR in REGION: why)`,
    /// or an empty string.
    pub(super) fn last_connect_error(&self) -> String {
        let last = match self.last_connect_error.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some((addr, why)) = last else {
            return String::new();
        };
        let region = self
            .map
            .borrow()
            .regions
            .iter()
            .find(|r| {
                r.servers.iter().any(|s| s.addr == addr) || r.proxies.iter().any(|p| p.addr == addr)
            })
            .map(|r| format!(" in {}", r.name))
            .unwrap_or_default();
        // The channel's error repeats the address; keep the cause only.
        let prefix = format!("cannot connect to {addr}: ");
        let why = why.strip_prefix(&prefix).unwrap_or(&why);
        format!(" (last connect error from {addr}{region}: {why})")
    }

    /// Whether a call that finds no usable server should wait a little (start-up).
    pub(super) fn may_still_connect(&self) -> bool {
        self.lock().may_still_connect(Instant::now())
    }

    /// See [`RoutingTable::has_new_server`](crate::region::table::RoutingTable::has_new_server).
    pub(super) fn has_new_server(&self) -> bool {
        self.lock().has_new_server(Instant::now())
    }
}
