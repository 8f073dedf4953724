//! Starting and stopping the library's runtime on purpose, and where its log goes.

use std::ffi::{c_char, c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::boundary::{boundary, runtime_running, shutdown_runtime, Fail, UserPtr, WORKER_THREADS};
use crate::meridian_status;

/// Log level: errors only.
pub const MERIDIAN_LOG_ERROR: u32 = 1;
/// Log level: warnings and errors.
pub const MERIDIAN_LOG_WARN: u32 = 2;
/// Log level: information, warnings and errors.
pub const MERIDIAN_LOG_INFO: u32 = 3;
/// Log level: debugging detail and above.
pub const MERIDIAN_LOG_DEBUG: u32 = 4;
/// Log level: everything (very verbose: every QUIC packet).
pub const MERIDIAN_LOG_TRACE: u32 = 5;

/// A log callback: `level` is `MERIDIAN_LOG_ERROR` .. `MERIDIAN_LOG_TRACE`, `target` the
/// module that logged ("meridian::client::call", "quinn_proto::connection", ...),
/// `message` the event's text with its fields ("sending the call again method=add"); both
/// strings are borrowed for the call only. Called on whichever thread logged, often a
/// library thread, possibly several at once: it must be thread-safe, quick, and must not
/// call blocking library functions (events it causes itself are dropped, not recursed).
#[allow(non_camel_case_types)]
pub type meridian_log_callback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        level: u32,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// Options of `meridian_init`. Zero-initialise it, set `struct_size` to
/// `sizeof(meridian_init_options)` (so later versions of the library can add fields
/// without breaking callers built against this one), then set what you need.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct meridian_init_options {
    /// `sizeof(meridian_init_options)`; smaller values (an older header) are accepted,
    /// fields past it count as zero.
    pub struct_size: u32,
    /// Worker threads of the runtime (they drive the network and run completion
    /// callbacks; handlers run on a separate pool). 0: one per CPU. At most 1024.
    pub worker_threads: u32,
    /// Where the library's log goes; NULL: nowhere (the default).
    pub log: meridian_log_callback,
    /// Passed to `log` untouched.
    pub log_user: *mut c_void,
    /// The most verbose level passed to `log` (`MERIDIAN_LOG_ERROR` .. `MERIDIAN_LOG_TRACE`;
    /// 0 means `MERIDIAN_LOG_INFO`).
    pub log_max_level: u32,
}

/// Where log events go: the application's callback, once set.
struct LogSink {
    callback: unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_char),
    user: UserPtr,
}

static LOG_SINK: RwLock<Option<LogSink>> = RwLock::new(None);
/// The most verbose level delivered (0: none).
static LOG_LEVEL: AtomicU32 = AtomicU32::new(0);

fn level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => MERIDIAN_LOG_ERROR,
        Level::WARN => MERIDIAN_LOG_WARN,
        Level::INFO => MERIDIAN_LOG_INFO,
        Level::DEBUG => MERIDIAN_LOG_DEBUG,
        Level::TRACE => MERIDIAN_LOG_TRACE,
    }
}

thread_local! {
    /// Set while this thread is inside the log callback: events it causes are dropped.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A `tracing` subscriber that hands each enabled event to the callback as text. Spans
/// are not tracked (an event's own fields are its message).
struct CallbackSubscriber;

/// Writes an event's fields as "message key=value ...".
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl Subscriber for CallbackSubscriber {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // The level may change (meridian_init after meridian_shutdown): ask every time.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= LOG_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if IN_CALLBACK.with(|c| c.get()) {
            return;
        }
        let Ok(sink) = LOG_SINK.read() else { return };
        let Some(sink) = sink.as_ref() else { return };
        let mut text = Text(String::new());
        event.record(&mut text);
        let meta = event.metadata();
        let clean = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let (target, message) = (clean(meta.target()), clean(&text.0));
        let level = level_number(meta.level());
        IN_CALLBACK.with(|c| c.set(true));
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the application registered this callback and vouched for its user
            // pointer; both strings outlive the call.
            unsafe { (sink.callback)(sink.user.0, level, target.as_ptr(), message.as_ptr()) }
        }));
        IN_CALLBACK.with(|c| c.set(false));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the callback subscriber as the process's global `tracing` subscriber, once.
fn install_subscriber() -> Result<(), Fail> {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *INSTALLED
        .get_or_init(|| tracing::subscriber::set_global_default(CallbackSubscriber).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Fail::new(
            meridian_status::MERIDIAN_CONFIG_ERROR,
            "another tracing subscriber is already the process's global one; the log \
             callback cannot be installed",
        ))
    }
}

