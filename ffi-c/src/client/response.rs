//! Reading a response: body, trailing metadata, where the time went.

use std::ffi::c_char;

use mcore::Metadata;

use super::unary::meridian_response;
use crate::boundary::{body_out, borrow, boundary, boundary_void, c_str, out_ptr, write_out, Fail};
use crate::meridian_status;

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
