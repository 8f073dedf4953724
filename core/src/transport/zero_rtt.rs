//! The one place that touches quinn's 0-RTT API (`Connecting::into_0rtt`,
//! `ZeroRttAccepted`, `RecvStream::is_0rtt`), which quinn's next release changes.
//!
//! Client: a connection attempt that holds a session ticket becomes usable at once; the
//! returned future tells, when the handshake completes, whether the server accepted the
//! early data. Server: every incoming connection is usable at once (0.5-RTT); the returned
//! future resolves when the handshake completes, which a replayed first flight never
//! achieves, because it cannot produce the client's Finished message.

use std::future::Future;

/// How a client's connection attempt proceeds.
pub(crate) enum Dial {
    /// We hold a ticket: the connection can carry early data now. The future resolves to
    /// whether the server accepted it, once the handshake completes (false also when the
    /// handshake fails).
    Early(
        quinn::Connection,
        Box<dyn Future<Output = bool> + Send + Unpin>,
    ),
    /// No ticket: a full handshake must complete first.
    Full(quinn::Connecting),
}

/// Tries to use 0-RTT for an outgoing connection.
pub(crate) fn dial(connecting: quinn::Connecting) -> Dial {
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => Dial::Early(conn, Box::new(accepted)),
        Err(connecting) => Dial::Full(connecting),
    }
}

/// Accepts an incoming connection before its handshake completes. The future resolves to
/// `true` once the handshake is complete, `false` if it failed.
pub(crate) async fn accept(
    incoming: quinn::Incoming,
) -> Option<(quinn::Connection, impl Future<Output = bool> + Send)> {
    let connecting = incoming.accept().ok()?;
    match connecting.into_0rtt() {
        Ok((conn, done)) => {
            let watched = conn.clone();
            Some((conn, Box::pin(done_or_closed(watched, done))))
        }
        Err(_) => None,
    }
}

/// quinn's server-side future resolves when the handshake completes, to whether this
/// connection accepted 0-RTT data (not always `true`, whatever its docs say), or to `false`
/// when the connection fails first. Completion is therefore "resolved and still open".
async fn done_or_closed(conn: quinn::Connection, done: quinn::ZeroRttAccepted) -> bool {
    let _accepted_early_data = done.await;
    conn.close_reason().is_none()
}

/// Whether a stream arrived in 0-RTT data (and may therefore be a replay).
pub(crate) fn is_early(recv: &quinn::RecvStream) -> bool {
    recv.is_0rtt()
}
