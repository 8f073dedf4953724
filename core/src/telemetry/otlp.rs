//! OpenTelemetry export (feature `otlp`): the spans of calls that carry a W3C trace,
//! sent to an OTLP/HTTP collector as JSON.
//!
//! [`OtlpLayer`] is a `tracing-subscriber` layer. It keeps the `rpc.server` span of each
//! call whose metadata had a `traceparent`, and the proxy's `rpc.proxy` span of each
//! forwarded call, and sends them in batches to `POST <endpoint>/v1/traces` in the OTLP
//! JSON encoding (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>), from a thread of
//! its own. The proxy's span is the parent of the server's, and the caller's span the
//! parent of the proxy's, so a tracing backend shows the call's hops in one trace.
//!
//! It is deliberately small: no TLS to the collector (run the collector or an agent on the
//! host or a private network), at most [`OtlpLayer::QUEUE`] spans waiting (more are dropped
//! and counted, never buffered without bound), one batch of at most
//! [`OtlpLayer::BATCH`] spans a second, a 2 s timeout per request.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::Layer;
//! let otlp = meridian::telemetry::OtlpLayer::new("http://127.0.0.1:4318", "my-service").unwrap();
//! let subscriber = tracing_subscriber::registry().with(otlp.with_filter(
//!     tracing_subscriber::filter::Targets::new().with_target("meridian", tracing::Level::DEBUG),
//! ));
//! tracing::subscriber::set_global_default(subscriber).unwrap();
//! ```

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::trace::TraceContext;

/// A `tracing-subscriber` layer exporting the spans of traced calls over OTLP/HTTP JSON.
#[derive(Debug, Clone)]
pub struct OtlpLayer {
    tx: SyncSender<Finished>,
    dropped: Arc<AtomicU64>,
}

/// What a kept span has gathered so far.
#[derive(Debug, Default)]
struct Fields {
    method: Option<String>,
    code: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    parent_span: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

impl Fields {
    fn set(&mut self, name: &str, value: String) {
        let slot = match name {
            "method" => &mut self.method,
            "code" => &mut self.code,
            "trace_id" => &mut self.trace_id,
            "span_id" => &mut self.span_id,
            "parent_span" => &mut self.parent_span,
            _ => return,
        };
        *slot = Some(value);
    }
}

/// A kept span while open.
struct Open {
    name: &'static str,
    start: SystemTime,
    fields: Fields,
    /// A proxy's own server span, which its forwarding span (`rpc.proxy`) stands for.
    skip: bool,
}

/// A closed span on its way to the collector.
#[derive(Debug)]
struct Finished {
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    fields: Fields,
}

impl OtlpLayer {
    /// Spans waiting to be sent, at most; more are dropped (and counted).
    pub const QUEUE: usize = 4096;
    /// Spans per request, at most.
    pub const BATCH: usize = 512;

