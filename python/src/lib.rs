//! `meridian._native`: the Rust half of Meridian's Python module.
//!
//! The pure-Python package `meridian` (in `python/meridian/`) is the public face; this
//! module gives it a few primitives and keeps every blocking wait off the interpreter:
//!
//! - one process-wide multi-threaded tokio runtime, created on first use, runs every
//!   connection, server and call (`runtime`); a child made by `fork()` gets its own on
//!   first use and leaves what it inherited alone (see `fork.rs`);
//! - a blocking call releases the GIL while it waits, in slices of `WAIT_SLICE`, and
//!   checks for signals between slices so Ctrl-C interrupts it (`wait`);
//! - Python handlers run on tokio's blocking threads and attach to the interpreter only
//!   while Python code runs, never on a transport thread (see `server.rs`);
//! - Python values cross the wire as Meridian [`Value`](meridian::Value)s, checked and
//!   converted before anything is sent (see `convert.rs`).

use std::future::Future;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use meridian::DevCa;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

mod attach;
mod calls;
mod client;
mod context;
mod convert;
mod errors;
mod etcd;
mod fork;
mod requests;
mod server;
mod testing;

/// How long a blocking wait stays detached from the interpreter before it checks for
/// signals (Ctrl-C). Short enough to feel immediate, long enough to cost nothing.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The runtime of the current process (null before first use).
static RUNTIME: AtomicPtr<tokio::runtime::Runtime> = AtomicPtr::new(std::ptr::null_mut());
/// The process that made [`RUNTIME`]; a forked child sees its parent's pid here.
static RUNTIME_PID: AtomicU32 = AtomicU32::new(0);

/// The library's tokio runtime: multi-threaded, created on first use, shared by every
/// server and client of the process and never shut down (its threads end with the process).
///
/// A child made by `fork()` has none of the parent's runtime threads, so on first use there
/// it makes a runtime of its own. The inherited one is leaked, never dropped: dropping it
/// would deregister the parent's sockets from the epoll instance both processes share.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    let pid = std::process::id();
    if RUNTIME_PID.load(Ordering::Acquire) == pid {
        let rt = RUNTIME.load(Ordering::Acquire);
        // SAFETY: a non-null RUNTIME comes from `Box::leak` below and is never freed; the
        // pointer was stored (Release) before RUNTIME_PID, which we read with Acquire.
        if let Some(rt) = unsafe { rt.as_ref() } {
            return Ok(rt);
        }
    }
    static CREATING: Mutex<()> = Mutex::new(());
    let _creating = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    if RUNTIME_PID.load(Ordering::Acquire) == pid {
        // SAFETY: as above; another thread made it while this one waited for the lock.
        if let Some(rt) = unsafe { RUNTIME.load(Ordering::Acquire).as_ref() } {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads()?)
        .thread_name("meridian-rt")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the Meridian runtime: {e}")))?;
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    RUNTIME.store(std::ptr::from_ref(rt).cast_mut(), Ordering::Release);
    RUNTIME_PID.store(pid, Ordering::Release);
    Ok(rt)
}

/// Worker threads of the runtime when `MERIDIAN_WORKER_THREADS` is not set.
///
/// One: Python code runs under one interpreter lock, so a second worker adds little
/// parallelism, while on every call tokio wakes the idle worker to look for work to steal.
/// Measured on 2 CPUs (`benches/RESULTS.md`, "Python: one runtime worker"), one worker
/// halves the thread switches per call on each side.
pub(crate) const DEFAULT_WORKER_THREADS: usize = 1;

/// The runtime's worker threads: `MERIDIAN_WORKER_THREADS` (1 to 256), else
/// [`DEFAULT_WORKER_THREADS`]. Read once, when the runtime starts.
fn worker_threads() -> PyResult<usize> {
    match std::env::var("MERIDIAN_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_WORKER_THREADS),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n @ 1..=256) => Ok(n),
            _ => Err(PyValueError::new_err(format!(
                "MERIDIAN_WORKER_THREADS must be a whole number from 1 to 256, got {v:?}"
            ))),
        },
        Err(e) => Err(PyValueError::new_err(format!(
            "MERIDIAN_WORKER_THREADS is not readable: {e}"
        ))),
    }
}

/// The number of worker threads of this process's runtime (starting it if needed).
#[pyfunction]
#[pyo3(name = "_runtime_workers")]
fn runtime_workers() -> PyResult<usize> {
    Ok(runtime()?.metrics().num_workers())
}

/// The process-wide development CA. Servers created without certificates get one issued
/// by it, so a client of the same process trusts all of them through one root.
pub(crate) fn dev_ca() -> PyResult<&'static DevCa> {
    static CA: OnceLock<Result<DevCa, String>> = OnceLock::new();
    CA.get_or_init(|| DevCa::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot create the development CA: {e}")))
}

/// Runs `fut` on the runtime and waits for its output with the GIL released, checking
/// for signals every [`WAIT_SLICE`]. If a signal handler raises (Ctrl-C raises
/// `KeyboardInterrupt`), the task is aborted, which cancels a call in flight, and the
/// exception propagates.
pub(crate) fn wait<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime()?;
    let (tx, mut rx) = sync_channel(1);
    let task = rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    loop {
        let (back, got) = py.detach(move || {
            let got = rx.recv_timeout(WAIT_SLICE);
            (rx, got)
        });
        rx = back;
        match got {
            Ok(out) => return Ok(out),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(
                    "the Meridian task ended without an answer",
                ))
            }
        }
    }
}

/// Converts a timeout in seconds from Python (`None` for none) into a `Duration`.
pub(crate) fn timeout_arg(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "timeout must be a finite number of seconds >= 0, got {s}"
            ))
        }),
    }
}

/// The native module. Its Python-facing API is described in `meridian/_native.pyi`.
#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<server::NativeServer>()?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<calls::NativeStream>()?;
    m.add_class::<calls::CallHandle>()?;
    m.add_class::<calls::NativeRequestSink>()?;
    m.add_class::<calls::NativeResponse>()?;
    m.add_class::<context::PyCallContext>()?;
    m.add_class::<context::PyPeerIdentity>()?;
    m.add_class::<requests::RequestIterator>()?;
    m.add_class::<testing::RustTestServer>()?;
    m.add_function(wrap_pyfunction!(convert::roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_workers, m)?)?;
    m.add_function(wrap_pyfunction!(testing::start_rust_test_server, m)?)?;
    m.add_function(wrap_pyfunction!(testing::rust_call, m)?)?;
    m.add_function(wrap_pyfunction!(testing::write_dev_certificates, m)?)?;
    m.add_function(wrap_pyfunction!(testing::write_dev_pki, m)?)?;
    attach::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Whether this build has etcd discovery (the optional `etcd` feature).
    m.add("_has_etcd", cfg!(feature = "etcd"))?;
    Ok(())
}
