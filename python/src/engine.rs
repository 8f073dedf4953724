//! The process's tokio runtime, and who drives it.
//!
//! By default the runtime is a current-thread one, and the thread that drives it (polls
//! its tasks and waits on its sockets) changes hands:
//!
//! - a Python thread in a blocking call ([`wait`]) that no other call runs beside drives
//!   it for the length of the call. Its request goes out and its response comes in on
//!   that thread, asleep in `epoll_wait` in between: about one thread switch per call in
//!   the client, as in a Rust client, where handing the call to a runtime thread and back
//!   cost two and a half (`benches/python/cpu_per_call.py`);
//! - a blocking call that starts while others are in progress runs as a task, driven by
//!   whoever drives, and its thread waits for the output. Busy threads therefore do not
//!   pass the runtime around on every call;
//! - the relay thread drives it when calls are left that no caller drives, when Python
//!   starts work that nobody waits for ([`spawn`], [`kick`]), as soon as a call ends in a
//!   process that runs a server ([`Serving`]), and when no call has been in progress for
//!   [`HANDOFF_IDLE`]. It gives the runtime back as soon as a call starts alone.
//!
//! So in a process without a server, between two calls of a busy caller, the runtime may
//! go undriven for up to [`HANDOFF_IDLE`]: in that gap packets wait in the socket buffer
//! and timers fire late. That only delays acknowledgements and background work (probes,
//! keep-alives); a call in progress always has a driver.
//!
//! `MERIDIAN_WORKER_THREADS=N` selects a multi-threaded runtime with N workers instead,
//! which drive it on their own; blocking calls then run as tasks and wait on them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// How long a blocking wait stays detached from the interpreter before it checks for
/// signals (Ctrl-C). Short enough to feel immediate, long enough to cost nothing.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// How long the runtime may stay undriven after a blocking call ends before the relay
/// thread takes it over. A caller that starts its next call sooner finds the runtime free
/// and drives it itself; the relay thread looks this often while calls go on.
pub(crate) const HANDOFF_IDLE: Duration = Duration::from_millis(1);

/// The process's runtime and, for a current-thread runtime, the relay that drives it
/// while no caller does.
pub(crate) struct Engine {
    rt: tokio::runtime::Runtime,
    relay: Option<Relay>,
    /// The threads that run Python unary handlers.
    handlers: crate::handlers::HandlerQueue,
}

/// Who drives a current-thread runtime (see the module documentation).
struct Relay {
    state: Mutex<RelayState>,
    /// Wakes the relay thread: a kick, or calls left without a driver.
    wake: Condvar,
    /// Tells the relay thread to stop driving (a caller drives from now on).
    release: tokio::sync::Notify,
}

struct RelayState {
    /// Blocking calls in progress.
    callers: usize,
    /// Of those, the ones whose thread drives the runtime (0 or 1).
    drivers: usize,
    /// When the last blocking call ended.
    last_exit: Instant,
    /// The relay thread drives the runtime (or waits for it to take it).
    relay_driving: bool,
    /// Work was spawned from outside: the relay thread should drive now.
    kicked: bool,
}

impl RelayState {
    /// Whether the relay thread should drive now: no caller drives, and calls wait on
    /// the runtime, or work was spawned, or no call has been made for [`HANDOFF_IDLE`].
    fn relay_should_drive(&self) -> bool {
        self.drivers == 0
            && (self.callers > 0 || self.kicked || self.last_exit.elapsed() >= HANDOFF_IDLE)
    }
}

