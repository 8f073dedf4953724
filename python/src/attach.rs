//! Attaching Meridian's own threads to the interpreter without paying for a new Python
//! thread state on every call.
//!
//! `Python::attach` on a thread that has no Python thread state makes one and deletes it
//! again when it returns. On CPython 3.11 and later that maps and unmaps the thread's
//! 16 KiB frame stack each time, and every unmap of a multi-threaded process flushes the
//! TLB of the other CPUs: a profile of a server running Python handlers from 8 client
//! threads put 13% of its samples in `munmap` from `tstate_delete_common`. The handlers
//! run on tokio's blocking threads, which live on between calls, so [`attach`] keeps the
//! state of such a thread for as long as the thread lives: the second and later calls only
//! take the interpreter lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

/// Set by an `atexit` hook: the interpreter is shutting down, and a thread that ends now
/// must not touch it (its kept state is left to the interpreter's own clean-up).
static FINALIZING: AtomicBool = AtomicBool::new(false);

/// The extra `PyGILState_Ensure` that keeps this thread's Python thread state alive.
struct KeptState(Cell<Option<ffi::PyGILState_STATE>>);

thread_local! {
    static KEPT: KeptState = const { KeptState(Cell::new(None)) };
}

impl Drop for KeptState {
    fn drop(&mut self) {
        let Some(kept) = self.0.take() else {
            return;
        };
        if FINALIZING.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the interpreter is running (not finalizing, checked above; it is never
        // finalized before the atexit hooks ran). This thread owns one reference on its
        // thread state (`kept`, taken in `attach`), and does not hold the interpreter lock:
        // the first call takes the lock and a second reference, releasing `kept` leaves
        // that one, and releasing it last deletes the state and drops the lock.
        unsafe {
            let now = ffi::PyGILState_Ensure();
            ffi::PyGILState_Release(kept);
            ffi::PyGILState_Release(now);
        }
    }
}

/// Runs `f` attached to the interpreter, on a thread of Meridian's runtime (a blocking
/// thread running a handler, a callback): as `Python::attach`, except that the thread's
/// Python thread state stays alive between calls (until the thread ends).
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    Python::attach(|py| {
        KEPT.with(|k| {
            if k.0.get().is_none() {
                // SAFETY: this thread is attached (inside `Python::attach`), so this only
                // takes a second reference on its thread state, returned by `KeptState`'s
                // destructor when the thread ends.
                k.0.set(Some(unsafe { ffi::PyGILState_Ensure() }));
            }
        });
        f(py)
    })
}

/// The `atexit` hook that sets [`FINALIZING`].
#[pyfunction]
fn interpreter_exits() {
    FINALIZING.store(true, Ordering::SeqCst);
}

/// Registers the `atexit` hook; called once when the module is imported.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(interpreter_exits, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
