//! The server: handlers registered by method name, served over QUIC.
//!
//! Each incoming bidirectional stream is one call and runs in its own tokio task, so a slow
//! handler never delays another call. The task reads the HEADERS, looks the method up,
//! reads the request, and runs the handler while it watches for three ways a call can end
//! early: the client cancels (its `STOP_SENDING` reaches us), the deadline the client sent
//! passes, or the handler panics. Each of those ends this call only.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian::Error> {
//! use meridian::{DevCa, Method, Server, ServerTls, Status};
//! let ca = DevCa::new()?;
//! let server = Server::builder()
//!     .region("eu-west")
//!     .unary(Method::new("add").idempotent(), |(a, b): (i64, i64), _ctx| async move {
//!         a.checked_add(b).ok_or_else(|| Status::out_of_range("overflow"))
//!     })
//!     .bind("127.0.0.1:0".parse().unwrap(), ServerTls::new(ca.issue_server(&["localhost"])?))
//!     .await?;
//! println!("serving on {}", server.local_addr());
//! server.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, field, Instrument};

use crate::codec::{Codec, DecodeLimits};
use crate::status::{Error, Status};
use crate::stream::{
    data_chunks, decode_raw, decode_typed, encode_raw, encode_typed, CatchUnwind, DecodeFn,
    EncodeFn, FramedRecv, RecvError,
};
use crate::transport::{ServerTls, TransportConfig};
use crate::wire::{
    reset, Code, FrameKind, Hello, Metadata, MethodInfo, MethodKind, ProxyTime, RequestHeaders,
    Trailers, WireError, PROTOCOL_VERSION,
};
use crate::zero_rtt;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = dyn Fn(ServerCall) -> BoxFuture<Result<Option<Bytes>, Status>> + Send + Sync;

/// Time a client gets to send the HEADERS of a stream it opened.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Response messages a streaming handler may queue ahead of the network.
const RESPONSE_QUEUE: usize = 8;

/// A method name plus its flags, given when registering a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    name: String,
    idempotent: bool,
}

impl Method {
    /// A method with this name, not idempotent.
    pub fn new(name: impl Into<String>) -> Method {
        Method {
            name: name.into(),
            idempotent: false,
        }
    }

    /// Marks the method safe to run more than once: clients may retry and hedge it and
    /// send it in 0-RTT data.
    pub fn idempotent(mut self) -> Method {
        self.idempotent = true;
        self
    }
}

impl From<&str> for Method {
    fn from(s: &str) -> Method {
        Method::new(s)
    }
}

impl From<String> for Method {
    fn from(s: String) -> Method {
        Method::new(s)
    }
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
    trailers: Mutex<Metadata>,
    forwarded: Mutex<Option<Forwarded>>,
}

/// What a proxy learned from the call it forwarded, for the TRAILERS it writes back.
#[derive(Debug, Default)]
pub(crate) struct Forwarded {
    /// The server's reported time.
    pub(crate) server_time: Option<Duration>,
    /// The forwarded call's time as the proxy measured it.
    pub(crate) upstream: Duration,
    /// The server's trailing metadata (on success; a failure's travels in its status).
    pub(crate) metadata: Metadata,
    /// The forwarded call provably never ran anywhere (and the proxy ran nothing else).
    pub(crate) not_run: bool,
}

/// What a handler knows about its call: method, metadata, deadline, peer, cancellation.
#[derive(Debug, Clone)]
pub struct CallContext {
    method: Arc<str>,
    metadata: Arc<Metadata>,
    deadline: Option<Instant>,
    peer: SocketAddr,
    codec: Codec,
    idempotent: bool,
    routing_key: Option<Bytes>,
    early_data: bool,
    confirmed: watch::Receiver<bool>,
    state: Arc<CancelState>,
}

impl CallContext {
    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Metadata the client sent.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// When the caller gives up, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The codec of this call's messages.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether the caller marked this call idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Whether the call arrived in 0-RTT data. Such a call may be a replay; Meridian runs
    /// it early only if the method is idempotent.
    pub fn is_early_data(&self) -> bool {
        self.early_data
    }

    /// Whether this call cannot be a replay: it came in 1-RTT data (which only the live
    /// client can produce), or the connection's handshake completed before it ran.
    pub fn is_handshake_confirmed(&self) -> bool {
        !self.early_data || *self.confirmed.borrow()
    }

