//! `RequestIterator`: the request values of a client-streaming or bidirectional call, as
//! the Python handler sees them.
//!
//! The handler runs on one of tokio's blocking threads; each `next()` waits for the next
//! request there with the GIL released. The iterator ends when the client finishes
//! sending, and raises the call's `RpcError` if the request stream fails (the client
//! cancelled, say).

use std::sync::Arc;

use bytes::Bytes;
use meridian::{RequestStream, Status, Value};
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;

use crate::convert::{decode, to_python};
use crate::errors::status_to_pyerr;

type Slot = Arc<tokio::sync::Mutex<Option<RequestStream<Bytes>>>>;

/// The request values of a client-streaming or bidirectional call (an iterator).
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct RequestIterator {
    inner: Slot,
}

impl RequestIterator {
    pub(crate) fn new(requests: RequestStream<Bytes>) -> RequestIterator {
        RequestIterator {
            inner: Arc::new(tokio::sync::Mutex::new(Some(requests))),
        }
    }

    async fn next_value(inner: Slot) -> Result<Option<Value>, Status> {
        let mut guard = inner.lock().await;
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        match stream.message().await {
            Ok(Some(bytes)) => decode(&bytes).map(Some),
            other => {
                // Ended or failed: later calls end at once.
                *guard = None;
                other.map(|_| None)
            }
        }
    }
}

#[pymethods]
impl RequestIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next request value; waits with the GIL released. Raises `StopIteration` when
    /// the client has finished sending.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match crate::wait(py, Self::next_value(self.inner.clone()))? {
            Ok(Some(v)) => to_python(py, &v),
            Ok(None) => Err(PyStopIteration::new_err(())),
            Err(status) => Err(status_to_pyerr(py, &status)),
        }
    }
}
