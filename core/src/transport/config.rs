//! [`TransportConfig`]: every limit and timer of a QUIC connection, with its default.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;

use crate::codec::DecodeLimits;
use crate::wire::WireLimits;

/// Limits and timers of a QUIC connection, shared by clients and servers.
///
/// Path MTU discovery is always on: packets start at 1,200 bytes of UDP payload and are
/// raised to 1,452 where the path carries them, probing in steps of at least 64 bytes
/// (two probes on a path that takes 1,452; [`crate::ChannelStats::path_mtu`] shows where
/// a connection settled).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Concurrent calls (bidirectional streams) the peer may open to us. A caller beyond it
    /// waits for stream credit, within its deadline. Default 1024.
    pub max_concurrent_streams: u32,
    /// Server: concurrent calls a new connection is allowed at first (at most
    /// [`TransportConfig::max_concurrent_streams`]). Once the client has opened half as
    /// many calls (in all, not at once), the connection is allowed the full
    /// `max_concurrent_streams`, announced to the client in the server's next packet.
    /// quinn sets up state for every stream it allows when it allows it, so a connection
    /// that makes few calls does not pay for a thousand streams: about 80 KiB of memory
    /// per connection and an eighth of the instructions the server spends on its setup
    /// (`benches/RESULTS.md`, fifteenth round). A client whose burst outruns the first
    /// allowance waits for the rest (about one round trip) rather than open extra
    /// connections ([`TransportConfig::stream_credit_grace`]). 0 counts as 1 (a
    /// connection allowed no stream could never ask for more). Default
    /// [`TransportConfig::DEFAULT_INITIAL_STREAM_CREDIT`] (100).
    pub initial_stream_credit: u32,
    /// Bytes the peer may send on one stream before we read them. Default 2 MiB.
    pub stream_receive_window: u32,
    /// Bytes the peer may send on a whole connection before we read them out of quinn.
    /// Default 16 MiB. Bytes read out of quinn into a call's buffers count against
    /// [`TransportConfig::connection_buffer_budget`] instead, so a server connection holds
    /// at most this window plus that budget of received bytes.
    pub connection_receive_window: u32,
    /// Bytes we buffer for sending on a connection. Default 16 MiB.
    pub send_window: u64,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Ping an idle connection this often so it stays open and its RTT stays fresh.
    /// Default 5 s; `None` disables.
    pub keep_alive_interval: Option<Duration>,
    /// Time allowed for a QUIC + TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Client: how long a call waits for a lost connection to be re-established before it
    /// fails with `UNAVAILABLE` (marked not run). Once a reconnection attempt has failed,
    /// calls fail at once until one succeeds (gRPC's behaviour in transient failure);
    /// calls with `wait_for_ready` wait instead, within their deadline. Default 1 s.
    pub reconnect_wait: Duration,
    /// Server: how long a new call stream may take to deliver its HEADERS. A stream still
    /// without HEADERS then is reset (`PROTOCOL_ERROR`). Default 10 s.
    pub headers_timeout: Duration,
    /// Server: how long, after its HEADERS, a unary or server-streaming call may take to
    /// deliver its whole request message, whatever its deadline (an earlier deadline ends
    /// it sooner). A request still incomplete then fails with `DEADLINE_EXCEEDED`, marked
    /// not run (no handler started), and its buffers are freed: a peer cannot hold memory
    /// by sending slowly. Default 30 s.
    pub request_timeout: Duration,
    /// Server: how long the final write of a call without a deadline (the unary reply and
    /// the TRAILERS) may wait for the client to take it. A client that stops reading gets
    /// its stream reset (`CANCELLED`) when this passes, and the call's buffers are freed.
    /// On a call with a deadline the deadline bounds that write instead, and every
    /// streamed response write too (`DEADLINE_EXCEEDED`); a `STOP_SENDING` from the client
    /// ends a blocked write at once. Without a deadline, each streamed response message
    /// may wait this long too. Default 30 s.
    pub response_write_timeout: Duration,
    /// Server: bytes of received frames one connection's calls may hold in memory at once
    /// (requests being assembled, unary requests for the life of their call). A read that
    /// would go past it fails its call with `RESOURCE_EXHAUSTED` and drops the bytes.
    /// Default 32 MiB. It should be at least the largest message
    /// ([`WireLimits::max_message_size`]) plus its frame header, or such messages are
    /// always refused.
    pub connection_buffer_budget: usize,
    /// Server: the same, across every connection of the server. Once spent, calls whose
    /// bytes do not fit fail with `RESOURCE_EXHAUSTED` on every connection. Default
    /// 256 MiB.
    pub server_buffer_budget: usize,
    /// Server: connections served at once (handshakes included). A connection beyond it
    /// is refused (QUIC `CONNECTION_REFUSED`). Default 4096.
    pub max_connections: usize,
    /// Server: handshakes in progress beyond which a new connection must first prove its
    /// address with a QUIC Retry (one more round trip; spoofed sources cannot complete
    /// it). Beyond twice this number new connections are refused. Default 128 (0: every
    /// new peer gets a Retry).
    pub max_handshakes: usize,
    /// Server: a connection with no call for this long is closed gracefully (`RETIRED`,
    /// nothing lost: clients reconnect on their next call). Default `None` (never), as in
    /// gRPC: region clients keep idle connections open on purpose, to measure RTT.
    pub max_connection_idle: Option<Duration>,
    /// Server: a connection this old stops taking calls and closes gracefully once its
    /// calls are settled (or after [`TransportConfig::max_connection_age_grace`]), so
    /// clients spread over new servers and rotated certificates take effect. Default
    /// `None` (never).
    pub max_connection_age: Option<Duration>,
    /// Server: how long calls in flight on a connection being retired (idle or too old)
    /// get to finish before it closes. Default 30 s.
    pub max_connection_age_grace: Duration,
    /// Client: extra connections a channel may open to its server while every stream the
    /// server allows on the main connection is in use
    /// ([`TransportConfig::max_concurrent_streams`] on the server's side), so calls beyond
    /// that limit do not queue behind the ones in flight. A call that finds no credit
    /// first waits up to two round trips (plus [`TransportConfig::stream_credit_grace`])
    /// for the server to grant more, as servers do when a connection gets busy
    /// ([`TransportConfig::initial_stream_credit`]); only then does it open one. They use
    /// full handshakes and close with the channel. Default 3 (a channel then carries up to
    /// 4 times the server's stream limit); 0 makes such calls wait for stream credit.
    pub extra_connections: usize,
    /// Client: how much longer than two round trips a call that finds no stream credit
    /// waits for the server to grant more before it opens an extra connection
    /// ([`TransportConfig::extra_connections`]): room for the server to read the burst and
    /// send the credit while both processes are busy. Default 20 ms.
    pub stream_credit_grace: Duration,
    /// Server: distinct method names its metrics keep a row for (a proxy forwards any
    /// name a caller sends, so names beyond it share one `<other>` row, and calls to
    /// methods it does not serve share `<unknown>`). Default 512.
    pub max_metric_methods: usize,
    /// Server: calls a connection's task starts in a row before it gives the runtime a
    /// turn (`tokio::task::yield_now`) while more calls wait, so that quinn sends the
    /// answers already written and reads new packets while the rest of a burst is still to
    /// run. Without it a burst of calls is answered all at once when its last call is done,
    /// and client and server take turns instead of working at the same time: with 64 calls
    /// in flight on one connection, turns of 32 raise calls per second from about 0.6x
    /// to about 1.1x of bare quinn's (`benches/RESULTS.md`, twelfth round). Default
    /// [`TransportConfig::DEFAULT_CALLS_PER_TURN`] (32); 0 never yields. Calls run in
    /// tasks of their own ([`ServerBuilder::task_per_call`](crate::ServerBuilder::task_per_call))
    /// are not counted.
    pub calls_per_turn: usize,
    /// Frame and metadata size limits.
    pub wire: WireLimits,
    /// Nesting depth, size and decoded-size limits for [`crate::codec::Value`] messages.
    pub value: DecodeLimits,
}

