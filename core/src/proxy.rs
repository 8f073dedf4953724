//! The region proxy: a gateway that takes calls like a server and forwards each one through
//! a [`RegionClient`], so a caller that knows one address reaches the nearest healthy region
//! that serves its method, with the same failover, retries and hedging as a client library.
//!
//! Every response the proxy forwards carries its own times in the TRAILERS (time inside the
//! proxy, and its upstream call's time) beside the server's time, so a client reads off each
//! call where the time went: `client -> proxy` network, proxy, `proxy -> server` network and
//! server (see [`CallTiming`](crate::CallTiming)).
//!
//! How each call kind is forwarded, by the kind the upstream catalogs give the method:
//! - unary: one routed call, retried and hedged like [`RegionClient`] calls;
//! - server-streaming: opened on the chosen server (the next choice is tried once if the
//!   open fails without running), then responses are passed on one by one;
//! - client-streaming, bidirectional and methods no catalog lists yet: a stream each way,
//!   messages passed on as they arrive.
//!
//! Memory per call is bounded: a message is held whole (at most the message size limit)
//! while it waits for the next hop's flow control, and at most a few responses queue in the
//! proxy; a slow reader stops the proxy reading from its writer, which QUIC flow control
//! then slows down. Deadlines go on with the time the caller has left; a caller that
//! cancels cancels the upstream call; an upstream failure reaches the caller with the same
//! status and metadata.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian::Error> {
//! let proxy = meridian::proxy::Proxy::from_toml_file("proxy.toml").await?;
//! println!("proxy on {}", proxy.local_addr());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tracing::{field, Instrument};

use crate::client::{RequestSink, Streaming};
use crate::region::{Region, RegionCallBuilder, RegionClient, RegionMap, StaticDiscovery};
use crate::server::{CallContext, Forwarded, RequestStream, ResponseSink, Server};
use crate::status::{Error, Status};
use crate::transport::{ClientTls, Identity, ServerTls, TransportConfig};
use crate::wire::{Metadata, MethodInfo, MethodKind};

/// How often the proxy compares the catalog it announces with its upstream servers' (a
/// cheap check; connected clients hear only of changes).
const CATALOG_REFRESH: Duration = Duration::from_millis(50);

/// Builds a [`Proxy`] around a [`RegionClient`] that reaches the upstream servers.
#[derive(Debug)]
pub struct ProxyBuilder {
    upstream: RegionClient,
    region: String,
    server_id: Option<String>,
    transport: TransportConfig,
}

impl ProxyBuilder {
    /// The region the proxy announces in its HELLO (where it runs). Default `proxy`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The id announced in the HELLO (default: the bound address).
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }

    /// Limits of the proxy's own endpoint (message size, streams, windows).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Binds `addr` and starts forwarding on the current tokio runtime.
    pub async fn bind(self, addr: SocketAddr, tls: ServerTls) -> Result<Proxy, Error> {
        let up = Arc::new(Upstream {
            client: self.upstream,
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            catalog: RwLock::new(Arc::new(HashMap::new())),
        });
        let templates = {
            let (u1, u2, u3, u4) = (up.clone(), up.clone(), up.clone(), up.clone());
            Server::builder()
                .unary_raw("unary", move |req, ctx| forward_unary(u1.clone(), req, ctx))
                .server_streaming_raw("server_streaming", move |req, ctx, sink| {
                    forward_server_streaming(u2.clone(), req, ctx, sink)
                })
                .client_streaming_raw("client_streaming", move |reqs, ctx| {
                    forward_client_streaming(u3.clone(), reqs, ctx)
                })
                .bidi_raw("bidi", move |reqs, ctx, sink| {
                    forward_bidi(u4.clone(), reqs, ctx, sink)
                })
        };
        let resolver = up.clone();
        let mut builder = Server::builder()
            .region(self.region)
            .transport(self.transport)
            .no_local_registry()
            .fallback(move |name| resolver.resolve(name), templates);
        if let Some(id) = self.server_id {
            builder = builder.server_id(id);
        }
        let server = builder.bind(addr, tls).await?;
        let announce = server.catalog_handle();
        let refreshed = Arc::downgrade(&up);
        let refresher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CATALOG_REFRESH);
            loop {
                ticker.tick().await;
                let Some(up) = refreshed.upgrade() else {
                    return;
                };
                let methods = up.client.catalog();
                up.remember(&methods);
                if !announce.set(methods) {
                    return;
                }
            }
        });
        Ok(Proxy {
            server,
            upstream: up,
            refresher: AbortOnDrop(refresher),
        })
    }
}

