//! The server side: a server handle, handler callbacks per method, the request a handler
//! reads and the reply it fills, start and graceful stop.

use std::ffi::{c_char, c_void, CString};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mcore::{CallContext, Code, Identity, Method, ResponseSink, Server, ServerTls, Status, Value};
use tokio::sync::mpsc;

use crate::boundary::{
    block_on, body_out, borrow, borrow_mut, boundary, boundary_void, bytes, c_str, c_str_opt,
    not_on_library_thread, on_library_thread, out_ptr, panic_text, write_out, Fail, UserPtr,
};
use crate::client::metadata_get;
use crate::json;
use crate::meridian_status;
use crate::{MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

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

type HandlerFn =
    unsafe extern "C" fn(*mut c_void, *const meridian_request, *mut meridian_reply) -> u32;

/// One registered method.
struct Registration {
    name: String,
    payload: u32,
    streaming: bool,
    idempotent: bool,
    handler: HandlerFn,
    user: UserPtr,
}

/// Counts handlers running in C, so stop and free can wait for the last one.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Running {
    fn enter(self: &Arc<Self>) -> RunningGuard {
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

struct RunningGuard(Arc<Running>);

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
    running: Option<Server>,
    local_addr: Option<SocketAddr>,
    handlers: Arc<Running>,
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
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(server_out, server) };
        Ok(())
    })
}

/// # Safety
/// As the two registration functions.
unsafe fn register(
    server: *mut meridian_server,
    method: *const c_char,
    payload: u32,
    idempotent: bool,
    handler: meridian_handler,
    user: *mut c_void,
    streaming: bool,
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
                "methods must be registered before the server starts",
            ));
        }
        server.methods.retain(|m| m.name != name);
        server.methods.push(Registration {
            name: name.to_owned(),
            payload,
            streaming,
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
    unsafe { register(server, method, payload, idempotent, handler, user, false) }
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
    unsafe { register(server, method, payload, idempotent, handler, user, true) }
}

/// Starts serving on `addr` ("IP:port"; port 0 picks a free port, see
/// `meridian_server_port`) with the PEM certificate chain and private key at `cert_path`
/// and `key_path`. Returns when the server is listening. `MERIDIAN_CONFIG_ERROR` for
/// unreadable TLS files, `MERIDIAN_UNAVAILABLE` if the address cannot be bound,
/// `MERIDIAN_INVALID_STATE` if already started. Blocking (not from a handler).
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
        let identity = Identity::from_pem_files(cert, key)
            .map_err(|e| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string()))?;
        let mut builder = Server::builder()
            .region(server.region.clone())
            .no_local_registry();
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
            builder = match (m.streaming, m.payload == MERIDIAN_PAYLOAD_JSON) {
                (false, false) => builder
                    .raw()
                    .unary(method, move |req: Bytes, ctx| {
                        let h = h.clone();
                        async move { h.unary(Input::Raw(req), ctx).await.map(Bytes::from) }
                    })
                    .typed(),
                (false, true) => builder.unary(method, move |req: Value, ctx| {
                    let h = h.clone();
                    async move {
                        let out = h.unary(Input::Json(req), ctx).await?;
                        json::to_value(&out).map_err(|f| {
                            Status::internal(format!("the handler answered {}", f.message))
                        })
                    }
                }),
                (true, false) => builder
                    .raw()
                    .server_streaming(method, move |req: Bytes, ctx, sink| {
                        let h = h.clone();
                        async move { h.streaming(Input::Raw(req), ctx, Sink::Raw(sink)).await }
                    })
                    .typed(),
                (true, true) => builder.server_streaming(method, move |req: Value, ctx, sink| {
                    let h = h.clone();
                    async move { h.streaming(Input::Json(req), ctx, Sink::Json(sink)).await }
                }),
            };
        }
        let tls = ServerTls::new(identity);
        let running = block_on(builder.bind(addr, tls))?
            .map_err(|e| Fail::new(meridian_status::MERIDIAN_UNAVAILABLE, e.to_string()))?;
        server.local_addr = Some(running.local_addr());
        server.running = Some(running);
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

/// Stops the server gracefully: new calls are refused (clients may retry elsewhere),
/// calls in flight get up to `grace_ms` to finish, then connections close. Returns once
/// no handler is running any more; after that no handler starts. Stopping a server that
/// is not running is harmless. Blocking (not from a handler: `MERIDIAN_WOULD_DEADLOCK`).
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
        if let Some(running) = server.running.take() {
            block_on(running.shutdown(Duration::from_millis(u64::from(grace_ms))))?;
        }
        server.handlers.wait_idle();
        Ok(())
    })
}

