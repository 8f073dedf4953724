//! libmeridian: the C ABI of Meridian, for C and C++ clients and servers.
//!
//! The header `include/meridian.h` is generated from this crate by cbindgen and committed;
//! `tests/header.rs` fails when it drifts (`MERIDIAN_BLESS=1 cargo test -p meridian-ffi
//! --test header` rewrites it).
//!
//! The discipline follows rustls-ffi: opaque handles made by `meridian_*_new` and released
//! by exactly one `meridian_*_free` (NULL is harmless); every fallible function returns a
//! [`meridian_status`]; outputs come last, every buffer comes with its length, and nothing
//! is written on failure; the text of the last error is copied into a caller buffer by
//! [`meridian_last_error`]; a panic never crosses the boundary.
//!
//! The library owns one multi-threaded tokio runtime, created on first use. Handlers and
//! completion callbacks run on its threads; blocking functions called there fail with
//! `MERIDIAN_WOULD_DEADLOCK` instead of hanging.

mod boundary;
mod client;
mod json;
mod lifecycle;
mod server;

use std::ffi::c_char;
use std::path::Path;

pub use boundary::meridian_status;
pub use client::*;
pub use lifecycle::*;
pub use server::*;

use boundary::{boundary, c_str, write_out, Fail};

/// Payload kind: raw bytes, passed through untouched (bring your own serialization).
pub const MERIDIAN_PAYLOAD_RAW: u32 = 0;
/// Payload kind: JSON text, converted to and from Meridian's `Value` encoding, so that C
/// can call Rust and Python handlers (and serve their clients). JSON object keys are
/// strings. Integers must fit in a signed 64-bit integer (-2^63 .. 2^63-1); a wider
/// integer literal is `MERIDIAN_BAD_JSON`, never rounded to a float. Arrays and objects
/// nest at most 64 deep (a top-level array is depth 1), the depth Meridian receivers
/// accept: deeper text is `MERIDIAN_BAD_JSON` before anything is sent. A JSON handler
/// that sets no body answers `null`. Sizes: see `meridian_client_config_set_max_message_bytes`
/// (4 MiB by default, applied to the encoded value).
pub const MERIDIAN_PAYLOAD_JSON: u32 = 1;

/// The major version of the header (`0` while the interface may still change between minor
/// versions). The library's own is `meridian_version_number() >> 16`.
pub const MERIDIAN_VERSION_MAJOR: u32 = 0;
/// The minor version of the header. While the major version is 0, a new minor version may
/// change the interface, so the shared library's SONAME is `libmeridian.so.0.MINOR`.
pub const MERIDIAN_VERSION_MINOR: u32 = 1;
/// The patch version of the header.
pub const MERIDIAN_VERSION_PATCH: u32 = 0;
/// The header's version as one number, `(MAJOR << 16) | (MINOR << 8) | PATCH`, to compare
/// with `meridian_version_number()` (the library actually loaded) at run time.
pub const MERIDIAN_VERSION_NUMBER: u32 =
    (MERIDIAN_VERSION_MAJOR << 16) | (MERIDIAN_VERSION_MINOR << 8) | MERIDIAN_VERSION_PATCH;

/// The library's version, a static NUL-terminated string such as "meridian 0.1.0" (never
/// freed).
#[no_mangle]
pub extern "C" fn meridian_version() -> *const c_char {
    concat!("meridian ", env!("CARGO_PKG_VERSION"), "\0")
        .as_ptr()
        .cast()
}

/// The version of the library actually loaded, as `MERIDIAN_VERSION_NUMBER` encodes it:
/// `(major << 16) | (minor << 8) | patch`. A program built against one header and run with
/// another library can compare the two (while the major version is 0, the major and minor
/// parts must both match).
#[no_mangle]
pub extern "C" fn meridian_version_number() -> u32 {
    MERIDIAN_VERSION_NUMBER
}

