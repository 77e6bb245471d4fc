//! The durable history: [`History`] over the event log on disk ([`crate::store::EventLog`])
//! with the recent window in memory (docs/store.md). A batch is committed to the log, with the
//! engine state that reflects it, before its frames are kept or sent, so no client ever sees a
//! seq a crash could give to another event.
//!
//! When a write fails (a full disk, an I/O error) nothing is published: the events wait in
//! memory, unnumbered, up to `store.max_pending_events`; `/readyz` fails with the reason; each
//! later batch (and the maintenance tick) reopens the file and tries again, and the first
//! commit that succeeds publishes everything that waited, in order, with the next seqs. Reads
//! of the recent window come from memory, older ones from the file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use dexpulse_core::model::EventMeta;
use dexpulse_core::protocol::Epoch;
use dexpulse_core::signal::checkpoint::Checkpoint;

use super::history::{EventFields, Frame, History, MemoryHistory, Read, Since};
use super::past;
use super::Settings;
use crate::health::Health;
use crate::metrics::LogMetrics;
use crate::store::{self, EventLog, LogReader, StoreError};

/// Rows removed by one retention transaction: the publisher waits at most that long.
const TRIM_CHUNK: u64 = 10_000;

pub struct LogHistory {
    memory: MemoryHistory,
    writer: Mutex<Writer>,
    /// Reads of older frames go through this, never through the writer, so a read never waits
    /// for a commit. A read holds it shared while it copies rows out of the file; only a reopen
    /// after a failed write takes it alone (the old handle must be gone before the file can be
    /// opened again).
    reader: Arc<RwLock<Option<LogReader>>>,
    /// The oldest seq in the file, set by the writer after each open and trim.
    oldest: AtomicU64,
    store: store::Settings,
    metrics: LogMetrics,
    health: Arc<Health>,
}

struct Writer {
    log: EventLog,
    /// Events not yet committed (the log failed), oldest first, and the engine state that
    /// goes with them.
    pending: VecDeque<(EventMeta, String)>,
    pending_state: Option<Checkpoint>,
    /// The last write failed: the file must be opened again before the next.
    broken: Option<String>,
}

/// What a stored frame says that filters read.
#[derive(Deserialize)]
struct Stored {
    published_at_us: i64,
    event: EventFields,
}

/// A frame of the log that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("frame {seq}: {cause}")]
struct BadFrame {
    seq: u64,
    cause: serde_json::Error,
}

/// A frame read back from the log. The bytes are the ones sent; only the meta is parsed.
fn frame(seq: u64, bytes: Vec<u8>) -> Result<Arc<Frame>, BadFrame> {
    let s: Stored = serde_json::from_slice(&bytes).map_err(|cause| BadFrame { seq, cause })?;
    Ok(Arc::new(Frame {
        seq,
        published_at_us: s.published_at_us,
        meta: s.event.meta(),
        text: Bytes::from(bytes),
    }))
}

