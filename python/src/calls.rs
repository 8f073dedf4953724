//! The handles of calls already made by a `NativeClient`: a pending asynchronous call
//! (`CallHandle`), a stream of responses (`NativeStream`), where a streaming call's
//! requests go (`NativeRequestSink`) and a client-streaming call's one response
//! (`NativeResponse`). Each lives on the runtime of the process that opened it
//! (`ProcessBound`): in a forked child it raises instead of touching the parent's.

use std::sync::Arc;

use meridian::{RequestSink, ResponseFuture, Status, Streaming, Value};
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;

use crate::convert::{to_python, to_value};
use crate::errors::status_to_pyerr;
use crate::fork::{self, ProcessBound};
use crate::{runtime, wait};

/// Hands a finished call's result to a Python callback, on a blocking thread (never on a
/// transport thread).
pub(crate) async fn deliver(done: Py<PyAny>, result: Result<Option<Value>, Status>) {
    let _ = tokio::task::spawn_blocking(move || {
        crate::attach::attach(|py| {
            let (ok, obj) = match result {
                Ok(Some(v)) => match to_python(py, &v) {
                    Ok(o) => (true, o.unbind()),
                    Err(e) => (false, e.into_value(py).into_any()),
                },
                Ok(None) => (true, PyStopIteration::new_err(()).into_value(py).into_any()),
                Err(status) => (
                    false,
                    status_to_pyerr(py, &status).into_value(py).into_any(),
                ),
            };
            if let Err(e) = done.call1(py, (ok, obj)) {
                e.write_unraisable(py, None);
            }
        })
    })
    .await;
}

/// A call started by `call_async`; `cancel()` abandons it (the server sees the
/// cancellation) and its callback is then never called.
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct CallHandle {
    task: ProcessBound<tokio::task::AbortHandle>,
}

impl CallHandle {
    pub(crate) fn new(task: tokio::task::AbortHandle) -> CallHandle {
        CallHandle {
            task: ProcessBound::new(task),
        }
    }
}

#[pymethods]
impl CallHandle {
    /// Cancels the call if it is still running (a call started before `fork()` is the
    /// parent's: in the child this does nothing).
    fn cancel(&self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// The responses of a server-streaming call, as a blocking iterator.
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct NativeStream {
    inner: ProcessBound<StreamSlot>,
}

impl NativeStream {
    /// The responses of a call just opened in this process.
    pub(crate) fn new(responses: Streaming<Value>) -> NativeStream {
        NativeStream {
            inner: ProcessBound::new(Arc::new(tokio::sync::Mutex::new(Some(responses)))),
        }
    }
}

type StreamSlot = Arc<tokio::sync::Mutex<Option<Streaming<Value>>>>;

impl NativeStream {
    /// The stream, unless it was opened before `fork()` by the parent.
    fn slot(&self) -> PyResult<StreamSlot> {
        self.inner
            .get()
            .cloned()
            .ok_or_else(|| fork::inherited("this stream"))
    }

    async fn next_message(inner: StreamSlot) -> Result<Option<Value>, Status> {
        let mut guard = inner.lock().await;
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        let got = stream.message().await;
        if !matches!(got, Ok(Some(_))) {
            // Ended or failed: release the call now.
            *guard = None;
        }
        got
    }
}

#[pymethods]
impl NativeStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next response; blocks with the GIL released.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match wait(py, Self::next_message(self.slot()?))? {
            Ok(Some(v)) => to_python(py, &v),
            Ok(None) => Err(PyStopIteration::new_err(())),
            Err(status) => Err(status_to_pyerr(py, &status)),
        }
    }

    /// Starts waiting for the next response and returns at once; `done(ok, result)` is
    /// called when it arrives (`result` is a `StopIteration` instance at the end). For
    /// asyncio.
    fn next_async(&self, done: Py<PyAny>) -> PyResult<CallHandle> {
        let inner = self.slot()?;
        let task = crate::spawn(async move {
            let result = Self::next_message(inner).await;
            deliver(done, result).await;
        })?;
        Ok(CallHandle::new(task.abort_handle()))
    }

    /// Cancels the call: the server's handler sees the cancellation. (A stream opened
    /// before `fork()` is the parent's: in the child this does nothing.)
    fn cancel(&self) -> PyResult<()> {
        let Some(inner) = self.inner.get().cloned() else {
            return Ok(());
        };
        crate::spawn(async move {
            inner.lock().await.take();
        })?;
        Ok(())
    }
}

