//! `meridian._native`: the Rust half of Meridian's Python module.
//!
//! The pure-Python package `meridian` (in `python/meridian/`) is the public face; this
//! module gives it a few primitives and keeps every blocking wait off the interpreter:
//!
//! - one process-wide tokio runtime, created on first use, runs every connection, server
//!   and call; a Python thread in a blocking call drives it itself, a relay thread while
//!   no call does (see `engine.rs`); a child made by `fork()` gets its own on first use
//!   and leaves what it inherited alone (see `fork.rs`);
//! - a blocking call releases the GIL while it waits, in slices of `WAIT_SLICE`, and
//!   checks for signals between slices so Ctrl-C interrupts it (`wait`);
//! - Python handlers run on tokio's blocking threads and attach to the interpreter only
//!   while Python code runs, never on a transport thread (see `server.rs`);
//! - Python values cross the wire as Meridian [`Value`](meridian::Value)s, checked and
//!   converted before anything is sent (see `convert.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use meridian::DevCa;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

mod attach;
mod calls;
mod client;
mod context;
mod convert;
mod engine;
mod errors;
mod etcd;
mod fork;
mod handlers;
mod requests;
mod server;
mod testing;

pub(crate) use engine::{kick, runtime, spawn, wait};

/// The process-wide development CA. Servers created without certificates get one issued
/// by it, so a client of the same process trusts all of them through one root.
pub(crate) fn dev_ca() -> PyResult<&'static DevCa> {
    static CA: OnceLock<Result<DevCa, String>> = OnceLock::new();
    CA.get_or_init(|| DevCa::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot create the development CA: {e}")))
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
    m.add_function(wrap_pyfunction!(engine::runtime_workers, m)?)?;
    m.add_function(wrap_pyfunction!(fork::after_fork_in_child, m)?)?;
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
