//! Test-only helpers for interop tests: a typed Rust server that Python clients call, and
//! a Rust client that calls Python handlers. Not part of the public API (leading `_` in
//! Python).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use meridian::region::RegionClient;
use meridian::transport::pem_encode;
use meridian::{Codec, Method, Server, ServerTls, Status};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde::Serialize;

use crate::errors::status_to_pyerr;
use crate::fork::ProcessBound;
use crate::{dev_ca, runtime, timeout_arg, wait};

/// A running typed Rust server (see [`start_rust_test_server`]).
#[pyclass(module = "meridian._native", frozen)]
pub(crate) struct RustTestServer {
    server: Mutex<Option<ProcessBound<Server>>>,
    port: u16,
}

#[pymethods]
impl RustTestServer {
    /// The bound port on 127.0.0.1.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let server = self
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .and_then(ProcessBound::into_inner);
        if let Some(server) = server {
            wait(py, server.shutdown(Duration::from_secs(1)))?;
        }
        Ok(())
    }
}

/// Starts a Rust server in `region` with typed handlers, registered in the in-process
/// registry: `rust_add((i64, i64)) -> i64` (OUT_OF_RANGE on overflow),
/// `rust_concat((String, Vec<u8>)) -> String`, `rust_metadata((String,)) -> String` (the
/// value of the call's metadata entry of that name, NOT_FOUND if absent), and handlers
/// taking a bare value: `rust_double(i64) -> i64`, `rust_where(()) -> "rust"` and
/// `rust_echo(Value) -> Value`.
#[pyfunction]
#[pyo3(name = "_start_rust_test_server")]
pub(crate) fn start_rust_test_server(py: Python<'_>, region: String) -> PyResult<RustTestServer> {
    let identity = dev_ca()?
        .issue_server(&["localhost"])
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let builder = Server::builder()
        .region(region)
        .unary(
            Method::new("rust_add").idempotent(),
            |(a, b): (i64, i64), _ctx| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::out_of_range("sum overflows"))
            },
        )
        .unary(
            "rust_concat",
            |(s, b): (String, Vec<u8>), _ctx| async move { Ok(format!("{s}:{}", b.len())) },
        )
        // Handlers taking a bare scalar, unit and any value: what `call_value` is for.
        .unary("rust_double", |n: i64, _ctx| async move {
            n.checked_mul(2)
                .ok_or_else(|| Status::out_of_range("double overflows"))
        })
        .unary("rust_where", |(): (), _ctx| async move {
            Ok("rust".to_string())
        })
        .unary("rust_echo", |v: meridian::Value, _ctx| async move { Ok(v) })
        .unary("rust_metadata", |(name,): (String,), ctx| async move {
            ctx.metadata()
                .get_str(&name)
                .map(str::to_string)
                .ok_or_else(|| Status::not_found(format!("no metadata entry {name:?}")))
        });
    let server = wait(
        py,
        builder.bind(
            "127.0.0.1:0".parse().expect("a literal address"),
            ServerTls::new(identity),
        ),
    )?
    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let port = server.local_addr().port();
    Ok(RustTestServer {
        server: Mutex::new(Some(ProcessBound::new(server))),
        port,
    })
}

/// Named arguments as a Rust caller would send them: a struct, which the Value codec
/// encodes as a map with string keys (the Python side's keyword arguments).
#[derive(Serialize)]
struct Named {
    a: i64,
    b: i64,
}

