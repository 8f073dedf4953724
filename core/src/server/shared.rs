//! State shared by the accept loop, every connection and the [`Server`] handle: the method table, the published catalog, counters, shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::builder::{Fallback, MethodEntry};
use super::method::MethodMap;
use crate::call::budget::Pool;
use crate::discovery::Catalog;
use crate::telemetry::MethodTable;
use crate::transport::{PeerIdentity, TransportConfig};
use crate::wire::{self, reset, Hello, MethodInfo, PROTOCOL_VERSION};

pub(super) struct Shared {
    pub(super) server_id: String,
    pub(super) region: String,
    /// The catalog announced in HELLO frames; connections follow it and send an update
    /// when it changes.
    pub(super) catalog: watch::Sender<Arc<Vec<MethodInfo>>>,
    pub(super) methods: std::sync::RwLock<MethodMap>,
    pub(super) fallback: Option<Arc<Fallback>>,
    /// Methods announced beside the server's own (the proxy's upstream catalog).
    pub(super) extra_catalog: Mutex<Vec<MethodInfo>>,
    pub(super) transport: TransportConfig,
    pub(super) client_auth: bool,
    /// [`ServerBuilder::task_per_call`](super::ServerBuilder::task_per_call).
    pub(super) task_per_call: bool,
    /// Set when the server begins to stop: from then on no handler starts, and calls are
    /// refused with a status that says they did not run.
    pub(super) shutting_down: AtomicBool,
    /// The same, for calls waiting for their HEADERS, request or handshake: they are
    /// refused as soon as it turns true.
    pub(super) stopping: watch::Sender<bool>,
    /// Handlers running now (the load in [`ServerStats`](super::ServerStats) and the HELLO).
    pub(super) inflight: AtomicUsize,
    /// Connections open now (being served).
    pub(super) open_connections: AtomicUsize,
    /// Call streams accepted and not answered yet (response finished, or stream reset). A
    /// graceful shutdown closes the connections only when this is 0 and the finished
    /// responses are acknowledged ([`ServedConnection::responses_delivered`]), because
    /// closing a connection discards the response bytes the client has not acknowledged.
    pub(super) open_calls: AtomicUsize,
    /// Notified when `open_calls` drops to 0.
    pub(super) idle: Notify,
    /// The connections served, by `stable_id`; `None` once they are closed.
    pub(super) connections: Mutex<Option<HashMap<usize, Arc<ServedConnection>>>>,
    pub(super) calls_total: AtomicU64,
    pub(super) calls_failed: AtomicU64,
    /// Received bytes held by every call of the server
    /// ([`TransportConfig::server_buffer_budget`]).
    pub(super) buffers: Arc<Pool>,
    /// Connections whose handshake is under way.
    pub(super) handshakes: AtomicUsize,
    /// Connections refused by `max_connections` or `max_handshakes`.
    pub(super) connections_refused: AtomicU64,
    /// QUIC Retry packets sent (address validation under a handshake flood).
    pub(super) retries_sent: AtomicU64,
    /// Calls that arrived in 0-RTT data.
    pub(super) early_calls: AtomicU64,
    /// Per-method call counters, in-flight gauges and latency histograms.
    pub(super) method_metrics: MethodTable,
    /// Log one line per call (target `meridian::access`).
    pub(super) access_log: bool,
    /// The interceptor chain every call passes before its handler.
    pub(super) interceptors: super::intercept::Chain,
    /// What the health method and `/readyz` say while the server is not stopping
    /// ([`Server::set_serving`](super::Server::set_serving)).
    pub(super) serving: AtomicBool,
    /// Shared by the contexts of calls that came without metadata (most), so that those
    /// allocate none.
    pub(super) no_metadata: Arc<wire::Metadata>,
}

