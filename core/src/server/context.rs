//! What a handler sees of its call: [`CallContext`] (deadline, metadata, peer, cancellation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::call::budget::{Charge, Pool};
use crate::codec::Codec;
use crate::transport::PeerIdentity;
use crate::wire::Metadata;

#[derive(Debug, Default)]
pub(super) struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
    /// Set once a trailer or an upstream report is recorded: most calls have neither, and
    /// then their end takes no lock.
    extras: AtomicBool,
    trailers: Mutex<Metadata>,
    forwarded: Mutex<Option<UpstreamReport>>,
}

impl CancelState {
    /// Marks the call cancelled and wakes whatever waits in [`CallContext::cancelled`].
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// The trailing metadata the handler set and the gateway's report of the call it
    /// forwarded, if it set or made them.
    #[inline]
    pub(super) fn take_extras(&self) -> Option<(Metadata, Option<UpstreamReport>)> {
        if self.extras.load(Ordering::Acquire) {
            Some(self.take_extras_locked())
        } else {
            None
        }
    }

    #[inline(never)]
    fn take_extras_locked(&self) -> (Metadata, Option<UpstreamReport>) {
        let trailers = self
            .trailers
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let forwarded = self.forwarded.lock().ok().and_then(|mut f| f.take());
        (trailers, forwarded)
    }
}

/// What a gateway's handler learned from the call it forwarded upstream, for the TRAILERS
/// it writes back ([`CallContext::report_upstream`]): the caller then sees each hop's time
/// (`PROXY_TIME`, `docs/PROTOCOL.md` §3.5) and, on failure, whether the call provably never
/// ran (`NOT_RUN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamReport {
    /// The time the upstream server reported in its TRAILERS.
    pub server_time: Option<Duration>,
    /// The upstream call's time as this server measured it (send to answer).
    pub upstream: Duration,
    /// The upstream's trailing metadata, passed on (on success; a failure's travels in
    /// its status).
    pub metadata: Metadata,
    /// The call provably ran nowhere: no upstream took it and this handler ran nothing
    /// else. Set it only when that is certain; clients then send even a non-idempotent call
    /// elsewhere. Ignored on success.
    pub not_run: bool,
}

impl UpstreamReport {
    /// A report of an upstream call that took `upstream`.
    pub fn new(upstream: Duration) -> UpstreamReport {
        UpstreamReport {
            upstream,
            ..UpstreamReport::default()
        }
    }
}

/// What a handler knows about its call: method, metadata, deadline, peer, cancellation.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(super) identity: Option<Arc<PeerIdentity>>,
    pub(super) method: Arc<str>,
    pub(super) metadata: Arc<Metadata>,
    pub(super) deadline: Option<Instant>,
    pub(super) peer: SocketAddr,
    pub(super) codec: Codec,
    pub(super) idempotent: bool,
    pub(super) routing_key: Option<Bytes>,
    pub(super) early_data: bool,
    pub(super) confirmed: watch::Receiver<bool>,
    pub(super) state: Arc<CancelState>,
    /// The connection's and the server's buffer budgets.
    pub(super) budgets: Option<[Arc<Pool>; 2]>,
}

/// Memory a handler holds on behalf of its call, counted against the connection's and the
/// server's buffer budgets until dropped ([`CallContext::reserve_memory`]).
#[derive(Debug)]
pub struct MemoryReservation(#[allow(dead_code)] Option<Charge>);

impl CallContext {
    /// Counts `bytes` of memory the handler holds for this call (a decoded request, say)
    /// against the connection's and the server's buffer budgets
    /// ([`TransportConfig::connection_buffer_budget`](crate::TransportConfig)), until the
    /// returned reservation is dropped. Fails with `RESOURCE_EXHAUSTED` when a budget
    /// cannot cover it. Typed handlers of [`Codec::Value`] requests reserve their decoded
    /// size this way before decoding.
    pub fn reserve_memory(&self, bytes: usize) -> Result<MemoryReservation, crate::Status> {
        // Nothing to hold (a raw request, say): no charge to make and give back.
        let (Some([conn, server]), 1..) = (&self.budgets, bytes) else {
            return Ok(MemoryReservation(None));
        };
        let mut charge = Charge::new(conn.clone(), server.clone());
        charge.take(bytes).map_err(|e| {
            crate::Status::resource_exhausted(format!("cannot hold {bytes} more bytes: {e}"))
        })?;
        Ok(MemoryReservation(Some(charge)))
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Metadata the client sent.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// When the caller gives up, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Who the client is, from the certificate chain the handshake verified: its DNS and
    /// URI (SPIFFE) names and common name. `None` unless the server requires client
    /// certificates ([`ServerTls::require_client_certs`](crate::ServerTls::require_client_certs)).
    ///
    /// ```
    /// # fn check(ctx: &meridian::CallContext) -> Result<(), meridian::Status> {
    /// let allowed = ctx
    ///     .peer_identity()
    ///     .is_some_and(|p| p.spiffe_id() == Some("spiffe://example.org/ns/prod/sa/billing"));
    /// if !allowed {
    ///     return Err(meridian::Status::permission_denied("billing only"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_deref()
    }

    /// The codec of this call's messages.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Whether the caller marked this call idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Whether the call arrived in 0-RTT data. Such a call may be a replay; Meridian runs
    /// it early only if the method is idempotent.
    pub fn is_early_data(&self) -> bool {
        self.early_data
    }

    /// Whether this call cannot be a replay: it came in 1-RTT data (which only the live
    /// client can produce), or the connection's handshake completed before it ran.
    pub fn is_handshake_confirmed(&self) -> bool {
        !self.early_data || *self.confirmed.borrow()
    }

    /// Whether the call was cancelled (by the client, or by its deadline).
    ///
    /// The handler's future is dropped when that happens; this flag and
    /// [`CallContext::cancelled`] serve work the handler spawned elsewhere.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Acquire)
    }

    /// Resolves when the call is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.state.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Adds trailing metadata to the response.
    pub fn set_trailer(&self, key: impl Into<String>, value: impl Into<Bytes>) {
        if let Ok(mut t) = self.state.trailers.lock() {
            t.insert(key, value);
            self.state.extras.store(true, Ordering::Release);
        }
    }

    /// The routing key the client set, if any.
    pub fn routing_key(&self) -> Option<&Bytes> {
        self.routing_key.as_ref()
    }

    /// For gateways: records what the call this handler forwarded upstream reported, so
    /// the TRAILERS add this hop's time (and `NOT_RUN` when [`UpstreamReport::not_run`]).
    /// The last report before the handler returns counts.
    pub fn report_upstream(&self, f: UpstreamReport) {
        if let Ok(mut slot) = self.state.forwarded.lock() {
            *slot = Some(f);
            self.state.extras.store(true, Ordering::Release);
        }
    }
}
