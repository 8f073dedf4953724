//! Status codes to Python exceptions and back.
//!
//! The exception classes live in the pure-Python module `meridian.errors`
//! (`RpcError` and one subclass per status code); this file only calls into it.

use meridian::{Code, Metadata, Status};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};

struct ErrorsModule {
    rpc_error: Py<PyAny>,
    from_status: Py<PyAny>,
}

fn errors_module(py: Python<'_>) -> PyResult<&'static ErrorsModule> {
    static MODULE: PyOnceLock<ErrorsModule> = PyOnceLock::new();
    MODULE.get_or_try_init(py, || {
        let m = py.import("meridian.errors")?;
        Ok(ErrorsModule {
            rpc_error: m.getattr("RpcError")?.unbind(),
            from_status: m.getattr("_from_status")?.unbind(),
        })
    })
}

/// The Python exception for a failed call: an instance of `meridian.RpcError` (the
/// subclass matching the code), with `.code`, `.message` and `.metadata`.
pub(crate) fn status_to_pyerr(py: Python<'_>, status: &Status) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let metadata = PyDict::new(py);
        for (k, v) in status.metadata().iter() {
            metadata.set_item(k, PyBytes::new(py, v))?;
        }
        let module = errors_module(py)?;
        let exc = module
            .from_status
            .call1(py, (status.code() as u8, status.message(), metadata))?;
        Ok(PyErr::from_value(exc.into_bound(py)))
    };
    build().unwrap_or_else(|e| {
        PyRuntimeError::new_err(format!(
            "{} (and the error could not be converted: {e})",
            status
        ))
    })
}

/// The status a Python handler's exception ends the call with: an `RpcError` keeps its
/// code, message and metadata; any other exception becomes `UNKNOWN` with its type and
/// text (the Python layer already turns handler exceptions into `RpcError`s, adding the
/// traceback only when the server opted in).
pub(crate) fn pyerr_to_status(py: Python<'_>, err: &PyErr) -> Status {
    let value = err.value(py);
    if let Ok(module) = errors_module(py) {
        if value
            .is_instance(module.rpc_error.bind(py))
            .unwrap_or(false)
        {
            if let Ok(status) = rpc_error_status(value) {
                return status;
            }
        }
    }
    let kind = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = value.str().map(|s| s.to_string()).unwrap_or_default();
    Status::unknown(format!("{kind}: {text}"))
}

fn rpc_error_status(value: &Bound<'_, pyo3::exceptions::PyBaseException>) -> PyResult<Status> {
    let code: u64 = value.getattr("code")?.extract()?;
    let message: String = value.getattr("message")?.extract()?;
    let mut metadata = Metadata::new();
    let md = value.getattr("metadata")?;
    if let Ok(dict) = md.cast::<PyDict>() {
        for (k, v) in dict.iter() {
            let key: String = k.extract()?;
            if let Ok(s) = v.cast::<PyString>() {
                metadata.insert(key, s.to_cow()?.as_bytes().to_vec());
            } else if let Ok(b) = v.cast::<PyBytes>() {
                metadata.insert(key, b.as_bytes().to_vec());
            }
        }
    }
    let code = match Code::from_u64(code) {
        // A handler cannot end a call with OK through an exception.
        Code::Ok => Code::Unknown,
        c => c,
    };
    Ok(Status::new(code, message).with_metadata(metadata))
}
