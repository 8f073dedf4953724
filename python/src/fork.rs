//! Fork safety: what a child made by `fork()` (`multiprocessing`'s "fork" start method,
//! prefork servers) may still use of its parent's Meridian objects.
//!
//! A forked child has only the thread that called `fork()`: the runtime's worker threads,
//! and with them every timer and connection task, do not exist there. It also shares the
//! parent's epoll instance through the inherited file descriptor, so registering or
//! deregistering a socket in it from the child changes what the *parent* is woken for.
//!
//! Hence the rules, enforced here and in [`crate::runtime`]:
//!
//! - the child gets a runtime of its own on first use (its own threads and epoll
//!   instance); the parent's runtime is never dropped in the child, only forgotten;
//! - every object holding runtime state (a client's connections, a running server, an
//!   open stream, a call in flight) is wrapped in [`ProcessBound`]: in a forked child it
//!   is never used, and never dropped (dropping a connection or socket would deregister
//!   the parent's socket from the shared epoll, or wait on a lock a vanished thread
//!   held), only leaked. Clients start again with new connections on the child's runtime;
//!   streams and calls opened before the fork raise a `RuntimeError` that says so;
//! - the child reseeds the forking thread's random generator ([`after_fork_in_child`],
//!   called from `os.register_at_fork`). rand's `ThreadRng`, which quinn draws connection
//!   IDs and tokens from, is not reseeded on fork, and a Python thread that made calls
//!   ran quinn's code on that generator (see `engine.rs`): without this the child would
//!   pick the very connection IDs the parent picks next, and the parent's server would
//!   take the parent's next handshake for a packet of the child's connection.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// A value tied to the process that made it. In a forked child it reads as absent and is
/// leaked instead of dropped (see the module documentation).
pub(crate) struct ProcessBound<T> {
    pid: u32,
    value: Option<T>,
}

impl<T> ProcessBound<T> {
    /// `value`, owned by the calling process.
    pub(crate) fn new(value: T) -> ProcessBound<T> {
        ProcessBound {
            pid: std::process::id(),
            value: Some(value),
        }
    }

    /// Whether the value was made by this process (not inherited through `fork()`).
    fn is_ours(&self) -> bool {
        self.pid == std::process::id()
    }

    /// The value, or `None` in a forked child.
    pub(crate) fn get(&self) -> Option<&T> {
        if self.is_ours() {
            self.value.as_ref()
        } else {
            None
        }
    }

    /// The value, or `None` in a forked child (where it stays leaked).
    pub(crate) fn into_inner(mut self) -> Option<T> {
        if self.is_ours() {
            self.value.take()
        } else {
            None
        }
    }
}

impl<T> Drop for ProcessBound<T> {
    fn drop(&mut self) {
        if !self.is_ours() {
            // Made by an ancestor: its destructor would act on the ancestor's runtime
            // and epoll instance. Leak it.
            if let Some(value) = self.value.take() {
                std::mem::forget(value);
            }
        }
    }
}

/// The error for using, in a forked child, something opened by the parent that cannot
/// be carried over (an open stream, a call in flight).
pub(crate) fn inherited(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "{what} was opened before fork() and belongs to the parent process; \
         open a new one in the child (clients reconnect by themselves)"
    ))
}

/// Reseeds the calling thread's random generator from the operating system. The Python
/// package registers it with `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
#[pyo3(name = "_after_fork_in_child")]
pub(crate) fn after_fork_in_child() -> PyResult<()> {
    rand::rng()
        .reseed()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot reseed after fork(): {e}")))
}
