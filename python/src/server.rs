//! `NativeServer`: a Meridian server whose methods are Python callables.
//!
//! One file because it is one type: the server's lifecycle (start, rebind, stop, fork,
//! TLS reload, etcd) and the adapters that run its Python handlers share `State` and
//! its lock, and neither half is used without the other.
//!
//! Each call decodes its `Value` argument on the transport task, then runs the Python
//! callable on one of tokio's blocking threads, which attaches to the interpreter only for
//! as long as Python code runs. A slow handler therefore holds one blocking thread, never a
//! transport thread, and other calls go on. Unary handlers queue for a busy handler thread
//! for up to 1 ms before they get one of their own (see `handlers.rs`).
//!
//! Every handler call also gets a `CallContext` (see `context.rs`), which the Python
//! adapter passes on to handlers that ask for it and makes `meridian.current_context()`.
//!
//! The server's `ServerTls` is kept across rebinds; `reload_tls` rotates its certificate
//! through it (clones share the certificate in use), so connections already open keep
//! theirs and new handshakes present the new one.
//!
//! Registering a method on a running server adds it in place (`Server::add_methods`):
//! connected clients receive an updated HELLO, so region routing learns the new method
//! without a restart or a new port.
//!
//! With `etcd` endpoints the server also registers itself in etcd when it starts (and
//! again after a rebind), keeps its lease alive, refreshes its catalog there when methods
//! are added, and revokes the lease when it stops.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use meridian::{
    CallContext, Codec, Identity, Method, RequestStream, ResponseSink, Server, ServerBuilder,
    ServerTls, Status,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::context::PyCallContext;
use crate::convert::{decode, to_python, to_value};
use crate::errors::pyerr_to_status;
use crate::etcd::{self, EtcdConfig, EtcdRegistration, ServerRecord};
use crate::requests::RequestIterator;
use crate::{dev_ca, timeout_arg, wait};

/// Responses a streaming handler may run ahead of the network by.
const STREAM_AHEAD: usize = 16;

/// One registered Python method.
struct PyMethod {
    name: String,
    func: Arc<Py<PyAny>>,
    streaming: bool,
    /// Whether the client sends a stream of requests (with `streaming`: bidirectional).
    client_streaming: bool,
    idempotent: bool,
}

struct State {
    /// The process the running server belongs to: in a child made by `fork()` the
    /// parent's server (and etcd registration) is forgotten, never used or dropped.
    pid: u32,
    region: String,
    host: IpAddr,
    port: u16,
    /// Whether the port was chosen by the caller (kept across rebinds) or by the OS.
    fixed_port: bool,
    identity: Option<Identity>,
    /// The TLS settings of every bind, created on the first start (or from `tls=` files
    /// at construction). Clones share the certificate in use, so a reload through this
    /// one rotates it on the running server.
    tls: Option<ServerTls>,
    /// The certificate and key files of `tls=`, which `reload_tls` reads again.
    tls_files: Option<(String, String)>,
    /// The client CA file of `tls=` (mutual TLS), which `reload_tls` reads again too.
    client_ca_file: Option<String>,
    server_name: String,
    advertise: bool,
    methods: Vec<PyMethod>,
    running: Option<Running>,
    grace: Duration,
    etcd: Option<EtcdConfig>,
    registration: Option<EtcdRegistration>,
}

/// A Meridian server whose handlers are Python callables (used by `meridian.RPCServer`).
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct NativeServer {
    state: Mutex<State>,
}

impl NativeServer {
    /// The state, after forgetting (leaking) a server inherited through `fork()`: it is
    /// the parent's, served by the parent's runtime, and dropping it in the child would
    /// deregister the parent's socket from the epoll instance they share. The child sees
    /// a stopped server it may start again (on a new port unless the port is fixed).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if st.pid != pid {
            st.pid = pid;
            if let Some(running) = st.running.take() {
                // (Its `Serving` is dropped: the child's count of running servers, a copy
                // of the parent's, goes down.)
                std::mem::forget(running.server);
            }
            if let Some(registration) = st.registration.take() {
                // (Without etcd the type is an empty stand-in.)
                #[cfg_attr(not(feature = "etcd"), allow(clippy::forget_non_drop))]
                std::mem::forget(registration);
            }
            // The TLS settings are shared with the parent's server (the certificate in
            // use, session state), whose threads may have been inside them at the fork:
            // a server started in the child gets fresh ones (see `fresh_tls`).
            if let Some(tls) = st.tls.take() {
                std::mem::forget(tls);
            }
        }
        st
    }
}

