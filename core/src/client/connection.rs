//! The channel's connection: dialing (0-RTT when it can), the HELLO reader, losing and re-establishing it with capped, jittered backoff.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::debug;

use super::stats::Counters;
use crate::call::{FramedRecv, RecvError};
use crate::discovery::Catalog;
use crate::status::Status;
use crate::transport::zero_rtt::{self, Dial};
use crate::transport::{describe_connection_error, ClientTls};
use crate::wire::{reset, Frame, FrameKind, Hello, WireLimits};

pub(super) struct ChannelInner {
    pub(super) addr: SocketAddr,
    pub(super) server_name: String,
    pub(super) endpoint: RwLock<quinn::Endpoint>,
    /// Where the endpoint came from, when it is the one shared by a `ClientTls`.
    pub(super) shared_sockets: Option<ClientTls>,
    pub(super) config: quinn::ClientConfig,
    pub(super) wire: WireLimits,
    pub(super) value: crate::codec::DecodeLimits,
    pub(super) handshake_timeout: Duration,
    pub(super) conn: RwLock<Option<Conn>>,
    pub(super) reconnect: tokio::sync::Mutex<Backoff>,
    pub(super) hello: watch::Sender<Option<Arc<Hello>>>,
    /// The last HELLO's catalog, indexed (empty until the first HELLO).
    pub(super) catalog: std::sync::RwLock<Arc<Catalog>>,
    pub(super) stats: Counters,
}

/// One QUIC connection and the state of its handshake.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) quic: quinn::Connection,
    /// `None` while the handshake runs; then whether 0-RTT data was accepted.
    pub(super) handshake: watch::Receiver<Option<bool>>,
    /// The connection tried 0-RTT.
    pub(super) early: bool,
    /// When the handshake completed, for [`Channel::close`].
    pub(super) done_at: Arc<std::sync::OnceLock<Instant>>,
}

impl Conn {
    pub(super) fn handshake_done(&self) -> bool {
        self.handshake.borrow().is_some()
    }

    pub(super) async fn wait_handshake(&self) -> Result<(), Status> {
        let mut rx = self.handshake.clone();
        let _ = rx.wait_for(|h| h.is_some()).await;
        match self.quic.close_reason() {
            None => Ok(()),
            Some(e) => Err(Status::unavailable(format!(
                "connection failed: {}",
                describe_connection_error(&e)
            ))),
        }
    }
}

/// Reconnection pacing: capped exponential backoff with jitter after failed attempts.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let exp = Self::FIRST.saturating_mul(1u32 << self.failures.min(8).saturating_sub(1));
        let base = exp.min(Self::CAP);
        // +-20% jitter, so clients that lost the same server do not return in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
        self.not_before = Some(Instant::now() + base.mul_f64(jitter));
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

