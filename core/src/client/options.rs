//! [`CallOptions`]: everything a caller can say about one call, in one value shared by
//! every call builder (one server or routed) and passed on by the proxy.

use std::time::Duration;

use bytes::Bytes;

use crate::codec::Codec;
use crate::wire::Metadata;

/// The options of one call. Call builders set them one by one
/// ([`CallBuilder::timeout`](super::CallBuilder::timeout), ...); a whole value can be given
/// with [`CallBuilder::options`](super::CallBuilder::options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Give up after this long; the server is told the time left and stops the handler
    /// when it passes. `None`: no deadline.
    pub timeout: Option<Duration>,
    /// Request metadata, sent in HEADERS.
    pub metadata: Metadata,
    /// Whether the call is safe to run more than once (may be retried after a failure
    /// that may have run it, hedged, and sent in 0-RTT data). `None`: the servers'
    /// catalogs decide (idempotent only if every server listing the method says so).
    pub idempotent: Option<bool>,
    /// A routing key: a region client sends the call to the key's owner.
    pub routing_key: Option<Bytes>,
    /// The codec. `None`: the payload style's default (postcard for typed messages, raw
    /// for bytes). For raw bytes, the codec they were encoded with.
    pub codec: Option<Codec>,
    /// Wait for a server to become reachable instead of failing fast (gRPC's
    /// wait-for-ready). Default `false`: while a channel's connection is down and a
    /// reconnection attempt has failed, or while a region client has no server for the
    /// method, the call fails at once with `UNAVAILABLE` (marked not run). With `true` it
    /// waits, within its deadline.
    pub wait_for_ready: bool,
}

impl CallOptions {
    /// No deadline, no metadata, idempotency from the catalogs, no key, default codec.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// The deadline for a call started at `started`, if it has a timeout. A timeout too
    /// large to add (`Duration::MAX`) means no deadline.
    pub(crate) fn deadline(&self, started: std::time::Instant) -> Option<std::time::Instant> {
        self.timeout.and_then(|t| started.checked_add(t))
    }
}
