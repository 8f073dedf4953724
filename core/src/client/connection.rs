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
    /// How long a call waits for a lost connection to come back before failing fast.
    pub(super) reconnect_wait: Duration,
    /// Where the connection stands; the driver task moves it.
    pub(super) link: watch::Sender<Link>,
    /// Tells the driver a call wants a connection after this client closed the last one.
    pub(super) wake: Arc<tokio::sync::Notify>,
    /// Dropped with the channel: the driver and any handshake under way stop at once.
    pub(super) closed: watch::Sender<()>,
    pub(super) hello: watch::Sender<Option<Arc<Hello>>>,
    /// The last HELLO's catalog, indexed (empty until the first HELLO).
    pub(super) catalog: std::sync::RwLock<Arc<Catalog>>,
    /// A process-wide sequence number of the last HELLO (0: none yet), so a change of any
    /// channel's catalog shows as a new number.
    pub(super) hello_seq: std::sync::atomic::AtomicU64,
    pub(super) stats: Counters,
    /// Extra connections opened while the main one has no stream credit left
    /// ([`TransportConfig::extra_connections`](crate::TransportConfig)), and how many may be.
    pub(super) extra: tokio::sync::Mutex<Vec<quinn::Connection>>,
    pub(super) max_extra: usize,
    /// How much longer than two round trips a call without stream credit waits for more
    /// before it opens an extra connection
    /// ([`TransportConfig::stream_credit_grace`](crate::TransportConfig)).
    pub(super) credit_grace: std::time::Duration,
    /// The channel's interceptor chain (empty for a region client's channels: the region
    /// client runs its own, once per call).
    pub(super) interceptors: super::intercept::Chain,
}

/// One QUIC connection and the state of its handshake, shared: every call takes a
/// handle, and cloning a `quinn::Connection` (or a watch receiver) would lock the
/// connection's state on each call, twice (taken, then dropped).
#[derive(Clone)]
pub(super) struct Conn(Arc<ConnState>);

impl std::ops::Deref for Conn {
    type Target = ConnState;

    fn deref(&self) -> &ConnState {
        &self.0
    }
}

/// What [`Conn`] shares.
pub(super) struct ConnState {
    pub(super) quic: quinn::Connection,
    /// `None` while the handshake runs; then whether 0-RTT data was accepted.
    pub(super) handshake: watch::Receiver<Option<bool>>,
    /// The connection tried 0-RTT.
    pub(super) early: bool,
    /// When the handshake completed, for [`Channel::close`].
    pub(super) done_at: Arc<std::sync::OnceLock<Instant>>,
    /// When a reconnection attempt began (`None` for the channel's first connection,
    /// whose handshake its builder awaited): calls that would wait for its handshake wait
    /// only up to `reconnect_wait` from then.
    pub(super) reconnected_at: Option<Instant>,
}

impl ConnState {
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

/// Where the channel's connection stands, as calls see it.
#[derive(Debug, Clone)]
pub(super) enum Link {
    /// Connected (or about to learn it was lost).
    Ready,
    /// No connection and none being made: closed by this client. The next call starts one.
    Idle,
    /// A connection is being made. `retrying`: an earlier attempt since the loss failed,
    /// so the server is likely gone and calls fail fast while this one runs;
    /// `last_error`: why the previous connection or attempt ended, for their status.
    Connecting {
        since: Instant,
        retrying: bool,
        last_error: Option<String>,
    },
    /// The last attempt failed; the next one starts after a backoff.
    Failing { error: String },
}

/// Reconnection pacing: capped exponential backoff with jitter.
fn backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);
    let exp = FIRST.saturating_mul(1u32 << failures.min(8).saturating_sub(1));
    let base = exp.min(CAP);
    // +-20% jitter, so clients that lost the same server do not return in lockstep.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(jitter)
}

/// A connection attempt under way, holding nothing of the channel: a channel dropped
/// meanwhile is not kept alive by it.
enum Dialing {
    /// Usable now (0-RTT); the future tells whether the early data was accepted.
    Early(
        quinn::Connection,
        Box<dyn Future<Output = bool> + Send + Unpin>,
    ),
    /// A full handshake, and how long it may take.
    Full(quinn::Connecting, Duration),
}

