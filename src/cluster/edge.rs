//! The edge's side of the stream (docs/cluster.md, "Edge"): an ordered consumer from the
//! edge's head into its hub, and [`StreamHistory`], the [`History`] whose numbering is the
//! stream's. Recent frames sit in a ring in memory; a read older than the ring goes to the
//! stream (direct gets), so a client may resume on any edge with a seq another gave it. Every
//! edge builds a frame from the message alone (its stream seq, the ingest's time, the event
//! JSON), so two edges send the same bytes.
//!
//! Faults: while NATS is away the edge keeps its sessions and its ring, says not ready, and
//! when NATS is back it asks for what follows its own head (no gap, no duplicate). A stream
//! with another identity (deleted and created again) is a new epoch: the ring starts over and
//! every session is closed with 1012, so its client resumes and learns `recovered: false`.
//!
//! Trust: with a verify key (docs/cluster.md, "Trust") every message is checked before its
//! frame is built, on the live path and on reads of the stream's past; one the ingest did not
//! sign, or one signed but replayed, is never served (its seq is a gap, as a filtered-out
//! event's is), is counted, and makes readiness say so. Pair states likewise.
//!
//! The pairs task follows the pairs bucket into the hub's pairs room.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{EventMeta, PairKey};
use dexpulse_core::protocol::Epoch;
use dexpulse_core::signal::checkpoint::Checkpoint;

use super::retry::Retry;
use super::stream::{pair_key, EventStream, Stored};
use super::trust::{Forgery, Refused, Replay, Verifier};
use super::{Cause, ClusterError, ForgeryAlarm, Keys, Settings};
use crate::health::Health;
use crate::hub::history::Read;
use crate::hub::{self, BadEvent, Frame, History, Hub, MemoryHistory, Since};
use crate::metrics::ClusterMetrics;
use crate::time::Clock;

/// Messages taken from the consumer before the hub sends them on, at most.
const BATCH: usize = 256;
/// How often the edge compares the stream's identity and bounds with its own.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A reader's read of the stream's past, at most (then it is answered from memory).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// What an edge checks messages with: its verify key, and what it refused so far.
pub struct Trust {
    verifier: Verifier,
    subject: String,
    refused: std::sync::Mutex<Refused>,
    replay: std::sync::Mutex<Replay>,
    alarm: Arc<ForgeryAlarm>,
}

impl Trust {
    /// `None` when the settings hold no verify key (`insecure = true`).
    pub fn of(settings: &Settings, alarm: Arc<ForgeryAlarm>) -> Option<Arc<Trust>> {
        match &settings.keys {
            Keys::Verify(v) => Some(Arc::new(Trust {
                verifier: (**v).clone(),
                subject: settings.subject.clone(),
                refused: std::sync::Mutex::default(),
                replay: std::sync::Mutex::default(),
                alarm,
            })),
            _ => None,
        }
    }

    /// Judges an event the follower took, in stream order: signed, and not a replay.
    fn admit(&self, m: &Stored) -> Result<(), Forgery> {
        let judged = m.verify(&self.subject, &self.verifier).and_then(|()| {
            let (epoch, seq) = m.origin.as_ref().ok_or(Forgery::Malformed)?;
            self.replay
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(epoch, *seq)
        });
        if let Err(why) = &judged {
            self.refuse(m.seq, why);
        }
        judged
    }

    /// A new stream: its seqs and the ingest's origins in it start over.
    fn restart(&self) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Refused::default();
        *self.replay.lock().unwrap_or_else(|p| p.into_inner()) = Replay::default();
    }

    fn refuse(&self, seq: u64, why: &Forgery) {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
        self.alarm.refused("event", &format!("seq {seq}"), why);
    }

    /// Whether an event read from the stream's past may be served: the follower did not refuse
    /// it, and it is signed.
    fn servable(&self, m: &Stored) -> bool {
        if self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(m.seq)
        {
            return false;
        }
        match m.verify(&self.subject, &self.verifier) {
            Ok(()) => true,
            Err(why) => {
                self.refuse(m.seq, &why);
                false
            }
        }
    }
}

