//! Opening a call's stream and reading its answer: HEADERS, the first flight, deadlines, TRAILERS.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, field};

use super::connection::ChannelInner;
use super::response::{CallTiming, Response, ServedBy};
use super::retry::{Failure, Reach, Retry};
use super::streaming::Streaming;
use crate::call::{
    closed_before_run, data_chunks, decode_raw, status_for_reset, DecodeFn, FramedRecv, RecvError,
    INLINE_MESSAGE,
};
use crate::codec::Codec;
use crate::status::Status;
use crate::transport::describe_connection_error;
use crate::wire::{
    frame_len, put_frame_header, reset, Code, Frame, FrameKind, Metadata, RequestHeaders, Trailers,
    WireLimits,
};

/// What follows a call's HEADERS.
pub(super) enum Request {
    /// One request message, then FIN (unary and server-streaming calls).
    Single(Bytes),
    /// Requests come later through a sink (client-streaming and bidi calls).
    Stream,
}

/// Whether a call may go out in 0-RTT data before the handshake completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Early {
    /// If it is idempotent (safe if replayed): by the caller's flag, else the server's
    /// catalog, looked up only when the handshake is in fact still running. For a first
    /// attempt of a unary call.
    IfIdempotent(Option<bool>),
    /// No: wait for the handshake.
    Never,
}

