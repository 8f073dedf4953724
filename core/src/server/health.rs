//! What a server tells its operators: the health method every server answers (also while
//! it drains), the access-log line of each call, and its figures as a metrics source.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::respond::{finish_call, trailers_for, WriteBound};
use super::shared::{OpenCall, Shared};
use super::Server;
use crate::call::FramedRecv;
use crate::status::Status;
use crate::telemetry::{MetricsSource, MetricsWriter, TraceContext};
use crate::wire::{reset, Code, FrameKind, RequestHeaders};

/// The health method every server serves (unary, idempotent; not announced in the HELLO
/// catalog, since every server has it: call it on a [`Channel`](crate::Channel)). Its request is a method
/// name, or `""` for the server as a whole; its answer is `"SERVING"`, `"NOT_SERVING"`
/// ([`Server::set_serving`]) or `"DRAINING"` (the server is shutting down: the check is
/// still answered while calls drain), or `NOT_FOUND` for a method the server does not
/// serve. `meridian probe` and load balancers use it.
pub const HEALTH_METHOD: &str = "meridian.health";

/// The health method's answer for `method` (`""`: the server).
pub(super) fn check(shared: &Shared, method: &str) -> Result<&'static str, Status> {
    if !method.is_empty() && method != HEALTH_METHOD {
        let known = shared
            .methods
            .read()
            .map(|m| m.contains_key(method))
            .unwrap_or(false)
            || shared.catalog.borrow().iter().any(|m| m.name == method);
        if !known {
            return Err(Status::not_found(format!(
                "this server does not serve {method:?}"
            )));
        }
    }
    Ok(if shared.shutting_down.load(Ordering::SeqCst) {
        "DRAINING"
    } else if shared.serving.load(Ordering::SeqCst) {
        "SERVING"
    } else {
        "NOT_SERVING"
    })
}

/// Registers [`HEALTH_METHOD`] on a server being bound.
pub(super) fn register(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let added = Server::builder()
        .unary(
            super::Method::new(HEALTH_METHOD).idempotent(),
            move |method: String, _ctx| {
                let answer = match weak.upgrade() {
                    Some(shared) => check(&shared, &method).map(str::to_string),
                    None => Err(Status::unavailable("the server is gone")),
                };
                async move { answer }
            },
        )
        .methods;
    if let Ok(mut methods) = shared.methods.write() {
        for (name, entry) in added {
            methods.insert(name, Arc::new(entry));
        }
    }
}

/// Answers a call stream accepted while the server stops: the health check gets
/// `"DRAINING"` (it changes nothing, so answering it vouches for nothing); any other call
/// is refused at once, as before HEADERS: `REFUSED` both ways, and its stream ID is above
/// every call that may have run, so the close also says it did not run.
pub(super) async fn answer_while_stopping(
    shared: Arc<Shared>,
    open: OpenCall,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let limits = shared.transport.wire;
    let mut rx = FramedRecv::new(recv, limits);
    // The HEADERS of a call come in its first packet; a peer that holds them back only
    // delays its own refusal, briefly.
    let wait = shared.transport.headers_timeout.min(Duration::from_secs(1));
    let health = match tokio::time::timeout(wait, rx.next_frame()).await {
        Ok(Ok(Some(f))) if f.kind == FrameKind::Headers => {
            RequestHeaders::decode(&f.payload, &limits)
                .ok()
                .filter(|h| h.method == HEALTH_METHOD)
        }
        _ => None,
    };
    let Some(headers) = health else {
        let _ = send.reset(reset::REFUSED.into());
        rx.stop(reset::REFUSED);
        return;
    };
    rx.stop(reset::NO_ERROR);
    let reply = <crate::call::Typed as crate::call::EncodeAs<String>>::encode(
        headers.codec,
        &"DRAINING".to_string(),
        limits.max_message_size,
    );
    let bound = WriteBound {
        deadline: None,
        timeout: wait,
    };
    let (reply, status) = match reply {
        Ok(r) => (Some(r), Status::new(Code::Ok, "")),
        Err(s) => (None, s),
    };
    let started = Instant::now();
    if finish_call(
        &mut send,
        reply,
        trailers_for(status, started.elapsed()),
        bound,
    )
    .await
    {
        let _ = tokio::time::timeout(wait, send.stopped()).await;
    }
    drop(open);
}