/// The frame every edge builds from one stored event.
pub fn frame(m: &Stored) -> Result<Arc<Frame>, BadEvent> {
    let json =
        std::str::from_utf8(&m.payload).map_err(|source| BadEvent::Utf8 { seq: m.seq, source })?;
    Frame::of_event(m.seq, m.published_at_us, json).map(Arc::new)
}

/// Why an event in the stream is left out (as a gap).
#[derive(Debug, thiserror::Error)]
enum Skipped {
    #[error("refused: {0}")]
    Refused(#[from] Forgery),
    #[error(transparent)]
    Unreadable(#[from] BadEvent),
}

/// The history of an edge: the stream's numbering, a ring of recent frames, older ones read
/// from the stream. Cheap to clone: the follower keeps one to feed it.
#[derive(Clone)]
pub struct StreamHistory {
    inner: Arc<Inner>,
}

/// An edge's epoch as a value: a placeholder of this process before the first connection, or
/// the stream's identity, with the time its numbering was found reset under that identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEpoch {
    Unconnected(Epoch),
    Stream {
        identity: Epoch,
        reset_us: Option<i64>,
    },
}

impl EdgeEpoch {
    /// The name clients see (`epoch` in `welcome`, the resume token's epoch).
    pub fn name(&self) -> Epoch {
        match self {
            EdgeEpoch::Unconnected(e) => e.derived("unconnected-", None),
            EdgeEpoch::Stream { identity, reset_us } => identity.derived("", *reset_us),
        }
    }

    /// Whether this epoch numbers the stream of that identity (reset or not).
    pub fn is_of(&self, stream: &Epoch) -> bool {
        matches!(self, EdgeEpoch::Stream { identity, .. } if identity == stream)
    }
}

struct Inner {
    settings: hub::Settings,
    /// Replaced whole when the numbering jumps (a new epoch, or a gap in the stream).
    ring: RwLock<Arc<MemoryHistory>>,
    /// The ring's epoch as a value (the ring has its name).
    epoch: RwLock<EdgeEpoch>,
    /// The stream's oldest seq as last seen (0: not known yet).
    first: AtomicU64,
    /// The stream's newest seq when the follower last connected (0: not known yet).
    last: AtomicU64,
    /// The stream, for reads older than the ring (absent until the first connection).
    reader: RwLock<Option<EventStream>>,
    /// What reads of the stream's past are checked with (`None`: insecure).
    trust: Option<Arc<Trust>>,
}

impl StreamHistory {
    /// Before the first connection the epoch is a placeholder of this process: a client that
    /// connects then learns nothing it could resume from.
    pub fn new(settings: hub::Settings, clock: &Clock, trust: Option<Arc<Trust>>) -> StreamHistory {
        let epoch = EdgeEpoch::Unconnected(Hub::new_epoch(clock));
        StreamHistory {
            inner: Arc::new(Inner {
                ring: RwLock::new(Arc::new(MemoryHistory::new(settings.clone(), epoch.name()))),
                epoch: RwLock::new(epoch),
                settings,
                first: AtomicU64::new(0),
                last: AtomicU64::new(0),
                reader: RwLock::new(None),
                trust,
            }),
        }
    }

    /// What the follower checks with.
    pub fn trust(&self) -> Option<Arc<Trust>> {
        self.inner.trust.clone()
    }

    fn ring(&self) -> Arc<MemoryHistory> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The numbering continues after `head` in `epoch`, with nothing retained.
    fn restart(&self, epoch: EdgeEpoch, head: u64) {
        let ring =
            MemoryHistory::restored(self.inner.settings.clone(), epoch.name(), head, Vec::new());
        *self.inner.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        *self.inner.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch;
    }

