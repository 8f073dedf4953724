//! `meridian-bench sessions`: the server's TLS session store under a resumption workload,
//! Meridian's [`meridian::transport::memory_session_store`] against rustls's
//! `ServerSessionMemoryCache`.
//!
//! The workload is a busy server's: the store starts full, and each step is what one
//! 0-RTT reconnect does to it, taking the session the client resumes (one it was given
//! a moment ago, so among the newest) and putting the
//! [`TICKETS_PER_HANDSHAKE`](meridian::transport::TICKETS_PER_HANDSHAKE) new sessions
//! sent on the new connection. Keys are 32 random-looking bytes and sessions 128 bytes,
//! about what rustls stores.

use std::sync::Arc;
use std::time::Instant;

use meridian::transport::{memory_session_store, SessionStore, TICKETS_PER_HANDSHAKE};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Sessions the store holds (it starts full).
    pub capacity: usize,
    /// Reconnects timed.
    pub reconnects: usize,
}

/// A distinct 32-byte key for `n` (a cheap mix, so keys do not share prefixes).
fn key(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(32);
    for _ in 0..4 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Nanoseconds per reconnect on `store`, and how many resumed sessions were found (every
/// one should be).
fn time_store(store: &dyn SessionStore, plan: Plan) -> (f64, usize) {
    let value = vec![7u8; 128];
    let mut next = 0u64;
    for _ in 0..plan.capacity {
        store.put(key(next), value.clone());
        next += 1;
    }
    let mut found = 0;
    let start = Instant::now();
    for _ in 0..plan.reconnects {
        // The client resumes with the newest but one of the sessions it was sent.
        if store.take(&key(next - 2)).is_some() {
            found += 1;
        }
        for _ in 0..TICKETS_PER_HANDSHAKE {
            store.put(key(next), value.clone());
            next += 1;
        }
    }
    let nanos = start.elapsed().as_nanos() as f64 / plan.reconnects.max(1) as f64;
    (nanos, found)
}

/// Runs both stores at each capacity and returns a markdown table.
pub fn run(capacities: &[usize], reconnects: usize) -> String {
    let mut out = format!(
        "Session store, {reconnects} reconnects on a full store (take one session, put \
         {TICKETS_PER_HANDSHAKE})\n\n\
         | sessions held | Meridian ns per reconnect | rustls ns per reconnect | rustls / Meridian |\n\
         |---:|---:|---:|---:|"
    );
    for &capacity in capacities {
        let plan = Plan {
            capacity,
            reconnects,
        };
        let ours: Arc<dyn SessionStore> = memory_session_store(capacity);
        let theirs: Arc<dyn SessionStore> = rustls::server::ServerSessionMemoryCache::new(capacity);
        let (m, m_found) = time_store(&*ours, plan);
        let (r, r_found) = time_store(&*theirs, plan);
        assert_eq!(m_found, reconnects, "Meridian's store lost a session");
        assert_eq!(r_found, reconnects, "rustls's store lost a session");
        out.push_str(&format!(
            "\n| {capacity} | {m:.0} | {r:.0} | {:.1}x |",
            r / m
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_32_bytes() {
        let keys: std::collections::HashSet<Vec<u8>> = (0..10_000).map(key).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys.iter().all(|k| k.len() == 32));
    }

    #[test]
    fn every_resumed_session_is_found_in_both_stores() {
        let plan = Plan {
            capacity: 64,
            reconnects: 500,
        };
        assert_eq!(time_store(&*memory_session_store(64), plan).1, 500);
        let rustls_store = rustls::server::ServerSessionMemoryCache::new(64);
        assert_eq!(time_store(&*rustls_store, plan).1, 500);
    }
}
