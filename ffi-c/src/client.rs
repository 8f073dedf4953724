//! The client side: configuration, the client handle, call options, unary calls
//! (blocking and asynchronous), responses, and server-streaming results.

use std::ffi::{c_char, c_void, CString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcore::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use mcore::{Channel, ClientTls, Codec, Metadata, Status, Streaming, TransportConfig, Value};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::boundary::{
    block_on, body_out, borrow, borrow_mut, boundary, boundary_void, bytes, c_str, c_str_opt,
    nul_terminated, out_ptr, panic_text, runtime, set_last_error, write_out, Fail, UserPtr,
};
use crate::json;
use crate::meridian_status;
use crate::{MERIDIAN_PAYLOAD_JSON, MERIDIAN_PAYLOAD_RAW};

/// How a client trusts servers.
#[derive(Debug, Clone)]
enum Trust {
    RootsPemFile(PathBuf),
    Pinned(CertificateDer<'static>),
}

/// Client configuration: endpoints or a region file, TLS trust, preferred region.
///
/// Made by `meridian_client_config_new`, freed by `meridian_client_config_free`. Not
/// thread-safe: use it from one thread at a time. `meridian_client_new` only reads it, so
/// it may be freed right after.
#[allow(non_camel_case_types)]
#[derive(Debug, Default)]
pub struct meridian_client_config {
    endpoints: Vec<(Option<String>, SocketAddr, String)>,
    region_file: Option<PathBuf>,
    trust: Option<Trust>,
    preferred_region: Option<String>,
    connect_timeout: Option<Duration>,
}

/// Creates an empty client configuration and stores it in `*config_out`.
///
/// The caller owns the result and frees it with `meridian_client_config_free`.
///
/// # Safety
/// `config_out` points to a writable `meridian_client_config *`.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_new(
    config_out: *mut *mut meridian_client_config,
) -> meridian_status {
    boundary(|| {
        out_ptr(config_out, "config_out")?;
        let config = Box::into_raw(Box::default());
        // SAFETY: checked non-NULL above; the caller guarantees it is writable.
        unsafe { write_out(config_out, config) };
        Ok(())
    })
}

/// Frees a configuration made by `meridian_client_config_new`. NULL is harmless.
///
/// # Safety
/// `config` is NULL or a configuration not yet freed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_free(config: *mut meridian_client_config) {
    boundary_void(|| {
        if !config.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_config_new, freed once.
            drop(unsafe { Box::from_raw(config) });
        }
    })
}

/// Adds a server endpoint: `addr` is "IP:port" (e.g. "127.0.0.1:7000"), `server_name` the
/// name its certificate must carry (NULL: "localhost"), `region` the region it belongs to
/// (NULL: "default"). All strings are copied.
///
/// With exactly one endpoint and no region file, the client is a direct channel to that
/// server (raw and JSON calls). Otherwise it is a region client that routes every call to
/// the nearest healthy region serving the method (raw and JSON calls too).
///
/// # Safety
/// `config` is a live configuration; the strings are NUL-terminated or NULL where allowed.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_add_endpoint(
    config: *mut meridian_client_config,
    region: *const c_char,
    addr: *const c_char,
    server_name: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: the caller passes a live handle and valid strings (see the doc).
        let (config, region, addr, name) = unsafe {
            (
                borrow_mut(config, "config")?,
                c_str_opt(region, "region")?,
                c_str(addr, "addr")?,
                c_str_opt(server_name, "server_name")?,
            )
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| Fail::invalid(format!("bad address {addr:?}: {e}")))?;
        config.endpoints.push((
            region.map(str::to_owned),
            addr,
            name.unwrap_or("localhost").to_owned(),
        ));
        Ok(())
    })
}

/// Reads the regions and their servers from a TOML region file when the client is made:
///
/// ```toml
/// [[region]]
/// name = "eu-west"
/// servers = [{ addr = "10.0.0.1:7000", server_name = "eu-west.example.com" }]
/// ```
///
/// The path is copied; the file is read by `meridian_client_new`.
///
/// # Safety
/// `config` is a live configuration; `path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_region_file(
    config: *mut meridian_client_config,
    path: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (config, path) = unsafe { (borrow_mut(config, "config")?, c_str(path, "path")?) };
        config.region_file = Some(PathBuf::from(path));
        Ok(())
    })
}

