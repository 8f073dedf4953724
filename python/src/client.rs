//! `NativeClient`: calls routed by a Meridian `RegionClient`, blocking or bridged to
//! asyncio.
//!
//! With no configuration the client follows the in-process registry: servers started by
//! this process, trusted through the process's development CA and the registry's own
//! certificates. With a region file or explicit endpoints it follows those instead; with
//! etcd endpoints (or a region file with an `[etcd]` table), the servers registered in
//! etcd.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meridian::region::{
    Discovery, LocalRegistry, RegionClient, RegionMap, ServerEndpoint, StaticDiscovery,
};
use meridian::{ClientTls, Codec, Identity, RequestSink, ResponseFuture, Status, Streaming, Value};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::calls::{deliver, CallHandle, NativeRequestSink, NativeResponse, NativeStream};
use crate::convert::{to_python, to_value};
use crate::errors::status_to_pyerr;
use crate::etcd::{self, EtcdConfig};
use crate::fork::ProcessBound;
use crate::{dev_ca, runtime, timeout_arg, wait};

/// How long a call without a timeout waits for a region that serves its method to appear
/// (servers register in the background; the first connection takes a probe interval).
const READY_WAIT: Duration = Duration::from_secs(5);

/// Explicit endpoints: region name, then each server's `host:port` and certificate name.
type RegionList = Vec<(String, Vec<(String, String)>)>;

enum Source {
    Local,
    Map(RegionMap),
    /// Servers registered in etcd, plus those of a region file.
    Etcd(EtcdConfig, RegionMap),
}

/// The options of one call, checked and converted before anything is sent.
struct CallSpec {
    method: String,
    args: Value,
    timeout: Option<Duration>,
    metadata: Vec<(String, Bytes)>,
    key: Option<Bytes>,
    /// Wait (within the timeout) for a server to become reachable instead of failing at
    /// once with UNAVAILABLE.
    wait_for_ready: bool,
}

impl CallSpec {
    fn new(
        method: String,
        args: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'_, PyDict>>,
        key: Option<&Bound<'_, PyAny>>,
        wait_for_ready: bool,
    ) -> PyResult<CallSpec> {
        let args = to_value(args)?;
        let timeout = timeout_arg(timeout)?;
        let mut md = Vec::new();
        if let Some(dict) = metadata {
            for (k, v) in dict.iter() {
                let k: String = k
                    .extract()
                    .map_err(|_| PyTypeError::new_err("metadata keys must be str"))?;
                md.push((k, bytes_arg(&v, "metadata values")?));
            }
        }
        let key = key.map(|k| bytes_arg(k, "key")).transpose()?;
        Ok(CallSpec {
            method,
            args,
            timeout,
            metadata: md,
            key,
            wait_for_ready,
        })
    }

    fn builder(&self, client: &RegionClient) -> meridian::region::RegionCallBuilder {
        let mut call = client
            .call(self.method.clone())
            .codec(Codec::Value)
            .wait_for_ready(self.wait_for_ready);
        if let Some(t) = self.timeout {
            call = call.timeout(t);
        }
        for (k, v) in &self.metadata {
            call = call.metadata(k.clone(), v.clone());
        }
        if let Some(k) = &self.key {
            call = call.routing_key(k.clone());
        }
        call
    }

    async fn unary(self, client: RegionClient) -> Result<Value, Status> {
        self.unary_response(client).await.map(|r| r.into_inner())
    }

    async fn unary_response(
        self,
        client: RegionClient,
    ) -> Result<meridian::Response<Value>, Status> {
        self.builder(&client)
            .unary::<Value, Value>(&self.args)
            .await
    }

    async fn open_stream(self, client: RegionClient) -> Result<Streaming<Value>, Status> {
        self.ready(&client).await;
        let fut = self
            .builder(&client)
            .server_streaming::<Value, Value>(&self.args);
        self.bounded(fut).await
    }

    async fn open_client_stream(
        self,
        client: RegionClient,
    ) -> Result<(RequestSink<Value>, ResponseFuture<Value>), Status> {
        self.ready(&client).await;
        let fut = self.builder(&client).client_streaming::<Value, Value>();
        self.bounded(fut).await
    }

    async fn open_bidi(
        self,
        client: RegionClient,
    ) -> Result<(RequestSink<Value>, Streaming<Value>), Status> {
        self.ready(&client).await;
        let fut = self.builder(&client).bidi::<Value, Value>();
        self.bounded(fut).await
    }

