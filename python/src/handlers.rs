//! The threads that run Python unary handlers.
//!
//! Python code runs on one thread at a time (the GIL). Waking a fresh thread for every
//! call that arrives while another handler runs therefore buys no parallelism: the woken
//! threads queue for the GIL, and each hand-over of it is one more thread switch. So a
//! call that arrives while a handler thread is busy waits in a queue, and that thread
//! takes the next call from it when its handler returns, without going to sleep between
//! the two.
//!
//! A handler may block without holding the GIL (it sleeps, waits on I/O or calls another
//! server), and the calls queued behind it must not wait for it:
//! - a call queues only if a thread is starting, or runs a handler that started within the
//!   last [`QUEUE_PATIENCE`] (it is cycling through quick handlers); else it gets a thread
//!   at once, so a handler that has been running for a while never delays the calls that
//!   come after it;
//! - a call still queued after [`QUEUE_PATIENCE`] starts a thread of its own. A handler
//!   that blocks just after it started thus delays the calls queued behind it by at most
//!   that much.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meridian::Status;

/// How long a call may wait in the queue for a busy handler thread before it gets a
/// thread of its own. Longer than a quick handler's run (tens of µs), short beside a
/// network round trip between regions.
pub(crate) const QUEUE_PATIENCE: Duration = Duration::from_millis(1);

/// The queue of calls waiting for a handler thread (one per process, in its engine).
pub(crate) struct HandlerQueue {
    state: Mutex<QueueState>,
    /// [`QUEUE_PATIENCE`], but for tests.
    patience: Duration,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Threads taking jobs from the queue now (each runs one job at a time).
    threads: usize,
    /// Threads started since the queue was made.
    started: u64,
    /// The threads running a job, each with when it took the job (a thread that is
    /// starting is counted in `threads` but not here yet).
    running: Vec<(u64, Instant)>,
}

impl QueueState {
    /// Counts a thread about to start, and names it. Called under the lock that queued
    /// the job it is for, so a call that comes right after sees the thread coming and
    /// queues for it instead of starting another.
    fn add_thread(&mut self) -> u64 {
        self.threads += 1;
        self.started += 1;
        self.started
    }

    /// Whether a thread will take the next queued job soon: one is starting, or runs a
    /// job that started within `patience`.
    fn thread_coming(&self, patience: Duration) -> bool {
        if self.threads > self.running.len() {
            return true;
        }
        let now = Instant::now();
        self.running
            .iter()
            .any(|(_, at)| now.saturating_duration_since(*at) < patience)
    }
}

struct Job {
    /// Set when a thread takes the job: it no longer waits.
    taken: Arc<AtomicBool>,
    run: Box<dyn FnOnce() + Send>,
}

impl Default for HandlerQueue {
    fn default() -> HandlerQueue {
        HandlerQueue::with_patience(QUEUE_PATIENCE)
    }
}