    /// The epoch as a value.
    pub fn edge_epoch(&self) -> EdgeEpoch {
        self.inner
            .epoch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_reader(&self, stream: EventStream) {
        *self.inner.reader.write().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    }

    fn set_first(&self, first: u64) {
        self.inner.first.store(first, Ordering::Release);
    }

    fn set_last(&self, last: u64) {
        self.inner.last.store(last, Ordering::Release);
    }

    /// Keeps frames taken from the stream, in order after the head (the follower is the only
    /// caller).
    fn keep(&self, frames: &[Arc<Frame>]) {
        self.ring().keep(frames);
    }

    /// The stream's oldest seq, or the ring's when the stream's is not known.
    fn stream_first(&self, ring: &MemoryHistory) -> u64 {
        match self.inner.first.load(Ordering::Acquire) {
            0 => ring.oldest(),
            f => f.min(ring.oldest()),
        }
    }

    /// A read of the stream's seqs `from..=to` for a reader: awaited by its caller (no worker
    /// blocks on it), bounded in time; on a failure, what the ring had (`recent`).
    fn read_range(
        &self,
        from: u64,
        to: u64,
        recent: Since,
        merge: fn(Vec<Arc<Frame>>, Since, u64) -> Since,
    ) -> Read {
        let stream = self
            .inner
            .reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(stream) = stream else {
            return Read::Done(recent);
        };
        let me = self.clone();
        let first = self.stream_first(&self.ring());
        Read::Archive(Box::pin(async move {
            match tokio::time::timeout(READ_TIMEOUT, stream.range(from, to)).await {
                Ok(Ok(stored)) => merge(me.frames_of(stored), recent, first),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "a read of the stream failed; answering from memory");
                    recent
                }
                Err(_) => {
                    tracing::warn!("a read of the stream timed out; answering from memory");
                    recent
                }
            }
        }))
    }

    fn frames_of(&self, stored: Vec<Stored>) -> Vec<Arc<Frame>> {
        stored
            .iter()
            .filter(|m| self.inner.trust.as_ref().is_none_or(|t| t.servable(m)))
            .filter_map(|m| match frame(m) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(error = %e, "an event in the stream is unreadable; skipped");
                    None
                }
            })
            .collect()
    }
}

impl History for StreamHistory {
    fn epoch(&self) -> Epoch {
        self.ring().epoch()
    }

    fn head(&self) -> u64 {
        self.ring().head()
    }

    fn known_head(&self) -> u64 {
        self.ring()
            .head()
            .max(self.inner.last.load(Ordering::Acquire))
    }

    fn append(
        &self,
        _published_at_us: i64,
        events: Vec<(EventMeta, String)>,
        _state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        // An edge has no engine: its numbering is the stream's.
        if !events.is_empty() {
            tracing::error!(
                events = events.len(),
                "an edge was asked to publish; refused"
            );
        }
        Vec::new()
    }

    fn since(&self, after: u64, limit: usize) -> Since {
        self.ring().since(after, limit)
    }

    fn read_since(&self, after: u64, limit: usize) -> Read {
        let ring = self.ring();
        let mut recent = ring.since(after, limit);
        let first = self.stream_first(&ring);
        if recent.complete_after(after) || after >= recent.head {
            recent.oldest_seq = first.min(recent.oldest_seq);
            return Read::Done(recent);
        }
        // Older than the ring: a whole page from the stream, which holds everything the edge
        // has taken. Not "up to where the ring starts": the ring moves on during the read, and
        // a short page tells a session it has caught up.
        let from = after.saturating_add(1).max(first);
        let to = recent
            .head
            .min(from.saturating_add(limit as u64).saturating_sub(1));
        self.read_range(from, to, recent, |frames, recent, first| Since {
            frames,
            oldest_seq: first,
            head: recent.head,
        })
    }

    fn oldest(&self) -> u64 {
        let ring = self.ring();
        self.stream_first(&ring)
    }

    fn before(&self, before: Option<u64>, limit: usize) -> Since {
        self.ring().before(before, limit)
    }