    /// A layer sending to the collector at `endpoint` (`http://host:port`, the OTLP/HTTP
    /// port is usually 4318; `/v1/traces` is added unless a path is given), naming the
    /// service `service`. Starts the sending thread. `Err` for an endpoint that is not
    /// `http://`.
    pub fn new(endpoint: &str, service: &str) -> Result<OtlpLayer, String> {
        let target = Target::parse(endpoint)?;
        let (tx, rx) = mpsc::sync_channel(Self::QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let service = service.to_string();
        std::thread::Builder::new()
            .name("meridian-otlp".into())
            .spawn(move || send_loop(&rx, &target, &service))
            .map_err(|e| format!("cannot start the OTLP thread: {e}"))?;
        Ok(OtlpLayer { tx, dropped })
    }

    /// Spans dropped because the queue was full (the collector too slow or unreachable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        if name != "rpc.server" && name != "rpc.proxy" {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if name == "rpc.proxy" {
            // The proxy's server span and its forwarding span are the same hop: the
            // forwarding span (whose id went upstream) is the one exported.
            if let Some(parent) = span.parent() {
                if let Some(server) = parent.extensions_mut().get_mut::<Open>() {
                    server.skip = true;
                }
            }
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(Open {
            name,
            start: SystemTime::now(),
            fields,
            skip: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            values.record(&mut open.fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        if open.skip || open.fields.trace_id.is_none() {
            return;
        }
        let finished = Finished {
            name: open.name,
            start: open.start,
            end: SystemTime::now(),
            fields: open.fields,
        };
        if self.tx.try_send(finished).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where batches go.
struct Target {
    host: String,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            format!(
                "the OTLP endpoint {endpoint:?} must start with http:// (no TLS to the collector)"
            )
        })?;
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if !p.is_empty() => (h, format!("/{p}")),
            Some((h, _)) => (h, "/v1/traces".to_string()),
            None => (rest, "/v1/traces".to_string()),
        };
        if host.is_empty() {
            return Err(format!("the OTLP endpoint {endpoint:?} names no host"));
        }
        let host = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:4318")
        };
        Ok(Target { host, path })
    }
}

fn send_loop(rx: &Receiver<Finished>, target: &Target, service: &str) {
    let mut batch = Vec::new();
    let mut since = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(span) => batch.push(span),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !batch.is_empty() {
                    post(target, &encode(service, &batch));
                }
                return;
            }
        }
        let due = since.elapsed() >= Duration::from_secs(1);
        if batch.len() >= OtlpLayer::BATCH || (due && !batch.is_empty()) {
            post(target, &encode(service, &batch));
            batch.clear();
        }
        if due {
            since = Instant::now();
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// The OTLP JSON of one batch.
fn encode(service: &str, batch: &[Finished]) -> String {
    let spans: Vec<serde_json::Value> = batch
        .iter()
        .map(|s| {
            let f = &s.fields;
            // The server's span gets an id of its own; the proxy's was chosen when it
            // forwarded (the server's parent).
            let span_id = f
                .span_id
                .clone()
                .unwrap_or_else(|| TraceContext::new_root().span_id_hex());
            let ok = f.code.as_deref() == Some("OK");
            let mut attributes = vec![serde_json::json!({
                "key": "rpc.system", "value": { "stringValue": "meridian" }
            })];
            if let Some(m) = &f.method {
                attributes.push(serde_json::json!({
                    "key": "rpc.method", "value": { "stringValue": m }
                }));
            }
            if let Some(c) = &f.code {
                attributes.push(serde_json::json!({
                    "key": "rpc.meridian.status_code", "value": { "stringValue": c }
                }));
            }
            serde_json::json!({
                "traceId": f.trace_id,
                "spanId": span_id,
                "parentSpanId": f.parent_span.clone().unwrap_or_default(),
                "name": format!("{} {}", s.name, f.method.as_deref().unwrap_or("")),
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": { "code": if ok { 1 } else { 2 } },
            })
        })
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } }
            ]},
            "scopeSpans": [{ "scope": { "name": "meridian" }, "spans": spans }]
        }]
    })
    .to_string()
}

/// Sends one batch; a failure loses the batch (spans are best effort) and is not logged
/// through tracing, which would feed this layer again.
fn post(target: &Target, body: &str) {
    let send = || -> std::io::Result<()> {
        let addr = target
            .host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            target.path,
            target.host,
            body.len()
        )?;
        let mut status = [0u8; 12];
        s.read_exact(&mut status)?;
        Ok(())
    };
    let _ = send();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_port_and_the_traces_path() {
        let t = Target::parse("http://collector").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        let t = Target::parse("http://127.0.0.1:9999/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9999", "/v1/traces")
        );
        let t = Target::parse("http://127.0.0.1:9999/custom/path").unwrap();
        assert_eq!(t.path, "/custom/path");
        assert!(Target::parse("https://collector").is_err());
        assert!(Target::parse("http://").is_err());
    }
}
