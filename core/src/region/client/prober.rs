//! Connecting to servers and keeping their RTT fresh.

use std::sync::Weak;
use std::time::Instant;

use tracing::debug;

use super::routing::Router;
use crate::client::Channel;
use crate::discovery::{ServerAddr, ServerEndpoint};

/// Dials one server: resolves its address (a host name is looked up at every dial, so a
/// server dialled afresh follows DNS changes), then connects with the trust, name and pin
/// [`Router::dial_plan`] decides.
pub(super) async fn connect_server(inner: Weak<Router>, addr: ServerAddr, ep: ServerEndpoint) {
    // The dial holds no strong handle: a client freed meanwhile is not kept alive by it,
    // and its end (the router's `closed` sender dropping) cuts the handshake short.
    let (plan, transport, mut closed) = {
        let Some(router) = inner.upgrade() else {
            return;
        };
        (
            router.dial_plan(&addr, &ep),
            router.transport.clone(),
            router.closed.subscribe(),
        )
    };
    let dial = async {
        let plan = plan?;
        let to = ep.addr.resolve().await.map_err(|e| e.to_string())?;
        let mut builder = Channel::builder(to, plan.tls)
            .server_name(plan.server_name)
            .transport(transport);
        if let Some(hash) = plan.cert_sha256 {
            builder = builder.require_cert_sha256(hash);
        }
        builder.connect().await.map_err(|e| e.to_string())
    };
    let result = tokio::select! {
        r = dial => r,
        _ = closed.changed() => return,
    };
    match &result {
        Ok(_) => debug!(server = %addr, "connected"),
        // Logged at every failed dial; dials of a failing server back off with its
        // ejection (1 s doubling to 30 s), so this cannot flood.
        Err(e) => tracing::warn!(server = %addr, error = %e, "cannot connect"),
    }
    if let Some(router) = inner.upgrade() {
        router.note_connect(addr.clone(), result.as_ref().err().cloned());
        router.lock().connected(addr, result.ok(), Instant::now());
    }
}

/// Ticks every probe interval, and at once when discovery adds a server to the map: a
/// server that just appeared is dialled now, not up to a probe interval later (a method
/// registered on a server that has just started is callable at once). Servers leaving the
/// map are followed at the regular ticks.
pub(super) async fn probe_loop(inner: Weak<Router>) {
    let (interval, mut map) = match inner.upgrade() {
        Some(i) => (i.probe_interval, i.map.clone()),
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut map_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = map.changed(), if map_open => {
                // A discovery that ended leaves the ticks alone.
                map_open = changed.is_ok();
                let adds = inner.upgrade().is_some_and(|i| i.map_adds_servers());
                if !adds {
                    continue;
                }
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick(Instant::now());
    }
}
