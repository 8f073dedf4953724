//! Server-side TLS session storage, which resumption and 0-RTT depend on.

use std::sync::Arc;

/// Where a server keeps TLS sessions it can resume (and accept 0-RTT data for).
///
/// This is rustls's [`StoresServerSessions`](rustls::server::StoresServerSessions): `put`
/// on a full handshake, single-use `take` on resumption. rustls accepts early data only
/// with such stateful resumption, so servers of one region that share one store resume
/// each other's clients with 0-RTT. Implement it over a shared cache to span processes.
pub use rustls::server::StoresServerSessions as SessionStore;

/// A bounded in-memory session store holding at most `capacity` sessions (the oldest go
/// first). Share the returned `Arc` between servers to let them resume each other's
/// clients.
pub fn memory_session_store(capacity: usize) -> Arc<dyn SessionStore> {
    rustls::server::ServerSessionMemoryCache::new(capacity)
}

/// Sessions a server remembers by default.
pub const DEFAULT_SESSION_CAPACITY: usize = 4096;

/// Session tickets a server sends after each full or resumed handshake. Each 0-RTT
/// reconnect uses one up, so more than rustls's default of two keeps a client that
/// reconnects quickly from running dry.
pub const TICKETS_PER_HANDSHAKE: usize = 4;