/// Trusts servers whose certificate chains to a CA in the PEM file at `path` (read by
/// `meridian_client_new`). Replaces any trust set before.
///
/// # Safety
/// `config` is a live configuration; `path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_roots_pem_file(
    config: *mut meridian_client_config,
    path: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (config, path) = unsafe { (borrow_mut(config, "config")?, c_str(path, "path")?) };
        config.trust = Some(Trust::RootsPemFile(PathBuf::from(path)));
        Ok(())
    })
}

/// Trusts exactly one server certificate (pinning), given as `cert_len` bytes of DER or
/// of PEM text (the first certificate is used). The bytes are copied. The server's
/// signature is still verified; names and expiry are not. Replaces any trust set before.
///
/// Returns `MERIDIAN_CONFIG_ERROR` when the bytes hold no certificate.
///
/// # Safety
/// `config` is a live configuration; `cert` points to `cert_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_pinned_certificate(
    config: *mut meridian_client_config,
    cert: *const u8,
    cert_len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (config, cert) = unsafe {
            (
                borrow_mut(config, "config")?,
                bytes(cert, cert_len, "cert")?,
            )
        };
        let der = if cert.starts_with(b"-----BEGIN") {
            CertificateDer::from_pem_slice(cert).map_err(|e| {
                Fail::new(
                    meridian_status::MERIDIAN_CONFIG_ERROR,
                    format!("no certificate in the PEM text: {e}"),
                )
            })?
        } else if cert.is_empty() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_CONFIG_ERROR,
                "the certificate is empty",
            ));
        } else {
            CertificateDer::from(cert.to_vec())
        };
        config.trust = Some(Trust::Pinned(der));
        Ok(())
    })
}

/// Prefers `region` whenever it is healthy, whatever the measured RTTs say (region
/// clients only). The string is copied.
///
/// # Safety
/// `config` is a live configuration; `region` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_preferred_region(
    config: *mut meridian_client_config,
    region: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (config, region) = unsafe { (borrow_mut(config, "config")?, c_str(region, "region")?) };
        config.preferred_region = Some(region.to_owned());
        Ok(())
    })
}

/// Gives up a connection attempt (QUIC and TLS handshake) after `timeout_ms` (0: the
/// default, 10 s). Applies to the first connection and to reconnections.
///
/// # Safety
/// `config` is a live configuration.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_connect_timeout_ms(
    config: *mut meridian_client_config,
    timeout_ms: u32,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let config = unsafe { borrow_mut(config, "config") }?;
        config.connect_timeout =
            (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
        Ok(())
    })
}

/// Where a client's calls go.
#[derive(Debug, Clone)]
enum Target {
    Channel(Channel),
    Region(RegionClient),
}

/// A client: a channel to one server, or a region client over many.
///
/// Made by `meridian_client_new`, freed by `meridian_client_free`. Thread-safe: any number
/// of threads may make calls on one client at once. Free it once, when no other thread is
/// still inside a call on it; asynchronous calls already started complete normally after
/// the free (their callbacks still run).
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct meridian_client {
    target: Target,
}

