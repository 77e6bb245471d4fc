//! The history room: the epoch, the head, and the retained frames that `resume_from` and
//! `GET /v1/signals` read. [`History`] is the seam a durable log or a cluster's stream
//! implements; [`MemoryHistory`], a ring in memory, is the first implementation.
//!
//! Seqs are dense (each publish takes the next one), so the ring is indexed by `seq − oldest`:
//! a read finds its start in O(1) and copies only the frames it returns, in chunks, never the
//! whole ring under the publisher's lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use dexpulse_core::model::EventMeta;
use dexpulse_core::protocol::{signal_message, Epoch};
use dexpulse_core::signal::checkpoint::Checkpoint;

use super::Settings;

/// One published signal: the message every matching session sends as is (serialized once),
/// and what filters read.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub published_at_us: i64,
    pub meta: EventMeta,
    /// `{"type":"signal","seq":…,"published_at_us":…,"event":{…}}`, UTF-8.
    pub text: Bytes,
}

/// What a read of the history found.
#[derive(Debug, Default, Clone)]
pub struct Since {
    /// Retained frames with `seq` greater than asked, oldest first, at most the limit.
    pub frames: Vec<Arc<Frame>>,
    /// The oldest retained seq (head + 1 when nothing is retained).
    pub oldest_seq: u64,
    /// The head when the read was made.
    pub head: u64,
}

impl Since {
    /// Whether every event after `after` was still retained when this was read.
    pub fn complete_after(&self, after: u64) -> bool {
        after.saturating_add(1) >= self.oldest_seq && after <= self.head
    }
}

/// A read of frames the memory no longer holds, in progress. The caller awaits it (a session
/// in a cancellable arm, `/v1/signals`, the ingest); it never blocks an async worker.
pub type Reading = std::pin::Pin<Box<dyn std::future::Future<Output = Since> + Send + 'static>>;

/// What a read found: all of it, or the read of the archive (the log on disk, the stream)
/// that finishes it.
pub enum Read {
    Done(Since),
    Archive(Reading),
}