    /// Unlike unary calls, opening a stream does not wait for a first server: wait here
    /// (bounded by the timeout) so a call right after a server starts works.
    async fn ready(&self, client: &RegionClient) {
        let wait_for = self.timeout.unwrap_or(READY_WAIT).min(READY_WAIT);
        client.ready(&self.method, wait_for).await;
    }

    /// `fut` (opening a stream), bounded by the call's timeout.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match self.timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
            None => fut.await,
        }
    }
}

fn bytes_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Bytes> {
    if let Ok(s) = v.cast::<PyString>() {
        Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()))
    } else if let Ok(b) = v.cast::<PyBytes>() {
        Ok(Bytes::copy_from_slice(b.as_bytes()))
    } else if let Some(b) = crate::convert::bytes_like(v)? {
        Ok(Bytes::from(b))
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} must be str or bytes (or bytearray, memoryview)"
        )))
    }
}

/// A region-routing client (used by `meridian.RPCClient` and `meridian.AsyncRPCClient`).
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct NativeClient {
    home: Option<String>,
    source: Source,
    roots_file: Option<String>,
    /// The certificate and key files presented to servers that require one (mutual
    /// TLS): read when the region client is built, and again by `reload_tls`.
    identity_files: Option<(String, String)>,
    /// The region client, started on first use. In a child made by `fork()` the
    /// parent's is left alone (leaked) and a new one starts on the child's runtime.
    client: Mutex<Option<ProcessBound<RegionClient>>>,
    wait_for_ready: bool,
}

impl NativeClient {
    /// One unary call, waited for with the GIL released; a failure becomes its exception.
    fn blocking_unary(
        &self,
        py: Python<'_>,
        method: String,
        args: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'_, PyDict>>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<meridian::Response<Value>> {
        let spec = CallSpec::new(method, args, timeout, metadata, key, self.wait_for_ready)?;
        let client = self.region_client()?;
        wait(py, spec.unary_response(client))?.map_err(|status| status_to_pyerr(py, &status))
    }

    /// The region client, built on first use: by then the servers of this process that
    /// the script started have registered, and their certificates can be trusted.
    fn region_client(&self) -> PyResult<RegionClient> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref().and_then(|c| c.get()) {
            return Ok(c.clone());
        }
        let mut tls = match &self.roots_file {
            Some(path) => ClientTls::with_roots_pem_file(path)
                .map_err(|e| PyValueError::new_err(e.to_string()))?,
            None => {
                let mut roots = vec![dev_ca()?.certificate().clone()];
                roots.extend(
                    LocalRegistry::global()
                        .roots()
                        .into_iter()
                        .filter(|c| !c.is_empty()),
                );
                ClientTls::with_roots(roots).map_err(|e| PyRuntimeError::new_err(e.to_string()))?
            }
        };
        // The certificate files as they are now (a client closed after `reload_tls`
        // starts again with the rotated ones).
        if let Some((cert, key)) = &self.identity_files {
            let identity = Identity::from_pem_files(cert, key)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            tls = tls.with_identity(identity);
        }
        let discovery: Arc<dyn Discovery> = match &self.source {
            Source::Local => LocalRegistry::global(),
            Source::Map(map) => StaticDiscovery::new(map.clone()),
            Source::Etcd(config, base) => etcd::discovery(config, base.clone())?,
        };
        let mut builder = RegionClient::builder(discovery, tls);
        if let Some(home) = &self.home {
            builder = builder.home_region(home.clone());
        }
        let _entered = runtime()?.enter();
        let client = builder
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the client: {e}")))?;
        // Its probes and discovery run in the background.
        crate::kick()?;
        *slot = Some(ProcessBound::new(client.clone()));
        Ok(client)
    }
}

