//! The server handle: registering handlers, start, port, graceful stop.

use std::ffi::{c_char, c_void};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mcore::{Identity, Method, RequestStream, Server, ServerTls, Status, Value};

use super::handler::{meridian_reply, meridian_request, Handler, Input, Requests, Sink};
use crate::boundary::{
    borrow, borrow_mut, boundary, boundary_void, c_str, c_str_opt, copy_text,
    not_on_library_thread, on_library_thread, out_ptr, runtime, write_out, Fail, Rt, UserPtr,
};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// A handler callback, registered per method with `meridian_server_add_unary` or
/// `meridian_server_add_server_streaming`.
///
/// Handlers run concurrently, on the library's worker threads (a pool for blocking work,
/// so a slow handler does not hold up the transport). `user` is the pointer given at
/// registration. `request` and `reply` are borrowed: valid only until the handler returns,
/// only on its thread. A unary handler sets its answer with `meridian_reply_set_body`; a
/// streaming handler sends each message with `meridian_reply_send`.
///
/// Return `MERIDIAN_OK` (7000), or a gRPC status 7001..7016 to fail the call (with the
/// text from `meridian_reply_set_error_message`); any other number fails the call with
/// INTERNAL. Blocking library functions called from a handler return
/// `MERIDIAN_WOULD_DEADLOCK`; use `meridian_client_unary_async` to call another service.
#[allow(non_camel_case_types)]
pub type meridian_handler = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        request: *const meridian_request,
        reply: *mut meridian_reply,
    ) -> u32,
>;

pub(super) type HandlerFn =
    unsafe extern "C" fn(*mut c_void, *const meridian_request, *mut meridian_reply) -> u32;

/// One registered method.
struct Registration {
    name: String,
    payload: u32,
    kind: Kind,
    idempotent: bool,
    handler: HandlerFn,
    user: UserPtr,
}

/// Counts handlers running in C, so stop and free can wait for the last one.
#[derive(Default)]
pub(super) struct Running {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Running {
    pub(super) fn enter(self: &Arc<Self>) -> RunningGuard {
        if let Ok(mut n) = self.count.lock() {
            *n += 1;
        }
        RunningGuard(self.clone())
    }

    fn wait_idle(&self) {
        if let Ok(mut n) = self.count.lock() {
            while *n > 0 {
                match self.idle.wait(n) {
                    Ok(g) => n = g,
                    Err(_) => return,
                }
            }
        }
    }
}

pub(super) struct RunningGuard(Arc<Running>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.count.lock() {
            *n -= 1;
            if *n == 0 {
                self.0.idle.notify_all();
            }
        }
    }
}

/// A server: methods registered first, then started on an address, then stopped.
///
/// Made by `meridian_server_new`, freed by `meridian_server_free`. Registering, starting,
/// stopping and freeing must happen on one thread at a time and never inside a handler;
/// handlers themselves run concurrently on the library's threads.
#[allow(non_camel_case_types)]
pub struct meridian_server {
    region: String,
    methods: Vec<Registration>,
    /// The running server and the runtime it runs on (checked before use: fork, shutdown).
    running: Option<(Server, Rt)>,
    local_addr: Option<SocketAddr>,
    handlers: Arc<Running>,
    /// The CA file client certificates must chain to (mutual TLS), read at start.
    client_ca: Option<PathBuf>,
    /// The TLS settings the running server was bound with (clones share the certificate
    /// in use, so a reload through this one rotates it) and the files it came from.
    tls: Option<(ServerTls, PathBuf, PathBuf)>,
    /// The largest message received or sent, in bytes (`None`: the default, 4 MiB).
    max_message_bytes: Option<usize>,
}