    fn read_before(&self, before: Option<u64>, limit: usize) -> Read {
        let ring = self.ring();
        let mut recent = ring.before(before, limit);
        let first = self.stream_first(&ring);
        if recent.frames.len() == limit || recent.oldest_seq <= first {
            recent.oldest_seq = first.min(recent.oldest_seq);
            return Read::Done(recent);
        }
        let end = before
            .unwrap_or(u64::MAX)
            .min(recent.oldest_seq)
            .min(recent.head.saturating_add(1));
        let want = (limit - recent.frames.len()) as u64;
        let from = end.saturating_sub(want).max(first);
        let to = end.saturating_sub(1);
        self.read_range(from, to, recent, |mut frames, mut recent, first| {
            frames.append(&mut recent.frames);
            Since {
                frames,
                oldest_seq: first,
                head: recent.head,
            }
        })
    }
}

/// What the follower works with.
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub history: StreamHistory,
    pub settings: Settings,
    pub metrics: ClusterMetrics,
    pub health: Arc<Health>,
    pub clock: Clock,
    pub shutdown: CancellationToken,
}

/// Runs until shutdown: the stream into the hub, connecting again after every failure.
pub async fn follow(ctx: Ctx) -> Result<(), ClusterError> {
    let mut retry = Retry::here();
    loop {
        let mut progressed = false;
        let r = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = follow_once(&ctx, &mut progressed) => r,
        };
        let e = match r {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if progressed {
            retry.reset();
        }
        tracing::warn!(error = %e, head = ctx.history.head(), "the cluster's stream was lost; following again from the head");
        ctx.health.set_cluster_fault(Some(e.to_string()));
        ctx.metrics.reconnects.inc();
        if !retry.pause(&ctx.shutdown).await {
            return Ok(());
        }
    }
}

/// Keeps the frames gathered so far and sends them on.
fn flush(ctx: &Ctx, batch: &mut Vec<Arc<Frame>>) {
    if batch.is_empty() {
        return;
    }
    ctx.history.keep(batch);
    ctx.hub.deliver(batch);
    ctx.metrics.delivered.inc_by(batch.len() as u64);
    batch.clear();
}

/// Starts a new epoch: the numbering from 0, sessions closed to resume.
fn adopt_epoch(ctx: &Ctx, epoch: EdgeEpoch) {
    let was = ctx.history.edge_epoch();
    if was == epoch {
        return;
    }
    let now = epoch.name();
    ctx.history.restart(epoch, 0);
    if let Some(t) = ctx.history.trust() {
        t.restart();
    }
    if !matches!(was, EdgeEpoch::Unconnected(_)) {
        ctx.metrics.epoch_changes.inc();
        tracing::warn!(was = %was.name(), now = %now, "the cluster's stream was replaced: a new epoch; sessions are closed to resume");
    }
    ctx.hub.end_epoch();
}