    /// Whether the call was cancelled (by the client, or by its deadline).
    ///
    /// The handler's future is dropped when that happens; this flag and
    /// [`CallContext::cancelled`] serve work the handler spawned elsewhere.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Acquire)
    }

    /// Resolves when the call is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.state.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Adds trailing metadata to the response.
    pub fn set_trailer(&self, key: impl Into<String>, value: impl Into<Bytes>) {
        if let Ok(mut t) = self.state.trailers.lock() {
            t.insert(key, value);
        }
    }

    /// The routing key the client set, if any.
    pub fn routing_key(&self) -> Option<&Bytes> {
        self.routing_key.as_ref()
    }

    /// Records what a forwarded call reported (used by the proxy).
    pub(crate) fn set_forwarded(&self, f: Forwarded) {
        if let Ok(mut slot) = self.state.forwarded.lock() {
            *slot = Some(f);
        }
    }

    fn take_forwarded(&self) -> Option<Forwarded> {
        self.state.forwarded.lock().ok()?.take()
    }

    fn cancel(&self) {
        self.state.cancelled.store(true, Ordering::Release);
        self.state.notify.notify_waiters();
    }

    fn take_trailers(&self) -> Metadata {
        self.state
            .trailers
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

/// Messages a client streams to a handler (client-streaming and bidirectional calls).
pub struct RequestStream<T> {
    recv: FramedRecv,
    codec: Codec,
    limits: DecodeLimits,
    decode: DecodeFn<T>,
    done: bool,
}

impl<T> std::fmt::Debug for RequestStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("done", &self.done)
            .finish()
    }
}

impl<T> RequestStream<T> {
    /// The next message, `Ok(None)` once the client has finished sending.
    ///
    /// An error means the client cancelled, broke a limit or sent an undecodable message;
    /// returning it from the handler ends the call with that status.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        if self.done {
            return Ok(None);
        }
        match self.recv.next_frame().await {
            Ok(Some(f)) if f.kind == FrameKind::Data => {
                (self.decode)(self.codec, f.payload, &self.limits).map(Some)
            }
            Ok(Some(f)) => Err(Status::invalid_argument(format!(
                "unexpected {} frame in a request",
                f.kind
            ))),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e.to_status())
            }
        }
    }
}

/// Where a streaming handler sends its responses. Sending waits while the client is slow
/// to read (backpressure); it fails once the call has ended.
pub struct ResponseSink<T> {
    tx: mpsc::Sender<Bytes>,
    codec: Codec,
    max: usize,
    encode: EncodeFn<T>,
}

impl<T> std::fmt::Debug for ResponseSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSink").finish_non_exhaustive()
    }
}

impl<T> ResponseSink<T> {
    /// Sends one response message.
    pub async fn send(&self, msg: &T) -> Result<(), Status> {
        let bytes = (self.encode)(self.codec, msg, self.max)?;
        self.tx
            .send(bytes)
            .await
            .map_err(|_| Status::cancelled("the call has ended"))
    }
}

/// Everything a type-erased handler receives.
pub(crate) struct ServerCall {
    ctx: CallContext,
    body: RequestBody,
    sink: Option<mpsc::Sender<Bytes>>,
    limits: DecodeLimits,
    max_message: usize,
}

enum RequestBody {
    One(Bytes),
    Stream(FramedRecv),
}

impl ServerCall {
    fn one(&mut self) -> Bytes {
        match std::mem::replace(&mut self.body, RequestBody::One(Bytes::new())) {
            RequestBody::One(b) => b,
            RequestBody::Stream(_) => Bytes::new(),
        }
    }

    fn stream<T>(&mut self, decode: DecodeFn<T>) -> Result<RequestStream<T>, Status> {
        match std::mem::replace(&mut self.body, RequestBody::One(Bytes::new())) {
            RequestBody::Stream(recv) => Ok(RequestStream {
                recv,
                codec: self.ctx.codec,
                limits: self.limits,
                decode,
                done: false,
            }),
            RequestBody::One(_) => Err(Status::internal("request stream already taken")),
        }
    }

    fn sink<T>(&mut self, encode: EncodeFn<T>) -> Result<ResponseSink<T>, Status> {
        let tx = self
            .sink
            .take()
            .ok_or_else(|| Status::internal("response sink already taken"))?;
        Ok(ResponseSink {
            tx,
            codec: self.ctx.codec,
            max: self.max_message,
            encode,
        })
    }
}

struct MethodEntry {
    info: MethodInfo,
    handler: Arc<Handler>,
}

/// Serves methods the server has no handler of its own for (the proxy): `resolve` tells
/// a method's kind and flags, and the handler registered for that kind runs the call.
struct Fallback {
    resolve: Box<dyn Fn(&str) -> MethodInfo + Send + Sync>,
    handlers: HashMap<MethodKind, Arc<Handler>>,
}

