//! Client-streaming and bidirectional calls: one handle that sends and receives.

use std::ffi::c_char;

use bytes::Bytes;
use mcore::{Codec, RequestSink, ResponseFuture, Status, Streaming, Value};

use super::handle::{meridian_client, Target};
use super::options::{apply_options, meridian_call_options};
use crate::boundary::{
    body_out, borrow, borrow_mut, boundary, boundary_void, bytes, c_str, nul_terminated, out_ptr,
    write_out, Fail, Rt,
};
use crate::{json, meridian_status, MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// `meridian_client_open_call` kind: a stream of requests, one response.
pub const MERIDIAN_CALL_CLIENT_STREAMING: u32 = 2;
/// `meridian_client_open_call` kind: streams both ways.
pub const MERIDIAN_CALL_BIDI: u32 = 3;

/// The sending half.
enum Sender {
    Raw(RequestSink<Bytes>),
    Json(RequestSink<Value>),
}

/// The receiving half.
enum Receiver {
    /// Client streaming: the one response, until taken.
    OneRaw(Option<ResponseFuture<Bytes>>),
    OneJson(Option<ResponseFuture<Value>>),
    /// Bidi: the response messages.
    ManyRaw(Streaming<Bytes>),
    ManyJson(Streaming<Value>),
}

/// A client-streaming or bidirectional call in progress.
///
/// Made by `meridian_client_open_call`, freed by `meridian_call_free` (which cancels the
/// call if it has not ended). Not thread-safe: one thread at a time (sending on one thread
/// while another receives is not supported; alternate, or use two calls).
#[allow(non_camel_case_types)]
pub struct meridian_call {
    payload: u32,
    rt: Rt,
    /// `None` once the send side is closed (or failed).
    sender: Option<Sender>,
    receiver: Receiver,
    /// The last message received, with a NUL after it.
    current: Vec<u8>,
    /// Set once the receive side ended: `MERIDIAN_STREAM_END` or the error, and its text.
    ended: Option<(meridian_status, String)>,
}

/// Opens a client-streaming (`kind` = `MERIDIAN_CALL_CLIENT_STREAMING`) or bidirectional
/// (`MERIDIAN_CALL_BIDI`) call of `method` and stores its handle in `*call_out` (caller
/// frees with `meridian_call_free`). `payload` is `MERIDIAN_PAYLOAD_RAW` or
/// `MERIDIAN_PAYLOAD_JSON` for every message both ways; `options` may be NULL, and the
/// call's timeout covers the whole call. Then: `meridian_call_send` any number of
/// messages, `meridian_call_close_send` when done, and `meridian_call_next` for the
/// response(s). Blocking until the call is open (`MERIDIAN_WOULD_DEADLOCK` on library
/// threads). Nothing is written on failure.
///
/// # Safety
/// `client` is live; `method` is NUL-terminated; `options` is NULL or live; `call_out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_open_call(
    client: *const meridian_client,
    method: *const c_char,
    kind: u32,
    payload: u32,
    options: *const meridian_call_options,
    call_out: *mut *mut meridian_call,
) -> meridian_status {
    boundary(|| {
        out_ptr(call_out, "call_out")?;
        // SAFETY: as documented.
        let (client, method) = unsafe { (borrow(client, "client")?, c_str(method, "method")?) };
        client.rt.check("client")?;
        if method.is_empty() {
            return Err(Fail::invalid("the method name is empty"));
        }
        if kind != MERIDIAN_CALL_CLIENT_STREAMING && kind != MERIDIAN_CALL_BIDI {
            return Err(Fail::invalid(format!(
                "unknown call kind {kind} (MERIDIAN_CALL_CLIENT_STREAMING or MERIDIAN_CALL_BIDI)"
            )));
        }
        if payload != MERIDIAN_PAYLOAD_RAW && payload != MERIDIAN_PAYLOAD_JSON {
            return Err(Fail::invalid(format!("unknown payload kind {payload}")));
        }
        let o = if options.is_null() {
            meridian_call_options::default()
        } else {
            // SAFETY: non-NULL, and the caller guarantees a live options handle.
            unsafe { &*options }.clone()
        };
        let (target, method) = (client.target.clone(), method.to_owned());
        let bidi = kind == MERIDIAN_CALL_BIDI;
        let json = payload == MERIDIAN_PAYLOAD_JSON;
        let opened = client.rt.block_on("client", async move {
            macro_rules! open {
                ($call:expr) => {{
                    let call = apply_options($call, &o);
                    match (bidi, json) {
                        (false, false) => call
                            .raw()
                            .client_streaming::<Bytes, Bytes>()
                            .await
                            .map(|(s, r)| (Sender::Raw(s), Receiver::OneRaw(Some(r)))),
                        (false, true) => call
                            .codec(Codec::Value)
                            .client_streaming::<Value, Value>()
                            .await
                            .map(|(s, r)| (Sender::Json(s), Receiver::OneJson(Some(r)))),
                        (true, false) => call
                            .raw()
                            .bidi::<Bytes, Bytes>()
                            .await
                            .map(|(s, r)| (Sender::Raw(s), Receiver::ManyRaw(r))),
                        (true, true) => call
                            .codec(Codec::Value)
                            .bidi::<Value, Value>()
                            .await
                            .map(|(s, r)| (Sender::Json(s), Receiver::ManyJson(r))),
                    }
                }};
            }
            match target {
                Target::Channel(ch) => open!(ch.call(method)),
                Target::Region(rc) => open!(rc.call(method)),
            }
        })??;
        let (sender, receiver) = opened;
        let call = Box::into_raw(Box::new(meridian_call {
            payload,
            rt: client.rt.clone(),
            sender: Some(sender),
            receiver,
            current: Vec::new(),
            ended: None,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(call_out, call) };
        Ok(())
    })
}

/// Sends one request message (`len` bytes, copied; JSON text for a JSON call, parsed here:
/// `MERIDIAN_BAD_JSON` if it does not parse, nothing sent). Waits while the server is slow
/// to read, up to the call's deadline. `MERIDIAN_INVALID_STATE` after
/// `meridian_call_close_send`; a failed send (the call ended: read its status with
/// `meridian_call_next`) returns the failure and closes the send side. Once the server has
/// ended the call without reading every request (it answered early), a request is
/// discarded and `MERIDIAN_OK` returned: the call's status comes with its response.
/// Blocking.
///
/// # Safety
/// `call` is live; `data` has `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_send(
    call: *mut meridian_call,
    data: *const u8,
    len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (c, data) = unsafe { (borrow_mut(call, "call")?, bytes(data, len, "data")?) };
        let json = if c.payload == MERIDIAN_PAYLOAD_JSON {
            Some(json::to_value(data)?)
        } else {
            None
        };
        let rt = c.rt.clone();
        let sender = c.sender.as_mut().ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the send side is closed",
            )
        })?;
        let sent = rt.block_on("call", async {
            match (sender, json) {
                (Sender::Raw(s), _) => s.send(&Bytes::copy_from_slice(data)).await,
                (Sender::Json(s), Some(v)) => s.send(&v).await,
                (Sender::Json(_), None) => Err(Status::internal("payload mismatch")),
            }
        })?;
        if let Err(status) = sent {
            c.sender = None;
            return Err(Fail::from(status));
        }
        Ok(())
    })
}

