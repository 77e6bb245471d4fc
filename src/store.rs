//! The event log on disk: one redb file in the data directory, holding each published frame
//! exactly as it was sent, keyed by its seq (big-endian, so the file's order is seq order),
//! and a meta table with the format, the epoch and the head. The only module that touches the
//! data directory's files. It never overwrites a file it did not write: a foreign, corrupt or
//! locked file is refused with an error naming it.
//!
//! `hub::durable` writes each batch here before it sends it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use dexpulse_core::protocol::Epoch;
use dexpulse_core::settings::{at_least, hours, in_range, seconds, FieldError};
use dexpulse_core::signal::checkpoint::Checkpoint;

/// `[store]`: where the event log lives and how much of it is kept. No directory: history in
/// memory only (a new epoch at every start).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub data_dir: Option<PathBuf>,
    /// Events older than this are trimmed ...
    pub retain_hours: f64,
    /// ... and the oldest beyond this many bytes of frames.
    pub max_megabytes: f64,
    /// How often retention runs (and a failing log is retried when nothing else writes).
    pub maintain_seconds: f64,
    /// The engine's state is saved with every batch of events it publishes, and at least this
    /// often while its state changes without events.
    pub checkpoint_seconds: f64,
    /// While the log cannot be written, events wait in memory, up to this many (the oldest
    /// are dropped beyond it, and counted).
    pub max_pending_events: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            data_dir: None,
            retain_hours: 168.0,
            max_megabytes: 1024.0,
            maintain_seconds: 10.0,
            checkpoint_seconds: 30.0,
            max_pending_events: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    pub retain: Duration,
    pub max_bytes: u64,
    pub maintain: Duration,
    pub checkpoint: Duration,
    pub max_pending_events: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// Field names are relative to `[store]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let mb = in_range("max_megabytes", raw.max_megabytes, 1.0, 1e9)?;
        Ok(Settings {
            data_dir: raw.data_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            retain: hours("retain_hours", raw.retain_hours, 0.001, 24.0 * 3650.0)?,
            max_bytes: (mb * 1024.0 * 1024.0) as u64,
            maintain: seconds("maintain_seconds", raw.maintain_seconds, 0.05, 3600.0)?,
            checkpoint: seconds("checkpoint_seconds", raw.checkpoint_seconds, 0.05, 3600.0)?,
            max_pending_events: at_least("max_pending_events", raw.max_pending_events, 1)?,
        })
    }
}

/// Seq (8 bytes, big-endian) → the frame's bytes.
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// `format`, `epoch`, `head` (8 bytes, big-endian); `engine` (the engine's global entry) and
/// `engine_seq` (the head it was saved at).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The engine's pair states (`dexpulse_core::signal::checkpoint`), by pair.
const ENGINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("engine");
/// What the `format` key says in a log this version wrote.
pub const FORMAT: &str = "dexpulse.log/v1";
/// The log's file name inside the data directory.
pub const FILE: &str = "events.redb";
/// Held locked for the life of the process, so that a reopen after a write failure never
/// leaves the directory to another process in between.
pub const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: in use by another process (the data directory holds one server's log)")]
    Locked { path: PathBuf },
    #[error("{path}: not a dexpulse event log ({detail}); refusing to touch it")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path}: unreadable or corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

/// What the meta table says, and how many tables the file holds.
#[derive(Default)]
struct Meta {
    format: Option<String>,
    epoch: Option<String>,
    head: Option<u64>,
    frame_bytes: Option<u64>,
    tables: usize,
}

/// An open log.
pub struct EventLog {
    /// `None` between a failed write and a successful reopen. Shared with the readers.
    db: Option<Arc<Database>>,
    path: PathBuf,
    epoch: Epoch,
    head: u64,
    /// Bytes of the retained frames and their keys, kept in `meta` with every write, so that
    /// retention by size and the metrics never walk the table.
    frame_bytes: u64,
    _lock: File,
}

/// The engine's state as the log holds it.
pub struct SavedEngine {
    /// The head when it was saved: it reflects every event up to this seq.
    pub seq: u64,
    pub global: Vec<u8>,
    /// The source's own state saved with it (the chain follower's).
    pub source: Option<Vec<u8>>,
    pub pairs: Vec<Vec<u8>>,
}

/// Sizes, for metrics and the retention decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// The file's length on disk.
    pub file_bytes: u64,
    /// Bytes of the retained frames and their keys.
    pub stored_bytes: u64,
    pub events: u64,
    pub oldest: u64,
}

