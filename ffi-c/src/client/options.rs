//! Per-call options: timeout, metadata, idempotency, routing key.

use std::ffi::c_char;
use std::time::Duration;

use bytes::Bytes;
use mcore::{CallBuilder, CallOptions, PayloadStyle};

use crate::boundary::{borrow_mut, boundary, boundary_void, bytes, c_str, out_ptr, write_out};
use crate::meridian_status;

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
    wait_for_ready: bool,
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

/// Adds a metadata entry: `key` (NUL-terminated) and `value_len` bytes of value. Both are
/// copied. Keys follow gRPC's rules: not empty, only lowercase ASCII letters, digits, `-`,
/// `_` and `.` (`MERIDIAN_INVALID_PARAMETER` otherwise).
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
        crate::boundary::metadata_key(key)?;
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

/// Makes the call wait for a server to become reachable (within its deadline) instead of
/// failing fast. By default (`false`), once a client's connection is lost and an attempt to
/// re-establish it has failed, calls fail at once with `MERIDIAN_UNAVAILABLE` (the call did
/// not run), and a call waits at most about a second for a reconnection under way.
///
/// # Safety
/// `options` is live.
#[no_mangle]
pub unsafe extern "C" fn meridian_call_options_set_wait_for_ready(
    options: *mut meridian_call_options,
    wait_for_ready: bool,
) -> meridian_status {
    boundary(|| {
        // SAFETY: as documented.
        unsafe { borrow_mut(options, "options") }?.wait_for_ready = wait_for_ready;
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

impl meridian_call_options {
    /// The core library's options value for these settings.
    fn to_call_options(&self) -> CallOptions {
        let mut options = CallOptions::new();
        options.timeout = self.timeout;
        for (k, v) in &self.metadata {
            options.metadata.insert(k.clone(), v.clone());
        }
        options.idempotent = self.idempotent;
        options.routing_key = self.routing_key.clone();
        options.wait_for_ready = self.wait_for_ready;
        options
    }
}

/// Applies call options to a call builder of either target (one server or routed).
pub(crate) fn apply_options<T, P: PayloadStyle>(
    call: CallBuilder<T, P>,
    options: &meridian_call_options,
) -> CallBuilder<T, P> {
    call.options(options.to_call_options())
}