/// Makes a client from `config` and stores it in `*client_out`. A single-endpoint client
/// connects here (QUIC and TLS handshake) and fails with `MERIDIAN_UNAVAILABLE` when the
/// server cannot be reached; a region client connects in the background (see
/// `meridian_client_wait_ready`). Blocking: not callable from a handler or callback
/// (`MERIDIAN_WOULD_DEADLOCK`).
///
/// The config is only read; the caller keeps ownership of it. The caller owns the client
/// and frees it with `meridian_client_free`.
///
/// # Safety
/// `config` is a live configuration; `client_out` points to a writable `meridian_client *`.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_new(
    config: *const meridian_client_config,
    client_out: *mut *mut meridian_client,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let config = unsafe { borrow(config, "config") }?;
        out_ptr(client_out, "client_out")?;
        let config_err =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        let tls = match &config.trust {
            None => {
                return Err(Fail::new(
                    meridian_status::MERIDIAN_CONFIG_ERROR,
                    "no TLS trust: set a roots PEM file or a pinned certificate",
                ))
            }
            Some(Trust::RootsPemFile(p)) => {
                ClientTls::with_roots_pem_file(p).map_err(config_err)?
            }
            Some(Trust::Pinned(der)) => ClientTls::pinned(der.clone()),
        };
        let mut transport = TransportConfig::default();
        if let Some(t) = config.connect_timeout {
            transport.handshake_timeout = t;
        }
        let target = if config.region_file.is_none() && config.endpoints.len() == 1 {
            let (_, addr, name) = config.endpoints[0].clone();
            let channel = block_on(
                Channel::builder(addr, tls)
                    .server_name(name)
                    .transport(transport)
                    .connect(),
            )?
            .map_err(|e| Fail::new(meridian_status::MERIDIAN_UNAVAILABLE, e.to_string()))?;
            Target::Channel(channel)
        } else {
            let mut map = match &config.region_file {
                Some(p) => RegionMap::from_toml_file(p).map_err(config_err)?,
                None => RegionMap::new(),
            };
            for (region, addr, name) in &config.endpoints {
                map.add_server(
                    region.as_deref().unwrap_or("default"),
                    ServerEndpoint::new(*addr, name.clone()),
                );
            }
            if map.regions.iter().all(|r| r.servers.is_empty()) {
                return Err(Fail::new(
                    meridian_status::MERIDIAN_CONFIG_ERROR,
                    "no server endpoint: add an endpoint or a region file",
                ));
            }
            let mut builder =
                RegionClient::builder(StaticDiscovery::new(map), tls).transport(transport);
            if let Some(r) = &config.preferred_region {
                builder = builder.home_region(r.clone());
            }
            let _entered = runtime()?.enter();
            Target::Region(builder.build().map_err(config_err)?)
        };
        let client = Box::into_raw(Box::new(meridian_client { target }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(client_out, client) };
        Ok(())
    })
}

/// Waits up to `timeout_ms` until the client can take calls to `method` (a region client:
/// some region's servers connected and serving it). A single-endpoint client is ready at
/// once. Returns `MERIDIAN_UNAVAILABLE` on timeout. Blocking.
///
/// # Safety
/// `client` is a live client; `method` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_wait_ready(
    client: *const meridian_client,
    method: *const c_char,
    timeout_ms: u32,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (client, method) = unsafe { (borrow(client, "client")?, c_str(method, "method")?) };
        let Target::Region(rc) = &client.target else {
            return Ok(());
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        if block_on(rc.ready(method, timeout))? {
            Ok(())
        } else {
            Err(Fail::new(
                meridian_status::MERIDIAN_UNAVAILABLE,
                format!("no region serves {method:?} after {timeout_ms} ms"),
            ))
        }
    })
}

/// Frees a client. NULL is harmless. Calls in flight on other threads must have returned.
///
/// # Safety
/// `client` is NULL or a client not yet freed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_free(client: *mut meridian_client) {
    boundary_void(|| {
        if !client.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_new, freed once.
            let client = unsafe { Box::from_raw(client) };
            // Connections close on the runtime's I/O driver.
            if let Ok(rt) = runtime() {
                let _entered = rt.enter();
                drop(client);
            }
        }
    })
}

/// Options of a call: timeout, metadata, idempotency, routing key.
///
/// Made by `meridian_call_options_new`, freed by `meridian_call_options_free`. Changing it
/// is not thread-safe; once set up, it may be passed to any number of concurrent calls
/// (they only read it, and copy what they need before returning).
#[allow(non_camel_case_types)]
#[derive(Debug, Default, Clone)]
pub struct meridian_call_options {
    timeout: Option<Duration>,
    metadata: Vec<(String, Bytes)>,
    idempotent: Option<bool>,
    routing_key: Option<Bytes>,
}

/// Creates call options with no timeout, no metadata, default idempotency.
///
/// # Safety
/// `options_out` points to a writable `meridian_call_options *`.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_new(
    options_out: *mut *mut meridian_call_options,
) -> meridian_status {
    boundary(|| {
        out_ptr(options_out, "options_out")?;
        let o = Box::into_raw(Box::default());
        // SAFETY: checked non-NULL above.
        unsafe { write_out(options_out, o) };
        Ok(())
    })
}

