//! Deferred replies: a unary handler hands its reply to another thread and returns at once.

use std::ffi::c_char;

use bytes::Bytes;
use mcore::{CallContext, Code, Status};
use tokio::sync::oneshot;

use super::handler::{empty_body, meridian_reply};
use crate::boundary::{
    borrow, borrow_mut, boundary, boundary_void, bytes, c_str_opt, out_ptr, write_out, Fail,
};
use crate::meridian_status;

/// A unary call's reply, taken out of the handler by `meridian_reply_defer` to be answered
/// later, from any thread, with `meridian_deferred_finish`.
///
/// Owned by the application. Exactly one of `meridian_deferred_finish` (answers and frees)
/// or `meridian_deferred_free` (frees without answering: the caller gets
/// `MERIDIAN_INTERNAL` "... freed it without answering") releases it. Not thread-safe: one
/// thread at a time, but that thread may be any thread, including one of the library's.
#[allow(non_camel_case_types)]
pub struct meridian_deferred_reply {
    payload: u32,
    ctx: CallContext,
    answer: oneshot::Sender<Result<Vec<u8>, Status>>,
}

/// Defers a unary handler's reply: stores in `*deferred_out` a handle through which any
/// thread answers later (`meridian_deferred_finish`), so the handler can return at once
/// and free its pool thread while the work goes on elsewhere. Once deferred, the
/// handler's return value, body, error message and trailers set on `reply` are ignored.
/// The call's deadline and cancellation still apply: a call that ends first makes
/// `meridian_deferred_finish` return `MERIDIAN_CANCELLED` (and free the handle).
/// `MERIDIAN_INVALID_STATE` in a streaming handler or when deferred twice.
///
/// # Safety
/// `reply` is the handler's reply (during the handler call); `deferred_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_reply_defer(
    reply: *mut meridian_reply,
    deferred_out: *mut *mut meridian_deferred_reply,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow_mut(reply, "reply") }?;
        out_ptr(deferred_out, "deferred_out")?;
        if r.sender.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "only unary handlers can defer their reply",
            ));
        }
        if r.deferred.is_some() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the reply is already deferred",
            ));
        }
        let (tx, rx) = oneshot::channel();
        r.deferred = Some(rx);
        let d = Box::into_raw(Box::new(meridian_deferred_reply {
            payload: r.payload,
            ctx: r.ctx.clone(),
            answer: tx,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(deferred_out, d) };
        Ok(())
    })
}

/// Adds trailing metadata to a deferred reply (key and `value_len` bytes, copied; keys as
/// `meridian_reply_set_trailer`).
///
/// # Safety
/// `deferred` is live; `key` is NUL-terminated; `value` has `value_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_deferred_set_trailer(
    deferred: *mut meridian_deferred_reply,
    key: *const c_char,
    value: *const u8,
    value_len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (d, key, value) = unsafe {
            (
                borrow_mut(deferred, "deferred")?,
                crate::boundary::c_str(key, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        crate::boundary::metadata_key(key)?;
        d.ctx
            .set_trailer(key.to_owned(), Bytes::copy_from_slice(value));
        Ok(())
    })
}

/// Whether the deferred call is over for the caller (cancelled, deadline passed, client
/// gone): then an answer would be dropped and the work may stop.
///
/// # Safety
/// `deferred` is live; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_deferred_is_cancelled(
    deferred: *const meridian_deferred_reply,
    out: *mut bool,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let d = unsafe { borrow(deferred, "deferred") }?;
        out_ptr(out, "out")?;
        let gone = d.ctx.is_cancelled() || d.answer.is_closed();
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, gone) };
        Ok(())
    })
}

/// Answers a deferred call and frees the handle (in every case, also on failure: never use
/// it again). `status` is `MERIDIAN_OK` with the body `data` (`len` bytes, copied; JSON
/// text for a JSON method, NULL/0 for an empty body, JSON `null`), or a gRPC status
/// 7001..7016 failing the call with `error_message` (NULL: a default text; `data` is then
/// ignored). Returns `MERIDIAN_OK` when the answer was handed to the call,
/// `MERIDIAN_CANCELLED` if the call had already ended, `MERIDIAN_INVALID_PARAMETER` for a
/// status that is not OK or a gRPC status (the caller then gets `MERIDIAN_INTERNAL`). Not
/// blocking; callable from any thread.
///
/// # Safety
/// `deferred` is NULL or live (and not used again); `data` has `len` bytes;
/// `error_message` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_deferred_finish(
    deferred: *mut meridian_deferred_reply,
    status: u32,
    data: *const u8,
    len: usize,
    error_message: *const c_char,
) -> meridian_status {
    boundary(|| {
        if deferred.is_null() {
            return Err(Fail::null("deferred"));
        }
        // SAFETY: made by Box::into_raw in meridian_reply_defer, released here once.
        let d = unsafe { Box::from_raw(deferred) };
        // SAFETY: as documented.
        let (data, message) = unsafe {
            (
                bytes(data, len, "data"),
                c_str_opt(error_message, "error_message"),
            )
        };
        let (answer, result) = match meridian_status::grpc_code(status) {
            Some(Code::Ok) => match data {
                Ok([]) => (Ok(empty_body(d.payload)), Ok(())),
                Ok(body) => (Ok(body.to_vec()), Ok(())),
                Err(f) => (
                    Err(Status::internal("the deferred reply's body was NULL")),
                    Err(f),
                ),
            },
            Some(code) => {
                let text = match message {
                    Ok(Some(m)) => m.to_owned(),
                    _ => format!("the handler failed with {}", code.name()),
                };
                (Err(Status::new(code, text)), Ok(()))
            }
            None => (
                Err(Status::internal(format!(
                    "the deferred reply was answered with {status}, which is not a gRPC \
                     status (7000..7016)"
                ))),
                Err(Fail::invalid(format!(
                    "{status} is not MERIDIAN_OK or a gRPC status (7001..7016)"
                ))),
            ),
        };
        if d.answer.send(answer).is_err() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_CANCELLED,
                "the call ended before the deferred reply was answered",
            ));
        }
        result
    })
}

/// Frees a deferred reply without answering: the caller gets `MERIDIAN_INTERNAL` with the
/// text "the handler deferred its reply and freed it without answering". NULL is
/// harmless.
///
/// # Safety
/// `deferred` is NULL or a handle not yet released.
#[no_mangle]
pub unsafe extern "C" fn meridian_deferred_free(deferred: *mut meridian_deferred_reply) {
    boundary_void(|| {
        if !deferred.is_null() {
            // SAFETY: made by Box::into_raw in meridian_reply_defer, released once.
            drop(unsafe { Box::from_raw(deferred) });
        }
    })
}
