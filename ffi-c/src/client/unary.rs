//! Unary calls, blocking and asynchronous, and the response they make.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcore::{Codec, Metadata, Value};

use super::handle::{meridian_client, Target};
use super::options::{apply_options, meridian_call_options};
use crate::boundary::{
    borrow, boundary, boundary_void, bytes, c_str, nul_terminated, out_ptr, panic_text,
    set_last_error, write_out, Fail, Rt, UserPtr,
};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// The result of a unary call: a successful one, or (from `meridian_client_unary_ex` and
/// `meridian_client_unary_start`) a failed one, with its status, message and trailers.
///
/// Made by the library (blocking calls store it in `*response_out`; asynchronous calls pass
/// it to the callback), owned by the application, freed with `meridian_response_free`.
/// Immutable: may be read from any thread, freed once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct meridian_response {
    /// `MERIDIAN_OK`, or the gRPC status the call failed with.
    pub(super) status: meridian_status,
    /// The failure's message with a NUL after it (just the NUL on success).
    pub(super) message: Vec<u8>,
    /// The body, followed by one NUL byte that is not part of it.
    pub(super) body: Vec<u8>,
    pub(super) metadata: Metadata,
    pub(super) server_time: Option<Duration>,
    pub(super) total_time: Duration,
    /// Through a proxy: client <-> proxy network, proxy, proxy <-> server network.
    pub(super) hops: Option<[Duration; 3]>,
}

/// The three proxy hops of a call's timing, when it went through a proxy.
fn hops(t: &mcore::CallTiming) -> Option<[Duration; 3]> {
    Some([
        t.client_proxy_network()?,
        t.proxy()?,
        t.proxy_server_network()?,
    ])
}

/// A request ready to go: its payload in the codec the call uses.
pub(super) enum Request {
    Raw(Bytes),
    Json(Value),
}

impl Request {
    fn parse(payload: u32, body: &[u8]) -> Result<Request, Fail> {
        match payload {
            MERIDIAN_PAYLOAD_RAW => Ok(Request::Raw(Bytes::copy_from_slice(body))),
            MERIDIAN_PAYLOAD_JSON => json::to_value(body).map(Request::Json),
            other => Err(Fail::invalid(format!("unknown payload kind {other}"))),
        }
    }
}

/// A unary call's outcome: a response (success or a failure that came from the call, with
/// its trailers), or an error of the interface that never made a call.
enum Outcome {
    Answered(meridian_response),
    Refused(Fail),
}

/// One unary call, start to end, keeping a failed call's status, message and trailers.
async fn unary_outcome(
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
) -> Outcome {
    let started = Instant::now();
    match unary_call(target, method, request, options).await {
        Ok(r) => Outcome::Answered(r),
        Err(CallError::Interface(f)) => Outcome::Refused(f),
        Err(CallError::Status(s)) => Outcome::Answered(meridian_response {
            status: meridian_status::from_code(s.code()),
            message: nul_terminated(s.message().as_bytes()),
            body: vec![0],
            metadata: s.metadata().clone(),
            server_time: None,
            total_time: started.elapsed(),
            hops: None,
        }),
    }
}

/// Why a unary call failed: the call's status, or the interface (JSON in the response).
enum CallError {
    Status(mcore::Status),
    Interface(Fail),
}

impl From<mcore::Status> for CallError {
    fn from(s: mcore::Status) -> CallError {
        CallError::Status(s)
    }
}

impl From<Fail> for CallError {
    fn from(f: Fail) -> CallError {
        CallError::Interface(f)
    }
}

/// One unary call, start to end.
async fn unary(
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
) -> Result<meridian_response, Fail> {
    unary_call(target, method, request, options)
        .await
        .map_err(|e| match e {
            CallError::Status(s) => Fail::from(s),
            CallError::Interface(f) => f,
        })
}