/// What the forwarding handlers share: the region client, counters, and the upstream
/// catalog as of the last refresh (so a call looks its method up in a map instead of
/// scanning every server's catalog under the region client's lock).
#[derive(Debug)]
struct Upstream {
    client: RegionClient,
    calls: AtomicU64,
    failed: AtomicU64,
    catalog: RwLock<Arc<HashMap<String, MethodInfo>>>,
}

impl Upstream {
    /// The last refreshed catalog.
    fn catalog(&self) -> Arc<HashMap<String, MethodInfo>> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Keeps `methods` as the catalog calls look up, if it changed.
    fn remember(&self, methods: &[MethodInfo]) {
        let current = self.catalog();
        let same = current.len() == methods.len()
            && methods.iter().all(|m| current.get(&m.name) == Some(m));
        if !same {
            let map = methods
                .iter()
                .map(|m| (m.name.clone(), m.clone()))
                .collect();
            match self.catalog.write() {
                Ok(mut c) => *c = Arc::new(map),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(map),
            }
        }
    }

    /// The kind and flags of `name` as the upstream catalogs give them (the live catalogs
    /// when the last refresh did not list it yet). A method no catalog lists is forwarded
    /// as a stream each way, which carries every call kind.
    fn resolve(&self, name: &str) -> MethodInfo {
        self.catalog()
            .get(name)
            .cloned()
            .or_else(|| self.client.method_info(name))
            .unwrap_or_else(|| MethodInfo {
                name: name.to_string(),
                kind: MethodKind::Bidi,
                idempotent: false,
            })
    }

    /// The upstream call for `ctx`: same method, codec, metadata, routing key and
    /// idempotency, and the time the caller has left.
    fn call(&self, ctx: &CallContext) -> RegionCallBuilder {
        let mut call = self
            .client
            .call(ctx.method())
            .forwarding(ctx.codec(), ctx.metadata().clone());
        if let Some(left) = ctx.remaining() {
            call = call.timeout(left);
        }
        // The caller's flag, else the catalog's; a method the refreshed catalog does not
        // list yet is left to the region client's own lookup.
        let listed = self.catalog().get(ctx.method()).map(|m| m.idempotent);
        match (ctx.is_idempotent(), listed) {
            (true, _) => call = call.idempotent(true),
            (false, Some(idempotent)) => call = call.idempotent(idempotent),
            (false, None) => {}
        }
        if let Some(key) = ctx.routing_key() {
            call = call.routing_key(key.clone());
        }
        call
    }
}

/// Counters of a running proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Calls forwarded since the proxy started.
    pub calls: u64,
    /// Forwarded calls that ended with a status other than `OK`.
    pub failed: u64,
}

/// A running proxy. Dropping it closes its endpoint at once; [`Proxy::shutdown`] lets
/// calls in flight finish.
#[derive(Debug)]
pub struct Proxy {
    server: Server,
    upstream: Arc<Upstream>,
    refresher: AbortOnDrop,
}

impl Proxy {
    /// A proxy forwarding through `upstream`.
    pub fn builder(upstream: RegionClient) -> ProxyBuilder {
        ProxyBuilder {
            upstream,
            region: "proxy".into(),
            server_id: None,
            transport: TransportConfig::default(),
        }
    }