/// Stops the server if it runs (no grace period), waits for running handlers to return,
/// and frees it. NULL is harmless. Must not be called from a handler.
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
        if let Some(running) = server.running.take() {
            if block_on(running.shutdown(Duration::ZERO)).is_err() {
                return; // on a library thread: the Server's own Drop closes it
            }
        }
        if !on_library_thread() {
            server.handlers.wait_idle();
        }
    })
}

/// The request a handler reads. Borrowed: valid only during the handler call.
#[allow(non_camel_case_types)]
pub struct meridian_request {
    method: CString,
    /// The body, with a NUL byte after it.
    body: Vec<u8>,
    ctx: CallContext,
}

/// Where a handler writes its answer. Borrowed: valid only during the handler call.
#[allow(non_camel_case_types)]
pub struct meridian_reply {
    payload: u32,
    body: Option<Vec<u8>>,
    message: Option<String>,
    ctx: CallContext,
    /// Streaming handlers only: the messages, on their way to the network.
    sender: Option<mpsc::Sender<Out>>,
}

/// A message a streaming handler sent.
enum Out {
    Raw(Bytes),
    Json(Value),
}

/// A request as it arrived.
enum Input {
    Raw(Bytes),
    Json(Value),
}

/// Where streaming messages go.
enum Sink {
    Raw(ResponseSink<Bytes>),
    Json(ResponseSink<Value>),
}

/// One method's C handler, as the Rust server calls it.
#[derive(Clone)]
struct Handler {
    f: HandlerFn,
    user: UserPtr,
    running: Arc<Running>,
}

impl Handler {
    /// Runs a unary handler on the blocking pool and returns the body it set.
    async fn unary(&self, input: Input, ctx: CallContext) -> Result<Vec<u8>, Status> {
        let h = self.clone();
        let task = tokio::task::spawn_blocking(move || h.invoke(input, ctx, None));
        task.await
            .map_err(|e| Status::internal(format!("the handler task failed: {e}")))?
    }

    /// Runs a streaming handler on the blocking pool and forwards what it sends.
    async fn streaming(&self, input: Input, ctx: CallContext, sink: Sink) -> Result<(), Status> {
        let (tx, mut rx) = mpsc::channel::<Out>(16);
        let h = self.clone();
        let task = tokio::task::spawn_blocking(move || h.invoke(input, ctx, Some(tx)));
        while let Some(msg) = rx.recv().await {
            let sent = match (&sink, msg) {
                (Sink::Raw(s), Out::Raw(b)) => s.send(&b).await,
                (Sink::Json(s), Out::Json(v)) => s.send(&v).await,
                _ => Err(Status::internal("message kind mismatch")),
            };
            if let Err(status) = sent {
                // Dropping the receiver makes the handler's next send fail with CANCELLED.
                drop(rx);
                let _ = task.await;
                return Err(status);
            }
        }
        task.await
            .map_err(|e| Status::internal(format!("the handler task failed: {e}")))?
            .map(|_| ())
    }

    /// Calls the C function (on a blocking-pool thread) and maps what it returned.
    fn invoke(
        &self,
        input: Input,
        ctx: CallContext,
        sender: Option<mpsc::Sender<Out>>,
    ) -> Result<Vec<u8>, Status> {
        let _running = self.running.enter();
        let (payload, mut body) = match input {
            Input::Raw(b) => (MERIDIAN_PAYLOAD_RAW, b.to_vec()),
            Input::Json(v) => (
                MERIDIAN_PAYLOAD_JSON,
                json::from_value(&v).map_err(|f| {
                    Status::invalid_argument(format!(
                        "a JSON handler cannot take this request: {}",
                        f.message
                    ))
                })?,
            ),
        };
        if payload == MERIDIAN_PAYLOAD_RAW {
            body.push(0);
        }
        let method = CString::new(ctx.method().replace('\0', " ")).unwrap_or_default();
        let request = meridian_request {
            method,
            body,
            ctx: ctx.clone(),
        };
        let mut reply = meridian_reply {
            payload,
            body: None,
            message: None,
            ctx,
            sender,
        };
        let f = self.f;
        let user = self.user;
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the application registered `f` with `user` and vouched for both; the
            // request and reply live until the call returns.
            unsafe { f(user.0, &request, &mut reply) }
        }))
        .map_err(|p| Status::internal(panic_text(&*p)))?;
        let message = reply.message.take();
        match meridian_status::grpc_code(code) {
            Some(Code::Ok) => Ok(reply.body.take().unwrap_or_default()),
            Some(code) => Err(Status::new(
                code,
                message.unwrap_or_else(|| format!("the handler failed with {}", code.name())),
            )),
            None => Err(Status::internal(format!(
                "the handler returned {code}, which is not a gRPC status (7000..7016)"
            ))),
        }
    }
}

