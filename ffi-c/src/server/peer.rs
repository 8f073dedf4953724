//! Who called: the peer's address and, under mutual TLS, the names of its verified
//! certificate (`meridian_request_peer_*`).
//!
//! Text comes out as the `*_metrics` functions give it: copied with a NUL into a caller
//! buffer, the length (without the NUL) always stored in `*len_out`; `buf` NULL with `cap`
//! 0 asks for the length only; a buffer too small gets nothing and `MERIDIAN_OUT_OF_RANGE`.

use std::ffi::c_char;

use mcore::transport::PeerIdentity;

use super::handler::meridian_request;
use crate::boundary::{borrow, boundary, copy_text, out_ptr, write_out, Fail};
use crate::meridian_status;

/// The verified identity of the request's client, `None` without mutual TLS.
fn identity(request: &meridian_request) -> Option<&PeerIdentity> {
    request.ctx.peer_identity()
}

/// The `index`th of `items`, or `MERIDIAN_INVALID_PARAMETER` naming what is counted.
fn nth<'a, T>(items: &'a [T], index: usize, what: &str) -> Result<&'a T, Fail> {
    items.get(index).ok_or_else(|| {
        Fail::invalid(format!(
            "{what} index {index} is out of range: the client's certificate has {}",
            items.len()
        ))
    })
}

fn not_present(what: &str) -> Fail {
    Fail::new(meridian_status::MERIDIAN_NOT_PRESENT, what.to_string())
}

/// Stores in `*out` what `value` reads from the request (the count and flag getters).
///
/// # Safety
/// `request` is NULL or the handler's request; `out` is NULL or writable.
unsafe fn store<T>(
    request: *const meridian_request,
    out: *mut T,
    out_name: &str,
    value: impl FnOnce(&meridian_request) -> T,
) -> meridian_status {
    boundary(|| {
        // SAFETY: forwarded from the caller.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(out, out_name)?;
        let v = value(r);
        // SAFETY: checked non-NULL above.
        unsafe { write_out(out, v) };
        Ok(())
    })
}

/// Copies the `index`th of the names `list` gives (none without mutual TLS) into `buf`,
/// as the module convention says (the indexed name getters).
///
/// # Safety
/// `request` is NULL or the handler's request; `len_out` is NULL or writable; `buf` is
/// NULL or writable for `cap` bytes.
unsafe fn nth_name(
    request: *const meridian_request,
    index: usize,
    what: &str,
    list: fn(&PeerIdentity) -> &[String],
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: forwarded from the caller.
        let r = unsafe { borrow(request, "request") }?;
        let name = nth(identity(r).map_or(&[][..], list), index, what)?;
        // SAFETY: forwarded from the caller.
        unsafe { copy_text(name, buf, cap, len_out) }
    })
}

/// The client's address as text, "IP:port" ("[IPv6]:port" for IPv6), copied into `buf`
/// (see the module convention: `buf` NULL and `cap` 0 ask for the length; a short buffer
/// gets `MERIDIAN_OUT_OF_RANGE`). 64 bytes always suffice.
///
/// # Safety
/// `request` is the handler's request; `len_out` is writable; `buf` is NULL or writable
/// for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_address(
    request: *const meridian_request,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        // SAFETY: as documented.
        unsafe { copy_text(&r.ctx.peer().to_string(), buf, cap, len_out) }
    })
}

/// Whether the client presented a certificate the server verified: true only on a server
/// that requires client certificates (`meridian_server_require_client_certs_pem_file`).
/// Without one, the name counts below are 0 and the name getters give
/// `MERIDIAN_NOT_PRESENT`.
///
/// # Safety
/// `request` is the handler's request; `verified_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_verified(
    request: *const meridian_request,
    verified_out: *mut bool,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe {
        store(request, verified_out, "verified_out", |r| {
            identity(r).is_some()
        })
    }
}

/// The number of DNS names among the subject alternative names of the client's verified
/// certificate (0 without mutual TLS).
///
/// # Safety
/// `request` is the handler's request; `count_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_dns_name_count(
    request: *const meridian_request,
    count_out: *mut usize,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe {
        store(request, count_out, "count_out", |r| {
            identity(r).map_or(0, |p| p.dns_names().len())
        })
    }
}

