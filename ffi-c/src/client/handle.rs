//! The client handle: one server (a channel) or routed (a region client).

use std::ffi::c_char;
use std::time::Duration;

use mcore::region::{RegionClient, RegionMap, ServerEndpoint, StaticDiscovery};
use mcore::{Channel, ClientTls, Identity, TransportConfig};

use super::config::{meridian_client_config, Trust};
use crate::boundary::{
    borrow, boundary, boundary_void, c_str, out_ptr, runtime, write_out, Fail, Rt,
};
use crate::meridian_status;

/// Where a client's calls go.
#[derive(Debug, Clone)]
pub(super) enum Target {
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
    pub(super) target: Target,
    /// The runtime its connections live on (checked before every use: fork, shutdown).
    pub(super) rt: Rt,
    /// The TLS settings the client was made with (shared with its channels), and the
    /// files `meridian_client_reload_tls` reads again: roots, certificate and key.
    pub(super) tls: ClientTls,
    pub(super) roots_file: Option<std::path::PathBuf>,
    pub(super) identity_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
        let tls = match &config.identity_files {
            Some((cert, key)) => {
                tls.with_identity(Identity::from_pem_files(cert, key).map_err(config_err)?)
            }
            None => tls,
        };
        let mut transport = TransportConfig::default();
        if let Some(t) = config.connect_timeout {
            transport.handshake_timeout = t;
        }
        if let Some(bytes) = config.max_message_bytes {
            crate::boundary::apply_max_message(&mut transport, bytes);
        }
        let rt = runtime()?;
        let target = if config.region_file.is_none() && config.endpoints.len() == 1 {
            let (_, addr, name) = config.endpoints[0].clone();
            let channel = rt
                .block_on(
                    "client",
                    Channel::builder(addr, tls.clone())
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
            if let Some(preferred) = &config.preferred_region {
                if !map.regions.iter().any(|r| &r.name == preferred) {
                    let known: Vec<&str> = map.regions.iter().map(|r| r.name.as_str()).collect();
                    return Err(Fail::new(
                        meridian_status::MERIDIAN_CONFIG_ERROR,
                        format!(
                            "the preferred region {preferred:?} is not one of the regions ({})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            let mut builder =
                RegionClient::builder(StaticDiscovery::new(map), tls.clone()).transport(transport);
            if let Some(r) = &config.preferred_region {
                builder = builder.home_region(r.clone());
            }
            if let Some(t) = config.connect_timeout {
                builder = builder.connect_timeout(t);
            }
            if let Some(limit) = config.silence_limit {
                builder = builder.silence_limit(limit);
            }
            let _entered = rt.handle.enter();
            Target::Region(builder.build().map_err(config_err)?)
        };
        let roots_file = match &config.trust {
            Some(Trust::RootsPemFile(p)) => Some(std::path::PathBuf::from(p)),
            _ => None,
        };
        let identity_files = config
            .identity_files
            .as_ref()
            .map(|(c, k)| (std::path::PathBuf::from(c), std::path::PathBuf::from(k)));
        let client = Box::into_raw(Box::new(meridian_client {
            target,
            rt,
            tls,
            roots_file,
            identity_files,
        }));
        // SAFETY: checked non-NULL above.
        unsafe { write_out(client_out, client) };
        Ok(())
    })
}

/// Reads the client's TLS files again: the roots PEM file of
/// `meridian_client_config_set_roots_pem_file` and the certificate and key of
/// `meridian_client_config_set_identity_pem_files`. Handshakes from now on use them;
/// open connections stay and keep calling. `MERIDIAN_CONFIG_ERROR` for files that cannot
/// be used, keeping what was in use (a pinned certificate has no file and stays).
///
/// # Safety
/// `client` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_reload_tls(
    client: *const meridian_client,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let client = unsafe { borrow(client, "client") }?;
        client.rt.check("client")?;
        let config_err =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        if let Some(path) = &client.roots_file {
            client.tls.reload_roots_pem_file(path).map_err(config_err)?;
        }
        if let Some((cert, key)) = &client.identity_files {
            client
                .tls
                .reload_identity_pem_files(cert, key)
                .map_err(config_err)?;
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` until the client can take calls to `method` (a region client:
/// some region's servers connected and serving it). A single-endpoint client is ready at
/// once. Returns `MERIDIAN_UNAVAILABLE` on timeout; its error text ends with the last failed
/// connection attempt's cause when there was one. Blocking.
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
        client.rt.check("client")?;
        let Target::Region(rc) = &client.target else {
            return Ok(());
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        if client.rt.block_on("client", rc.ready(method, timeout))? {
            Ok(())
        } else {
            // Why, when a dial failed: an untrusted certificate, a handshake timeout, ...
            let why = rc
                .last_connect_error()
                .map(|e| format!(" (last connect error from {e})"))
                .unwrap_or_default();
            Err(Fail::new(
                meridian_status::MERIDIAN_UNAVAILABLE,
                format!("no region serves {method:?} after {timeout_ms} ms{why}"),
            ))
        }
    })
}

/// Frees a client. NULL is harmless. Calls in flight on other threads must have returned.
/// In the child of a `fork()`, a client made before the fork is not closed but leaked on
/// purpose (its sockets are the parent's).
///
/// # Safety
/// `client` is NULL or a client not yet freed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_free(client: *mut meridian_client) {
    boundary_void(|| {
        if !client.is_null() {
            // SAFETY: made by Box::into_raw in meridian_client_new, freed once.
            let client = unsafe { Box::from_raw(client) };
            // Connections close on the runtime's I/O driver (never after a fork).
            client.rt.clone().release(client);
        }
    })
}

/// A region client's metrics in the Prometheus text format (RTT, health, attempts,
/// errors and ejections per region and server; calls, retries, hedges, region switches),
/// copied as `meridian_server_metrics` does. `MERIDIAN_UNSUPPORTED` for a direct client
/// of one server (one endpoint and no region file).
///
/// # Safety
/// `client` is live; `len_out` is writable; `buf` is NULL or writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_metrics(
    client: *const meridian_client,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let client = unsafe { borrow(client, "client") }?;
        client.rt.check("client")?;
        let Target::Region(region) = &client.target else {
            return Err(Fail::new(
                meridian_status::MERIDIAN_UNSUPPORTED,
                "metrics are kept by region clients; this client talks to one server",
            ));
        };
        let metrics = mcore::telemetry::Metrics::new();
        metrics.add(region.metrics_source());
        // SAFETY: as documented.
        unsafe { crate::boundary::copy_text(&metrics.render(), buf, cap, len_out) }
    })
}