impl Drop for NativeServer {
    fn drop(&mut self) {
        // In a forked child, forgets the parent's server instead of dropping it.
        drop(self.lock());
    }
}

#[pymethods]
impl NativeServer {
    /// A stopped server for `region` on `host:port` (port 0: any free port). With
    /// `cert_file` and `key_file` (PEM) it presents that certificate, else one issued for
    /// `localhost` by the process's development CA. With `client_ca_file` (PEM, only with
    /// a certificate) every client must present a certificate issued by one of its CAs
    /// (mutual TLS). Unreadable or unusable files raise `ValueError` here.
    /// With `etcd` (client URLs of an etcd cluster) it registers itself there under
    /// `etcd_prefix` with a lease of `etcd_ttl` seconds.
    #[new]
    #[pyo3(signature = (region, host="127.0.0.1", port=0, cert_file=None, key_file=None, server_name="localhost", advertise=true, grace=5.0, etcd=None, etcd_prefix=None, etcd_ttl=10.0, client_ca_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        region: String,
        host: &str,
        port: u16,
        cert_file: Option<String>,
        key_file: Option<String>,
        server_name: &str,
        advertise: bool,
        grace: f64,
        etcd: Option<Vec<String>>,
        etcd_prefix: Option<String>,
        etcd_ttl: f64,
        client_ca_file: Option<String>,
    ) -> PyResult<NativeServer> {
        // An IP address, or a host name resolved now (its first address).
        let host: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, 0u16))
                .ok()
                .and_then(|mut found| found.next())
                .map(|a| a.ip())
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "host must be an IP address or a name that resolves, got {host:?}"
                    ))
                })?,
        };
        let tls_files = match (cert_file, key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "certs needs both a certificate file and a key file",
                ))
            }
        };
        let (identity, tls) =
            match &tls_files {
                Some((c, k)) => {
                    let identity = Identity::from_pem_files(c, k).map_err(config_error)?;
                    let mut tls = ServerTls::new(identity.clone());
                    // Fails now, not at the first bind, when the key does not fit the
                    // certificate.
                    tls.set_identity(identity.clone()).map_err(config_error)?;
                    if let Some(ca) = &client_ca_file {
                        tls = tls
                            .require_client_certs_pem_file(ca)
                            .map_err(config_error)?;
                    }
                    (Some(identity), Some(tls))
                }
                None if client_ca_file.is_some() => return Err(PyValueError::new_err(
                    "client_ca_file (mutual TLS) needs the server's own certificate and key files",
                )),
                None => (None, None),
            };
        let grace = timeout_arg(Some(grace))?.unwrap_or_default();
        let etcd = etcd::config(etcd, etcd_prefix, Some(etcd_ttl))?;
        Ok(NativeServer {
            state: Mutex::new(State {
                pid: std::process::id(),
                region,
                host,
                port,
                fixed_port: port != 0,
                identity,
                tls,
                tls_files,
                client_ca_file,
                server_name: server_name.to_string(),
                advertise,
                methods: Vec::new(),
                running: None,
                grace,
                etcd,
                registration: None,
            }),
        })
    }

    /// Registers `func` as method `name` (a server-streaming method when `streaming`).
    /// `func(value, context)` takes the decoded argument value and returns the result
    /// value (or, when streaming, an iterator of them). With `client_streaming` it takes a
    /// `RequestIterator` of the request values instead (bidirectional with `streaming`).
    /// On a running server the method is added in place and announced to connected
    /// clients.
    #[pyo3(signature = (name, func, streaming=false, idempotent=false, client_streaming=false))]
    fn add(
        &self,
        name: String,
        func: Py<PyAny>,
        streaming: bool,
        idempotent: bool,
        client_streaming: bool,
    ) -> PyResult<()> {
        let mut st = self.lock();
        st.methods.retain(|m| m.name != name);
        let method = PyMethod {
            name,
            func: Arc::new(func),
            streaming,
            client_streaming,
            idempotent,
        };
        if let Some(server) = &st.running {
            server.add_methods(|b| register(b, &method));
            if let Some(reg) = &st.registration {
                reg.refresh_from(&server.server);
            }
        }
        st.methods.push(method);
        Ok(())
    }

    /// Binds and starts serving (or rebinds a running server with its current methods).
    /// Returns the bound `(host, port)`.
    fn start(&self, py: Python<'_>) -> PyResult<(String, u16)> {
        let old_registration = self.lock().registration.take();
        if let Some(reg) = old_registration {
            wait(py, reg.deregister())?;
        }
        let (builder, addr, tls, old, grace) = {
            let mut st = self.lock();
            let tls = match &st.tls {
                Some(tls) => tls.clone(),
                None => {
                    let tls = fresh_tls(&mut st)?;
                    st.tls = Some(tls.clone());
                    tls
                }
            };
            let mut builder = Server::builder().region(st.region.clone());
            builder = if st.advertise {
                builder.advertise_locally(st.server_name.clone())
            } else {
                builder.no_local_registry()
            };
            for m in &st.methods {
                builder = register(builder, m);
            }
            // A fixed port must be free before it can be bound again.
            let old = if st.fixed_port {
                st.running.take()
            } else {
                None
            };
            let addr = SocketAddr::new(st.host, st.port);
            (builder, addr, tls, old, st.grace)
        };
        if let Some(old) = old {
            wait(py, old.retire(grace))?;
        }
        let server = match wait(py, builder.bind(addr, tls))? {
            Ok(server) => server,
            Err(e) => {
                return Err(PyRuntimeError::new_err(format!(
                    "cannot start the server: {e}"
                )));
            }
        };
        let local = server.local_addr();
        let registration = match self.etcd_record(&server) {
            Some((config, record)) => {
                match wait(py, async move {
                    EtcdRegistration::register(&config, record).await
                })? {
                    Ok(r) => Some(r),
                    Err(e) => {
                        wait(py, retire(server, Duration::ZERO))?;
                        return Err(PyRuntimeError::new_err(format!(
                            "cannot register the server in etcd: {e}"
                        )));
                    }
                }
            }
            None => None,
        };
        let previous = {
            let mut st = self.lock();
            st.registration = registration;
            st.running.replace(Running::new(server))
        };
        if let Some(previous) = previous {
            // Already out of the registry as soon as shutdown starts; in-flight calls
            // finish within the grace period.
            crate::spawn(previous.retire(grace))?;
        }
        // The server's tasks need a driver once this call returns.
        crate::kick()?;
        Ok((local.ip().to_string(), local.port()))
    }

    /// Stops serving: leaves the in-process registry, refuses new calls (they fail saying
    /// they did not run), lets calls in flight finish and their answers reach the clients
    /// for up to `grace` seconds (default: the server's), then closes.
    #[pyo3(signature = (grace=None))]
    fn stop(&self, py: Python<'_>, grace: Option<f64>) -> PyResult<()> {
        let (server, default_grace, registration) = {
            let mut st = self.lock();
            (st.running.take(), st.grace, st.registration.take())
        };
        let grace = timeout_arg(grace)?.unwrap_or(default_grace);
        if let Some(reg) = registration {
            // Out of etcd first, so clients stop choosing the server before it closes.
            wait(py, reg.deregister())?;
        }
        if let Some(running) = server {
            wait(py, running.retire(grace))?;
        }
        Ok(())
    }

    /// Reads the certificate and key files given at construction again and presents the
    /// new certificate from the next handshake on; open connections keep theirs and stay
    /// up. Bad files raise `ValueError` and leave the certificate in use unchanged. A
    /// server without certificate files (a development certificate) raises
    /// `RuntimeError`. With mutual TLS the client CA file is read again too.
    fn reload_tls(&self, py: Python<'_>) -> PyResult<()> {
        let (tls, files, client_ca) = {
            let st = self.lock();
            (
                st.tls.clone(),
                st.tls_files.clone(),
                st.client_ca_file.clone(),
            )
        };
        let (Some(tls), Some((cert, key))) = (tls, files) else {
            return Err(PyRuntimeError::new_err(
                "reload_tls needs a server configured with certificate files (tls=ServerTLS(...))",
            ));
        };
        let identity = py.detach(|| {
            let identity = Identity::from_pem_files(&cert, &key)?;
            tls.set_identity(identity.clone())?;
            if let Some(ca) = &client_ca {
                tls.reload_client_roots_pem_file(ca)?;
            }
            Ok::<_, meridian::Error>(identity)
        });
        let identity = identity.map_err(config_error)?;
        self.lock().identity = Some(identity);
        Ok(())
    }

    /// The bound `(host, port)` while running, else `None`.
    #[getter]
    fn address(&self) -> Option<(String, u16)> {
        let st = self.lock();
        st.running
            .as_ref()
            .map(|s| (s.local_addr().ip().to_string(), s.local_addr().port()))
    }

    /// The region the server announces.
    #[getter]
    fn region(&self) -> String {
        self.lock().region.clone()
    }

    /// Names of the registered methods, in registration order.
    #[getter]
    fn methods(&self) -> Vec<String> {
        self.lock().methods.iter().map(|m| m.name.clone()).collect()
    }

    /// Calls answered so far by the running server (0 when stopped).
    #[getter]
    fn calls_total(&self) -> u64 {
        self.lock()
            .running
            .as_ref()
            .map_or(0, |s| s.stats().calls_total)
    }

    /// The running server's metrics in the Prometheus text format ("" when stopped).
    fn metrics_text(&self) -> String {
        self.lock()
            .running
            .as_ref()
            .map_or_else(String::new, |s| s.metrics_text())
    }
}