/// Builds a [`Server`]: region, identity, limits and the handlers.
pub struct ServerBuilder {
    methods: HashMap<String, MethodEntry>,
    region: String,
    server_id: Option<String>,
    transport: TransportConfig,
    advertise: Option<String>,
    fallback: Option<Arc<Fallback>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.methods.keys().collect();
        names.sort();
        f.debug_struct("ServerBuilder")
            .field("region", &self.region)
            .field("methods", &names)
            .finish()
    }
}

fn typed_encode<T: Serialize>(c: Codec, m: &T, max: usize) -> Result<Bytes, Status> {
    encode_typed(c, m, max)
}

fn typed_decode<T: DeserializeOwned>(c: Codec, b: Bytes, l: &DecodeLimits) -> Result<T, Status> {
    decode_typed(c, b, l)
}

impl ServerBuilder {
    /// Sets the region this server announces in its HELLO. Default `"default"`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Sets the server id announced in the HELLO. Default: the bound address.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }

    /// Lists the server in the in-process [`LocalRegistry`](crate::region::LocalRegistry)
    /// under `server_name` (the name its certificate carries), so region clients of this
    /// process find it with no configuration. On by default, as `localhost`.
    pub fn advertise_locally(mut self, server_name: impl Into<String>) -> Self {
        self.advertise = Some(server_name.into());
        self
    }

    /// Keeps the server out of the in-process registry.
    pub fn no_local_registry(mut self) -> Self {
        self.advertise = None;
        self
    }