impl TransportConfig {
    /// Default [`TransportConfig::max_concurrent_streams`].
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Default [`TransportConfig::initial_stream_credit`]: quinn's own default stream limit,
    /// and the usual HTTP/2 one.
    pub const DEFAULT_INITIAL_STREAM_CREDIT: u32 = 100;
    /// Default [`TransportConfig::stream_receive_window`].
    pub const DEFAULT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
    /// Default [`TransportConfig::connection_receive_window`].
    pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Default [`TransportConfig::connection_buffer_budget`].
    pub const DEFAULT_CONNECTION_BUFFER_BUDGET: usize = 32 * 1024 * 1024;
    /// Default [`TransportConfig::server_buffer_budget`].
    pub const DEFAULT_SERVER_BUFFER_BUDGET: usize = 256 * 1024 * 1024;
    /// Default [`TransportConfig::calls_per_turn`]: half of a burst of 64 calls. Turns of
    /// 16 gave the same gain on one busy connection but cost a little when the server's
    /// CPU is the limit; turns of 32 cost nothing measurable there (`benches/RESULTS.md`).
    pub const DEFAULT_CALLS_PER_TURN: usize = 32;

    /// The quinn settings of a server: a new connection is allowed
    /// [`TransportConfig::initial_stream_credit`] streams, raised by
    /// [`TransportConfig::grow_stream_credit`] once it gets busy.
    pub(crate) fn to_quinn_server(&self) -> Arc<quinn::TransportConfig> {
        let mut t = self.quinn_transport();
        t.max_concurrent_bidi_streams(self.first_stream_credit().into());
        Arc::new(t)
    }