/// A connection being served, and which of its calls may have run.
pub(super) struct ServedConnection {
    conn: quinn::Connection,
    /// Received bytes held by this connection's calls
    /// ([`TransportConfig::connection_buffer_budget`]).
    pub(super) buffers: Arc<Pool>,
    /// Call streams of this connection not answered yet, and how many were ever accepted.
    pub(super) calls: AtomicUsize,
    pub(super) accepted: AtomicU64,
    /// Notified when `calls` drops to 0.
    pub(super) quiet: Notify,
    /// Set when the connection is being retired (idle or too old): no handler starts on
    /// it any more, new streams are refused, and it closes once its calls are answered and
    /// the answers acknowledged.
    pub(super) retiring: AtomicBool,
    /// The client's verified certificate chain and names (mutual TLS), once read.
    peer: std::sync::OnceLock<Arc<PeerIdentity>>,
    /// One more than the highest stream ID whose handler may have started: no handler ran,
    /// or will run, for any call stream from it on (0: none ran). The server sends it when
    /// it closes the connection (see [`wire::shutdown_reason`]).
    first_not_run: AtomicU64,
    /// Finished responses the client may not have acknowledged yet: a graceful stop or a
    /// retirement waits for them before it closes the connection
    /// ([`ServedConnection::responses_delivered`]).
    unacked: Mutex<Unacked>,
}

/// The send streams of finished responses, oldest first, kept until the client has
/// acknowledged every byte of them. Keeping a stream costs no registration with quinn and
/// no wake-up per call (waiting on `stopped()` for each call did, about 5% of a server's
/// work per call); a stream whose data quinn has freed (acknowledged, or reset) is
/// forgotten when the list is compacted.
///
/// Bounded: a finished stream that is not acknowledged holds one of the client's stream
/// credits (quinn returns a bidirectional stream's credit once both halves are done), so
/// at most the connection's stream limit of them are pending at once; the list is
/// compacted whenever it has doubled since the last compaction, so it holds at most about
/// twice that, and each stream is checked a bounded number of times on average.
struct Unacked {
    streams: VecDeque<quinn::SendStream>,
    /// The length at which the list is compacted next.
    compact_at: usize,
}

/// The shortest list worth compacting.
const UNACKED_COMPACT_MIN: usize = 64;

/// Whether quinn has freed the send half of `s`: every byte after its FIN was acknowledged
/// (or the stream was reset). A lookup under quinn's lock: nothing is registered.
fn delivered(s: &quinn::SendStream) -> bool {
    s.priority().is_err()
}

/// Counts one accepted call stream in [`Shared::open_calls`] until dropped.
/// Also counted in its connection's [`ServedConnection::calls`].
pub(super) struct OpenCall(Arc<Shared>, Arc<ServedConnection>);

impl OpenCall {
    pub(super) fn new(shared: &Arc<Shared>, conn: &Arc<ServedConnection>) -> OpenCall {
        shared.open_calls.fetch_add(1, Ordering::SeqCst);
        conn.calls.fetch_add(1, Ordering::SeqCst);
        conn.accepted.fetch_add(1, Ordering::SeqCst);
        OpenCall(shared.clone(), conn.clone())
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if self.0.open_calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
        if self.1.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.1.quiet.notify_waiters();
        }
    }
}

impl ServedConnection {
    /// The client's verified certificate identity (mutual TLS), read from the handshake
    /// once and shared by the connection's calls; `None` without a client certificate or
    /// before the handshake completes.
    pub(super) fn peer_identity(&self) -> Option<Arc<PeerIdentity>> {
        if let Some(p) = self.peer.get() {
            return Some(p.clone());
        }
        let chain = self
            .conn
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        let peer = Arc::new(PeerIdentity::from_chain(*chain)?);
        Some(self.peer.get_or_init(|| peer).clone())
    }

