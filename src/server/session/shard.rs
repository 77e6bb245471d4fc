//! The writers: a few tasks (`session.writers`; by default one per runtime worker) that each own
//! a shard of the sessions and run them. A session has no task of its own (an idle one is its
//! state and its socket, BENCHMARKS.md, P3): its shard's writer
//! - after every send of the hub, moves frames from every session's channel to its socket in
//!   one pass ([`Pump::pump`]);
//! - drives a session whose waker fired (its socket readable or writable again, a history read
//!   done, its stall timer) through its own steps ([`Pump::drive`]);
//! - on its tick, gives each session its heartbeat ([`Pump::tick`]);
//! - when the epoch ends or the server shuts down, drives every session so that it closes,
//!   and ends once its shard is empty.
//!
//! A writer never owns a session's decisions: it calls the session's steps under the session's
//! lock, so per-session order and every bound are the session's. A panic in one session's step
//! is that session's, not the shard's: the writer catches it and tells the session to close
//! (1011, "internal error: resume"), and goes on with the others.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A session as its writer sees it.
pub trait Pump: Send + Sync {
    /// Takes what the session's channel holds and writes it, without waiting; queues the
    /// session for a drive when anything is left that only a drive can do. `at`: the pass's
    /// time (one clock read for the whole shard).
    fn pump(&self, at: Instant);

    /// The writer's tick: a heartbeat when one is due, and an idle session's buffers given back.
    fn tick(&self, at: Instant);

    /// Runs the session's own steps until each waits (its waker queues it again) or it ends.
    fn drive(self: Arc<Self>);

    /// One of its steps panicked: the session must end (1011), and is pumped no more.
    fn fail(&self);
}

/// The current epoch's token: cancelled when the epoch ends (and at shutdown).
pub type Epochs = Arc<dyn Fn() -> CancellationToken + Send + Sync>;

/// The sessions of a shard as its writer iterates them, with their ids.
type List = Arc<[(u64, Arc<dyn Pump>)]>;

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Arc<dyn Pump>>,
    /// What the writer iterates, rebuilt by the writer when a session came or went (`None`),
    /// so that a crowd connecting costs no copy per connection.
    list: Option<List>,
    /// The writer has ended (shutdown, and no session left): nothing may join.
    closed: bool,
}

#[derive(Default)]
struct Shard {
    registry: Mutex<Registry>,
    /// Sessions whose waker fired, to be driven.
    ready: Mutex<Vec<Arc<dyn Pump>>>,
    woken: Notify,
}

impl Shard {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Map inserts and removals only: a panic under the lock leaves it consistent.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ready(&self) -> MutexGuard<'_, Vec<Arc<dyn Pump>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Every session, to be driven (the epoch ended, or the server is shutting down).
    fn wake_all(&self) {
        let list = self.snapshot();
        self.ready().extend(list.iter().map(|(_, c)| c.clone()));
    }

    /// Drives the sessions queued so far; one that queues itself again waits for the next round,
    /// so that a busy session cannot hold the writer.
    fn drive_ready(&self) {
        let batch = std::mem::take(&mut *self.ready());
        for conn in batch {
            if catch_unwind(AssertUnwindSafe(|| conn.clone().drive())).is_err() {
                tracing::error!("a session's step panicked; it is closed with 1011");
                if catch_unwind(AssertUnwindSafe(|| conn.fail())).is_err() {
                    tracing::error!("closing the session panicked too");
                }
            }
        }
    }

    /// At shutdown: true, and nothing may join any more, once no session is left.
    fn close_if_empty(&self) -> bool {
        let mut reg = self.registry();
        if reg.conns.is_empty() {
            reg.closed = true;
        }
        reg.closed
    }
}

/// Where a session's waker puts it: its shard's queue of sessions to drive.
pub struct Queue(Weak<Shard>);

impl Queue {
    pub fn push(&self, conn: Arc<dyn Pump>) {
        if let Some(shard) = self.0.upgrade() {
            shard.ready().push(conn);
            shard.woken.notify_one();
        }
    }
}

/// A session's shard, chosen before the session is made (its waker needs the queue).
pub struct Slot {
    shard: Arc<Shard>,
    id: u64,
}

impl Slot {
    pub fn queue(&self) -> Queue {
        Queue(Arc::downgrade(&self.shard))
    }

    /// Puts the session in its shard. `None`: the shard's writer has ended (the server shut
    /// down); the caller ends the session itself.
    pub fn place(self, conn: Arc<dyn Pump>) -> Option<Place> {
        let mut reg = self.shard.registry();
        if reg.closed {
            return None;
        }
        reg.conns.insert(self.id, conn);
        reg.list = None;
        drop(reg);
        Some(Place {
            shard: self.shard,
            id: self.id,
        })
    }
}

