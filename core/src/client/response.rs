//! What a unary call returns: [`Response`] and where its time went ([`CallTiming`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::{Metadata, Trailers};

/// A successful call's result: the message, trailing metadata, and where the time went.
#[derive(Debug, Clone)]
pub struct Response<T> {
    pub(super) message: T,
    pub(super) metadata: Metadata,
    pub(super) timing: CallTiming,
    pub(super) served_by: Option<ServedBy>,
}

/// Which server answered a call (see [`Response::served_by`]).
///
/// Made without copying anything: it shares the server's HELLO, so knowing who answered
/// costs a call no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    pub(crate) addr: SocketAddr,
    pub(crate) hello: Option<std::sync::Arc<crate::wire::Hello>>,
    /// A region client's routing region, which wins over the HELLO's.
    pub(crate) routed_region: Option<std::sync::Arc<str>>,
}

impl ServedBy {
    /// The address the answering attempt was sent to (through a proxy: the proxy's).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server id its HELLO announced (empty if no HELLO had arrived yet).
    pub fn server_id(&self) -> &str {
        self.hello.as_deref().map_or("", |h| h.server_id.as_str())
    }

    /// The region: for a [`RegionClient`](crate::region::RegionClient)'s call, the region
    /// of the map it was routed to; for a channel's, the one the HELLO announced (a
    /// proxy announces its own).
    pub fn region(&self) -> &str {
        match &self.routed_region {
            Some(r) => r,
            None => self.hello.as_deref().map_or("", |h| h.region.as_str()),
        }
    }
}

/// Where the time of one call went: the client's own measure of the whole call, and the
/// times the server (and a proxy, if the call went through one) reported in its TRAILERS.
///
/// Through a proxy, [`total`](Self::total) splits into four parts that add up to it exactly:
/// [`client_proxy_network`](Self::client_proxy_network) + [`proxy`](Self::proxy) +
/// [`proxy_server_network`](Self::proxy_server_network) + [`server`](Self::server).
/// Without one, into [`network`](Self::network) + [`server`](Self::server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallTiming {
    total: Duration,
    server: Option<Duration>,
    via_proxy: Option<crate::wire::ProxyTime>,
}

impl CallTiming {
    pub(super) fn new(total: Duration, trailers: &Trailers) -> CallTiming {
        CallTiming {
            total,
            server: trailers.server_time,
            via_proxy: trailers.proxy,
        }
    }

    /// From writing the HEADERS to reading the TRAILERS, on the client's clock.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// Whether the call went through a proxy that reported its times.
    pub fn proxied(&self) -> bool {
        self.via_proxy.is_some()
    }

    /// The server's own time on the call (its handler, plus reading and writing).
    pub fn server(&self) -> Option<Duration> {
        self.server
    }

    /// Time inside the proxy, when the call went through one.
    pub fn proxy(&self) -> Option<Duration> {
        self.via_proxy.map(|p| p.inside)
    }

    /// Network time client -> proxy -> client (including the client's own framing),
    /// when the call went through a proxy.
    pub fn client_proxy_network(&self) -> Option<Duration> {
        let p = self.via_proxy?;
        Some(self.total.saturating_sub(p.inside + p.upstream))
    }

    /// Network time proxy -> server -> proxy, as the proxy saw it (retries included).
    pub fn proxy_server_network(&self) -> Option<Duration> {
        let p = self.via_proxy?;
        Some(p.upstream.saturating_sub(self.server.unwrap_or_default()))
    }

    /// Network time client -> server -> client, for a direct call.
    pub fn network(&self) -> Option<Duration> {
        if self.via_proxy.is_some() {
            return None;
        }
        Some(self.total.saturating_sub(self.server?))
    }

    pub(super) fn record(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        span.record("server_us", self.server.map_or(0, |t| t.as_micros() as u64));
        if let Some(p) = self.via_proxy {
            span.record("proxy_us", p.inside.as_micros() as u64);
            span.record("upstream_us", p.upstream.as_micros() as u64);
        }
    }
}

impl<T> Response<T> {
    /// The response message.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// The response message, borrowed.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// Trailing metadata the server sent.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Time the server spent on the call, as it reported it.
    pub fn server_time(&self) -> Option<Duration> {
        self.timing.server
    }

    /// Where the time of the call went (the last attempt, if it was sent again).
    pub fn timing(&self) -> CallTiming {
        self.timing
    }

    /// Which server answered (the attempt that won, if the call was sent again or
    /// hedged).
    pub fn served_by(&self) -> Option<&ServedBy> {
        self.served_by.as_ref()
    }

    /// Sets the region of [`served_by`](Self::served_by) (a region client's routing region).
    pub(crate) fn set_served_region(&mut self, region: &str) {
        if let Some(s) = &mut self.served_by {
            // Usually the server announces the region the map puts it in: nothing to keep.
            if s.region() != region {
                s.routed_region = Some(region.into());
            }
        }
    }
}