/// The request body: `*data_out` points to `*len_out` bytes (JSON text for a JSON
/// method), followed by a NUL byte not counted. Valid until the handler returns.
///
/// # Safety
/// `request` is the handler's request; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_body(
    request: *const meridian_request,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        // SAFETY: as documented; the body lives until the handler returns.
        unsafe { body_out(&r.body, data_out, len_out) }
    })
}

/// The method name, a NUL-terminated string valid until the handler returns.
///
/// # Safety
/// `request` is the handler's request; `method_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_method(
    request: *const meridian_request,
    method_out: *mut *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(method_out, "method_out")?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(method_out, r.method.as_ptr()) };
        Ok(())
    })
}

/// Looks up metadata the client sent; the value (`*len_out` bytes) is valid until the
/// handler returns. `MERIDIAN_NOT_PRESENT` if absent.
///
/// # Safety
/// `request` is the handler's request; `key` is NUL-terminated; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_metadata_get(
    request: *const meridian_request,
    key: *const c_char,
    value_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, key) = unsafe { (borrow(request, "request")?, c_str(key, "key")?) };
        // SAFETY: as documented.
        unsafe { metadata_get(r.ctx.metadata(), key, value_out, len_out) }
    })
}

/// The time left before the caller's deadline, in milliseconds (0 once passed);
/// `MERIDIAN_NOT_PRESENT` if the caller set none.
///
/// # Safety
/// `request` is the handler's request; `ms_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_remaining_ms(
    request: *const meridian_request,
    ms_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(ms_out, "ms_out")?;
        let left = r.ctx.remaining().ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_NOT_PRESENT,
                "the caller set no deadline",
            )
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(ms_out, left.as_millis() as u64) };
        Ok(())
    })
}

/// Whether the call was cancelled (by the client, or its deadline): a long handler should
/// check it and give up early.
///
/// # Safety
/// `request` is the handler's request; `cancelled_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_is_cancelled(
    request: *const meridian_request,
    cancelled_out: *mut bool,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(cancelled_out, "cancelled_out")?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(cancelled_out, r.ctx.is_cancelled()) };
        Ok(())
    })
}

/// Sets a unary handler's response body (`len` bytes, copied; JSON text for a JSON
/// method, checked when the handler returns). `MERIDIAN_INVALID_STATE` in a streaming
/// handler.
///
/// # Safety
/// `reply` is the handler's reply; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_reply_set_body(
    reply: *mut meridian_reply,
    data: *const u8,
    len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, data) = unsafe { (borrow_mut(reply, "reply")?, bytes(data, len, "data")?) };
        if r.sender.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "a streaming handler sends messages with meridian_reply_send",
            ));
        }
        r.body = Some(data.to_vec());
        Ok(())
    })
}

/// Sends one message of a streaming handler (`len` bytes, copied; JSON text for a JSON
/// method, parsed here: `MERIDIAN_BAD_JSON` if it does not parse). Waits while the client
/// is slow to read. `MERIDIAN_CANCELLED` once the call is gone (the handler should
/// return); `MERIDIAN_INVALID_STATE` in a unary handler.
///
/// # Safety
/// `reply` is the handler's reply; `data` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_reply_send(
    reply: *mut meridian_reply,
    data: *const u8,
    len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, data) = unsafe { (borrow_mut(reply, "reply")?, bytes(data, len, "data")?) };
        let sender = r.sender.as_ref().ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "a unary handler answers with meridian_reply_set_body",
            )
        })?;
        let msg = if r.payload == MERIDIAN_PAYLOAD_JSON {
            Out::Json(json::to_value(data)?)
        } else {
            Out::Raw(Bytes::copy_from_slice(data))
        };
        sender
            .blocking_send(msg)
            .map_err(|_| Fail::new(meridian_status::MERIDIAN_CANCELLED, "the call is gone"))
    })
}

/// Sets the error text sent with a failing status (copied).
///
/// # Safety
/// `reply` is the handler's reply; `message` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_reply_set_error_message(
    reply: *mut meridian_reply,
    message: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, m) = unsafe { (borrow_mut(reply, "reply")?, c_str(message, "message")?) };
        r.message = Some(m.to_owned());
        Ok(())
    })
}

/// Adds trailing metadata to the response (key and `value_len` bytes, copied); the client
/// reads it with `meridian_response_metadata_get`.
///
/// # Safety
/// `reply` is the handler's reply; `key` is NUL-terminated; `value` has `value_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_reply_set_trailer(
    reply: *mut meridian_reply,
    key: *const c_char,
    value: *const u8,
    value_len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, key, value) = unsafe {
            (
                borrow_mut(reply, "reply")?,
                c_str(key, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        r.ctx
            .set_trailer(key.to_owned(), Bytes::copy_from_slice(value));
        Ok(())
    })
}
