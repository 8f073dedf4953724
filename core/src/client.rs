//! The client: a [`Channel`] to one server, carrying any number of concurrent calls.
//!
//! Every call is its own QUIC stream on one shared connection, so a slow or lost call never
//! holds up another. A call ends in one of three ways: the server's TRAILERS arrive, its
//! deadline passes (the stream is reset with `DEADLINE_EXCEEDED` and the server's handler is
//! cancelled), or the caller drops it (the stream is reset with `CANCELLED`, same effect).
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, ca: &meridian::DevCa) -> Result<(), Box<dyn std::error::Error>> {
//! use meridian::{Channel, ClientTls};
//! let tls = ClientTls::with_roots([ca.certificate().clone()])?;
//! let channel = Channel::builder(addr, tls).server_name("localhost").connect().await?;
//! let sum: i64 = channel
//!     .call("add")
//!     .timeout(std::time::Duration::from_secs(1))
//!     .unary(&(10i64, 5i64))
//!     .await?
//!     .into_inner();
//! assert_eq!(sum, 15);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, field, Instrument};

use crate::codec::{Codec, Value};
use crate::status::{Error, Status};
use crate::stream::{
    data_chunks, decode_raw, decode_typed, encode_raw, encode_typed, reset_for_status,
    status_for_reset, DecodeFn, EncodeFn, FramedRecv, RecvError,
};
use crate::transport::{describe_connection_error, ClientTls, TransportConfig};
use crate::wire::{reset, Code, FrameKind, Hello, Metadata, RequestHeaders, Trailers, WireLimits};
use crate::zero_rtt::{self, Dial};

/// Builds a [`Channel`].
#[derive(Debug)]
pub struct ChannelBuilder {
    addr: SocketAddr,
    tls: ClientTls,
    server_name: String,
    transport: TransportConfig,
    endpoint: Option<quinn::Endpoint>,
}

impl ChannelBuilder {
    /// The name the server's certificate must carry. Default `"localhost"`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Transport limits and timers.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Shares an existing client endpoint (one UDP socket for many channels).
    pub fn endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Connects (QUIC + TLS handshake) and returns the channel. A certificate the client
    /// does not trust, or a server that requires a client certificate we lack, fails here.
    pub async fn connect(self) -> Result<Channel, Error> {
        let (endpoint, shared) = match self.endpoint {
            Some(e) => (e, None),
            None => (
                self.tls.endpoint_for(self.addr, None)?,
                Some(self.tls.clone()),
            ),
        };
        let config = self.tls.quinn_config(&self.transport)?;
        let inner = Arc::new(ChannelInner {
            addr: self.addr,
            server_name: self.server_name,
            endpoint: RwLock::new(endpoint),
            shared_sockets: shared,
            config,
            wire: self.transport.wire,
            value: self.transport.value,
            handshake_timeout: self.transport.handshake_timeout,
            conn: RwLock::new(None),
            reconnect: tokio::sync::Mutex::new(Backoff::default()),
            hello: watch::channel(None).0,
            stats: Counters::default(),
        });
        inner.establish().await.map_err(|reason| Error::Connect {
            addr: self.addr,
            reason,
        })?;
        Ok(Channel { inner })
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls_started: AtomicU64,
    calls_failed: AtomicU64,
    stream_credit_waits: AtomicU64,
    connections: AtomicU64,
    retries: AtomicU64,
    zero_rtt_attempted: AtomicU64,
    zero_rtt_accepted: AtomicU64,
    zero_rtt_rejected: AtomicU64,
    early_calls: AtomicU64,
}

/// Counters and transport figures of a channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    /// Calls started.
    pub calls_started: u64,
    /// Calls that ended with a status other than `OK`.
    pub calls_failed: u64,
    /// Calls that had to wait for stream credit because the server's concurrent stream
    /// limit was reached.
    pub stream_credit_waits: u64,
    /// Connections established (1 plus reconnects).
    pub connections: u64,
    /// QUIC's smoothed RTT estimate of the current connection.
    pub rtt: Option<Duration>,
    /// QUIC's minimum observed RTT of the current connection.
    pub min_rtt: Option<Duration>,
    /// UDP datagrams sent on the current connection.
    pub datagrams_sent: u64,
    /// UDP datagrams received on the current connection.
    pub datagrams_received: u64,
    /// Calls sent a second time (after a 0-RTT rejection, a refusal, or a lost
    /// connection for idempotent calls).
    pub retries: u64,
    /// Connections that tried 0-RTT (we held a session ticket: a resumed connection).
    pub zero_rtt_attempted: u64,
    /// Connections whose 0-RTT data the server accepted.
    pub zero_rtt_accepted: u64,
    /// Connections whose 0-RTT data the server rejected (their early calls were re-sent).
    pub zero_rtt_rejected: u64,
    /// Calls sent before the handshake completed, in 0-RTT data.
    pub early_calls: u64,
    /// Whether the current connection resumed a TLS session with 0-RTT.
    pub resumed: bool,
    /// For the current connection: `None` while its handshake runs or when it did not try
    /// 0-RTT, else whether the server accepted the 0-RTT data.
    pub zero_rtt: Option<bool>,
}

struct ChannelInner {
    addr: SocketAddr,
    server_name: String,
    endpoint: RwLock<quinn::Endpoint>,
    /// Where the endpoint came from, when it is the one shared by a `ClientTls`.
    shared_sockets: Option<ClientTls>,
    config: quinn::ClientConfig,
    wire: WireLimits,
    value: crate::codec::DecodeLimits,
    handshake_timeout: Duration,
    conn: RwLock<Option<Conn>>,
    reconnect: tokio::sync::Mutex<Backoff>,
    hello: watch::Sender<Option<Arc<Hello>>>,
    stats: Counters,
}

/// One QUIC connection and the state of its handshake.
#[derive(Clone)]
struct Conn {
    quic: quinn::Connection,
    /// `None` while the handshake runs; then whether 0-RTT data was accepted.
    handshake: watch::Receiver<Option<bool>>,
    /// The connection tried 0-RTT.
    early: bool,
    /// When the handshake completed, for [`Channel::close`].
    done_at: Arc<std::sync::OnceLock<Instant>>,
}

impl Conn {
    fn handshake_done(&self) -> bool {
        self.handshake.borrow().is_some()
    }

    async fn wait_handshake(&self) -> Result<(), Status> {
        let mut rx = self.handshake.clone();
        let _ = rx.wait_for(|h| h.is_some()).await;
        match self.quic.close_reason() {
            None => Ok(()),
            Some(e) => Err(Status::unavailable(format!(
                "connection failed: {}",
                describe_connection_error(&e)
            ))),
        }
    }
}

/// Reconnection pacing: capped exponential backoff with jitter after failed attempts.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let exp = Self::FIRST.saturating_mul(1u32 << self.failures.min(8).saturating_sub(1));
        let base = exp.min(Self::CAP);
        // +-20% jitter, so clients that lost the same server do not return in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
        self.not_before = Some(Instant::now() + base.mul_f64(jitter));
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

impl ChannelInner {
    fn current(&self) -> Option<Conn> {
        let guard = self.conn.read().ok()?;
        guard
            .as_ref()
            .filter(|c| c.quic.close_reason().is_none())
            .cloned()
    }

    /// Whether the server's catalog (from its last HELLO) marks `method` idempotent.
    fn catalog_idempotent(&self, method: &str) -> bool {
        self.hello
            .borrow()
            .as_ref()
            .and_then(|h| h.methods.iter().find(|m| m.name == method))
            .is_some_and(|m| m.idempotent)
    }

    async fn establish(self: &Arc<Self>) -> Result<Conn, String> {
        let endpoint = self.endpoint.read().map_err(|e| e.to_string())?.clone();
        let connecting =
            match endpoint.connect_with(self.config.clone(), self.addr, &self.server_name) {
                Err(quinn::ConnectError::EndpointStopping) if self.shared_sockets.is_some() => {
                    // The shared socket's runtime ended: take a fresh one.
                    let fresh = self
                        .shared_sockets
                        .as_ref()
                        .map(|tls| tls.endpoint_for(self.addr, Some(&endpoint)))
                        .transpose()
                        .map_err(|e| e.to_string())?
                        .unwrap_or(endpoint);
                    if let Ok(mut slot) = self.endpoint.write() {
                        *slot = fresh.clone();
                    }
                    fresh.connect_with(self.config.clone(), self.addr, &self.server_name)
                }
                other => other,
            }
            .map_err(|e| e.to_string())?;
        let done_at = Arc::new(std::sync::OnceLock::new());
        let conn = match zero_rtt::dial(connecting) {
            Dial::Early(quic, accepted) => {
                // We hold a session ticket: the connection is usable now, and idempotent
                // calls may travel in the first flight.
                self.stats
                    .zero_rtt_attempted
                    .fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(None);
                let weak = Arc::downgrade(self);
                let limit = self.handshake_timeout;
                let (watched, stamp) = (quic.clone(), done_at.clone());
                let addr = self.addr;
                tokio::spawn(async move {
                    let accepted = match tokio::time::timeout(limit, accepted).await {
                        Ok(a) => a,
                        Err(_) => {
                            watched.close(reset::NO_ERROR.into(), b"handshake timed out");
                            false
                        }
                    };
                    let _ = stamp.set(Instant::now());
                    let failed = watched.close_reason().is_some();
                    if let Some(inner) = weak.upgrade() {
                        if accepted {
                            inner
                                .stats
                                .zero_rtt_accepted
                                .fetch_add(1, Ordering::Relaxed);
                        } else if !failed {
                            inner
                                .stats
                                .zero_rtt_rejected
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    debug!(%addr, accepted, failed, "0-RTT handshake ended");
                    let _ = tx.send(Some(accepted));
                    if failed {
                        // The handshake itself failed (refused, unreachable): pace the
                        // next attempts as for any failed connection.
                        if let Some(inner) = weak.upgrade() {
                            inner.reconnect.lock().await.failed();
                        }
                    }
                });
                Conn {
                    quic,
                    handshake: rx,
                    early: true,
                    done_at,
                }
            }
            Dial::Full(connecting) => {
                let quic = match tokio::time::timeout(self.handshake_timeout, connecting).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(describe_connection_error(&e)),
                    Err(_) => {
                        return Err(format!(
                            "handshake timed out after {:?}",
                            self.handshake_timeout
                        ))
                    }
                };
                let _ = done_at.set(Instant::now());
                Conn {
                    quic,
                    handshake: watch::channel(Some(false)).1,
                    early: false,
                    done_at,
                }
            }
        };
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        tokio::spawn(read_hello(
            Arc::downgrade(self),
            conn.quic.clone(),
            self.wire,
        ));
        tokio::spawn(reconnect_when_lost(Arc::downgrade(self), conn.quic.clone()));
        Ok(conn)
    }

    /// The open connection, re-established if it was lost (after a backoff if the last
    /// attempts failed).
    async fn connection(self: &Arc<Self>) -> Result<Conn, Status> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let mut backoff = self.reconnect.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(t) = backoff.not_before {
            tokio::time::sleep_until(t.into()).await;
        }
        debug!(addr = %self.addr, "reconnecting");
        match self.establish().await {
            Ok(c) => {
                backoff.succeeded();
                Ok(c)
            }
            Err(why) => {
                backoff.failed();
                Err(Status::unavailable(format!(
                    "cannot connect to {}: {why}",
                    self.addr
                )))
            }
        }
    }
}

/// Re-establishes a connection the server closed or the network lost, so the next call
/// finds one ready (paced by the channel's backoff). A connection closed by this client is
/// left closed.
async fn reconnect_when_lost(inner: std::sync::Weak<ChannelInner>, conn: quinn::Connection) {
    let reason = conn.closed().await;
    if matches!(reason, quinn::ConnectionError::LocallyClosed) {
        return;
    }
    let Some(inner) = inner.upgrade() else {
        return;
    };
    debug!(addr = %inner.addr, %reason, "connection lost, reconnecting in the background");
    reconnect_boxed(inner).await;
}

/// `connection` spawns [`reconnect_when_lost`], which calls `connection`: a boxed future
/// with a declared `Send` breaks the cycle the compiler cannot see through.
fn reconnect_boxed(inner: Arc<ChannelInner>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = inner.connection().await;
    })
}

