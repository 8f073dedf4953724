//! Ending a call: TRAILERS (after an optional reply) written within a bound, refusals that
//! say nothing ran, and the reset code echoed to a client that stopped the call. Kept apart
//! from the call's flow (call.rs) because the health check during a drain (health.rs)
//! ends its calls the same way.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::call::{data_chunks, ready_or_timeout, FramedRecv, INLINE_MESSAGE};
use crate::status::Status;
use crate::wire::{frame_len, put_frame_header, reset, FrameKind, Trailers};

/// What bounds a call's final write: its deadline when it has one, else
/// [`TransportConfig::response_write_timeout`](crate::TransportConfig) from the start of
/// the write.
#[derive(Clone, Copy)]
pub(super) struct WriteBound {
    pub(super) deadline: Option<Instant>,
    pub(super) timeout: Duration,
}

impl WriteBound {
    /// When a write starting now must have ended, and the reset code if it has not.
    fn until(self) -> (Instant, u32) {
        match self.deadline {
            Some(d) => (d, reset::DEADLINE_EXCEEDED),
            None => {
                let now = Instant::now();
                // A timeout too large for the clock: a year is as good as forever.
                let until = now
                    .checked_add(self.timeout)
                    .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
                (until, reset::CANCELLED)
            }
        }
    }
}

/// Writes TRAILERS (after an optional response message) and finishes the stream; returns
/// whether it did (not if the client stopped the stream, the write ran past its bound or
/// the connection is gone).
///
/// A client that stops reading cannot hold the call: past the bound the stream is reset
/// (`DEADLINE_EXCEEDED` at the deadline, `CANCELLED` after the write timeout) and the
/// reply's bytes are freed; a `STOP_SENDING` ends the write at once.
pub(super) fn finish_call(
    send: &mut quinn::SendStream,
    reply: Option<Bytes>,
    trailers: Trailers,
    bound: WriteBound,
) -> impl Future<Output = bool> + '_ {
    // The framing is done here, before the future is made: the future then holds the
    // frames alone, not the reply and the TRAILERS as well (an `async fn` would keep its
    // arguments beside their moved copies), which keeps every call's state smaller.
    let (mut chunks, n) = answer_chunks(reply, &trailers);
    drop(trailers);
    async move {
        // The write is polled before the clock, so bytes that fit go out even when the
        // bound has passed already (a DEADLINE_EXCEEDED answer, say), and a write that
        // completes at once (the common case) never reads the clock or makes a timer.
        let mut code = reset::CANCELLED;
        let until = || {
            let (until, c) = bound.until();
            code = c;
            Some(until)
        };
        let written = ready_or_timeout(send.write_all_chunks(&mut chunks[..n]), until).await;
        match written {
            Ok(Ok(())) => send.finish().is_ok(),
            Ok(Err(_)) => false,
            Err(()) => {
                let _ = send.reset(code.into());
                false
            }
        }
    }
}

/// The frames that answer a call: the common answer (a small reply, then the TRAILERS)
/// as one buffer of exactly its size, so one allocation and one chunk, the TRAILERS
/// encoded in place. A large reply is not copied: its DATA header, the reply and the
/// TRAILERS are three chunks.
fn answer_chunks(reply: Option<Bytes>, trailers: &Trailers) -> ([Bytes; 3], usize) {
    let tail = trailers.frame_len();
    match reply {
        Some(msg) if msg.len() <= INLINE_MESSAGE => {
            let mut out = BytesMut::with_capacity(frame_len(msg.len()) + tail);
            put_frame_header(&mut out, FrameKind::Data, msg.len());
            out.extend_from_slice(&msg);
            trailers.put_frame(&mut out);
            ([out.freeze(), Bytes::new(), Bytes::new()], 1)
        }
        Some(msg) => {
            let [hdr, payload] = data_chunks(msg);
            ([hdr, payload, trailers_alone(trailers, tail)], 3)
        }
        None => (
            [trailers_alone(trailers, tail), Bytes::new(), Bytes::new()],
            1,
        ),
    }
}

/// The TRAILERS frame alone, in a buffer of exactly its size (`len`).
fn trailers_alone(trailers: &Trailers, len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(len);
    trailers.put_frame(&mut out);
    out.freeze()
}

/// Refuses a call whose handler has not started because the server is stopping: TRAILERS
/// UNAVAILABLE with NOT_RUN tell the client that nothing ran, so it may send the call
/// elsewhere, and, unlike a reset, the server can tell when they were delivered. Returns
/// whether the stream was finished.
pub(super) fn refuse<'a>(
    send: &'a mut quinn::SendStream,
    rx: &mut FramedRecv,
    started: Instant,
    bound: WriteBound,
) -> impl Future<Output = bool> + 'a {
    rx.stop(reset::REFUSED);
    let status = Status::unavailable("the server is shutting down; the call did not run");
    let mut trailers = trailers_for(status, started.elapsed());
    trailers.not_run = true;
    finish_call(send, None, trailers, bound)
}

pub(super) fn trailers_for(status: Status, server_time: Duration) -> Trailers {
    // A handler's status never claims "not run": the handler did run, whatever the
    // status it passes on says about some other call. Only a proxy can vouch for that.
    let (code, message, metadata) = status.into_parts();
    Trailers {
        code,
        message,
        metadata,
        server_time: Some(server_time),
        proxy: None,
        not_run: false,
    }
}

/// The code a server resets its response with when the client stopped it with `code`
/// while the handler ran: the same, except REFUSED ("nothing ran", a lie by now) and codes
/// past 32 bits (no Meridian code), which become CANCELLED.
pub(super) fn echoed_reset(code: u64) -> u32 {
    u32::try_from(code)
        .ok()
        .filter(|&c| c != reset::REFUSED)
        .unwrap_or(reset::CANCELLED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_echoed_but_never_as_refused_or_past_32_bits() {
        assert_eq!(
            echoed_reset(u64::from(reset::DEADLINE_EXCEEDED)),
            reset::DEADLINE_EXCEEDED
        );
        assert_eq!(echoed_reset(u64::from(reset::REFUSED)), reset::CANCELLED);
        assert_eq!(echoed_reset(1 << 40), reset::CANCELLED);
        assert_eq!(echoed_reset(0x1234), 0x1234);
    }
}