/// Closes the send side: the server sees the end of the requests. Harmless when already
/// closed. Not blocking.
///
/// # Safety
/// `call` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_close_send(call: *mut meridian_call) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let c = unsafe { borrow_mut(call, "call") }?;
        c.rt.check("call")?;
        if let Some(sender) = c.sender.take() {
            let _entered = c.rt.handle.enter();
            match sender {
                Sender::Raw(s) => s.finish(),
                Sender::Json(s) => s.finish(),
            }
        }
        Ok(())
    })
}

/// Waits for the next response message. `MERIDIAN_OK`: `*data_out` points to `*len_out`
/// bytes (JSON text for a JSON call, followed by a NUL not counted), owned by the call and
/// valid until the next `meridian_call_next` or `meridian_call_free`.
/// `MERIDIAN_STREAM_END`: the call ended successfully, no more messages (a
/// client-streaming call gives its one response, then `MERIDIAN_STREAM_END`). Any other
/// status: the call failed (text in `meridian_last_error`). After the end or an error,
/// every further call returns the same status. A client-streaming call's response comes
/// only after `meridian_call_close_send` (unless the server answers early). Blocking.
///
/// # Safety
/// `call` is live; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_next(
    call: *mut meridian_call,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let c = unsafe { borrow_mut(call, "call") }?;
        out_ptr(data_out, "data_out")?;
        out_ptr(len_out, "len_out")?;
        if let Some((status, text)) = &c.ended {
            return Err(Fail::new(*status, text.clone()));
        }
        let rt = c.rt.clone();
        let next: Result<Option<Result<Vec<u8>, Fail>>, Status> = rt.block_on("call", async {
            match &mut c.receiver {
                Receiver::OneRaw(r) => match r.take() {
                    Some(f) => f
                        .response()
                        .await
                        .map(|r| Some(Ok(nul_terminated(r.get_ref())))),
                    None => Ok(None),
                },
                Receiver::OneJson(r) => match r.take() {
                    Some(f) => f
                        .response()
                        .await
                        .map(|r| Some(json::from_value(r.get_ref()))),
                    None => Ok(None),
                },
                Receiver::ManyRaw(m) => {
                    m.message().await.map(|o| o.map(|b| Ok(nul_terminated(&b))))
                }
                Receiver::ManyJson(m) => m.message().await.map(|o| o.map(|v| json::from_value(&v))),
            }
        })?;
        let fail = match next {
            Ok(Some(Ok(body))) => {
                c.current = body;
                // SAFETY: checked non-NULL above; the body lives until the next call.
                return unsafe { body_out(&c.current, data_out, len_out) };
            }
            Ok(Some(Err(fail))) => return Err(fail),
            Ok(None) => Fail::new(meridian_status::MERIDIAN_STREAM_END, "the call ended"),
            Err(status) => Fail::from(status),
        };
        c.ended = Some((fail.status, fail.message.clone()));
        Err(fail)
    })
}

/// Frees a call, cancelling it on the server if it has not ended. NULL is harmless. In the
/// child of a `fork()`, a call opened before the fork is leaked instead.
///
/// # Safety
/// `call` is NULL or a call not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_free(call: *mut meridian_call) {
    boundary_void(|| {
        if !call.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_open_call, freed once.
            let mut call = unsafe { Box::from_raw(call) };
            // An open send side is reset, not finished: the handler must see a
            // cancellation, never a clean end of the requests.
            if call.ended.is_none() && call.rt.check("call").is_ok() {
                if let Some(sender) = call.sender.take() {
                    let _entered = call.rt.handle.enter();
                    let why = Status::cancelled("the caller freed the call");
                    match sender {
                        Sender::Raw(s) => s.cancel(&why),
                        Sender::Json(s) => s.cancel(&why),
                    }
                }
            }
            call.rt.clone().release(call);
        }
    })
}