    /// Sets transport limits and timers.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    fn add(mut self, method: Method, kind: MethodKind, handler: Arc<Handler>) -> Self {
        let info = MethodInfo {
            name: method.name.clone(),
            kind,
            idempotent: method.idempotent,
        };
        self.methods
            .insert(method.name, MethodEntry { info, handler });
        self
    }

    /// Registers a unary handler with typed (serde) request and response.
    ///
    /// The handler also serves calls made with the `Value` codec (from Python or C):
    /// the request `Value` is deserialized into `Req`, so `(i64, i64)` accepts `[10, 5]`.
    pub fn unary<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        self.unary_with(method, f, typed_decode::<Req>, typed_encode::<Resp>)
    }

    /// Registers a unary handler on raw bytes (bring your own serialization).
    pub fn unary_raw<F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        F: Fn(Bytes, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        self.unary_with(method, f, decode_raw, encode_raw)
    }

    fn unary_with<Req, Resp, F, Fut>(
        self,
        method: impl Into<Method>,
        f: F,
        decode: DecodeFn<Req>,
        encode: EncodeFn<Resp>,
    ) -> Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Arc<Handler> = Arc::new(move |mut call: ServerCall| {
            let f = f.clone();
            Box::pin(async move {
                let codec = call.ctx.codec;
                let req = decode(codec, call.one(), &call.limits)?;
                let resp = f(req, call.ctx).await?;
                encode(codec, &resp, call.max_message).map(Some)
            })
        });
        self.add(method.into(), MethodKind::Unary, handler)
    }

    /// Registers a server-streaming handler: one typed request, responses sent on a sink.
    pub fn server_streaming<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.server_streaming_with(method, f, typed_decode::<Req>, typed_encode::<Resp>)
    }

    /// Registers a server-streaming handler on raw bytes.
    pub fn server_streaming_raw<F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        F: Fn(Bytes, CallContext, ResponseSink<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.server_streaming_with(method, f, decode_raw, encode_raw)
    }

    fn server_streaming_with<Req, Resp, F, Fut>(
        self,
        method: impl Into<Method>,
        f: F,
        decode: DecodeFn<Req>,
        encode: EncodeFn<Resp>,
    ) -> Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Arc<Handler> = Arc::new(move |mut call: ServerCall| {
            let f = f.clone();
            Box::pin(async move {
                let req = decode(call.ctx.codec, call.one(), &call.limits)?;
                let sink = call.sink(encode)?;
                f(req, call.ctx, sink).await.map(|()| None)
            })
        });
        self.add(method.into(), MethodKind::ServerStreaming, handler)
    }

    /// Registers a client-streaming handler: a stream of typed requests, one response.
    pub fn client_streaming<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(RequestStream<Req>, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        self.client_streaming_with(method, f, typed_decode::<Req>, typed_encode::<Resp>)
    }

    /// Registers a client-streaming handler on raw bytes.
    pub fn client_streaming_raw<F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        F: Fn(RequestStream<Bytes>, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        self.client_streaming_with(method, f, decode_raw, encode_raw)
    }

    fn client_streaming_with<Req, Resp, F, Fut>(
        self,
        method: impl Into<Method>,
        f: F,
        decode: DecodeFn<Req>,
        encode: EncodeFn<Resp>,
    ) -> Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(RequestStream<Req>, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Arc<Handler> = Arc::new(move |mut call: ServerCall| {
            let f = f.clone();
            Box::pin(async move {
                let codec = call.ctx.codec;
                let requests = call.stream(decode)?;
                let resp = f(requests, call.ctx).await?;
                encode(codec, &resp, call.max_message).map(Some)
            })
        });
        self.add(method.into(), MethodKind::ClientStreaming, handler)
    }

    /// Registers a bidirectional-streaming handler with typed messages.
    pub fn bidi<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(RequestStream<Req>, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.bidi_with(method, f, typed_decode::<Req>, typed_encode::<Resp>)
    }

    /// Registers a bidirectional-streaming handler on raw bytes.
    pub fn bidi_raw<F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        F: Fn(RequestStream<Bytes>, CallContext, ResponseSink<Bytes>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.bidi_with(method, f, decode_raw, encode_raw)
    }

    fn bidi_with<Req, Resp, F, Fut>(
        self,
        method: impl Into<Method>,
        f: F,
        decode: DecodeFn<Req>,
        encode: EncodeFn<Resp>,
    ) -> Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(RequestStream<Req>, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Arc<Handler> = Arc::new(move |mut call: ServerCall| {
            let f = f.clone();
            Box::pin(async move {
                let requests = call.stream(decode)?;
                let sink = call.sink(encode)?;
                f(requests, call.ctx, sink).await.map(|()| None)
            })
        });
        self.add(method.into(), MethodKind::Bidi, handler)
    }

    /// Runs calls to methods without a handler of their own through `templates`: `resolve`
    /// gives each such method's kind and flags, and the handler `templates` registered for
    /// that kind (under any name) serves it. Used by the proxy.
    pub(crate) fn fallback(
        mut self,
        resolve: impl Fn(&str) -> MethodInfo + Send + Sync + 'static,
        templates: ServerBuilder,
    ) -> Self {
        let handlers = templates
            .methods
            .into_values()
            .map(|e| (e.info.kind, e.handler))
            .collect();
        self.fallback = Some(Arc::new(Fallback {
            resolve: Box::new(resolve),
            handlers,
        }));
        self
    }

    /// Binds `addr` and starts serving in the background on the current tokio runtime.
    pub async fn bind(self, addr: SocketAddr, tls: ServerTls) -> Result<Server, Error> {
        let quinn_cfg = tls.to_quinn(&self.transport)?;
        let endpoint = quinn::Endpoint::server(quinn_cfg, addr).map_err(|source| Error::Io {
            context: format!("cannot bind {addr}"),
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| Error::Io {
            context: "cannot read the bound address".into(),
            source,
        })?;
        let methods: HashMap<String, Arc<MethodEntry>> = self
            .methods
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let shared = Arc::new(Shared {
            server_id: self.server_id.unwrap_or_else(|| local_addr.to_string()),
            region: self.region,
            catalog: watch::channel(Arc::new(Vec::new())).0,
            methods: std::sync::RwLock::new(methods),
            fallback: self.fallback,
            extra_catalog: Mutex::new(Vec::new()),
            transport: self.transport,
            client_auth: tls.requires_client_certs(),
            shutting_down: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            calls_total: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
        });
        shared.publish_catalog();
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        let registration = self.advertise.map(|name| {
            let mut addr = local_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                });
            }
            crate::region::LocalRegistry::global().register(
                &shared.region,
                crate::region::ServerEndpoint::new(addr, name),
                tls.trust_anchor(),
            )
        });
        Ok(Server {
            endpoint,
            local_addr,
            shared,
            accept,
            registration,
        })
    }
}

struct Shared {
    server_id: String,
    region: String,
    /// The catalog announced in HELLO frames; connections follow it and send an update
    /// when it changes.
    catalog: watch::Sender<Arc<Vec<MethodInfo>>>,
    methods: std::sync::RwLock<HashMap<String, Arc<MethodEntry>>>,
    fallback: Option<Arc<Fallback>>,
    /// Methods announced beside the server's own (the proxy's upstream catalog).
    extra_catalog: Mutex<Vec<MethodInfo>>,
    transport: TransportConfig,
    client_auth: bool,
    shutting_down: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
    calls_total: AtomicU64,
    calls_failed: AtomicU64,
}