/// The access-log line of one call (target `meridian::access`).
pub(super) fn access_line(
    method: &str,
    code: Code,
    peer: SocketAddr,
    took: Duration,
    early: bool,
    trace: Option<&TraceContext>,
) {
    let trace_id = trace.map(TraceContext::trace_id_hex);
    let parent_span = trace.map(TraceContext::span_id_hex);
    tracing::info!(
        target: "meridian::access",
        method,
        code = code.name(),
        %peer,
        duration_us = took.as_micros() as u64,
        early,
        trace_id = trace_id.as_deref().unwrap_or(""),
        parent_span = parent_span.as_deref().unwrap_or(""),
        "call"
    );
}

/// A server's figures, read at each scrape; from [`Server::metrics_source`].
pub(super) struct ServerMetrics(pub(super) Weak<Shared>);

impl MetricsSource for ServerMetrics {
    fn encode(&self, w: &mut MetricsWriter<'_>) -> fmt::Result {
        let Some(s) = self.0.upgrade() else {
            return Ok(());
        };
        let labels = || {
            vec![
                ("server", s.server_id.clone()),
                ("region", s.region.clone()),
            ]
        };
        let gauge = |v: usize| vec![(labels(), i64::try_from(v).unwrap_or(i64::MAX))];
        let counter =
            |v: &std::sync::atomic::AtomicU64| vec![(labels(), v.load(Ordering::Relaxed))];
        s.method_metrics.encode(w, "server")?;
        w.gauge(
            "server_connections",
            "Connections open now (handshakes included).",
            &gauge(s.open_connections.load(Ordering::Relaxed)),
        )?;
        w.gauge(
            "server_handshakes",
            "Connections whose handshake is under way now.",
            &gauge(s.handshakes.load(Ordering::Relaxed)),
        )?;
        w.gauge(
            "server_streams",
            "Call streams open now (accepted and not yet answered).",
            &gauge(s.open_calls.load(Ordering::Relaxed)),
        )?;
        w.gauge(
            "server_buffered_bytes",
            "Bytes of received frames the server's calls hold now.",
            &gauge(s.buffers.used()),
        )?;
        w.gauge(
            "server_buffer_budget_bytes",
            "The limit on buffered bytes (TransportConfig::server_buffer_budget).",
            &gauge(s.transport.server_buffer_budget),
        )?;
        w.counter(
            "server_connections_refused",
            "Connections refused by max_connections or max_handshakes.",
            &counter(&s.connections_refused),
        )?;
        w.counter(
            "server_quic_retries",
            "QUIC Retry packets sent (address validation under a handshake flood).",
            &counter(&s.retries_sent),
        )?;
        w.counter(
            "server_early_calls",
            "Calls that arrived in 0-RTT data (accepted early data).",
            &counter(&s.early_calls),
        )?;
        let state = match check(&s, "") {
            Ok("SERVING") => 1,
            _ => 0,
        };
        w.gauge(
            "server_serving",
            "1 while the server takes calls; 0 when not serving or draining.",
            &[(labels(), state)],
        )
    }

    fn ready(&self) -> Result<(), String> {
        let Some(s) = self.0.upgrade() else {
            return Err("server stopped".into());
        };
        match check(&s, "") {
            Ok("SERVING") => Ok(()),
            Ok("DRAINING") => Err(format!("server {} is draining", s.server_id)),
            _ => Err(format!("server {} is not serving", s.server_id)),
        }
    }
}
