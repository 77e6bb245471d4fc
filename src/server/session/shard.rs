//! The writers: a few tasks (`session.writers`; by default one per runtime worker) that each own a shard of the sessions and,
//! when the hub has sent frames, move them from every session's channel to its socket in one
//! pass. A published frame wakes these few tasks, not every session's; a session's own task
//! wakes only when something is left for it (a socket that would block, a read from the
//! history, a full outbox, the connection gone).
//!
//! A writer never owns a session's decisions: it calls the same [`Pump`] the session's task
//! calls, under the session's lock, so per-session order and every bound are the session's.
//!
//! A panic in one session's pump is that session's, not the shard's: the writer catches it,
//! takes the session out of its shard and tells it to close (1011, "internal error: resume"),
//! and goes on with the others. Unsupervised, one bad session would have stalled every other
//! session of its shard without a word.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A session as its writer sees it.
pub trait Pump: Send + Sync {
    /// Takes what the session's channel holds and writes it, without waiting; wakes the
    /// session's task when anything is left that only the task can do. `at`: the pass's time
    /// (one clock read for the whole shard).
    fn pump(&self, at: Instant);

    /// Its pump panicked: the session must end (its task closes it) and is pumped no more.
    fn fail(&self);
}

/// The sessions of a shard as its writer iterates them, with their ids.
type List = Arc<[(u64, Arc<dyn Pump>)]>;

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Arc<dyn Pump>>,
    /// What the writer iterates, rebuilt by the writer when a session came or went (`None`),
    /// so that a crowd connecting costs no copy per connection.
    list: Option<List>,
}

#[derive(Default)]
struct Shard {
    registry: Mutex<Registry>,
}

impl Shard {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Map inserts and removals only: a panic under the lock leaves it consistent.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> List {
        let mut reg = self.registry();
        if let Some(list) = &reg.list {
            return list.clone();
        }
        let list: List = reg.conns.iter().map(|(id, c)| (*id, c.clone())).collect();
        reg.list = Some(list.clone());
        list
    }

    fn remove(&self, id: u64) {
        let mut reg = self.registry();
        if reg.conns.remove(&id).is_some() {
            reg.list = None;
        }
    }
}

/// The writer tasks and their shards. Started with the first session (inside the runtime);
/// they end with the server's shutdown.
pub struct Writers {
    shards: OnceLock<Vec<Arc<Shard>>>,
    next: AtomicUsize,
    next_id: std::sync::atomic::AtomicU64,
    /// Changes whenever the hub sent frames to its channels.
    sent: watch::Receiver<u64>,
    shutdown: CancellationToken,
    /// `session.writers`; `None`: one per worker thread.
    count: Option<usize>,
}

/// A session's place in a shard: dropping it takes the session out.
pub struct Place {
    shard: Arc<Shard>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shard.remove(self.id);
    }
}

impl Writers {
    pub fn new(
        sent: watch::Receiver<u64>,
        shutdown: CancellationToken,
        count: Option<usize>,
    ) -> Writers {
        Writers {
            shards: OnceLock::new(),
            next: AtomicUsize::new(0),
            next_id: std::sync::atomic::AtomicU64::new(0),
            sent,
            shutdown,
            count,
        }
    }

    fn shards(&self) -> &[Arc<Shard>] {
        self.shards.get_or_init(|| {
            let n = self.count.unwrap_or_else(|| {
                tokio::runtime::Handle::try_current()
                    .map(|h| h.metrics().num_workers())
                    .unwrap_or(1)
                    .max(1)
            });
            (0..n)
                .map(|_| {
                    let shard = Arc::new(Shard::default());
                    // A pass writes to thousands of sockets: under tokio's cooperative budget
                    // every write after the 128th would return `Pending` and wake the session's
                    // task to do it instead (BENCHMARKS.md, the writers).
                    tokio::spawn(tokio::task::unconstrained(write(
                        shard.clone(),
                        self.sent.clone(),
                        self.shutdown.clone(),
                    )));
                    shard
                })
                .collect()
        })
    }

    /// Puts a session in the next shard (round robin). Must be called inside the runtime.
    pub fn place(&self, conn: Arc<dyn Pump>) -> Place {
        let shards = self.shards();
        let shard = shards[self.next.fetch_add(1, Ordering::Relaxed) % shards.len()].clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut reg = shard.registry();
        reg.conns.insert(id, conn);
        reg.list = None;
        drop(reg);
        Place { shard, id }
    }
}

/// One writer: after each send of the hub, one pass over its shard.
async fn write(shard: Arc<Shard>, mut sent: watch::Receiver<u64>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sent.changed() => if r.is_err() { return },
        }
        let at = Instant::now();
        for (id, conn) in shard.snapshot().iter() {
            // The session's state is behind its own lock, which recovers from poisoning, and
            // the session is ended: nothing observes a half-done pump.
            if catch_unwind(AssertUnwindSafe(|| conn.pump(at))).is_err() {
                tracing::error!(
                    session = id,
                    "a session's delivery panicked; it is closed with 1011"
                );
                shard.remove(*id);
                if catch_unwind(AssertUnwindSafe(|| conn.fail())).is_err() {
                    tracing::error!(session = id, "closing the session panicked too");
                }
            }
        }
        // Outside the budget a writer whose next pass is already due would never give its
        // worker back: the publisher and the sessions it woke would wait behind it.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Count(AtomicU64);

    impl Pump for Count {
        fn pump(&self, _at: Instant) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }

        fn fail(&self) {
            unreachable!("a counting pump never panics");
        }
    }

    /// Panics on its first pump; counts the pumps tried and the failures told.
    struct Faulty {
        pumps: AtomicU64,
        failed: AtomicU64,
    }

    impl Pump for Faulty {
        fn pump(&self, _at: Instant) {
            if self.pumps.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("a bug in one session's delivery");
            }
        }

        fn fail(&self) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_panicking_session_is_failed_and_taken_out_and_its_shard_goes_on() {
        let (tx, rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        // One shard: both sessions are the same writer's.
        let w = Writers::new(rx, shutdown.clone(), Some(1));
        let bad = Arc::new(Faulty {
            pumps: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let good = Arc::new(Count(AtomicU64::new(0)));
        let _pbad = w.place(bad.clone());
        let _pgood = w.place(good.clone());
        for round in 1..=3 {
            tx.send_modify(|n| *n += 1);
            settle().await;
            assert_eq!(good.0.load(Ordering::Relaxed), round, "the shard goes on");
        }
        assert_eq!(bad.pumps.load(Ordering::Relaxed), 1, "pumped no more");
        assert_eq!(bad.failed.load(Ordering::Relaxed), 1, "told once");
        shutdown.cancel();
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_send_pumps_every_placed_session_once_and_a_dropped_place_no_more() {
        // Two shards: the two places land in different ones.
        let (tx, rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        let w = Writers::new(rx, shutdown.clone(), Some(2));
        let a = Arc::new(Count(AtomicU64::new(0)));
        let b = Arc::new(Count(AtomicU64::new(0)));
        let pa = w.place(a.clone());
        let _pb = w.place(b.clone());
        settle().await;
        assert_eq!(a.0.load(Ordering::Relaxed), 0, "nothing sent, no pass");
        tx.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        drop(pa);
        tx.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(a.0.load(Ordering::Relaxed), 1, "out of its shard");
        assert_eq!(b.0.load(Ordering::Relaxed), 2);
        shutdown.cancel();
        settle().await;
        tx.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(
            b.0.load(Ordering::Relaxed),
            2,
            "the writers ended at shutdown"
        );
    }
}