    /// Starts a proxy from a parsed configuration.
    pub async fn from_config(config: ProxyConfig) -> Result<Proxy, Error> {
        let identity = Identity::from_pem_files(&config.tls.cert, &config.tls.key)?;
        let upstream_tls = match &config.tls.ca {
            Some(ca) => ClientTls::with_roots_pem_file(ca)?,
            None => return Err(Error::Config(
                "proxy: [tls] needs `ca`, the roots that upstream servers' certificates lead to"
                    .into(),
            )),
        };
        let map = RegionMap {
            regions: config.regions,
        };
        #[cfg(feature = "etcd")]
        let discovery: Arc<dyn crate::region::Discovery> = match config.etcd {
            Some(etcd) => crate::region::EtcdDiscovery::connect_with_base(etcd, map)
                .await
                .map_err(|e| Error::Config(format!("proxy: {e}")))?,
            None => static_upstream(map)?,
        };
        #[cfg(not(feature = "etcd"))]
        let discovery = match config.etcd {
            Some(_) => {
                return Err(Error::Config(
                    "proxy: the [etcd] table needs a build with the `etcd` cargo feature \
                     (`--features cli,etcd`; the build needs protoc and libprotobuf-dev)"
                        .into(),
                ))
            }
            None => static_upstream(map)?,
        };
        let mut client = RegionClient::builder(discovery, upstream_tls);
        if let Some(home) = config.home_region {
            client = client.home_region(home);
        }
        for m in config.hedge {
            client = client.hedge(m);
        }
        let upstream = client.build()?;
        let mut builder = Proxy::builder(upstream).region(config.proxy_region);
        if let Some(id) = config.server_id {
            builder = builder.server_id(id);
        }
        builder.bind(config.listen, ServerTls::new(identity)).await
    }

    /// Reads a TOML configuration file (see [`ProxyConfig`]) and starts the proxy.
    pub async fn from_toml_file(path: impl AsRef<Path>) -> Result<Proxy, Error> {
        Proxy::from_config(ProxyConfig::from_toml_file(path)?).await
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The region client the proxy forwards through (its stats show the upstream side).
    pub fn upstream(&self) -> &RegionClient {
        &self.upstream.client
    }

    /// Current counters.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            calls: self.upstream.calls.load(Ordering::Relaxed),
            failed: self.upstream.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking calls, lets calls in flight finish for up to `grace`, then closes.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.refresher);
        self.server.shutdown(grace).await;
    }
}

/// Stops the catalog refresher when the proxy goes.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Upstream servers listed in the configuration itself: at least one is needed.
fn static_upstream(map: RegionMap) -> Result<Arc<dyn crate::region::Discovery>, Error> {
    if map.regions.iter().all(|r| r.servers.is_empty()) {
        return Err(Error::Config(
            "proxy: no upstream server in any [[region]] (and no [etcd] table)".into(),
        ));
    }
    Ok(StaticDiscovery::new(map))
}

/// A proxy's configuration, usually read from TOML:
///
/// ```toml
/// listen = "127.0.0.1:7400"
/// proxy_region = "edge"        # where the proxy runs, announced in its HELLO
/// home_region = "eu-west"      # optional: preferred upstream region
/// hedge = ["lookup"]           # optional: idempotent methods to hedge
///
/// [tls]
/// cert = "proxy.pem"           # the proxy's certificate chain, shown to clients
/// key = "proxy.key"
/// ca = "ca.pem"                # roots that upstream servers' certificates lead to
///
/// [[region]]
/// name = "eu-west"
/// servers = [{ addr = "10.0.0.1:7000", server_name = "eu-west.example.com" }]
///
/// [etcd]                       # optional (feature `etcd`): servers registered in etcd,
/// endpoints = ["http://10.0.0.9:2379"]   # followed live, besides the lists above
/// ```
///
/// Relative file names are read from the configuration file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Where the proxy runs, announced in its HELLO (default `proxy`).
    #[serde(default = "default_region")]
    pub proxy_region: String,
    /// Id announced in the HELLO (default: the bound address).
    #[serde(default)]
    pub server_id: Option<String>,
    /// Upstream region preferred whenever it is healthy.
    #[serde(default)]
    pub home_region: Option<String>,
    /// Methods whose calls are hedged upstream.
    #[serde(default)]
    pub hedge: Vec<String>,
    /// Certificates.
    pub tls: ProxyTlsConfig,
    /// The upstream regions and their servers.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
    /// Upstream servers registered in etcd, followed live (besides the `[[region]]` lists).
    #[cfg(feature = "etcd")]
    #[serde(default)]
    pub etcd: Option<crate::region::EtcdConfig>,
    /// Without the `etcd` feature an `[etcd]` table is kept only to be refused: a proxy
    /// must not start while ignoring the registry its configuration names.
    #[cfg(not(feature = "etcd"))]
    #[serde(default)]
    pub etcd: Option<toml::Table>,
}