/// Where published frames are kept, in seq order.
pub trait History: Send + Sync {
    /// Names the lifetime of the numbering: a client holding a seq of another epoch knows it
    /// cannot resume from it.
    fn epoch(&self) -> Epoch;
    /// The seq of the last published frame (0 before the first).
    fn head(&self) -> u64;
    /// The newest seq the history will have without anything new being published: the head,
    /// or for an edge still catching up with its stream, the stream's last (where a new reader
    /// that wants only what comes next starts).
    fn known_head(&self) -> u64 {
        self.head()
    }
    /// Gives each event the next seq, builds its frame and keeps it, with the engine state
    /// that reflects it where the history keeps one. Only one publisher calls this, so seq
    /// order is publish order. The head moves before this returns. The frames returned are the
    /// ones to send: a durable history returns none while it cannot write, and then also
    /// those that waited.
    fn append(
        &self,
        published_at_us: i64,
        events: Vec<(EventMeta, String)>,
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>>;
    /// Frames with `seq > after`, oldest first, at most `limit`, of those in memory: never
    /// blocks, never waits.
    fn since(&self, after: u64, limit: usize) -> Since;
    /// The same, whole: from memory, and where memory falls short, from the archive.
    fn read_since(&self, after: u64, limit: usize) -> Read {
        Read::Done(self.since(after, limit))
    }
    /// The oldest retained seq (head + 1 when nothing is retained).
    fn oldest(&self) -> u64;
    /// The newest `limit` frames with `seq < before` (all when `before` is `None`), oldest
    /// first, of those in memory.
    fn before(&self, before: Option<u64>, limit: usize) -> Since;
    /// The same, whole: from memory and the archive.
    fn read_before(&self, before: Option<u64>, limit: usize) -> Read {
        Read::Done(self.before(before, limit))
    }
    /// Background upkeep (retention, retrying a failed write); returns frames that waited and
    /// are now published, for the caller to send.
    fn maintain(&self, _now_us: i64) -> Vec<Arc<Frame>> {
        Vec::new()
    }
    /// Someone still needs every frame after `seq` (an ingest's stream has not taken them
    /// yet): age alone must not evict them, only the hard cap. A history on disk keeps them
    /// anyway.
    fn hold_after(&self, _seq: u64) {}
}

/// What a signal event's JSON says that filters read.
#[derive(serde::Deserialize)]
pub struct EventFields {
    chain: String,
    pair_address: String,
    kind: dexpulse_core::model::Kind,
    direction: dexpulse_core::model::Direction,
    score: u8,
}

impl EventFields {
    pub fn meta(self) -> EventMeta {
        EventMeta {
            pair: dexpulse_core::model::PairKey::new(self.chain, self.pair_address),
            kind: self.kind,
            direction: self.direction,
            score: self.score,
        }
    }
}

/// Bytes numbered elsewhere (a cluster's stream) that are not an event.
#[derive(Debug, thiserror::Error)]
pub enum BadEvent {
    #[error("event {seq}: not UTF-8: {source}")]
    Utf8 {
        seq: u64,
        source: std::str::Utf8Error,
    },
    #[error("event {seq}: {source}")]
    Json { seq: u64, source: serde_json::Error },
}

impl Frame {
    /// The frame of an event numbered elsewhere (a cluster's stream): the same bytes any node
    /// builds from the same `seq`, time and event.
    pub fn of_event(seq: u64, published_at_us: i64, event_json: &str) -> Result<Frame, BadEvent> {
        let fields: EventFields =
            serde_json::from_str(event_json).map_err(|source| BadEvent::Json { seq, source })?;
        Ok(Frame {
            seq,
            published_at_us,
            meta: fields.meta(),
            text: Bytes::from(signal_message(seq, published_at_us, event_json)),
        })
    }

    /// The event JSON inside the frame (`…,"event":{…}}`), without copying.
    pub fn event_json(&self) -> Bytes {
        const KEY: &[u8] = b"\"event\":";
        let text = self.text.as_ref();
        let start = text
            .windows(KEY.len())
            .position(|w| w == KEY)
            .map_or(0, |p| p + KEY.len());
        self.text
            .slice(start..text.len().saturating_sub(1).max(start))
    }
}

/// The retained ring in memory: at least `retain_events` frames and at least those younger
/// than `retain`, never more than `retain_max_events` nor `retain_max_bytes` of frames (the
/// newest frame is always kept).
pub struct MemoryHistory {
    epoch: Epoch,
    settings: Settings,
    head: AtomicU64,
    /// Frames after this seq are evicted only by the hard cap (see `History::hold_after`).
    held_after: AtomicU64,
    ring: Mutex<Ring>,
}

/// The frames and their bytes, under one lock.
#[derive(Default)]
struct Ring {
    frames: VecDeque<Arc<Frame>>,
    bytes: usize,
}

impl std::ops::Deref for Ring {
    type Target = VecDeque<Arc<Frame>>;
    fn deref(&self) -> &VecDeque<Arc<Frame>> {
        &self.frames
    }
}

impl Ring {
    fn push(&mut self, f: Arc<Frame>) {
        self.bytes += f.text.len();
        self.frames.push_back(f);
    }

    fn pop(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.text.len();
        }
    }
}

