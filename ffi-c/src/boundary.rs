//! What every export shares: the status enum, the thread's last error text, the panic
//! boundary, checked pointer access, and the library's tokio runtime.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use mcore::{Code, Status};

/// The result of every fallible function of the library.
///
/// The numbers never change. `MERIDIAN_OK` is 7000; 7001 to 7016 are gRPC's status codes
/// 1 to 16 plus 7000 (a call that failed on the server, or by its deadline, returns one of
/// these); 7100 and up are errors of the C interface itself. After any code other than
/// `MERIDIAN_OK`, `meridian_last_error` gives the text of the error on the same thread.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum meridian_status {
    /// Success.
    MERIDIAN_OK = 7000,
    /// gRPC CANCELLED (1): the call was cancelled.
    MERIDIAN_CANCELLED = 7001,
    /// gRPC UNKNOWN (2).
    MERIDIAN_UNKNOWN = 7002,
    /// gRPC INVALID_ARGUMENT (3): the server rejected the request.
    MERIDIAN_INVALID_ARGUMENT = 7003,
    /// gRPC DEADLINE_EXCEEDED (4): the call's timeout passed.
    MERIDIAN_DEADLINE_EXCEEDED = 7004,
    /// gRPC NOT_FOUND (5).
    MERIDIAN_NOT_FOUND = 7005,
    /// gRPC ALREADY_EXISTS (6).
    MERIDIAN_ALREADY_EXISTS = 7006,
    /// gRPC PERMISSION_DENIED (7).
    MERIDIAN_PERMISSION_DENIED = 7007,
    /// gRPC RESOURCE_EXHAUSTED (8): for example a message over the size limit.
    MERIDIAN_RESOURCE_EXHAUSTED = 7008,
    /// gRPC FAILED_PRECONDITION (9).
    MERIDIAN_FAILED_PRECONDITION = 7009,
    /// gRPC ABORTED (10).
    MERIDIAN_ABORTED = 7010,
    /// gRPC OUT_OF_RANGE (11).
    MERIDIAN_OUT_OF_RANGE = 7011,
    /// gRPC UNIMPLEMENTED (12): no such method on the server.
    MERIDIAN_UNIMPLEMENTED = 7012,
    /// gRPC INTERNAL (13): also what a panic inside the library becomes.
    MERIDIAN_INTERNAL = 7013,
    /// gRPC UNAVAILABLE (14): the server cannot be reached (or went away).
    MERIDIAN_UNAVAILABLE = 7014,
    /// gRPC DATA_LOSS (15).
    MERIDIAN_DATA_LOSS = 7015,
    /// gRPC UNAUTHENTICATED (16).
    MERIDIAN_UNAUTHENTICATED = 7016,
    /// A required pointer argument was NULL.
    MERIDIAN_NULL_PARAMETER = 7100,
    /// An argument was invalid: a string that is not UTF-8, an address that does not
    /// parse, an unknown payload kind, a zero-length method name.
    MERIDIAN_INVALID_PARAMETER = 7101,
    /// JSON text that does not parse, or a value that JSON cannot express.
    MERIDIAN_BAD_JSON = 7102,
    /// A configuration that cannot work: no TLS trust, no endpoint, an unreadable or
    /// malformed file (region file, certificate, key).
    MERIDIAN_CONFIG_ERROR = 7103,
    /// A blocking function was called on one of the library's own threads (inside a
    /// handler or a completion callback), where waiting could deadlock. Use the
    /// asynchronous form there.
    MERIDIAN_WOULD_DEADLOCK = 7104,
    /// The handle is not in a state that allows this (registering a method on a running
    /// server, `meridian_reply_send` in a unary handler, starting a server twice).
    MERIDIAN_INVALID_STATE = 7105,
    /// The optional item asked for is absent (a metadata key, the server's timing).
    MERIDIAN_NOT_PRESENT = 7106,
    /// `meridian_stream_next`: the server ended the stream successfully; no more messages.
    MERIDIAN_STREAM_END = 7107,
    /// The operation is not available for this client or this build (e.g.
    /// `meridian_client_metrics` on a direct client of one server).
    MERIDIAN_UNSUPPORTED = 7108,
    /// The handle was made in a parent process before `fork()` and cannot be used in the
    /// child (it shares the parent's sockets and runtime). Make a new one in the child;
    /// freeing the inherited one there leaks it on purpose.
    MERIDIAN_FORKED = 7109,
}