async fn follow_once(ctx: &Ctx, progressed: &mut bool) -> Result<(), ClusterError> {
    let stream = EventStream::connect_reader(&ctx.settings).await?;
    let state = stream.state().await?;
    // Before a new epoch is adopted: a reader that starts at the head of it starts here.
    ctx.history.set_last(state.last);
    let trust = ctx.history.trust();
    // The same stream as before (reset or not) keeps its epoch; another is a new one.
    if !ctx.history.edge_epoch().is_of(&state.epoch) {
        adopt_epoch(
            ctx,
            EdgeEpoch::Stream {
                identity: state.epoch.clone(),
                reset_us: None,
            },
        );
    }
    ctx.history.set_reader(stream.clone());
    ctx.history.set_first(state.first);
    let head = ctx.history.head();
    if state.last < head {
        // The same stream holding fewer events than the edge has seen: numbering was reset
        // under the same identity. Treat it as a new epoch rather than send seqs twice.
        adopt_epoch(
            ctx,
            EdgeEpoch::Stream {
                identity: state.epoch.clone(),
                reset_us: Some(ctx.clock.now_us()),
            },
        );
    }
    let mut msgs = stream.follow(ctx.history.head() + 1).await?;
    let consumer = |detail: Cause| ClusterError::Consumer {
        stream: ctx.settings.stream.clone(),
        detail,
    };
    ctx.health.set_cluster_fault(None);
    tracing::info!(epoch = %ctx.history.epoch(), head = ctx.history.head(), first = state.first, last = state.last, "following the cluster's stream");
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Arc<Frame>> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = check.tick() => {
                let s = stream.state().await?;
                if !ctx.history.edge_epoch().is_of(&s.epoch) {
                    return Err(ClusterError::Replaced { stream: ctx.settings.stream.clone(), to: s.epoch.to_string() });
                }
                ctx.history.set_first(s.first);
                let head = ctx.history.head();
                ctx.metrics.lag_messages.set(i64::try_from(s.last.saturating_sub(head)).unwrap_or(i64::MAX));
                if s.last <= head {
                    ctx.metrics.lag_seconds.set(0.0);
                }
            }
            m = msgs.next() => {
                let mut next = Some(m);
                while let Some(m) = next.take() {
                    let m = match m {
                        None => return Err(consumer("ended".into())),
                        Some(Err(e)) => {
                            flush(ctx, &mut batch);
                            return Err(consumer(format!("failed: {e}").into()));
                        }
                        Some(Ok(m)) => m,
                    };
                    let (stored, pending, delivered) = match Stored::of_message(&m) {
                        Ok(x) => x,
                        Err(e) => {
                            flush(ctx, &mut batch);
                            return Err(consumer(format!("delivered without its metadata: {e}").into()));
                        }
                    };
                    if delivered > 1 {
                        ctx.metrics.redeliveries.inc();
                    }
                    let expected = ctx.history.head() + batch.len() as u64 + 1;
                    if stored.seq < expected {
                        // Already taken (a consumer recreated after a reconnect).
                    } else {
                        if stored.seq > expected {
                            flush(ctx, &mut batch);
                            tracing::warn!(from = expected, to = stored.seq - 1, "events the stream no longer holds were never taken; the numbering continues after them");
                            ctx.history.restart(ctx.history.edge_epoch(), stored.seq - 1);
                        }
                        let admitted = match &trust {
                            Some(t) => t.admit(&stored),
                            None => Ok(()),
                        };
                        match admitted.map_err(Skipped::from).and_then(|()| Ok(frame(&stored)?)) {
                            Ok(f) => batch.push(f),
                            Err(e) => {
                                // Kept as a gap rather than stop every edge on one bad message.
                                flush(ctx, &mut batch);
                                tracing::debug!(error = %e, seq = stored.seq, "an event in the stream is refused or unreadable; skipped");
                                ctx.history.restart(ctx.history.edge_epoch(), stored.seq);
                            }
                        }
                        *progressed = true;
                    }
                    let lag = if pending == 0 {
                        0.0
                    } else {
                        (ctx.clock.now_us() - stored.published_at_us).max(0) as f64 / 1e6
                    };
                    ctx.metrics.lag_seconds.set(lag);
                    ctx.metrics.lag_messages.set(i64::try_from(pending).unwrap_or(i64::MAX));
                    if batch.len() < BATCH {
                        next = msgs.next().now_or_never();
                    }
                }
                flush(ctx, &mut batch);
            }
        }
    }
}

/// What the pairs task works with.
pub struct PairsCtx {
    pub hub: Arc<Hub>,
    pub settings: Settings,
    pub alarm: Arc<ForgeryAlarm>,
    pub shutdown: CancellationToken,
}

/// Runs until shutdown: the pairs bucket into the hub's pairs room. After each (re)connection
/// the bucket is read whole, and pairs it no longer holds are forgotten.
pub async fn follow_pairs(ctx: PairsCtx) -> Result<(), ClusterError> {
    let mut retry = Retry::here();
    loop {
        let mut progressed = false;
        let r = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = pairs_once(&ctx, &mut progressed) => r,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "the pairs bucket was lost; reading it again");
        }
        if progressed {
            retry.reset();
        }
        if !retry.pause(&ctx.shutdown).await {
            return Ok(());
        }
    }
}

