//! What a handler writes: body, streamed messages, error message, trailers.

use std::ffi::c_char;

use bytes::Bytes;

use super::handler::{meridian_reply, Out};
use crate::boundary::{borrow_mut, boundary, bytes, c_str, Fail};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON};

/// Sets a unary handler's response body (`len` bytes, copied; JSON text for a JSON
/// method, checked when the handler returns). A handler that returns `MERIDIAN_OK`
/// without setting a body answers an empty body (raw) or JSON `null` (JSON).
/// `MERIDIAN_INVALID_STATE` in a streaming handler.
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

/// Sets the error text sent with a failing status (copied). The caller receives at most
/// its first 8192 bytes (8 KiB).
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
/// reads it with `meridian_response_metadata_get`. Keys follow the rules of
/// `meridian_call_options_add_metadata` (`MERIDIAN_INVALID_PARAMETER` otherwise).
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
        crate::boundary::metadata_key(key)?;
        r.ctx
            .set_trailer(key.to_owned(), Bytes::copy_from_slice(value));
        Ok(())
    })
}
