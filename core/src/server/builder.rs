//! [`ServerBuilder`]: registering methods and binding.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::connection::accept_loop;
use super::context::CallContext;
use super::handler::ServerCall;
use super::lifecycle::Server;
use super::method::{Method, MethodMap};
use super::shared::Shared;
use super::streams::{RequestStream, ResponseSink};
use super::{BoxFuture, Handler};
use crate::call::budget::Pool;
use crate::call::{DecodeAs, EncodeAs, PayloadStyle, Raw, Typed};
use crate::codec::Codec;
use crate::status::{Error, Status};
use crate::telemetry::MethodTable;
use crate::transport::{ServerTls, TransportConfig};
use crate::wire::{MethodInfo, MethodKind};

pub(super) struct MethodEntry {
    pub(super) info: MethodInfo,
    /// `info.name`, shared: each call's context points at it instead of copying the name.
    pub(super) name: Arc<str>,
    pub(super) handler: Arc<Handler>,
    /// The method's metrics row, found on its first call (so later calls skip the lookup).
    pub(super) metrics: std::sync::OnceLock<Arc<crate::telemetry::metrics::MethodMetrics>>,
}

impl MethodEntry {
    pub(super) fn new(info: MethodInfo, handler: Arc<Handler>) -> MethodEntry {
        MethodEntry {
            name: Arc::from(info.name.as_str()),
            info,
            handler,
            metrics: std::sync::OnceLock::new(),
        }
    }
}

/// Serves methods the server has no handler of its own for (the proxy): `resolve` tells
/// a method's kind and flags, and the handler registered for that kind runs the call.
pub(super) struct Fallback {
    pub(super) resolve: Box<dyn Fn(&str) -> MethodInfo + Send + Sync>,
    pub(super) handlers: HashMap<MethodKind, Arc<Handler>>,
}

/// A unary call as a tower request ([`ServerBuilder::unary_service`]): the decoded
/// request message and the call's context (method, metadata, deadline, peer identity).
#[derive(Debug)]
pub struct UnaryCall<Req> {
    /// The request message.
    pub message: Req,
    /// The call's context.
    pub context: CallContext,
}

/// Builds a [`Server`]: region, identity, limits and the handlers.
///
/// Handlers take typed (serde) messages by default; after [`raw`](Self::raw) the ones
/// registered next take and return [`Bytes`](bytes::Bytes) (bring your own serialization), until
/// [`typed`](Self::typed). Each call kind is one method whatever the style.
///
/// ```no_run
/// # async fn demo(tls: meridian::ServerTls) -> Result<(), meridian::Error> {
/// use meridian::{Method, Server};
/// let server = Server::builder()
///     .region("eu")
///     .unary(Method::new("add").idempotent(), |(a, b): (i64, i64), _ctx| async move { Ok(a + b) })
///     .raw()
///     .unary("reverse", |bytes: bytes::Bytes, _ctx| async move {
///         Ok(bytes.iter().rev().copied().collect::<Vec<u8>>().into())
///     })
///     .bind("127.0.0.1:0".parse().unwrap(), tls)
///     .await?;
/// # Ok(()) }
/// ```
pub struct ServerBuilder<P = Typed> {
    pub(super) methods: HashMap<String, MethodEntry>,
    pub(super) region: String,
    pub(super) server_id: Option<String>,
    pub(super) transport: TransportConfig,
    pub(super) advertise: Option<String>,
    pub(super) fallback: Option<Arc<Fallback>>,
    pub(super) access_log: bool,
    pub(super) interceptors: Vec<Arc<dyn super::Interceptor>>,
    pub(super) task_per_call: bool,
    pub(super) style: PhantomData<P>,
}

impl<P> std::fmt::Debug for ServerBuilder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.methods.keys().collect();
        names.sort();
        f.debug_struct("ServerBuilder")
            .field("region", &self.region)
            .field("methods", &names)
            .finish()
    }
}

impl<P: PayloadStyle> ServerBuilder<P> {
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

    /// Lists the server in the in-process [`LocalRegistry`](crate::discovery::LocalRegistry)
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

    /// Runs each call in a tokio task of its own instead of inside its connection's task
    /// (the default).
    ///
    /// By default a connection's calls are polled together by the task serving that
    /// connection: handlers still run concurrently, responses ready at the same moment
    /// share packets, and no task is spawned per call. The price is that the calls of one
    /// connection never run in parallel on a multi-threaded runtime, so a handler that
    /// computes for long (without `.await`) holds up the others of its connection. Turn
    /// this on for such handlers when one client sends most of the load, or move the work
    /// to `tokio::task::spawn_blocking`.
    pub fn task_per_call(mut self, on: bool) -> Self {
        self.task_per_call = on;
        self
    }