/// Frees call options. NULL is harmless.
///
/// # Safety
/// `options` is NULL or options not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_free(options: *mut meridian_call_options) {
    boundary_void(|| {
        if !options.is_null() {
            // SAFETY: made by Box::into_raw in meridian_call_options_new, freed once.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// Sets the call's deadline, `timeout_ms` after the call starts (0: no deadline). The
/// server sees the time left and its handler is cancelled when it passes; the call fails
/// with `MERIDIAN_DEADLINE_EXCEEDED`.
///
/// # Safety
/// `options` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_set_timeout_ms(
    options: *mut meridian_call_options,
    timeout_ms: u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Adds a metadata entry: `key` (NUL-terminated UTF-8) and `value_len` bytes of value.
/// Both are copied.
///
/// # Safety
/// `options` is live; `key` is NUL-terminated; `value` points to `value_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_add_metadata(
    options: *mut meridian_call_options,
    key: *const c_char,
    value: *const u8,
    value_len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (o, key, value) = unsafe {
            (
                borrow_mut(options, "options")?,
                c_str(key, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        o.metadata
            .push((key.to_owned(), Bytes::copy_from_slice(value)));
        Ok(())
    })
}

/// Declares the call safe to run more than once (it may then be retried, or sent in 0-RTT
/// data). Without this, the method's catalog entry decides.
///
/// # Safety
/// `options` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_set_idempotent(
    options: *mut meridian_call_options,
    idempotent: bool,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        unsafe { borrow_mut(options, "options") }?.idempotent = Some(idempotent);
        Ok(())
    })
}

/// Sets a routing key: a region client sends the call to the server that owns the key.
/// The bytes are copied.
///
/// # Safety
/// `options` is live; `key` points to `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_set_routing_key(
    options: *mut meridian_call_options,
    key: *const u8,
    key_len: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (o, key) = unsafe { (borrow_mut(options, "options")?, bytes(key, key_len, "key")?) };
        o.routing_key = Some(Bytes::copy_from_slice(key));
        Ok(())
    })
}

/// Applies call options to either kind of call builder (they share method names).
macro_rules! apply_options {
    ($call:expr, $o:expr) => {{
        let mut call = $call;
        if let Some(t) = $o.timeout {
            call = call.timeout(t);
        }
        for (k, v) in &$o.metadata {
            call = call.metadata(k.clone(), v.clone());
        }
        if let Some(i) = $o.idempotent {
            call = call.idempotent(i);
        }
        if let Some(k) = &$o.routing_key {
            call = call.routing_key(k.clone());
        }
        call
    }};
}

/// The result of a successful unary call.
///
/// Made by the library (blocking calls store it in `*response_out`; asynchronous calls pass
/// it to the callback), owned by the application, freed with `meridian_response_free`.
/// Immutable: may be read from any thread, freed once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct meridian_response {
    /// The body, followed by one NUL byte that is not part of it.
    body: Vec<u8>,
    metadata: Metadata,
    server_time: Option<Duration>,
    total_time: Duration,
    /// Through a proxy: client <-> proxy network, proxy, proxy <-> server network.
    hops: Option<[Duration; 3]>,
}

/// The three proxy hops of a call's timing, when it went through a proxy.
fn hops(t: &mcore::CallTiming) -> Option<[Duration; 3]> {
    Some([
        t.client_proxy_network()?,
        t.proxy()?,
        t.proxy_server_network()?,
    ])
}

/// A request ready to go: its payload in the codec the call uses.
enum Request {
    Raw(Bytes),
    Json(Value),
}

impl Request {
    fn parse(payload: u32, body: &[u8]) -> Result<Request, Fail> {
        match payload {
            MERIDIAN_PAYLOAD_RAW => Ok(Request::Raw(Bytes::copy_from_slice(body))),
            MERIDIAN_PAYLOAD_JSON => json::to_value(body).map(Request::Json),
            other => Err(Fail::invalid(format!("unknown payload kind {other}"))),
        }
    }
}