impl meridian_status {
    /// The status for a gRPC code.
    pub(crate) fn from_code(code: Code) -> meridian_status {
        use meridian_status::*;
        match code {
            Code::Ok => MERIDIAN_OK,
            Code::Cancelled => MERIDIAN_CANCELLED,
            Code::Unknown => MERIDIAN_UNKNOWN,
            Code::InvalidArgument => MERIDIAN_INVALID_ARGUMENT,
            Code::DeadlineExceeded => MERIDIAN_DEADLINE_EXCEEDED,
            Code::NotFound => MERIDIAN_NOT_FOUND,
            Code::AlreadyExists => MERIDIAN_ALREADY_EXISTS,
            Code::PermissionDenied => MERIDIAN_PERMISSION_DENIED,
            Code::ResourceExhausted => MERIDIAN_RESOURCE_EXHAUSTED,
            Code::FailedPrecondition => MERIDIAN_FAILED_PRECONDITION,
            Code::Aborted => MERIDIAN_ABORTED,
            Code::OutOfRange => MERIDIAN_OUT_OF_RANGE,
            Code::Unimplemented => MERIDIAN_UNIMPLEMENTED,
            Code::Internal => MERIDIAN_INTERNAL,
            Code::Unavailable => MERIDIAN_UNAVAILABLE,
            Code::DataLoss => MERIDIAN_DATA_LOSS,
            Code::Unauthenticated => MERIDIAN_UNAUTHENTICATED,
        }
    }

    /// The gRPC code of a status in 7000..=7016.
    pub(crate) fn grpc_code(raw: u32) -> Option<Code> {
        (7000..=7016)
            .contains(&raw)
            .then(|| Code::from_u64(u64::from(raw - 7000)))
    }

    /// The constant's name without the `MERIDIAN_` prefix.
    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        use meridian_status::*;
        match self {
            MERIDIAN_OK => c"OK",
            MERIDIAN_CANCELLED => c"CANCELLED",
            MERIDIAN_UNKNOWN => c"UNKNOWN",
            MERIDIAN_INVALID_ARGUMENT => c"INVALID_ARGUMENT",
            MERIDIAN_DEADLINE_EXCEEDED => c"DEADLINE_EXCEEDED",
            MERIDIAN_NOT_FOUND => c"NOT_FOUND",
            MERIDIAN_ALREADY_EXISTS => c"ALREADY_EXISTS",
            MERIDIAN_PERMISSION_DENIED => c"PERMISSION_DENIED",
            MERIDIAN_RESOURCE_EXHAUSTED => c"RESOURCE_EXHAUSTED",
            MERIDIAN_FAILED_PRECONDITION => c"FAILED_PRECONDITION",
            MERIDIAN_ABORTED => c"ABORTED",
            MERIDIAN_OUT_OF_RANGE => c"OUT_OF_RANGE",
            MERIDIAN_UNIMPLEMENTED => c"UNIMPLEMENTED",
            MERIDIAN_INTERNAL => c"INTERNAL",
            MERIDIAN_UNAVAILABLE => c"UNAVAILABLE",
            MERIDIAN_DATA_LOSS => c"DATA_LOSS",
            MERIDIAN_UNAUTHENTICATED => c"UNAUTHENTICATED",
            MERIDIAN_NULL_PARAMETER => c"NULL_PARAMETER",
            MERIDIAN_INVALID_PARAMETER => c"INVALID_PARAMETER",
            MERIDIAN_BAD_JSON => c"BAD_JSON",
            MERIDIAN_CONFIG_ERROR => c"CONFIG_ERROR",
            MERIDIAN_WOULD_DEADLOCK => c"WOULD_DEADLOCK",
            MERIDIAN_INVALID_STATE => c"INVALID_STATE",
            MERIDIAN_NOT_PRESENT => c"NOT_PRESENT",
            MERIDIAN_STREAM_END => c"STREAM_END",
            MERIDIAN_UNSUPPORTED => c"UNSUPPORTED",
            MERIDIAN_FORKED => c"FORKED",
        }
    }
}

