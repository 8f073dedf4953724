//! Client configuration: endpoints or a region file, trust, preferred region, timeouts.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::boundary::{
    borrow_mut, boundary, boundary_void, bytes, c_str, c_str_opt, out_ptr, write_out, Fail,
};
use crate::meridian_status;

/// How a client trusts servers.
#[derive(Debug, Clone)]
pub(super) enum Trust {
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
    pub(super) endpoints: Vec<(Option<String>, SocketAddr, String)>,
    pub(super) region_file: Option<PathBuf>,
    pub(super) trust: Option<Trust>,
    pub(super) preferred_region: Option<String>,
    pub(super) connect_timeout: Option<Duration>,
    /// How long a region client's server may stay silent before it is ejected.
    pub(super) silence_limit: Option<Duration>,
    /// The client certificate chain and key (PEM files) for mutual TLS.
    pub(super) identity_files: Option<(PathBuf, PathBuf)>,
    /// The largest message sent or received, in bytes (`None`: the default, 4 MiB).
    pub(super) max_message_bytes: Option<usize>,
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

/// Presents the certificate chain in the PEM file `cert_path` (end-entity certificate
/// first) with the private key in the PEM file `key_path` to servers that require client
/// certificates (mutual TLS). The paths are copied; the files are read by
/// `meridian_client_new`, which returns `MERIDIAN_CONFIG_ERROR` if they cannot be read or
/// hold no certificate or key. Replaces a certificate set before. A server that requires
/// client certificates refuses a client without one during the handshake: its calls fail
/// with `MERIDIAN_UNAVAILABLE`.
///
/// # Safety
/// `config` is a live configuration; `cert_path` and `key_path` are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_identity_pem_files(
    config: *mut meridian_client_config,
    cert_path: *const c_char,
    key_path: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let (config, cert, key) = unsafe {
            (
                borrow_mut(config, "config")?,
                c_str(cert_path, "cert_path")?,
                c_str(key_path, "key_path")?,
            )
        };
        config.identity_files = Some((PathBuf::from(cert), PathBuf::from(key)));
        Ok(())
    })
}

/// Trusts exactly one server certificate (pinning), given as `cert_len` bytes of DER or
/// of PEM text (the first certificate is used). The bytes are copied. The server's
/// signature is still verified; names and expiry are not. Replaces any trust set before.
///
/// Returns `MERIDIAN_CONFIG_ERROR` when the bytes hold no certificate that parses as
/// X.509 (checked here, not at `meridian_client_new`); the trust set before is kept.
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
        if let Err(e) = webpki::EndEntityCert::try_from(&der) {
            return Err(Fail::new(
                meridian_status::MERIDIAN_CONFIG_ERROR,
                format!("the pinned certificate does not parse as X.509: {e:?}"),
            ));
        }
        config.trust = Some(Trust::Pinned(der));
        Ok(())
    })
}

/// Prefers `region` whenever it is healthy, whatever the measured RTTs say (region
/// clients only). The string is copied. `meridian_client_new` returns
/// `MERIDIAN_CONFIG_ERROR` if no endpoint or region-file entry belongs to that region.
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

/// Sets the largest message this client sends or accepts, in bytes: requests and
/// responses alike (raw bodies, or the encoded form of JSON values). 0 restores the
/// default, 4194304 (4 MiB). A larger request fails locally, a larger response with
/// `MERIDIAN_RESOURCE_EXHAUSTED`; the server has a limit of its own
/// (`meridian_server_set_max_message_bytes`), so raise both. At most 1 GiB
/// (`MERIDIAN_INVALID_PARAMETER` above).
///
/// # Safety
/// `config` is a live configuration.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_max_message_bytes(
    config: *mut meridian_client_config,
    bytes: usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let config = unsafe { borrow_mut(config, "config") }?;
        config.max_message_bytes = crate::boundary::max_message_bytes(bytes)?;
        Ok(())
    })
}

/// Gives up a connection attempt (QUIC and TLS handshake) after `timeout_ms` (0: the
/// default: 10 s for a single-endpoint client, 3 s for a region client, which has other
/// servers to try). Applies to the first connection and to reconnections.
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

/// A region client ejects a server that sends nothing for `limit_ms` while it is pinged
/// (0: the default, 1 s). This bounds how long an outage goes unnoticed; raise it where a
/// live server may pause longer than that (a loaded host, a debugger, valgrind). A
/// single-endpoint client has no other server to move to and ignores it.
///
/// # Safety
/// `config` is a live configuration.
#[no_mangle]
pub unsafe extern "C" fn meridian_client_config_set_silence_limit_ms(
    config: *mut meridian_client_config,
    limit_ms: u32,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let config = unsafe { borrow_mut(config, "config") }?;
        config.silence_limit = (limit_ms > 0).then(|| Duration::from_millis(u64::from(limit_ms)));
        Ok(())
    })
}
