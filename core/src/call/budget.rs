//! Buffer budgets: how many received bytes a connection, and a whole server, may hold.
//!
//! Every byte a server reads out of quinn into a call's frame decoder is charged to two
//! pools: its connection's and the server's. A read that would take either pool past its
//! limit fails the call with `RESOURCE_EXHAUSTED` instead of buffering, and the bytes are
//! dropped. The charge goes back when the bytes do: when the call ends (a unary or
//! server-streaming request is held for its whole call) or when a streamed request message
//! is handed to the handler.
//!
//! Refusing rather than waiting is deliberate. Waiting (not reading from quinn until the
//! pool has room) looks like the natural way to let QUIC flow control do the capping, but
//! every stream of a connection shares one connection window: the unread bytes of the
//! streams that wait would fill that window, and the streams that hold the budget could
//! then never receive the rest of their messages. Every call on the connection would stall
//! until its deadline. With refusal, memory is bounded all the same (budget plus quinn's
//! windows, see `TransportConfig`), and nothing stalls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One pool of bytes with a limit.
#[derive(Debug)]
pub(crate) struct Pool {
    used: AtomicUsize,
    limit: usize,
    /// Tasks waiting for bytes to be given back ([`Charge::take_wait`]), and their wake-up.
    waiters: AtomicUsize,
    freed: Notify,
    /// What the pool is, for error messages ("connection", "server").
    name: &'static str,
}

impl Pool {
    pub(crate) fn new(name: &'static str, limit: usize) -> Arc<Pool> {
        Arc::new(Pool {
            used: AtomicUsize::new(0),
            limit,
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
            name,
        })
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Takes `n` bytes (at most the whole pool), waiting until they are free.
    async fn take_wait(&self, n: usize) -> usize {
        let n = n.min(self.limit);
        loop {
            if self.try_take(n) {
                return n;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.waiters.fetch_add(1, Ordering::AcqRel);
            // Given back between the first try and `enable`: no wake-up would come.
            if self.try_take(n) {
                self.waiters.fetch_sub(1, Ordering::AcqRel);
                return n;
            }
            freed.await;
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub(crate) pool: &'static str,
    pub(crate) limit: usize,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} buffer budget of {} bytes is spent",
            self.pool, self.limit
        )
    }
}

/// The bytes one stream holds against its pools; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    pools: [Arc<Pool>; 2],
    /// Bytes held in each pool: the same, except while [`Charge::take_wait`] has taken
    /// from the first and waits for the second (a wait that may be abandoned).
    held: [usize; 2],
}

impl Charge {
    /// A charge of nothing against a connection's pool and the server's.
    pub(crate) fn new(connection: Arc<Pool>, server: Arc<Pool>) -> Charge {
        Charge {
            pools: [connection, server],
            held: [0, 0],
        }
    }

    /// Takes `n` more bytes from both pools, or neither.
    pub(crate) fn take(&mut self, n: usize) -> Result<(), Exhausted> {
        let [conn, server] = &self.pools;
        if !conn.try_take(n) {
            return Err(Exhausted {
                pool: conn.name,
                limit: conn.limit,
            });
        }
        if !server.try_take(n) {
            conn.give(n);
            return Err(Exhausted {
                pool: server.name,
                limit: server.limit,
            });
        }
        self.held[0] += n;
        self.held[1] += n;
        Ok(())
    }

    /// Takes `n` more bytes from both pools, waiting while either is spent (for bytes the
    /// server produces itself, such as queued responses: they are given back as the peer
    /// reads them or when the call's write bound passes, so waiting cannot deadlock).
    /// More than a pool's whole limit is charged as the whole limit. Dropped while it
    /// waits, it takes nothing in the end (what it took is given back with the charge).
    pub(crate) async fn take_wait(&mut self, n: usize) {
        let from_conn = self.pools[0].take_wait(n).await;
        self.held[0] += from_conn;
        let from_server = self.pools[1].take_wait(n).await;
        self.held[1] += from_server;
        // Charged evenly to both; the difference (only past a limit) is given back.
        let even = self.held[0].min(self.held[1]);
        self.shrink_to(even);
    }

    /// Gives back all but `keep` bytes of each pool (nothing where it holds `keep` or
    /// less).
    pub(crate) fn shrink_to(&mut self, keep: usize) {
        for (pool, held) in self.pools.iter().zip(self.held.iter_mut()) {
            if *held > keep {
                pool.give(*held - keep);
                *held = keep;
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_takes_from_both_pools_or_neither_and_gives_back_on_drop() {
        let conn = Pool::new("connection", 100);
        let server = Pool::new("server", 150);
        let mut a = Charge::new(conn.clone(), server.clone());
        let mut b = Charge::new(Pool::new("connection", 100), server.clone());
        a.take(60).unwrap();
        b.take(80).unwrap();
        // The connection pool has 40 left, the server 10: the server refuses.
        let e = a.take(20).unwrap_err();
        assert_eq!(e.pool, "server");
        assert_eq!(conn.used(), 60, "a refused charge takes nothing");
        let e = a.take(50).unwrap_err();
        assert_eq!(e.pool, "connection");
        b.shrink_to(30);
        assert_eq!(server.used(), 90);
        a.take(20).unwrap();
        drop(a);
        drop(b);
        assert_eq!((conn.used(), server.used()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_charge_is_woken_when_bytes_come_back_and_an_abandoned_one_takes_nothing() {
        let conn = Pool::new("connection", 100);
        let server = Pool::new("server", 100);
        let mut full = Charge::new(conn.clone(), server.clone());
        full.take(100).unwrap();
        // Waits for the connection pool, then gets its bytes when `full` gives them back.
        let mut waiting = Charge::new(conn.clone(), server.clone());
        let wait = tokio::spawn(async move {
            waiting.take_wait(40).await;
            waiting
        });
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        drop(full);
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!((conn.used(), server.used()), (40, 40));
        drop(waiting);
        // The server pool is spent by another connection: a wait abandoned there gives
        // back what it took from its own connection's pool.
        let mut other = Charge::new(Pool::new("connection", 100), server.clone());
        other.take(100).unwrap();
        let mut abandoned = Charge::new(conn.clone(), server.clone());
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            abandoned.take_wait(30),
        )
        .await;
        assert!(waited.is_err());
        drop(abandoned);
        assert_eq!(conn.used(), 0);
    }
}
