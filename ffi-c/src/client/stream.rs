//! Server-streaming calls: the stream handle and its messages.

use std::ffi::c_char;

use bytes::Bytes;
use mcore::{Codec, Status, Streaming, Value};

use super::handle::{meridian_client, Target};
use super::options::{apply_options, meridian_call_options};
use super::unary::{call_args, Request};
use crate::boundary::{
    body_out, borrow, borrow_mut, boundary, boundary_void, nul_terminated, out_ptr, write_out,
    Fail, Rt,
};
use crate::{json, meridian_status};

/// The messages of one server-streaming call.
enum Messages {
    Raw(Streaming<Bytes>),
    Json(Streaming<Value>),
}

/// A server-streaming call's results, read with `meridian_stream_next`.
///
/// Made by `meridian_client_server_streaming`, freed by `meridian_stream_free` (which
/// cancels the call if it has not ended). Not thread-safe: one thread at a time.
#[allow(non_camel_case_types)]
pub struct meridian_stream {
    messages: Messages,
    /// The runtime the call lives on (checked before every wait: fork, shutdown).
    rt: Rt,
    /// The last message returned, with a NUL byte after it.
    current: Vec<u8>,
    /// Set once the stream ended: `MERIDIAN_STREAM_END` or the error, and its text.
    ended: Option<(meridian_status, String)>,
}

/// Opens a server-streaming call: sends the one request and stores a stream of responses
/// in `*stream_out` (caller frees with `meridian_stream_free`). Arguments as
/// `meridian_client_unary`; the call's timeout covers the whole stream. Blocking until the
/// call is open (`MERIDIAN_WOULD_DEADLOCK` on library threads). Nothing is written on
/// failure.
///
/// # Safety
/// As `meridian_client_unary`; `stream_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_server_streaming(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    stream_out: *mut *mut meridian_stream,
) -> meridian_status {
    boundary(|| {
        out_ptr(stream_out, "stream_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let o = a.options;
        let rt = a.rt.clone();
        let messages = rt.block_on("client", async move {
            Ok::<_, Status>(match (a.target, a.request) {
                (Target::Channel(ch), Request::Raw(req)) => Messages::Raw(
                    apply_options(ch.call(a.method), &o)
                        .raw()
                        .server_streaming(&req)
                        .await?,
                ),
                (Target::Channel(ch), Request::Json(v)) => Messages::Json(
                    apply_options(ch.call(a.method), &o)
                        .codec(Codec::Value)
                        .server_streaming::<Value, Value>(&v)
                        .await?,
                ),
                (Target::Region(rc), Request::Json(v)) => Messages::Json(
                    apply_options(rc.call(a.method), &o)
                        .codec(Codec::Value)
                        .server_streaming::<Value, Value>(&v)
                        .await?,
                ),
                (Target::Region(rc), Request::Raw(req)) => Messages::Raw(
                    apply_options(rc.call(a.method), &o)
                        .raw()
                        .server_streaming(&req)
                        .await?,
                ),
            })
        })??;
        let stream = Box::into_raw(Box::new(meridian_stream {
            messages,
            rt,
            current: Vec::new(),
            ended: None,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(stream_out, stream) };
        Ok(())
    })
}

/// Waits for the stream's next message. `MERIDIAN_OK`: `*data_out` points to `*len_out`
/// bytes (JSON text for a JSON call, followed by a NUL not counted), owned by the stream
/// and valid until the next `meridian_stream_next` or `meridian_stream_free`.
/// `MERIDIAN_STREAM_END`: the server ended the stream successfully. Any other status: the
/// call failed (text in `meridian_last_error`). After the end or an error, every further
/// call returns the same status. Nothing is written unless `MERIDIAN_OK`. Blocking.
///
/// # Safety
/// `stream` is live and used by one thread at a time; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_next(
    stream: *mut meridian_stream,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let s = unsafe { borrow_mut(stream, "stream") }?;
        out_ptr(data_out, "data_out")?;
        out_ptr(len_out, "len_out")?;
        if let Some((status, text)) = &s.ended {
            return Err(Fail::new(*status, text.clone()));
        }
        let rt = s.rt.clone();
        let next = rt.block_on("stream", async {
            match &mut s.messages {
                Messages::Raw(m) => m.message().await.map(|o| o.map(|b| Ok(nul_terminated(&b)))),
                Messages::Json(m) => m.message().await.map(|o| o.map(|v| json::from_value(&v))),
            }
        })?;
        let fail = match next {
            Ok(Some(Ok(body))) => {
                s.current = body;
                // SAFETY: checked non-NULL above; the body lives until the next call.
                return unsafe { body_out(&s.current, data_out, len_out) };
            }
            Ok(Some(Err(fail))) => return Err(fail),
            Ok(None) => Fail::new(meridian_status::MERIDIAN_STREAM_END, "the stream ended"),
            Err(status) => Fail::from(status),
        };
        s.ended = Some((fail.status, fail.message.clone()));
        Err(fail)
    })
}

/// The server's reported time for the whole stream (microseconds), available after
/// `meridian_stream_next` returned `MERIDIAN_STREAM_END`; `MERIDIAN_NOT_PRESENT` before,
/// or if the server reported none.
///
/// # Safety
/// `stream` is live; `us_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_server_time_us(
    stream: *const meridian_stream,
    us_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let s = unsafe { borrow(stream, "stream") }?;
        out_ptr(us_out, "us_out")?;
        let t = match &s.messages {
            Messages::Raw(m) => m.server_time(),
            Messages::Json(m) => m.server_time(),
        }
        .ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_NOT_PRESENT,
                "no server timing (yet)",
            )
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(us_out, t.as_micros() as u64) };
        Ok(())
    })
}

/// Frees a stream, cancelling the call on the server if it has not ended. NULL is
/// harmless.
///
/// # Safety
/// `stream` is NULL or a stream not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_free(stream: *mut meridian_stream) {
    boundary_void(|| {
        if !stream.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_server_streaming, freed once.
            let stream = unsafe { Box::from_raw(stream) };
            stream.rt.clone().release(stream);
        }
    })
}