impl NativeServer {
    /// The etcd configuration and this server's record, if it registers in etcd.
    #[cfg(feature = "etcd")]
    fn etcd_record(&self, server: &Server) -> Option<(EtcdConfig, ServerRecord)> {
        let st = self.lock();
        let config = st.etcd.clone()?;
        let mut addr = server.local_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            });
        }
        let mut record = ServerRecord::for_server(server, addr, st.server_name.clone());
        if let Some(id) = &st.identity {
            record = record.certificate(id.certificate());
        }
        Some((config, record))
    }

    /// Without etcd support no server has an etcd configuration.
    #[cfg(not(feature = "etcd"))]
    fn etcd_record(&self, _server: &Server) -> Option<(EtcdConfig, ServerRecord)> {
        let config = self.lock().etcd.clone()?;
        match config {}
    }
}

/// New TLS settings for a server: from its certificate files (and client CA file) when
/// it has them, else its development certificate, issued now by the process's
/// development CA on the first start.
fn fresh_tls(st: &mut State) -> PyResult<ServerTls> {
    if let Some((cert, key)) = &st.tls_files {
        let identity = Identity::from_pem_files(cert, key).map_err(config_error)?;
        let mut tls = ServerTls::new(identity.clone());
        if let Some(ca) = &st.client_ca_file {
            tls = tls
                .require_client_certs_pem_file(ca)
                .map_err(config_error)?;
        }
        st.identity = Some(identity);
        return Ok(tls);
    }
    let identity = match &st.identity {
        Some(id) => id.clone(),
        None => dev_ca()?
            .issue_server(&["localhost"])
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
    };
    st.identity = Some(identity.clone());
    Ok(ServerTls::new(identity))
}