    /// Completes once no call stream of the connection is open.
    pub(super) async fn wait_quiet(&self) {
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            quiet.as_mut().enable();
            if self.calls.load(Ordering::SeqCst) == 0 {
                return;
            }
            quiet.await;
        }
    }

    /// Keeps the send stream of a finished response until the client has acknowledged it
    /// (see [`Unacked`]).
    pub(super) fn keep_until_delivered(&self, send: quinn::SendStream) {
        let mut u = match self.unacked.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        if u.streams.len() >= u.compact_at {
            u.streams.retain(|s| !delivered(s));
            u.compact_at = (u.streams.len() * 2).max(UNACKED_COMPACT_MIN);
        }
        u.streams.push_back(send);
    }

    /// Completes once the client has acknowledged every finished response of this
    /// connection (or stopped its stream, or the connection has ended).
    pub(super) async fn responses_delivered(&self) {
        let streams = match self.unacked.lock() {
            Ok(mut u) => std::mem::take(&mut u.streams),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().streams),
        };
        let pending = streams.into_iter().filter(|s| !delivered(s));
        futures_util::future::join_all(pending.map(|s| async move {
            let _ = s.stopped().await;
        }))
        .await;
    }

    /// Closes the connection with `RETIRED`, saying from which stream on nothing ran.
    pub(super) fn close_retired(&self, text: &str) {
        let first_not_run = self.first_not_run.load(Ordering::SeqCst);
        self.conn.close(
            reset::RETIRED.into(),
            &wire::shutdown_reason(text, first_not_run),
        );
    }
}