impl HandlerQueue {
    fn with_patience(patience: Duration) -> HandlerQueue {
        HandlerQueue {
            state: Mutex::default(),
            patience,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a handler thread and returns its output. Must be called on the
    /// runtime (it starts threads with `spawn_blocking`).
    pub(crate) async fn run<T, F>(&'static self, f: F) -> Result<T, Status>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let job = Job {
            taken: taken.clone(),
            run: Box::new(move || {
                // A call that ended while it waited (cancelled, past its deadline: its
                // future was dropped) does not run its handler.
                if !tx.is_closed() {
                    let _ = tx.send(f());
                }
            }),
        };
        let new_thread = {
            let mut st = self.lock();
            st.jobs.push_back(job);
            (!st.thread_coming(self.patience)).then(|| st.add_thread())
        };
        match new_thread {
            Some(key) => self.spawn_thread(key),
            None => {
                tokio::select! {
                    biased;
                    out = &mut rx => return out.map_err(|_| thread_failed()),
                    () = tokio::time::sleep(self.patience) => {}
                }
                let rescue = {
                    let mut st = self.lock();
                    (!taken.load(Ordering::Acquire)).then(|| st.add_thread())
                };
                if let Some(key) = rescue {
                    self.spawn_thread(key);
                }
            }
        }
        rx.await.map_err(|_| thread_failed())
    }

    /// Starts the thread `key` (from [`QueueState::add_thread`]), which takes jobs until
    /// the queue is empty.
    fn spawn_thread(&'static self, key: u64) {
        tokio::task::spawn_blocking(move || self.take_jobs(key));
    }

    /// A handler thread's loop; `key` names it in `running`.
    fn take_jobs(&self, key: u64) {
        loop {
            let job = {
                let mut st = self.lock();
                let now = Instant::now();
                let mine = st.running.iter().position(|(k, _)| *k == key);
                match st.jobs.pop_front() {
                    Some(job) => {
                        match mine {
                            Some(i) => st.running[i].1 = now,
                            None => st.running.push((key, now)),
                        }
                        job
                    }
                    None => {
                        if let Some(i) = mine {
                            st.running.swap_remove(i);
                        }
                        st.threads -= 1;
                        return;
                    }
                }
            };
            job.taken.store(true, Ordering::Release);
            // A panic fails its own call (its sender is dropped), not the thread's later
            // jobs.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job.run));
        }
    }
}

fn thread_failed() -> Status {
    Status::internal("the handler's thread failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn queue(patience: Duration) -> &'static HandlerQueue {
        Box::leak(Box::new(HandlerQueue::with_patience(patience)))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// (queued jobs, threads taking them, threads started so far)
    fn counts(q: &HandlerQueue) -> (usize, usize, u64) {
        let st = q.lock();
        (st.jobs.len(), st.threads, st.started)
    }

    /// Waits (at most 30 s) until the counts satisfy `ok`.
    async fn until(q: &HandlerQueue, ok: impl Fn((usize, usize, u64)) -> bool) {
        let wait = async {
            while !ok(counts(q)) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            panic!("the queue never got there: {:?}", counts(q));
        }
    }

    /// Jobs that arrive while a thread is busy run on that thread, one after another:
    /// no thread is started for them.
    #[test]
    fn jobs_queued_behind_a_busy_thread_take_no_thread_of_their_own() {
        let q = queue(Duration::from_secs(60));
        let rt = runtime();
        rt.block_on(async {
            let (release, hold) = mpsc::channel::<()>();
            let first = tokio::spawn(q.run(move || hold.recv().is_ok()));
            until(q, |c| c == (0, 1, 1)).await;
            let rest: Vec<_> = (0..7u32).map(|i| tokio::spawn(q.run(move || i))).collect();
            until(q, |c| c.0 == 7).await;
            assert_eq!(counts(q), (7, 1, 1));
            release.send(()).unwrap();
            assert!(first.await.unwrap().unwrap());
            for (i, job) in rest.into_iter().enumerate() {
                assert_eq!(job.await.unwrap().unwrap(), i as u32);
            }
            // The thread leaves once it finds the queue empty.
            until(q, |c| c.1 == 0).await;
        });
        assert_eq!(counts(q), (0, 0, 1));
    }

    /// A job queued behind one that blocks gets a thread of its own after the patience.
    #[test]
    fn a_blocked_thread_does_not_hold_the_queue() {
        let q = queue(Duration::from_millis(20));
        let rt = runtime();
        rt.block_on(async {
            let (release, hold) = mpsc::channel::<()>();
            let blocked = tokio::spawn(q.run(move || hold.recv().is_ok()));
            until(q, |c| c == (0, 1, 1)).await;
            // Ends while the first job still blocks: it cannot have run on its thread.
            let second = tokio::time::timeout(Duration::from_secs(30), q.run(|| 7u8)).await;
            assert_eq!(second.expect("held behind a blocked job").unwrap(), 7);
            assert_eq!(counts(q).2, 2);
            release.send(()).unwrap();
            assert!(blocked.await.unwrap().unwrap());
            until(q, |c| c.1 == 0).await;
        });
        assert_eq!(counts(q), (0, 0, 2));
    }

    /// A job that comes when every busy thread's job has run longer than the patience
    /// gets a thread at once.
    #[test]
    fn a_thread_busy_for_long_is_not_waited_for() {
        let q = queue(Duration::from_millis(50));
        let rt = runtime();
        rt.block_on(async {
            let (release, hold) = mpsc::channel::<()>();
            let blocked = tokio::spawn(q.run(move || hold.recv().is_ok()));
            until(q, |c| c == (0, 1, 1)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let quick = tokio::spawn(q.run(|| 7u8));
            until(q, |c| c.0 == 1 || c.2 == 2).await;
            assert_eq!(counts(q).2, 2, "queued behind a thread busy for 100 ms");
            assert_eq!(quick.await.unwrap().unwrap(), 7);
            // The quick job's thread has left: a job that comes now does not wait for the
            // thread still blocked either, however recently the other one took its job.
            until(q, |c| c.1 == 1).await;
            let again = tokio::spawn(q.run(|| 8u8));
            until(q, |c| c.0 == 1 || c.2 == 3).await;
            assert_eq!(counts(q).2, 3, "queued behind a thread busy for 100 ms");
            assert_eq!(again.await.unwrap().unwrap(), 8);
            release.send(()).unwrap();
            assert!(blocked.await.unwrap().unwrap());
            until(q, |c| c.1 == 0).await;
        });
        assert_eq!(counts(q), (0, 0, 3));
    }

    /// A job whose call ended while it was queued does not run.
    #[test]
    fn a_job_dropped_while_queued_does_not_run() {
        let q = queue(Duration::from_secs(60));
        let rt = runtime();
        let ran = Arc::new(AtomicBool::new(false));
        rt.block_on(async {
            let (release, hold) = mpsc::channel::<()>();
            let blocked = tokio::spawn(q.run(move || hold.recv().is_ok()));
            until(q, |c| c == (0, 1, 1)).await;
            let r = ran.clone();
            let dropped = tokio::spawn(q.run(move || r.store(true, Ordering::SeqCst)));
            until(q, |c| c.0 == 1).await;
            dropped.abort();
            assert!(dropped.await.unwrap_err().is_cancelled());
            release.send(()).unwrap();
            assert!(blocked.await.unwrap().unwrap());
            until(q, |c| c.1 == 0).await;
        });
        assert!(
            !ran.load(Ordering::SeqCst),
            "the handler of a dropped call ran"
        );
        assert_eq!(counts(q), (0, 0, 1));
    }

    /// A job that panics fails its own call only; its thread goes on with the next.
    #[test]
    fn a_panicking_job_fails_alone() {
        let q = queue(Duration::from_secs(60));
        let rt = runtime();
        rt.block_on(async {
            let (release, hold) = mpsc::channel::<()>();
            let bad = tokio::spawn(q.run(move || -> u8 {
                let _ = hold.recv();
                panic!("a bug in a handler")
            }));
            until(q, |c| c == (0, 1, 1)).await;
            let good = tokio::spawn(q.run(|| 7u8));
            until(q, |c| c.0 == 1).await;
            release.send(()).unwrap();
            let bad = bad.await.unwrap();
            assert_eq!(bad.unwrap_err().code(), meridian::Code::Internal);
            assert_eq!(good.await.unwrap().unwrap(), 7);
            until(q, |c| c.1 == 0).await;
        });
        assert_eq!(counts(q), (0, 0, 1));
    }
}
