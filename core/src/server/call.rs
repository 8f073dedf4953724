//! One call from HEADERS to TRAILERS: reading requests, running the handler, writing responses, watching the deadline and the client.
//!
//! One concern, the flow of a call, in the order it happens. What it leans on lives beside
//! it: how a call's stream is ended (TRAILERS within a bound, refusals) in `respond.rs`, the
//! interceptor chain in `intercept.rs`, the access line and the health check while
//! draining in `health.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{field, Instrument};

use super::builder::MethodEntry;
use super::context::{CallContext, CancelState};
use super::handler::{RequestBody, ServerCall};
use super::health::access_line;
use super::intercept::{admit, ended, CallEnd, CallHead, Passed};
use super::respond::{echoed_reset, finish_call, refuse, trailers_for, WriteBound};
use super::shared::{OpenCall, ServedConnection, Shared};
use super::streams::Queued;
use super::{BoxFuture, RESPONSE_QUEUE};
use crate::call::budget::Charge;
use crate::call::{data_chunks, ready_or_timeout, CatchUnwind, FramedRecv, RecvError};
use crate::status::Status;
use crate::telemetry::metrics::MethodMetrics;
use crate::telemetry::TraceContext;
use crate::transport::zero_rtt;
use crate::wire::{reset, Code, FrameKind, HeadersRef, MethodKind, ProxyTime, WireError};

/// Counts a call in [`Shared::inflight`] while its handler may run.
struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `fut`, unless the server begins to stop first (`None`).
fn unless_stopping<'a, F: Future + 'a>(
    shared: &'a Shared,
    fut: F,
) -> UnlessStopping<F, impl Future<Output = ()> + 'a> {
    UnlessStopping {
        fut,
        stop: shared.stop_requested(),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`unless_stopping`]. A struct rather than an `async fn` with a
    /// `select!`: that would hold `fut` twice (the argument, then its moved copy), and
    /// this future is part of every call's state.
    struct UnlessStopping<F, S> {
        #[pin]
        fut: F,
        #[pin]
        stop: S,
    }
}

impl<F: Future, S: Future<Output = ()>> Future for UnlessStopping<F, S> {
    type Output = Option<F::Output>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        // The call first: an answer that is ready wins over a stop that is too.
        if let std::task::Poll::Ready(r) = this.fut.poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        this.stop.poll(cx).map(|()| None)
    }
}

enum Outcome {
    Reply(Result<Option<Bytes>, Status>),
    /// The stream is reset with this code: the client stopped it, or a response write was
    /// cut off by the deadline.
    Reset(u64),
    Lost,
}

/// Serves one call stream, from reading its HEADERS until its response is finished or
/// reset. Until then `open` counts it; a finished response's stream is then kept by the
/// connection until the client acknowledges it, so that a graceful shutdown does not close
/// the connection under a response still on its way.
pub(super) async fn serve_call(
    shared: Arc<Shared>,
    open: OpenCall,
    conn: Arc<ServedConnection>,
    peer: SocketAddr,
    confirmed: watch::Receiver<bool>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let finished = answer_call(&shared, &conn, peer, confirmed, &mut send, recv).await;
    if finished {
        conn.keep_until_delivered(send);
    }
    drop(open);
}