/// The last handle (and the last open stream) is gone: close the connection rather than
/// leave it to the idle timeout (keep-alives would keep it, and the server's state for it,
/// alive for good). As in [`Channel::close`](super::Channel::close), a handshake that just
/// completed gets the short settle time its session tickets need, so the next connection
/// can still resume with 0-RTT.
impl Drop for ChannelInner {
    fn drop(&mut self) {
        let conn = match self.conn.get_mut() {
            Ok(c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(c) = conn else {
            return;
        };
        let settle_until = c.done_at.get().map(|done| {
            *done + (c.quic.rtt() * 3 / 2 + Duration::from_millis(2)).min(Duration::from_secs(1))
        });
        let quic = c.quic;
        match (settle_until, tokio::runtime::Handle::try_current()) {
            (Some(until), Ok(runtime)) if until > Instant::now() => {
                runtime.spawn(async move {
                    tokio::time::sleep_until(until.into()).await;
                    quic.close(reset::NO_ERROR.into(), b"channel dropped");
                });
            }
            _ => quic.close(reset::NO_ERROR.into(), b"channel dropped"),
        }
    }
}

impl ChannelInner {
    pub(super) fn current(&self) -> Option<Conn> {
        let guard = self.conn.read().ok()?;
        guard
            .as_ref()
            .filter(|c| c.quic.close_reason().is_none())
            .cloned()
    }

    /// The server's catalog, from its last HELLO.
    pub(super) fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) async fn establish(self: &Arc<Self>) -> Result<Conn, String> {
        let endpoint = self.endpoint.read().map_err(|e| e.to_string())?.clone();
        let connecting =
            match endpoint.connect_with(self.config.clone(), self.addr, &self.server_name) {
                Err(quinn::ConnectError::EndpointStopping) if self.shared_sockets.is_some() => {
                    // The shared socket's runtime ended: take a fresh one.
                    let fresh = self
                        .shared_sockets
                        .as_ref()
                        .map(|tls| tls.endpoint_for(self.addr, Some(&endpoint)))
                        .transpose()
                        .map_err(|e| e.to_string())?
                        .unwrap_or(endpoint);
                    if let Ok(mut slot) = self.endpoint.write() {
                        *slot = fresh.clone();
                    }
                    fresh.connect_with(self.config.clone(), self.addr, &self.server_name)
                }
                other => other,
            }
            .map_err(|e| e.to_string())?;
        let done_at = Arc::new(std::sync::OnceLock::new());
        let conn = match zero_rtt::dial(connecting) {
            Dial::Early(quic, accepted) => {
                // We hold a session ticket: the connection is usable now, and idempotent
                // calls may travel in the first flight.
                self.stats
                    .zero_rtt_attempted
                    .fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(None);
                let weak = Arc::downgrade(self);
                let limit = self.handshake_timeout;
                let (watched, stamp) = (quic.clone(), done_at.clone());
                let addr = self.addr;
                tokio::spawn(async move {
                    let accepted = match tokio::time::timeout(limit, accepted).await {
                        Ok(a) => a,
                        Err(_) => {
                            watched.close(reset::NO_ERROR.into(), b"handshake timed out");
                            false
                        }
                    };
                    let _ = stamp.set(Instant::now());
                    let failed = watched.close_reason().is_some();
                    if let Some(inner) = weak.upgrade() {
                        if accepted {
                            inner
                                .stats
                                .zero_rtt_accepted
                                .fetch_add(1, Ordering::Relaxed);
                        } else if !failed {
                            inner
                                .stats
                                .zero_rtt_rejected
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    debug!(%addr, accepted, failed, "0-RTT handshake ended");
                    let _ = tx.send(Some(accepted));
                    if failed {
                        // The handshake itself failed (refused, unreachable): pace the
                        // next attempts as for any failed connection.
                        if let Some(inner) = weak.upgrade() {
                            inner.reconnect.lock().await.failed();
                        }
                    }
                });
                Conn {
                    quic,
                    handshake: rx,
                    early: true,
                    done_at,
                }
            }
            Dial::Full(connecting) => {
                let quic = match tokio::time::timeout(self.handshake_timeout, connecting).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(describe_connection_error(&e)),
                    Err(_) => {
                        return Err(format!(
                            "handshake timed out after {:?}",
                            self.handshake_timeout
                        ))
                    }
                };
                let _ = done_at.set(Instant::now());
                Conn {
                    quic,
                    handshake: watch::channel(Some(false)).1,
                    early: false,
                    done_at,
                }
            }
        };
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        tokio::spawn(read_hello(
            Arc::downgrade(self),
            conn.quic.clone(),
            self.wire,
        ));
        tokio::spawn(reconnect_when_lost(Arc::downgrade(self), conn.quic.clone()));
        Ok(conn)
    }

    /// The open connection, re-established if it was lost (after a backoff if the last
    /// attempts failed).
    pub(super) async fn connection(self: &Arc<Self>) -> Result<Conn, Status> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let mut backoff = self.reconnect.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(t) = backoff.not_before {
            tokio::time::sleep_until(t.into()).await;
        }
        debug!(addr = %self.addr, "reconnecting");
        match self.establish().await {
            Ok(c) => {
                backoff.succeeded();
                Ok(c)
            }
            Err(why) => {
                backoff.failed();
                Err(Status::unavailable(format!(
                    "cannot connect to {}: {why}",
                    self.addr
                )))
            }
        }
    }
}

/// Re-establishes a connection the server closed or the network lost, so the next call
/// finds one ready (paced by the channel's backoff). A connection closed by this client is
/// left closed.
async fn reconnect_when_lost(inner: std::sync::Weak<ChannelInner>, conn: quinn::Connection) {
    let reason = conn.closed().await;
    if matches!(reason, quinn::ConnectionError::LocallyClosed) {
        return;
    }
    let Some(inner) = inner.upgrade() else {
        return;
    };
    debug!(addr = %inner.addr, %reason, "connection lost, reconnecting in the background");
    reconnect_boxed(inner).await;
}

/// `connection` spawns [`reconnect_when_lost`], which calls `connection`: a boxed future
/// with a declared `Send` breaks the cycle the compiler cannot see through.
fn reconnect_boxed(inner: Arc<ChannelInner>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = inner.connection().await;
    })
}

/// What the HELLO reader saw next: a frame on the control stream, or another
/// unidirectional stream the server opened.
enum UniEvent {
    Hello(Result<Option<Frame>, RecvError>),
    Other(Result<quinn::RecvStream, quinn::ConnectionError>),
}

/// Reads the server's HELLO stream (its first unidirectional stream) for as long as the
/// connection lives, and refuses every other unidirectional stream the server opens: the
/// protocol has one, and bytes on another would sit in quinn's buffers unread.
async fn read_hello(
    inner: std::sync::Weak<ChannelInner>,
    conn: quinn::Connection,
    limits: WireLimits,
) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut hello = Some(FramedRecv::new(recv, limits));
    loop {
        let next_frame = async {
            match &mut hello {
                Some(rx) => rx.next_frame().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            frame = next_frame => UniEvent::Hello(frame),
            other = conn.accept_uni() => UniEvent::Other(other),
        };
        let frame = match event {
            UniEvent::Other(Ok(mut extra)) => {
                let _ = extra.stop(reset::REFUSED.into());
                continue;
            }
            UniEvent::Other(Err(_)) => return,
            UniEvent::Hello(Ok(Some(frame))) => frame,
            UniEvent::Hello(_) => {
                // The control stream ended; keep refusing any other.
                hello = None;
                continue;
            }
        };
        if frame.kind != FrameKind::Hello {
            continue;
        }
        match Hello::decode(&frame.payload) {
            Ok(hello) => {
                let Some(inner) = inner.upgrade() else { return };
                let catalog = Arc::new(Catalog::new(hello.methods.iter().cloned()));
                match inner.catalog.write() {
                    Ok(mut c) => *c = catalog,
                    Err(poisoned) => *poisoned.into_inner() = catalog,
                }
                inner.hello.send_replace(Some(Arc::new(hello)));
            }
            Err(e) => debug!(error = %e, "ignoring a bad HELLO"),
        }
    }
}