/// A certificate, key or CA file that cannot be used, as Python's `ValueError`.
fn config_error(e: meridian::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Registers one Python method on a server builder.
fn register(builder: ServerBuilder, m: &PyMethod) -> ServerBuilder {
    let mut method = Method::new(m.name.clone());
    if m.idempotent {
        method = method.idempotent();
    }
    let func = m.func.clone();
    if m.client_streaming && m.streaming {
        builder
            .raw()
            .bidi(method, move |requests, ctx, sink| {
                run_bidi(func.clone(), requests, ctx, sink)
            })
            .typed()
    } else if m.client_streaming {
        builder
            .raw()
            .client_streaming(method, move |requests, ctx| {
                run_client_streaming(func.clone(), requests, ctx)
            })
            .typed()
    } else if m.streaming {
        builder
            .raw()
            .server_streaming(method, move |body, ctx, sink| {
                run_streaming(func.clone(), body, ctx, sink)
            })
            .typed()
    } else {
        builder
            .raw()
            .unary(method, move |body, ctx| run_unary(func.clone(), body, ctx))
            .typed()
    }
}

/// Stops `server` gracefully ([`Server::shutdown`]): it leaves the registry (a region
/// client lets the calls it is running there finish), refuses new calls with a status that
/// says they did not run, and closes once the calls in flight are answered and their
/// answers acknowledged, or when `grace` ends.
///
/// (Waiting for the calls in flight before the shutdown, still taking new calls, let a call
/// that arrived in between be cut off by the close.)
/// Once it returns the port is free again (core waits for the socket to close).
async fn retire(server: Server, grace: Duration) {
    server.shutdown(grace).await;
}

/// A started server. While it exists it counts among the process's running servers, so
/// the runtime gets a driver as soon as a call ends (see [`crate::engine::Serving`]).
struct Running {
    server: Server,
    _serving: crate::engine::Serving,
}

impl Running {
    fn new(server: Server) -> Running {
        Running {
            server,
            _serving: crate::engine::Serving::new(),
        }
    }

    /// [`retire`]s the server; it stays counted as running until its calls are over.
    async fn retire(self, grace: Duration) {
        retire(self.server, grace).await;
    }
}

impl std::ops::Deref for Running {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

fn check_codec(ctx: &CallContext) -> Result<(), Status> {
    if ctx.codec() == Codec::Value {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "method {:?} is served by Python and takes the Value codec, not {:?}",
            ctx.method(),
            ctx.codec()
        )))
    }
}