/// One unary call, start to end.
async fn unary_call(
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
) -> Result<meridian_response, CallError> {
    let started = Instant::now();
    let (body, metadata, timing) = match (&target, request) {
        (Target::Channel(ch), Request::Raw(req)) => {
            let r = apply_options(ch.call(method), &options)
                .raw()
                .unary(&req)
                .await?;
            (
                nul_terminated(r.get_ref()),
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Channel(ch), Request::Json(v)) => {
            let call = apply_options(ch.call(method), &options).codec(Codec::Value);
            let r = call.unary::<Value, Value>(&v).await?;
            (
                json::from_value(r.get_ref())?,
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Region(rc), Request::Raw(req)) => {
            let r = apply_options(rc.call(method), &options)
                .raw()
                .unary(&req)
                .await?;
            (
                nul_terminated(r.get_ref()),
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Region(rc), Request::Json(v)) => {
            let call = apply_options(rc.call(method), &options).codec(Codec::Value);
            let r = call.unary::<Value, Value>(&v).await?;
            (
                json::from_value(r.get_ref())?,
                r.metadata().clone(),
                r.timing(),
            )
        }
    };
    Ok(meridian_response {
        status: meridian_status::MERIDIAN_OK,
        message: vec![0],
        body,
        metadata,
        server_time: timing.server(),
        total_time: started.elapsed(),
        hops: hops(&timing),
    })
}

/// The arguments every call function shares, read and copied before anything starts.
pub(super) struct CallArgs {
    pub(super) target: Target,
    pub(super) rt: Rt,
    pub(super) method: String,
    pub(super) request: Request,
    pub(super) options: meridian_call_options,
}

/// # Safety
/// The pointers follow the call functions' documented contracts.
pub(super) unsafe fn call_args(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
) -> Result<CallArgs, Fail> {
    // SAFETY: forwarded from the caller's contract.
    let (client, method, body) = unsafe {
        (
            borrow(client, "client")?,
            c_str(method, "method")?,
            bytes(request, request_len, "request")?,
        )
    };
    client.rt.check("client")?;
    if method.is_empty() {
        return Err(Fail::invalid("the method name is empty"));
    }
    let options = if options.is_null() {
        meridian_call_options::default()
    } else {
        // SAFETY: non-NULL, and the caller guarantees a live options handle.
        unsafe { &*options }.clone()
    };
    Ok(CallArgs {
        target: client.target.clone(),
        rt: client.rt.clone(),
        method: method.to_owned(),
        request: Request::parse(payload, body)?,
        options,
    })
}

/// A unary call that blocks the calling thread until the response, an error, or the
/// deadline. `payload` is `MERIDIAN_PAYLOAD_RAW` or `MERIDIAN_PAYLOAD_JSON`; `request`
/// holds `request_len` bytes (raw bytes, or JSON text without a NUL). `options` may be NULL
/// (defaults); it is only read.
///
/// On `MERIDIAN_OK`, `*response_out` receives a response the caller frees with
/// `meridian_response_free`. On any other status nothing is written; the status is the
/// call's gRPC status (7001..7016, e.g. `MERIDIAN_UNIMPLEMENTED` for an unknown method,
/// `MERIDIAN_DEADLINE_EXCEEDED`, `MERIDIAN_UNAVAILABLE` when the server is gone) or an
/// interface error (`MERIDIAN_BAD_JSON` for unparsable request JSON, ...), and
/// `meridian_last_error` has the text (for gRPC statuses: the server's message).
///
/// Blocking: returns `MERIDIAN_WOULD_DEADLOCK` on a library thread (inside a handler or a
/// completion callback); use `meridian_client_unary_async` there.
///
/// # Safety
/// `client` is a live client; `method` is NUL-terminated; `request` points to
/// `request_len` bytes; `options` is NULL or live; `response_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    response_out: *mut *mut meridian_response,
) -> meridian_status {
    boundary(|| {
        out_ptr(response_out, "response_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let response =
            a.rt.block_on("client", unary(a.target, a.method, a.request, a.options))??;
        let response = Box::into_raw(Box::new(response));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(response_out, response) };
        Ok(())
    })
}

/// The completion callback of `meridian_client_unary_async`.
///
/// Called exactly once, on a library thread, with the `user` pointer given to the call.
/// On success `status` is `MERIDIAN_OK`, `response` is a response the callback now owns
/// (free it with `meridian_response_free`, at any time, on any thread) and `error` is
/// NULL. On failure `response` is NULL (from `meridian_client_unary_start`: a response
/// holding the failed call's status, message and trailers, when the call was made) and
/// `error` is the error text, borrowed until the callback returns. The callback must not
/// block for long, and blocking library functions called from it fail with
/// `MERIDIAN_WOULD_DEADLOCK`.
#[allow(non_camel_case_types)]
pub type meridian_call_callback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        status: meridian_status,
        response: *mut meridian_response,
        error: *const c_char,
    ),
>;

/// Starts a unary call and returns at once; `callback` is called exactly once with the
/// result (see `meridian_call_callback`) on a library thread, possibly before this
/// function returns. Arguments as `meridian_client_unary`; they are copied, so the request
/// buffer, the method and the options may be released as soon as this returns. `user` is
/// passed back untouched: it must stay valid, and be safe to use from another thread,
/// until the callback has run. Callable from anywhere, including handlers.
///
/// On a status other than `MERIDIAN_OK` the call did not start and the callback will not
/// be called.
///
/// # Safety
/// As `meridian_client_unary`; `callback` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary_async(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    callback: meridian_call_callback,
    user: *mut c_void,
) -> meridian_status {
    boundary(|| {
        let callback = callback.ok_or_else(|| Fail::null("callback"))?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let user = UserPtr(user);
        a.rt.handle.spawn(async move {
            let result = unary(a.target, a.method, a.request, a.options).await;
            complete(callback, user, result);
        });
        Ok(())
    })
}