/// An error on its way to C: a status and its text.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) status: meridian_status,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn new(status: meridian_status, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Fail {
        Fail::new(
            meridian_status::MERIDIAN_NULL_PARAMETER,
            format!("{what} is NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Fail {
        Fail::new(meridian_status::MERIDIAN_INVALID_PARAMETER, message)
    }
}

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail::new(meridian_status::from_code(s.code()), s.message().to_owned())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.push_str(message);
    });
}

/// This thread's last error text.
pub(crate) fn last_error() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// The text of a caught panic.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into());
    format!("internal error (a panic inside libmeridian): {what}")
}

/// The panic boundary of a fallible export: runs `f`, turns its error or a panic into a
/// status, and records the error text for `meridian_last_error`.
pub(crate) fn boundary(f: impl FnOnce() -> Result<(), Fail>) -> meridian_status {
    let fail = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return meridian_status::MERIDIAN_OK,
        Ok(Err(fail)) => fail,
        Err(payload) => Fail::new(meridian_status::MERIDIAN_INTERNAL, panic_text(&*payload)),
    };
    set_last_error(&fail.message);
    fail.status
}

/// The panic boundary of an export that cannot fail (`*_free`): a panic is swallowed.
pub(crate) fn boundary_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// Borrows the object behind a `const` handle.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nobody mutates for `'a`.
pub(crate) unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Result<&'a T, Fail> {
    // SAFETY: the caller guarantees `p` is NULL or valid for reads for 'a.
    unsafe { p.as_ref() }.ok_or_else(|| Fail::null(what))
}

/// Borrows the object behind a mutable handle.
///
/// # Safety
/// `p` is NULL or points to a live `T` nobody else uses for `'a`.
pub(crate) unsafe fn borrow_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: the caller guarantees `p` is NULL or valid and unaliased for 'a.
    unsafe { p.as_mut() }.ok_or_else(|| Fail::null(what))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller guarantees NUL termination and lifetime.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Fail::invalid(format!("{what} is not UTF-8")))
}

/// Reads an optional string argument (NULL means absent).
///
/// # Safety
/// As [`c_str`].
pub(crate) unsafe fn c_str_opt<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { c_str(p, what) }.map(Some)
    }
}

/// Reads a buffer argument; NULL is allowed when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that live for `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes for 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The largest `meridian_*_set_max_message_bytes` accepts: 1 GiB.
pub(crate) const MAX_MESSAGE_BYTES_LIMIT: usize = 1 << 30;

/// Reads a message size limit argument: 0 means the default (`None`).
pub(crate) fn max_message_bytes(bytes: usize) -> Result<Option<usize>, Fail> {
    if bytes > MAX_MESSAGE_BYTES_LIMIT {
        return Err(Fail::invalid(format!(
            "a message size limit of {bytes} bytes is over the maximum of {MAX_MESSAGE_BYTES_LIMIT}"
        )));
    }
    Ok((bytes > 0).then_some(bytes))
}

/// Applies a message size limit to a transport configuration: the frame limit, the value
/// codec's input limit (and its decoded-memory budget, kept at eight times the input), and
/// a server's buffer budgets, which must hold at least one whole message.
pub(crate) fn apply_max_message(transport: &mut mcore::TransportConfig, bytes: usize) {
    transport.wire.max_message_size = bytes;
    transport.value.max_size = bytes;
    transport.value.max_decoded_size = transport
        .value
        .max_decoded_size
        .max(bytes.saturating_mul(8));
    let room = bytes.saturating_add(64 * 1024);
    transport.connection_buffer_budget = transport.connection_buffer_budget.max(room);
    transport.server_buffer_budget = transport.server_buffer_budget.max(room.saturating_mul(2));
}