/// Runs a unary Python handler on a blocking thread.
async fn run_unary(func: Arc<Py<PyAny>>, body: Bytes, ctx: CallContext) -> Result<Bytes, Status> {
    check_codec(&ctx)?;
    // The decoded arguments and their Python copies are held while the handler runs:
    // count both against the connection's memory budget.
    let _held = ctx.reserve_memory(meridian::Value::decoded_size_hint(&body).saturating_mul(2))?;
    let args = decode(&body)?;
    let context = PyCallContext::new(ctx.clone());
    let handlers = crate::engine::handlers()
        .map_err(|e| Status::internal(format!("no thread for the handler: {e}")))?;
    let out = handlers
        .run(move || {
            crate::attach::attach(|py| {
                let arg =
                    to_python(py, &args).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let ret = func
                    .call1(py, (arg, context))
                    .map_err(|e| pyerr_to_status(py, &e))?;
                to_value(ret.bind(py)).map_err(|e| {
                    Status::internal(format!(
                        "the handler returned a value Meridian cannot send: {e}"
                    ))
                })
            })
        })
        .await??;
    Ok(Bytes::from(out.to_bytes()))
}

/// Runs a streaming Python handler: its iterator is driven on a blocking thread and each
/// item handed to the transport through a small queue, so a slow network slows the
/// iterator down and a cancelled call closes it (its `finally` blocks run).
async fn run_streaming(
    func: Arc<Py<PyAny>>,
    body: Bytes,
    ctx: CallContext,
    sink: ResponseSink<Bytes>,
) -> Result<(), Status> {
    check_codec(&ctx)?;
    let _held = ctx.reserve_memory(meridian::Value::decoded_size_hint(&body).saturating_mul(2))?;
    let args = decode(&body)?;
    let context = PyCallContext::new(ctx.clone());
    respond_with_iterator(
        sink,
        move |py| {
            to_python(py, &args)
                .map(Bound::unbind)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        },
        func,
        context,
    )
    .await
}