/// What `compact_if_worthwhile` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    pub before_bytes: u64,
    pub after_bytes: u64,
}

fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

impl EventLog {
    /// Opens the log in `dir` (created if absent), or starts one there in the epoch
    /// `new_epoch` gives. An existing log keeps its epoch and head.
    pub fn open(dir: &Path, new_epoch: impl FnOnce() -> Epoch) -> Result<EventLog, StoreError> {
        let path = dir.join(FILE);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            detail: format!("cannot create the data directory: {e}"),
        })?;
        let lock_path = dir.join(LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Io {
                path: lock_path.clone(),
                detail: e.to_string(),
            })?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => StoreError::Locked { path: path.clone() },
            std::fs::TryLockError::Error(e) => StoreError::Io {
                path: lock_path.clone(),
                detail: e.to_string(),
            },
        })?;
        let db = open_db(&path)?;
        let mut log = EventLog {
            db: Some(Arc::new(db)),
            path,
            epoch: Epoch::fresh(0, 0),
            head: 0,
            frame_bytes: 0,
            _lock: lock,
        };
        let Meta {
            format,
            epoch,
            head,
            frame_bytes,
            tables,
        } = log.read_meta()?;
        match format.as_deref() {
            Some(FORMAT) => {
                let epoch = epoch.ok_or_else(|| log.corrupt("no epoch in the meta table"))?;
                log.epoch = Epoch::parse(&epoch).map_err(|e| log.corrupt(e))?;
                log.head = head.ok_or_else(|| log.corrupt("no head in the meta table"))?;
                log.frame_bytes = match frame_bytes {
                    Some(b) => b,
                    // A log written before the count was kept: counted once.
                    None => log.count_frame_bytes()?,
                };
            }
            Some(other) => {
                return Err(StoreError::Foreign {
                    path: log.path,
                    detail: format!("its format is {other:?}, this version writes {FORMAT:?}"),
                })
            }
            None if tables > 0 => {
                return Err(StoreError::Foreign {
                    path: log.path,
                    detail: format!("a redb file with {tables} tables and no dexpulse meta"),
                })
            }
            None => {
                log.epoch = new_epoch();
                log.write_meta_new()?;
            }
        }
        Ok(log)
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_deref().ok_or_else(|| StoreError::Io {
            path: self.path.clone(),
            detail: "closed after a failed write; not reopened yet".into(),
        })
    }

    /// Whether the file is open (it is not after a failed write whose reopen failed too).
    pub fn is_open(&self) -> bool {
        self.db.is_some()
    }

    /// After a failed write redb answers every later one with the same error until the file is
    /// opened again: drops it and opens it again (the directory lock is kept throughout).
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        self.db = None;
        let db = open_db(&self.path)?;
        self.db = Some(Arc::new(db));
        let m = self.read_meta()?;
        if m.epoch.as_deref() != Some(self.epoch.as_str()) {
            return Err(self.corrupt("the epoch changed under us"));
        }
        self.head = m.head.unwrap_or(self.head);
        self.frame_bytes = m.frame_bytes.unwrap_or(self.frame_bytes);
        Ok(())
    }

    fn count_frame_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let mut n = 0;
        for item in events.iter().map_err(|e| self.corrupt(e))? {
            let (_, v) = item.map_err(|e| self.corrupt(e))?;
            n += 8 + v.value().len() as u64;
        }
        Ok(n)
    }

    fn corrupt(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    fn read_meta(&self) -> Result<Meta, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let tables = txn.list_tables().map_err(|e| self.corrupt(e))?.count();
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(Meta {
                    tables,
                    ..Meta::default()
                })
            }
            Err(e) => return Err(self.corrupt(e)),
        };
        let text = |k: &str| -> Result<Option<String>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| self.corrupt(e))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
        };
        let num = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| self.corrupt(e))?
                .map(|v| seq_of(v.value())))
        };
        Ok(Meta {
            format: text("format")?,
            epoch: text("epoch")?,
            head: num("head")?,
            frame_bytes: num("frame_bytes")?,
            tables,
        })
    }

    fn write_meta_new(&self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("format", FORMAT.as_bytes())
                .map_err(|e| self.io(e))?;
            meta.insert("epoch", self.epoch.as_str().as_bytes())
                .map_err(|e| self.io(e))?;
            meta.insert("head", be(0).as_slice())
                .map_err(|e| self.io(e))?;
            txn.open_table(EVENTS).map_err(|e| self.io(e))?;
            txn.open_table(ENGINE).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The numbering's lifetime: kept across restarts, new only with a new log.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The last committed seq (0 before the first).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Commits frames in one write transaction, the head with them, and the engine's state
    /// when given (so that it reflects exactly the events committed with it). Their seqs must
    /// follow the head densely; when this returns `Ok` they are on disk, and only then may they
    /// be sent. On an error nothing of the batch is kept and the head does not move.
    pub fn append<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (u64, &'a [u8])>,
        state: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().map_err(|e| self.io(e))?;
        let mut head = self.head;
        let mut bytes = self.frame_bytes;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.io(e))?;
            for (seq, frame) in frames {
                if seq != head + 1 {
                    return Err(self.io(format!(
                        "seq {seq} does not follow the head {head}: nothing written"
                    )));
                }
                events
                    .insert(be(seq).as_slice(), frame)
                    .map_err(|e| self.io(e))?;
                bytes += 8 + frame.len() as u64;
                head = seq;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("head", be(head).as_slice())
                .map_err(|e| self.io(e))?;
            meta.insert("frame_bytes", be(bytes).as_slice())
                .map_err(|e| self.io(e))?;
            if let Some(c) = state {
                let mut engine = txn.open_table(ENGINE).map_err(|e| self.io(e))?;
                if c.replace_all {
                    engine.retain(|_, _| false).map_err(|e| self.io(e))?;
                }
                for (k, v) in &c.pairs {
                    match v {
                        Some(v) => engine.insert(k.as_slice(), v.as_slice()),
                        None => engine.remove(k.as_slice()),
                    }
                    .map_err(|e| self.io(e))?;
                }
                meta.insert("engine", c.global.as_slice())
                    .map_err(|e| self.io(e))?;
                meta.insert("engine_seq", be(head).as_slice())
                    .map_err(|e| self.io(e))?;
                if let Some(source) = &c.source {
                    meta.insert("source", source.as_slice())
                        .map_err(|e| self.io(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.io(e))?;
        self.head = head;
        self.frame_bytes = bytes;
        Ok(())
    }

    /// The engine's state as last saved, if any was.
    pub fn engine_state(&self) -> Result<Option<SavedEngine>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
        let Some(global) = meta.get("engine").map_err(|e| self.corrupt(e))? else {
            return Ok(None);
        };
        let seq = meta
            .get("engine_seq")
            .map_err(|e| self.corrupt(e))?
            .map_or(0, |v| seq_of(v.value()));
        let source = meta
            .get("source")
            .map_err(|e| self.corrupt(e))?
            .map(|v| v.value().to_vec());
        let engine = txn.open_table(ENGINE).map_err(|e| self.corrupt(e))?;
        let mut pairs = Vec::new();
        for item in engine.iter().map_err(|e| self.corrupt(e))? {
            let (_, v) = item.map_err(|e| self.corrupt(e))?;
            pairs.push(v.value().to_vec());
        }
        Ok(Some(SavedEngine {
            seq,
            global: global.value().to_vec(),
            source,
            pairs,
        }))
    }

    /// Frames with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.reader()?.since(after, limit)?.0)
    }

    /// A handle that reads frames beside this log's writes: redb's readers never wait for its
    /// writer, so a session reading old frames never waits for a commit, nor a commit for it.
    /// Taken again after a reopen (the old one then answers with errors).
    pub fn reader(&self) -> Result<LogReader, StoreError> {
        let db = self.db.clone().ok_or_else(|| StoreError::Io {
            path: self.path.clone(),
            detail: "closed after a failed write; not reopened yet".into(),
        })?;
        Ok(LogReader {
            db,
            path: self.path.clone(),
        })
    }

    /// The oldest retained seq (head + 1 when nothing is retained).
    pub fn oldest(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let first = events.first().map_err(|e| self.corrupt(e))?;
        Ok(first.map_or(self.head + 1, |(k, _)| seq_of(k.value())))
    }

    /// Removes the oldest frames with `seq < keep_from` (retention), at most `max` of them in
    /// one transaction (so that a big trim never holds the writer long); the head stays.
    /// Returns how many went.
    pub fn trim_below(&mut self, keep_from: u64, max: u64) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write().map_err(|e| self.io(e))?;
        let mut removed = 0;
        let mut removed_bytes = 0;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.io(e))?;
            let first = events
                .first()
                .map_err(|e| self.io(e))?
                .map(|(k, _)| seq_of(k.value()));
            let Some(first) = first else {
                return Ok(0);
            };
            let end = be(keep_from.min(first.saturating_add(max)));
            events
                .retain_in::<&[u8], _>(..end.as_slice(), |_, v| {
                    removed += 1;
                    removed_bytes += 8 + v.len() as u64;
                    false
                })
                .map_err(|e| self.io(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert(
                "frame_bytes",
                be(self.frame_bytes.saturating_sub(removed_bytes)).as_slice(),
            )
            .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))?;
        self.frame_bytes = self.frame_bytes.saturating_sub(removed_bytes);
        Ok(removed)
    }

    /// The newest `limit` frames with `seq < before` (all when `None`), oldest first.
    pub fn before(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self.reader()?.before(before, limit)?.0)
    }

    /// The first retained seq whose frame `published_at` (read by `time_of`) is at least
    /// `t`, by bisection over the dense seqs; head + 1 when none is.
    pub fn first_at_or_after(
        &self,
        t: i64,
        time_of: impl Fn(&[u8]) -> Option<i64>,
    ) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let Some((first, _)) = events.first().map_err(|e| self.corrupt(e))? else {
            return Ok(self.head + 1);
        };
        let (mut lo, mut hi) = (seq_of(first.value()), self.head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = events
                .get(be(mid).as_slice())
                .map_err(|e| self.corrupt(e))?
                .and_then(|v| time_of(v.value()));
            // A frame that says no time is taken as old: retention may remove it.
            if at.is_some_and(|a| a >= t) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The file's and the events table's sizes.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let file_bytes = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let txn = self.db()?.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let first = events.first().map_err(|e| self.corrupt(e))?;
        Ok(Usage {
            file_bytes,
            stored_bytes: self.frame_bytes,
            events: events.len().map_err(|e| self.corrupt(e))?,
            oldest: first.map_or(self.head + 1, |(k, _)| seq_of(k.value())),
        })
    }

    /// Compacts the file when it is more than three times the frames it holds (redb's pages
    /// and B-tree take about 1.6 times; BENCHMARKS.md) and more than `min_free` bytes would be
    /// won (after retention was lowered, say). Blocks every reader and writer while it runs, so it
    /// is done at start-up, before anything is served.
    pub fn compact_if_worthwhile(
        &mut self,
        min_free: u64,
    ) -> Result<Option<Compaction>, StoreError> {
        let u = self.usage()?;
        let free = u.file_bytes.saturating_sub(u.stored_bytes);
        if free <= min_free || u.file_bytes <= u.stored_bytes.saturating_mul(3) {
            return Ok(None);
        }
        let path = self.path.clone();
        let db = self
            .db
            .as_mut()
            .and_then(Arc::get_mut)
            .ok_or_else(|| StoreError::Io {
                path: path.clone(),
                detail: "closed, or a reader is open (compaction runs before any)".into(),
            })?;
        db.compact().map_err(|e| StoreError::Io {
            path,
            detail: e.to_string(),
        })?;
        let after = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        Ok(Some(Compaction {
            before_bytes: u.file_bytes,
            after_bytes: after,
        }))
    }
}