/// The last handle (and the last open stream) is gone: close the connection rather than
/// leave it to the idle timeout (keep-alives would keep it, and the server's state for it,
/// alive for good). As in [`Channel::close`](super::Channel::close), a handshake that just
/// completed gets the short settle time its session tickets need, so the next connection
/// can still resume with 0-RTT.
impl Drop for ChannelInner {
    fn drop(&mut self) {
        for extra in self.extra.get_mut().drain(..) {
            extra.close(reset::NO_ERROR.into(), b"channel dropped");
        }
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
        let quic = c.quic.clone();
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
    /// The open connection, if there is one and it is usable now.
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

    /// Makes the first connection (the builder's `connect`), then hands the connection
    /// over to the channel's driver task, which re-establishes it when it is lost.
    pub(super) async fn establish(self: &Arc<Self>) -> Result<Conn, String> {
        let conn = match self.begin_dial()? {
            Dialing::Early(quic, accepted) => self.install_early(quic, accepted, None),
            Dialing::Full(connecting, limit) => {
                self.install(full_handshake(connecting, limit).await?, None)
            }
        };
        self.link.send_replace(Link::Ready);
        tokio::spawn(drive(Arc::downgrade(self), self.closed.subscribe()));
        Ok(conn)
    }

    /// A stream on an extra connection, for a call the main connection has no stream
    /// credit for: on the first extra connection with credit, or (if `dial`) on a new one
    /// while fewer than `max_extra` are open. `None` when every extra connection is
    /// saturated too (or none may be opened): the caller waits for credit on the main
    /// connection.
    pub(super) async fn extra_stream(
        &self,
        dial: bool,
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        if self.max_extra == 0 {
            return None;
        }
        // Held across a dial: calls that find no credit meanwhile wait for that one.
        let mut extra = self.extra.lock().await;
        extra.retain(|c| c.close_reason().is_none());
        for c in extra.iter() {
            if let Some(Ok(pair)) = open_now(c) {
                return Some(pair);
            }
        }
        if !dial || extra.len() >= self.max_extra {
            return None;
        }
        let endpoint = self.endpoint.read().ok()?.clone();
        let connecting = endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)
            .ok()?;
        let conn = full_handshake(connecting, self.handshake_timeout)
            .await
            .ok()?;
        debug!(addr = %self.addr, extra = extra.len() + 1, "opened an extra connection: stream credit ran out");
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let pair = open_now(&conn).and_then(Result::ok);
        extra.push(conn);
        pair
    }

    /// Starts a connection attempt (0-RTT when a session ticket is held).
    fn begin_dial(&self) -> Result<Dialing, String> {
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
        Ok(match zero_rtt::dial(connecting) {
            Dial::Early(quic, accepted) => Dialing::Early(quic, accepted),
            Dial::Full(connecting) => Dialing::Full(connecting, self.handshake_timeout),
        })
    }

    /// A resumed connection, usable now: idempotent calls may travel in the first flight.
    /// A task follows its handshake to the end.
    fn install_early(
        self: &Arc<Self>,
        quic: quinn::Connection,
        accepted: Box<dyn Future<Output = bool> + Send + Unpin>,
        reconnected_at: Option<Instant>,
    ) -> Conn {
        self.stats
            .zero_rtt_attempted
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let weak = Arc::downgrade(self);
        let limit = self.handshake_timeout;
        let done_at = Arc::new(std::sync::OnceLock::new());
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
            let failed = watched.close_reason().is_some();
            if !failed {
                let _ = stamp.set(Instant::now());
            }
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
        });
        self.put(Conn(Arc::new(ConnState {
            quic,
            handshake: rx,
            early: true,
            done_at,
            reconnected_at,
        })))
    }

    /// A connection whose full handshake completed.
    fn install(self: &Arc<Self>, quic: quinn::Connection, reconnected_at: Option<Instant>) -> Conn {
        let done_at = Arc::new(std::sync::OnceLock::new());
        let _ = done_at.set(Instant::now());
        self.put(Conn(Arc::new(ConnState {
            quic,
            handshake: watch::channel(Some(false)).1,
            early: false,
            done_at,
            reconnected_at,
        })))
    }

    fn put(self: &Arc<Self>, conn: Conn) -> Conn {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        tokio::spawn(read_hello(
            Arc::downgrade(self),
            conn.quic.clone(),
            self.wire,
        ));
        conn
    }

    /// Waits for a connection, for a call that found none open ([`Self::current`]). While
    /// the connection is being re-established a call waits up to `reconnect_wait` from the
    /// loss; once an attempt has failed (the server is likely gone) calls fail at once with
    /// `UNAVAILABLE`, marked not run, as gRPC's calls do in transient failure. With
    /// `wait_for_ready` a call waits for the connection instead (its deadline bounds the
    /// wait). Rare, and its future large: callers box it, out of the common path's future.
    pub(super) async fn wait_for_connection(&self, wait_for_ready: bool) -> Result<Conn, Status> {
        let mut link = self.link.subscribe();
        loop {
            if let Some(c) = self.current() {
                return Ok(c);
            }
            let state = link.borrow_and_update().clone();
            let wait_until = match state {
                Link::Idle => {
                    self.wake.notify_one();
                    None
                }
                // The connection just died and the driver has not said so yet.
                Link::Ready => Some(Instant::now() + Duration::from_millis(50)),
                _ if wait_for_ready => None,
                Link::Connecting {
                    since,
                    retrying: false,
                    ..
                } => {
                    let until = since + self.reconnect_wait;
                    if Instant::now() >= until {
                        return Err(self.unreachable(format!(
                            "still connecting after {:?}",
                            self.reconnect_wait
                        )));
                    }
                    Some(until)
                }
                Link::Connecting { last_error, .. } => {
                    return Err(self.unreachable(match last_error {
                        Some(e) => format!("reconnecting after a failed attempt ({e})"),
                        None => "reconnecting after a failed attempt".into(),
                    }))
                }
                Link::Failing { error } => return Err(self.unreachable(error)),
            };
            let changed = link.changed();
            match wait_until {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t.into(), changed).await;
                }
                None => {
                    let _ = changed.await;
                }
            }
        }
    }

    fn unreachable(&self, why: String) -> Status {
        Status::unavailable(format!("cannot connect to {}: {why}", self.addr))
    }

    /// Whether calls fail fast now (an attempt to reconnect has failed).
    pub(super) fn failing(&self) -> bool {
        matches!(
            *self.link.borrow(),
            Link::Failing { .. } | Link::Connecting { retrying: true, .. }
        )
    }
}

