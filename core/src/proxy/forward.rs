//! Forwarding one call of each kind, with the hop's timing and cancellation carried through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{field, Instrument};

use super::upstream::Upstream;
use crate::client::{RequestSink, ServedBy, Streaming};
use crate::server::{CallContext, RequestStream, ResponseSink, UpstreamReport};
use crate::status::Status;
use crate::telemetry::TraceContext;
use crate::wire::Metadata;

/// One forwarded call's bookkeeping: when it reached the proxy, when the upstream call
/// started, and where its times are reported.
struct Hop<'a> {
    upstream: &'a Upstream,
    ctx: &'a CallContext,
    span: tracing::Span,
    started: Instant,
    upstream_started: Instant,
    /// The trace the caller sent, if any.
    parent: Option<TraceContext>,
    /// The upstream server that answered (`region/server-id@addr`), when known.
    served_by: Option<String>,
    /// This hop's own position in the trace, sent upstream as its `traceparent`: the
    /// caller's trace continued, or a new one when the caller sent none and the access
    /// log is on (so the proxy's and the server's lines can be matched).
    trace: Option<TraceContext>,
}

impl<'a> Hop<'a> {
    fn new(upstream: &'a Upstream, ctx: &'a CallContext, kind: &'static str) -> Hop<'a> {
        let now = Instant::now();
        let parent = if ctx.metadata().is_empty() {
            None
        } else {
            TraceContext::from_metadata(ctx.metadata())
        };
        let trace = match parent {
            Some(p) => Some(p.child()),
            None if upstream.access_log => Some(TraceContext::new_root()),
            None => None,
        };
        let span = tracing::debug_span!(
            "rpc.proxy",
            method = %ctx.method(),
            kind,
            code = field::Empty,
            proxy_us = field::Empty,
            upstream_us = field::Empty,
            server_us = field::Empty,
            trace_id = field::Empty,
            span_id = field::Empty,
            parent_span = field::Empty
        );
        if let (Some(t), false) = (&trace, span.is_disabled()) {
            span.record("trace_id", t.trace_id_hex());
            span.record("span_id", t.span_id_hex());
            if let Some(p) = &parent {
                span.record("parent_span", p.span_id_hex());
            }
        }
        Hop {
            upstream,
            ctx,
            span,
            started: now,
            upstream_started: now,
            parent,
            trace,
            served_by: None,
        }
    }

    fn upstream_starts(&mut self) {
        self.upstream_started = Instant::now();
    }

    /// Notes the upstream server that answered, for the access log (with the log off,
    /// nothing: no name is formatted on every forwarded call for no reader).
    fn answered_by(&mut self, s: &ServedBy) {
        if self.upstream.access_log {
            self.served_by = Some(format!("{}/{}@{}", s.region(), s.server_id(), s.addr()));
        }
    }

    /// Records the upstream call's outcome for the TRAILERS, the span and the counters.
    fn settle<T>(
        &self,
        result: Result<(T, Option<Duration>, Metadata), Status>,
    ) -> Result<T, Status> {
        let upstream = self.upstream_started.elapsed();
        self.upstream.calls.fetch_add(1, Ordering::Relaxed);
        let (result, server_time, metadata) = match result {
            Ok((msg, server_time, metadata)) => (Ok(msg), server_time, metadata),
            Err(s) => {
                self.upstream.failed.fetch_add(1, Ordering::Relaxed);
                (Err(s), None, Metadata::new())
            }
        };
        // Passed on to the caller, so it may send even a non-idempotent call elsewhere.
        let not_run = result.as_ref().is_err_and(Status::is_known_not_run);
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| crate::wire::Code::Ok);
        self.span.record("code", field::display(code));
        let inside = self.started.elapsed().saturating_sub(upstream);
        self.span.record("proxy_us", inside.as_micros() as u64);
        self.span.record("upstream_us", upstream.as_micros() as u64);
        if let Some(t) = server_time {
            self.span.record("server_us", t.as_micros() as u64);
        }
        if self.upstream.access_log {
            self.access_line(code, inside, upstream, server_time);
        }
        let mut report = UpstreamReport::new(upstream);
        report.server_time = server_time;
        report.metadata = metadata;
        report.not_run = not_run;
        self.ctx.report_upstream(report);
        result
    }
}

impl Hop<'_> {
    /// The proxy's access-log line for one forwarded call (target `meridian::access`).
    fn access_line(
        &self,
        code: crate::wire::Code,
        inside: Duration,
        upstream: Duration,
        server_time: Option<Duration>,
    ) {
        let hex =
            |t: Option<&TraceContext>, f: fn(&TraceContext) -> String| t.map(f).unwrap_or_default();
        tracing::info!(
            target: "meridian::access",
            method = self.ctx.method(),
            code = code.name(),
            peer = %self.ctx.peer(),
            duration_us = self.started.elapsed().as_micros() as u64,
            proxy_us = inside.as_micros() as u64,
            upstream_us = upstream.as_micros() as u64,
            server_us = server_time.map_or(0, |t| t.as_micros() as u64),
            trace_id = hex(self.trace.as_ref(), TraceContext::trace_id_hex),
            span_id = hex(self.trace.as_ref(), TraceContext::span_id_hex),
            parent_span = hex(self.parent.as_ref(), TraceContext::span_id_hex),
            upstream = self.served_by.as_deref().unwrap_or(""),
            "forwarded"
        );
    }
}