/// Runs a client-streaming Python handler: it gets a `RequestIterator` over the request
/// values (blocking, with the GIL released while it waits) and returns the response.
async fn run_client_streaming(
    func: Arc<Py<PyAny>>,
    requests: RequestStream<Bytes>,
    ctx: CallContext,
) -> Result<Bytes, Status> {
    check_codec(&ctx)?;
    let requests = RequestIterator::new(requests);
    let context = PyCallContext::new(ctx.clone());
    let out = tokio::task::spawn_blocking(move || {
        crate::attach::attach(|py| {
            let ret = func
                .call1(py, (requests, context))
                .map_err(|e| pyerr_to_status(py, &e))?;
            to_value(ret.bind(py)).map_err(|e| {
                Status::internal(format!(
                    "the handler returned a value Meridian cannot send: {e}"
                ))
            })
        })
    })
    .await
    .map_err(|_| Status::internal("the handler's thread failed"))??;
    Ok(Bytes::from(out.to_bytes()))
}

/// Runs a bidirectional Python handler: a `RequestIterator` in, an iterator of responses
/// out (see [`run_streaming`]).
async fn run_bidi(
    func: Arc<Py<PyAny>>,
    requests: RequestStream<Bytes>,
    ctx: CallContext,
    sink: ResponseSink<Bytes>,
) -> Result<(), Status> {
    check_codec(&ctx)?;
    let requests = RequestIterator::new(requests);
    let context = PyCallContext::new(ctx.clone());
    respond_with_iterator(
        sink,
        move |py| {
            Py::new(py, requests)
                .map(Py::into_any)
                .map_err(|e| Status::internal(e.to_string()))
        },
        func,
        context,
    )
    .await
}

/// Calls `func(first(py), context)` on a blocking thread and sends the items of the
/// iterator it returns.
async fn respond_with_iterator(
    sink: ResponseSink<Bytes>,
    first: impl FnOnce(Python<'_>) -> Result<Py<PyAny>, Status> + Send + 'static,
    func: Arc<Py<PyAny>>,
    context: PyCallContext,
) -> Result<(), Status> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Status>>(STREAM_AHEAD);
    tokio::task::spawn_blocking(move || {
        crate::attach::attach(|py| match first(py) {
            Ok(arg) => drive_iterator(py, &func, arg, context, &tx),
            Err(status) => {
                let _ = tx.blocking_send(Err(status));
            }
        });
    });
    while let Some(item) = rx.recv().await {
        sink.send(&item?).await?;
    }
    Ok(())
}

fn drive_iterator(
    py: Python<'_>,
    func: &Py<PyAny>,
    arg: Py<PyAny>,
    context: PyCallContext,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, Status>>,
) {
    let fail = |status: Status| {
        let _ = tx.blocking_send(Err(status));
    };
    let iter = match func
        .call1(py, (arg, context))
        .and_then(|r| r.into_bound(py).try_iter())
    {
        Ok(it) => it,
        Err(e) => return fail(pyerr_to_status(py, &e)),
    };
    for item in iter.clone() {
        let item = match item {
            Ok(i) => i,
            Err(e) => return fail(pyerr_to_status(py, &e)),
        };
        let bytes = match to_value(&item) {
            Ok(v) => Bytes::from(v.to_bytes()),
            Err(e) => {
                return fail(Status::internal(format!(
                    "the handler yielded a value Meridian cannot send: {e}"
                )))
            }
        };
        let sent = py.detach(|| tx.blocking_send(Ok(bytes)).is_ok());
        if !sent {
            // The call ended (cancelled or failed): let the generator clean up.
            if let Ok(close) = iter.getattr("close") {
                let _ = close.call0();
            }
            return;
        }
    }
}
