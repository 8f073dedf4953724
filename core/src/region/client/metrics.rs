//! A region client's figures as a metrics source.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::handle::RegionClient;
use super::routing::Router;
use crate::telemetry::{Labels, MetricsSource, MetricsWriter};

/// Reads [`RegionClient::stats`] at each scrape; from [`RegionClient::metrics_source`].
pub(super) struct RegionMetrics(pub(super) Weak<Router>);

fn secs(d: Option<Duration>) -> f64 {
    // An unknown RTT is reported as NaN (no sample), which Prometheus stores as such.
    d.map_or(f64::NAN, |d| d.as_secs_f64())
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

impl MetricsSource for RegionMetrics {
    fn encode(&self, w: &mut MetricsWriter<'_>) -> fmt::Result {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let st = RegionClient {
            inner: Arc::clone(&inner),
        }
        .stats();
        let region = |name: &str| -> Labels { vec![("region", name.to_string())] };
        let regions = &st.regions;
        w.gauge_f64(
            "region_rtt_seconds",
            "Network RTT estimate of each region (QUIC's, without server time).",
            &regions
                .iter()
                .map(|r| (region(&r.name), secs(r.rtt)))
                .collect::<Vec<_>>(),
        )?;
        w.gauge(
            "region_healthy",
            "1 when at least one server of the region can take calls.",
            &regions
                .iter()
                .map(|r| (region(&r.name), flag(r.healthy)))
                .collect::<Vec<_>>(),
        )?;
        w.gauge(
            "region_chosen",
            "1 for the region calls go to now.",
            &regions
                .iter()
                .map(|r| (region(&r.name), flag(r.chosen)))
                .collect::<Vec<_>>(),
        )?;
        let server = |r: &str, addr: &crate::discovery::ServerAddr| -> Labels {
            vec![("region", r.to_string()), ("server", addr.to_string())]
        };
        let servers = &st.servers;
        let rows = |f: &dyn Fn(&super::ServerStat) -> i64| {
            servers
                .iter()
                .map(|s| (server(&s.region, &s.addr), f(s)))
                .collect::<Vec<_>>()
        };
        let counts = |f: &dyn Fn(&super::ServerStat) -> u64| {
            servers
                .iter()
                .map(|s| (server(&s.region, &s.addr), f(s)))
                .collect::<Vec<_>>()
        };
        w.gauge_f64(
            "region_server_rtt_seconds",
            "Smoothed RTT of the connection to each server.",
            &servers
                .iter()
                .map(|s| (server(&s.region, &s.addr), secs(s.rtt)))
                .collect::<Vec<_>>(),
        )?;
        w.gauge(
            "region_server_healthy",
            "1 when the server may get calls (connected, heard from, not ejected).",
            &rows(&|s| flag(!s.ejected && s.connected)),
        )?;
        w.gauge(
            "region_server_connected",
            "1 when a connection to the server is established.",
            &rows(&|s| flag(s.connected)),
        )?;
        w.gauge(
            "region_server_in_flight",
            "Attempts in flight to the server.",
            &rows(&|s| i64::from(s.in_flight)),
        )?;
        w.counter(
            "region_server_attempts",
            "Attempts sent to the server.",
            &counts(&|s| s.calls),
        )?;
        w.counter(
            "region_server_errors",
            "Attempts to the server that failed.",
            &counts(&|s| s.errors),
        )?;
        w.counter(
            "region_server_ejections",
            "Times the server was ejected (failed calls, silence, failed dials).",
            &counts(&|s| s.ejections),
        )?;
        w.counter(
            "region_server_zero_rtt_accepted",
            "0-RTT handshakes the server accepted (current channel).",
            &counts(&|s| s.zero_rtt_accepted),
        )?;
        w.counter(
            "region_server_zero_rtt_rejected",
            "0-RTT handshakes the server rejected (current channel).",
            &counts(&|s| s.zero_rtt_rejected),
        )?;
        let one = |v: u64| [(Labels::new(), v)];
        w.counter(
            "region_calls",
            "Calls made through region routing.",
            &one(st.calls),
        )?;
        w.counter(
            "region_retries",
            "Attempts sent again after a failure.",
            &one(st.retries),
        )?;
        w.counter("region_hedges", "Hedge copies sent.", &one(st.hedges))?;
        w.counter(
            "region_hedges_won",
            "Hedge copies that answered first.",
            &one(st.hedges_won),
        )?;
        w.counter(
            "region_retry_budget_exhausted",
            "Re-sends not made because the retry budget was spent.",
            &one(st.retry_budget_exhausted),
        )?;
        w.counter(
            "region_switches",
            "Times the selector moved calls to another region.",
            &one(st.region_switches),
        )
    }

    fn ready(&self) -> Result<(), String> {
        let Some(inner) = self.0.upgrade() else {
            return Err("region client stopped".into());
        };
        let st = RegionClient { inner }.stats();
        if st.regions.iter().any(|r| r.healthy) {
            Ok(())
        } else {
            Err("no healthy upstream region".into())
        }
    }
}
