//! Server-side TLS session storage, which resumption and 0-RTT depend on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

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
///
/// Every operation takes constant time (amortised), however full the store. (rustls's own
/// `ServerSessionMemoryCache` looks for a resumed session's place in its eviction queue
/// by a scan from the oldest end, so each resumption on a full store of 4,096 sessions
/// compared some four thousand keys.) Memory: the sessions, plus a queue of at most
/// `2 * capacity + 16` keys that keeps the order they were stored in.
pub fn memory_session_store(capacity: usize) -> Arc<dyn SessionStore> {
    Arc::new(MemorySessions {
        capacity,
        inner: Mutex::new(Sessions::default()),
    })
}

/// The store [`memory_session_store`] makes.
struct MemorySessions {
    capacity: usize,
    inner: Mutex<Sessions>,
}

/// Sessions by key, each with the number of the `put` that stored it, and the keys in the
/// order they were stored (a put of a key already stored makes its session the newest).
/// A taken or overwritten session leaves its old entry in `order` behind: an entry counts
/// only while its number matches the session's. Such stale entries are skipped when the
/// oldest is evicted, and dropped all at once when `order` grows past
/// `2 * capacity + 16`, after which it holds live entries only (at most `capacity`): each
/// such pass is paid for by the more than `capacity` puts before it.
#[derive(Default)]
struct Sessions {
    by_key: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    order: VecDeque<(u64, Vec<u8>)>,
    puts: u64,
}

/// Whether an entry of `order` still stands for its session: the session of `key` is the
/// one `number` stored (not taken, not stored again since).
fn is_current(by_key: &HashMap<Vec<u8>, (u64, Vec<u8>)>, number: u64, key: &[u8]) -> bool {
    by_key.get(key).is_some_and(|(n, _)| *n == number)
}

impl Sessions {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, capacity: usize) {
        self.puts += 1;
        let number = self.puts;
        self.order.push_back((number, key.clone()));
        self.by_key.insert(key, (number, value));
        while self.by_key.len() > capacity {
            let Some((n, oldest)) = self.order.pop_front() else {
                break;
            };
            if is_current(&self.by_key, n, &oldest) {
                self.by_key.remove(&oldest);
            }
        }
        if self.order.len() > 2 * capacity + 16 {
            let by_key = &self.by_key;
            self.order.retain(|(n, key)| is_current(by_key, *n, key));
        }
    }
}

impl SessionStore for MemorySessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut sessions = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.put(key, value, self.capacity);
        self.capacity > 0
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let sessions = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.by_key.get(key).map(|(_, value)| value.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut sessions = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.by_key.remove(key).map(|(_, value)| value)
    }

    fn can_cache(&self) -> bool {
        self.capacity > 0
    }
}

impl std::fmt::Debug for MemorySessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemorySessions")
            .field("capacity", &self.capacity)
            .field("sessions", &sessions.by_key.len())
            .finish()
    }
}

/// Sessions a server remembers by default.
pub const DEFAULT_SESSION_CAPACITY: usize = 4096;

/// Session tickets a server sends after each full or resumed handshake. Each 0-RTT
/// reconnect uses one up, so more than rustls's default of two keeps a client that
/// reconnects quickly from running dry.
pub const TICKETS_PER_HANDSHAKE: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store(capacity: usize) -> MemorySessions {
        MemorySessions {
            capacity,
            inner: Mutex::new(Sessions::default()),
        }
    }

    #[test]
    fn a_session_is_found_until_taken_once() {
        let s = store(4);
        assert!(s.put(b"k".to_vec(), b"v".to_vec()));
        assert_eq!(s.get(b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(s.take(b"k").as_deref(), Some(&b"v"[..]));
        assert_eq!(s.take(b"k"), None);
        assert_eq!(s.get(b"k"), None);
    }

    #[test]
    fn the_oldest_session_goes_first() {
        let s = store(2);
        for k in [b"a", b"b", b"c"] {
            s.put(k.to_vec(), k.to_vec());
        }
        assert_eq!(s.get(b"a"), None);
        assert!(s.get(b"b").is_some() && s.get(b"c").is_some());
    }

    #[test]
    fn a_store_of_no_sessions_keeps_none_and_says_so() {
        let s = store(0);
        assert!(!s.can_cache());
        assert!(!s.put(b"k".to_vec(), b"v".to_vec()));
        assert_eq!(s.get(b"k"), None);
    }

    #[test]
    fn taken_sessions_never_let_the_eviction_queue_grow_past_its_bound() {
        let capacity = 64;
        let s = store(capacity);
        for i in 0u32..100_000 {
            let key = i.to_be_bytes().to_vec();
            s.put(key.clone(), vec![1]);
            // Most sessions are resumed (taken) soon after; some are overwritten.
            if i % 4 != 0 {
                assert!(s.take(&key).is_some());
            } else {
                s.put(key, vec![2]);
            }
            let sessions = s.inner.lock().unwrap();
            assert!(sessions.by_key.len() <= capacity);
            assert!(sessions.order.len() <= 2 * capacity + 16);
        }
    }

    /// One step of a random workload: put, get or take of one of a few keys.
    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8),
        Get(u8),
        Take(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            (0u8..12).prop_map(Op::Get),
            (0u8..12).prop_map(Op::Take),
        ]
    }

    proptest! {
        /// The store answers like the obvious model: a list of (key, value) in the order
        /// stored, where a put (new key or not) makes its session the newest and the
        /// oldest are dropped while the list is over capacity.
        #[test]
        fn behaves_like_a_queue_of_sessions(
            capacity in 0usize..6,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let s = store(capacity);
            let mut model: Vec<(u8, u8)> = Vec::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        s.put(vec![k], vec![v]);
                        model.retain(|(mk, _)| *mk != k);
                        model.push((k, v));
                        while model.len() > capacity {
                            model.remove(0);
                        }
                    }
                    Op::Get(k) => {
                        let want = model.iter().find(|(mk, _)| *mk == k).map(|(_, v)| vec![*v]);
                        prop_assert_eq!(s.get(&[k]), want);
                    }
                    Op::Take(k) => {
                        let want = model
                            .iter()
                            .position(|(mk, _)| *mk == k)
                            .map(|i| vec![model.remove(i).1]);
                        prop_assert_eq!(s.take(&[k]), want);
                    }
                }
            }
        }
    }
}