/// One unary call, start to end.
async fn unary(
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
) -> Result<meridian_response, Fail> {
    let started = Instant::now();
    let (body, metadata, timing) = match (&target, request) {
        (Target::Channel(ch), Request::Raw(req)) => {
            let r = apply_options!(ch.call(method), options)
                .raw()
                .unary(&req)
                .await?;
            (
                nul_terminated(r.get_ref()),
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Channel(ch), Request::Json(v)) => {
            let call = apply_options!(ch.call(method), options).codec(Codec::Value);
            let r = call.unary::<Value, Value>(&v).await?;
            (
                json::from_value(r.get_ref())?,
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Region(rc), Request::Raw(req)) => {
            let r = apply_options!(rc.call(method), options)
                .raw()
                .unary(&req)
                .await?;
            (
                nul_terminated(r.get_ref()),
                r.metadata().clone(),
                r.timing(),
            )
        }
        (Target::Region(rc), Request::Json(v)) => {
            let call = apply_options!(rc.call(method), options).codec(Codec::Value);
            let r = call.unary::<Value, Value>(&v).await?;
            (
                json::from_value(r.get_ref())?,
                r.metadata().clone(),
                r.timing(),
            )
        }
    };
    Ok(meridian_response {
        body,
        metadata,
        server_time: timing.server(),
        total_time: started.elapsed(),
        hops: hops(&timing),
    })
}

/// The arguments every call function shares, read and copied before anything starts.
struct CallArgs {
    target: Target,
    method: String,
    request: Request,
    options: meridian_call_options,
}

/// # Safety
/// The pointers follow the call functions' documented contracts.
unsafe fn call_args(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
) -> Result<CallArgs, Fail> {
    // SAFETY: forwarded from the caller's contract.
    let (client, method, body) = unsafe {
        (
            borrow(client, "client")?,
            c_str(method, "method")?,
            bytes(request, request_len, "request")?,
        )
    };
    if method.is_empty() {
        return Err(Fail::invalid("the method name is empty"));
    }
    let options = if options.is_null() {
        meridian_call_options::default()
    } else {
        // SAFETY: non-NULL, and the caller guarantees a live options handle.
        unsafe { &*options }.clone()
    };
    Ok(CallArgs {
        target: client.target.clone(),
        method: method.to_owned(),
        request: Request::parse(payload, body)?,
        options,
    })
}

/// A unary call that blocks the calling thread until the response, an error, or the
/// deadline. `payload` is `MERIDIAN_PAYLOAD_RAW` or `MERIDIAN_PAYLOAD_JSON`; `request`
/// holds `request_len` bytes (raw bytes, or JSON text without a NUL). `options` may be NULL
/// (defaults); it is only read.
///
/// On `MERIDIAN_OK`, `*response_out` receives a response the caller frees with
/// `meridian_response_free`. On any other status nothing is written; the status is the
/// call's gRPC status (7001..7016, e.g. `MERIDIAN_UNIMPLEMENTED` for an unknown method,
/// `MERIDIAN_DEADLINE_EXCEEDED`, `MERIDIAN_UNAVAILABLE` when the server is gone) or an
/// interface error (`MERIDIAN_BAD_JSON` for unparsable request JSON, ...), and
/// `meridian_last_error` has the text (for gRPC statuses: the server's message).
///
/// Blocking: returns `MERIDIAN_WOULD_DEADLOCK` on a library thread (inside a handler or a
/// completion callback); use `meridian_client_unary_async` there.
///
/// # Safety
/// `client` is a live client; `method` is NUL-terminated; `request` points to
/// `request_len` bytes; `options` is NULL or live; `response_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    response_out: *mut *mut meridian_response,
) -> meridian_status {
    boundary(|| {
        out_ptr(response_out, "response_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let response = block_on(unary(a.target, a.method, a.request, a.options))??;
        let response = Box::into_raw(Box::new(response));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(response_out, response) };
        Ok(())
    })
}

/// The completion callback of `meridian_client_unary_async`.
///
/// Called exactly once, on a library thread, with the `user` pointer given to the call.
/// On success `status` is `MERIDIAN_OK`, `response` is a response the callback now owns
/// (free it with `meridian_response_free`, at any time, on any thread) and `error` is
/// NULL. On failure `response` is NULL and `error` is the error text, borrowed until the
/// callback returns. The callback must not block for long, and blocking library functions
/// called from it fail with `MERIDIAN_WOULD_DEADLOCK`.
#[allow(non_camel_case_types)]
pub type meridian_call_callback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        status: meridian_status,
        response: *mut meridian_response,
        error: *const c_char,
    ),