/// Reads the HEADERS and runs the call; returns whether the response stream was finished
/// (false if it was reset or the connection is gone).
async fn answer_call(
    shared: &Arc<Shared>,
    conn: &ServedConnection,
    peer: SocketAddr,
    confirmed: watch::Receiver<bool>,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> bool {
    let started = Instant::now();
    let early = zero_rtt::is_early(&recv);
    let limits = shared.transport.wire;
    let charge = Charge::new(conn.buffers.clone(), shared.buffers.clone());
    let mut rx = FramedRecv::new(recv, limits).with_charge(charge);
    // Until HEADERS name a deadline, writes are bounded by the write timeout.
    let bound = WriteBound {
        deadline: None,
        timeout: shared.transport.response_write_timeout,
    };

    let headers_timeout = shared.transport.headers_timeout;
    let first = {
        let first = ready_or_timeout(rx.next_frame(), || {
            Instant::now().checked_add(headers_timeout)
        });
        unless_stopping(shared, first).await
    };
    let Some(first) = first else {
        return refuse(send, &mut rx, started, bound).await;
    };
    let frame = match first {
        Ok(Ok(Some(f))) if f.kind == FrameKind::Headers => f,
        Ok(Ok(Some(f))) => {
            let status =
                Status::invalid_argument(format!("a call must start with HEADERS, got {}", f.kind));
            rx.stop(reset::PROTOCOL_ERROR);
            let trailers = trailers_for(status, started.elapsed());
            return finish_call(send, None, trailers, bound).await;
        }
        // FIN before any HEADERS: the response side is reset, never finished bare (a FIN
        // without TRAILERS would be a malformed response).
        Ok(Ok(None)) => {
            let _ = send.reset(reset::PROTOCOL_ERROR.into());
            return false;
        }
        Ok(Err(e)) => {
            let status = e.to_status();
            rx.stop(match e {
                RecvError::Budget(_) => crate::call::reset_for_status(&status),
                _ => reset::PROTOCOL_ERROR,
            });
            if matches!(
                e,
                RecvError::Lost(_) | RecvError::Reset(_) | RecvError::ClosedBeforeRun
            ) {
                // The client gave up before its HEADERS arrived: answer its reset with one.
                let _ = send.reset(reset::CANCELLED.into());
                return false;
            }
            let mut trailers = trailers_for(status, started.elapsed());
            // Refused for want of buffer space: no handler ran, another server may take it.
            trailers.not_run = matches!(e, RecvError::Budget(_));
            return finish_call(send, None, trailers, bound).await;
        }
        Err(_) => {
            rx.stop(reset::PROTOCOL_ERROR);
            let _ = send.reset(reset::PROTOCOL_ERROR.into());
            return false;
        }
    };
    // Decoded in place, and the method looked up at once: from then on the call names its
    // method with the method table's shared name, never a copy. The frame is dropped here:
    // kept, it would hold the whole first chunk read, which for a streamed request can be
    // far more than the HEADERS, and outside the buffer budgets once those messages are
    // handed over.
    let decoded = match HeadersRef::decode(&frame.payload, &limits) {
        Ok(h) => h,
        Err(e) => {
            let status = match e {
                WireError::TooLarge { .. } => Status::resource_exhausted(format!("HEADERS: {e}")),
                _ => Status::invalid_argument(format!("bad HEADERS: {e}")),
            };
            rx.stop(reset::PROTOCOL_ERROR);
            let trailers = trailers_for(status, started.elapsed());
            return finish_call(send, None, trailers, bound).await;
        }
    };
    let entry = shared.method(decoded.method);
    let unknown;
    let name: &str = match &entry {
        Some(e) => &e.name,
        None => {
            unknown = decoded.method.to_owned();
            &unknown
        }
    };
    let headers = HeadersRef {
        method: name,
        codec: decoded.codec,
        timeout: decoded.timeout,
        idempotent: decoded.idempotent,
        routing_key: decoded.routing_key,
        metadata: decoded.metadata,
    };
    drop(frame);

    shared.inflight.fetch_add(1, Ordering::AcqRel);
    shared.calls_total.fetch_add(1, Ordering::Relaxed);
    if early {
        shared.early_calls.fetch_add(1, Ordering::Relaxed);
    }
    let inflight = InflightGuard(shared.clone());
    let span = tracing::debug_span!(
        "rpc.server",
        method = %headers.method,
        code = field::Empty,
        duration_us = field::Empty,
        trace_id = field::Empty,
        parent_span = field::Empty
    );
    // Looked for only when a span or the access log will record it.
    let trace = if headers.metadata.is_empty() || (span.is_disabled() && !shared.access_log) {
        None
    } else {
        TraceContext::from_metadata(&headers.metadata)
    };
    if let (Some(t), false) = (&trace, span.is_disabled()) {
        span.record("trace_id", t.trace_id_hex());
        span.record("parent_span", t.span_id_hex());
    }
    let method_name = headers.method;
    let early_data = EarlyData { early, confirmed };
    let mut row = None;
    let mut passed = Passed::default();
    let call = Call {
        shared,
        conn,
        peer,
        early: early_data,
        headers,
        entry: entry.as_deref(),
        started,
        row: &mut row,
        passed: &mut passed,
    };
    // Without a subscriber the span records nothing, and wrapping the call's future in it
    // would only copy that future once more.
    let (code, finished) = if span.is_disabled() {
        run_call(call, rx, send).await
    } else {
        run_call(call, rx, send).instrument(span.clone()).await
    };
    let took = started.elapsed();
    if !shared.interceptors.is_empty() {
        ended(
            &shared.interceptors,
            &passed,
            &CallEnd {
                method: method_name,
                peer,
                code,
                duration: took,
            },
        );
    }
    drop(passed);
    if code != Code::Ok {
        shared.calls_failed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(row) = row {
        row.finish(code, took);
    }
    span.record("code", field::display(code));
    span.record("duration_us", took.as_micros() as u64);
    drop(inflight);
    if shared.access_log {
        access_line(method_name, code, peer, took, early, trace.as_ref());
    }
    finished
}

/// One call whose HEADERS were read.
struct Call<'a> {
    shared: &'a Shared,
    conn: &'a ServedConnection,
    peer: SocketAddr,
    early: EarlyData,
    headers: HeadersRef<'a>,
    /// The method called, if this server has it.
    entry: Option<&'a MethodEntry>,
    started: Instant,
    /// Set to the method's metrics row once the method is looked up (its in-flight gauge
    /// counts the call from then on).
    row: &'a mut Option<Arc<MethodMetrics>>,
    /// The interceptors that let the call through, and what they hold until it ends.
    passed: &'a mut Passed,
}

/// Whether a call arrived in 0-RTT data, and the connection's handshake state.
struct EarlyData {
    early: bool,
    confirmed: watch::Receiver<bool>,
}

/// Runs a call whose HEADERS were read: returns its status code and whether the response
/// stream was finished.
fn run_call<'a>(
    call: Call<'a>,
    mut rx: FramedRecv,
    send: &'a mut quinn::SendStream,
) -> impl Future<Output = (Code, bool)> + 'a {
    let Call {
        shared,
        conn,
        peer,
        mut early,
        mut headers,
        entry,
        started,
        row,
        passed,
    } = call;
    // Taken apart here, outside the future: inside, the parts would be held twice (as the
    // captured `call`, then as its moved-out fields), and this future is most of a call's
    // state.
    async move {
        // A timeout too large to add to the clock (the wire allows ~146 000 years) is no
        // deadline.
        let deadline = headers.timeout.and_then(|t| started.checked_add(t));
        let bound = WriteBound {
            deadline,
            timeout: shared.transport.response_write_timeout,
        };
        let metrics = match &entry {
            Some(e) => e
                .metrics
                .get_or_init(|| shared.method_metrics.row(Some(&e.info.name)))
                .clone(),
            None => shared.method_metrics.row(None),
        };
        metrics.start();
        *row = Some(metrics);
        let Some(entry) = entry else {
            rx.stop(reset::NO_ERROR);
            let status = Status::unimplemented(format!("unknown method {:?}", headers.method));
            // No handler ran: say so, so that any client may send the call elsewhere.
            let mut trailers = trailers_for(status, started.elapsed());
            trailers.not_run = true;
            let finished = finish_call(send, None, trailers, bound).await;
            return (Code::Unimplemented, finished);
        };
        let wire_limits = shared.transport.wire;

        // Replay safety: a call that came in 0-RTT data may be a replayed first flight. Only
        // methods this server declares idempotent may run before the handshake completes
        // (the client's own flag does not count: a replay could set it), and none at all when
        // client certificates are required, since those are checked at handshake end.
        if early.early && (!entry.info.idempotent || shared.client_auth) {
            let wait = async {
                let confirmed = early.confirmed.wait_for(|c| *c);
                let limit = shared.transport.handshake_timeout;
                matches!(tokio::time::timeout(limit, confirmed).await, Ok(Ok(_)))
            };
            match unless_stopping(shared, wait).await {
                Some(true) => {}
                None => {
                    return (
                        Code::Unavailable,
                        refuse(send, &mut rx, started, bound).await,
                    )
                }
                Some(false) => {
                    rx.stop(reset::REFUSED);
                    let _ = send.reset(reset::REFUSED.into());
                    return (Code::Unavailable, false);
                }
            }
        }

        // Unary and server-streaming calls carry exactly one request message; read it here so
        // the handler gets it whole.
        let streaming_request = matches!(
            entry.info.kind,
            MethodKind::ClientStreaming | MethodKind::Bidi
        );
        let single = if streaming_request {
            None
        } else {
            // The request must arrive within the deadline and the request timeout, so a peer
            // sending slowly (or never finishing) cannot hold its buffers.
            let limit = shared.transport.request_timeout;
            // Which bound comes first is settled only if the request is not there at once.
            let mut by_deadline = true;
            let until = || {
                let by_timeout = Instant::now().checked_add(limit);
                match (deadline, by_timeout) {
                    (Some(d), t) if t.is_none_or(|t| d <= t) => Some(d),
                    (_, Some(t)) => {
                        by_deadline = false;
                        Some(t)
                    }
                    (d, None) => d,
                }
            };
            // Awaited as one future, with no async block of its own around it: one state
            // machine fewer on every call.
            let read = unless_stopping(shared, ready_or_timeout(read_single(&mut rx), until)).await;
            let read = read.map(|read| match read {
                Ok(read) => read,
                Err(()) if by_deadline => Err(Status::deadline_exceeded("deadline exceeded")),
                Err(()) => Err(Status::deadline_exceeded(format!(
                    "the request did not arrive within the server's request timeout of {limit:?}"
                ))
                .mark_not_run()),
            });
            match read {
                Some(Ok(b)) => Some(b),
                Some(Err(status)) => {
                    let code = status.code();
                    // No handler has run: a request refused for want of buffer space or cut
                    // off by the request timeout may go to another server.
                    let not_run = status.is_known_not_run();
                    // Before the handler, INTERNAL only comes of broken framing.
                    rx.stop(match status.code() {
                        Code::Internal => reset::PROTOCOL_ERROR,
                        _ => crate::call::reset_for_status(&status),
                    });
                    let mut trailers = trailers_for(status, started.elapsed());
                    trailers.not_run = not_run;
                    return (code, finish_call(send, None, trailers, bound).await);
                }
                None => {
                    return (
                        Code::Unavailable,
                        refuse(send, &mut rx, started, bound).await,
                    )
                }
            }
        };
        // Mutual TLS only: the client's verified names, read once per connection.
        let identity = if shared.client_auth {
            conn.peer_identity()
        } else {
            None
        };
        // The interceptor chain, before anything of the call's own runs (the health check is
        // not intercepted).
        if !shared.interceptors.is_empty() && entry.info.name != super::HEALTH_METHOD {
            let mut head = CallHead {
                method: headers.method,
                metadata: &mut headers.metadata,
                deadline,
                peer,
                identity: identity.as_deref(),
            };
            if let Err(status) = admit(&shared.interceptors, &mut head, passed) {
                let code = status.code();
                rx.stop(reset::NO_ERROR);
                let trailers = trailers_for(status, started.elapsed());
                return (code, finish_call(send, None, trailers, bound).await);
            }
        }
        // The last moment to refuse: from here on the call's own code runs. The health check
        // is answered while the server drains (it changes nothing, and says "DRAINING").
        if !shared.may_start(conn, send.id()) && entry.info.name != super::HEALTH_METHOD {
            return (
                Code::Unavailable,
                refuse(send, &mut rx, started, bound).await,
            );
        }
        let body = match single {
            Some(b) => RequestBody::One(b),
            None => {
                // Streamed request messages are the handler's once handed over.
                rx.release_taken();
                RequestBody::Stream(rx)
            }
        };

        let streaming_response = matches!(
            entry.info.kind,
            MethodKind::ServerStreaming | MethodKind::Bidi
        );
        let (sink_tx, mut sink_rx) = if streaming_response {
            let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let ctx = CallContext {
            identity,
            method: entry.name.clone(),
            metadata: if headers.metadata.is_empty() {
                shared.no_metadata.clone()
            } else {
                Arc::new(headers.metadata)
            },
            deadline,
            peer,
            codec: headers.codec,
            idempotent: headers.idempotent,
            routing_key: headers.routing_key,
            early_data: early.early,
            confirmed: early.confirmed,
            state: Arc::new(CancelState::default()),
            budgets: Some([conn.buffers.clone(), shared.buffers.clone()]),
        };
        // The call keeps only what it reads at the end (trailers, an upstream report) and
        // cancels through: the rest of the context is the handler's.
        let state = ctx.state.clone();
        let call = ServerCall {
            ctx,
            body,
            sink: sink_tx,
            limits: shared.transport.value,
            max_message: wire_limits.max_message_size,
        };
        let mut handler = CatchUnwind((entry.handler)(call));
        // Fast path: most unary handlers finish on their first poll, and then there is no
        // cancellation or deadline to watch (watching costs a registration in the connection).
        let first = if sink_rx.is_none() {
            std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut handler).poll(cx))).await
        } else {
            std::task::Poll::Pending
        };
        let outcome = match first {
            std::task::Poll::Ready(r) => Outcome::Reply(r.unwrap_or_else(|panic| {
                tracing::error!(method = %entry.name, %panic, "handler panicked");
                Err(Status::internal("the handler panicked"))
            })),
            std::task::Poll::Pending => {
                let write_timeout = shared.transport.response_write_timeout;
                watch_call(
                    &mut handler,
                    send,
                    &mut sink_rx,
                    deadline,
                    write_timeout,
                    &entry.name,
                )
                .await
            }
        };
        // Anything still running for this call stops here.
        if !matches!(outcome, Outcome::Reply(Ok(_))) {
            state.cancel();
        }
        drop(handler);
        match outcome {
            Outcome::Reply(r) => {
                let (reply, status) = match r {
                    Ok(reply) => (reply, Status::new(Code::Ok, "")),
                    Err(s) => (None, s),
                };
                let code = status.code();
                let elapsed = started.elapsed();
                let mut trailers = trailers_for(status, elapsed);
                if let Some((extra, forwarded)) = state.take_extras() {
                    if !extra.is_empty() && trailers.metadata.is_empty() {
                        trailers.metadata = extra;
                    }
                    if let Some(f) = forwarded {
                        if trailers.metadata.is_empty() {
                            trailers.metadata = f.metadata;
                        }
                        trailers.server_time = f.server_time;
                        trailers.not_run = f.not_run && code != Code::Ok;
                        trailers.proxy = Some(ProxyTime {
                            inside: elapsed.saturating_sub(f.upstream),
                            upstream: f.upstream,
                        });
                    }
                }
                // Senders check their own limits: trailing metadata the client would refuse
                // becomes RESOURCE_EXHAUSTED, with no reply, rather than a bad TRAILERS.
                let size = trailers.metadata.byte_size();
                let limit = wire_limits.max_metadata_size;
                let (reply, trailers) = if size > limit {
                    let status = Status::resource_exhausted(format!(
                        "trailing metadata of {size} bytes exceeds the limit of {limit} bytes"
                    ));
                    (None, trailers_for(status, elapsed))
                } else {
                    (reply, trailers)
                };
                let code = trailers.code;
                (code, finish_call(send, reply, trailers, bound).await)
            }
            Outcome::Reset(code) => {
                // The client's STOP_SENDING code is echoed, except REFUSED ("nothing ran"),
                // which would be a lie once the handler has started, and codes past 32 bits,
                // which no Meridian code uses: both become CANCELLED.
                let _ = send.reset(echoed_reset(code).into());
                (crate::call::status_for_reset(code).code(), false)
            }
            Outcome::Lost => (Code::Unavailable, false),
        }
    }
}

