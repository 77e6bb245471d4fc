//! The event log on disk: one redb file in the data directory, holding each published frame
//! exactly as it was sent, keyed by its seq (big-endian, so the file's order is seq order),
//! and a meta table with the format, the epoch and the head. The only module that touches the
//! data directory's files. It never overwrites a file it did not write: a foreign, corrupt or
//! locked file is refused with an error naming it.
//!
//! `hub::durable` writes each batch here before it sends it.

use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

/// `[store]`: where the event log lives. No directory: history in memory only (a new epoch at
/// every start).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    pub fn parse(raw: &RawSettings) -> Settings {
        Settings {
            data_dir: raw.data_dir.clone().filter(|d| !d.as_os_str().is_empty()),
        }
    }
}

/// Seq (8 bytes, big-endian) → the frame's bytes.
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// `format`, `epoch`, `head` (8 bytes, big-endian).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// What the `format` key says in a log this version wrote.
pub const FORMAT: &str = "dexpulse.log/v1";
/// The log's file name inside the data directory.
pub const FILE: &str = "events.redb";

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
    tables: usize,
}

/// An open log.
pub struct EventLog {
    db: Database,
    path: PathBuf,
    epoch: String,
    head: u64,
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
    pub fn open(dir: &Path, new_epoch: impl FnOnce() -> String) -> Result<EventLog, StoreError> {
        let path = dir.join(FILE);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            detail: format!("cannot create the data directory: {e}"),
        })?;
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            other => StoreError::Corrupt {
                path: path.clone(),
                detail: other.to_string(),
            },
        })?;
        let mut log = EventLog {
            db,
            path,
            epoch: String::new(),
            head: 0,
        };
        let Meta {
            format,
            epoch,
            head,
            tables,
        } = log.read_meta()?;
        match format.as_deref() {
            Some(FORMAT) => {
                log.epoch = epoch.ok_or_else(|| log.corrupt("no epoch in the meta table"))?;
                log.head = head.ok_or_else(|| log.corrupt("no head in the meta table"))?;
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

    fn corrupt(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    fn read_meta(&self) -> Result<Meta, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.corrupt(e))?;
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
        let head = meta
            .get("head")
            .map_err(|e| self.corrupt(e))?
            .map(|v| seq_of(v.value()));
        Ok(Meta {
            format: text("format")?,
            epoch: text("epoch")?,
            head,
            tables,
        })
    }

    fn write_meta_new(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("format", FORMAT.as_bytes())
                .map_err(|e| self.io(e))?;
            meta.insert("epoch", self.epoch.as_bytes())
                .map_err(|e| self.io(e))?;
            meta.insert("head", be(0).as_slice())
                .map_err(|e| self.io(e))?;
            txn.open_table(EVENTS).map_err(|e| self.io(e))?;
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
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last committed seq (0 before the first).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Commits frames in one write transaction, the head with them. Their seqs must follow
    /// the head densely; when this returns `Ok` they are on disk, and only then may they be
    /// sent. On an error nothing of the batch is kept and the head does not move.
    pub fn append<'a>(
        &mut self,
        frames: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let mut head = self.head;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.io(e))?;
            for (seq, bytes) in frames {
                if seq != head + 1 {
                    return Err(self.io(format!(
                        "seq {seq} does not follow the head {head}: nothing written"
                    )));
                }
                events
                    .insert(be(seq).as_slice(), bytes)
                    .map_err(|e| self.io(e))?;
                head = seq;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("head", be(head).as_slice())
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))?;
        self.head = head;
        Ok(())
    }

    /// Frames with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let from = be(after.saturating_add(1));
        let mut out = Vec::new();
        for item in events
            .range::<&[u8]>(from.as_slice()..)
            .map_err(|e| self.corrupt(e))?
            .take(limit)
        {
            let (k, v) = item.map_err(|e| self.corrupt(e))?;
            out.push((seq_of(k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The oldest retained seq (head + 1 when nothing is retained).
    pub fn oldest(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        let first = events.first().map_err(|e| self.corrupt(e))?;
        Ok(first.map_or(self.head + 1, |(k, _)| seq_of(k.value())))
    }

    /// Frames retained.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.corrupt(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.corrupt(e))?;
        events.len().map_err(|e| self.corrupt(e))
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Removes the frames with `seq < keep_from` (retention); the head stays. Returns how
    /// many went.
    pub fn trim_below(&mut self, keep_from: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let mut removed = 0;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.io(e))?;
            let end = be(keep_from);
            events
                .retain_in::<&[u8], _>(..end.as_slice(), |_, _| {
                    removed += 1;
                    false
                })
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))?;
        Ok(removed)
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
        log.append(f.iter().map(|(s, b)| (*s, b.as_slice())))
    }

    #[test]
    fn a_reopened_log_keeps_its_epoch_head_and_bytes() {
        let d = dir("reopen");
        let mut log = EventLog::open(&d, || "e1".into()).unwrap();
        assert_eq!(
            (log.epoch(), log.head(), log.oldest().unwrap()),
            ("e1", 0, 1)
        );
        append(&mut log, &frames(1, 300)).unwrap();
        drop(log);
        let log = EventLog::open(&d, || unreachable!("the epoch is kept")).unwrap();
        assert_eq!((log.epoch(), log.head()), ("e1", 300));
        assert_eq!(log.since(0, 1000).unwrap(), frames(1, 300));
        assert_eq!(log.since(255, 3).unwrap(), frames(256, 258));
        assert!(log.since(300, 10).unwrap().is_empty());
        assert_eq!(log.len().unwrap(), 300);
    }

    #[test]
    fn a_batch_that_does_not_follow_the_head_writes_nothing() {
        let d = dir("gap");
        let mut log = EventLog::open(&d, || "e".into()).unwrap();
        append(&mut log, &frames(1, 2)).unwrap();
        let mut bad = frames(3, 4);
        bad.push((9, b"x".to_vec()));
        assert!(append(&mut log, &bad).is_err());
        assert_eq!(log.head(), 2);
        drop(log);
        let log = EventLog::open(&d, || "other".into()).unwrap();
        assert_eq!((log.head(), log.since(0, 10).unwrap()), (2, frames(1, 2)));
    }

    #[test]
    fn retention_trims_the_oldest_and_keeps_the_head() {
        let d = dir("trim");
        let mut log = EventLog::open(&d, || "e".into()).unwrap();
        append(&mut log, &frames(1, 100)).unwrap();
        assert_eq!(log.trim_below(91).unwrap(), 90);
        assert_eq!((log.oldest().unwrap(), log.head()), (91, 100));
        assert_eq!(log.since(0, 5).unwrap(), frames(91, 95));
        append(&mut log, &frames(101, 101)).unwrap();
        assert_eq!(log.trim_below(1000).unwrap(), 11);
        assert_eq!((log.oldest().unwrap(), log.head()), (102, 101));
    }

    #[test]
    fn a_second_opener_is_refused() {
        let d = dir("lock");
        let _first = EventLog::open(&d, || "e".into()).unwrap();
        let second = EventLog::open(&d, || "e".into());
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
        let err = EventLog::open(&d, || "e".into()).err().unwrap();
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
        let err = EventLog::open(&d, || "e".into()).err().unwrap();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }
}