>;

/// Starts a unary call and returns at once; `callback` is called exactly once with the
/// result (see `meridian_call_callback`) on a library thread, possibly before this
/// function returns. Arguments as `meridian_client_unary`; they are copied, so the request
/// buffer, the method and the options may be released as soon as this returns. `user` is
/// passed back untouched: it must stay valid, and be safe to use from another thread,
/// until the callback has run. Callable from anywhere, including handlers.
///
/// On a status other than `MERIDIAN_OK` the call did not start and the callback will not
/// be called.
///
/// # Safety
/// As `meridian_client_unary`; `callback` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_unary_async(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    callback: meridian_call_callback,
    user: *mut c_void,
) -> meridian_status {
    boundary(|| {
        let callback = callback.ok_or_else(|| Fail::null("callback"))?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let user = UserPtr(user);
        runtime()?.spawn(async move {
            let result = unary(a.target, a.method, a.request, a.options).await;
            complete(callback, user, result);
        });
        Ok(())
    })
}

/// Hands an asynchronous call's result to its callback, inside a panic boundary.
fn complete(
    callback: unsafe extern "C" fn(
        *mut c_void,
        meridian_status,
        *mut meridian_response,
        *const c_char,
    ),
    user: UserPtr,
    result: Result<meridian_response, Fail>,
) {
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match result {
        Ok(response) => {
            let response = Box::into_raw(Box::new(response));
            // SAFETY: the application gave us this callback and vouched for `user`; the
            // response is handed over and owned by the callback from here on.
            unsafe {
                callback(
                    user.0,
                    meridian_status::MERIDIAN_OK,
                    response,
                    std::ptr::null(),
                )
            };
        }
        Err(fail) => {
            set_last_error(&fail.message);
            let text = CString::new(fail.message.replace('\0', " ")).unwrap_or_default();
            // SAFETY: as above; `text` outlives the callback.
            unsafe { callback(user.0, fail.status, std::ptr::null_mut(), text.as_ptr()) };
        }
    }));
    if let Err(payload) = delivered {
        set_last_error(&panic_text(&*payload));
    }
}

/// Frees a response. NULL is harmless. Every pointer obtained from it dies with it.
///
/// # Safety
/// `response` is NULL or a response not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_free(response: *mut meridian_response) {
    boundary_void(|| {
        if !response.is_null() {
            // SAFETY: made by Box::into_raw in this module, freed once.
            drop(unsafe { Box::from_raw(response) });
        }
    })
}

/// The response body: `*data_out` points to `*len_out` bytes owned by the response, valid
/// until `meridian_response_free`. A NUL byte follows the body (not counted), so a JSON
/// response can be used as a C string.
///
/// # Safety
/// `response` is live; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_body(
    response: *const meridian_response,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(response, "response") }?;
        // SAFETY: as documented; the body lives until meridian_response_free.
        unsafe { body_out(&r.body, data_out, len_out) }
    })
}

/// Looks up trailing metadata the server sent: `*value_out` points to `*len_out` bytes
/// owned by the response (valid until `meridian_response_free`). `MERIDIAN_NOT_PRESENT`
/// if the key is absent.
///
/// # Safety
/// `response` is live; `key` is NUL-terminated; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_metadata_get(
    response: *const meridian_response,
    key: *const c_char,
    value_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (r, key) = unsafe { (borrow(response, "response")?, c_str(key, "key")?) };
        // SAFETY: as documented.
        unsafe { metadata_get(&r.metadata, key, value_out, len_out) }
    })
}

/// Shared by the response and request metadata getters.
///
/// # Safety
/// The out-pointers are NULL or writable.
pub(crate) unsafe fn metadata_get(
    md: &Metadata,
    key: &str,
    value_out: *mut *const u8,
    len_out: *mut usize,
) -> Result<(), Fail> {
    out_ptr(value_out, "value_out")?;
    out_ptr(len_out, "len_out")?;
    let v = md.get(key).ok_or_else(|| {
        Fail::new(
            meridian_status::MERIDIAN_NOT_PRESENT,
            format!("no metadata {key:?}"),
        )
    })?;
    // SAFETY: both checked non-NULL above.
    unsafe {
        write_out(value_out, v.as_ptr());
        write_out(len_out, v.len());
    }
    Ok(())
}