    /// Logs one line per call at `info` under the target `meridian::access`: method,
    /// status, peer, duration, whether it came in 0-RTT data, and the W3C trace id and
    /// parent span when the call carries a `traceparent`. Off by default.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Adds an interceptor at the end of the chain every call passes before its handler
    /// (see [`Interceptor`](super::Interceptor)): authorization
    /// ([`AllowNames`](super::AllowNames)), limits ([`PerCallerLimit`](super::PerCallerLimit)),
    /// audit, metadata added for handlers.
    pub fn intercept(mut self, interceptor: impl super::Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Handlers registered next take and return raw [`Bytes`](bytes::Bytes).
    pub fn raw(self) -> ServerBuilder<Raw> {
        self.with_style()
    }

    /// Handlers registered next take and return typed (serde) messages (the default).
    pub fn typed(self) -> ServerBuilder<Typed> {
        self.with_style()
    }

    fn with_style<Q>(self) -> ServerBuilder<Q> {
        ServerBuilder {
            methods: self.methods,
            region: self.region,
            server_id: self.server_id,
            transport: self.transport,
            advertise: self.advertise,
            fallback: self.fallback,
            access_log: self.access_log,
            interceptors: self.interceptors,
            task_per_call: self.task_per_call,
            style: PhantomData,
        }
    }

    fn add(mut self, method: Method, kind: MethodKind, handler: Arc<Handler>) -> Self {
        let info = MethodInfo {
            name: method.name.clone(),
            kind,
            idempotent: method.idempotent,
        };
        self.methods
            .insert(method.name, MethodEntry::new(info, handler));
        self
    }

    /// Registers a unary handler: one request, one response.
    ///
    /// A typed handler also serves calls made with the `Value` codec (from Python or C):
    /// the request `Value` is deserialized into `Req`, so `(i64, i64)` accepts `[10, 5]`.
    pub fn unary<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        P: DecodeAs<Req> + EncodeAs<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let handler = erase(f, |f, mut call: ServerCall| async move {
            let codec = call.ctx.codec;
            let typed = P::DEFAULT_CODEC != Codec::Raw;
            let (req, _held) = call.decode_single(P::decode, typed)?;
            let resp = f(req, call.ctx).await?;
            P::encode(codec, &resp, call.max_message).map(Some)
        });
        self.add(method.into(), MethodKind::Unary, handler)
    }