/// Opens a stream and writes HEADERS (plus the request and FIN for single-request calls).
///
/// While a resumed connection's handshake is still running, only an idempotent call with
/// [`Early::IfIdempotent`] goes out in 0-RTT data; any other waits for the handshake.
/// `reach` learns when the stream is open, from which moment the call may reach the server.
/// Returns the call's sending side and its receive stream, which the caller makes into a
/// [`CallRecv`] where it keeps it ([`CallRecv::new`]): returned through this future and
/// the caller's, the receiving half (some 500 bytes) would be copied at each step.
pub(super) async fn open_call(
    inner: &Arc<ChannelInner>,
    headers: &mut RequestHeaders,
    deadline: Option<Instant>,
    request: Request,
    early: Early,
    wait_for_ready: bool,
    reach: Option<&Reach>,
) -> Result<(OpenCall, Opened), Failure> {
    // A call may fail without waiting for anything (a connection known to be down): it
    // still counts against the task's cooperative budget, so a caller looping on such
    // calls yields to the runtime now and then instead of holding its thread (and the
    // runtime's timers) forever.
    tokio::task::coop::consume_budget().await;
    inner.stats.calls_started.fetch_add(1, Ordering::Relaxed);
    let (size, limit) = (headers.metadata.byte_size(), inner.wire.max_metadata_size);
    if size > limit {
        return Err(Status::resource_exhausted(format!(
            "request metadata of {size} bytes exceeds the limit of {limit} bytes"
        ))
        .into());
    }
    // Written out rather than awaited through a helper, which would be one more state
    // machine on every call: waiting for a connection is rare, and boxed.
    let conn = match inner.current() {
        Some(conn) => Ok(conn),
        None => Box::pin(inner.wait_for_connection(wait_for_ready)).await,
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(status) => {
            // Failing fast, without any I/O: yield once, so a caller that loops on failing
            // calls cannot starve the runtime (its timers included).
            tokio::task::yield_now().await;
            return Err(Failure {
                status,
                retry: Retry::NotStarted,
            });
        }
    };
    let may_go_early = early;
    let mut early = !conn.handshake_done();
    // A reconnection whose handshake is overdue (the server is likely gone) takes no more
    // calls, early or not, unless they wait for ready.
    let overdue = conn
        .reconnected_at
        .is_some_and(|t| Instant::now() >= t + inner.reconnect_wait);
    if early && overdue && !wait_for_ready {
        return Err(Failure {
            status: Status::unavailable(format!(
                "cannot connect to {}: no handshake after {:?}",
                inner.addr, inner.reconnect_wait
            )),
            retry: Retry::NotStarted,
        });
    }
    if early {
        let replayable = match may_go_early {
            Early::IfIdempotent(explicit) => {
                explicit.unwrap_or_else(|| inner.catalog().is_idempotent(&headers.method))
            }
            Early::Never => false,
        };
        if replayable {
            inner.stats.early_calls.fetch_add(1, Ordering::Relaxed);
        } else {
            // A resumed connection to a server that has gone never completes its
            // handshake: unless waiting for ready, wait only as long as for any
            // reconnection.
            // Rare (a resumed connection, a call that may not go early): boxed, so its
            // timer does not enlarge the future of every call.
            let waited = Box::pin(async {
                let handshake = conn.wait_handshake();
                let bound = conn.reconnected_at.filter(|_| !wait_for_ready);
                if let Some(since) = bound {
                    let until = since + inner.reconnect_wait;
                    tokio::time::timeout_at(until.into(), handshake)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::unavailable(format!(
                                "cannot connect to {}: no handshake after {:?}",
                                inner.addr, inner.reconnect_wait
                            )))
                        })
                } else {
                    handshake.await
                }
            })
            .await;
            waited.map_err(|status| Failure {
                status,
                retry: Retry::NotStarted,
            })?;
            early = false;
        }
    }
    let opened = {
        let mut open = std::pin::pin!(conn.quic.open_bi());
        match std::future::poll_fn(|cx| Poll::Ready(open.as_mut().poll(cx))).await {
            Poll::Ready(r) => r.map_err(|e| stream_lost(&e)),
            Poll::Pending => Box::pin(wait_for_stream_credit(inner, &conn.quic, open)).await,
        }
    };
    let (mut send, recv) = opened.map_err(|status| Failure {
        status,
        retry: Retry::NotStarted,
    })?;
    if let Some(reach) = reach {
        reach.opened();
    }
    // The time left now, after connecting and waiting for stream credit.
    headers.timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let started = Instant::now();
    let finish = matches!(request, Request::Single(_));
    let written = match request {
        // HEADERS and a small request's DATA leave together, as one buffer.
        Request::Single(msg) if msg.len() <= INLINE_MESSAGE => {
            // Both frames encoded in place, in a buffer of exactly their size.
            let mut one = BytesMut::with_capacity(headers.frame_len() + frame_len(msg.len()));
            headers.put_frame(&mut one);
            put_frame_header(&mut one, FrameKind::Data, msg.len());
            one.extend_from_slice(&msg);
            send.write_all_chunks(&mut [one.freeze()]).await
        }
        Request::Single(msg) => {
            let head = headers.to_frame().freeze();
            let [hdr, payload] = data_chunks(msg);
            send.write_all_chunks(&mut [head, hdr, payload]).await
        }
        Request::Stream => {
            let head = headers.to_frame().freeze();
            send.write_all_chunks(&mut [head]).await
        }
    };
    let opened = Opened { recv, started };
    if let Err(e) = written {
        let retry = match &e {
            quinn::WriteError::ZeroRttRejected => Retry::EarlyRejected,
            quinn::WriteError::Stopped(code) if code.into_inner() == u64::from(reset::REFUSED) => {
                Retry::NotStarted
            }
            quinn::WriteError::ConnectionLost(lost) if closed_before_run(lost, send.id()) => {
                Retry::NotStarted
            }
            quinn::WriteError::ConnectionLost(_) => Retry::MaybeStarted,
            _ => Retry::No,
        };
        // The server may have refused the request (too large, unknown method) and said
        // why in its TRAILERS; prefer its status over the write error.
        let status = Box::pin(async {
            let mut recv = CallRecv::new(opened, inner, headers.codec, deadline);
            recv.failure_after_write(e).await
        })
        .await;
        return Err(Failure { status, retry });
    }
    if finish {
        let _ = send.finish();
    }
    // A call in the first flight of a reconnection: if the server has gone, the handshake
    // never completes; the call gives up when the reconnect wait has passed.
    let overdue = conn
        .reconnected_at
        .filter(|_| early && !wait_for_ready)
        .map(|since| (conn.handshake.clone(), since + inner.reconnect_wait));
    let call = OpenCall {
        send: Some(send),
        codec: headers.codec,
        deadline,
        early,
        overdue,
        completed: false,
    };
    Ok((call, opened))
}

/// A call's receive stream, just opened, and when its HEADERS were written.
pub(super) struct Opened {
    recv: quinn::RecvStream,
    started: Instant,
}

fn ok_trailers() -> Trailers {
    Trailers {
        code: Code::Ok,
        message: String::new(),
        metadata: Metadata::new(),
        server_time: None,
        proxy: None,
        not_run: false,
    }
}

pub(super) fn finish_span<T>(
    span: &tracing::Span,
    inner: &ChannelInner,
    result: &Result<T, Status>,
    started: Instant,
) {
    let code = match result {
        Ok(_) => Code::Ok,
        Err(s) => {
            inner.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
            s.code()
        }
    };
    if span.is_disabled() {
        // No subscriber: nothing to record, and no clock to read for it.
        return;
    }
    span.record("code", field::display(code));
    span.record("duration_us", started.elapsed().as_micros() as u64);
}