/// Configures the library before its runtime starts: worker threads and a log callback.
/// Optional: without it the first use starts the runtime with the defaults (one worker
/// per CPU, no log). `options` may be NULL (the defaults); it is only read.
///
/// Returns `MERIDIAN_INVALID_STATE` once the runtime runs (after any client, server or
/// call was made and before `meridian_shutdown`): call it first, or after a shutdown,
/// which lets the next runtime start with new settings. `MERIDIAN_INVALID_PARAMETER` for
/// a `struct_size` under 8 or a level or thread count out of range; `MERIDIAN_CONFIG_ERROR`
/// if the log cannot be routed (another Rust library in the process already set the
/// global `tracing` subscriber). Call it from one thread, not concurrently with other
/// library functions; not from a handler or callback.
///
/// # Safety
/// `options` is NULL or points to `options->struct_size` readable bytes of a
/// `meridian_init_options`.
#[no_mangle]
pub unsafe extern "C" fn meridian_init(options: *const meridian_init_options) -> meridian_status {
    boundary(|| {
        crate::boundary::not_on_library_thread()?;
        if runtime_running() {
            return Err(Fail::new(
                meridian_status::MERIDIAN_INVALID_STATE,
                "the library's runtime already runs: call meridian_init before the first \
                 client, server or call (or after meridian_shutdown)",
            ));
        }
        let (threads, log, user, level) = if options.is_null() {
            (0, None, std::ptr::null_mut(), 0)
        } else {
            // Fields are read one by one through the raw pointer, never through a
            // reference to the whole struct: a caller built against an older, shorter
            // struct only vouches for its first `struct_size` bytes.
            // SAFETY: `options` is non-NULL and, as documented, readable for at least the
            // `struct_size` field (the first 4 bytes).
            let size = unsafe { std::ptr::addr_of!((*options).struct_size).read_unaligned() };
            if size < 8 {
                return Err(Fail::invalid(
                    "struct_size is too small: set it to sizeof(meridian_init_options)",
                ));
            }
            // SAFETY: `struct_size` >= 8 vouches for the first two u32 fields.
            let threads = unsafe { std::ptr::addr_of!((*options).worker_threads).read_unaligned() };
            if size as usize >= std::mem::size_of::<meridian_init_options>() {
                // SAFETY: `struct_size` covers the whole struct.
                let o = unsafe { &*options };
                (threads, o.log, o.log_user, o.log_max_level)
            } else {
                (threads, None, std::ptr::null_mut(), 0)
            }
        };
        if threads > 1024 {
            return Err(Fail::invalid(format!(
                "worker_threads {threads} is over the maximum of 1024"
            )));
        }
        if level > MERIDIAN_LOG_TRACE {
            return Err(Fail::invalid(format!(
                "log_max_level {level} is not a level (1..5, or 0 for INFO)"
            )));
        }
        match log {
            Some(callback) => {
                install_subscriber()?;
                let mut sink = LOG_SINK.write().map_err(|_| {
                    Fail::new(meridian_status::MERIDIAN_INTERNAL, "log state poisoned")
                })?;
                *sink = Some(LogSink {
                    callback,
                    user: UserPtr(user),
                });
                let level = if level == 0 { MERIDIAN_LOG_INFO } else { level };
                LOG_LEVEL.store(level, Ordering::SeqCst);
                tracing::callsite::rebuild_interest_cache();
            }
            None => {
                LOG_LEVEL.store(0, Ordering::SeqCst);
                if let Ok(mut sink) = LOG_SINK.write() {
                    *sink = None;
                }
            }
        }
        WORKER_THREADS.store(threads as usize, Ordering::SeqCst);
        Ok(())
    })
}

/// Stops the library's runtime: its tasks end (connections close abruptly, calls in
/// flight fail, asynchronous calls that have not completed never call back), waiting at
/// most `timeout_ms` for its threads (a handler still running in C is left to finish on
/// its own). Afterwards every client, stream, call and running server made before fails
/// with `MERIDIAN_INVALID_STATE` ("created before meridian_shutdown()"); free them as
/// usual (no memory is lost). The log callback stays set until the next `meridian_init`.
/// The next use (or `meridian_init`) starts a new runtime. Harmless when no runtime runs.
/// Blocking (not from a handler or callback: `MERIDIAN_WOULD_DEADLOCK`). Stop servers
/// first (`meridian_server_stop`) for a graceful end.
#[no_mangle]
pub extern "C" fn meridian_shutdown(timeout_ms: u32) -> meridian_status {
    boundary(|| shutdown_runtime(Duration::from_millis(u64::from(timeout_ms))))
}