/// The time the server's handler took, as the server reported it (microseconds), where
/// present; `MERIDIAN_NOT_PRESENT` otherwise. With `meridian_response_total_time_us`, the
/// network and transport share is the difference.
///
/// # Safety
/// `response` is live; `us_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_server_time_us(
    response: *const meridian_response,
    us_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(response, "response") }?;
        out_ptr(us_out, "us_out")?;
        let t = r.server_time.ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_NOT_PRESENT,
                "the server reported no timing",
            )
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(us_out, t.as_micros() as u64) };
        Ok(())
    })
}

/// Where a call through a region proxy spent its time (microseconds): the network time
/// client <-> proxy, the proxy's own time, and the network time proxy <-> server, as the
/// proxy reported them. With `meridian_response_server_time_us` they add up to the last
/// attempt's total. `MERIDIAN_NOT_PRESENT` for a call that went to a server directly;
/// nothing is written on failure.
///
/// # Safety
/// `response` is live; the three out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_proxy_hops_us(
    response: *const meridian_response,
    client_proxy_us_out: *mut u64,
    proxy_us_out: *mut u64,
    proxy_server_us_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(response, "response") }?;
        out_ptr(client_proxy_us_out, "client_proxy_us_out")?;
        out_ptr(proxy_us_out, "proxy_us_out")?;
        out_ptr(proxy_server_us_out, "proxy_server_us_out")?;
        let [a, b, c] = r.hops.ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_NOT_PRESENT,
                "the call did not go through a proxy",
            )
        })?;
        // SAFETY: all three checked non-NULL above.
        unsafe {
            write_out(client_proxy_us_out, a.as_micros() as u64);
            write_out(proxy_us_out, b.as_micros() as u64);
            write_out(proxy_server_us_out, c.as_micros() as u64);
        }
        Ok(())
    })
}

/// The whole call as the client saw it, from start to response (microseconds).
///
/// # Safety
/// `response` is live; `us_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_response_total_time_us(
    response: *const meridian_response,
    us_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(response, "response") }?;
        out_ptr(us_out, "us_out")?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(us_out, r.total_time.as_micros() as u64) };
        Ok(())
    })
}

/// The messages of one server-streaming call.
enum Messages {
    Raw(Streaming<Bytes>),
    Json(Streaming<Value>),
}

/// A server-streaming call's results, read with `meridian_stream_next`.
///
/// Made by `meridian_client_server_streaming`, freed by `meridian_stream_free` (which
/// cancels the call if it has not ended). Not thread-safe: one thread at a time.
#[allow(non_camel_case_types)]
pub struct meridian_stream {
    messages: Messages,
    /// The last message returned, with a NUL byte after it.
    current: Vec<u8>,
    /// Set once the stream ended: `MERIDIAN_STREAM_END` or the error, and its text.
    ended: Option<(meridian_status, String)>,
}