/// A pair state from the bucket, checked: signed for its key, filed under its own key, and
/// not older than the one held. Returns its JSON.
fn open_pair<'a>(
    ctx: &PairsCtx,
    held: &HashMap<String, (PairKey, i64)>,
    key: &str,
    value: &'a [u8],
) -> Result<&'a [u8], Forgery> {
    let json = match &ctx.settings.keys {
        Keys::Verify(v) => v.open_pair(&ctx.settings.pairs_bucket, key, value)?,
        _ => value,
    };
    if let Ok((pair, at)) = hub::Pairs::peek(json) {
        if pair_key(&pair.chain, &pair.address) != key {
            return Err(Forgery::WrongKey);
        }
        if held.get(key).is_some_and(|(_, t)| at < *t) {
            return Err(Forgery::Stale);
        }
    }
    Ok(json)
}

/// Sets `progressed` once the watch is open, so that a bucket lost after working a while is
/// tried again at once rather than after the longest wait.
async fn pairs_once(ctx: &PairsCtx, progressed: &mut bool) -> Result<(), ClusterError> {
    let stream = EventStream::connect_reader(&ctx.settings).await?;
    let kv = stream.pairs(false).await?;
    let bucket = |detail: Cause| ClusterError::Pairs {
        bucket: ctx.settings.pairs_bucket.clone(),
        detail,
    };
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| bucket(e.into()))?;
    *progressed = true;
    let mut keys: HashMap<String, (PairKey, i64)> = HashMap::new();
    let mut synced = false;
    let pairs = ctx.hub.pairs();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| bucket(e.into()))?;
        match entry.operation {
            async_nats::jetstream::kv::Operation::Put => {
                match open_pair(ctx, &keys, &entry.key, &entry.value) {
                    Err(why) => ctx.alarm.refused("pair", &entry.key, &why),
                    Ok(json) => match pairs.apply(json) {
                        Ok((k, at)) => {
                            keys.insert(entry.key.clone(), (k, at));
                        }
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "a pair state in the bucket is unreadable; skipped")
                        }
                    },
                }
            }
            _ => {
                if let Some((k, _)) = keys.remove(&entry.key) {
                    pairs.forget(&k);
                }
            }
        }
        if !synced && (entry.seen_current || entry.delta == 0) {
            synced = true;
            let held: HashSet<&PairKey> = keys.values().map(|(k, _)| k).collect();
            for k in pairs.keys() {
                if !held.contains(&k) {
                    pairs.forget(&k);
                }
            }
        }
    }
    Err(bucket("the watch ended".into()))
}

#[cfg(test)]
mod tests {
    use super::EdgeEpoch;
    use dexpulse_core::protocol::Epoch;

    fn ep(s: &str) -> Epoch {
        Epoch::parse(s).unwrap()
    }

    #[test]
    fn an_epoch_names_itself_and_knows_its_stream() {
        let check = |e: EdgeEpoch, name: &str, of_x: bool| {
            assert_eq!(e.name().as_str(), name);
            assert_eq!(e.is_of(&ep("x-1a")), of_x, "{e:?}");
        };
        check(EdgeEpoch::Unconnected(ep("p")), "unconnected-p", false);
        let stream = |reset_us| EdgeEpoch::Stream {
            identity: ep("x-1a"),
            reset_us,
        };
        check(stream(None), "x-1a", true);
        check(stream(Some(255)), "x-1a-rff", true);
        // A stream whose name merely starts like this one's is another stream.
        assert!(!EdgeEpoch::Stream {
            identity: ep("x-1a"),
            reset_us: None,
        }
        .is_of(&ep("x-1")));
        assert!(!EdgeEpoch::Stream {
            identity: ep("x-1"),
            reset_us: None,
        }
        .is_of(&ep("x-1a")));
    }
}