/// The name of a status without its `MERIDIAN_` prefix ("OK", "DEADLINE_EXCEEDED",
/// "BAD_JSON", ...), or "UNRECOGNIZED" for a number that is not a status. The string is
/// static: never freed, valid forever. Thread-safe.
#[no_mangle]
pub extern "C" fn meridian_status_name(status: u32) -> *const c_char {
    match status_from_u32(status) {
        Some(s) => s.name().as_ptr(),
        None => c"UNRECOGNIZED".as_ptr(),
    }
}

/// The gRPC code (0..16) of a status in 7000..7016, or -1 for the library's own codes.
#[no_mangle]
pub extern "C" fn meridian_status_grpc_code(status: u32) -> i32 {
    match boundary::meridian_status::grpc_code(status) {
        Some(code) => code as i32,
        None => -1,
    }
}

fn status_from_u32(raw: u32) -> Option<meridian_status> {
    use meridian_status::*;
    const ALL: [meridian_status; 27] = [
        MERIDIAN_OK,
        MERIDIAN_CANCELLED,
        MERIDIAN_UNKNOWN,
        MERIDIAN_INVALID_ARGUMENT,
        MERIDIAN_DEADLINE_EXCEEDED,
        MERIDIAN_NOT_FOUND,
        MERIDIAN_ALREADY_EXISTS,
        MERIDIAN_PERMISSION_DENIED,
        MERIDIAN_RESOURCE_EXHAUSTED,
        MERIDIAN_FAILED_PRECONDITION,
        MERIDIAN_ABORTED,
        MERIDIAN_OUT_OF_RANGE,
        MERIDIAN_UNIMPLEMENTED,
        MERIDIAN_INTERNAL,
        MERIDIAN_UNAVAILABLE,
        MERIDIAN_DATA_LOSS,
        MERIDIAN_UNAUTHENTICATED,
        MERIDIAN_NULL_PARAMETER,
        MERIDIAN_INVALID_PARAMETER,
        MERIDIAN_BAD_JSON,
        MERIDIAN_CONFIG_ERROR,
        MERIDIAN_WOULD_DEADLOCK,
        MERIDIAN_INVALID_STATE,
        MERIDIAN_NOT_PRESENT,
        MERIDIAN_STREAM_END,
        MERIDIAN_UNSUPPORTED,
        MERIDIAN_FORKED,
    ];
    ALL.into_iter().find(|s| *s as u32 == raw)
}

/// Copies the text of this thread's last error into `buf` (`len` bytes), always
/// NUL-terminated and truncated to fit, and stores the number of bytes written (without
/// the NUL) in `*out_n`. A server's error message reaches the caller cut to at most
/// 8192 bytes (8 KiB), so a buffer of 8193 bytes always holds it. Every function that returns something other than `MERIDIAN_OK`
/// sets the text first; a success leaves it as it was. Thread-safe (the text is per
/// thread).
///
/// Returns `MERIDIAN_NULL_PARAMETER` if `buf` or `out_n` is NULL or `len` is 0.
///
/// # Safety
/// `buf` points to `len` writable bytes; `out_n` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn meridian_last_error(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> meridian_status {
    // Not through `boundary`: a failure here must not overwrite the text being asked for.
    let r = std::panic::catch_unwind(|| {
        if buf.is_null() || out_n.is_null() || len == 0 {
            return meridian_status::MERIDIAN_NULL_PARAMETER;
        }
        let text = boundary::last_error();
        let n = text.len().min(len - 1);
        // SAFETY: `buf` has `len` writable bytes and `n < len`; the source is our String.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
            write_out(out_n, n);
        }
        meridian_status::MERIDIAN_OK
    });
    r.unwrap_or(meridian_status::MERIDIAN_INTERNAL)
}

/// For development and tests only: makes a throw-away certificate authority and writes,
/// into the existing directory `dir`, `ca.pem` (the CA certificate clients trust),
/// `server.pem` (a certificate chain for the name `localhost`) and `server.key` (its
/// private key, unencrypted). Never use these in production: nothing protects the key.
///
/// # Safety
/// `dir` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn meridian_dev_certificates_write(dir: *const c_char) -> meridian_status {
    boundary(|| {
        // SAFETY: the caller passes a NUL-terminated string.
        let dir = Path::new(unsafe { c_str(dir, "dir") }?);
        let config =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        let ca = mcore::DevCa::new().map_err(config)?;
        let (chain, key) = identity_pem(&ca.issue_server(&["localhost"]).map_err(config)?);
        write_files(
            dir,
            [
                ("ca.pem", ca.certificate_pem()),
                ("server.pem", chain),
                ("server.key", key),
            ],
        )
    })
}