/// Creates a server that will announce `region` (NULL: "default"). The string is copied.
/// The caller owns the server and frees it with `meridian_server_free`.
///
/// # Safety
/// `region` is NULL or NUL-terminated; `server_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_new(
    region: *const c_char,
    server_out: *mut *mut meridian_server,
) -> meridian_status {
    boundary(|| {
        out_ptr(server_out, "server_out")?;
        // SAFETY: as documented.
        let region = unsafe { c_str_opt(region, "region") }?.unwrap_or("default");
        let server = Box::into_raw(Box::new(meridian_server {
            region: region.to_owned(),
            methods: Vec::new(),
            running: None,
            local_addr: None,
            handlers: Arc::default(),
            client_ca: None,
            tls: None,
            max_message_bytes: None,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(server_out, server) };
        Ok(())
    })
}

/// The shape of a registered method's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Bidi,
}

/// # Safety
/// As the registration functions.
unsafe fn register(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
    kind: Kind,
) -> meridian_status {
    boundary(|| {
        // SAFETY: forwarded from the caller's contract.
        let (server, name) = unsafe { (borrow_mut(server, "server")?, c_str(method, "method")?) };
        let handler = handler.ok_or_else(|| Fail::null("handler"))?;
        if name.is_empty() {
            return Err(Fail::invalid("the method name is empty"));
        }
        if payload != MERIDIAN_PAYLOAD_RAW && payload != MERIDIAN_PAYLOAD_JSON {
            return Err(Fail::invalid(format!("unknown payload kind {payload}")));
        }
        if server.running.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the server is running: register methods before meridian_server_start \
                 (or after meridian_server_stop, for the next start)",
            ));
        }
        server.methods.retain(|m| m.name != name);
        server.methods.push(Registration {
            name: name.to_owned(),
            payload,
            kind,
            idempotent,
            handler,
            user: UserPtr(user),
        });
        Ok(())
    })
}

/// Registers a unary handler for `method` (replacing one registered before under that
/// name). With `MERIDIAN_PAYLOAD_JSON` the handler reads JSON text and answers JSON text,
/// and serves callers that use Meridian's `Value` codec (Rust, Python and C JSON
/// clients); with `MERIDIAN_PAYLOAD_RAW` it gets and returns bytes untouched.
/// `idempotent` declares in the catalog that the method may run more than once. `user`
/// is passed to every invocation: it must stay valid, and be safe to use from several
/// threads at once, until `meridian_server_free` returns.
///
/// # Safety
/// `server` is live; `method` is NUL-terminated; `handler` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_add_unary(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
) -> meridian_status {
    // SAFETY: forwarded; same contract.
    unsafe {
        register(
            server,
            method,
            payload,
            idempotent,
            handler,
            user,
            Kind::Unary,
        )
    }
}

/// Registers a server-streaming handler for `method`: it receives one request and sends
/// any number of messages with `meridian_reply_send` before returning. Otherwise as
/// `meridian_server_add_unary`.
///
/// # Safety
/// As `meridian_server_add_unary`.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_add_server_streaming(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
) -> meridian_status {
    // SAFETY: forwarded; same contract.
    unsafe {
        register(
            server,
            method,
            payload,
            idempotent,
            handler,
            user,
            Kind::ServerStreaming,
        )
    }
}

/// Registers a client-streaming handler for `method`: it reads the request messages with
/// `meridian_request_next` (blocking until the next one, `MERIDIAN_STREAM_END` when the
/// client closed its side) and answers once, as a unary handler does
/// (`meridian_reply_set_body`, or `meridian_reply_defer`). Otherwise as
/// `meridian_server_add_unary`; `meridian_request_body` is empty for such calls.
///
/// # Safety
/// As `meridian_server_add_unary`.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_add_client_streaming(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
) -> meridian_status {
    // SAFETY: forwarded; same contract.
    unsafe {
        register(
            server,
            method,
            payload,
            idempotent,
            handler,
            user,
            Kind::ClientStreaming,
        )
    }
}

/// Registers a bidirectional-streaming handler for `method`: it reads request messages
/// with `meridian_request_next` and sends messages with `meridian_reply_send`, in any
/// order, until it returns. Otherwise as `meridian_server_add_unary`.
///
/// # Safety
/// As `meridian_server_add_unary`.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_add_bidi(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
) -> meridian_status {
    // SAFETY: forwarded; same contract.
    unsafe {
        register(
            server,
            method,
            payload,
            idempotent,
            handler,
            user,
            Kind::Bidi,
        )
    }
}