/// The writers' tick for a heartbeat interval: a fifth of it, between 10 ms and 1 s, so that a
/// ping leaves within a fifth of an interval of when it is due.
pub fn tick_for(heartbeat: Duration) -> Duration {
    (heartbeat / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// What the writers are started with.
pub struct Config {
    /// `session.writers`; `None`: one per worker thread.
    pub count: Option<usize>,
    /// How often a writer gives its sessions their heartbeats.
    pub tick: Duration,
    pub epochs: Epochs,
}

/// The writer tasks and their shards. Started with the first session (inside the runtime);
/// each ends after the server's shutdown, once its sessions have closed.
pub struct Writers {
    shards: OnceLock<Vec<Arc<Shard>>>,
    next: AtomicUsize,
    next_id: std::sync::atomic::AtomicU64,
    /// Changes whenever the hub sent frames to its channels.
    sent: watch::Receiver<u64>,
    shutdown: CancellationToken,
    config: Config,
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
    pub fn new(sent: watch::Receiver<u64>, shutdown: CancellationToken, config: Config) -> Writers {
        Writers {
            shards: OnceLock::new(),
            next: AtomicUsize::new(0),
            next_id: std::sync::atomic::AtomicU64::new(0),
            sent,
            shutdown,
            config,
        }
    }

    fn shards(&self) -> &[Arc<Shard>] {
        self.shards.get_or_init(|| {
            let n = self.config.count.unwrap_or_else(|| {
                tokio::runtime::Handle::try_current()
                    .map(|h| h.metrics().num_workers())
                    .unwrap_or(1)
                    .max(1)
            });
            (0..n)
                .map(|_| {
                    let shard = Arc::new(Shard::default());
                    // A pass writes to thousands of sockets: under tokio's cooperative budget
                    // every write after the 128th would return `Pending` and queue the session
                    // for a drive instead (BENCHMARKS.md, the writers).
                    tokio::spawn(tokio::task::unconstrained(write(
                        shard.clone(),
                        self.sent.clone(),
                        self.shutdown.clone(),
                        self.config.tick,
                        self.config.epochs.clone(),
                    )));
                    shard
                })
                .collect()
        })
    }

    /// The next shard (round robin) for a session about to be made. Must be called inside the
    /// runtime.
    pub fn slot(&self) -> Slot {
        let shards = self.shards();
        let shard = shards[self.next.fetch_add(1, Ordering::Relaxed) % shards.len()].clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Slot { shard, id }
    }
}

/// Runs `step` on every session of the list, catching a panic as that session's.
fn each(shard: &Shard, step: impl Fn(&dyn Pump)) {
    for (id, conn) in shard.snapshot().iter() {
        // The session's state is behind its own lock, which recovers from poisoning, and the
        // session is ended: nothing observes a half-done step.
        if catch_unwind(AssertUnwindSafe(|| step(&**conn))).is_err() {
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
}

/// One writer: after each send of the hub, one pass over its shard; between them, the
/// sessions whose wakers fired and the heartbeats.
async fn write(
    shard: Arc<Shard>,
    mut sent: watch::Receiver<u64>,
    shutdown: CancellationToken,
    tick: Duration,
    epochs: Epochs,
) {
    let mut epoch = epochs();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hub_open = true;
    // Every session was woken to see the shutdown.
    let mut told = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !told => {
                told = true;
                shard.wake_all();
            }
            _ = epoch.cancelled(), if !told => {
                shard.wake_all();
                epoch = epochs();
            }
            r = sent.changed(), if hub_open => match r {
                Ok(()) => {
                    let at = Instant::now();
                    each(&shard, |c| c.pump(at));
                }
                Err(_) => hub_open = false,
            },
            _ = shard.woken.notified() => {}
            _ = ticker.tick() => {
                let at = Instant::now();
                each(&shard, |c| c.tick(at));
            }
        }
        shard.drive_ready();
        if told && shard.close_if_empty() {
            return;
        }
        // Outside the budget a writer whose next pass is already due would never give its
        // worker back: the publisher and the other writers would wait behind it.
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

        fn tick(&self, _at: Instant) {}

        fn drive(self: Arc<Self>) {}

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

        fn tick(&self, _at: Instant) {}

        fn drive(self: Arc<Self>) {}

        fn fail(&self) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn writers(rx: watch::Receiver<u64>, shutdown: &CancellationToken, n: usize) -> Writers {
        Writers::new(
            rx,
            shutdown.clone(),
            Config {
                count: Some(n),
                // Long: these tests count pumps, not ticks.
                tick: Duration::from_secs(3600),
                epochs: Arc::new(CancellationToken::new),
            },
        )
    }

    fn place(w: &Writers, p: Arc<dyn Pump>) -> Place {
        w.slot().place(p).expect("the writers run")
    }

    #[tokio::test]
    async fn a_panicking_session_is_failed_and_taken_out_and_its_shard_goes_on() {
        let (tx, rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        // One shard: both sessions are the same writer's.
        let w = writers(rx, &shutdown, 1);
        let bad = Arc::new(Faulty {
            pumps: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let good = Arc::new(Count(AtomicU64::new(0)));
        let _pbad = place(&w, bad.clone());
        let _pgood = place(&w, good.clone());
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
        let w = writers(rx, &shutdown, 2);
        let a = Arc::new(Count(AtomicU64::new(0)));
        let b = Arc::new(Count(AtomicU64::new(0)));
        let pa = place(&w, a.clone());
        let pb = place(&w, b.clone());
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
        // At shutdown a writer goes on while its shard has sessions (they are closing), and
        // ends once it is empty: then nothing joins.
        shutdown.cancel();
        settle().await;
        tx.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(b.0.load(Ordering::Relaxed), 3, "still has a session");
        drop(pb);
        tx.send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(b.0.load(Ordering::Relaxed), 3);
        assert_eq!(
            tx.receiver_count(),
            1,
            "the writers ended: only the `Writers`' own receiver is left"
        );
        assert!(
            w.slot().place(a.clone()).is_none(),
            "a closed shard takes no session"
        );
    }
}