impl Relay {
    fn lock(&self) -> MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A blocking call starts. Alone, it drives the runtime (the relay thread, if it
    /// drives, stops); beside other calls it leaves the driving to whoever does, so busy
    /// threads do not pass the runtime around on every call. Returns whether it drives.
    fn enter(&self) -> bool {
        let mut st = self.lock();
        st.callers += 1;
        let drives = st.callers == 1;
        if drives {
            st.drivers += 1;
            if st.relay_driving {
                self.release.notify_one();
            }
        }
        drives
    }

    /// A blocking call ends. If calls that do not drive are left, or a server of this
    /// process waits for its peers, the relay thread drives from now on. Otherwise it is
    /// not woken: it looks again within [`HANDOFF_IDLE`], and a busy caller's next call
    /// usually comes first.
    fn leave(&self, drove: bool) {
        let mut st = self.lock();
        st.callers -= 1;
        if drove {
            st.drivers -= 1;
        }
        st.last_exit = Instant::now();
        if st.drivers == 0 && !st.relay_driving {
            if st.callers > 0 {
                self.wake.notify_one();
            } else if SERVING.load(Ordering::Relaxed) > 0 {
                st.kicked = true;
                self.wake.notify_one();
            }
        }
    }

    /// Work nobody waits for was spawned: unless a caller drives, the relay thread should.
    fn kick(&self) {
        let mut st = self.lock();
        if st.drivers == 0 && !st.relay_driving {
            st.kicked = true;
            self.wake.notify_one();
        }
    }

    /// The relay thread: waits until it should drive (see
    /// [`RelayState::relay_should_drive`]), then drives the runtime until a call that
    /// drives starts.
    fn run(&self, rt: &tokio::runtime::Runtime) {
        loop {
            {
                let mut st = self.lock();
                while !st.relay_should_drive() {
                    let idle = st.last_exit.elapsed();
                    let nap = if st.callers == 0 && idle < HANDOFF_IDLE {
                        HANDOFF_IDLE - idle
                    } else {
                        HANDOFF_IDLE
                    };
                    st = self
                        .wake
                        .wait_timeout(st, nap)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                st.kicked = false;
                st.relay_driving = true;
            }
            rt.block_on(self.release.notified());
            self.lock().relay_driving = false;
        }
    }
}

/// Servers running in this process (see [`Serving`]).
static SERVING: AtomicUsize = AtomicUsize::new(0);

/// Held while a server runs. Its peers' packets must not wait for the relay thread's
/// [`HANDOFF_IDLE`], so while one is held the relay drives as soon as a call ends.
pub(crate) struct Serving(());

impl Serving {
    pub(crate) fn new() -> Serving {
        SERVING.fetch_add(1, Ordering::Relaxed);
        Serving(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current process's engine (null before first use).
static ENGINE: AtomicPtr<Engine> = AtomicPtr::new(std::ptr::null_mut());
/// The process that made [`ENGINE`]; a forked child sees its parent's pid here.
static ENGINE_PID: AtomicU32 = AtomicU32::new(0);

/// The library's engine: created on first use, shared by every server and client of the
/// process and never shut down (its threads end with the process).
///
/// A child made by `fork()` has none of the parent's threads, so on first use there it
/// makes an engine of its own. The inherited one is leaked, never dropped: dropping it
/// would deregister the parent's sockets from the epoll instance both processes share.
pub(crate) fn engine() -> PyResult<&'static Engine> {
    let pid = std::process::id();
    if ENGINE_PID.load(Ordering::Acquire) == pid {
        let e = ENGINE.load(Ordering::Acquire);
        // SAFETY: a non-null ENGINE comes from `Box::leak` below and is never freed; the
        // pointer was stored (Release) before ENGINE_PID, which we read with Acquire.
        if let Some(e) = unsafe { e.as_ref() } {
            return Ok(e);
        }
    }
    static CREATING: Mutex<()> = Mutex::new(());
    let _creating = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    if ENGINE_PID.load(Ordering::Acquire) == pid {
        // SAFETY: as above; another thread made it while this one waited for the lock.
        if let Some(e) = unsafe { ENGINE.load(Ordering::Acquire).as_ref() } {
            return Ok(e);
        }
    }
    let cannot = |e: std::io::Error| {
        PyRuntimeError::new_err(format!("cannot start the Meridian runtime: {e}"))
    };
    let engine = match worker_threads()? {
        Some(n) => Engine {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("meridian-rt")
                .enable_all()
                .build()
                .map_err(cannot)?,
            relay: None,
            handlers: Default::default(),
        },
        None => Engine {
            rt: tokio::runtime::Builder::new_current_thread()
                .thread_name("meridian-rt")
                .enable_all()
                .build()
                .map_err(cannot)?,
            relay: Some(Relay {
                state: Mutex::new(RelayState {
                    callers: 0,
                    drivers: 0,
                    last_exit: Instant::now(),
                    relay_driving: false,
                    kicked: false,
                }),
                wake: Condvar::new(),
                release: tokio::sync::Notify::new(),
            }),
            handlers: Default::default(),
        },
    };
    let engine: &'static Engine = Box::leak(Box::new(engine));
    if let Some(relay) = &engine.relay {
        std::thread::Builder::new()
            .name("meridian-relay".into())
            .spawn(move || relay.run(&engine.rt))
            .map_err(cannot)?;
    }
    ENGINE.store(std::ptr::from_ref(engine).cast_mut(), Ordering::Release);
    ENGINE_PID.store(pid, Ordering::Release);
    Ok(engine)
}

/// The engine's tokio runtime. Work spawned on it from outside should go through
/// [`spawn`] (or be followed by [`kick`]) so that something drives it.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    Ok(&engine()?.rt)
}

/// The queue of this process's Python unary handlers (see `handlers.rs`).
pub(crate) fn handlers() -> PyResult<&'static crate::handlers::HandlerQueue> {
    Ok(&engine()?.handlers)
}

/// Spawns `fut` on the runtime and makes sure something drives it.
pub(crate) fn spawn<F>(fut: F) -> PyResult<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let engine = engine()?;
    let task = engine.rt.spawn(fut);
    engine.kick();
    Ok(task)
}

/// After work was started on the runtime from outside a call (a client's background
/// tasks, a server): makes sure something drives it.
pub(crate) fn kick() -> PyResult<()> {
    engine()?.kick();
    Ok(())
}

impl Engine {
    fn kick(&self) {
        if let Some(relay) = &self.relay {
            relay.kick();
        }
    }
}

/// The runtime's worker threads from `MERIDIAN_WORKER_THREADS` (1 to 256), or `None`
/// when it is not set: then the runtime is a current-thread one, driven by its callers
/// and the relay thread. Read once, when the runtime starts.
fn worker_threads() -> PyResult<Option<usize>> {
    match std::env::var("MERIDIAN_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n @ 1..=256) => Ok(Some(n)),
            _ => Err(PyValueError::new_err(format!(
                "MERIDIAN_WORKER_THREADS must be a whole number from 1 to 256, got {v:?}"
            ))),
        },
        Err(e) => Err(PyValueError::new_err(format!(
            "MERIDIAN_WORKER_THREADS is not readable: {e}"
        ))),
    }
}