/// Sets the largest message the server accepts or sends, in bytes: requests and
/// responses alike (raw bodies, or the encoded form of JSON values). 0 restores the
/// default, 4194304 (4 MiB). A larger request fails with `MERIDIAN_RESOURCE_EXHAUSTED`
/// at the caller, before any handler runs; a larger reply fails the call the same way.
/// Clients have a limit of their own (`meridian_client_config_set_max_message_bytes`).
/// At most 1 GiB (`MERIDIAN_INVALID_PARAMETER` above); `MERIDIAN_INVALID_STATE` once the
/// server runs.
///
/// # Safety
/// `server` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_set_max_message_bytes(
    server: *mut meridian_server,
    bytes: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let server = unsafe { borrow_mut(server, "server") }?;
        let limit = crate::boundary::max_message_bytes(bytes)?;
        if server.running.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the message size limit must be set before the server starts",
            ));
        }
        server.max_message_bytes = limit;
        Ok(())
    })
}

/// Requires every client to present a certificate chaining to a CA in the PEM file at
/// `ca_path` (mutual TLS); a client without one is refused during the handshake, before
/// any handler runs, and handlers read who called with the `meridian_request_peer_*`
/// functions. The path is copied and the file read by `meridian_server_start`
/// (`MERIDIAN_CONFIG_ERROR` there if it holds no usable certificate), and again by
/// `meridian_server_reload_tls`. `MERIDIAN_INVALID_STATE` once the server runs.
///
/// # Safety
/// `server` is live; `ca_path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_require_client_certs_pem_file(
    server: *mut meridian_server,
    ca_path: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (server, ca) = unsafe { (borrow_mut(server, "server")?, c_str(ca_path, "ca_path")?) };
        if server.running.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "client certificates must be required before the server starts",
            ));
        }
        server.client_ca = Some(PathBuf::from(ca));
        Ok(())
    })
}

/// Reads the certificate and key files given to `meridian_server_start` again and presents
/// the new certificate from the next TLS handshake on (certificate rotation); with mutual
/// TLS, the client CA file too (clients connecting afterwards need a certificate from the
/// CAs it now holds). Connections already open keep what they were made with and stay up.
///
/// Returns `MERIDIAN_CONFIG_ERROR` when a file cannot be read, holds no certificate or
/// key, or the key does not match the certificate; the certificate in use is then kept.
/// `MERIDIAN_INVALID_STATE` if the server is not running. Replace the files atomically
/// (write new files, then rename them over the old ones) so a reload never reads half a
/// file. Not blocking (file reads only); call it from one thread at a time, never
/// concurrently with `meridian_server_start`, `meridian_server_stop` or
/// `meridian_server_free` of the same server.
///
/// # Safety
/// `server` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_reload_tls(
    server: *mut meridian_server,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let server = unsafe { borrow_mut(server, "server") }?;
        let (tls, cert, key) = match (&server.running, &server.tls) {
            (Some((_, rt)), Some(t)) => {
                rt.check("server")?;
                t
            }
            _ => {
                return Err(Fail::new(
                    meridian_status::MERIDIAN_INVALID_STATE,
                    "the server is not running",
                ))
            }
        };
        let config_err =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        tls.reload_pem_files(cert, key).map_err(config_err)?;
        match &server.client_ca {
            Some(ca) => tls.reload_client_roots_pem_file(ca).map_err(config_err),
            None => Ok(()),
        }
    })
}

