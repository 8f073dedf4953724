//! Unary calls, blocking and asynchronous, and the response they make.

use std::ffi::{c_char, c_void, CString};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcore::{Codec, Metadata, Value};

use super::handle::{meridian_client, Target};
use super::options::{apply_options, meridian_call_options};
use crate::boundary::{
    borrow, boundary, bytes, c_str, nul_terminated, out_ptr, panic_text, set_last_error, write_out,
    Fail, Rt, UserPtr,
};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// The result of a successful unary call.
///
/// Made by the library (blocking calls store it in `*response_out`; asynchronous calls pass
/// it to the callback), owned by the application, freed with `meridian_response_free`.
/// Immutable: may be read from any thread, freed once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct meridian_response {
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

/// One unary call, start to end.
async fn unary(
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
) -> Result<meridian_response, Fail> {
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
/// NULL. On failure `response` is NULL and `error` is the error text, borrowed until the
/// callback returns. The callback must not block for long, and blocking library functions
/// called from it fail with `MERIDIAN_WOULD_DEADLOCK`.
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
