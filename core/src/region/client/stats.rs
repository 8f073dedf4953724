//! Snapshots of what the region client measured and decided.

use std::time::Duration;

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
    /// Server address, as the region map gives it.
    pub addr: crate::discovery::ServerAddr,
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
    /// The connection's smoothed RTT (QUIC's estimate), when connected.
    pub rtt: Option<Duration>,
    /// Times the server was ejected since it joined.
    pub ejections: u64,
    /// 0-RTT handshakes the server accepted, on the current channel.
    pub zero_rtt_accepted: u64,
    /// 0-RTT handshakes the server rejected (calls sent again after the handshake).
    pub zero_rtt_rejected: u64,
}

/// Everything [`RegionClient::stats`](crate::region::RegionClient::stats) reports.
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
    /// Re-sends (retries and hedges) not made because the retry budget was spent.
    pub retry_budget_exhausted: u64,
}