impl Shared {
    pub(super) fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            server_id: self.server_id.clone(),
            region: self.region.clone(),
            load: self.inflight.load(Ordering::Relaxed) as u64,
            methods: self.catalog.borrow().as_ref().clone(),
        }
    }

    /// Whether the handler of the call on `stream` may start: not once the server is
    /// stopping. The stream is recorded as possibly run first, so a close that follows the
    /// stop never vouches for a call whose handler started (both sides are `SeqCst`: either
    /// this sees the stop, or the close sees the record).
    pub(super) fn may_start(&self, conn: &ServedConnection, stream: quinn::StreamId) -> bool {
        conn.first_not_run
            .fetch_max(u64::from(stream) + 1, Ordering::SeqCst);
        !self.shutting_down.load(Ordering::SeqCst) && !conn.retiring.load(Ordering::SeqCst)
    }

    /// Completes once the server begins to stop.
    pub(super) async fn stop_requested(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Stops starting handlers and accepting calls (idempotent).
    pub(super) fn begin_stop(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stopping.send_replace(true);
    }

    /// Adds a connection to the ones served. `None` if the server has already closed its
    /// connections: this one is closed at once (none of its calls ran).
    pub(super) fn serve(&self, conn: &quinn::Connection) -> Option<Arc<ServedConnection>> {
        let served = Arc::new(ServedConnection {
            conn: conn.clone(),
            buffers: Pool::new("connection", self.transport.connection_buffer_budget),
            calls: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            quiet: Notify::new(),
            retiring: AtomicBool::new(false),
            first_not_run: AtomicU64::new(0),
            peer: std::sync::OnceLock::new(),
            unacked: Mutex::new(Unacked {
                streams: VecDeque::new(),
                compact_at: UNACKED_COMPACT_MIN,
            }),
        });
        let mut connections = match self.connections.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        match connections.as_mut() {
            Some(map) => {
                map.insert(conn.stable_id(), served.clone());
                Some(served)
            }
            None => {
                conn.close(
                    reset::SHUTDOWN.into(),
                    &wire::shutdown_reason("server shutting down", 0),
                );
                None
            }
        }
    }

    /// Removes a connection that ended.
    pub(super) fn forget(&self, conn: &quinn::Connection) {
        let mut connections = match self.connections.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(map) = connections.as_mut() {
            map.remove(&conn.stable_id());
        }
    }

    /// The connections served now.
    fn served(&self) -> Vec<Arc<ServedConnection>> {
        let connections = match self.connections.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        connections
            .iter()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The finished responses kept by every connection ([`Unacked`]).
    pub(super) fn kept_responses(&self) -> usize {
        let served = self.served();
        served
            .iter()
            .map(|s| match s.unacked.lock() {
                Ok(u) => u.streams.len(),
                Err(poisoned) => poisoned.into_inner().streams.len(),
            })
            .sum()
    }

    /// Completes once every connection's finished responses are acknowledged
    /// ([`ServedConnection::responses_delivered`]).
    pub(super) async fn responses_delivered(&self) {
        let served = self.served();
        futures_util::future::join_all(served.iter().map(|s| s.responses_delivered())).await;
    }

    /// Stops the server (if not yet) and closes every connection with `SHUTDOWN`, telling
    /// each client from which stream on its calls did not run.
    pub(super) fn close_connections(&self, text: &str) {
        self.begin_stop();
        let served = match self.connections.lock() {
            Ok(mut c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        for s in served.into_iter().flat_map(HashMap::into_values) {
            let first_not_run = s.first_not_run.load(Ordering::SeqCst);
            s.conn.close(
                reset::SHUTDOWN.into(),
                &wire::shutdown_reason(text, first_not_run),
            );
        }
    }

    pub(super) fn method(&self, name: &str) -> Option<Arc<MethodEntry>> {
        if let Some(e) = self.methods.read().ok()?.get(name) {
            return Some(e.clone());
        }
        let fallback = self.fallback.as_ref()?;
        let info = (fallback.resolve)(name);
        let handler = fallback.handlers.get(&info.kind)?.clone();
        Some(Arc::new(MethodEntry::new(info, handler)))
    }

    /// Rebuilds the catalog from the method table and tells every connection.
    /// Trims `catalog` so the HELLO stays within what receivers accept (the control frame
    /// limit, [`wire::MAX_CATALOG_ENTRIES`]): a HELLO past them would be refused by every
    /// client, which would then know nothing the server serves. The server's own methods
    /// (the first `own` names it registered) are kept first; what is left out is logged.
    fn fit_hello(&self, catalog: &mut Vec<MethodInfo>, own: usize) {
        let limit = self.transport.wire.max_control_frame_size;
        // version, two strings of up to 256 bytes with their lengths, load, count.
        let mut size = 1 + 2 * (2 + 256) + 8 + 8;
        let entry = |m: &MethodInfo| 2 + m.name.len() + 2 + 2;
        if catalog.len() <= wire::MAX_CATALOG_ENTRIES
            && size + catalog.iter().map(entry).sum::<usize>() <= limit
        {
            return;
        }
        if let Ok(methods) = self.methods.read() {
            // Stable: own methods first, each group in catalog order.
            catalog.sort_by_key(|m| !methods.contains_key(&m.name));
        }
        let total = catalog.len();
        let mut kept = 0;
        for m in catalog.iter() {
            if kept == wire::MAX_CATALOG_ENTRIES || size + entry(m) > limit {
                break;
            }
            size += entry(m);
            kept += 1;
        }
        catalog.truncate(kept);
        tracing::error!(
            announced = kept,
            left_out = total - kept,
            own,
            limit,
            "the method catalog does not fit in one HELLO; methods left out are not \
             announced (raise wire.max_control_frame_size on both sides)"
        );
    }

    pub(super) fn publish_catalog(&self) {
        // The server's own handlers first, so they win over announced names (a proxy's own
        // methods over its upstream's).
        // The health method is served by every server and announced by none.
        let mut all: Vec<MethodInfo> = match self.methods.read() {
            Ok(m) => m
                .values()
                .filter(|e| e.info.name != super::HEALTH_METHOD)
                .map(|e| e.info.clone())
                .collect(),
            Err(_) => return,
        };
        if let Ok(extra) = self.extra_catalog.lock() {
            all.extend(extra.iter().cloned());
        }
        let own = match self.methods.read() {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        let mut catalog = Catalog::new(all).methods().to_vec();
        self.fit_hello(&mut catalog, own);
        if **self.catalog.borrow() != catalog {
            self.catalog.send_replace(Arc::new(catalog));
        }
    }
}

/// Sets the methods a server announces beside its own handlers (the proxy announces what
/// its upstream servers serve). From [`Server::catalog_handle`](super::Server::catalog_handle).
#[derive(Debug, Clone)]
pub struct CatalogHandle(pub(super) std::sync::Weak<Shared>);

impl CatalogHandle {
    /// Announces `methods`; connections get an update only when the catalog changes.
    /// Returns false once the server is gone.
    pub fn set(&self, methods: Vec<MethodInfo>) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        if let Ok(mut extra) = shared.extra_catalog.lock() {
            if *extra == methods {
                return true;
            }
            *extra = methods;
        }
        shared.publish_catalog();
        true
    }
}