/// The `index`th DNS name of the client's verified certificate (0-based, below
/// `meridian_request_peer_dns_name_count`), copied into `buf` as the module convention
/// says. `MERIDIAN_INVALID_PARAMETER` for an index out of range (always, without mutual
/// TLS).
///
/// # Safety
/// `request` is the handler's request; `len_out` is writable; `buf` is NULL or writable
/// for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_dns_name(
    request: *const meridian_request,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe {
        nth_name(
            request,
            index,
            "DNS name",
            PeerIdentity::dns_names,
            buf,
            cap,
            len_out,
        )
    }
}

/// The number of URIs (such as a SPIFFE ID) among the subject alternative names of the
/// client's verified certificate (0 without mutual TLS).
///
/// # Safety
/// `request` is the handler's request; `count_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_uri_count(
    request: *const meridian_request,
    count_out: *mut usize,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe {
        store(request, count_out, "count_out", |r| {
            identity(r).map_or(0, |p| p.uris().len())
        })
    }
}

/// The `index`th URI subject alternative name of the client's verified certificate
/// (0-based, below `meridian_request_peer_uri_count`), copied into `buf` as the module
/// convention says. `MERIDIAN_INVALID_PARAMETER` for an index out of range.
///
/// # Safety
/// `request` is the handler's request; `len_out` is writable; `buf` is NULL or writable
/// for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_uri(
    request: *const meridian_request,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe { nth_name(request, index, "URI", PeerIdentity::uris, buf, cap, len_out) }
}

/// The subject common name (CN) of the client's verified certificate, copied into `buf`
/// as the module convention says. `MERIDIAN_NOT_PRESENT` without mutual TLS or when the
/// certificate has no common name.
///
/// # Safety
/// `request` is the handler's request; `len_out` is writable; `buf` is NULL or writable
/// for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_common_name(
    request: *const meridian_request,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        let cn = identity(r)
            .and_then(PeerIdentity::common_name)
            .ok_or_else(|| not_present("the client's certificate has no common name"))?;
        // SAFETY: as documented.
        unsafe { copy_text(cn, buf, cap, len_out) }
    })
}

/// The SPIFFE ID of the client's verified certificate (its first `spiffe://` URI subject
/// alternative name), copied into `buf` as the module convention says.
/// `MERIDIAN_NOT_PRESENT` without mutual TLS or when the certificate has none.
///
/// # Safety
/// `request` is the handler's request; `len_out` is writable; `buf` is NULL or writable
/// for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_spiffe_id(
    request: *const meridian_request,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        let id = identity(r)
            .and_then(PeerIdentity::spiffe_id)
            .ok_or_else(|| not_present("the client's certificate has no SPIFFE ID"))?;
        // SAFETY: as documented.
        unsafe { copy_text(id, buf, cap, len_out) }
    })
}

/// The number of certificates in the client's verified chain, end-entity first (0
/// without mutual TLS).
///
/// # Safety
/// `request` is the handler's request; `count_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_certificate_count(
    request: *const meridian_request,
    count_out: *mut usize,
) -> meridian_status {
    // SAFETY: as documented.
    unsafe {
        store(request, count_out, "count_out", |r| {
            identity(r).map_or(0, |p| p.certificates().len())
        })
    }
}

/// The `index`th certificate of the client's verified chain (0: the client's own) as
/// DER: `*data_out` points to `*len_out` bytes, valid until the handler returns (not
/// NUL-terminated). `MERIDIAN_INVALID_PARAMETER` for an index out of range.
///
/// # Safety
/// `request` is the handler's request; the out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn meridian_request_peer_certificate(
    request: *const meridian_request,
    index: usize,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        let r = unsafe { borrow(request, "request") }?;
        out_ptr(data_out, "data_out")?;
        out_ptr(len_out, "len_out")?;
        let chain = identity(r).map_or(&[][..], |p| p.certificates());
        let der = nth(chain, index, "certificate")?;
        // SAFETY: both checked non-NULL above; the certificate lives in the call's
        // context, which the request holds until the handler returns.
        unsafe {
            write_out(data_out, der.as_ref().as_ptr());
            write_out(len_out, der.len());
        }
        Ok(())
    })
}