impl Shared {
    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            server_id: self.server_id.clone(),
            region: self.region.clone(),
            load: self.inflight.load(Ordering::Relaxed) as u64,
            methods: self.catalog.borrow().as_ref().clone(),
        }
    }

    fn method(&self, name: &str) -> Option<Arc<MethodEntry>> {
        if let Some(e) = self.methods.read().ok()?.get(name) {
            return Some(e.clone());
        }
        let fallback = self.fallback.as_ref()?;
        let info = (fallback.resolve)(name);
        let handler = fallback.handlers.get(&info.kind)?.clone();
        Some(Arc::new(MethodEntry { info, handler }))
    }

    /// Rebuilds the catalog from the method table and tells every connection.
    fn publish_catalog(&self) {
        let mut catalog: Vec<MethodInfo> = match self.methods.read() {
            Ok(m) => m.values().map(|e| e.info.clone()).collect(),
            Err(_) => return,
        };
        if let Ok(extra) = self.extra_catalog.lock() {
            for m in extra.iter() {
                if !catalog.iter().any(|c| c.name == m.name) {
                    catalog.push(m.clone());
                }
            }
        }
        catalog.sort_by(|a, b| a.name.cmp(&b.name));
        if **self.catalog.borrow() != catalog {
            self.catalog.send_replace(Arc::new(catalog));
        }
    }
}

/// Sets the methods a server announces beside its own handlers (the proxy announces what
/// its upstream servers serve).
pub(crate) struct CatalogHandle(std::sync::Weak<Shared>);

impl CatalogHandle {
    /// Announces `methods`; connections get an update only when the catalog changes.
    /// Returns false once the server is gone.
    pub(crate) fn set(&self, methods: Vec<MethodInfo>) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        if let Ok(mut extra) = shared.extra_catalog.lock() {
            if *extra == methods {
                return true;
            }
            *extra = methods;
        }
        shared.publish_catalog();
        true
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Calls started since the server began.
    pub calls_total: u64,
    /// Calls that ended with a status other than `OK`.
    pub calls_failed: u64,
    /// Calls running now.
    pub in_flight: usize,
}