pub(super) async fn forward_unary(
    upstream: Arc<Upstream>,
    request: Bytes,
    ctx: CallContext,
) -> Result<Bytes, Status> {
    let mut hop = Hop::new(&upstream, &ctx, "unary");
    let call = upstream.call(&ctx, hop.trace.as_ref());
    hop.upstream_starts();
    let result = call
        .raw()
        .unary(&request)
        .instrument(hop.span.clone())
        .await;
    if let Some(s) = result.as_ref().ok().and_then(|r| r.served_by()) {
        hop.answered_by(s);
    }
    hop.settle(result.map(unpack))
}

fn unpack(r: crate::Response<Bytes>) -> (Bytes, Option<Duration>, Metadata) {
    let (server_time, metadata) = (r.server_time(), r.metadata().clone());
    (r.into_inner(), server_time, metadata)
}

pub(super) async fn forward_server_streaming(
    upstream: Arc<Upstream>,
    request: Bytes,
    ctx: CallContext,
    sink: ResponseSink<Bytes>,
) -> Result<(), Status> {
    let mut hop = Hop::new(&upstream, &ctx, "server_streaming");
    let call = upstream.call(&ctx, hop.trace.as_ref());
    hop.upstream_starts();
    let span = hop.span.clone();
    let result = async {
        let mut responses = call.raw().server_streaming(&request).await?;
        while let Some(msg) = responses.message().await? {
            sink.send(&msg).await?;
        }
        // Named at the end: by then the server's HELLO (its id and region) has come.
        hop.answered_by(&responses.served_by());
        Ok(ended(&responses))
    }
    .instrument(span)
    .await;
    hop.settle(result)
}

/// What a stream that ended with `OK` reported.
fn ended(responses: &Streaming<Bytes>) -> ((), Option<Duration>, Metadata) {
    (
        (),
        responses.server_time(),
        responses.trailers().cloned().unwrap_or_default(),
    )
}

/// The upstream request stream: reset (never finished) if dropped before the caller's own
/// request stream ended, so an upstream handler never takes a cut-off stream for a whole one.
struct UpstreamSink(Option<RequestSink<Bytes>>);

impl UpstreamSink {
    async fn send(&mut self, msg: &Bytes) -> Result<(), Status> {
        match &mut self.0 {
            Some(s) => s.send(msg).await,
            None => Err(Status::cancelled("the request stream has ended")),
        }
    }

    /// The upstream server ended the call without reading every request.
    fn closed_by_server(&self) -> bool {
        self.0.as_ref().is_some_and(RequestSink::closed_by_server)
    }

    fn finish(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish();
        }
    }

    fn cancel(&mut self, status: &Status) {
        if let Some(s) = self.0.take() {
            s.cancel(status);
        }
    }
}

impl Drop for UpstreamSink {
    fn drop(&mut self) {
        self.cancel(&Status::cancelled("the caller went away"));
    }
}

/// Passes the caller's request messages upstream until the caller finishes (then finishes
/// upstream). A broken caller stream cancels the upstream call and fails with its status;
/// an upstream that stops reading ends the pumping quietly (its status follows).
async fn pump_requests(
    requests: &mut RequestStream<Bytes>,
    sink: &mut UpstreamSink,
) -> Result<(), Status> {
    loop {
        match requests.message().await {
            Ok(Some(msg)) => {
                if sink.send(&msg).await.is_err() || sink.closed_by_server() {
                    return Ok(());
                }
            }
            Ok(None) => {
                sink.finish();
                return Ok(());
            }
            Err(status) => {
                sink.cancel(&status);
                return Err(status);
            }
        }
    }
}

pub(super) async fn forward_client_streaming(
    upstream: Arc<Upstream>,
    mut requests: RequestStream<Bytes>,
    ctx: CallContext,
) -> Result<Bytes, Status> {
    let mut hop = Hop::new(&upstream, &ctx, "client_streaming");
    let call = upstream.call(&ctx, hop.trace.as_ref());
    hop.upstream_starts();
    let result = async {
        let (sink, response) = call.raw().client_streaming().await?;
        let mut sink = UpstreamSink(Some(sink));
        // The upstream may answer before the caller has sent everything: its answer goes
        // back at once, and the caller's request stream is stopped (dropped) with it.
        let pump = pump_requests(&mut requests, &mut sink);
        let answer = response.response();
        tokio::pin!(pump, answer);
        tokio::select! {
            r = &mut pump => {
                r?;
                answer.await
            }
            r = &mut answer => r,
        }
    }
    .instrument(hop.span.clone())
    .await;
    if let Some(s) = result.as_ref().ok().and_then(|r| r.served_by()) {
        hop.answered_by(s);
    }
    hop.settle(result.map(unpack))
}

pub(super) async fn forward_bidi(
    upstream: Arc<Upstream>,
    mut requests: RequestStream<Bytes>,
    ctx: CallContext,
    out: ResponseSink<Bytes>,
) -> Result<(), Status> {
    let mut hop = Hop::new(&upstream, &ctx, "bidi");
    let call = upstream.call(&ctx, hop.trace.as_ref());
    hop.upstream_starts();
    let span = hop.span.clone();
    let result = async {
        let (sink, mut responses) = call.raw().bidi().await?;
        let mut sink = UpstreamSink(Some(sink));
        {
            let up = pump_requests(&mut requests, &mut sink);
            tokio::pin!(up);
            let mut up_done = false;
            let down = async {
                while let Some(msg) = responses.message().await? {
                    out.send(&msg).await?;
                }
                Ok::<_, Status>(())
            };
            tokio::pin!(down);
            loop {
                tokio::select! {
                    r = &mut up, if !up_done => {
                        r?;
                        up_done = true;
                    }
                    r = &mut down => {
                        r?;
                        break;
                    }
                }
            }
        }
        hop.answered_by(&responses.served_by());
        Ok(ended(&responses))
    }
    .instrument(span)
    .await;
    hop.settle(result)
}
