//! Frame I/O on one QUIC stream: reading frames with limits, framing DATA.

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::budget::{Charge, Exhausted};
use super::reset::status_for_reset;
use crate::status::Status;
use crate::transport::describe_connection_error;
use crate::wire::{self, Frame, FrameDecoder, FrameKind, WireError, WireLimits};

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
    /// The server shut down and closed the connection saying that no handler ran this
    /// stream's call ([`closed_before_run`]).
    ClosedBeforeRun,
    /// Buffering the bytes that arrived would overspend a buffer budget.
    Budget(Exhausted),
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
            RecvError::ClosedBeforeRun => {
                Status::unavailable("the server shut down before running the call").mark_not_run()
            }
            RecvError::Budget(e) => Status::resource_exhausted(e.to_string()),
        }
    }
}

/// A receive stream split into frames.
pub(crate) struct FramedRecv {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    eof: bool,
    /// On a server: the bytes this stream holds against its buffer budgets.
    charge: Option<Charge>,
    /// Whether frames handed out stay charged (a request held for the whole call) or
    /// their bytes are given back at once (streamed request messages).
    hold_taken: bool,
}

impl FramedRecv {
    pub(crate) fn new(recv: quinn::RecvStream, limits: WireLimits) -> Self {
        FramedRecv {
            recv,
            dec: FrameDecoder::new(limits),
            eof: false,
            charge: None,
            hold_taken: true,
        }
    }

    /// Charges every byte read from now on to `charge`'s pools (see [`super::budget`]);
    /// a read that would overspend them fails with [`RecvError::Budget`].
    pub(crate) fn with_charge(mut self, charge: Charge) -> Self {
        self.charge = Some(charge);
        self
    }

    /// From now on, frames handed out give their bytes back to the budget: the caller
    /// accounts for them (a streamed request message handed to its handler).
    pub(crate) fn release_taken(&mut self) {
        self.hold_taken = false;
        let buffered = self.dec.buffered();
        if let Some(c) = &mut self.charge {
            c.shrink_to(buffered);
        }
    }

    /// The next frame, `Ok(None)` at a clean end of stream.
    pub(crate) fn next_frame(
        &mut self,
    ) -> impl Future<Output = Result<Option<Frame>, RecvError>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next_frame(cx))
    }

    /// [`Self::next_frame`] as a poll. Written by hand rather than as an `async fn`: it runs
    /// several times on every call, and a poll has no state of its own to dispatch on.
    /// quinn's read future holds only its arguments, so one is made for each read.
    pub(crate) fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame>, RecvError>> {
        loop {
            if let Some(f) = self.dec.next_frame().map_err(RecvError::Wire)? {
                if !self.hold_taken {
                    let buffered = self.dec.buffered();
                    if let Some(c) = &mut self.charge {
                        c.shrink_to(buffered);
                    }
                }
                return Poll::Ready(Ok(Some(f)));
            }
            if self.eof {
                return Poll::Ready(if self.dec.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(RecvError::Wire(WireError::Truncated))
                });
            }
            // A partial frame does not keep its datagram alive while the rest is awaited.
            self.dec.spill();
            let read = std::pin::pin!(self.recv.read_chunk(READ_CHUNK, true)).poll(cx);
            let Poll::Ready(read) = read else {
                return Poll::Pending;
            };
            match read {
                Ok(Some(chunk)) => match &mut self.charge {
                    Some(c) => {
                        c.take(chunk.bytes.len()).map_err(RecvError::Budget)?;
                        // A server copies: it keeps a request for its whole call, and a
                        // slice would keep the datagram (or the receive batch) it came in
                        // alive while the budget counts only the request's bytes.
                        self.dec.extend(&chunk.bytes)
                    }
                    // A client takes a small chunk over without a copy: its frames are
                    // decoded and dropped (trailers, typed messages) or copied out at
                    // their size (raw responses, `DecodeAs::decode_response`).
                    None => self.dec.extend_bytes(chunk.bytes),
                },
                Ok(None) => self.eof = true,
                Err(e) => return Poll::Ready(Err(read_error(&self.recv, e))),
            }
        }
    }

    /// Reads the end of the stream if it has already arrived, without waiting, for a
    /// reader that has all it needs (a response's TRAILERS): a stream dropped before its
    /// end is read sends the peer a STOP_SENDING, an extra frame and extra work on every
    /// call. Bytes after the end of a response are not read (the call is over).
    pub(crate) fn read_end_if_arrived(&mut self) {
        if self.eof {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.recv.read_chunk(READ_CHUNK, true));
        if let Poll::Ready(Ok(None)) = read.poll(&mut cx) {
            self.eof = true;
        }
    }

    /// Asks the peer to stop sending, with an application code.
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(code.into());
    }
}

/// What a failed read of `recv` means for its call.
#[cold]
fn read_error(recv: &quinn::RecvStream, e: quinn::ReadError) -> RecvError {
    match e {
        quinn::ReadError::Reset(code) => RecvError::Reset(code.into_inner()),
        quinn::ReadError::ZeroRttRejected => RecvError::ZeroRttRejected,
        quinn::ReadError::ConnectionLost(e) if closed_before_run(&e, recv.id()) => {
            RecvError::ClosedBeforeRun
        }
        quinn::ReadError::ConnectionLost(e) => RecvError::Lost(describe_connection_error(&e)),
        e => RecvError::Lost(e.to_string()),
    }
}

/// Whether `e` is a server's graceful shutdown that vouches no handler ran the call on
/// `stream`: `CONNECTION_CLOSE(SHUTDOWN)` whose reason phrase gives the first stream that
/// did not run ([`wire::shutdown_reason`]), at or below `stream`.
pub(crate) fn closed_before_run(e: &quinn::ConnectionError, stream: quinn::StreamId) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(close)
            if [wire::reset::SHUTDOWN, wire::reset::RETIRED]
                .map(u64::from)
                .contains(&close.error_code.into_inner()) =>
        {
            wire::shutdown_not_run_from(&close.reason).is_some_and(|n| u64::from(stream) >= n)
        }
        _ => false,
    }
}

/// Frames one encoded message as DATA: a small header chunk and the payload itself, so a
/// large message is never copied.
pub(crate) fn data_chunks(payload: Bytes) -> [Bytes; 2] {
    let mut hdr = [0u8; 9];
    let mut at = &mut hdr[..];
    wire::put_frame_header(&mut at, FrameKind::Data, payload.len());
    let n = 9 - at.len();
    [Bytes::copy_from_slice(&hdr[..n]), payload]
}

/// Messages up to this size are copied behind their frame header (and, for a unary call,
/// next to the HEADERS or TRAILERS) into one buffer: one allocation and one chunk instead
/// of three, which costs more than copying a small message.
pub(crate) const INLINE_MESSAGE: usize = 4096;