/// A running server. Dropping it closes the endpoint at once; [`Server::shutdown`] lets
/// in-flight calls finish first.
pub struct Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    registration: Option<crate::region::Registration>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("region", &self.shared.region)
            .finish()
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            methods: HashMap::new(),
            region: "default".into(),
            server_id: None,
            transport: TransportConfig::default(),
            advertise: Some("localhost".into()),
            fallback: None,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The region announced in the HELLO.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// The method catalog announced in the HELLO.
    pub fn catalog(&self) -> Vec<MethodInfo> {
        self.shared.catalog.borrow().as_ref().clone()
    }

    /// Adds (or replaces) methods while the server runs: `f` registers them on an empty
    /// builder, exactly as before binding (its other settings are ignored). Connected
    /// clients receive an updated HELLO, so region routing learns the new methods.
    ///
    /// ```no_run
    /// # fn demo(server: &meridian::Server) {
    /// server.add_methods(|b| b.unary("double", |x: i64, _| async move { Ok(x * 2) }));
    /// # }
    /// ```
    pub fn add_methods(&self, f: impl FnOnce(ServerBuilder) -> ServerBuilder) {
        let added = f(Server::builder()).methods;
        if let Ok(mut methods) = self.shared.methods.write() {
            for (name, entry) in added {
                methods.insert(name, Arc::new(entry));
            }
        }
        self.shared.publish_catalog();
    }

    /// Removes a method while the server runs; calls already running finish, new ones get
    /// `UNIMPLEMENTED`. Returns whether the method existed.
    pub fn remove_method(&self, name: &str) -> bool {
        let removed = self
            .shared
            .methods
            .write()
            .map(|mut m| m.remove(name).is_some())
            .unwrap_or(false);
        if removed {
            self.shared.publish_catalog();
        }
        removed
    }

    /// A handle that sets the extra catalog from a background task, for as long as the
    /// server runs.
    pub(crate) fn catalog_handle(&self) -> CatalogHandle {
        CatalogHandle(Arc::downgrade(&self.shared))
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            calls_total: self.shared.calls_total.load(Ordering::Relaxed),
            calls_failed: self.shared.calls_failed.load(Ordering::Relaxed),
            in_flight: self.shared.inflight.load(Ordering::Relaxed),
        }
    }

    /// Stops taking new calls (they are refused with a code that tells clients nothing
    /// ran, so they may retry elsewhere), waits up to `grace` for calls in flight, then
    /// closes every connection.
    pub async fn shutdown(mut self, grace: Duration) {
        // Leave the registry first so local region clients stop choosing this server.
        self.registration = None;
        self.shared.shutting_down.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.inflight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                debug!(
                    in_flight = self.shared.inflight.load(Ordering::Relaxed),
                    "grace period over, closing with calls in flight"
                );
                break;
            }
        }
        self.endpoint
            .close(reset::SHUTDOWN.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        self.endpoint
            .close(reset::SHUTDOWN.into(), b"server dropped");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.shutting_down.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    // The connection is usable before its handshake completes, so calls that came in
    // 0-RTT data are read at once; `confirmed` tells which of them may run (see serve_call).
    let Some((conn, handshake)) = zero_rtt::accept(incoming).await else {
        debug!(%remote, "connection refused before its handshake");
        return;
    };
    let (confirmed_tx, confirmed) = watch::channel(false);
    {
        let conn = conn.clone();
        let limit = shared.transport.handshake_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(limit, handshake).await {
                Ok(true) => {
                    let _ = confirmed_tx.send(true);
                }
                Ok(false) => debug!(%remote, "handshake failed"),
                Err(_) => {
                    debug!(%remote, "handshake timed out");
                    conn.close(reset::PROTOCOL_ERROR.into(), b"handshake timed out");
                }
            }
        });
    }
    // The HELLO travels on our first unidirectional stream, kept open for updates. It is
    // written by its own task so calls are served even if the client is slow to grant
    // unidirectional stream credit.
    {
        let conn = conn.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut catalog = shared.catalog.subscribe();
            let Ok(mut s) = conn.open_uni().await else {
                return;
            };
            loop {
                catalog.borrow_and_update();
                let frame = shared.hello().to_frame();
                if s.write_all(&frame).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = conn.closed() => return,
                    changed = catalog.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    loop {
        match conn.accept_bi().await {
            Ok((mut send, mut recv)) => {
                if shared.shutting_down.load(Ordering::Acquire) {
                    let _ = send.reset(reset::REFUSED.into());
                    let _ = recv.stop(reset::REFUSED.into());
                    continue;
                }
                tokio::spawn(serve_call(
                    shared.clone(),
                    remote,
                    confirmed.clone(),
                    send,
                    recv,
                ));
            }
            Err(e) => {
                debug!(%remote, reason = %e, "connection ended");
                return;
            }
        }
    }
}

struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Writes TRAILERS (after an optional response message) and finishes the stream.
async fn finish_call(send: &mut quinn::SendStream, reply: Option<Bytes>, trailers: Trailers) {
    let mut tail = BytesMut::with_capacity(32 + trailers.message.len());
    trailers.put_frame(&mut tail);
    let result = match reply {
        Some(msg) => {
            let [hdr, payload] = data_chunks(msg);
            send.write_all_chunks(&mut [hdr, payload, tail.freeze()])
                .await
        }
        None => send.write_all(&tail).await,
    };
    if result.is_ok() {
        let _ = send.finish();
    }
}

fn trailers_for(status: Status, server_time: Duration) -> Trailers {
    // A handler's status never claims "not run": the handler did run, whatever the
    // status it passes on says about some other call. Only a proxy can vouch for that.
    let (code, message, metadata) = status.into_parts();
    Trailers {
        code,
        message,
        metadata,
        server_time: Some(server_time),
        proxy: None,
        not_run: false,
    }
}

enum Outcome {
    Reply(Result<Option<Bytes>, Status>),
    Cancelled(u64),
    Lost,
}

async fn serve_call(
    shared: Arc<Shared>,
    peer: SocketAddr,
    confirmed: watch::Receiver<bool>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let started = Instant::now();
    let early = zero_rtt::is_early(&recv);
    let limits = shared.transport.wire;
    let mut rx = FramedRecv::new(recv, limits);

    let headers = match tokio::time::timeout(HEADERS_TIMEOUT, rx.next_frame()).await {
        Ok(Ok(Some(f))) if f.kind == FrameKind::Headers => {
            match RequestHeaders::decode(&f.payload, &limits) {
                Ok(h) => h,
                Err(e) => {
                    let status = match e {
                        WireError::TooLarge { .. } => {
                            Status::resource_exhausted(format!("HEADERS: {e}"))
                        }
                        _ => Status::invalid_argument(format!("bad HEADERS: {e}")),
                    };
                    rx.stop(reset::PROTOCOL_ERROR);
                    finish_call(&mut send, None, trailers_for(status, started.elapsed())).await;
                    return;
                }
            }
        }
        Ok(Ok(Some(f))) => {
            let status =
                Status::invalid_argument(format!("a call must start with HEADERS, got {}", f.kind));
            rx.stop(reset::PROTOCOL_ERROR);
            finish_call(&mut send, None, trailers_for(status, started.elapsed())).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            rx.stop(reset::PROTOCOL_ERROR);
            if !matches!(e, RecvError::Lost(_) | RecvError::Reset(_)) {
                finish_call(
                    &mut send,
                    None,
                    trailers_for(e.to_status(), started.elapsed()),
                )
                .await;
            }
            return;
        }
        Err(_) => {
            rx.stop(reset::PROTOCOL_ERROR);
            let _ = send.reset(reset::PROTOCOL_ERROR.into());
            return;
        }
    };

    shared.inflight.fetch_add(1, Ordering::AcqRel);
    shared.calls_total.fetch_add(1, Ordering::Relaxed);
    let _inflight = InflightGuard(shared.clone());
    let span = tracing::debug_span!(
        "rpc.server",
        method = %headers.method,
        code = field::Empty,
        duration_us = field::Empty
    );
    let early = EarlyData { early, confirmed };
    let code = run_call(&shared, peer, early, headers, rx, &mut send, started)
        .instrument(span.clone())
        .await;
    if code != Code::Ok {
        shared.calls_failed.fetch_add(1, Ordering::Relaxed);
    }
    span.record("code", field::display(code));
    span.record("duration_us", started.elapsed().as_micros() as u64);
}

/// Whether a call arrived in 0-RTT data, and the connection's handshake state.
struct EarlyData {
    early: bool,
    confirmed: watch::Receiver<bool>,
}

async fn run_call(
    shared: &Shared,
    peer: SocketAddr,
    mut early: EarlyData,
    headers: RequestHeaders,
    mut rx: FramedRecv,
    send: &mut quinn::SendStream,
    started: Instant,
) -> Code {
    let Some(entry) = shared.method(&headers.method) else {
        rx.stop(reset::NO_ERROR);
        let status = Status::unimplemented(format!("unknown method {:?}", headers.method));
        finish_call(send, None, trailers_for(status, started.elapsed())).await;
        return Code::Unimplemented;
    };
    let deadline = headers.timeout.map(|t| started + t);
    let wire_limits = shared.transport.wire;

    // Replay safety: a call that came in 0-RTT data may be a replayed first flight. Only
    // methods this server declares idempotent may run before the handshake completes
    // (the client's own flag does not count: a replay could set it), and none at all when
    // client certificates are required, since those are checked at handshake end.
    if early.early && (!entry.info.idempotent || shared.client_auth) {
        let wait = early.confirmed.wait_for(|c| *c);
        match tokio::time::timeout(shared.transport.handshake_timeout, wait).await {
            Ok(Ok(_)) => {}
            _ => {
                rx.stop(reset::REFUSED);
                let _ = send.reset(reset::REFUSED.into());
                return Code::Unavailable;
            }
        }
    }

    // Unary and server-streaming calls carry exactly one request message; read it here so
    // the handler gets it whole.
    let streaming_request = matches!(
        entry.info.kind,
        MethodKind::ClientStreaming | MethodKind::Bidi
    );
    let body = if streaming_request {
        RequestBody::Stream(rx)
    } else {
        let read = read_single(&mut rx);
        let read = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), read)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
            None => read.await,
        };
        match read {
            Ok(b) => RequestBody::One(b),
            Err(status) => {
                let code = status.code();
                rx.stop(crate::stream::reset_for_status(&status));
                finish_call(send, None, trailers_for(status, started.elapsed())).await;
                return code;
            }
        }
    };

    let streaming_response = matches!(
        entry.info.kind,
        MethodKind::ServerStreaming | MethodKind::Bidi
    );
    let (sink_tx, mut sink_rx) = if streaming_response {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let ctx = CallContext {
        method: Arc::from(headers.method.as_str()),
        metadata: Arc::new(headers.metadata),
        deadline,
        peer,
        codec: headers.codec,
        idempotent: headers.idempotent,
        routing_key: headers.routing_key,
        early_data: early.early,
        confirmed: early.confirmed,
        state: Arc::new(CancelState::default()),
    };
    let call = ServerCall {
        ctx: ctx.clone(),
        body,
        sink: sink_tx,
        limits: shared.transport.value,
        max_message: wire_limits.max_message_size,
    };
    let mut handler = CatchUnwind((entry.handler)(call));
    // Fast path: most unary handlers finish on their first poll, and then there is no
    // cancellation or deadline to watch (watching costs a registration in the connection).
    let first = if sink_rx.is_none() {
        std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut handler).poll(cx))).await
    } else {
        std::task::Poll::Pending
    };
    let outcome = match first {
        std::task::Poll::Ready(r) => Outcome::Reply(r.unwrap_or_else(|panic| {
            tracing::error!(method = %ctx.method, %panic, "handler panicked");
            Err(Status::internal("the handler panicked"))
        })),
        std::task::Poll::Pending => {
            watch_call(&mut handler, send, &mut sink_rx, deadline, &ctx).await
        }
    };
    // Anything still running for this call stops here.
    if !matches!(outcome, Outcome::Reply(Ok(_))) {
        ctx.cancel();
    }
    drop(handler);
    match outcome {
        Outcome::Reply(r) => {
            let (reply, status) = match r {
                Ok(reply) => (reply, Status::new(Code::Ok, "")),
                Err(s) => (None, s),
            };
            let code = status.code();
            let elapsed = started.elapsed();
            let mut trailers = trailers_for(status, elapsed);
            let extra = ctx.take_trailers();
            if !extra.is_empty() && trailers.metadata.is_empty() {
                trailers.metadata = extra;
            }
            if let Some(f) = ctx.take_forwarded() {
                if trailers.metadata.is_empty() {
                    trailers.metadata = f.metadata;
                }
                trailers.server_time = f.server_time;
                trailers.not_run = f.not_run && code != Code::Ok;
                trailers.proxy = Some(ProxyTime {
                    inside: elapsed.saturating_sub(f.upstream),
                    upstream: f.upstream,
                });
            }
            finish_call(send, reply, trailers).await;
            code
        }
        Outcome::Cancelled(code) => {
            let _ = send.reset(code.try_into().unwrap_or(reset::CANCELLED).into());
            crate::stream::status_for_reset(code).code()
        }
        Outcome::Lost => Code::Unavailable,
    }
}

