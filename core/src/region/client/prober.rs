//! Connecting to servers and keeping their RTT fresh.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Instant;

use tracing::debug;

use super::routing::Router;
use crate::client::Channel;
use crate::discovery::ServerEndpoint;

pub(super) async fn connect_server(inner: Weak<Router>, addr: SocketAddr, ep: ServerEndpoint) {
    // The dial holds no strong handle: a client freed meanwhile is not kept alive by it,
    // and its end (the router's `closed` sender dropping) cuts the handshake short.
    let (dial, mut closed) = {
        let Some(router) = inner.upgrade() else {
            return;
        };
        let dial = Channel::builder(addr, router.tls.clone())
            .server_name(ep.server_name.clone())
            .transport(router.transport.clone())
            .connect();
        (dial, router.closed.subscribe())
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
        router.note_connect(addr, result.as_ref().err().map(ToString::to_string));
        router.lock().connected(addr, result.ok(), Instant::now());
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