/// `published_at_us` of a stored frame, read from its fixed prefix
/// (`{"type":"signal","seq":N,"published_at_us":T,...`) without parsing the rest.
fn published_at(bytes: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"published_at_us\":";
    let at = bytes.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn corrupt(log: &EventLog, bad: BadFrame) -> StoreError {
    StoreError::Corrupt {
        path: log.path().to_path_buf(),
        detail: bad.to_string(),
    }
}

fn frames_of(log: &EventLog, rows: Vec<(u64, Vec<u8>)>) -> Result<Vec<Arc<Frame>>, StoreError> {
    rows.into_iter()
        .map(|(seq, bytes)| frame(seq, bytes).map_err(|d| corrupt(log, d)))
        .collect()
}

impl LogHistory {
    /// Continues `log`: its epoch and head, its newest `retain_events` frames in memory.
    pub fn open(
        settings: Settings,
        store: store::Settings,
        log: EventLog,
        metrics: LogMetrics,
        health: Arc<Health>,
    ) -> Result<LogHistory, StoreError> {
        let head = log.head();
        let n = settings.retain_events.max(1) as u64;
        let frames = frames_of(&log, log.since(head.saturating_sub(n), n as usize)?)?;
        let memory = MemoryHistory::restored(settings, log.epoch().clone(), head, frames);
        let oldest = log.oldest()?;
        let h = LogHistory {
            memory,
            reader: Arc::new(RwLock::new(log.reader().ok())),
            oldest: AtomicU64::new(oldest),
            writer: Mutex::new(Writer {
                log,
                pending: VecDeque::new(),
                pending_state: None,
                broken: None,
            }),
            store,
            metrics,
            health,
        };
        h.measure(&h.writer());
        Ok(h)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // The writer's state is its file and a queue: a panic under the lock leaves both whole.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the file again after a failed write, with no reader holding the old handle.
    fn reopen(&self, w: &mut Writer) -> Result<(), StoreError> {
        let mut slot = self.reader.write().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        let reopened = w.log.reopen();
        *slot = w.log.reader().ok();
        reopened
    }

    fn measure(&self, w: &Writer) {
        if let Ok(u) = w.log.usage() {
            self.oldest.store(u.oldest, Ordering::Release);
            let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
            self.metrics.file_bytes.set(g(u.file_bytes));
            self.metrics.stored_bytes.set(g(u.stored_bytes));
            self.metrics.events.set(g(u.events));
            self.metrics.oldest_seq.set(g(u.oldest));
        }
    }

    /// Commits what waits (and `batch` after it) with the state; on success the frames are
    /// kept in memory and returned for sending.
    fn commit(
        &self,
        w: &mut Writer,
        published_at_us: i64,
        batch: Vec<(EventMeta, String)>,
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        if let Some(s) = state {
            match &mut w.pending_state {
                Some(p) => p.merge(s),
                None => w.pending_state = Some(s),
            }
        }
        // Events wait only after a failed write (`requeue` bounds them); in the usual case the
        // batch is numbered as it came, without a copy.
        let batch: Vec<_> = if w.pending.is_empty() {
            batch
        } else {
            w.pending.drain(..).chain(batch).collect()
        };
        // A log that failed is probed with a write even when nothing waits, so that readiness
        // comes back as soon as writes succeed.
        if batch.is_empty() && w.pending_state.is_none() && w.broken.is_none() {
            return Vec::new();
        }
        if !w.log.is_open() {
            if let Err(e) = self.reopen(w) {
                self.requeue(w, batch);
                return self.failed(w, e, Vec::new());
            }
        }
        let frames = self.memory.number(published_at_us, batch);
        let t0 = Instant::now();
        let committed = w.log.append(
            frames.iter().map(|f| (f.seq, f.text.as_ref())),
            w.pending_state.as_ref(),
        );
        match committed {
            Ok(()) => {
                self.metrics
                    .commit_seconds
                    .observe(t0.elapsed().as_secs_f64());
                w.pending_state = None;
                self.metrics.pending_events.set(0);
                if let Some(was) = w.broken.take() {
                    tracing::info!(published = frames.len(), after = %was, "event log writable again; what waited is published");
                    self.health.set_store_fault(None);
                }
                self.memory.keep(&frames);
                frames
            }
            Err(e) => self.failed(w, e, frames),
        }
    }

    /// Events not committed go (back) to the front of the queue, which keeps at most
    /// `store.max_pending_events`: the oldest beyond it are dropped and counted.
    fn requeue(&self, w: &mut Writer, events: Vec<(EventMeta, String)>) {
        for e in events.into_iter().rev() {
            w.pending.push_front(e);
        }
        let over = w
            .pending
            .len()
            .saturating_sub(self.store.max_pending_events);
        if over > 0 {
            w.pending.drain(..over);
            self.metrics.dropped_events.inc_by(over as u64);
            tracing::error!(
                dropped = over,
                "event log: more events waited than store.max_pending_events; the oldest were dropped unpublished"
            );
        }
    }

    /// A write failed: `frames` (numbered, not committed) go back to the queue unnumbered.
    fn failed(&self, w: &mut Writer, e: StoreError, frames: Vec<Arc<Frame>>) -> Vec<Arc<Frame>> {
        let events = frames
            .iter()
            .map(|f| {
                (
                    f.meta.clone(),
                    String::from_utf8_lossy(&f.event_json()).into_owned(),
                )
            })
            .collect();
        self.requeue(w, events);
        self.metrics.commit_failures.inc();
        self.metrics
            .pending_events
            .set(i64::try_from(w.pending.len()).unwrap_or(i64::MAX));
        if w.broken.is_none() {
            tracing::error!(error = %e, waiting = w.pending.len(), "event log write failed; publishing stops until it succeeds");
        }
        // redb refuses every later write (and read) after a failed one until the file is
        // opened again: reopen now, so that reads of what was committed go on working.
        if w.log.is_open() {
            if let Err(e) = self.reopen(w) {
                tracing::warn!(error = %e, "event log reopen failed; retrying");
            }
        }
        let reason = format!("{e} ({} events wait)", w.pending.len());
        self.health.set_store_fault(Some(reason.clone()));
        w.broken = Some(reason);
        Vec::new()
    }

    /// Retention (by age and by bytes, `[store]`), in chunks so that the publisher waits at
    /// most one chunk; a log that failed is retried. Returns the frames that waited and are now
    /// published (to be sent by the caller).
    fn upkeep(&self, now_us: i64) -> Vec<Arc<Frame>> {
        let mut published = Vec::new();
        {
            let mut w = self.writer();
            if w.broken.is_some() {
                published = self.commit(&mut w, now_us, Vec::new(), None);
                if w.broken.is_some() {
                    return published;
                }
            }
        }
        let retain_us = i64::try_from(self.store.retain.as_micros()).unwrap_or(i64::MAX);
        let keep_from = {
            let w = self.writer();
            let by_age = w
                .log
                .first_at_or_after(now_us.saturating_sub(retain_us), published_at);
            let by_size = w.log.usage().map(|u| {
                if u.stored_bytes <= self.store.max_bytes || u.events == 0 {
                    u.oldest
                } else {
                    let per = (u.stored_bytes / u.events).max(1);
                    u.oldest + (u.stored_bytes - self.store.max_bytes).div_ceil(per)
                }
            });
            match (by_age, by_size) {
                (Ok(a), Ok(s)) => a.max(s),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "event log retention skipped");
                    return published;
                }
            }
        };
        let mut trimmed = 0;
        loop {
            let mut w = self.writer();
            match w.log.trim_below(keep_from, TRIM_CHUNK) {
                Ok(n) => {
                    trimmed += n;
                    if let Ok(o) = w.log.oldest() {
                        self.oldest.store(o, Ordering::Release);
                    }
                    if n < TRIM_CHUNK {
                        self.measure(&w);
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event log trim failed; retrying at the next maintenance");
                    break;
                }
            }
        }
        self.metrics.trimmed_events.inc_by(trimmed);
        published
    }
}

/// A read the memory window could not answer, from the file, on a reader thread of [`past`]
/// (the writer's lock is not taken; the rows are parsed after the reader's is let go). A write that
/// fails makes redb refuse reads on the same handle until the writer has opened the file again,
/// a moment later: the read is tried again with the handle the writer then puts in place, for
/// up to `READ_RETRY` (a session told of a loss that is not one would resume for nothing). On
/// an error beyond that, what memory had.
fn read_file(
    reader: Arc<RwLock<Option<LogReader>>>,
    dir: std::path::PathBuf,
    recent: Since,
    read: impl Fn(&LogReader) -> Result<store::Rows, StoreError> + Send + 'static,
) -> Read {
    let fallback = recent.clone();
    Read::Archive(Box::pin(async move {
        let job = past::run(move || {
            let attempt = || {
                let rows = {
                    let slot = reader.read().unwrap_or_else(|p| p.into_inner());
                    match slot.as_ref() {
                        Some(r) => read(r).map(|rows| (rows, r.path().to_path_buf())),
                        None => Err(StoreError::Io {
                            path: dir.clone(),
                            detail: "closed after a failed write; not reopened yet".to_string(),
                        }),
                    }
                };
                rows.and_then(|((rows, oldest), path)| {
                    let frames = rows
                        .into_iter()
                        .map(|(seq, bytes)| {
                            frame(seq, bytes).map_err(|bad| StoreError::Corrupt {
                                path: path.clone(),
                                detail: bad.to_string(),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Since {
                        frames,
                        oldest_seq: oldest.unwrap_or(recent.head + 1),
                        head: recent.head,
                    })
                })
            };
            let mut got = attempt();
            let mut waited = Duration::ZERO;
            while got.is_err() && waited < READ_RETRY {
                // A reader thread: this one is the read's own while it runs.
                std::thread::sleep(READ_RETRY_STEP);
                waited += READ_RETRY_STEP;
                got = attempt();
            }
            match got {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "event log read failed; answering from memory");
                    recent
                }
            }
        });
        match job.await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "event log read failed; answering from memory");
                fallback
            }
        }
    }))
}