/// `fut`, cut off with DEADLINE_EXCEEDED at `deadline`. `fut` comes pinned by the caller
/// (`std::pin::pin!(...)` where it is made): taken by value, a call's multi-KB future
/// would take room twice in this one, and be copied whole at each move.
pub(super) async fn with_deadline<T, F>(
    deadline: Option<Instant>,
    fut: Pin<&mut F>,
) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded())),
        None => fut.await,
    }
}

/// The status of a call cut off by its deadline.
#[cold]
pub(super) fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded")
}

/// No stream could be opened at once: the server's concurrent stream limit is reached on
/// this connection. Takes a stream on an extra connection that has credit now; else waits
/// for the server to grant more on this one, as servers do when a connection gets busy
/// ([`TransportConfig::initial_stream_credit`](crate::TransportConfig)), up to two round
/// trips plus [`TransportConfig::stream_credit_grace`](crate::TransportConfig);
/// then opens an extra connection if allowed, rather than wait behind the calls in
/// flight; else goes on waiting, and looks at the extra connections again after periods
/// twice as long each time (up to a second). Waits are counted and traced rather than
/// silent.
async fn wait_for_stream_credit(
    inner: &ChannelInner,
    quic: &quinn::Connection,
    mut open: Pin<&mut quinn::OpenBi<'_>>,
) -> Result<(quinn::SendStream, quinn::RecvStream), Status> {
    if let Some(pair) = inner.extra_stream(false).await {
        return Ok(pair);
    }
    inner
        .stats
        .stream_credit_waits
        .fetch_add(1, Ordering::Relaxed);
    let waited = Instant::now();
    debug!(addr = %inner.addr, "waiting for stream credit: the server's concurrent stream limit is reached");
    // With extra connections allowed, look at them again after each period (doubling, up
    // to a second, so that many waiting calls do not keep polling them): one dialled
    // meanwhile, or one whose calls finished, may have credit first.
    let mut grace = quic.rtt().saturating_mul(2) + inner.credit_grace;
    let r = loop {
        if inner.max_extra == 0 {
            break open.await;
        }
        if let Ok(r) = tokio::time::timeout(grace, open.as_mut()).await {
            break r;
        }
        if let Some(pair) = inner.extra_stream(true).await {
            return Ok(pair);
        }
        grace = grace
            .saturating_mul(2)
            .min(Duration::from_secs(1))
            .max(grace);
    };
    debug!(
        waited_us = waited.elapsed().as_micros() as u64,
        "stream credit granted"
    );
    r.map_err(|e| stream_lost(&e))
}

/// The status of a call whose stream could not be opened: the connection is gone.
#[cold]
fn stream_lost(e: &quinn::ConnectionError) -> Status {
    Status::unavailable(format!("connection lost: {}", describe_connection_error(e)))
}

/// Resets whatever is still open when a call is abandoned.
pub(super) struct OpenCall {
    send: Option<quinn::SendStream>,
    pub(super) codec: Codec,
    deadline: Option<Instant>,
    /// Sent in 0-RTT data.
    pub(super) early: bool,
    /// For an early call on a reconnection: the handshake, and when it is overdue.
    overdue: Option<(tokio::sync::watch::Receiver<Option<bool>>, Instant)>,
    completed: bool,
}

impl OpenCall {
    pub(super) fn take_send(&mut self) -> quinn::SendStream {
        // Taken at most once, right after `open_call` filled it.
        self.send.take().expect("send half taken once")
    }

    pub(super) fn done(&mut self) {
        self.completed = true;
    }

    /// Whether the call went in the first flight of a reconnection, and so may find its
    /// handshake overdue ([`Self::handshake_overdue`]).
    pub(super) fn may_be_overdue(&self) -> bool {
        self.overdue.is_some()
    }

    /// Resolves if the call went in the first flight of a reconnection whose handshake
    /// has not completed within the reconnect wait (the server is likely gone); pending
    /// otherwise.
    pub(super) async fn handshake_overdue(&mut self) {
        let Some((mut handshake, until)) = self.overdue.take() else {
            return std::future::pending().await;
        };
        let done = handshake.wait_for(|h| h.is_some());
        if tokio::time::timeout_at(until.into(), done).await.is_ok() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if !self.completed {
            if let Some(s) = &mut self.send {
                let _ = s.reset(abandon_code(self.deadline).into());
            }
        }
    }
}