/// Opens a server-streaming call: sends the one request and stores a stream of responses
/// in `*stream_out` (caller frees with `meridian_stream_free`). Arguments as
/// `meridian_client_unary`; the call's timeout covers the whole stream. Blocking until the
/// call is open (`MERIDIAN_WOULD_DEADLOCK` on library threads). Nothing is written on
/// failure.
///
/// # Safety
/// As `meridian_client_unary`; `stream_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_server_streaming(
    client: *const meridian_client,
    method: *const c_char,
    payload: u32,
    request: *const u8,
    request_len: usize,
    options: *const meridian_call_options,
    stream_out: *mut *mut meridian_stream,
) -> meridian_status {
    boundary(|| {
        out_ptr(stream_out, "stream_out")?;
        // SAFETY: as documented.
        let a = unsafe { call_args(client, method, payload, request, request_len, options) }?;
        let o = a.options;
        let messages = block_on(async move {
            Ok::<_, Status>(match (a.target, a.request) {
                (Target::Channel(ch), Request::Raw(req)) => Messages::Raw(
                    apply_options!(ch.call(a.method), o)
                        .raw()
                        .server_streaming(&req)
                        .await?,
                ),
                (Target::Channel(ch), Request::Json(v)) => Messages::Json(
                    apply_options!(ch.call(a.method), o)
                        .codec(Codec::Value)
                        .server_streaming::<Value, Value>(&v)
                        .await?,
                ),
                (Target::Region(rc), Request::Json(v)) => Messages::Json(
                    apply_options!(rc.call(a.method), o)
                        .codec(Codec::Value)
                        .server_streaming::<Value, Value>(&v)
                        .await?,
                ),
                (Target::Region(rc), Request::Raw(req)) => Messages::Raw(
                    apply_options!(rc.call(a.method), o)
                        .raw()
                        .server_streaming(&req)
                        .await?,
                ),
            })
        })??;
        let stream = Box::into_raw(Box::new(meridian_stream {
            messages,
            current: Vec::new(),
            ended: None,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(stream_out, stream) };
        Ok(())
    })
}

/// Waits for the stream's next message. `MERIDIAN_OK`: `*data_out` points to `*len_out`
/// bytes (JSON text for a JSON call, followed by a NUL not counted), owned by the stream
/// and valid until the next `meridian_stream_next` or `meridian_stream_free`.
/// `MERIDIAN_STREAM_END`: the server ended the stream successfully. Any other status: the
/// call failed (text in `meridian_last_error`). After the end or an error, every further
/// call returns the same status. Nothing is written unless `MERIDIAN_OK`. Blocking.
///
/// # Safety
/// `stream` is live and used by one thread at a time; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_next(
    stream: *mut meridian_stream,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let s = unsafe { borrow_mut(stream, "stream") }?;
        out_ptr(data_out, "data_out")?;
        out_ptr(len_out, "len_out")?;
        if let Some((status, text)) = &s.ended {
            return Err(Fail::new(*status, text.clone()));
        }
        let next = block_on(async {
            match &mut s.messages {
                Messages::Raw(m) => m.message().await.map(|o| o.map(|b| Ok(nul_terminated(&b)))),
                Messages::Json(m) => m.message().await.map(|o| o.map(|v| json::from_value(&v))),
            }
        })?;
        let fail = match next {
            Ok(Some(Ok(body))) => {
                s.current = body;
                // SAFETY: checked non-NULL above; the body lives until the next call.
                return unsafe { body_out(&s.current, data_out, len_out) };
            }
            Ok(Some(Err(fail))) => return Err(fail),
            Ok(None) => Fail::new(meridian_status::MERIDIAN_STREAM_END, "the stream ended"),
            Err(status) => Fail::from(status),
        };
        s.ended = Some((fail.status, fail.message.clone()));
        Err(fail)
    })
}

/// The server's reported time for the whole stream (microseconds), available after
/// `meridian_stream_next` returned `MERIDIAN_STREAM_END`; `MERIDIAN_NOT_PRESENT` before,
/// or if the server reported none.
///
/// # Safety
/// `stream` is live; `us_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_server_time_us(
    stream: *const meridian_stream,
    us_out: *mut u64,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let s = unsafe { borrow(stream, "stream") }?;
        out_ptr(us_out, "us_out")?;
        let t = match &s.messages {
            Messages::Raw(m) => m.server_time(),
            Messages::Json(m) => m.server_time(),
        }
        .ok_or_else(|| {
            Fail::new(
                meridian_status::MERIDIAN_NOT_PRESENT,
                "no server timing (yet)",
            )
        })?;
        // SAFETY: checked non-NULL above.
        unsafe { write_out(us_out, t.as_micros() as u64) };
        Ok(())
    })
}

/// Frees a stream, cancelling the call on the server if it has not ended. NULL is
/// harmless.
///
/// # Safety
/// `stream` is NULL or a stream not yet freed.
#[no_mangle]
pub unsafe extern "C" fn meridian_stream_free(stream: *mut meridian_stream) {
    boundary_void(|| {
        if !stream.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_server_streaming, freed once.
            let stream = unsafe { Box::from_raw(stream) };
            if let Ok(rt) = runtime() {
                let _entered = rt.enter();
                drop(stream);
            }
        }
    })
}