/// Runs a handler that did not finish at once, watching for the client's cancellation and
/// the deadline, and forwarding streamed responses as they come.
async fn watch_call(
    handler: &mut CatchUnwind<BoxFuture<Result<Option<Bytes>, Status>>>,
    send: &mut quinn::SendStream,
    sink_rx: &mut Option<mpsc::Receiver<Queued>>,
    deadline: Option<Instant>,
    write_timeout: Duration,
    method: &str,
) -> Outcome {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let deadline_sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_sleep);

    let mut finished: Option<Result<Option<Bytes>, Status>> = None;
    loop {
        tokio::select! {
            biased;
            r = &mut stopped => {
                break match r {
                    Ok(Some(code)) => Outcome::Reset(code.into_inner()),
                    _ => Outcome::Lost,
                };
            }
            _ = &mut deadline_sleep => {
                break Outcome::Reply(Err(Status::deadline_exceeded("deadline exceeded")));
            }
            msg = next_response(sink_rx) => match msg {
                Some((bytes, _charge)) => {
                    // A write waits while the client's flow control is spent; it still ends
                    // at the deadline or the client's STOP_SENDING. A write cut off there
                    // leaves half a frame, so the stream is reset, not finished.
                    let mut chunks = data_chunks(bytes);
                    let write = send.write_all_chunks(&mut chunks);
                    tokio::select! {
                        biased;
                        w = write => match w {
                            Ok(()) => {}
                            Err(quinn::WriteError::Stopped(code)) => {
                                break Outcome::Reset(code.into_inner());
                            }
                            Err(_) => break Outcome::Lost,
                        },
                        r = &mut stopped => {
                            break match r {
                                Ok(Some(code)) => Outcome::Reset(code.into_inner()),
                                _ => Outcome::Lost,
                            };
                        }
                        _ = &mut deadline_sleep => {
                            break Outcome::Reset(u64::from(reset::DEADLINE_EXCEEDED));
                        }
                        // Without a deadline, one write may wait this long for the client.
                        _ = tokio::time::sleep(write_timeout) => {
                            break Outcome::Reset(u64::from(reset::CANCELLED));
                        }
                    }
                }
                None => {
                    *sink_rx = None;
                    if let Some(r) = finished.take() {
                        break Outcome::Reply(r);
                    }
                }
            },
            r = &mut *handler, if finished.is_none() => {
                let r = r.unwrap_or_else(|panic| {
                    tracing::error!(method = %method, %panic, "handler panicked");
                    Err(Status::internal("the handler panicked"))
                });
                // Streamed responses still queued go out before the trailers, unless the
                // handler failed.
                if sink_rx.is_none() || r.is_err() {
                    break Outcome::Reply(r);
                }
                finished = Some(r);
            }
        }
    }
}

async fn next_response(rx: &mut Option<mpsc::Receiver<Queued>>) -> Option<Queued> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the one request message of a unary or server-streaming call.
async fn read_single(rx: &mut FramedRecv) -> Result<Bytes, Status> {
    let msg = match rx.next_frame().await {
        Ok(Some(f)) if f.kind == FrameKind::Data => f.payload,
        Ok(Some(f)) => {
            return Err(Status::invalid_argument(format!(
                "unexpected {} frame in a request",
                f.kind
            )))
        }
        Ok(None) => return Err(Status::invalid_argument("the request has no message")),
        Err(e) => return Err(single_error(e)),
    };
    match rx.next_frame().await {
        Ok(None) => Ok(msg),
        Ok(Some(_)) => Err(Status::invalid_argument(
            "more than one request message for a method that takes one",
        )),
        Err(e) => Err(single_error(e)),
    }
}

/// The status of a request read that failed before its handler started: refused for want
/// of buffer space, it did not run, and another server may take it.
fn single_error(e: RecvError) -> Status {
    match e {
        RecvError::Budget(_) => e.to_status().mark_not_run(),
        e => e.to_status(),
    }
}
