//! Streaming calls' handles: [`Streaming`], [`RequestSink`], [`ResponseFuture`].

use std::time::{Duration, Instant};

use super::open::{with_deadline, CallRecv};
use super::response::{CallTiming, Response, ServedBy};
use crate::call::{data_chunks, reset_for_status, status_for_reset, DecodeFn, EncodeFn};
use crate::codec::Codec;
use crate::status::Status;
use crate::wire::{reset, Code, Metadata};

/// Response messages of a server-streaming or bidirectional call.
///
/// Dropping it before the end cancels the call on the server.
pub struct Streaming<T> {
    pub(super) recv: CallRecv,
    pub(super) decode: DecodeFn<T>,
    pub(super) deadline: Option<Instant>,
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

impl<T> Streaming<T> {
    /// The next message; `Ok(None)` once the server ended the stream with `OK`.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        let decode = self.decode;
        let deadline = self.deadline;
        let r = with_deadline(deadline, std::pin::pin!(self.recv.message(decode))).await;
        if let Err(s) = &r {
            if s.code() == Code::DeadlineExceeded && !self.recv.finished {
                self.recv.finished = true;
                self.recv.recv.stop(reset::DEADLINE_EXCEEDED);
                if let Some(end) = self.recv.end.take() {
                    end.finish(Code::DeadlineExceeded);
                }
            }
        }
        r
    }

    /// Trailing metadata, available after `message` returned `Ok(None)`.
    pub fn trailers(&self) -> Option<&Metadata> {
        self.recv.trailers.as_ref().map(|t| &t.metadata)
    }

    /// Server time reported in the TRAILERS.
    pub fn server_time(&self) -> Option<Duration> {
        self.recv.trailers.as_ref().and_then(|t| t.server_time)
    }

    /// Where the time of the call went, available after `message` returned `Ok(None)`.
    pub fn timing(&self) -> Option<CallTiming> {
        let t = self.recv.trailers.as_ref()?;
        let total = self.recv.ended.unwrap_or_else(Instant::now) - self.recv.started;
        Some(CallTiming::new(total, t))
    }

    /// The server this stream comes from: its address and the id and region its HELLO
    /// announced (empty until the HELLO has arrived; through a proxy, the proxy's). Unlike
    /// [`Response::served_by`], a [`RegionClient`](crate::region::RegionClient)'s stream
    /// reports the HELLO's region, not the region it was routed to.
    pub fn served_by(&self) -> ServedBy {
        self.recv.served_by()
    }
}

/// Where a client-streaming or bidirectional call sends its requests.
///
/// Call [`RequestSink::finish`] when done; dropping the sink also ends the request stream.
///
/// A server may end the call before it has read every request (it answered early, or
/// refused with a status). From then on the server discards requests, and so does the
/// sink: [`RequestSink::send`] returns `Ok` without sending and
/// [`RequestSink::closed_by_server`] turns true. The call's outcome, success or error,
/// is its response's, as in gRPC.
pub struct RequestSink<T> {
    pub(super) send: quinn::SendStream,
    pub(super) codec: Codec,
    pub(super) max: usize,
    pub(super) encode: EncodeFn<T>,
    /// The call's deadline: a send blocked past it fails with DEADLINE_EXCEEDED.
    pub(super) deadline: Option<Instant>,
    /// The server stopped reading requests without an error code: it has ended the call.
    pub(super) closed_by_server: bool,
    /// Keeps the channel, and so its connection, alive while requests are sent.
    pub(super) _channel: std::sync::Arc<super::connection::ChannelInner>,
}

impl<T> std::fmt::Debug for RequestSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSink").finish_non_exhaustive()
    }
}

impl<T> RequestSink<T> {
    /// Sends one request message; waits while the server is slow to read, but not past
    /// the call's deadline: then it fails with DEADLINE_EXCEEDED and the request stream is
    /// reset (a message cut short cannot be finished later).
    ///
    /// Once the server has ended the call (see [`RequestSink::closed_by_server`]) a
    /// request is discarded and `Ok` returned: the call's status is its response's.
    pub async fn send(&mut self, msg: &T) -> Result<(), Status> {
        if self.closed_by_server {
            return Ok(());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = self.send.reset(reset::DEADLINE_EXCEEDED.into());
            return Err(Status::deadline_exceeded("deadline exceeded"));
        }
        let bytes = (self.encode)(self.codec, msg, self.max)?;
        let [hdr, payload] = data_chunks(bytes);
        let write = async { Ok(self.send.write_all_chunks(&mut [hdr, payload]).await) };
        let result = match with_deadline(self.deadline, std::pin::pin!(write)).await {
            Ok(Ok(())) => Ok(()),
            // Stopped without an error: the server has its answer and reads no more.
            Ok(Err(quinn::WriteError::Stopped(code)))
                if code.into_inner() == u64::from(reset::NO_ERROR) =>
            {
                self.closed_by_server = true;
                Ok(())
            }
            Ok(Err(quinn::WriteError::Stopped(code))) => Err(status_for_reset(code.into_inner())),
            Ok(Err(other)) => Err(Status::unavailable(format!("cannot send: {other}"))),
            Err(status) => Err(status),
        };
        if result
            .as_ref()
            .is_err_and(|s| s.code() == Code::DeadlineExceeded)
        {
            let _ = self.send.reset(reset::DEADLINE_EXCEEDED.into());
        }
        result
    }

    /// Whether the server has ended the call without reading every request: requests
    /// sent from now on are discarded, and the response carries the call's status.
    pub fn closed_by_server(&self) -> bool {
        self.closed_by_server
    }

    /// Ends the request stream.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }

    /// Abandons the call: the server's handler is cancelled.
    pub fn cancel(mut self, status: &Status) {
        let _ = self.send.reset(reset_for_status(status).into());
    }
}

/// The response of a client-streaming call.
pub struct ResponseFuture<T> {
    pub(super) recv: CallRecv,
    pub(super) decode: DecodeFn<T>,
    pub(super) deadline: Option<Instant>,
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> ResponseFuture<T> {
    /// Waits for the response.
    pub async fn response(mut self) -> Result<Response<T>, Status> {
        let recv = std::pin::pin!(self.recv.single_response(self.decode, None));
        with_deadline(self.deadline, recv).await
    }
}
