//! The accept loop and one connection: HELLO, admission, streams.

use std::future::Future as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::watch;
use tracing::debug;

use super::call::serve_call;
use super::health::answer_while_stopping;
use super::shared::{OpenCall, ServedConnection, Shared};
use crate::transport::zero_rtt;
use crate::wire::reset;

pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.shutting_down.load(Ordering::SeqCst) {
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        let t = &shared.transport;
        let open = shared.open_connections.load(Ordering::Relaxed);
        let handshakes = shared.handshakes.load(Ordering::Relaxed);
        if open >= t.max_connections || handshakes > t.max_handshakes.saturating_mul(2) {
            debug!(%remote, open, handshakes, "connection refused: limit reached");
            shared.connections_refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        // Many handshakes at once (a flood, perhaps from spoofed addresses): make new
        // peers prove their address first; a spoofed source never sees the Retry.
        if handshakes >= t.max_handshakes
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            if incoming.retry().is_ok() {
                shared.retries_sent.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        // Counted here, before the task runs, so a burst cannot overshoot the limits.
        let open = Counted::new(&shared, |s| &s.open_connections);
        let handshake = Counted::new(&shared, |s| &s.handshakes);
        tokio::spawn(serve_connection(incoming, shared.clone(), open, handshake));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    _open: Counted,
    handshaking: Counted,
) {
    let remote = incoming.remote_address();
    // The connection is usable before its handshake completes, so calls that came in
    // 0-RTT data are read at once; `confirmed` tells which of them may run (see serve_call).
    let Some((conn, handshake)) = zero_rtt::accept(incoming).await else {
        debug!(%remote, "connection refused before its handshake");
        return;
    };
    let Some(served) = shared.serve(&conn) else {
        return;
    };
    let t = &shared.transport;
    if t.max_connection_idle.is_some() || t.max_connection_age.is_some() {
        tokio::spawn(retire_when_due(
            shared.clone(),
            served.clone(),
            conn.clone(),
        ));
    }
    let (confirmed_tx, confirmed) = watch::channel(false);
    {
        let conn = conn.clone();
        let limit = shared.transport.handshake_timeout;
        tokio::spawn(async move {
            let _handshaking = handshaking;
            match tokio::time::timeout(limit, handshake).await {
                Ok(true) => {
                    let _ = confirmed_tx.send(true);
                }
                Ok(false) => debug!(%remote, "handshake failed"),
                Err(_) => {
                    debug!(%remote, "handshake timed out");
                    conn.close(reset::PROTOCOL_ERROR.into(), b"handshake timed out");
                }
            }
        });
    }
    // The HELLO travels on our first unidirectional stream, kept open for updates. It is
    // written by its own task so calls are served even if the client is slow to grant
    // unidirectional stream credit.
    {
        let conn = conn.clone();
        let shared = shared.clone();
        let mut verified = confirmed.clone();
        tokio::spawn(async move {
            // With client certificates required, the HELLO (server id, region, catalog)
            // is for verified clients only: it waits for the end of the handshake, where
            // the client's certificate is checked, instead of going out in 0.5-RTT data.
            if shared.client_auth {
                tokio::select! {
                    ok = verified.wait_for(|c| *c) => if ok.is_err() { return },
                    _ = conn.closed() => return,
                }
            }
            let mut catalog = shared.catalog.subscribe();
            let Ok(mut s) = conn.open_uni().await else {
                return;
            };
            loop {
                catalog.borrow_and_update();
                let frame = shared.hello().to_frame();
                if s.write_all(&frame).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = conn.closed() => return,
                    changed = catalog.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    // The connection's calls run inside this task rather than one task each. A call's
    // response write wakes quinn's connection driver; polled here, every call that is
    // ready writes its response before the driver runs (up to `calls_per_turn` of them, see
    // below), so responses that are ready together leave in shared packets, on a
    // multi-threaded runtime too (where a task per call let the woken driver run after
    // each call and send one packet per response: 0.94 datagrams per call against 0.08).
    // It also saves a task, its allocation and a cross-task wake-up per call. Handlers
    // still run concurrently; one that computes for long should move that work to
    // `spawn_blocking` (or the server can be built with `task_per_call`).
    let mut calls = FuturesUnordered::new();
    // The accept futures live across iterations: made anew for each event they would
    // register with (and leave) quinn's stream notifiers each time, per call.
    let mut accept_bi = std::pin::pin!(conn.accept_bi());
    let mut accept_uni = std::pin::pin!(conn.accept_uni());
    // Calls started since this task last waited or yielded (`calls_per_turn`).
    let per_turn = shared.transport.calls_per_turn;
    let mut started = 0usize;
    // Whether this connection's stream credit was raised to the full limit yet.
    let mut credit_grown = false;
    loop {
        let accepted = std::future::poll_fn(|cx| {
            // Finished calls need nothing more; all that are done are collected at once.
            // (FuturesUnordered yields by itself after a bounded number of polls.)
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
            if let Poll::Ready(bi) = accept_bi.as_mut().poll(cx) {
                accept_bi.set(conn.accept_bi());
                // A turn ends only when another call is waiting: a burst that ended
                // leaves the task idle anyway.
                let turn_over = per_turn > 0 && started >= per_turn;
                return Poll::Ready((bi, turn_over));
            }
            while let Poll::Ready(uni) = accept_uni.as_mut().poll(cx) {
                accept_uni.set(conn.accept_uni());
                match uni {
                    // Clients have no unidirectional streams in this protocol: refuse each
                    // one at once, so its bytes are dropped and its stream credit comes
                    // back rather than sitting in quinn's buffers for the life of the
                    // connection.
                    Ok(mut recv) => {
                        let _ = recv.stop(reset::REFUSED.into());
                    }
                    Err(e) => return Poll::Ready((Err(e), false)),
                }
            }
            // Waiting starts a new turn.
            started = 0;
            Poll::Pending
        })
        .await;
        let (accepted, turn_over) = accepted;
        if turn_over {
            // The calls started this turn have had their first poll, and the answers of
            // those that finished are written. They leave now, and new packets are read,
            // while the rest of the burst waits: the client works on these answers while
            // this server runs the others.
            started = 0;
            tokio::task::yield_now().await;
        }
        match accepted {
            Ok((mut send, mut recv)) => {
                // Counted before the check, so a shutdown either waits for this call or
                // finds it refused here.
                let open = OpenCall::new(&shared, &served);
                if !credit_grown {
                    credit_grown = shared
                        .transport
                        .grow_stream_credit(&conn, send.id().index());
                }
                if shared.shutting_down.load(Ordering::SeqCst)
                    || served.retiring.load(Ordering::SeqCst)
                {
                    // Every stream accepted from now on has a higher ID than any call that
                    // may have run, so even if this reset is lost in the final close, the
                    // close tells the client that this call did not run.
                    if shared.shutting_down.load(Ordering::SeqCst) {
                        // Refused, unless it is the health check ("DRAINING").
                        tokio::spawn(answer_while_stopping(shared.clone(), open, send, recv));
                    } else {
                        let _ = send.reset(reset::REFUSED.into());
                        let _ = recv.stop(reset::REFUSED.into());
                    }
                    continue;
                }
                let call = serve_call(
                    shared.clone(),
                    open,
                    served.clone(),
                    remote,
                    confirmed.clone(),
                    send,
                    recv,
                );
                if shared.task_per_call {
                    tokio::spawn(call);
                } else {
                    // Boxed here, where it is made: the call's future is a few KB, and
                    // `push` would otherwise copy it through several layers of its own.
                    calls.push(Box::pin(call));
                    started += 1;
                }
            }
            Err(e) => {
                debug!(%remote, reason = %e, "connection ended");
                shared.forget(&conn);
                // Calls still running end as they would have in tasks of their own
                // (their handlers see the connection gone through their context).
                while calls.next().await.is_some() {}
                return;
            }
        }
    }
}

/// Retires a connection once it has had no call for `max_connection_idle`, or once it is
/// `max_connection_age` old: no handler starts on it any more, new streams are refused,
/// and it closes (naming the first stream that did not run) once its calls are answered and
/// the answers acknowledged, or after `max_connection_age_grace`
/// (`CONNECTION_CLOSE(RETIRED)`). Clients reconnect on their next call.
async fn retire_when_due(
    shared: Arc<Shared>,
    served: Arc<ServedConnection>,
    conn: quinn::Connection,
) {
    let t = &shared.transport;
    let too_old = async {
        match t.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let Some(limit) = t.max_connection_idle else {
            return std::future::pending().await;
        };
        loop {
            served.wait_quiet().await;
            let seen = served.accepted.load(Ordering::SeqCst);
            tokio::time::sleep(limit).await;
            if served.calls.load(Ordering::SeqCst) == 0
                && served.accepted.load(Ordering::SeqCst) == seen
            {
                return;
            }
        }
    };
    let why = tokio::select! {
        () = too_old => "connection reached its maximum age",
        () = idle => "connection idle",
        _ = conn.closed() => return,
    };
    debug!(remote = %conn.remote_address(), why, "retiring the connection");
    served.retiring.store(true, Ordering::SeqCst);
    let settled = async {
        served.wait_quiet().await;
        served.responses_delivered().await;
    };
    let _ = tokio::time::timeout(t.max_connection_age_grace, settled).await;
    served.close_retired(why);
}

/// Counts something in one of [`Shared`]'s counters for as long as it lives: a
/// connection being served ([`Shared::open_connections`]), a handshake under way
/// ([`Shared::handshakes`]).
struct Counted(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Counted {
    fn new(shared: &Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Counted {
        counter(shared).fetch_add(1, Ordering::Relaxed);
        Counted(shared.clone(), counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}