/// The PEM texts of an identity: its certificate chain, then its private key.
fn identity_pem(id: &mcore::Identity) -> (String, String) {
    let chain = id
        .chain
        .iter()
        .map(|c| mcore::transport::pem_encode("CERTIFICATE", c))
        .collect();
    let key = mcore::transport::pem_encode("PRIVATE KEY", id.key.secret_der());
    (chain, key)
}

/// For development and tests only: as `meridian_dev_certificates_write`, plus a client
/// certificate for mutual TLS issued by the same throw-away CA: writes `ca.pem`,
/// `server.pem` and `server.key` (for `localhost`), and `client.pem` and `client.key`,
/// a certificate whose common name and DNS name are `client_name` and, unless
/// `client_uri` is NULL, whose URI name is `client_uri` (a SPIFFE ID such as
/// "spiffe://example.test/web"). Every call makes a new CA. `MERIDIAN_CONFIG_ERROR` if a
/// name is unusable or a file cannot be written. Never use these in production.
///
/// # Safety
/// `dir` and `client_name` are NUL-terminated strings; `client_uri` is NULL or one.
#[no_mangle]
pub unsafe extern "C" fn meridian_dev_mtls_certificates_write(
    dir: *const c_char,
    client_name: *const c_char,
    client_uri: *const c_char,
) -> meridian_status {
    boundary(|| {
        // SAFETY: the caller passes NUL-terminated strings (client_uri may be NULL).
        let (dir, name, uri) = unsafe {
            (
                Path::new(c_str(dir, "dir")?),
                c_str(client_name, "client_name")?,
                boundary::c_str_opt(client_uri, "client_uri")?,
            )
        };
        let config =
            |e: mcore::Error| Fail::new(meridian_status::MERIDIAN_CONFIG_ERROR, e.to_string());
        let ca = mcore::DevCa::new().map_err(config)?;
        let (server_chain, server_key) =
            identity_pem(&ca.issue_server(&["localhost"]).map_err(config)?);
        let client = match uri {
            Some(uri) => ca.issue_client_with_uri(name, uri),
            None => ca.issue_client(name),
        }
        .map_err(config)?;
        let (client_chain, client_key) = identity_pem(&client);
        write_files(
            dir,
            [
                ("ca.pem", ca.certificate_pem()),
                ("server.pem", server_chain),
                ("server.key", server_key),
                ("client.pem", client_chain),
                ("client.key", client_key),
            ],
        )
    })
}

/// Writes `(file name, text)` pairs into `dir`; `MERIDIAN_CONFIG_ERROR` naming the file
/// that could not be written.
fn write_files<const N: usize>(dir: &Path, files: [(&str, String); N]) -> Result<(), Fail> {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| {
            Fail::new(
                meridian_status::MERIDIAN_CONFIG_ERROR,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boundary::out_ptr;

    #[test]
    fn status_numbers_are_stable() {
        assert_eq!(meridian_status::MERIDIAN_OK as u32, 7000);
        assert_eq!(meridian_status::MERIDIAN_UNAUTHENTICATED as u32, 7016);
        assert_eq!(meridian_status::MERIDIAN_NULL_PARAMETER as u32, 7100);
        assert_eq!(meridian_status_grpc_code(7004), 4);
        assert_eq!(meridian_status_grpc_code(7100), -1);
        assert!(out_ptr::<u8>(std::ptr::null_mut(), "x").is_err());
        for raw in 7000..7200 {
            if let Some(s) = status_from_u32(raw) {
                // SAFETY: meridian_status_name returns a static NUL-terminated string.
                let name = unsafe { std::ffi::CStr::from_ptr(meridian_status_name(raw)) };
                assert_eq!(name, s.name());
            }
        }
    }
}