    /// Registers a tower [`Service`](tower_service::Service) as a unary handler, so tower's
    /// layers (concurrency limits, load shedding, rate limits, timeouts) wrap it unchanged.
    /// Each call clones the service, waits until it is ready, then calls it with the
    /// decoded request and the call's context; a service that is not ready holds the call
    /// (within its deadline), and its error is the call's status.
    ///
    /// ```
    /// use meridian::server::UnaryCall;
    /// use meridian::{Method, Server, Status};
    /// use tower::{service_fn, ServiceBuilder};
    ///
    /// let add = service_fn(|call: UnaryCall<(i64, i64)>| async move {
    ///     let (a, b) = call.message;
    ///     a.checked_add(b).ok_or_else(|| Status::out_of_range("overflow"))
    /// });
    /// // At most 4 additions at once across all callers; later calls wait their turn.
    /// let service = ServiceBuilder::new().concurrency_limit(4).service(add);
    /// let builder = Server::builder().unary_service(Method::new("add"), service);
    /// # drop(builder);
    /// ```
    pub fn unary_service<Req, Resp, S>(self, method: impl Into<Method>, service: S) -> Self
    where
        P: DecodeAs<Req> + EncodeAs<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        S: tower_service::Service<UnaryCall<Req>, Response = Resp, Error = Status>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.unary(method, move |message: Req, context: CallContext| {
            let mut service = service.clone();
            async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(UnaryCall { message, context }).await
            }
        })
    }

    /// Registers a server-streaming handler: one request, responses sent on a sink.
    pub fn server_streaming<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        P: DecodeAs<Req> + EncodeAs<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let handler = erase(f, |f, mut call: ServerCall| async move {
            let typed = P::DEFAULT_CODEC != Codec::Raw;
            let (req, _held) = call.decode_single(P::decode, typed)?;
            let sink = call.sink(P::encode)?;
            f(req, call.ctx, sink).await.map(|()| None)
        });
        self.add(method.into(), MethodKind::ServerStreaming, handler)
    }

    /// Registers a client-streaming handler: a stream of requests, one response.
    pub fn client_streaming<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        P: DecodeAs<Req> + EncodeAs<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(RequestStream<Req>, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let handler = erase(f, |f, mut call: ServerCall| async move {
            let codec = call.ctx.codec;
            let requests = call.stream(P::decode)?;
            let resp = f(requests, call.ctx).await?;
            P::encode(codec, &resp, call.max_message).map(Some)
        });
        self.add(method.into(), MethodKind::ClientStreaming, handler)
    }

    /// Registers a bidirectional-streaming handler.
    pub fn bidi<Req, Resp, F, Fut>(self, method: impl Into<Method>, f: F) -> Self
    where
        P: DecodeAs<Req> + EncodeAs<Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(RequestStream<Req>, CallContext, ResponseSink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let handler = erase(f, |f, mut call: ServerCall| async move {
            let requests = call.stream(P::decode)?;
            let sink = call.sink(P::encode)?;
            f(requests, call.ctx, sink).await.map(|()| None)
        });
        self.add(method.into(), MethodKind::Bidi, handler)
    }

    /// Serves methods without a handler of their own (a gateway's unknown-method handler):
    /// `resolve` gives each such method's kind and flags, and the handler that `templates`
    /// registered for that kind (under any name) serves the call, with the real method name
    /// in its [`CallContext`]. Without a fallback such calls get `UNIMPLEMENTED`.
    pub fn fallback(
        mut self,
        resolve: impl Fn(&str) -> MethodInfo + Send + Sync + 'static,
        templates: ServerBuilder<impl PayloadStyle>,
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
        let (endpoint, socket_closed) = crate::transport::server_endpoint(quinn_cfg, addr)
            .map_err(|source| Error::Io {
                context: format!("cannot bind {addr}"),
                source,
            })?;
        let local_addr = endpoint.local_addr().map_err(|source| Error::Io {
            context: "cannot read the bound address".into(),
            source,
        })?;
        let methods: MethodMap = self
            .methods
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let server_budget = self.transport.server_buffer_budget;
        let metric_methods = self.transport.max_metric_methods;
        let shared = Arc::new(Shared {
            server_id: self.server_id.unwrap_or_else(|| local_addr.to_string()),
            region: self.region,
            catalog: watch::channel(Arc::new(Vec::new())).0,
            methods: std::sync::RwLock::new(methods),
            fallback: self.fallback,
            extra_catalog: Mutex::new(Vec::new()),
            transport: self.transport,
            client_auth: tls.requires_client_certs(),
            task_per_call: self.task_per_call,
            shutting_down: AtomicBool::new(false),
            stopping: watch::channel(false).0,
            inflight: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            open_calls: AtomicUsize::new(0),
            idle: Notify::new(),
            connections: Mutex::new(Some(HashMap::new())),
            calls_total: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            buffers: Pool::new("server", server_budget),
            handshakes: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
            retries_sent: AtomicU64::new(0),
            early_calls: AtomicU64::new(0),
            method_metrics: MethodTable::new(metric_methods),
            access_log: self.access_log,
            interceptors: self.interceptors.into(),
            serving: AtomicBool::new(true),
            no_metadata: Arc::default(),
        });
        super::health::register(&shared);
        shared.publish_catalog();
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        tracing::info!(
            addr = %local_addr,
            region = %shared.region,
            server = %shared.server_id,
            methods = shared.catalog.borrow().len(),
            client_auth = shared.client_auth,
            "serving"
        );
        let registration = self.advertise.map(|name| {
            let mut addr = local_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                });
            }
            let tls = tls.clone();
            crate::discovery::LocalRegistry::global().register_with(
                &shared.region,
                crate::discovery::ServerEndpoint::new(addr, name),
                move || tls.end_entity(),
            )
        });
        Ok(Server {
            endpoint,
            local_addr,
            shared,
            accept,
            registration,
            socket_closed: Some(socket_closed),
        })
    }
}

/// Erases a handler: `run` serves one call with the user's handler `f`, whatever its call
/// kind and payload style, so every kind registers the same boxed function.
fn erase<F, R, Fut>(f: F, run: R) -> Arc<Handler>
where
    F: Send + Sync + 'static,
    R: Fn(Arc<F>, ServerCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Bytes>, Status>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |call: ServerCall| Box::pin(run(f.clone(), call)) as BoxFuture<_>)
}