/// Frames read (seq and bytes), and the oldest seq the file held then (`None`: none).
pub type Rows = (Vec<(u64, Vec<u8>)>, Option<u64>);

/// Reads of the frames, apart from the writer (see [`EventLog::reader`]).
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
    path: PathBuf,
}

impl LogReader {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// Rows chosen by `pick` from one snapshot of the file, with the oldest seq it held then
    /// (a trim cannot fall between the two).
    fn snapshot(
        &self,
        pick: impl FnOnce(
            &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        ) -> Result<Vec<(u64, Vec<u8>)>, redb::StorageError>,
    ) -> Result<Rows, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let oldest = events
            .first()
            .map_err(|e| self.corrupt(e))?
            .map(|(k, _)| seq_of(k.value()));
        Ok((pick(&events).map_err(|e| self.corrupt(e))?, oldest))
    }

    /// Frames with `seq > after`, oldest first, at most `limit`, and the oldest seq retained.
    pub fn since(&self, after: u64, limit: usize) -> Result<Rows, StoreError> {
        let from = be(after.saturating_add(1));
        self.snapshot(|events| {
            events
                .range::<&[u8]>(from.as_slice()..)?
                .take(limit)
                .map(|item| item.map(|(k, v)| (seq_of(k.value()), v.value().to_vec())))
                .collect()
        })
    }

    /// The newest `limit` frames with `seq < before` (all when `None`), oldest first, and the
    /// oldest seq retained.
    pub fn before(&self, before: Option<u64>, limit: usize) -> Result<Rows, StoreError> {
        let end = be(before.unwrap_or(u64::MAX));
        let (mut rows, oldest) = self.snapshot(|events| {
            events
                .range::<&[u8]>(..end.as_slice())?
                .rev()
                .take(limit)
                .map(|item| item.map(|(k, v)| (seq_of(k.value()), v.value().to_vec())))
                .collect()
        })?;
        rows.reverse();
        Ok((rows, oldest))
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    // redb would take an empty file for a new database and write one into it; a file that is
    // there and empty was not made by us, so it is refused and left alone like any other.
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            detail: "an empty file, not an event log (remove it to start a new log)".to_string(),
        });
    }
    Database::create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