/// Runs a handler that did not finish at once, watching for the client's cancellation and
/// the deadline, and forwarding streamed responses as they come.
async fn watch_call(
    handler: &mut CatchUnwind<BoxFuture<Result<Option<Bytes>, Status>>>,
    send: &mut quinn::SendStream,
    sink_rx: &mut Option<mpsc::Receiver<Bytes>>,
    deadline: Option<Instant>,
    ctx: &CallContext,
) -> Outcome {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let deadline_sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_sleep);

    let mut finished: Option<Result<Option<Bytes>, Status>> = None;
    loop {
        tokio::select! {
            biased;
            r = &mut stopped => {
                break match r {
                    Ok(Some(code)) => Outcome::Cancelled(code.into_inner()),
                    _ => Outcome::Lost,
                };
            }
            _ = &mut deadline_sleep => {
                break Outcome::Reply(Err(Status::deadline_exceeded("deadline exceeded")));
            }
            msg = next_response(sink_rx) => match msg {
                Some(bytes) => {
                    let [hdr, payload] = data_chunks(bytes);
                    if send.write_all_chunks(&mut [hdr, payload]).await.is_err() {
                        break Outcome::Lost;
                    }
                }
                None => {
                    *sink_rx = None;
                    if let Some(r) = finished.take() {
                        break Outcome::Reply(r);
                    }
                }
            },
            r = &mut *handler, if finished.is_none() => {
                let r = r.unwrap_or_else(|panic| {
                    tracing::error!(method = %ctx.method, %panic, "handler panicked");
                    Err(Status::internal("the handler panicked"))
                });
                // Streamed responses still queued go out before the trailers, unless the
                // handler failed.
                if sink_rx.is_none() || r.is_err() {
                    break Outcome::Reply(r);
                }
                finished = Some(r);
            }
        }
    }
}

async fn next_response(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the one request message of a unary or server-streaming call.
async fn read_single(rx: &mut FramedRecv) -> Result<Bytes, Status> {
    let msg = match rx.next_frame().await {
        Ok(Some(f)) if f.kind == FrameKind::Data => f.payload,
        Ok(Some(f)) => {
            return Err(Status::invalid_argument(format!(
                "unexpected {} frame in a request",
                f.kind
            )))
        }
        Ok(None) => return Err(Status::invalid_argument("the request has no message")),
        Err(e) => return Err(e.to_status()),
    };
    match rx.next_frame().await {
        Ok(None) => Ok(msg),
        Ok(Some(_)) => Err(Status::invalid_argument(
            "more than one request message for a method that takes one",
        )),
        Err(e) => Err(e.to_status()),
    }
}