/// Hands an asynchronous call's result to its callback, inside a panic boundary.
fn complete(
    callback: unsafe extern "C" fn(
        *mut c_void,
        meridian_status,
        *mut meridian_response,
        *const c_char,
    ),
    user: UserPtr,
    result: Result<meridian_response, Fail>,
) {
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match result {
        Ok(response) => {
            let response = Box::into_raw(Box::new(response));
            // SAFETY: the application gave us this callback and vouched for `user`; the
            // response is handed over and owned by the callback from here on.
            unsafe {
                callback(
                    user.0,
                    meridian_status::MERIDIAN_OK,
                    response,
                    std::ptr::null(),
                )
            };
        }
        Err(fail) => {
            set_last_error(&fail.message);
            let text = CString::new(fail.message.replace('\0', " ")).unwrap_or_default();
            // SAFETY: as above; `text` outlives the callback.
            unsafe { callback(user.0, fail.status, std::ptr::null_mut(), text.as_ptr()) };
        }
    }));
    if let Err(payload) = delivered {
        set_last_error(&panic_text(&*payload));
    }
}

/// As `meridian_client_unary`, but a call that fails with a gRPC status (7001..7016) also
/// gives a response: `*response_out` receives one whenever the call was made, on success
/// as `meridian_client_unary` does, and on failure with an empty body, the status
/// (`meridian_response_status`), the server's message (`meridian_response_error_message`)
/// and the trailing metadata the server sent with the failure
/// (`meridian_response_metadata_get`). The function returns the same status as the
/// response holds. Interface errors that prevent the call (`MERIDIAN_NULL_PARAMETER`,
/// `MERIDIAN_BAD_JSON` for the request, `MERIDIAN_WOULD_DEADLOCK`, `MERIDIAN_FORKED`, ...)
/// write nothing. The caller frees the response with `meridian_response_free` in both
/// cases. Blocking, as `meridian_client_unary`.
///
/// # Safety
/// As `meridian_client_unary`.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary_ex(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    response_out: *mut *mut meridian_response,
) -> meridian_status {
    let mut status = meridian_status::MERIDIAN_OK;
    let r = boundary(|| {
        out_ptr(response_out, "response_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let outcome = a.rt.block_on(
            "client",
            unary_outcome(a.target, a.method, a.request, a.options),
        )?;
        let response = match outcome {
            Outcome::Answered(r) => r,
            Outcome::Refused(f) => return Err(f),
        };
        status = response.status;
        let message =
            String::from_utf8_lossy(response.message.split_last().map_or(&[][..], |(_, m)| m))
                .into_owned();
        let response = Box::into_raw(Box::new(response));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(response_out, response) };
        if status == meridian_status::MERIDIAN_OK {
            Ok(())
        } else {
            Err(Fail::new(status, message))
        }
    });
    debug_assert!(r == status || status == meridian_status::MERIDIAN_OK);
    r
}

/// The status of the call a response belongs to: `MERIDIAN_OK`, or (from
/// `meridian_client_unary_ex` and `meridian_client_unary_start`) the gRPC status it failed
/// with. A response pointer that is NULL gives `MERIDIAN_NULL_PARAMETER`.
///
/// # Safety
/// `response` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_status(
    response: *const meridian_response,
) -> meridian_status {
    // SAFETY: as documented.
    match unsafe { response.as_ref() } {
        Some(r) => r.status,
        None => meridian_status::MERIDIAN_NULL_PARAMETER,
    }
}

/// The error message of a failed call's response (the server's text, at most 8 KiB):
/// `*data_out` points to `*len_out` bytes owned by the response, followed by a NUL (not
/// counted), valid until `meridian_response_free`. Empty for a successful call.
///
/// # Safety
/// `response` is live; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_error_message(
    response: *const meridian_response,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(response, "response") }?;
        // SAFETY: as documented; the message lives until meridian_response_free.
        unsafe { crate::boundary::body_out(&r.message, data_out, len_out) }
    })
}