/// Starts serving on `addr` ("IP:port"; port 0 picks a free port, see
/// `meridian_server_port`) with the PEM certificate chain and private key at `cert_path`
/// and `key_path` (read again by `meridian_server_reload_tls`). Returns when the server
/// is listening. `MERIDIAN_CONFIG_ERROR` for unreadable or mismatched TLS files (and the
/// client CA file of `meridian_server_require_client_certs_pem_file`),
/// `MERIDIAN_UNAVAILABLE` if the address cannot be bound, `MERIDIAN_INVALID_STATE` if
/// already started. Blocking (not from a handler).
///
/// # Safety
/// `server` is live; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_start(
    server: *mut meridian_server,
    addr: *const c_char,
    cert_path: *const c_char,
    key_path: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (server, addr, cert, key) = unsafe {
            (
                borrow_mut(server, "server")?,
                c_str(addr, "addr")?,
                c_str(cert_path, "cert_path")?,
                c_str(key_path, "key_path")?,
            )
        };
        if server.running.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the server is already running",
            ));
        }
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| Fail::invalid(format!("bad address {addr:?}: {e}")))?;
        let config_err =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        let identity = Identity::from_pem_files(cert, key).map_err(config_err)?;
        let mut tls = ServerTls::new(identity.clone());
        // A key that does not fit the certificate is a CONFIG_ERROR here, not a failed bind.
        tls.set_identity(identity).map_err(config_err)?;
        if let Some(ca) = &server.client_ca {
            tls = tls.require_client_certs_pem_file(ca).map_err(config_err)?;
        }
        let mut builder = Server::builder()
            .region(server.region.clone())
            .no_local_registry();
        if let Some(bytes) = server.max_message_bytes {
            let mut transport = mcore::TransportConfig::default();
            crate::boundary::apply_max_message(&mut transport, bytes);
            builder = builder.transport(transport);
        }
        for m in &server.methods {
            let mut method = Method::new(m.name.clone());
            if m.idempotent {
                method = method.idempotent();
            }
            let h = Handler {
                f: m.handler,
                user: m.user,
                running: server.handlers.clone(),
            };
            let json = m.payload == MERIDIAN_PAYLOAD_JSON;
            builder = match (m.kind, json) {
                (Kind::Unary, false) => builder
                    .raw()
                    .unary(method, move |req: Bytes, ctx| {
                        let h = h.clone();
                        async move { h.unary(Input::Raw(req), ctx).await.map(Bytes::from) }
                    })
                    .typed(),
                (Kind::Unary, true) => builder.unary(method, move |req: Value, ctx| {
                    let h = h.clone();
                    async move {
                        let out = h.unary(Input::Json(req), ctx).await?;
                        json::to_value(&out).map_err(|f| {
                            Status::internal(format!("the handler answered {}", f.message))
                        })
                    }
                }),
                (Kind::ServerStreaming, false) => builder
                    .raw()
                    .server_streaming(method, move |req: Bytes, ctx, sink| {
                        let h = h.clone();
                        async move { h.streaming(Input::Raw(req), ctx, Sink::Raw(sink)).await }
                    })
                    .typed(),
                (Kind::ServerStreaming, true) => {
                    builder.server_streaming(method, move |req: Value, ctx, sink| {
                        let h = h.clone();
                        async move { h.streaming(Input::Json(req), ctx, Sink::Json(sink)).await }
                    })
                }
                (Kind::ClientStreaming, false) => builder
                    .raw()
                    .client_streaming(method, move |reqs: RequestStream<Bytes>, ctx| {
                        let h = h.clone();
                        let input = Input::Stream(MERIDIAN_PAYLOAD_RAW, Requests::Raw(reqs));
                        async move { h.unary(input, ctx).await.map(Bytes::from) }
                    })
                    .typed(),
                (Kind::ClientStreaming, true) => {
                    builder.client_streaming(method, move |reqs: RequestStream<Value>, ctx| {
                        let h = h.clone();
                        let input = Input::Stream(MERIDIAN_PAYLOAD_JSON, Requests::Json(reqs));
                        async move {
                            let out = h.unary(input, ctx).await?;
                            json::to_value(&out).map_err(|f| {
                                Status::internal(format!("the handler answered {}", f.message))
                            })
                        }
                    })
                }
                (Kind::Bidi, false) => builder
                    .raw()
                    .bidi(method, move |reqs: RequestStream<Bytes>, ctx, sink| {
                        let h = h.clone();
                        let input = Input::Stream(MERIDIAN_PAYLOAD_RAW, Requests::Raw(reqs));
                        async move { h.streaming(input, ctx, Sink::Raw(sink)).await }
                    })
                    .typed(),
                (Kind::Bidi, true) => {
                    builder.bidi(method, move |reqs: RequestStream<Value>, ctx, sink| {
                        let h = h.clone();
                        let input = Input::Stream(MERIDIAN_PAYLOAD_JSON, Requests::Json(reqs));
                        async move { h.streaming(input, ctx, Sink::Json(sink)).await }
                    })
                }
            };
        }
        let rt = runtime()?;
        let running = rt
            .block_on("server", builder.bind(addr, tls.clone()))?
            .map_err(|e| Fail::new(meridian_status::MERIDIAN_UNAVAILABLE, e.to_string()))?;
        server.local_addr = Some(running.local_addr());
        server.running = Some((running, rt));
        server.tls = Some((tls, PathBuf::from(cert), PathBuf::from(key)));
        Ok(())
    })
}