/// A bidirectional stream on `conn` if it has stream credit now (`None` if it would wait).
fn open_now(
    conn: &quinn::Connection,
) -> Option<Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>> {
    use std::future::Future;
    let open = conn.open_bi();
    tokio::pin!(open);
    let waker = std::task::Waker::noop();
    match open
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Waits for a full handshake, up to `limit`.
async fn full_handshake(
    connecting: quinn::Connecting,
    limit: Duration,
) -> Result<quinn::Connection, String> {
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe_connection_error(&e)),
        Err(_) => Err(format!("handshake timed out after {limit:?}")),
    }
}

/// The channel's driver: waits for the connection to end, then re-establishes it, with
/// capped, jittered backoff between failed attempts, until the channel is dropped. It holds
/// the channel only between steps, never across a handshake or a backoff: a dropped
/// channel ends it (and any handshake under way) at once, leaving no socket or traffic.
async fn drive(inner: std::sync::Weak<ChannelInner>, mut closed: watch::Receiver<()>) {
    let mut failures = 0u32;
    // Why the last connection or attempt ended, kept for the status of calls that fail
    // fast while the next attempt runs (a refused client certificate ends a connection
    // just after its handshake, and every redial the same way).
    let mut last_error: Option<String> = None;
    loop {
        // Wait for the current connection to end.
        let (conn, wake) = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let conn = strong.conn.read().ok().and_then(|c| c.clone());
            (conn, strong.wake.clone())
        };
        if let Some(conn) = conn {
            let reason = tokio::select! {
                r = conn.quic.closed() => r,
                _ = closed.changed() => return,
            };
            // A connection that served for a while resets the backoff; one that died young
            // (a failed 0-RTT handshake, a server that closes at once) does not, so a
            // broken server is not redialled in a tight loop.
            let lived = conn.done_at.get().map_or(Duration::ZERO, |d| d.elapsed());
            failures = if lived >= Duration::from_secs(1) {
                0
            } else {
                failures + 1
            };
            let retired = matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code.into_inner() == u64::from(reset::RETIRED));
            if matches!(reason, quinn::ConnectionError::LocallyClosed) || retired {
                // Closed by this client, or retired by the server (idle or too old): the
                // next call asks for a new one.
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                strong.link.send_replace(Link::Idle);
                drop(strong);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = closed.changed() => return,
                }
                failures = 0;
            } else if let Some(strong) = inner.upgrade() {
                debug!(addr = %strong.addr, %reason, "connection lost, reconnecting");
                last_error = Some(describe_connection_error(&reason));
            }
        }
        if failures > 0 {
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = closed.changed() => return,
            }
        }
        // Dial until connected.
        loop {
            let dial_started = Instant::now();
            let dialing = {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                strong.link.send_replace(Link::Connecting {
                    since: Instant::now(),
                    retrying: failures > 0,
                    last_error: last_error.clone(),
                });
                strong.begin_dial()
            };
            let result = match dialing {
                Ok(Dialing::Early(quic, accepted)) => Ok(Err((quic, accepted))),
                Ok(Dialing::Full(connecting, limit)) => tokio::select! {
                    r = full_handshake(connecting, limit) => r.map(Ok),
                    _ = closed.changed() => return,
                },
                Err(e) => Err(e),
            };
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match result {
                Ok(done) => {
                    let again = Some(dial_started);
                    match done {
                        Ok(quic) => strong.install(quic, again),
                        Err((quic, accepted)) => strong.install_early(quic, accepted, again),
                    };
                    strong.link.send_replace(Link::Ready);
                    break;
                }
                Err(error) => {
                    debug!(addr = %strong.addr, %error, "reconnection failed");
                    last_error = Some(error.clone());
                    strong.link.send_replace(Link::Failing { error });
                    drop(strong);
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = closed.changed() => return,
                    }
                }
            }
        }
    }
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
                static HELLOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let seq = HELLOS.fetch_add(1, Ordering::Relaxed) + 1;
                inner.hello_seq.store(seq, Ordering::Release);
                inner.hello.send_replace(Some(Arc::new(hello)));
            }
            Err(e) => debug!(error = %e, "ignoring a bad HELLO"),
        }
    }
}