/// The number of threads that run this process's runtime tasks at once: the workers of
/// `MERIDIAN_WORKER_THREADS`, else 1 (starting the runtime if needed).
#[pyfunction]
#[pyo3(name = "_runtime_workers")]
pub(crate) fn runtime_workers() -> PyResult<usize> {
    Ok(runtime()?.metrics().num_workers())
}

/// Runs `fut` to completion with the GIL released and checks for signals every
/// [`WAIT_SLICE`]. If a signal handler raises (Ctrl-C raises `KeyboardInterrupt`), `fut` is
/// dropped, which cancels a call in flight, and the exception propagates.
///
/// A call alone drives the runtime on this thread meanwhile ([`drive`]); beside other calls,
/// or with worker threads, it runs as a task and this thread waits for its output
/// ([`wait_on_task`]).
pub(crate) fn wait<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let engine = engine()?;
    let caller = Caller::enter(engine);
    if caller.drives {
        drive(py, engine, fut)
    } else {
        wait_on_task(py, engine, fut)
    }
}

/// Polls `fut` on this thread, which drives the runtime until `fut` is done.
fn drive<F, T>(py: Python<'_>, engine: &'static Engine, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut fut = Box::pin(fut);
    loop {
        let slice = py.detach(|| {
            // The timer is made inside `block_on`, where the runtime is current.
            let fut = fut.as_mut();
            // A panic in Meridian's code fails this call, as it fails a task that runs a
            // call, instead of unwinding into Python.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                engine
                    .rt
                    .block_on(async { tokio::time::timeout(WAIT_SLICE, fut).await })
            }))
        });
        let failed = match slice {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(_elapsed)) => py.check_signals().err(),
            Err(_panic) => Some(ended_without_answer()),
        };
        if let Some(e) = failed {
            // Dropped inside the runtime, as a task would be: cancelling may spawn.
            let _rt = engine.rt.enter();
            drop(fut);
            return Err(e);
        }
    }
}

/// Runs `fut` as a task, driven by others, and waits for its output.
fn wait_on_task<F, T>(py: Python<'_>, engine: &'static Engine, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, mut rx) = sync_channel(1);
    let task = engine.rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    loop {
        let (back, got) = py.detach(move || {
            let got = rx.recv_timeout(WAIT_SLICE);
            (rx, got)
        });
        rx = back;
        match got {
            Ok(out) => return Ok(out),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Err(ended_without_answer()),
        }
    }
}

fn ended_without_answer() -> PyErr {
    PyRuntimeError::new_err("the Meridian task ended without an answer")
}

/// A blocking call in progress, for the relay (see [`Relay::enter`]).
struct Caller {
    engine: &'static Engine,
    /// This call's thread drives the runtime (never with worker threads).
    drives: bool,
}

impl Caller {
    fn enter(engine: &'static Engine) -> Caller {
        let drives = engine.relay.as_ref().is_some_and(Relay::enter);
        Caller { engine, drives }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if let Some(relay) = &self.engine.relay {
            relay.leave(self.drives);
        }
    }
}
