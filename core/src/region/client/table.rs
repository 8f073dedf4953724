//! The routing table's rows: what the client knows of each server and the selector's state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::Channel;
use crate::discovery::ServerEndpoint;
use crate::region::balance::ServerLoad;
use crate::region::budget::RetryBudget;
use crate::region::estimate::RttEstimate;
use crate::region::hedge::HedgePolicy;
use crate::region::select::RegionSelector;

/// Per-server state: its channel and the samples that decide whether it gets calls.
pub(super) struct ServerState {
    pub(super) endpoint: ServerEndpoint,
    pub(super) region: String,
    pub(super) channel: Option<Channel>,
    pub(super) connecting: bool,
    pub(super) load: ServerLoad,
    pub(super) calls: u64,
    pub(super) errors: u64,
    pub(super) rx_datagrams: u64,
    pub(super) last_heard: Instant,
    pub(super) silent: bool,
    pub(super) ever_connected: bool,
    /// Bumped when the server is ejected, so attempts in flight to it give up at once.
    pub(super) ejected: watch::Sender<u64>,
    /// Since when the server has been out of the map: it gets no new calls, and its
    /// connection stays until the calls in flight to it are done (or [`DRAIN_LIMIT`]).
    pub(super) draining_since: Option<Instant>,
}

/// Longest a server that left the map keeps its connection for calls still in flight.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(60);

impl ServerState {
    /// Whether new attempts may go to the server now.
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.channel.is_some()
            && !self.silent
            && self.draining_since.is_none()
            && self.load.health.is_available(now)
    }

    pub(super) fn serves(&self, method: &str) -> Option<bool> {
        let channel = self.channel.as_ref()?;
        channel.server_info()?;
        Some(channel.catalog().serves(method))
    }
}

pub(super) struct State {
    pub(super) servers: HashMap<SocketAddr, ServerState>,
    pub(super) selector: RegionSelector,
    pub(super) region_rtt: HashMap<String, RttEstimate>,
    pub(super) budget: RetryBudget,
    pub(super) hedges: HashMap<String, HedgePolicy>,
    pub(super) rng: u64,
}

impl State {
    pub(super) fn next_rand(&mut self) -> u64 {
        // splitmix64: decisions need cheap, not secret, randomness.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
