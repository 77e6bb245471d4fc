//! The durable history: [`History`] over the event log on disk ([`crate::store::EventLog`])
//! with the recent window in memory. A batch is committed to the log before its frames are
//! kept or sent, so no client ever sees a seq a crash could give to another event; a batch
//! whose commit fails is not published at all (the error is logged and counted in
//! `failed_commits`), and the next batch tries again. Reads of the recent window come from
//! memory; older ones from the file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Deserialize;

use dexpulse_core::model::{Direction, EventMeta, Kind, PairKey};

use super::history::{Frame, History, MemoryHistory, Since};
use super::Settings;
use crate::store::{EventLog, StoreError};

pub struct LogHistory {
    memory: MemoryHistory,
    log: Mutex<EventLog>,
    failed_commits: AtomicU64,
    /// The file keeps at most `hub.retain_max_events` frames, trimmed every `TRIM_EVERY` seqs.
    keep: u64,
}

const TRIM_EVERY: u64 = 1024;

/// What a stored frame says that filters read.
#[derive(Deserialize)]
struct Stored {
    published_at_us: i64,
    event: StoredEvent,
}

#[derive(Deserialize)]
struct StoredEvent {
    chain: String,
    pair_address: String,
    kind: Kind,
    direction: Direction,
    score: u8,
}

/// A frame read back from the log. The bytes are the ones sent; only the meta is parsed.
fn frame(seq: u64, bytes: Vec<u8>) -> Result<Arc<Frame>, String> {
    let s: Stored = serde_json::from_slice(&bytes).map_err(|e| format!("frame {seq}: {e}"))?;
    Ok(Arc::new(Frame {
        seq,
        published_at_us: s.published_at_us,
        meta: EventMeta {
            pair: PairKey::new(s.event.chain, s.event.pair_address),
            kind: s.event.kind,
            direction: s.event.direction,
            score: s.event.score,
        },
        text: Bytes::from(bytes),
    }))
}

impl LogHistory {
    /// Continues `log`: its epoch and head, its newest `retain_events` frames in memory.
    pub fn open(settings: Settings, log: EventLog) -> Result<LogHistory, StoreError> {
        let head = log.head();
        let n = settings.retain_events.max(1) as u64;
        let mut frames = Vec::new();
        for (seq, bytes) in log.since(head.saturating_sub(n), n as usize)? {
            frames.push(frame(seq, bytes).map_err(|detail| StoreError::Corrupt {
                path: log.path().to_path_buf(),
                detail,
            })?);
        }
        let keep = settings.retain_max_events.max(1) as u64;
        let memory = MemoryHistory::restored(settings, log.epoch().to_string(), head, frames);
        Ok(LogHistory {
            memory,
            log: Mutex::new(log),
            failed_commits: AtomicU64::new(0),
            keep,
        })
    }

    fn log(&self) -> MutexGuard<'_, EventLog> {
        // The log's own state is its file: a panic under the lock leaves nothing half-done.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batches whose commit failed (and which were therefore not published).
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }
}

impl History for LogHistory {
    fn epoch(&self) -> &str {
        self.memory.epoch()
    }

    fn head(&self) -> u64 {
        self.memory.head()
    }

    fn append(&self, published_at_us: i64, events: Vec<(EventMeta, String)>) -> Vec<Arc<Frame>> {
        let frames = self.memory.number(published_at_us, events);
        let mut log = self.log();
        let committed = log.append(frames.iter().map(|f| (f.seq, f.text.as_ref())));
        if let (Ok(()), Some(first), Some(last)) = (&committed, frames.first(), frames.last()) {
            // Crossed a multiple of TRIM_EVERY: retention by count (by age: not yet).
            if (first.seq - 1) / TRIM_EVERY != last.seq / TRIM_EVERY && last.seq > self.keep {
                if let Err(e) = log.trim_below(last.seq - self.keep + 1) {
                    tracing::warn!(error = %e, "event log trim failed; retrying later");
                }
            }
        }
        drop(log);
        match committed {
            Ok(()) => {
                self.memory.keep(&frames);
                frames
            }
            Err(e) => {
                self.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, events = frames.len(), "event log commit failed; batch not published");
                Vec::new()
            }
        }
    }

    fn since(&self, after: u64, limit: usize) -> Since {
        let recent = self.memory.since(after, limit);
        if recent.complete_after(after) || after >= recent.head {
            return recent;
        }
        // Older than the window in memory: from the file.
        let log = self.log();
        let read = log.since(after, limit).and_then(|rows| {
            let oldest_seq = log.oldest()?;
            let mut frames = Vec::with_capacity(rows.len());
            for (seq, bytes) in rows {
                match frame(seq, bytes) {
                    Ok(f) => frames.push(f),
                    Err(detail) => {
                        return Err(StoreError::Corrupt {
                            path: log.path().to_path_buf(),
                            detail,
                        })
                    }
                }
            }
            Ok(Since {
                frames,
                oldest_seq,
                head: recent.head,
            })
        });
        match read {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "event log read failed; answering from memory");
                recent
            }
        }
    }

    fn oldest(&self) -> u64 {
        let log = self.log();
        log.oldest().unwrap_or_else(|_| self.memory.oldest())
    }

    fn before(&self, before: Option<u64>, limit: usize) -> Since {
        self.memory.before(before, limit)
    }
}