fn default_region() -> String {
    "proxy".into()
}

/// The `[tls]` table of a [`ProxyConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// PEM certificate chain the proxy presents to clients.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM roots trusted for upstream servers.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl ProxyConfig {
    /// Parses TOML; relative file names stay relative to the current directory.
    pub fn from_toml_str(text: &str) -> Result<ProxyConfig, Error> {
        let cfg: ProxyConfig =
            toml::from_str(text).map_err(|e| Error::Config(format!("proxy configuration: {e}")))?;
        // The region part follows the region file's rules (unique, non-empty names).
        RegionMap {
            regions: cfg.regions.clone(),
        }
        .validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file; relative file names are taken from the file's directory.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<ProxyConfig, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?;
        let mut cfg = ProxyConfig::from_toml_str(&text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut cfg.tls.cert);
        fix(&mut cfg.tls.key);
        if let Some(ca) = &mut cfg.tls.ca {
            fix(ca);
        }
        Ok(cfg)
    }
}

/// One forwarded call's bookkeeping: when it reached the proxy, when the upstream call
/// started, and where its times are reported.
struct Hop<'a> {
    upstream: &'a Upstream,
    ctx: &'a CallContext,
    span: tracing::Span,
    started: Instant,
    upstream_started: Instant,
}

impl<'a> Hop<'a> {
    fn new(upstream: &'a Upstream, ctx: &'a CallContext, kind: &'static str) -> Hop<'a> {
        let now = Instant::now();
        Hop {
            upstream,
            ctx,
            span: tracing::debug_span!(
                "rpc.proxy",
                method = %ctx.method(),
                kind,
                code = field::Empty,
                proxy_us = field::Empty,
                upstream_us = field::Empty,
                server_us = field::Empty
            ),
            started: now,
            upstream_started: now,
        }
    }

    fn upstream_starts(&mut self) {
        self.upstream_started = Instant::now();
    }

    /// Records the upstream call's outcome for the TRAILERS, the span and the counters.
    fn settle<T>(
        &self,
        result: Result<(T, Option<Duration>, Metadata), Status>,
    ) -> Result<T, Status> {
        let upstream = self.upstream_started.elapsed();
        self.upstream.calls.fetch_add(1, Ordering::Relaxed);
        let (result, server_time, metadata) = match result {
            Ok((msg, server_time, metadata)) => (Ok(msg), server_time, metadata),
            Err(s) => {
                self.upstream.failed.fetch_add(1, Ordering::Relaxed);
                (Err(s), None, Metadata::new())
            }
        };
        // Passed on to the caller, so it may send even a non-idempotent call elsewhere.
        let not_run = result.as_ref().is_err_and(Status::is_known_not_run);
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| crate::wire::Code::Ok);
        self.span.record("code", field::display(code));
        let inside = self.started.elapsed().saturating_sub(upstream);
        self.span.record("proxy_us", inside.as_micros() as u64);
        self.span.record("upstream_us", upstream.as_micros() as u64);
        if let Some(t) = server_time {
            self.span.record("server_us", t.as_micros() as u64);
        }
        self.ctx.set_forwarded(Forwarded {
            server_time,
            upstream,
            metadata,
            not_run,
        });
        result
    }
}

async fn forward_unary(
    upstream: Arc<Upstream>,
    request: Bytes,
    ctx: CallContext,
) -> Result<Bytes, Status> {
    let mut hop = Hop::new(&upstream, &ctx, "unary");
    let call = upstream.call(&ctx);
    hop.upstream_starts();
    let result = call.unary_raw(request).instrument(hop.span.clone()).await;
    hop.settle(result.map(unpack))
}

fn unpack(r: crate::Response<Bytes>) -> (Bytes, Option<Duration>, Metadata) {
    let (server_time, metadata) = (r.server_time(), r.metadata().clone());
    (r.into_inner(), server_time, metadata)
}