/// Checks a metadata key (request metadata or a trailer) against gRPC's rules: not empty,
/// and only lowercase ASCII letters, digits, `-`, `_` and `.`.
pub(crate) fn metadata_key(key: &str) -> Result<(), Fail> {
    if key.is_empty() {
        return Err(Fail::invalid("the metadata key is empty"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
    {
        return Err(Fail::invalid(format!(
            "metadata key {key:?} has the character {c:?}: keys are lowercase ASCII letters, \
             digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Checks that an out-pointer is not NULL (before any work is done).
pub(crate) fn out_ptr<T>(p: *mut T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(Fail::null(what))
    } else {
        Ok(())
    }
}

/// Copies `text` and a NUL into `buf` (`cap` bytes) and its length (without the NUL)
/// into `*len_out`, as the `*_metrics` functions document: `buf` may be NULL with `cap`
/// 0 to ask for the length; a buffer too small gets nothing and `MERIDIAN_OUT_OF_RANGE`.
///
/// # Safety
/// `len_out` is writable; `buf` is NULL or writable for `cap` bytes.
pub(crate) unsafe fn copy_text(
    text: &str,
    buf: *mut std::ffi::c_char,
    cap: usize,
    len_out: *mut usize,
) -> Result<(), Fail> {
    out_ptr(len_out, "len_out")?;
    // SAFETY: checked non-NULL above; the caller guarantees it is writable.
    unsafe { write_out(len_out, text.len()) };
    if buf.is_null() {
        if cap == 0 {
            return Ok(());
        }
        return Err(Fail::null("buf"));
    }
    if cap <= text.len() {
        return Err(Fail::new(
            meridian_status::MERIDIAN_OUT_OF_RANGE,
            format!(
                "the buffer holds {cap} bytes; the text needs {} (and a NUL)",
                text.len()
            ),
        ));
    }
    // SAFETY: `buf` is writable for `cap` > text.len() bytes (the caller's promise), and
    // the source is a distinct Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// Writes through an out-pointer checked with [`out_ptr`].
///
/// # Safety
/// `p` is non-NULL and valid for writes of a `T`.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T) {
    // SAFETY: the caller checked `p` and guarantees it is writable.
    unsafe { p.write(value) }
}

/// `bytes` followed by one NUL byte that is not part of them, so a body can also be read
/// as a C string.
pub(crate) fn nul_terminated(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend_from_slice(bytes);
    v.push(0);
    v
}

/// Hands out a body kept with its trailing NUL (see [`nul_terminated`]): `*data_out`
/// points to it, `*len_out` is its length without the NUL. Nothing is written on failure.
///
/// # Safety
/// `data_out` and `len_out` are NULL or writable; `body` ends with the NUL byte and lives
/// as long as the API documents the pointer to be valid.
pub(crate) unsafe fn body_out(
    body: &[u8],
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> Result<(), Fail> {
    out_ptr(data_out, "data_out")?;
    out_ptr(len_out, "len_out")?;
    // SAFETY: both checked non-NULL above; the caller guarantees they are writable.
    unsafe {
        write_out(data_out, body.as_ptr());
        write_out(len_out, body.len().saturating_sub(1));
    }
    Ok(())
}

/// One runtime the library started, with the generation it belongs to. Slots are never
/// freed: after a `fork()` the child must not drop (or even touch) the runtime it inherited,
/// whose epoll descriptor and sockets it shares with the parent, so a replaced slot stays
/// where it is, reachable from its successor through `prev`.
struct Slot {
    generation: u64,
    handle: tokio::runtime::Handle,
    /// The runtime itself, taken out by `meridian_shutdown` to stop it.
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    /// The slot this one replaced (never dropped, see above).
    #[allow(dead_code)]
    prev: *mut Slot,
}

/// The newest runtime slot (NULL before first use).
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// The runtime generation: a slot whose generation differs is no longer the library's.
/// Bumped in a forked child (by the `pthread_atfork` child handler) and by
/// `meridian_shutdown`; never in a parent by a fork.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs in the child of `fork()`, on the forking thread (the child's only thread), before
/// `fork()` returns there. It retires the inherited runtime (an atomic increment) and
/// reseeds this thread's `rand` generator: quinn draws connection IDs and reset tokens from
/// it, and a copy of the parent's state would make the child's next connection IDs equal
/// to the parent's, so the server would route the parent's new handshakes to the child's
/// connection. Other threads of the child are new and seed themselves.
extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    // A failed reseed (no entropy) leaves the copy; nothing may unwind out of here.
    let _ = std::panic::catch_unwind(|| rand::rng().reseed());
}

/// Registers [`after_fork_in_child`] once, before the first runtime starts.
fn watch_forks() {
    static WATCH: std::sync::Once = std::sync::Once::new();
    WATCH.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic; the function lives
        // for the whole program (it is a plain function of this library, which is never
        // unloaded while running since nothing here supports dlclose).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        debug_assert_eq!(rc, 0);
    });
}

/// The runtime a handle was made with: its tokio handle and the generation and process it
/// belongs to. Every handle that holds connections, sockets or tasks keeps one, checks it
/// before use ([`Rt::check`]) and releases its contents through it ([`Rt::release`]).
#[derive(Debug, Clone)]
pub(crate) struct Rt {
    pub(crate) handle: tokio::runtime::Handle,
    generation: u64,
    pid: u32,
}

/// Why a handle's runtime is no longer usable.
enum Stale {
    /// The handle was made in a parent process before `fork()`.
    Forked,
    /// The runtime was stopped by `meridian_shutdown`.
    ShutDown,
}

impl Rt {
    fn stale(&self) -> Option<Stale> {
        if self.generation == GENERATION.load(Ordering::SeqCst) {
            None
        } else if self.pid != std::process::id() {
            Some(Stale::Forked)
        } else {
            Some(Stale::ShutDown)
        }
    }

    /// Fails when the handle's runtime is not the library's current one: made before a
    /// `fork()` (`MERIDIAN_FORKED`) or before `meridian_shutdown`
    /// (`MERIDIAN_INVALID_STATE`). `what` names the handle ("client", "stream", ...).
    pub(crate) fn check(&self, what: &str) -> Result<(), Fail> {
        match self.stale() {
            None => Ok(()),
            Some(Stale::Forked) => Err(Fail::new(
                meridian_status::MERIDIAN_FORKED,
                format!(
                    "this {what} was created before fork(); make a new one in the child \
                     (inherited handles only fail, and freeing them leaks them)"
                ),
            )),
            Some(Stale::ShutDown) => Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                format!("this {what} was created before meridian_shutdown(); make a new one"),
            )),
        }
    }

    /// Runs `f` to completion on the calling (application) thread, on this runtime;
    /// refuses on the library's own threads and on a stale runtime.
    pub(crate) fn block_on<F: Future>(&self, what: &str, f: F) -> Result<F::Output, Fail> {
        not_on_library_thread()?;
        self.check(what)?;
        Ok(self.handle.block_on(f))
    }

    /// Drops `value` (a handle's contents) the safe way for its runtime: inside the
    /// runtime when it is current (connections close on its I/O driver); inside the
    /// stopped runtime's context after `meridian_shutdown` (its tasks are gone, drops only
    /// free memory); never after a `fork()`: the value shares sockets and the epoll
    /// descriptor with the parent, and its destructors would deregister them there, so it
    /// is leaked on purpose.
    pub(crate) fn release<T>(&self, value: T) {
        match self.stale() {
            Some(Stale::Forked) => std::mem::forget(value),
            None | Some(Stale::ShutDown) => {
                let _entered = self.handle.enter();
                drop(value);
            }
        }
    }
}

/// Worker threads of the next runtime started (`meridian_init`); 0: one per CPU.
pub(crate) static WORKER_THREADS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

fn build_runtime() -> Result<tokio::runtime::Runtime, Fail> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match WORKER_THREADS.load(Ordering::SeqCst) {
        0 => {}
        n => {
            builder.worker_threads(n);
        }
    }
    builder
        .enable_all()
        .thread_name("meridian-worker")
        .build()
        .map_err(|e| {
            Fail::new(
                meridian_status::MERIDIAN_INTERNAL,
                format!("cannot start the library's runtime: {e}"),
            )
        })
}

/// Whether a runtime of the current generation is running (started and not shut down).
pub(crate) fn runtime_running() -> bool {
    let current = SLOT.load(Ordering::SeqCst);
    // SAFETY: slots are never freed once published.
    unsafe { current.as_ref() }
        .is_some_and(|slot| slot.generation == GENERATION.load(Ordering::SeqCst))
}

/// Stops the current runtime (if one runs), waiting up to `timeout` for its tasks and
/// threads: handles made on it fail from now on ([`Rt::check`]), and the next use starts
/// a new one. Must not run on a library thread.
pub(crate) fn shutdown_runtime(timeout: std::time::Duration) -> Result<(), Fail> {
    not_on_library_thread()?;
    let current = SLOT.load(Ordering::SeqCst);
    // SAFETY: slots are never freed once published.
    let Some(slot) = (unsafe { current.as_ref() }) else {
        return Ok(());
    };
    if slot.generation != GENERATION.load(Ordering::SeqCst) {
        return Ok(()); // already stopped (or inherited across a fork: never touched)
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
    let rt = slot.runtime.lock().ok().and_then(|mut r| r.take());
    if let Some(rt) = rt {
        rt.shutdown_timeout(timeout);
    }
    Ok(())
}

/// The library's runtime: one multi-threaded tokio runtime, started on first use and kept
/// until `meridian_shutdown`. In the child of a `fork()` the first use starts a fresh one
/// (the inherited one is left alone, see [`Slot`]).
pub(crate) fn runtime() -> Result<Rt, Fail> {
    watch_forks();
    loop {
        let generation = GENERATION.load(Ordering::SeqCst);
        let current = SLOT.load(Ordering::SeqCst);
        // SAFETY: slots are made by Box::into_raw below and never freed once published.
        if let Some(slot) = unsafe { current.as_ref() } {
            if slot.generation == generation {
                return Ok(Rt {
                    handle: slot.handle.clone(),
                    generation,
                    pid: std::process::id(),
                });
            }
        }
        let rt = build_runtime()?;
        let slot = Box::into_raw(Box::new(Slot {
            generation,
            handle: rt.handle().clone(),
            runtime: std::sync::Mutex::new(Some(rt)),
            prev: current,
        }));
        if SLOT
            .compare_exchange(current, slot, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another thread started one first; ours was never used by anyone.
            // SAFETY: `slot` was made just above and never published.
            let lost = unsafe { Box::from_raw(slot) };
            if let Some(rt) = lost.runtime.lock().ok().and_then(|mut r| r.take()) {
                rt.shutdown_background();
            }
        }
    }
}

/// Whether this thread belongs to the library (a runtime worker, or a blocking-pool
/// thread running a handler), where blocking could deadlock.
pub(crate) fn on_library_thread() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Refuses to go on when on one of the library's own threads.
pub(crate) fn not_on_library_thread() -> Result<(), Fail> {
    if on_library_thread() {
        return Err(Fail::new(
            meridian_status::MERIDIAN_WOULD_DEADLOCK,
            "a blocking Meridian function was called on a library thread (inside a handler \
             or a completion callback); use the asynchronous form there",
        ));
    }
    Ok(())
}

/// A `void *user` pointer carried to another thread. The header makes the application
/// responsible for the pointee being usable from the library's threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserPtr(pub(crate) *mut std::ffi::c_void);

// SAFETY: the pointer is never dereferenced by Rust; it is handed back to the application's
// callback, and the header documents that the callback runs on library threads.
unsafe impl Send for UserPtr {}
// SAFETY: as above; Rust only copies the pointer value.
unsafe impl Sync for UserPtr {}
