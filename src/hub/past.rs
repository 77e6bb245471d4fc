//! The readers of the past: a few threads of their own, at a lower CPU priority, that run the
//! reads of frames the ring no longer holds (the event log's archive) and the pages of
//! `/v1/signals`. On two cores shared with everything else, a client reading the log would
//! otherwise take CPU time from the publisher's commit and the writers' fan-out as an equal
//! (BENCHMARKS.md, "reads of the log"); at nice 10 the scheduler gives a reader about a tenth
//! of a contended core, and all of an idle one.
//!
//! Never runs a commit or a fan-out: the one publisher's journal is on tokio's blocking pool
//! at the normal priority. A job run from one of these threads (a `/v1/signals` page awaiting
//! an archive read) runs in place rather than queueing behind itself, so a busy pool cannot
//! deadlock. Idle threads end after `KEEP_ALIVE`, as tokio's blocking threads do.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

/// The niceness of the readers' threads (0 is everyone else's; 19 the least).
pub const NICE: i32 = 10;

/// An idle reader thread ends after this.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A job that panicked: its caller answers as for a failed read.
#[derive(Debug, thiserror::Error)]
#[error("a read of the past panicked")]
pub struct Lost;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_threads: usize,
}

thread_local! {
    static ON_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        // As many as there are cores: a reader may take a whole idle core, never more.
        max_threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    })
}

impl Pool {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Pushes and pops only: a panic under the lock leaves the queue consistent (jobs run
        // outside it).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&'static self, job: Job) {
        let mut q = self.queue();
        q.jobs.push_back(job);
        if q.idle > 0 {
            drop(q);
            self.ready.notify_one();
            return;
        }
        if q.threads < self.max_threads {
            q.threads += 1;
            drop(q);
            let started = std::thread::Builder::new()
                .name("dexpulse-past".to_string())
                .spawn(move || self.serve());
            if let Err(e) = started {
                // The job stays queued for a thread that exists or comes later.
                tracing::error!(error = %e, "could not start a reader thread");
                self.queue().threads -= 1;
            }
        }
    }

    fn serve(&self) {
        lower_priority();
        ON_POOL.with(|p| p.set(true));
        let mut q = self.queue();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                job();
                q = self.queue();
                continue;
            }
            q.idle += 1;
            let (next, timeout) = self
                .ready
                .wait_timeout(q, KEEP_ALIVE)
                .unwrap_or_else(|p| p.into_inner());
            q = next;
            q.idle -= 1;
            if timeout.timed_out() && q.jobs.is_empty() {
                q.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // Linux keeps a niceness per thread: this one's, not the process's.
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), NICE) {
        tracing::warn!(error = %e, "a reader thread runs at the normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `f` on a reader thread; the future is its answer. Called from a reader thread, runs
/// `f` in place (see the module's note). The future may be dropped: the job still runs, and its
/// answer is thrown away.
pub fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Result<T, Lost>> + Send {
    let (tx, rx) = oneshot::channel();
    let job = move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)).map_err(|_| Lost));
    };
    if ON_POOL.with(|p| p.get()) {
        job();
    } else {
        pool().push(Box::new(job));
    }
    async move { rx.await.unwrap_or(Err(Lost)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_answers_and_a_panic_is_lost_not_the_pool() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let lost = run(|| -> u8 { panic!("a bug in one read") }).await;
        assert!(matches!(lost, Err(Lost)));
        assert_eq!(run(|| "still here").await.unwrap(), "still here");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_started_from_the_pool_run_in_place_even_when_every_thread_is_busy() {
        // More outer jobs than threads, each waiting on an inner one: queued inner jobs would
        // never run.
        let outer: Vec<_> = (0..pool().max_threads * 2)
            .map(|i| {
                run(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(run(move || i * 10)).unwrap()
                })
            })
            .collect();
        for (i, o) in outer.into_iter().enumerate() {
            assert_eq!(o.await.unwrap(), i * 10);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_readers_run_below_the_normal_priority() {
        let theirs = run(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        // Absolute, and only ever raised: a process started nicer than 10 keeps its niceness.
        let mine = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(theirs, NICE.max(mine));
    }
}