/// The receiving half of a call.
pub(super) struct CallRecv {
    pub(super) recv: FramedRecv,
    pub(super) trailers: Option<Trailers>,
    value: crate::codec::DecodeLimits,
    wire: WireLimits,
    codec: Codec,
    deadline: Option<Instant>,
    pub(super) finished: bool,
    /// How the last failure bears on sending the call again.
    pub(super) retry: Retry,
    /// When the HEADERS were written, and when the TRAILERS arrived.
    pub(super) started: Instant,
    pub(super) ended: Option<Instant>,
    /// Something the caller's layer keeps until the call ends (a region client's claim on
    /// the server, so an open stream counts as load): dropped when the TRAILERS or a
    /// failure arrive, or with the call.
    pub(super) hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The interceptors that let a streaming call through: told how it ended when its
    /// TRAILERS or a failure arrive, or when the caller drops it.
    pub(super) end: Option<super::Intercepted>,
    /// Keeps the channel, and so its connection, alive while the response is read: a
    /// stream outlives the handle that opened it.
    _channel: Arc<ChannelInner>,
}

impl CallRecv {
    /// The receiving half of a call that [`open_call`] opened on `inner`'s connection.
    pub(super) fn new(
        opened: Opened,
        inner: &Arc<ChannelInner>,
        codec: Codec,
        deadline: Option<Instant>,
    ) -> CallRecv {
        CallRecv {
            recv: FramedRecv::new(opened.recv, inner.wire),
            trailers: None,
            value: inner.value,
            wire: inner.wire,
            codec,
            deadline,
            finished: false,
            retry: Retry::No,
            started: opened.started,
            ended: None,
            hold: None,
            end: None,
            _channel: inner.clone(),
        }
    }