/// An alert sink's files in the data directory (`sinks/NAME.cursor`, `sinks/NAME.dead.jsonl`):
/// the last seq it delivered, in which epoch, and the events it gave up on. Blocking calls: the
/// sinks make them on the blocking pool.
#[derive(Debug, Clone)]
pub struct SinkFiles {
    cursor_path: PathBuf,
    /// Open for the life of the sink: each save is one write at offset 0.
    cursor: Arc<File>,
    dead: PathBuf,
}

/// A saved cursor's fixed width: `EPOCH SEQ`, padded with spaces, then a newline. One write of
/// a fixed size at offset 0 replaces it whole (a process killed mid-way leaves the old or the
/// new record, never a mix of two lengths), at the cost of a page-cache write instead of a
/// file created and renamed for every delivery (BENCHMARKS.md, S1).
const CURSOR_WIDTH: usize = 160;

impl SinkFiles {
    /// `name` is a checked sink name (letters, digits, `-`, `_`): a plain file name.
    pub fn open(data_dir: &Path, name: &str) -> Result<SinkFiles, StoreError> {
        let dir = data_dir.join("sinks");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
        let cursor_path = dir.join(format!("{name}.cursor"));
        let cursor = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .map_err(|e| StoreError::Io {
                path: cursor_path.clone(),
                detail: e.to_string(),
            })?;
        Ok(SinkFiles {
            cursor_path,
            cursor: Arc::new(cursor),
            dead: dir.join(format!("{name}.dead.jsonl")),
        })
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.dead
    }