impl MemoryHistory {
    pub fn new(settings: Settings, epoch: Epoch) -> MemoryHistory {
        MemoryHistory {
            epoch,
            settings,
            head: AtomicU64::new(0),
            held_after: AtomicU64::new(u64::MAX),
            ring: Mutex::new(Ring::default()),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Pushes, pops and copies only: a panic under the lock leaves it consistent.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evict(&self, ring: &mut Ring, now_us: i64) {
        let keep_us = i64::try_from(self.settings.retain.as_micros()).unwrap_or(i64::MAX);
        let held_after = self.held_after.load(Ordering::Acquire);
        while let Some(front) = ring.front() {
            let over_cap = ring.len() > self.settings.retain_max_events
                || (ring.bytes > self.settings.retain_max_bytes && ring.len() > 1);
            let expendable = ring.len() > self.settings.retain_events
                && front.seq <= held_after
                && now_us.saturating_sub(front.published_at_us) > keep_us;
            if over_cap || expendable {
                ring.pop();
            } else {
                break;
            }
        }
    }

    /// Bytes of the frames retained now.
    pub fn bytes(&self) -> usize {
        self.ring().bytes
    }

    /// Frames retained now.
    pub fn len(&self) -> usize {
        self.ring().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemoryHistory {
    /// A ring that continues a log: `head` and the newest retained `frames` (oldest first).
    pub fn restored(
        settings: Settings,
        epoch: Epoch,
        head: u64,
        frames: Vec<Arc<Frame>>,
    ) -> MemoryHistory {
        let h = MemoryHistory::new(settings, epoch);
        h.head.store(head, Ordering::Release);
        let mut ring = h.ring();
        for f in frames {
            ring.push(f);
        }
        drop(ring);
        h
    }

    /// The frames `events` would become, numbered after the head; nothing is kept yet.
    pub fn number(
        &self,
        published_at_us: i64,
        events: Vec<(EventMeta, String)>,
    ) -> Vec<Arc<Frame>> {
        let mut seq = self.head.load(Ordering::Acquire);
        events
            .into_iter()
            .map(|(meta, json)| {
                seq += 1;
                Arc::new(Frame {
                    seq,
                    published_at_us,
                    meta,
                    text: Bytes::from(signal_message(seq, published_at_us, &json)),
                })
            })
            .collect()
    }

    /// Keeps frames `number` made (the caller is the only publisher) and moves the head.
    pub fn keep(&self, frames: &[Arc<Frame>]) {
        let Some(last) = frames.last() else {
            return;
        };
        let mut ring = self.ring();
        for f in frames {
            ring.push(f.clone());
        }
        self.evict(&mut ring, last.published_at_us);
        // The head moves while the ring lock is held: a reader never sees a head its ring
        // lacks.
        self.head.store(last.seq, Ordering::Release);
    }
}

impl History for MemoryHistory {
    fn hold_after(&self, seq: u64) {
        self.held_after.store(seq, Ordering::Release);
    }

    fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn append(
        &self,
        published_at_us: i64,
        events: Vec<(EventMeta, String)>,
        _state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        let frames = self.number(published_at_us, events);
        self.keep(&frames);
        frames
    }

    fn since(&self, after: u64, limit: usize) -> Since {
        let ring = self.ring();
        let head = self.head.load(Ordering::Acquire);
        let oldest_seq = ring.front().map_or(head + 1, |f| f.seq);
        // Dense seqs: the frame after `after` sits at `after + 1 − oldest`.
        let start = usize::try_from(after.saturating_add(1).saturating_sub(oldest_seq))
            .unwrap_or(usize::MAX);
        let frames = ring
            .range(start.min(ring.len())..)
            .take(limit)
            .cloned()
            .collect();
        Since {
            frames,
            oldest_seq,
            head,
        }
    }

    fn oldest(&self) -> u64 {
        let ring = self.ring();
        ring.front()
            .map_or_else(|| self.head.load(Ordering::Acquire) + 1, |f| f.seq)
    }

    fn before(&self, before: Option<u64>, limit: usize) -> Since {
        let ring = self.ring();
        let head = self.head.load(Ordering::Acquire);
        let oldest_seq = ring.front().map_or(head + 1, |f| f.seq);
        let end = match before {
            None => ring.len(),
            Some(b) => usize::try_from(b.saturating_sub(oldest_seq))
                .unwrap_or(usize::MAX)
                .min(ring.len()),
        };
        let start = end.saturating_sub(limit);
        let frames = ring.range(start..end).cloned().collect();
        Since {
            frames,
            oldest_seq,
            head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dexpulse_core::model::{Direction, Kind, PairKey};
    use std::time::Duration;

    fn meta(i: u64) -> (EventMeta, String) {
        (
            EventMeta {
                pair: PairKey::new("sim", format!("p{i}")),
                kind: Kind::RugWarning,
                direction: Direction::Bearish,
                score: 90,
            },
            format!("{{\"n\":{i}}}"),
        )
    }

    fn ring(retain_events: usize, retain_max_events: usize, retain: Duration) -> MemoryHistory {
        MemoryHistory::new(
            Settings {
                retain_events,
                retain,
                retain_max_events,
                ..Settings::default()
            },
            Epoch::parse("e").unwrap(),
        )
    }

    fn seqs(s: &Since) -> Vec<u64> {
        s.frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn large_frames_are_bounded_by_bytes_as_well_as_count() {
        let h = MemoryHistory::new(
            Settings {
                retain_events: 1_000,
                retain: Duration::from_secs(3_600),
                retain_max_events: 1_000,
                retain_max_bytes: 10_000,
                ..Settings::default()
            },
            Epoch::parse("e").unwrap(),
        );
        let big = |i: u64| {
            let (m, _) = meta(i);
            (m, format!("{{\"s\":\"{}\"}}", "x".repeat(3_000)))
        };
        h.append(10, (1..=10).map(big).collect(), None);
        assert_eq!(h.head(), 10);
        assert!(h.bytes() <= 10_000, "{}", h.bytes());
        assert_eq!(h.len(), 3, "three frames of ~3 KB fit in 10 KB");
        assert_eq!(h.oldest(), 8);
        // One frame larger than the cap is still kept: the newest frame always is.
        let (m, _) = meta(11);
        h.append(
            11,
            vec![(m, format!("{{\"s\":\"{}\"}}", "y".repeat(20_000)))],
            None,
        );
        assert_eq!((h.len(), h.oldest()), (1, 11));
    }

    #[test]
    fn seq_is_dense_and_reads_index_the_ring() {
        let h = ring(3, 3, Duration::ZERO);
        let frames = h.append(10, (1..=5).map(meta).collect(), None);
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(h.head(), 5);
        assert_eq!(h.len(), 3);
        let s = h.since(1, 100);
        assert_eq!((s.oldest_seq, s.head), (3, 5));
        assert!(!s.complete_after(1), "2 is gone");
        assert_eq!(seqs(&s), [3, 4, 5]);
        let s = h.since(2, 100);
        assert!(s.complete_after(2));
        assert_eq!(seqs(&h.since(3, 1)), [4], "only what was asked for");
        assert!(h.since(5, 10).frames.is_empty() && h.since(5, 10).complete_after(5));
        assert!(
            !h.since(9, 10).complete_after(9),
            "a seq from the future is not ours"
        );
        assert_eq!(seqs(&h.before(None, 2)), [4, 5]);
        assert_eq!(seqs(&h.before(Some(5), 10)), [3, 4]);
        assert_eq!(seqs(&h.before(Some(1), 10)), Vec::<u64>::new());
        let f = &frames[0];
        assert_eq!(
            std::str::from_utf8(&f.text).unwrap(),
            "{\"type\":\"signal\",\"seq\":1,\"published_at_us\":10,\"event\":{\"n\":1}}"
        );
    }

    #[test]
    fn retention_keeps_recent_events_beyond_the_count() {
        let h = ring(2, 100, Duration::from_secs(3600));
        h.append(1_000_000, (1..=5).map(meta).collect(), None);
        assert_eq!(h.len(), 5, "all younger than the retention time");
        h.append(1_000_000 + 3_601_000_000, vec![meta(6)], None);
        assert_eq!(h.len(), 2, "the old ones expired down to the count");
    }
}