/// How long a read of the file waits for the writer to open it again after a failed write.
const READ_RETRY: Duration = Duration::from_secs(2);
const READ_RETRY_STEP: Duration = Duration::from_millis(20);

impl LogHistory {
    fn archive(
        &self,
        recent: Since,
        read: impl Fn(&LogReader) -> Result<store::Rows, StoreError> + Send + 'static,
    ) -> Read {
        let dir = self.store.data_dir.clone().unwrap_or_default();
        read_file(self.reader.clone(), dir, recent, read)
    }
}

impl History for LogHistory {
    fn epoch(&self) -> Epoch {
        self.memory.epoch()
    }

    fn head(&self) -> u64 {
        self.memory.head()
    }

    fn append(
        &self,
        published_at_us: i64,
        events: Vec<(EventMeta, String)>,
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        let mut w = self.writer();
        self.commit(&mut w, published_at_us, events, state)
    }

    fn since(&self, after: u64, limit: usize) -> Since {
        self.memory.since(after, limit)
    }

    fn read_since(&self, after: u64, limit: usize) -> Read {
        let recent = self.memory.since(after, limit);
        if recent.complete_after(after) || after >= recent.head {
            return Read::Done(recent);
        }
        // Older than the window in memory: from the file.
        self.archive(recent, move |log| log.since(after, limit))
    }

