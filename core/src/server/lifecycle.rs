//! [`Server`]: the running server's handle: address, catalog, stats, adding methods, graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::builder::ServerBuilder;
use super::shared::{CatalogHandle, Shared};
use crate::call::PayloadStyle;
use crate::transport::TransportConfig;
use crate::wire::{reset, MethodInfo};

/// Counters of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Calls started since the server began.
    pub calls_total: u64,
    /// Calls that ended with a status other than `OK`.
    pub calls_failed: u64,
    /// Calls running now.
    pub in_flight: usize,
    /// Connections open now (handshakes included).
    pub connections: usize,
    /// Connections whose handshake is under way now.
    pub handshakes: usize,
    /// Bytes of received frames the server's calls hold now, counted against
    /// [`TransportConfig::server_buffer_budget`].
    pub buffered_bytes: usize,
    /// Connections refused since the server began, by
    /// [`TransportConfig::max_connections`] or [`TransportConfig::max_handshakes`].
    pub connections_refused: u64,
    /// QUIC Retry packets sent since the server began: peers asked to prove their
    /// address because more than [`TransportConfig::max_handshakes`] were under way.
    pub retries_sent: u64,
    /// Finished responses kept until their client acknowledges them (a graceful stop
    /// waits for those): at most the larger of 64 and twice the stream limit
    /// ([`TransportConfig::max_concurrent_streams`]) per connection.
    pub kept_responses: usize,
}

/// A running server. Dropping it closes the endpoint at once; [`Server::shutdown`] lets
/// in-flight calls finish first.
pub struct Server {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) local_addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) accept: tokio::task::JoinHandle<()>,
    pub(super) registration: Option<crate::discovery::Registration>,
    /// Completes once the UDP socket is closed (see [`Server::shutdown`]).
    pub(super) socket_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("region", &self.shared.region)
            .finish()
    }
}

impl crate::discovery::Registrant for Server {
    fn region(&self) -> &str {
        Server::region(self)
    }
    fn catalog(&self) -> Vec<MethodInfo> {
        Server::catalog(self)
    }
    fn load(&self) -> u64 {
        self.stats().in_flight as u64
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            methods: HashMap::new(),
            region: "default".into(),
            server_id: None,
            transport: TransportConfig::default(),
            advertise: Some("localhost".into()),
            fallback: None,
            access_log: false,
            interceptors: Vec::new(),
            task_per_call: false,
            style: std::marker::PhantomData,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The region announced in the HELLO.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// The method catalog announced in the HELLO.
    pub fn catalog(&self) -> Vec<MethodInfo> {
        self.shared.catalog.borrow().as_ref().clone()
    }

    /// Adds (or replaces) methods while the server runs: `f` registers them on an empty
    /// builder, exactly as before binding (its other settings are ignored). Connected
    /// clients receive an updated HELLO, so region routing learns the new methods.
    ///
    /// ```no_run
    /// # fn demo(server: &meridian::Server) {
    /// server.add_methods(|b| b.unary("double", |x: i64, _| async move { Ok(x * 2) }));
    /// # }
    /// ```
    pub fn add_methods<P: PayloadStyle>(&self, f: impl FnOnce(ServerBuilder) -> ServerBuilder<P>) {
        let added = f(Server::builder()).methods;
        if let Ok(mut methods) = self.shared.methods.write() {
            for (name, entry) in added {
                methods.insert(name, Arc::new(entry));
            }
        }
        self.shared.publish_catalog();
    }

    /// Removes a method while the server runs; calls already running finish, new ones get
    /// `UNIMPLEMENTED`. Returns whether the method existed.
    pub fn remove_method(&self, name: &str) -> bool {
        let removed = self
            .shared
            .methods
            .write()
            .map(|mut m| m.remove(name).is_some())
            .unwrap_or(false);
        if removed {
            self.shared.publish_catalog();
        }
        removed
    }

    /// A handle that sets methods the server announces in its HELLO beside its own
    /// handlers (a gateway announces what its upstream serves), usable from a background
    /// task for as long as the server runs.
    pub fn catalog_handle(&self) -> CatalogHandle {
        CatalogHandle(Arc::downgrade(&self.shared))
    }

    /// The server's figures for a [`Metrics`](crate::telemetry::Metrics) registry: calls
    /// by method and status, latency histograms, calls in flight, connections, streams,
    /// buffered bytes, refusals, 0-RTT calls; ready while serving (`/readyz`). It holds no
    /// strong reference: once the server is gone it reports nothing and is not ready.
    pub fn metrics_source(&self) -> Arc<dyn crate::telemetry::MetricsSource> {
        Arc::new(super::health::ServerMetrics(Arc::downgrade(&self.shared)))
    }

    /// The server's figures in the Prometheus text format (what a scrape of a
    /// [`MetricsEndpoint`](crate::telemetry::MetricsEndpoint) serving only this server
    /// returns).
    pub fn metrics_text(&self) -> String {
        let metrics = crate::telemetry::Metrics::new();
        metrics.add(self.metrics_source());
        metrics.render()
    }

    /// Marks the server serving or not: the health method ([`HEALTH_METHOD`]) answers
    /// `NOT_SERVING` and `/readyz` fails while it is off, so load balancers send traffic
    /// elsewhere; calls are still served. On by default.
    ///
    /// [`HEALTH_METHOD`]: super::HEALTH_METHOD
    pub fn set_serving(&self, serving: bool) {
        self.shared.serving.store(serving, Ordering::SeqCst);
        tracing::info!(server = %self.shared.server_id, serving, "health changed");
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            calls_total: self.shared.calls_total.load(Ordering::Relaxed),
            calls_failed: self.shared.calls_failed.load(Ordering::Relaxed),
            in_flight: self.shared.inflight.load(Ordering::Relaxed),
            connections: self.shared.open_connections.load(Ordering::Relaxed),
            handshakes: self.shared.handshakes.load(Ordering::Relaxed),
            buffered_bytes: self.shared.buffers.used(),
            connections_refused: self.shared.connections_refused.load(Ordering::Relaxed),
            retries_sent: self.shared.retries_sent.load(Ordering::Relaxed),
            kept_responses: self.shared.kept_responses(),
        }
    }