/// Calls `method` of a Python server from a Rust `RegionClient` following the in-process
/// registry, with typed Rust arguments: `(a, b)` as a tuple, or as the struct `{a, b}`
/// when `named`. Returns the result, which must be an integer.
#[pyfunction]
#[pyo3(name = "_rust_call", signature = (method, a, b, named=false, timeout=5.0))]
pub(crate) fn rust_call(
    py: Python<'_>,
    method: String,
    a: i64,
    b: i64,
    named: bool,
    timeout: f64,
) -> PyResult<i64> {
    let timeout = timeout_arg(Some(timeout))?.unwrap_or_default();
    let client = {
        let _entered = runtime()?.enter();
        let client = RegionClient::local()
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        crate::kick()?;
        client
    };
    let result = wait(py, async move {
        let call = client.call(method).codec(Codec::Value).timeout(timeout);
        let out = if named {
            call.unary::<Named, i64>(&Named { a, b }).await
        } else {
            call.unary::<(i64, i64), i64>(&(a, b)).await
        };
        drop(client);
        out.map(|r| r.into_inner())
    })?;
    result.map_err(|s| status_to_pyerr(py, &s))
}

/// Writes a fresh development CA's certificate (`ca.pem`) and a server certificate for
/// `localhost` issued by it (`server.pem`, `server.key`) into `dir`; returns the three
/// paths. For tests of servers and clients configured with files.
#[pyfunction]
#[pyo3(name = "_write_dev_certificates")]
pub(crate) fn write_dev_certificates(dir: PathBuf) -> PyResult<(String, String, String)> {
    let ca = meridian::DevCa::new().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let id = ca
        .issue_server(&["localhost"])
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let chain: String = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    let key = pem_encode("PRIVATE KEY", id.key.secret_der());
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    let write = |p: &PathBuf, text: &str| {
        std::fs::write(p, text).map_err(|e| PyValueError::new_err(format!("{}: {e}", p.display())))
    };
    write(&paths.0, &ca.certificate_pem())?;
    write(&paths.1, &chain)?;
    write(&paths.2, &key)?;
    let s = |p: PathBuf| p.display().to_string();
    Ok((s(paths.0), s(paths.1), s(paths.2)))
}

/// The PEM texts of an identity: its chain, then its private key.
fn identity_pem(id: &meridian::Identity) -> (String, String) {
    let chain = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    (chain, pem_encode("PRIVATE KEY", id.key.secret_der()))
}

/// Writes a fresh development CA (`ca.pem`), a server certificate for `server_names`
/// (`server.pem`, `server.key`) and a client certificate named `client_name`, with the URI
/// SAN `client_uri` if given (`client.pem`, `client.key`), all issued by that CA, into
/// `dir`. Returns the paths by role: `ca`, `server_cert`, `server_key`, `client_cert`,
/// `client_key`. Backs `meridian.testing.dev_certificates` (development only).
#[pyfunction]
#[pyo3(name = "_write_dev_pki", signature = (dir, server_names, client_name, client_uri=None))]
pub(crate) fn write_dev_pki(
    dir: PathBuf,
    server_names: Vec<String>,
    client_name: String,
    client_uri: Option<String>,
) -> PyResult<HashMap<String, String>> {
    if server_names.is_empty() {
        return Err(PyValueError::new_err(
            "server_names must name at least one host",
        ));
    }
    let fail = |e: meridian::Error| PyRuntimeError::new_err(e.to_string());
    let ca = meridian::DevCa::new().map_err(fail)?;
    let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
    let server = ca.issue_server(&names).map_err(fail)?;
    let client = match &client_uri {
        Some(uri) => ca.issue_client_with_uri(&client_name, uri),
        None => ca.issue_client(&client_name),
    }
    .map_err(fail)?;
    let (server_cert, server_key) = identity_pem(&server);
    let (client_cert, client_key) = identity_pem(&client);
    let files = [
        ("ca", "ca.pem", ca.certificate_pem()),
        ("server_cert", "server.pem", server_cert),
        ("server_key", "server.key", server_key),
        ("client_cert", "client.pem", client_cert),
        ("client_key", "client.key", client_key),
    ];
    let mut out = HashMap::new();
    for (role, name, text) in files {
        let path = Path::new(&dir).join(name);
        std::fs::write(&path, text)
            .map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))?;
        out.insert(role.to_string(), path.display().to_string());
    }
    Ok(out)
}