    fn oldest(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }

    fn before(&self, before: Option<u64>, limit: usize) -> Since {
        self.memory.before(before, limit)
    }

    fn read_before(&self, before: Option<u64>, limit: usize) -> Read {
        let recent = self.memory.before(before, limit);
        if recent.frames.len() == limit {
            return Read::Done(recent);
        }
        self.archive(recent, move |log| log.before(before, limit))
    }

    fn maintain(&self, now_us: i64) -> Vec<Arc<Frame>> {
        self.upkeep(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dexpulse_core::model::{Direction, Kind, PairKey};

    fn meta(i: u64) -> (EventMeta, String) {
        (
            EventMeta {
                pair: PairKey::new("sim", format!("p{i}")),
                kind: Kind::NewPair,
                direction: Direction::Neutral,
                score: 1,
            },
            format!("{{\"event_id\":\"e{i}\"}}"),
        )
    }

    /// Old frames are read from the file while the writer is held (a commit in progress): the
    /// read takes only the reader handle. Under the writer's lock, as reads were before, this
    /// read would wait for the commit.
    #[test]
    fn reads_of_the_file_do_not_wait_for_the_writer() {
        let dir =
            std::env::temp_dir().join(format!("dexpulse-durable-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = EventLog::open(&dir, || Epoch::parse("ep").unwrap()).unwrap();
        let settings = Settings::parse(&super::super::RawSettings {
            retain_events: 10,
            ..Default::default()
        })
        .unwrap();
        let store = store::Settings::parse(&store::RawSettings {
            data_dir: Some(dir.clone()),
            ..Default::default()
        })
        .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let health = Arc::new(Health::new(crate::time::Clock::manual(0)));
        let h =
            Arc::new(LogHistory::open(settings, store, log, metrics.log.clone(), health).unwrap());
        for i in 0..5 {
            h.append(1, (i * 20..(i + 1) * 20).map(meta).collect(), None);
        }
        assert_eq!((h.head(), h.oldest()), (100, 1));
        let held = h.writer();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Arc::clone(&h);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let whole = |r: Read| match r {
                Read::Done(s) => s,
                Read::Archive(f) => rt.block_on(f),
            };
            let s = whole(reader.read_since(0, 30));
            let b = whole(reader.read_before(Some(20), 5));
            let _ = tx.send((s, b));
        });
        // A deadlock detector, not a timing: the read needs nothing the writer holds.
        let (s, b) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a read of the file waited for the writer");
        drop(held);
        assert_eq!(
            s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        assert_eq!(s.oldest_seq, 1);
        assert_eq!(
            b.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            (15..=19).collect::<Vec<_>>()
        );
        assert_eq!(&s.frames[0].event_json()[..], b"{\"event_id\":\"e0\"}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_time_and_the_event_are_read_from_a_frame() {
        let text = dexpulse_core::protocol::signal_message(7, -12, "{\"a\":1}");
        assert_eq!(published_at(text.as_bytes()), Some(-12));
        let f = Frame {
            seq: 7,
            published_at_us: -12,
            meta: EventMeta {
                pair: PairKey::new("sim", "p"),
                kind: Kind::NewPair,
                direction: Direction::Neutral,
                score: 1,
            },
            text: Bytes::from(text),
        };
        assert_eq!(&f.event_json()[..], b"{\"a\":1}");
        assert_eq!(published_at(b"{\"type\":\"signal\"}"), None);
    }
}
