//! Frame I/O on one QUIC stream, shared by the client and the server.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Codec, DecodeLimits};
use crate::status::Status;
use crate::wire::{self, reset, Frame, FrameDecoder, FrameKind, WireError, WireLimits};

/// Largest chunk taken from quinn in one read.
const READ_CHUNK: usize = 256 * 1024;

/// Why reading a stream stopped.
#[derive(Debug)]
pub(crate) enum RecvError {
    /// The peer broke the framing rules or a limit.
    Wire(WireError),
    /// The peer reset its side of the stream with this application code.
    Reset(u64),
    /// The connection is gone.
    Lost(String),
    /// The stream was sent in 0-RTT data that the server rejected: it never reached the
    /// server's application.
    ZeroRttRejected,
}

impl RecvError {
    /// The status a caller sees for this failure.
    pub(crate) fn to_status(&self) -> Status {
        match self {
            RecvError::Wire(e @ WireError::TooLarge { .. }) => {
                Status::resource_exhausted(e.to_string())
            }
            RecvError::Wire(e) => Status::internal(format!("protocol error: {e}")),
            RecvError::Reset(code) => status_for_reset(*code),
            RecvError::Lost(why) => Status::unavailable(format!("connection lost: {why}")),
            RecvError::ZeroRttRejected => Status::unavailable("the server rejected the 0-RTT data"),
        }
    }
}

/// The status matching a stream reset code received from the peer.
pub(crate) fn status_for_reset(code: u64) -> Status {
    match u32::try_from(code).unwrap_or(u32::MAX) {
        reset::CANCELLED => Status::cancelled("the peer cancelled the call"),
        reset::DEADLINE_EXCEEDED => Status::deadline_exceeded("deadline exceeded"),
        reset::REFUSED => Status::unavailable("the server refused the call before running it"),
        reset::TOO_LARGE => Status::resource_exhausted("message too large"),
        reset::PROTOCOL_ERROR => Status::internal("the peer reported a protocol error"),
        other => Status::unknown(format!("stream reset with code {other}")),
    }
}

/// The reset code that tells the peer why we abandoned a call.
pub(crate) fn reset_for_status(status: &Status) -> u32 {
    match status.code() {
        wire::Code::DeadlineExceeded => reset::DEADLINE_EXCEEDED,
        wire::Code::ResourceExhausted => reset::TOO_LARGE,
        _ => reset::CANCELLED,
    }
}

/// A receive stream split into frames.
pub(crate) struct FramedRecv {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    eof: bool,
}

impl FramedRecv {
    pub(crate) fn new(recv: quinn::RecvStream, limits: WireLimits) -> Self {
        FramedRecv {
            recv,
            dec: FrameDecoder::new(limits),
            eof: false,
        }
    }

    /// The next frame, `Ok(None)` at a clean end of stream.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Frame>, RecvError> {
        loop {
            if let Some(f) = self.dec.next_frame().map_err(RecvError::Wire)? {
                return Ok(Some(f));
            }
            if self.eof {
                return if self.dec.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(RecvError::Wire(WireError::Truncated))
                };
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.dec.extend(&chunk.bytes),
                Ok(None) => self.eof = true,
                Err(quinn::ReadError::Reset(code)) => {
                    return Err(RecvError::Reset(code.into_inner()))
                }
                Err(quinn::ReadError::ZeroRttRejected) => return Err(RecvError::ZeroRttRejected),
                Err(e) => return Err(RecvError::Lost(e.to_string())),
            }
        }
    }

    /// Asks the peer to stop sending, with an application code.
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(code.into());
    }
}

/// Frames one encoded message as DATA: a small header chunk and the payload itself, so a
/// large message is never copied.
pub(crate) fn data_chunks(payload: Bytes) -> [Bytes; 2] {
    let mut hdr = BytesMut::with_capacity(9);
    wire::put_frame_header(&mut hdr, FrameKind::Data, payload.len());
    [hdr.freeze(), payload]
}

/// Encodes a typed message for the wire, checking the size limit.
pub(crate) fn encode_typed<T: serde::Serialize>(
    codec: Codec,
    msg: &T,
    max: usize,
) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    codec::encode_message(codec, msg, &mut out)
        .map_err(|e| Status::internal(format!("cannot encode message: {e}")))?;
    check_size(out.len(), max)?;
    Ok(Bytes::from(out))
}

/// Decodes a typed message received from the peer.
pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(
    codec: Codec,
    bytes: Bytes,
    limits: &DecodeLimits,
) -> Result<T, Status> {
    codec::decode_message(codec, &bytes, limits)
        .map_err(|e| Status::invalid_argument(format!("cannot decode message: {e}")))
}

/// Checks an outgoing message against the message size limit.
pub(crate) fn check_size(len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "message of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// Turns a message into wire bytes, for typed or raw payloads.
pub(crate) type EncodeFn<T> = fn(Codec, &T, usize) -> Result<Bytes, Status>;
/// Turns wire bytes into a message, for typed or raw payloads.
pub(crate) type DecodeFn<T> = fn(Codec, Bytes, &DecodeLimits) -> Result<T, Status>;

pub(crate) fn encode_raw(_: Codec, msg: &Bytes, max: usize) -> Result<Bytes, Status> {
    check_size(msg.len(), max)?;
    Ok(msg.clone())
}

pub(crate) fn decode_raw(_: Codec, bytes: Bytes, _: &DecodeLimits) -> Result<Bytes, Status> {
    Ok(bytes)
}

/// Polls a future and turns a panic inside it into an error, so a panicking handler fails
/// its own call and nothing else.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = Pin::new(&mut self.0);
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Poll::Ready(Err(msg))
            }
        }
    }
}
