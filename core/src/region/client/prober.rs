//! Connecting to servers and keeping their RTT fresh.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Instant;

use tracing::debug;

use super::routing::Router;
use crate::client::Channel;
use crate::discovery::ServerEndpoint;

pub(super) async fn connect_server(inner: Weak<Router>, addr: SocketAddr, ep: ServerEndpoint) {
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

pub(super) async fn probe_loop(inner: Weak<Router>) {
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