type SinkSlot = Arc<tokio::sync::Mutex<Option<RequestSink<Value>>>>;

/// Where a client-streaming or bidirectional call's requests go.
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct NativeRequestSink {
    inner: ProcessBound<SinkSlot>,
}

impl NativeRequestSink {
    pub(crate) fn new(sink: RequestSink<Value>) -> NativeRequestSink {
        NativeRequestSink {
            inner: ProcessBound::new(Arc::new(tokio::sync::Mutex::new(Some(sink)))),
        }
    }

    fn slot(&self) -> PyResult<SinkSlot> {
        self.inner
            .get()
            .cloned()
            .ok_or_else(|| fork::inherited("this call"))
    }
}

#[pymethods]
impl NativeRequestSink {
    /// Sends one request value; waits (GIL released) while the server is slow to read.
    /// Returns `False` once the server has ended the call without reading every request
    /// (the value was discarded; the call's status is its response's), else `True`.
    /// Raises `TypeError` for a value that cannot be sent, `ValueError` once sending was
    /// closed, and the call's `RpcError` if it failed.
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let value = to_value(value)?;
        let slot = self.slot()?;
        let sent = wait(py, async move {
            let mut guard = slot.lock().await;
            match guard.as_mut() {
                Some(sink) => sink
                    .send(&value)
                    .await
                    .map(|()| Some(!sink.closed_by_server())),
                None => Ok(None),
            }
        })?;
        match sent {
            Ok(Some(open)) => Ok(open),
            Ok(None) => Err(PyValueError::new_err(
                "sending is closed on this call: no more requests can be sent",
            )),
            Err(status) => Err(status_to_pyerr(py, &status)),
        }
    }

    /// Ends the request stream (the server's request iterator ends). Idempotent.
    ///
    /// Done before it returns unless another thread is sending at that moment (then right
    /// after that send), so a `send` that follows on this thread always finds sending
    /// closed.
    fn close(&self) -> PyResult<()> {
        take_sink(self.slot()?, RequestSink::finish)
    }

    /// Abandons the call: the server's handler is cancelled.
    fn cancel(&self) -> PyResult<()> {
        let Some(slot) = self.inner.get().cloned() else {
            return Ok(());
        };
        take_sink(slot, |sink| {
            sink.cancel(&Status::cancelled("cancelled by the client"))
        })
    }
}

/// Takes the sink out of `slot` and ends it with `end`: before returning unless a send
/// holds the sink at that moment (then right after that send), so a `send` that follows
/// on this thread always finds sending closed. Runs inside the runtime, as a task would
/// (whatever ending the call drops may need it). Nothing to do if already taken.
fn take_sink(slot: SinkSlot, end: fn(RequestSink<Value>)) -> PyResult<()> {
    let _runtime = runtime()?.enter();
    if let Ok(mut guard) = slot.try_lock() {
        if let Some(sink) = guard.take() {
            end(sink);
        }
        return Ok(());
    }
    crate::spawn(async move {
        if let Some(sink) = slot.lock().await.take() {
            end(sink);
        }
    })?;
    Ok(())
}

/// The one response of a client-streaming call.
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct NativeResponse {
    sink: ProcessBound<SinkSlot>,
    response: ProcessBound<Arc<tokio::sync::Mutex<Option<ResponseFuture<Value>>>>>,
}

impl NativeResponse {
    /// The one response of a client-streaming call whose requests go through `sink`.
    pub(crate) fn new(
        sink: &NativeRequestSink,
        response: ResponseFuture<Value>,
    ) -> PyResult<NativeResponse> {
        Ok(NativeResponse {
            sink: ProcessBound::new(sink.slot()?),
            response: ProcessBound::new(Arc::new(tokio::sync::Mutex::new(Some(response)))),
        })
    }
}

#[pymethods]
impl NativeResponse {
    /// Closes sending if still open, then waits (GIL released) for the response.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (Some(sink), Some(response)) = (self.sink.get().cloned(), self.response.get().cloned())
        else {
            return Err(fork::inherited("this call"));
        };
        let got = wait(py, async move {
            if let Some(s) = sink.lock().await.take() {
                s.finish();
            }
            match response.lock().await.take() {
                Some(r) => r.response().await.map(|r| Some(r.into_inner())),
                None => Ok(None),
            }
        })?;
        match got {
            Ok(Some(v)) => to_python(py, &v),
            Ok(None) => Err(PyValueError::new_err("the response was already taken")),
            Err(status) => Err(status_to_pyerr(py, &status)),
        }
    }
}