    /// The next response message; `Ok(None)` after an `OK` TRAILERS.
    pub(super) fn message<'a, T: 'a>(
        &'a mut self,
        decode: DecodeFn<T>,
    ) -> impl Future<Output = Result<Option<T>, Status>> + 'a {
        std::future::poll_fn(move |cx| self.poll_message(cx, decode))
    }

    /// [`Self::message`] as a poll: one read of the response stream, then settling the call
    /// if that read ended it. A poll rather than an `async fn`, so that each reader (a
    /// stream, or a unary call's two reads) has no state machine between it and quinn.
    /// Inlined into each reader: as a call of its own it cost the unary client some 35
    /// instruction-cache misses per call (callgrind_per_call, 597-608 against 559-561).
    #[inline(always)]
    fn poll_message<T>(
        &mut self,
        cx: &mut Context<'_>,
        decode: DecodeFn<T>,
    ) -> Poll<Result<Option<T>, Status>> {
        let result = if self.finished {
            Ok(None)
        } else {
            let Poll::Ready(read) = self.recv.poll_next_frame(cx) else {
                return Poll::Pending;
            };
            self.take_frame(read, decode)
        };
        self.settle_if_finished(&result);
        Poll::Ready(result)
    }

    /// Once the call has ended (TRAILERS or a failure), lets go of what the caller's layer
    /// held for it and tells the interceptors how it ended.
    fn settle_if_finished<T>(&mut self, result: &Result<Option<T>, Status>) {
        if self.finished {
            self.hold = None;
            super::settle(self.end.take(), result);
        }
    }

    /// What one read of the response stream gives: a message, `Ok(None)` after `OK`
    /// TRAILERS, or the call's failure.
    fn take_frame<T>(
        &mut self,
        read: Result<Option<Frame>, RecvError>,
        decode: DecodeFn<T>,
    ) -> Result<Option<T>, Status> {
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.finished = true;
                return Err(Status::internal("the response ended without TRAILERS"));
            }
            Err(e) => return Err(self.failed(e)),
        };
        match frame.kind {
            FrameKind::Data if self.trailers.is_none() => {
                decode(self.codec, frame.payload, &self.value).map(Some)
            }
            FrameKind::Trailers => {
                let t = Trailers::decode(&frame.payload, &self.wire)
                    .map_err(|e| Status::internal(format!("bad TRAILERS: {e}")))?;
                self.finished = true;
                self.ended = Some(Instant::now());
                self.recv.read_end_if_arrived();
                if t.code != Code::Ok {
                    let status = Status::new(t.code, t.message)
                        .with_metadata(t.metadata)
                        .mark_answered();
                    return Err(if t.not_run {
                        status.mark_not_run()
                    } else {
                        status
                    });
                }
                self.trailers = Some(t);
                Ok(None)
            }
            other => {
                self.finished = true;
                self.recv.stop(reset::PROTOCOL_ERROR);
                Err(Status::internal(format!(
                    "unexpected {other} frame in a response"
                )))
            }
        }
    }

    /// A read of the response stream failed: the call has ended, and how it failed bears
    /// on sending it again.
    #[cold]
    fn failed(&mut self, e: RecvError) -> Status {
        self.finished = true;
        self.retry = match &e {
            RecvError::ZeroRttRejected => Retry::EarlyRejected,
            RecvError::ClosedBeforeRun => Retry::NotStarted,
            RecvError::Reset(code) if *code == u64::from(reset::REFUSED) => Retry::NotStarted,
            RecvError::Lost(_) => Retry::MaybeStarted,
            RecvError::Wire(_) | RecvError::Reset(_) | RecvError::Budget(_) => Retry::No,
        };
        e.to_status()
    }

    /// The status of a unary call that did not get exactly one response: when the server's
    /// HELLO lists `method` as a streaming method, FAILED_PRECONDITION saying so (the
    /// caller used the wrong kind of call); otherwise INTERNAL with `what`.
    fn not_one_response(&self, method: Option<&str>, what: &str) -> Status {
        let kind = method.and_then(|m| {
            let hello = self._channel.hello.borrow();
            let info = hello.as_ref()?.methods.iter().find(|i| i.name == m)?;
            Some(info.kind)
        });
        let kind = match kind {
            Some(crate::wire::MethodKind::ServerStreaming) => "server-streaming",
            Some(crate::wire::MethodKind::ClientStreaming) => "client-streaming",
            Some(crate::wire::MethodKind::Bidi) => "bidirectional streaming",
            Some(crate::wire::MethodKind::Unary) | None => return Status::internal(what),
        };
        Status::failed_precondition(format!(
            "{:?} is a {kind} method and was called as unary ({what}); call it as a stream",
            method.unwrap_or_default()
        ))
    }

    /// Exactly one response message, then `OK` TRAILERS. `method`, when given, names the
    /// method called, so that a streaming method called as unary is reported as such.
    pub(super) async fn single_response<T>(
        &mut self,
        decode: DecodeFn<T>,
        method: Option<&str>,
    ) -> Result<Response<T>, Status> {
        let Some(msg) = self.message(decode).await? else {
            return Err(self.not_one_response(method, "the server sent no response message"));
        };
        if self.message(decode).await?.is_some() {
            return Err(self.not_one_response(method, "the server sent more than one response"));
        }
        let t = self.trailers.take().unwrap_or_else(ok_trailers);
        let total = self.ended.unwrap_or_else(Instant::now) - self.started;
        Ok(Response {
            message: msg,
            timing: CallTiming::new(total, &t),
            metadata: t.metadata,
            served_by: Some(self.served_by()),
        })
    }

    /// The server at the other end of this call's connection, as its HELLO named it.
    pub(super) fn served_by(&self) -> ServedBy {
        ServedBy {
            addr: self._channel.addr,
            hello: self._channel.hello.borrow().clone(),
            routed_region: None,
        }
    }

    /// The status to report when writing the request failed.
    async fn failure_after_write(&mut self, e: quinn::WriteError) -> Status {
        let read = tokio::time::timeout(Duration::from_secs(2), self.message(decode_raw)).await;
        match (read, &e) {
            (Ok(Err(status)), _) => status,
            (_, quinn::WriteError::Stopped(code)) => status_for_reset(code.into_inner()),
            (_, quinn::WriteError::ConnectionLost(lost)) => Status::unavailable(format!(
                "cannot send the request: connection lost: {}",
                describe_connection_error(lost)
            )),
            _ => Status::unavailable(format!("cannot send the request: {e}")),
        }
    }

    pub(super) fn into_streaming<T>(
        self,
        decode: DecodeFn<T>,
        deadline: Option<Instant>,
    ) -> Streaming<T> {
        Streaming {
            recv: self,
            decode,
            deadline,
        }
    }
}

impl Drop for CallRecv {
    fn drop(&mut self) {
        if !self.finished {
            self.recv.stop(abandon_code(self.deadline));
        }
        if let Some(end) = self.end.take() {
            end.finish(match abandon_code(self.deadline) {
                reset::DEADLINE_EXCEEDED => Code::DeadlineExceeded,
                _ => Code::Cancelled,
            });
        }
    }
}

/// The code that tells the server why an unfinished call was abandoned.
fn abandon_code(deadline: Option<Instant>) -> u32 {
    match deadline {
        Some(d) if Instant::now() >= d => reset::DEADLINE_EXCEEDED,
        _ => reset::CANCELLED,
    }
}
