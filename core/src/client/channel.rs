//! [`Channel`]: calls to one server over one QUIC connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::ChannelBuilder;
use super::call::CallBuilder;
use super::connection::ChannelInner;
use super::response::Response;
use super::stats::ChannelStats;
use crate::codec::{Codec, Value};
use crate::discovery::Catalog;
use crate::status::Status;
use crate::transport::{ClientTls, TransportConfig};
use crate::wire::{reset, Hello};

/// A connection to one server that carries any number of concurrent calls.
///
/// Cloning is cheap and shares the connection. A lost connection is re-established on the
/// next call.
#[derive(Clone)]
pub struct Channel {
    pub(super) inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Channel {
    /// Starts building a channel to `addr`, verifying the server with `tls`. The server's
    /// certificate must carry `addr`'s IP address unless another
    /// [`server_name`](ChannelBuilder::server_name) is set.
    pub fn builder(addr: SocketAddr, tls: ClientTls) -> ChannelBuilder {
        ChannelBuilder {
            addr,
            tls,
            server_name: addr.ip().to_string(),
            transport: TransportConfig::default(),
            endpoint: None,
            interceptors: Vec::new(),
            cert_sha256: None,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Starts a call to `method`; set options on the returned builder, then pick the call
    /// kind (`unary`, `server_streaming`, ...).
    pub fn call(&self, method: impl Into<String>) -> CallBuilder<Channel> {
        CallBuilder::new(self.clone(), method.into())
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

    /// A unary call with a [`Value`] request and response, as Python and C clients make.
    pub async fn call_value(&self, method: &str, request: &Value) -> Result<Value, Status> {
        self.call(method)
            .codec(Codec::Value)
            .unary(request)
            .await
            .map(Response::into_inner)
    }

    /// The server's method catalog from its last HELLO, indexed by name (empty until the
    /// first HELLO arrives).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog()
    }

    /// Changes whenever a HELLO arrives on this channel, and differs between channels
    /// (a process-wide sequence number; 0 before the first HELLO): a cheap test of whether
    /// a catalog read earlier is still current.
    pub(crate) fn catalog_version(&self) -> u64 {
        self.inner.hello_seq.load(Ordering::Acquire)
    }

    /// The server's HELLO, once it has arrived.
    pub fn server_info(&self) -> Option<Arc<Hello>> {
        self.inner.hello.borrow().clone()
    }

    /// Waits up to `timeout` for the server's HELLO.
    pub async fn wait_server_info(&self, timeout: Duration) -> Option<Arc<Hello>> {
        let mut rx = self.inner.hello.subscribe();
        let got = tokio::time::timeout(timeout, rx.wait_for(|h| h.is_some())).await;
        match got {
            Ok(Ok(h)) => h.clone(),
            _ => None,
        }
    }

    /// Why the channel's current connection ended (closed but not yet replaced), or else
    /// why its last connection or attempt did (`None` while connected, or before any
    /// failure).
    pub(crate) fn last_failure(&self) -> Option<String> {
        let closed = self.inner.conn.read().ok().and_then(|c| {
            c.as_ref()
                .and_then(|c| c.quic.close_reason())
                .map(|e| crate::transport::describe_connection_error(&e))
        });
        if closed.is_some() {
            return closed;
        }
        match &*self.inner.link.borrow() {
            super::connection::Link::Connecting { last_error, .. } => last_error.clone(),
            super::connection::Link::Failing { error } => Some(error.clone()),
            _ => None,
        }
    }

    /// Whether a connection is open now (the next call would not have to reconnect).
    pub fn is_connected(&self) -> bool {
        self.inner.current().is_some()
    }

    /// Counters and RTT figures.
    pub fn stats(&self) -> ChannelStats {
        let s = &self.inner.stats;
        let current = self.inner.current();
        let conn = current.as_ref().map(|c| &c.quic);
        // quinn's figures, read once (each read locks the connection and copies them).
        let quic = conn.map(|c| c.stats());
        ChannelStats {
            calls_started: s.calls_started.load(Ordering::Relaxed),
            calls_failed: s.calls_failed.load(Ordering::Relaxed),
            stream_credit_waits: s.stream_credit_waits.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            rtt: conn.map(|c| c.rtt()),
            min_rtt: conn.map(|c| c.min_rtt()),
            datagrams_sent: quic.as_ref().map_or(0, |q| q.udp_tx.datagrams),
            datagrams_received: quic.as_ref().map_or(0, |q| q.udp_rx.datagrams),
            retries: s.retries.load(Ordering::Relaxed),
            zero_rtt_attempted: s.zero_rtt_attempted.load(Ordering::Relaxed),
            zero_rtt_accepted: s.zero_rtt_accepted.load(Ordering::Relaxed),
            zero_rtt_rejected: s.zero_rtt_rejected.load(Ordering::Relaxed),
            early_calls: s.early_calls.load(Ordering::Relaxed),
            resumed: current.as_ref().is_some_and(|c| c.early),
            zero_rtt: current
                .as_ref()
                .filter(|c| c.early)
                .and_then(|c| *c.handshake.borrow()),
            path_mtu: quic.as_ref().map(|q| q.path.current_mtu),
            mtu_probes_sent: quic.as_ref().map_or(0, |q| q.path.sent_plpmtud_probes),
            stop_sending_sent: quic.as_ref().map_or(0, |q| q.frame_tx.stop_sending),
        }
    }

    /// Closes the connection; calls in flight fail with `UNAVAILABLE`.
    ///
    /// Session tickets for the next 0-RTT reconnect arrive about one round trip after the
    /// handshake completes, so a connection younger than that is kept open until then
    /// (at most one second): closing at once would leave the client without tickets.
    pub async fn close(&self) {
        for extra in self.inner.extra.lock().await.drain(..) {
            extra.close(reset::NO_ERROR.into(), b"client closed");
        }
        let Some(c) = self.inner.current() else {
            return;
        };
        let _ = tokio::time::timeout(self.inner.handshake_timeout, c.wait_handshake()).await;
        if let Some(done) = c.done_at.get() {
            let settle =
                (c.quic.rtt() * 3 / 2 + Duration::from_millis(2)).min(Duration::from_secs(1));
            tokio::time::sleep_until((*done + settle).into()).await;
        }
        c.quic.close(reset::NO_ERROR.into(), b"client closed");
    }

    /// Drops the current connection at once (no ticket collection); the next call
    /// reconnects, with 0-RTT if a session ticket is held.
    pub fn disconnect(&self) {
        if let Some(c) = self.inner.current() {
            c.quic.close(reset::NO_ERROR.into(), b"client disconnected");
        }
    }
}