#[pymethods]
impl NativeClient {
    /// A client preferring region `home` when it is healthy. Servers come from the region
    /// file `config` (TOML), or from `regions` (region name to a list of `(host:port,
    /// server_name)`), or else from this process's registry. `roots` is a PEM file of
    /// the certificates to trust; without it the client trusts this process's servers.
    /// With `etcd` (client URLs), or a region file with an `[etcd]` table, the servers
    /// registered in etcd under `etcd_prefix` are followed as they come and go. With
    /// `wait_for_ready`, a call that finds no reachable server waits for one within its
    /// timeout instead of failing at once with UNAVAILABLE. With `client_cert_file` and
    /// `client_key_file` (PEM) it presents that certificate to servers requiring one
    /// (mutual TLS); files that cannot be used raise `ValueError` here.
    #[new]
    #[pyo3(signature = (home=None, config=None, regions=None, roots=None, etcd=None, etcd_prefix=None, wait_for_ready=false, client_cert_file=None, client_key_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        home: Option<String>,
        config: Option<String>,
        regions: Option<RegionList>,
        roots: Option<String>,
        etcd: Option<Vec<String>>,
        etcd_prefix: Option<String>,
        wait_for_ready: bool,
        client_cert_file: Option<String>,
        client_key_file: Option<String>,
    ) -> PyResult<NativeClient> {
        let identity_files = match (client_cert_file, client_key_file) {
            (Some(cert), Some(key)) => {
                // Read now so bad files fail here, not at the first call.
                Identity::from_pem_files(&cert, &key)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
                Some((cert, key))
            }
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "a client certificate needs both its certificate file and its key file",
                ))
            }
        };
        if let Some(path) = &roots {
            // Read now so a bad file fails here, not at the first call.
            ClientTls::with_roots_pem_file(path)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        let etcd = match etcd::config(etcd, etcd_prefix.clone(), None)? {
            Some(c) => Some(c),
            None => match &config {
                Some(path) => etcd::config_from_region_file(path, etcd_prefix)?,
                None => None,
            },
        };
        if etcd.is_some() && regions.is_some() {
            return Err(PyValueError::new_err(
                "give either etcd or regions, not both",
            ));
        }
        let source = match (config, regions) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "give either config or regions, not both",
                ))
            }
            (Some(path), None) => Source::Map(
                RegionMap::from_toml_file(&path)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            ),
            (None, Some(regions)) => {
                let mut map = RegionMap::new();
                for (region, servers) in regions {
                    for (addr, name) in servers {
                        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                            PyValueError::new_err(format!(
                                "server address must be ip:port, got {addr:?}"
                            ))
                        })?;
                        map.add_server(&region, ServerEndpoint::new(addr, name));
                    }
                }
                Source::Map(map)
            }
            (None, None) => Source::Local,
        };
        let source = match (etcd, source) {
            (Some(c), Source::Map(base)) => Source::Etcd(c, base),
            (Some(c), _) => Source::Etcd(c, RegionMap::new()),
            (None, s) => s,
        };
        Ok(NativeClient {
            home,
            source,
            roots_file: roots,
            identity_files,
            client: Mutex::new(None),
            wait_for_ready,
        })
    }

    /// A blocking unary call; the GIL is released while it waits and Ctrl-C interrupts it.
    #[pyo3(signature = (method, args, timeout=None, metadata=None, key=None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: String,
        args: &Bound<'py, PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let response = self.blocking_unary(py, method, args, timeout, metadata, key)?;
        to_python(py, response.get_ref())
    }

    /// A blocking unary call that also returns the trailing metadata and where the time
    /// went: `(result, {key: bytes}, {part: seconds or None})`.
    #[pyo3(signature = (method, args, timeout=None, metadata=None, key=None))]
    fn call_detailed<'py>(
        &self,
        py: Python<'py>,
        method: String,
        args: &Bound<'py, PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let response = self.blocking_unary(py, method, args, timeout, metadata, key)?;
        let trailers = PyDict::new(py);
        for (k, v) in response.metadata().iter() {
            trailers.set_item(k, PyBytes::new(py, v))?;
        }
        let t = response.timing();
        let timing = PyDict::new(py);
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        timing.set_item("total", t.total().as_secs_f64())?;
        timing.set_item("server", secs(t.server()))?;
        timing.set_item("network", secs(t.network()))?;
        timing.set_item("proxy", secs(t.proxy()))?;
        timing.set_item("client_proxy_network", secs(t.client_proxy_network()))?;
        timing.set_item("proxy_server_network", secs(t.proxy_server_network()))?;
        Ok((to_python(py, response.get_ref())?, trailers, timing))
    }

    /// Starts a unary call and returns at once; `done(ok, result)` is called from a
    /// worker thread when it ends, with the decoded result or the `RpcError`. For asyncio.
    #[pyo3(signature = (method, args, done, timeout=None, metadata=None, key=None))]
    #[allow(clippy::too_many_arguments)]
    fn call_async<'py>(
        &self,
        method: String,
        args: &Bound<'py, PyAny>,
        done: Py<PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<CallHandle> {
        let spec = CallSpec::new(method, args, timeout, metadata, key, self.wait_for_ready)?;
        let client = self.region_client()?;
        let task = crate::spawn(async move {
            let result = spec.unary(client).await.map(Some);
            deliver(done, result).await;
        })?;
        Ok(CallHandle::new(task.abort_handle()))
    }

    /// Opens a server-streaming call; the returned stream yields the responses.
    #[pyo3(signature = (method, args, timeout=None, metadata=None, key=None))]
    fn stream<'py>(
        &self,
        py: Python<'py>,
        method: String,
        args: &Bound<'py, PyAny>,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<NativeStream> {
        let spec = CallSpec::new(method, args, timeout, metadata, key, self.wait_for_ready)?;
        let client = self.region_client()?;
        let responses = wait(py, spec.open_stream(client))?.map_err(|s| status_to_pyerr(py, &s))?;
        Ok(NativeStream::new(responses))
    }

    /// Opens a client-streaming call: `(sink, response)`; send the requests through the
    /// sink, then `response.wait()` closes sending and waits for the one response.
    #[pyo3(signature = (method, timeout=None, metadata=None, key=None))]
    fn open_client_stream<'py>(
        &self,
        py: Python<'py>,
        method: String,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(NativeRequestSink, NativeResponse)> {
        let none = py.None().into_bound(py);
        let spec = CallSpec::new(method, &none, timeout, metadata, key, self.wait_for_ready)?;
        let client = self.region_client()?;
        let (sink, response) =
            wait(py, spec.open_client_stream(client))?.map_err(|s| status_to_pyerr(py, &s))?;
        let sink = NativeRequestSink::new(sink);
        let response = NativeResponse::new(&sink, response)?;
        Ok((sink, response))
    }

    /// Opens a bidirectional call: `(sink, responses)`.
    #[pyo3(signature = (method, timeout=None, metadata=None, key=None))]
    fn open_bidi<'py>(
        &self,
        py: Python<'py>,
        method: String,
        timeout: Option<f64>,
        metadata: Option<&Bound<'py, PyDict>>,
        key: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(NativeRequestSink, NativeStream)> {
        let none = py.None().into_bound(py);
        let spec = CallSpec::new(method, &none, timeout, metadata, key, self.wait_for_ready)?;
        let client = self.region_client()?;
        let (sink, responses) =
            wait(py, spec.open_bidi(client))?.map_err(|s| status_to_pyerr(py, &s))?;
        Ok((NativeRequestSink::new(sink), NativeStream::new(responses)))
    }

    /// Reads the trust roots file (`roots`) and the client certificate files again:
    /// handshakes from now on use them; open connections stay. Files that cannot be used
    /// raise `ValueError`, keeping what was in use. A client trusting this process's
    /// servers (no roots file) keeps that trust.
    fn reload_tls(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.region_client()?;
        let roots = self.roots_file.clone();
        let files = self.identity_files.clone();
        py.detach(|| {
            let Some(tls) = client.tls() else {
                // Trusting this process's servers: nothing read from files.
                return Ok(());
            };
            if let Some(path) = &roots {
                tls.reload_roots_pem_file(path)?;
            }
            if let Some((cert, key)) = &files {
                tls.reload_identity_pem_files(cert, key)?;
            }
            Ok::<_, meridian::Error>(())
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Drops the connections; later calls reconnect.
    /// The region client's metrics in the Prometheus text format (RTT, health and
    /// attempts per region and server, retries, hedges); starts the client if needed.
    fn metrics_text(&self) -> PyResult<String> {
        let client = self.region_client()?;
        let metrics = meridian::telemetry::Metrics::new();
        metrics.add(client.metrics_source());
        Ok(metrics.render())
    }

    fn close(&self) {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
        // In a forked child the parent's client is only forgotten (`ProcessBound`).
        if let Some(client) = client.and_then(ProcessBound::into_inner) {
            // Dropped inside the runtime, where its background tasks live.
            let _ = crate::spawn(async move { drop(client) });
        }
    }
}
