//! What a handler reads: body, method, metadata, time left, cancellation.

use std::ffi::c_char;

use super::handler::meridian_request;
use crate::boundary::{body_out, borrow, boundary, c_str, out_ptr, write_out, Fail};
use crate::client::metadata_get;
use crate::meridian_status;

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

/// The next request message of a client-streaming or bidi call, waiting for it (the
/// handler's thread blocks; the call's deadline and cancellation end the wait).
/// `MERIDIAN_OK`: `*data_out` points to `*len_out` bytes (JSON text for a JSON method,
/// followed by a NUL not counted), valid until the next `meridian_request_next` or until
/// the handler returns. `MERIDIAN_STREAM_END`: the client closed its side; no more
/// messages. Any other status: the request stream failed (the call was cancelled, a
/// message too large, JSON a C handler cannot take, ...). After the end or an error every
/// further call returns the same status. `MERIDIAN_INVALID_STATE` in unary and
/// server-streaming handlers (use `meridian_request_body`). Nothing is written unless
/// `MERIDIAN_OK`. Only on the handler's thread.
///
/// # Safety
/// `request` is the handler's request; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_next(
    request: *const meridian_request,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(data_out, "data_out")?;
        out_ptr(len_out, "len_out")?;
        let incoming = r.incoming.as_ref().ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "only client-streaming and bidi handlers read request messages; \
                 use meridian_request_body",
            )
        })?;
        let mut state = incoming
            .lock()
            .map_err(|_| Fail::new(meridian_status::MERIDIAN_INTERNAL, "request state poisoned"))?;
        if let Some((status, text)) = &state.ended {
            return Err(Fail::new(*status, text.clone()));
        }
        let fail = match state.rx.blocking_recv() {
            Some(Ok(body)) => {
                state.current = body;
                // SAFETY: checked non-NULL above; the message's heap buffer stays where it
                // is until the next call replaces it or the request is dropped.
                return unsafe { body_out(&state.current, data_out, len_out) };
            }
            None => Fail::new(
                meridian_status::MERIDIAN_STREAM_END,
                "the client closed its request stream",
            ),
            Some(Err(status)) => Fail::from(status),
        };
        state.ended = Some((fail.status, fail.message.clone()));
        Err(fail)
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