async fn forward_server_streaming(
    upstream: Arc<Upstream>,
    request: Bytes,
    ctx: CallContext,
    sink: ResponseSink<Bytes>,
) -> Result<(), Status> {
    let mut hop = Hop::new(&upstream, &ctx, "server_streaming");
    let call = upstream.call(&ctx);
    hop.upstream_starts();
    let result = async {
        let mut responses = call.server_streaming_raw(request).await?;
        while let Some(msg) = responses.message().await? {
            sink.send(&msg).await?;
        }
        Ok(ended(&responses))
    }
    .instrument(hop.span.clone())
    .await;
    hop.settle(result)
}

/// What a stream that ended with `OK` reported.
fn ended(responses: &Streaming<Bytes>) -> ((), Option<Duration>, Metadata) {
    (
        (),
        responses.server_time(),
        responses.trailers().cloned().unwrap_or_default(),
    )
}

/// The upstream request stream: reset (never finished) if dropped before the caller's own
/// request stream ended, so an upstream handler never takes a cut-off stream for a whole one.
struct UpstreamSink(Option<RequestSink<Bytes>>);

impl UpstreamSink {
    async fn send(&mut self, msg: &Bytes) -> Result<(), Status> {
        match &mut self.0 {
            Some(s) => s.send(msg).await,
            None => Err(Status::cancelled("the request stream has ended")),
        }
    }

    fn finish(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish();
        }
    }

    fn cancel(&mut self, status: &Status) {
        if let Some(s) = self.0.take() {
            s.cancel(status);
        }
    }
}

impl Drop for UpstreamSink {
    fn drop(&mut self) {
        self.cancel(&Status::cancelled("the caller went away"));
    }
}

/// Passes the caller's request messages upstream until the caller finishes (then finishes
/// upstream). A broken caller stream cancels the upstream call and fails with its status;
/// an upstream that stops reading ends the pumping quietly (its status follows).
async fn pump_requests(
    requests: &mut RequestStream<Bytes>,
    sink: &mut UpstreamSink,
) -> Result<(), Status> {
    loop {
        match requests.message().await {
            Ok(Some(msg)) => {
                if sink.send(&msg).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => {
                sink.finish();
                return Ok(());
            }
            Err(status) => {
                sink.cancel(&status);
                return Err(status);
            }
        }
    }
}

async fn forward_client_streaming(
    upstream: Arc<Upstream>,
    mut requests: RequestStream<Bytes>,
    ctx: CallContext,
) -> Result<Bytes, Status> {
    let mut hop = Hop::new(&upstream, &ctx, "client_streaming");
    let call = upstream.call(&ctx);
    hop.upstream_starts();
    let result = async {
        let (sink, response) = call.client_streaming_raw().await?;
        let mut sink = UpstreamSink(Some(sink));
        pump_requests(&mut requests, &mut sink).await?;
        response.response().await
    }
    .instrument(hop.span.clone())
    .await;
    hop.settle(result.map(unpack))
}

async fn forward_bidi(
    upstream: Arc<Upstream>,
    mut requests: RequestStream<Bytes>,
    ctx: CallContext,
    out: ResponseSink<Bytes>,
) -> Result<(), Status> {
    let mut hop = Hop::new(&upstream, &ctx, "bidi");
    let call = upstream.call(&ctx);
    hop.upstream_starts();
    let result = async {
        let (sink, mut responses) = call.bidi_raw().await?;
        let mut sink = UpstreamSink(Some(sink));
        {
            let up = pump_requests(&mut requests, &mut sink);
            tokio::pin!(up);
            let mut up_done = false;
            let down = async {
                while let Some(msg) = responses.message().await? {
                    out.send(&msg).await?;
                }
                Ok::<_, Status>(())
            };
            tokio::pin!(down);
            loop {
                tokio::select! {
                    r = &mut up, if !up_done => {
                        r?;
                        up_done = true;
                    }
                    r = &mut down => {
                        r?;
                        break;
                    }
                }
            }
        }
        Ok(ended(&responses))
    }
    .instrument(hop.span.clone())
    .await;
    hop.settle(result)
}
