//! A channel's counters and the snapshot [`ChannelStats`] they make.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) calls_started: AtomicU64,
    pub(super) calls_failed: AtomicU64,
    pub(super) stream_credit_waits: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) zero_rtt_attempted: AtomicU64,
    pub(super) zero_rtt_accepted: AtomicU64,
    pub(super) zero_rtt_rejected: AtomicU64,
    pub(super) early_calls: AtomicU64,
}

/// Counters and transport figures of a channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    /// Calls started.
    pub calls_started: u64,
    /// Calls that ended with a status other than `OK`.
    pub calls_failed: u64,
    /// Calls that had to wait for stream credit because the server's concurrent stream
    /// limit was reached.
    pub stream_credit_waits: u64,
    /// Connections established (1 plus reconnects).
    pub connections: u64,
    /// QUIC's smoothed RTT estimate of the current connection.
    pub rtt: Option<Duration>,
    /// QUIC's minimum observed RTT of the current connection.
    pub min_rtt: Option<Duration>,
    /// UDP datagrams sent on the current connection.
    pub datagrams_sent: u64,
    /// UDP datagrams received on the current connection.
    pub datagrams_received: u64,
    /// Calls sent a second time (after a 0-RTT rejection, a refusal, or a lost
    /// connection for idempotent calls).
    pub retries: u64,
    /// Connections that tried 0-RTT (we held a session ticket: a resumed connection).
    pub zero_rtt_attempted: u64,
    /// Connections whose 0-RTT data the server accepted.
    pub zero_rtt_accepted: u64,
    /// Connections whose 0-RTT data the server rejected (their early calls were re-sent).
    pub zero_rtt_rejected: u64,
    /// Calls sent before the handshake completed, in 0-RTT data.
    pub early_calls: u64,
    /// Whether the current connection resumed a TLS session with 0-RTT.
    pub resumed: bool,
    /// For the current connection: `None` while its handshake runs or when it did not try
    /// 0-RTT, else whether the server accepted the 0-RTT data.
    pub zero_rtt: Option<bool>,
    /// The largest UDP payload the current connection's path is known to carry, in bytes:
    /// 1,200 at first, raised by path MTU discovery up to 1,452 (probes in steps of at
    /// least 64 bytes; see [`crate::TransportConfig`]).
    pub path_mtu: Option<u16>,
    /// Path MTU probes the current connection has sent.
    pub mtu_probes_sent: u64,
    /// STOP_SENDING frames the current connection has sent: responses the client stopped
    /// reading before their end (a call cancelled, abandoned or past its deadline). A
    /// call that reads its whole response sends none when the end of its stream has
    /// arrived with its TRAILERS, as a Meridian server sends it.
    pub stop_sending_sent: u64,
}