/// An asynchronous call started by `meridian_client_unary_start`, for cancelling it.
///
/// Owned by the application, freed with `meridian_pending_call_free` (which does not cancel
/// the call). Thread-safe: cancel from any thread, at any time, even after the callback ran.
#[allow(non_camel_case_types)]
pub struct meridian_pending_call {
    cancel: Arc<tokio::sync::Notify>,
}

/// As `meridian_client_unary_async`, with two differences. The callback's `response` is
/// non-NULL also when the call failed with a gRPC status (read its status, message and
/// trailers as from `meridian_client_unary_ex`); it is NULL only for errors of the
/// interface and for a cancelled call (`error` has the text then). And `*pending_out`
/// receives a handle for `meridian_pending_call_cancel`, which the caller frees with
/// `meridian_pending_call_free` whenever it likes (before or after the callback). The
/// callback is still called exactly once. Nothing is written and no callback comes on a
/// status other than `MERIDIAN_OK`.
///
/// # Safety
/// As `meridian_client_unary_async`; `pending_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary_start(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    callback: meridian_call_callback,
    user: *mut c_void,
    pending_out: *mut *mut meridian_pending_call,
) -> meridian_status {
    boundary(|| {
        let callback = callback.ok_or_else(|| Fail::null("callback"))?;
        out_ptr(pending_out, "pending_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let user = UserPtr(user);
        let cancel = Arc::new(tokio::sync::Notify::new());
        let cancelled = cancel.clone();
        a.rt.handle.spawn(async move {
            let call = unary_outcome(a.target, a.method, a.request, a.options);
            let outcome = tokio::select! {
                outcome = call => outcome,
                () = cancelled.notified() => Outcome::Refused(Fail::new(
                    meridian_status::MERIDIAN_CANCELLED,
                    "the call was cancelled by meridian_pending_call_cancel",
                )),
            };
            match outcome {
                Outcome::Answered(r) => complete_answered(callback, user, r),
                Outcome::Refused(f) => complete(callback, user, Err(f)),
            }
        });
        let pending = Box::into_raw(Box::new(meridian_pending_call { cancel }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(pending_out, pending) };
        Ok(())
    })
}

/// Cancels a call started by `meridian_client_unary_start`: if its callback has not run
/// yet, the call is abandoned (the server's handler sees it cancelled) and the callback
/// runs with `MERIDIAN_CANCELLED`, possibly before this returns, possibly on this thread's
/// behalf on a library thread. If the callback already ran or is running, nothing happens.
/// Not blocking; callable from anywhere, including callbacks and handlers.
///
/// # Safety
/// `pending` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_pending_call_cancel(
    pending: *const meridian_pending_call,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let p = unsafe { borrow(pending, "pending") }?;
        // A stored permit: a cancel before the task first waits still counts.
        p.cancel.notify_one();
        Ok(())
    })
}

/// Frees the handle of a call started by `meridian_client_unary_start`, without cancelling
/// it (its callback still runs). NULL is harmless.
///
/// # Safety
/// `pending` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_pending_call_free(pending: *mut meridian_pending_call) {
    boundary_void(|| {
        if !pending.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_unary_start, freed once.
            drop(unsafe { Box::from_raw(pending) });
        }
    })
}

/// Hands a response (successful or not) to a callback, inside a panic boundary.
fn complete_answered(
    callback: unsafe extern "C" fn(
        *mut c_void,
        meridian_status,
        *mut meridian_response,
        *const c_char,
    ),
    user: UserPtr,
    response: meridian_response,
) {
    let status = response.status;
    // A copy: the callback may free the response before it reads `error`.
    let text = (status != meridian_status::MERIDIAN_OK).then(|| {
        let m = response.message.split_last().map_or(&[][..], |(_, m)| m);
        CString::new(
            m.iter()
                .map(|&b| if b == 0 { b' ' } else { b })
                .collect::<Vec<u8>>(),
        )
        .unwrap_or_default()
    });
    if let Some(t) = &text {
        set_last_error(&t.to_string_lossy());
    }
    let error = text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    let response = Box::into_raw(Box::new(response));
    let delivered = std::panic::catch_unwind(|| {
        // SAFETY: the application gave us this callback and vouched for `user`; the
        // response is handed over; `text` outlives the callback.
        unsafe { callback(user.0, status, response, error) };
    });
    if let Err(payload) = delivered {
        set_last_error(&panic_text(&*payload));
    }
}