async fn read_hello(
    inner: std::sync::Weak<ChannelInner>,
    conn: quinn::Connection,
    limits: WireLimits,
) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut rx = FramedRecv::new(recv, limits);
    while let Ok(Some(frame)) = rx.next_frame().await {
        if frame.kind != FrameKind::Hello {
            continue;
        }
        match Hello::decode(&frame.payload) {
            Ok(hello) => {
                let Some(inner) = inner.upgrade() else { return };
                inner.hello.send_replace(Some(Arc::new(hello)));
            }
            Err(e) => debug!(error = %e, "ignoring a bad HELLO"),
        }
    }
}

/// A connection to one server that carries any number of concurrent calls.
///
/// Cloning is cheap and shares the connection. A lost connection is re-established on the
/// next call.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Channel {
    /// Starts building a channel to `addr`, verifying the server with `tls`.
    pub fn builder(addr: SocketAddr, tls: ClientTls) -> ChannelBuilder {
        ChannelBuilder {
            addr,
            tls,
            server_name: "localhost".into(),
            transport: TransportConfig::default(),
            endpoint: None,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Starts a call to `method`; set options on the returned builder, then pick the call
    /// kind (`unary`, `server_streaming`, ...).
    pub fn call(&self, method: impl Into<String>) -> CallBuilder {
        CallBuilder {
            channel: self.clone(),
            method: method.into(),
            timeout: None,
            metadata: Metadata::new(),
            idempotent: false,
            routing_key: None,
            codec: Codec::Postcard,
            forward: false,
        }
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

    /// Whether a connection is open now (the next call would not have to reconnect).
    pub fn is_connected(&self) -> bool {
        self.inner.current().is_some()
    }

    /// Counters and RTT figures.
    pub fn stats(&self) -> ChannelStats {
        let s = &self.inner.stats;
        let current = self.inner.current();
        let conn = current.as_ref().map(|c| &c.quic);
        ChannelStats {
            calls_started: s.calls_started.load(Ordering::Relaxed),
            calls_failed: s.calls_failed.load(Ordering::Relaxed),
            stream_credit_waits: s.stream_credit_waits.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            rtt: conn.map(|c| c.rtt()),
            min_rtt: conn.map(|c| c.min_rtt()),
            datagrams_sent: conn.map_or(0, |c| c.stats().udp_tx.datagrams),
            datagrams_received: conn.map_or(0, |c| c.stats().udp_rx.datagrams),
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
        }
    }

    /// Closes the connection; calls in flight fail with `UNAVAILABLE`.
    ///
    /// Session tickets for the next 0-RTT reconnect arrive about one round trip after the
    /// handshake completes, so a connection younger than that is kept open until then
    /// (at most one second): closing at once would leave the client without tickets.
    pub async fn close(&self) {
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

/// A successful call's result: the message, trailing metadata, and where the time went.
#[derive(Debug, Clone)]
pub struct Response<T> {
    message: T,
    metadata: Metadata,
    timing: CallTiming,
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
    fn new(total: Duration, trailers: &Trailers) -> CallTiming {
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

    fn record(&self, span: &tracing::Span) {
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
}

/// Options of one call, then the call itself.
#[derive(Debug)]
#[must_use = "a call does nothing until a call kind such as `unary` is awaited"]
pub struct CallBuilder {
    channel: Channel,
    method: String,
    timeout: Option<Duration>,
    metadata: Metadata,
    idempotent: bool,
    routing_key: Option<Bytes>,
    codec: Codec,
    /// Raw bytes forwarded for someone else (a proxy): keep `codec` on the wire.
    forward: bool,
}

impl CallBuilder {
    /// Marks the call as forwarding messages already encoded with `codec`: the `*_raw`
    /// calls then announce `codec` instead of raw bytes, so the server decodes them as the
    /// original caller meant.
    pub(crate) fn forwarding(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self.forward = true;
        self
    }

    /// Gives up after `timeout`; the server is told the time left and stops the handler
    /// when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Declares the call safe to run more than once.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Sets a routing key (for key-owned data; forwarded by proxies).
    pub fn routing_key(mut self, key: impl Into<Bytes>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Chooses the codec of typed messages: [`Codec::Postcard`] (default, Rust to Rust) or
    /// [`Codec::Value`] (self-describing, any language).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// A unary call with typed messages.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        self,
        request: &Req,
    ) -> Result<Response<Resp>, Status> {
        let max = self.channel.inner.wire.max_message_size;
        let msg = encode_typed(self.codec, request, max)?;
        self.unary_bytes(msg, decode_typed::<Resp>).await
    }

    /// A unary call on raw bytes.
    pub async fn unary_raw(mut self, request: Bytes) -> Result<Response<Bytes>, Status> {
        if !self.forward {
            self.codec = Codec::Raw;
        }
        let msg = encode_raw(
            Codec::Raw,
            &request,
            self.channel.inner.wire.max_message_size,
        )?;
        self.unary_bytes(msg, decode_raw).await
    }

    async fn unary_bytes<Resp>(
        self,
        msg: Bytes,
        decode: DecodeFn<Resp>,
    ) -> Result<Response<Resp>, Status> {
        let started = Instant::now();
        let span = tracing::debug_span!(
            "rpc.client",
            method = %self.method,
            code = field::Empty,
            duration_us = field::Empty,
            attempts = field::Empty,
            early = field::Empty,
            server_us = field::Empty,
            proxy_us = field::Empty,
            upstream_us = field::Empty
        );
        let (inner, mut headers, deadline) = self.into_parts(started);
        let fut = async {
            let mut attempts = 0u32;
            let mut lost_once = false;
            loop {
                attempts += 1;
                let attempt = async {
                    // Only a first attempt may go early: if 0-RTT was rejected, the
                    // handshake must be complete before the call is sent again.
                    let mut call = open_call(
                        &inner,
                        &mut headers,
                        deadline,
                        Some(msg.clone()),
                        true,
                        attempts == 1,
                    )
                    .await?;
                    tracing::Span::current().record("early", call.early);
                    let mut recv = call.take_recv();
                    let result = recv.single_response(decode).await;
                    if recv.finished {
                        call.done();
                    }
                    result.map_err(|status| Failure {
                        status,
                        retry: recv.retry,
                    })
                };
                let failure = match attempt.await {
                    Ok(r) => {
                        tracing::Span::current().record("attempts", attempts);
                        return Ok(r);
                    }
                    Err(f) => f,
                };
                let idempotent = || headers.idempotent || inner.catalog_idempotent(&headers.method);
                // A call that provably never ran (refused, or lost with rejected 0-RTT
                // data) is sent again, paced by the reconnection backoff, up to
                // MAX_ATTEMPTS and within its deadline; one that may have run is sent again
                // once, and only if it is idempotent.
                let again = attempts < MAX_ATTEMPTS
                    && match failure.retry {
                        Retry::NotStarted => true,
                        Retry::MaybeStarted => !lost_once && idempotent(),
                        Retry::No => false,
                    };
                if again {
                    lost_once |= failure.retry == Retry::MaybeStarted;
                    inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    debug!(method = %headers.method, reason = %failure.status, "sending the call again");
                    continue;
                }
                tracing::Span::current().record("attempts", attempts);
                return Err(failure.into_status(idempotent()));
            }
        };
        let result = with_deadline(deadline, fut).instrument(span.clone()).await;
        if let Ok(r) = &result {
            r.timing.record(&span);
        }
        finish_span(&span, &inner, &result, started);
        result
    }

    /// A server-streaming call: one request, a stream of responses.
    pub async fn server_streaming<Req: Serialize, Resp: DeserializeOwned>(
        self,
        request: &Req,
    ) -> Result<Streaming<Resp>, Status> {
        let msg = encode_typed(
            self.codec,
            request,
            self.channel.inner.wire.max_message_size,
        )?;
        self.server_streaming_with(msg, decode_typed::<Resp>).await
    }

    /// A server-streaming call on raw bytes.
    pub async fn server_streaming_raw(
        mut self,
        request: Bytes,
    ) -> Result<Streaming<Bytes>, Status> {
        if !self.forward {
            self.codec = Codec::Raw;
        }
        let msg = encode_raw(
            Codec::Raw,
            &request,
            self.channel.inner.wire.max_message_size,
        )?;
        self.server_streaming_with(msg, decode_raw).await
    }

    async fn server_streaming_with<Resp>(
        self,
        msg: Bytes,
        decode: DecodeFn<Resp>,
    ) -> Result<Streaming<Resp>, Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let open = open_call(&inner, &mut headers, deadline, Some(msg), true, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let recv = call.take_recv();
        call.done();
        Ok(recv.into_streaming(decode, deadline))
    }

    /// A client-streaming call: send requests on the sink, then await the response.
    pub async fn client_streaming<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status> {
        self.client_streaming_with(encode_typed::<Req>, decode_typed::<Resp>)
            .await
    }

    /// A client-streaming call on raw bytes.
    pub async fn client_streaming_raw(
        mut self,
    ) -> Result<(RequestSink<Bytes>, ResponseFuture<Bytes>), Status> {
        if !self.forward {
            self.codec = Codec::Raw;
        }
        self.client_streaming_with(encode_raw, decode_raw).await
    }

    async fn client_streaming_with<Req, Resp>(
        self,
        encode: EncodeFn<Req>,
        decode: DecodeFn<Resp>,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let max = inner.wire.max_message_size;
        let open = open_call(&inner, &mut headers, deadline, None, false, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let codec = call.codec;
        let sink = RequestSink {
            send: call.take_send(),
            codec,
            max,
            encode,
        };
        let recv = call.take_recv();
        Ok((
            sink,
            ResponseFuture {
                recv,
                decode,
                deadline,
            },
        ))
    }

    /// A bidirectional call: send on the sink while reading the stream.
    pub async fn bidi<Req: Serialize, Resp: DeserializeOwned>(
        self,
    ) -> Result<(RequestSink<Req>, Streaming<Resp>), Status> {
        self.bidi_with(encode_typed::<Req>, decode_typed::<Resp>)
            .await
    }

    /// A bidirectional call on raw bytes.
    pub async fn bidi_raw(mut self) -> Result<(RequestSink<Bytes>, Streaming<Bytes>), Status> {
        if !self.forward {
            self.codec = Codec::Raw;
        }
        self.bidi_with(encode_raw, decode_raw).await
    }

    async fn bidi_with<Req, Resp>(
        self,
        encode: EncodeFn<Req>,
        decode: DecodeFn<Resp>,
    ) -> Result<(RequestSink<Req>, Streaming<Resp>), Status> {
        let (inner, mut headers, deadline) = self.into_parts(Instant::now());
        let max = inner.wire.max_message_size;
        let open = open_call(&inner, &mut headers, deadline, None, false, false);
        let mut call = with_deadline(deadline, async {
            open.await.map_err(|f| f.into_status(true))
        })
        .await?;
        let sink = RequestSink {
            send: call.take_send(),
            codec: call.codec,
            max,
            encode,
        };
        Ok((sink, call.take_recv().into_streaming(decode, deadline)))
    }

    fn into_parts(self, started: Instant) -> (Arc<ChannelInner>, RequestHeaders, Option<Instant>) {
        let deadline = self.timeout.map(|t| started + t);
        let headers = RequestHeaders {
            method: self.method,
            codec: self.codec,
            timeout: self.timeout,
            idempotent: self.idempotent,
            routing_key: self.routing_key,
            metadata: self.metadata,
        };
        (self.channel.inner, headers, deadline)
    }
}

/// Most attempts one unary call makes (first try included). Attempts after the first are
/// paced by the reconnection backoff (100 ms doubling to 5 s), so this spans about 10 s;
/// a deadline ends them sooner.
const MAX_ATTEMPTS: u32 = 8;

/// Whether a failed attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The server answered, or the failure says nothing about where the call got.
    No,
    /// Provably not run: refused by the server, or lost with rejected 0-RTT data.
    NotStarted,
    /// The connection died with the call in flight: it may or may not have run.
    MaybeStarted,
}

struct Failure {
    status: Status,
    retry: Retry,
}

impl Failure {
    /// The status the caller sees: marked when the call provably never ran, and saying so
    /// when it may have run.
    fn into_status(self, idempotent: bool) -> Status {
        match self.retry {
            Retry::NotStarted => self.status.mark_not_run(),
            Retry::MaybeStarted if !idempotent => Status::unavailable(format!(
                "the connection was lost with the call in flight; it may or may not have run ({})",
                self.status.message()
            )),
            _ => self.status,
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure {
            status,
            retry: Retry::No,
        }
    }
}

/// Opens a stream and writes HEADERS (plus the request and FIN for single-request calls).
///
/// While a resumed connection's handshake is still running, only a call that may be
/// replayed (`may_go_early` and idempotent by the call's flag or the server's catalog)
/// goes out in 0-RTT data; any other waits for the handshake.
async fn open_call(
    inner: &Arc<ChannelInner>,
    headers: &mut RequestHeaders,
    deadline: Option<Instant>,
    request: Option<Bytes>,
    finish: bool,
    may_go_early: bool,
) -> Result<OpenCall, Failure> {
    inner.stats.calls_started.fetch_add(1, Ordering::Relaxed);
    if headers.metadata.byte_size() > inner.wire.max_metadata_size {
        return Err(Status::resource_exhausted("request metadata exceeds the size limit").into());
    }
    let conn = inner.connection().await.map_err(|status| Failure {
        status,
        retry: Retry::NotStarted,
    })?;
    let mut early = !conn.handshake_done();
    if early {
        let replayable =
            may_go_early && (headers.idempotent || inner.catalog_idempotent(&headers.method));
        if replayable {
            inner.stats.early_calls.fetch_add(1, Ordering::Relaxed);
        } else {
            conn.wait_handshake().await.map_err(|status| Failure {
                status,
                retry: Retry::NotStarted,
            })?;
            early = false;
        }
    }
    let (mut send, recv) = open_stream(inner, &conn.quic)
        .await
        .map_err(|status| Failure {
            status,
            retry: Retry::NotStarted,
        })?;
    // The time left now, after connecting and waiting for stream credit.
    headers.timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let head = headers.to_frame().freeze();
    let started = Instant::now();
    let written = match request {
        Some(msg) => {
            let [hdr, payload] = data_chunks(msg);
            send.write_all_chunks(&mut [head, hdr, payload]).await
        }
        None => send.write_all(&head).await,
    };
    let mut recv = CallRecv {
        recv: FramedRecv::new(recv, inner.wire),
        trailers: None,
        value: inner.value,
        wire: inner.wire,
        codec: headers.codec,
        deadline,
        finished: false,
        retry: Retry::No,
        started,
        ended: None,
    };
    if let Err(e) = written {
        let retry = match &e {
            quinn::WriteError::ZeroRttRejected => Retry::NotStarted,
            quinn::WriteError::Stopped(code) if code.into_inner() == u64::from(reset::REFUSED) => {
                Retry::NotStarted
            }
            quinn::WriteError::ConnectionLost(_) => Retry::MaybeStarted,
            _ => Retry::No,
        };
        // The server may have refused the request (too large, unknown method) and said
        // why in its TRAILERS; prefer its status over the write error.
        let status = recv.failure_after_write(e).await;
        return Err(Failure { status, retry });
    }
    if finish {
        let _ = send.finish();
    }
    Ok(OpenCall {
        send: Some(send),
        recv: Some(recv),
        codec: headers.codec,
        deadline,
        early,
        completed: false,
    })
}

fn ok_trailers() -> Trailers {
    Trailers {
        code: Code::Ok,
        message: String::new(),
        metadata: Metadata::new(),
        server_time: None,
        proxy: None,
        not_run: false,
    }
}

fn finish_span<T>(
    span: &tracing::Span,
    inner: &ChannelInner,
    result: &Result<T, Status>,
    started: Instant,
) {
    let code = match result {
        Ok(_) => Code::Ok,
        Err(s) => {
            inner.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
            s.code()
        }
    };
    span.record("code", field::display(code));
    span.record("duration_us", started.elapsed().as_micros() as u64);
}

async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
        None => fut.await,
    }
}

/// Opens a bidirectional stream; if the server's stream limit makes us wait, that is
/// counted and traced rather than silent.
async fn open_stream(
    inner: &ChannelInner,
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), Status> {
    let open = conn.open_bi();
    tokio::pin!(open);
    let first = std::future::poll_fn(|cx| Poll::Ready(open.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(r) => r,
        Poll::Pending => {
            inner
                .stats
                .stream_credit_waits
                .fetch_add(1, Ordering::Relaxed);
            let waited = Instant::now();
            debug!(addr = %inner.addr, "waiting for stream credit: the server's concurrent stream limit is reached");
            let r = open.await;
            debug!(
                waited_us = waited.elapsed().as_micros() as u64,
                "stream credit granted"
            );
            r
        }
    };
    result.map_err(|e| Status::unavailable(format!("connection lost: {e}")))
}

/// Resets whatever is still open when a call is abandoned.
struct OpenCall {
    send: Option<quinn::SendStream>,
    recv: Option<CallRecv>,
    codec: Codec,
    deadline: Option<Instant>,
    /// Sent in 0-RTT data.
    early: bool,
    completed: bool,
}

impl OpenCall {
    fn take_send(&mut self) -> quinn::SendStream {
        // Both halves are taken exactly once, right after `open` filled them.
        self.send.take().expect("send half taken once")
    }

    fn take_recv(&mut self) -> CallRecv {
        self.recv.take().expect("receive half taken once")
    }

    fn done(&mut self) {
        self.completed = true;
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if !self.completed {
            if let Some(s) = &mut self.send {
                let _ = s.reset(abandon_code(self.deadline).into());
            }
        }
    }
}

/// The receiving half of a call.
struct CallRecv {
    recv: FramedRecv,
    trailers: Option<Trailers>,
    value: crate::codec::DecodeLimits,
    wire: WireLimits,
    codec: Codec,
    deadline: Option<Instant>,
    finished: bool,
    /// How the last failure bears on sending the call again.
    retry: Retry,
    /// When the HEADERS were written, and when the TRAILERS arrived.
    started: Instant,
    ended: Option<Instant>,
}

impl CallRecv {
    /// The next response message; `Ok(None)` after an `OK` TRAILERS.
    async fn message<T>(&mut self, decode: DecodeFn<T>) -> Result<Option<T>, Status> {
        if self.finished {
            return Ok(None);
        }
        let frame = match self.recv.next_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.finished = true;
                return Err(Status::internal("the response ended without TRAILERS"));
            }
            Err(e) => {
                self.finished = true;
                self.retry = match &e {
                    RecvError::ZeroRttRejected => Retry::NotStarted,
                    RecvError::Reset(code) if *code == u64::from(reset::REFUSED) => {
                        Retry::NotStarted
                    }
                    RecvError::Lost(_) => Retry::MaybeStarted,
                    RecvError::Wire(_) | RecvError::Reset(_) => Retry::No,
                };
                return Err(e.to_status());
            }
        };
        match frame.kind {
            FrameKind::Data if self.trailers.is_none() => {
                decode(self.codec, frame.payload, &self.value).map(Some)
            }
            FrameKind::Trailers => {
                let t = Trailers::decode(&frame.payload, &self.wire)
                    .map_err(|e| Status::internal(format!("bad TRAILERS: {e}")))?;
                self.finished = true;
                self.ended = Some(Instant::now());
                self.consume_fin();
                if t.code != Code::Ok {
                    let status = Status::new(t.code, t.message).with_metadata(t.metadata);
                    return Err(if t.not_run {
                        status.mark_not_run()
                    } else {
                        status
                    });
                }
                self.trailers = Some(t);
                Ok(None)
            }
            other => {
                self.finished = true;
                self.recv.stop(reset::PROTOCOL_ERROR);
                Err(Status::internal(format!(
                    "unexpected {other} frame in a response"
                )))
            }
        }
    }

    /// Reads the end of stream that follows TRAILERS if it has already arrived (it
    /// normally travels in the same packet). A receive stream dropped before its end sends
    /// the server a STOP_SENDING, an extra frame and extra work on every call.
    fn consume_fin(&mut self) {
        let next = self.recv.next_frame();
        tokio::pin!(next);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let _ = next.as_mut().poll(&mut cx);
    }

    /// Exactly one response message, then `OK` TRAILERS.
    async fn single_response<T>(&mut self, decode: DecodeFn<T>) -> Result<Response<T>, Status> {
        let msg = self
            .message(decode)
            .await?
            .ok_or_else(|| Status::internal("the server sent no response message"))?;
        if self.message(decode).await?.is_some() {
            return Err(Status::internal("the server sent more than one response"));
        }
        let t = self.trailers.take().unwrap_or_else(ok_trailers);
        let total = self.ended.unwrap_or_else(Instant::now) - self.started;
        Ok(Response {
            message: msg,
            timing: CallTiming::new(total, &t),
            metadata: t.metadata,
        })
    }

    /// The status to report when writing the request failed.
    async fn failure_after_write(&mut self, e: quinn::WriteError) -> Status {
        let read = tokio::time::timeout(Duration::from_secs(2), self.message(decode_raw)).await;
        match (read, &e) {
            (Ok(Err(status)), _) => status,
            (_, quinn::WriteError::Stopped(code)) => status_for_reset(code.into_inner()),
            _ => Status::unavailable(format!("cannot send the request: {e}")),
        }
    }

    fn into_streaming<T>(self, decode: DecodeFn<T>, deadline: Option<Instant>) -> Streaming<T> {
        Streaming {
            recv: self,
            decode,
            deadline,
        }
    }
}

impl Drop for CallRecv {
    fn drop(&mut self) {
        if !self.finished {
            self.recv.stop(abandon_code(self.deadline));
        }
    }
}

/// The code that tells the server why an unfinished call was abandoned.
fn abandon_code(deadline: Option<Instant>) -> u32 {
    match deadline {
        Some(d) if Instant::now() >= d => reset::DEADLINE_EXCEEDED,
        _ => reset::CANCELLED,
    }
}

/// Response messages of a server-streaming or bidirectional call.
///
/// Dropping it before the end cancels the call on the server.
pub struct Streaming<T> {
    recv: CallRecv,
    decode: DecodeFn<T>,
    deadline: Option<Instant>,
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

impl<T> Streaming<T> {
    /// The next message; `Ok(None)` once the server ended the stream with `OK`.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        let decode = self.decode;
        let deadline = self.deadline;
        let r = with_deadline(deadline, self.recv.message(decode)).await;
        if let Err(s) = &r {
            if s.code() == Code::DeadlineExceeded && !self.recv.finished {
                self.recv.finished = true;
                self.recv.recv.stop(reset::DEADLINE_EXCEEDED);
            }
        }
        r
    }

    /// Trailing metadata, available after `message` returned `Ok(None)`.
    pub fn trailers(&self) -> Option<&Metadata> {
        self.recv.trailers.as_ref().map(|t| &t.metadata)
    }

    /// Server time reported in the TRAILERS.
    pub fn server_time(&self) -> Option<Duration> {
        self.recv.trailers.as_ref().and_then(|t| t.server_time)
    }

    /// Where the time of the call went, available after `message` returned `Ok(None)`.
    pub fn timing(&self) -> Option<CallTiming> {
        let t = self.recv.trailers.as_ref()?;
        let total = self.recv.ended.unwrap_or_else(Instant::now) - self.recv.started;
        Some(CallTiming::new(total, t))
    }
}

/// Where a client-streaming or bidirectional call sends its requests.
///
/// Call [`RequestSink::finish`] when done; dropping the sink also ends the request stream.
pub struct RequestSink<T> {
    send: quinn::SendStream,
    codec: Codec,
    max: usize,
    encode: EncodeFn<T>,
}

impl<T> std::fmt::Debug for RequestSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSink").finish_non_exhaustive()
    }
}

impl<T> RequestSink<T> {
    /// Sends one request message; waits while the server is slow to read.
    pub async fn send(&mut self, msg: &T) -> Result<(), Status> {
        let bytes = (self.encode)(self.codec, msg, self.max)?;
        let [hdr, payload] = data_chunks(bytes);
        self.send
            .write_all_chunks(&mut [hdr, payload])
            .await
            .map_err(|e| match e {
                quinn::WriteError::Stopped(code) => status_for_reset(code.into_inner()),
                other => Status::unavailable(format!("cannot send: {other}")),
            })
    }

    /// Ends the request stream.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the call: the server's handler is cancelled.
    pub fn cancel(mut self, status: &Status) {
        let _ = self.send.reset(reset_for_status(status).into());
    }
}

/// The response of a client-streaming call.
pub struct ResponseFuture<T> {
    recv: CallRecv,
    decode: DecodeFn<T>,
    deadline: Option<Instant>,
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> ResponseFuture<T> {
    /// Waits for the response.
    pub async fn response(mut self) -> Result<Response<T>, Status> {
        with_deadline(self.deadline, self.recv.single_response(self.decode)).await
    }
}
