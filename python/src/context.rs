//! `CallContext` and `PeerIdentity`: what a Python handler can learn about its call.
//!
//! The native server builds one `CallContext` per call and passes it to the Python
//! adapter, which hands it to handlers that ask for it (a `context` parameter) and sets
//! it as the call's `meridian.current_context()`. Everything is read from the core's
//! [`meridian::CallContext`], which stays shared with the running call: the time remaining
//! and the cancellation flag are live, not a snapshot.

use std::sync::Arc;

use meridian::transport::PeerIdentity as CorePeerIdentity;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::calls::CallHandle;

/// The call a handler is answering: method, caller address and identity, metadata,
/// deadline and cancellation.
#[pyclass(module = "meridian._native", name = "CallContext", frozen)]
pub(crate) struct PyCallContext {
    ctx: meridian::CallContext,
}

impl PyCallContext {
    pub(crate) fn new(ctx: meridian::CallContext) -> PyCallContext {
        PyCallContext { ctx }
    }
}

#[pymethods]
impl PyCallContext {
    /// The method name the client called.
    #[getter]
    fn method(&self) -> &str {
        self.ctx.method()
    }

    /// The client's address, `(host, port)`.
    #[getter]
    fn peer(&self) -> (String, u16) {
        let peer = self.ctx.peer();
        (peer.ip().to_string(), peer.port())
    }

    /// The client's verified certificate identity; `None` unless the server requires
    /// client certificates (mutual TLS).
    #[getter]
    fn peer_identity(&self) -> Option<PyPeerIdentity> {
        self.ctx.peer_identity().map(|p| PyPeerIdentity {
            identity: Arc::new(p.clone()),
        })
    }

    /// The metadata the client sent, as a new dict: `str` values, except under keys
    /// ending in `-bin`, whose values are `bytes` (the convention of `RpcError.metadata`).
    /// A value that is not UTF-8 under another key is given as `bytes` too.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (k, v) in self.ctx.metadata().iter() {
            match std::str::from_utf8(v) {
                Ok(text) if !k.ends_with("-bin") => dict.set_item(k, PyString::new(py, text))?,
                _ => dict.set_item(k, PyBytes::new(py, v))?,
            }
        }
        Ok(dict)
    }

    /// Seconds left before the caller's deadline (0.0 once it passed), or `None` when the
    /// call has no deadline.
    fn time_remaining(&self) -> Option<f64> {
        self.ctx.remaining().map(|d| d.as_secs_f64())
    }

    /// Whether the call was cancelled, by the client or by its deadline. A handler doing
    /// long work can poll this and stop early: nobody will read its answer.
    fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }

    /// Calls `callback()` (with no arguments, on a worker thread) once the call is
    /// cancelled, by the client or its deadline; the returned handle's `cancel()` stops
    /// waiting. The Python adapter uses it to cancel `async def` handlers.
    #[pyo3(name = "_on_cancel")]
    fn on_cancel(&self, callback: Py<PyAny>) -> PyResult<CallHandle> {
        let ctx = self.ctx.clone();
        let task = crate::spawn(async move {
            ctx.cancelled().await;
            let _ = tokio::task::spawn_blocking(move || {
                crate::attach::attach(|py| {
                    if let Err(e) = callback.call0(py) {
                        e.write_unraisable(py, None);
                    }
                })
            })
            .await;
        })?;
        Ok(CallHandle::new(task.abort_handle()))
    }

    /// Whether the caller marked the call idempotent.
    #[getter]
    fn idempotent(&self) -> bool {
        self.ctx.is_idempotent()
    }

    /// Adds an entry to the response's trailing metadata (`str` or `bytes` value).
    fn set_trailer(&self, key: String, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = if let Ok(s) = value.cast::<PyString>() {
            s.to_cow()?.as_bytes().to_vec()
        } else if let Ok(b) = value.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "a trailer value must be str or bytes",
            ));
        };
        self.ctx.set_trailer(key, value);
        Ok(())
    }

    fn __repr__(&self) -> String {
        let peer = self.ctx.peer();
        let who = match self.ctx.peer_identity() {
            Some(p) => format!(
                ", peer_identity={}",
                identity_repr(p).unwrap_or_else(|| "<unnamed>".into())
            ),
            None => String::new(),
        };
        format!(
            "CallContext(method={}, peer='{peer}'{who})",
            quote(self.ctx.method())
        )
    }
}

/// The most telling name of an identity: its SPIFFE ID, else first DNS name, else CN.
fn identity_repr(p: &CorePeerIdentity) -> Option<String> {
    p.spiffe_id()
        .or_else(|| p.dns_names().first().map(String::as_str))
        .or_else(|| p.common_name())
        .map(quote)
}

/// `text` as Python writes a `str` literal in a repr (single quotes, escapes).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A list of strings as Python writes it in a repr.
fn quote_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Who the client is, from the certificate chain the server verified (mutual TLS). Every
/// name here was vouched for by a CA the server trusts.
#[pyclass(module = "meridian._native", name = "PeerIdentity", frozen)]
pub(crate) struct PyPeerIdentity {
    identity: Arc<CorePeerIdentity>,
}

#[pymethods]
impl PyPeerIdentity {
    /// DNS names among the certificate's subject alternative names.
    #[getter]
    fn dns_names(&self) -> Vec<String> {
        self.identity.dns_names().to_vec()
    }

    /// URIs among the certificate's subject alternative names.
    #[getter]
    fn uris(&self) -> Vec<String> {
        self.identity.uris().to_vec()
    }

    /// The first `spiffe://` URI SAN (the workload's SPIFFE ID), or `None`.
    #[getter]
    fn spiffe_id(&self) -> Option<&str> {
        self.identity.spiffe_id()
    }

    /// The subject's common name, or `None`.
    #[getter]
    fn common_name(&self) -> Option<&str> {
        self.identity.common_name()
    }

    /// The verified chain as DER `bytes`, end-entity certificate first.
    #[getter]
    fn certificates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.identity
                .certificates()
                .iter()
                .map(|c| PyBytes::new(py, c)),
        )
    }

    /// Whether any DNS or URI name, or the common name, equals `name`.
    fn has_name(&self, name: &str) -> bool {
        self.identity.has_name(name)
    }

    fn __repr__(&self) -> String {
        format!(
            "PeerIdentity(dns_names={}, uris={}, common_name={})",
            quote_list(self.identity.dns_names()),
            quote_list(self.identity.uris()),
            self.identity
                .common_name()
                .map_or_else(|| "None".to_string(), quote)
        )
    }
}