    /// The saved cursor: `None` for a sink that never delivered.
    pub fn cursor(&self) -> Result<Option<(Epoch, u64)>, StoreError> {
        let text = std::fs::read_to_string(&self.cursor_path).map_err(|e| StoreError::Io {
            path: self.cursor_path.clone(),
            detail: e.to_string(),
        })?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let corrupt = |detail: &str| StoreError::Corrupt {
            path: self.cursor_path.clone(),
            detail: detail.to_string(),
        };
        let (epoch, seq) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| corrupt("not `EPOCH SEQ`"))?;
        let epoch = Epoch::parse(epoch).map_err(|e| corrupt(&e.to_string()))?;
        let seq = seq
            .parse()
            .map_err(|_| corrupt("the seq is not a number"))?;
        Ok(Some((epoch, seq)))
    }

    /// Replaces the cursor whole: one fixed-width write at offset 0.
    pub fn save_cursor(&self, epoch: &Epoch, seq: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let mut record = format!("{epoch} {seq}");
        // An epoch is at most 128 bytes and a seq 20 digits: the record always fits.
        record.truncate(CURSOR_WIDTH - 1);
        let record = format!("{record:<width$}\n", width = CURSOR_WIDTH - 1);
        self.cursor
            .write_all_at(record.as_bytes(), 0)
            .map_err(|e| StoreError::Io {
                path: self.cursor_path.clone(),
                detail: e.to_string(),
            })
    }

    /// Appends one line (a JSON object) to the dead-letter file and syncs it: a dead letter is
    /// the only trace of an event the receiver never took.
    pub fn dead_letter(&self, line: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let io = |e: std::io::Error| StoreError::Io {
            path: self.dead.clone(),
            detail: e.to_string(),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead)
            .map_err(io)?;
        f.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dexpulse-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn frames(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..=to)
            .map(|s| {
                (
                    s,
                    format!("{{\"type\":\"signal\",\"seq\":{s}}}").into_bytes(),
                )
            })
            .collect()
    }

    fn append(log: &mut EventLog, f: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        log.append(f.iter().map(|(s, b)| (*s, b.as_slice())), None)
    }

    #[test]
    fn a_sink_keeps_its_cursor_and_its_dead_letters() {
        let d = dir("sink");
        let f = SinkFiles::open(&d, "hook").unwrap();
        assert_eq!(f.cursor().unwrap(), None);
        let e = Epoch::parse("e1").unwrap();
        f.save_cursor(&e, 41).unwrap();
        f.save_cursor(&e, 42).unwrap();
        assert_eq!(
            SinkFiles::open(&d, "hook").unwrap().cursor().unwrap(),
            Some((e.clone(), 42))
        );
        f.dead_letter(r#"{"seq":1}"#).unwrap();
        f.dead_letter(r#"{"seq":2}"#).unwrap();
        let dead = std::fs::read_to_string(f.dead_letter_path()).unwrap();
        assert_eq!(dead, "{\"seq\":1}\n{\"seq\":2}\n");
        // A shorter record replaces a longer one whole.
        f.save_cursor(&Epoch::parse("e22").unwrap(), 7).unwrap();
        f.save_cursor(&e, 8).unwrap();
        assert_eq!(f.cursor().unwrap(), Some((e.clone(), 8)));
        std::fs::write(d.join("sinks/hook.cursor"), "junk").unwrap();
        assert!(matches!(f.cursor(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_reopened_log_keeps_its_epoch_head_and_bytes() {
        let d = dir("reopen");
        let mut log = EventLog::open(&d, || Epoch::parse("e1").unwrap()).unwrap();
        assert_eq!(
            (log.epoch().as_str(), log.head(), log.oldest().unwrap()),
            ("e1", 0, 1)
        );
        append(&mut log, &frames(1, 300)).unwrap();
        drop(log);
        let log = EventLog::open(&d, || unreachable!("the epoch is kept")).unwrap();
        assert_eq!((log.epoch().as_str(), log.head()), ("e1", 300));
        assert_eq!(log.since(0, 1000).unwrap(), frames(1, 300));
        assert_eq!(log.since(255, 3).unwrap(), frames(256, 258));
        assert!(log.since(300, 10).unwrap().is_empty());
        assert_eq!(log.usage().unwrap().events, 300);
    }

    #[test]
    fn a_batch_that_does_not_follow_the_head_writes_nothing() {
        let d = dir("gap");
        let mut log = EventLog::open(&d, || Epoch::parse("e").unwrap()).unwrap();
        append(&mut log, &frames(1, 2)).unwrap();
        let mut bad = frames(3, 4);
        bad.push((9, b"x".to_vec()));
        assert!(append(&mut log, &bad).is_err());
        assert_eq!(log.head(), 2);
        drop(log);
        let log = EventLog::open(&d, || Epoch::parse("other").unwrap()).unwrap();
        assert_eq!((log.head(), log.since(0, 10).unwrap()), (2, frames(1, 2)));
    }

    #[test]
    fn retention_trims_the_oldest_and_keeps_the_head() {
        let d = dir("trim");
        let mut log = EventLog::open(&d, || Epoch::parse("e").unwrap()).unwrap();
        append(&mut log, &frames(1, 100)).unwrap();
        assert_eq!(log.trim_below(91, 1000).unwrap(), 90);
        assert_eq!((log.oldest().unwrap(), log.head()), (91, 100));
        assert_eq!(log.since(0, 5).unwrap(), frames(91, 95));
        assert_eq!(
            log.usage().unwrap().stored_bytes,
            log.count_frame_bytes().unwrap()
        );
        append(&mut log, &frames(101, 101)).unwrap();
        assert_eq!(log.trim_below(1000, 5).unwrap(), 5, "at most `max` at once");
        assert_eq!(log.trim_below(1000, 1000).unwrap(), 6);
        assert_eq!((log.oldest().unwrap(), log.head()), (102, 101));
        assert_eq!(log.usage().unwrap().stored_bytes, 0);
        append(&mut log, &frames(102, 150)).unwrap();
        let kept = log.usage().unwrap().stored_bytes;
        assert_eq!(kept, log.count_frame_bytes().unwrap());
        drop(log);
        let log = EventLog::open(&d, || unreachable!()).unwrap();
        assert_eq!(log.usage().unwrap().stored_bytes, kept, "kept in meta");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let d = dir("lock");
        let _first = EventLog::open(&d, || Epoch::parse("e").unwrap()).unwrap();
        let second = EventLog::open(&d, || Epoch::parse("e").unwrap());
        assert!(
            matches!(&second, Err(StoreError::Locked { path }) if path.ends_with(FILE)),
            "{:?}",
            second.err()
        );
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused_and_left_alone() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        let junk = b"this is not a database, and nobody may overwrite it".repeat(100);
        std::fs::write(d.join(FILE), &junk).unwrap();
        let err = EventLog::open(&d, || Epoch::parse("e").unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(FILE), "{err}");
        assert_eq!(std::fs::read(d.join(FILE)).unwrap(), junk);

        let d = dir("foreign");
        std::fs::create_dir_all(&d).unwrap();
        {
            let db = Database::create(d.join(FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let t: TableDefinition<&str, u64> = TableDefinition::new("theirs");
                txn.open_table(t).unwrap().insert("k", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = EventLog::open(&d, || Epoch::parse("e").unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");

        // An empty file is not a new log either: refused, and still empty.
        let d = dir("empty");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE), b"").unwrap();
        let err = EventLog::open(&d, || Epoch::parse("e").unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(std::fs::metadata(d.join(FILE)).unwrap().len(), 0);
    }
}