    /// Stops taking new calls (they are refused with a status that tells clients nothing
    /// ran, so they may retry elsewhere), waits up to `grace` for the calls whose handler
    /// started to finish and for their responses to reach the clients (acknowledged), then
    /// closes every connection.
    ///
    /// Every call therefore either gets its answer or learns that it did not run, unless the
    /// grace period ends first: a call still running then fails, and its client cannot tell
    /// whether it ran. The close tells each client from which stream on no call ran
    /// (docs/PROTOCOL.md §4.3), which covers calls that were still on their way.
    ///
    /// After the close it waits for the peers to learn of it and for the UDP socket to be
    /// closed, together at most `CLOSE_WAIT` (1 s): when it returns, the port is free to
    /// bind again (unless a handler still running past the grace period holds its
    /// connection open).
    pub async fn shutdown(mut self, grace: Duration) {
        // Leave the registry first so local region clients stop choosing this server.
        self.registration = None;
        self.shared.begin_stop();
        tracing::info!(
            server = %self.shared.server_id,
            in_flight = self.shared.inflight.load(Ordering::Relaxed),
            grace_ms = grace.as_millis() as u64,
            "draining: new calls are refused, calls in flight may finish"
        );
        // A grace too long to add to the clock means waiting for every call.
        let deadline = tokio::time::Instant::now().checked_add(grace);
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.open_calls.load(Ordering::SeqCst) == 0 {
                break;
            }
            let Some(deadline) = deadline else {
                idle.await;
                continue;
            };
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    in_flight = self.shared.inflight.load(Ordering::Relaxed),
                    open = self.shared.open_calls.load(Ordering::Relaxed),
                    "grace period over, closing with calls in flight"
                );
                break;
            }
        }
        // Then, within the same grace period, wait for the finished answers to be
        // acknowledged: closing discards data still on its way.
        let delivered = self.shared.responses_delivered();
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, delivered).await.is_err() {
                    tracing::warn!("grace period over, closing with responses unacknowledged");
                }
            }
            None => delivered.await,
        }
        self.shared.close_connections("server shutting down");
        // Connections still in their handshake, which ran no call.
        self.endpoint
            .close(reset::SHUTDOWN.into(), b"server shutting down");
        let closing = tokio::time::Instant::now() + CLOSE_WAIT;
        let _ = tokio::time::timeout_at(closing, self.endpoint.wait_idle()).await;
        let server_id = self.shared.server_id.clone();
        let socket_closed = self.socket_closed.take();
        // Let go of the endpoint and the accept loop, then wait for quinn's tasks to let
        // go of the socket, so the port can be bound again as soon as this returns.
        drop(self);
        if let Some(closed) = socket_closed {
            if tokio::time::timeout_at(closing, closed).await.is_err() {
                tracing::warn!(server = %server_id, "the UDP socket is still open after the close");
            }
        }
        tracing::info!(server = %server_id, "stopped");
    }
}

/// How long [`Server::shutdown`] waits, after closing, for its peers to learn of the close
/// and for the UDP socket to be released.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.close_connections("server dropped");
        self.endpoint
            .close(reset::SHUTDOWN.into(), b"server dropped");
    }
}