    /// Streams a new server connection is allowed.
    pub(crate) fn first_stream_credit(&self) -> u32 {
        self.initial_stream_credit
            .max(1)
            .min(self.max_concurrent_streams)
    }

    /// Called by a server connection as it accepts the call on its stream number `index`
    /// (0 for the first): once the client has opened half as many streams as it was first
    /// allowed, raises the connection's stream credit to `max_concurrent_streams`. Returns
    /// whether that is done (then it need not be called again for the connection).
    ///
    /// It counts streams opened rather than calls in flight at the server on purpose: quick
    /// calls are over at the server long before their streams' credit is back at the
    /// client (a round trip later), so a client with many calls in flight could be held at
    /// the first allowance while the server never sees many at once.
    pub(crate) fn grow_stream_credit(&self, conn: &quinn::Connection, index: u64) -> bool {
        let first = self.first_stream_credit();
        if index.saturating_add(1).saturating_mul(2) < u64::from(first) {
            return false;
        }
        if self.max_concurrent_streams > first {
            conn.set_max_concurrent_bi_streams(self.max_concurrent_streams.into());
        }
        true
    }

    /// The quinn settings of a client. A server never opens a bidirectional stream to a
    /// client, so a client allows none: quinn sets up the state of every stream the peer
    /// may open when the connection starts (1,024 entries by default), work and memory
    /// spent on each connection for nothing.
    pub(crate) fn to_quinn_client(&self) -> Arc<quinn::TransportConfig> {
        let mut t = self.quinn_transport();
        t.max_concurrent_bidi_streams(0u32.into());
        Arc::new(t)
    }

    fn quinn_transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            // The server's HELLO stream and a little slack. Any other unidirectional stream
            // is stopped as soon as it arrives (STOP_SENDING(REFUSED)), so its bytes are
            // dropped and its credit comes back.
            .max_concurrent_uni_streams(4u32.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.connection_receive_window.into())
            .send_window(self.send_window)
            .keep_alive_interval(self.keep_alive_interval);
        // An idle timeout over quinn's varint range disables it; keep it bounded instead.
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000)));
        t.max_idle_timeout(Some(idle));
        t.mtu_discovery_config(Some(mtu_discovery()));
        t
    }
}

/// Path MTU discovery in steps of at least 64 bytes (quinn's default is 20). quinn
/// searches from 1,200 bytes up to 1,452 by halving: with steps of 20 that is four
/// probes (1,326, 1,389, 1,420, 1,436), with 64 two (1,326, then 1,452). Each probe is
/// a packet of that size, mostly PADDING, which the peer parses a byte at a time: the
/// two probes saved are about a tenth of a server's CPU per connection setup
/// (`benches/RESULTS.md`). A path that takes 1,452 still gets it; a narrower one
/// settles within 64 bytes of its limit rather than 20.
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.minimum_change(64);
    mtu
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            initial_stream_credit: Self::DEFAULT_INITIAL_STREAM_CREDIT,
            stream_receive_window: Self::DEFAULT_STREAM_WINDOW,
            connection_receive_window: Self::DEFAULT_CONNECTION_WINDOW,
            send_window: u64::from(Self::DEFAULT_CONNECTION_WINDOW),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Some(Duration::from_secs(5)),
            handshake_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_secs(1),
            headers_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            response_write_timeout: Duration::from_secs(30),
            connection_buffer_budget: Self::DEFAULT_CONNECTION_BUFFER_BUDGET,
            server_buffer_budget: Self::DEFAULT_SERVER_BUFFER_BUDGET,
            max_connections: 4096,
            max_handshakes: 128,
            max_connection_idle: None,
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            extra_connections: 3,
            stream_credit_grace: Duration::from_millis(20),
            max_metric_methods: 512,
            calls_per_turn: Self::DEFAULT_CALLS_PER_TURN,
            wire: WireLimits::default(),
            value: DecodeLimits::default(),
        }
    }
}

/// The crypto provider Meridian uses: ring, TLS 1.3 suites with AES-128-GCM-SHA256 first.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

#[cfg(test)]
mod tests {
    use super::TransportConfig;

    /// The first allowance is `initial_stream_credit`, never above the limit, and never 0
    /// (a connection allowed no stream could not ask for more).
    #[test]
    fn first_stream_credit_is_bounded_by_the_limit_and_never_zero() {
        let with = |initial, max| TransportConfig {
            initial_stream_credit: initial,
            max_concurrent_streams: max,
            ..TransportConfig::default()
        };
        assert_eq!(TransportConfig::default().first_stream_credit(), 100);
        assert_eq!(with(100, 16).first_stream_credit(), 16);
        assert_eq!(with(0, 1024).first_stream_credit(), 1);
        assert_eq!(with(2000, 1024).first_stream_credit(), 1024);
    }
}