/// The UDP port the running server listens on (useful after binding port 0).
/// `MERIDIAN_INVALID_STATE` if the server was never started.
///
/// # Safety
/// `server` is live; `port_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_port(
    server: *const meridian_server,
    port_out: *mut u16,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let server = unsafe { borrow(server, "server") }?;
        out_ptr(port_out, "port_out")?;
        let addr = server.local_addr.ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the server was never started",
            )
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(port_out, addr.port()) };
        Ok(())
    })
}

/// The running server's metrics in the Prometheus text format (calls by method and
/// status, latency histograms, calls in flight, connections, streams, buffered bytes),
/// copied with a NUL into `buf` (`cap` bytes); `*len_out` gets the text's length without
/// the NUL. Pass `buf` NULL and `cap` 0 to learn the length first; a buffer too small
/// gets nothing and `MERIDIAN_OUT_OF_RANGE` (the text may grow between two calls: leave
/// room). `MERIDIAN_INVALID_STATE` if the server is not running.
///
/// # Safety
/// `server` is live; `len_out` is writable; `buf` is NULL or writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_metrics(
    server: *const meridian_server,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let server = unsafe { borrow(server, "server") }?;
        let (running, rt) = server.running.as_ref().ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the server is not running",
            )
        })?;
        rt.check("server")?;
        // SAFETY: as documented.
        unsafe { copy_text(&running.metrics_text(), buf, cap, len_out) }
    })
}

/// Stops the server gracefully: new calls are refused (they fail with
/// `MERIDIAN_UNAVAILABLE` and are known not to have run, so clients may retry elsewhere),
/// calls in flight get up to `grace_ms` to finish and their answers to reach the clients,
/// then connections close. Returns once no handler is running any more; after that no
/// handler starts. Stopping a server that is not running is harmless. Blocking (not from a
/// handler: `MERIDIAN_WOULD_DEADLOCK`).
///
/// # Safety
/// `server` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_stop(
    server: *mut meridian_server,
    grace_ms: u32,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let server = unsafe { borrow_mut(server, "server") }?;
        not_on_library_thread()?;
        if let Some((_, rt)) = &server.running {
            rt.check("running server")?;
        }
        if let Some((running, rt)) = server.running.take() {
            server.tls = None;
            rt.block_on(
                "server",
                running.shutdown(Duration::from_millis(u64::from(grace_ms))),
            )?;
        }
        server.handlers.wait_idle();
        Ok(())
    })
}

/// Stops the server if it runs (no grace period), waits for running handlers to return,
/// and frees it. NULL is harmless. Must not be called from a handler. In the child of a
/// `fork()`, a server started before the fork is neither stopped nor waited for: it is
/// leaked on purpose (its socket and runtime are the parent's).
///
/// # Safety
/// `server` is NULL or a server not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_server_free(server: *mut meridian_server) {
    boundary_void(|| {
        if server.is_null() {
            return;
        }
        // SAFETY: made by Box::into_raw in meridian_server_new, freed once.
        let mut server = unsafe { Box::from_raw(server) };
        if let Some((running, rt)) = server.running.take() {
            if rt.check("server").is_err() {
                // Forked (leaked) or after meridian_shutdown (dropped in its context); its
                // handler count may be the parent's: do not wait on it.
                rt.release((running, server));
                return;
            }
            if rt
                .block_on("server", running.shutdown(Duration::ZERO))
                .is_err()
            {
                return; // on a library thread: the Server's own Drop closes it
            }
        }
        if !on_library_thread() {
            server.handlers.wait_idle();
        }
    })
}
