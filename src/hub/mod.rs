//! The hub: what sits between the engine (the one publisher) and the sessions. Three rooms:
//! [`history`] (the epoch, the head, the retained frames; the seam a durable log implements),
//! [`fanout`] (a broadcast channel per canonical filter set) and [`pairs`] (every pair's latest
//! state). `publish` serializes each event once, hands the batch to the history (which numbers
//! it), then to the fan-out; every subscriber sends those same bytes. [`past`] runs the reads
//! of older frames on threads of their own, below the publisher's priority.
//!
//! The hub never does socket I/O, knows no web framework, and never waits for a session: a
//! receiver that falls behind its channel lags and its session catches up from the history.
//! No lock is held across an `.await` (there is none here), and none while matching filters.

pub mod durable;
pub mod fanout;
pub mod history;
pub mod pairs;
pub mod past;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{EventMeta, SignalEvent};
use dexpulse_core::protocol::{Epoch, FilterSet};
use dexpulse_core::settings::{at_least, in_range, seconds, FieldError};
use dexpulse_core::signal::checkpoint::Checkpoint;

use crate::time::Clock;

pub use fanout::{Fanout, Subscription};
pub use history::{BadEvent, Frame, History, MemoryHistory, Since};
pub use pairs::{PairFrame, Pairs};

/// `[hub]`: what is retained for `resume_from` and `/v1/signals`, and the channels' sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// Events kept at least (by count) ...
    pub retain_events: usize,
    /// ... and at least this long (by age); the ring keeps whichever is more.
    pub retain_seconds: f64,
    /// Hard cap on retained events, whatever their age ...
    pub retain_max_events: usize,
    /// ... and on their bytes (the frames as sent), so that large events cannot make the
    /// history hold more memory than this.
    pub retain_max_megabytes: f64,
    /// The broadcast channel for sessions that take every event.
    pub broadcast_capacity: usize,
    /// The same for each distinct filter set (sessions sharing a filter set share a channel).
    /// Smaller: every distinct filter set allocates its channel (about 40 bytes a slot).
    pub topic_capacity: usize,
    /// Distinct filter sets with a channel of their own; sessions with further sets share the
    /// channel of every event and filter for themselves (bounds what clients can allocate).
    pub max_filter_sets: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            retain_events: 1_000,
            retain_seconds: 120.0,
            retain_max_events: 100_000,
            retain_max_megabytes: 256.0,
            broadcast_capacity: 8_192,
            topic_capacity: 1_024,
            max_filter_sets: 1_024,
        }
    }
}

/// The hub's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub retain_events: usize,
    pub retain: Duration,
    pub retain_max_events: usize,
    pub retain_max_bytes: usize,
    pub broadcast_capacity: usize,
    pub topic_capacity: usize,
    pub max_filter_sets: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// Field names are relative to `[hub]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let retain_events = at_least("retain_events", raw.retain_events, 1)?;
        Ok(Settings {
            retain_events,
            retain: seconds("retain_seconds", raw.retain_seconds, 0.0, 86_400.0)?,
            retain_max_events: at_least("retain_max_events", raw.retain_max_events, retain_events)?,
            retain_max_bytes: (in_range(
                "retain_max_megabytes",
                raw.retain_max_megabytes,
                0.001,
                1e6,
            )? * 1024.0
                * 1024.0) as usize,
            broadcast_capacity: at_least("broadcast_capacity", raw.broadcast_capacity, 16)?,
            topic_capacity: at_least("topic_capacity", raw.topic_capacity, 16)?,
            max_filter_sets: at_least("max_filter_sets", raw.max_filter_sets, 1)?,
        })
    }
}

struct SessionTokens {
    /// The server's shutdown, once [`Hub::end_sessions_with`] gave it.
    parent: CancellationToken,
    /// A child of `parent`, cancelled when the numbering restarts under the sessions (a
    /// cluster's stream was replaced), so that each closes and its client resumes against the
    /// new epoch.
    epoch: CancellationToken,
}

pub struct Hub {
    clock: Clock,
    history: Box<dyn History>,
    fanout: Arc<Fanout>,
    pairs: Pairs,
    /// What ends the sessions from outside, one token for both causes (a session polls one
    /// future, not two, at every wake-up).
    sessions: std::sync::Mutex<SessionTokens>,
    /// A publish commits to a file (and waits for its fsync): async publishers hand it to the
    /// blocking pool (`publish_off_worker`).
    writes_to_disk: bool,
}

impl Hub {
    /// A hub with history in memory, in a new epoch (start time and process id: unique enough
    /// that a client holding a seq of an earlier process knows it cannot resume from it).
    pub fn new(settings: Settings, clock: Clock) -> Hub {
        let history = MemoryHistory::new(settings.clone(), Hub::new_epoch(&clock));
        Hub::with_history(settings, clock, Box::new(history))
    }

    /// A hub whose history is the event log on disk: its epoch and head continue the log's.
    pub fn durable(
        settings: Settings,
        clock: Clock,
        store: crate::store::Settings,
        log: crate::store::EventLog,
        metrics: &crate::metrics::Metrics,
        health: Arc<crate::health::Health>,
    ) -> Result<Hub, crate::store::StoreError> {
        let history =
            durable::LogHistory::open(settings.clone(), store, log, metrics.log.clone(), health)?;
        let mut hub = Hub::with_history(settings, clock, Box::new(history));
        hub.writes_to_disk = true;
        Ok(hub)
    }

    /// A new epoch's name: start time and process id, unique enough that a client holding a
    /// seq of an earlier process (or log) knows it cannot resume from it.
    pub fn new_epoch(clock: &Clock) -> Epoch {
        Epoch::fresh(clock.now_us(), std::process::id())
    }

    pub fn with_history(settings: Settings, clock: Clock, history: Box<dyn History>) -> Hub {
        Hub {
            clock,
            history,
            fanout: Arc::new(Fanout::new(
                settings.broadcast_capacity,
                settings.topic_capacity,
                settings.max_filter_sets,
            )),
            pairs: Pairs::new(settings.broadcast_capacity),
            sessions: std::sync::Mutex::new(SessionTokens {
                parent: CancellationToken::new(),
                epoch: CancellationToken::new(),
            }),
            writes_to_disk: false,
        }
    }

    /// [`Hub::publish_with`] for an async publisher (the engine task, the bench source): a
    /// durable history's commit and its fsync run on the blocking pool, never on an async
    /// worker; a history in memory publishes in place. The publisher awaits each batch before
    /// the next, so seq order stays its order. A panic in the publish is the caller's.
    pub async fn publish_off_worker(
        self: &Arc<Self>,
        events: Vec<SignalEvent>,
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        if !self.writes_to_disk {
            return self.publish_with(&events, state);
        }
        let hub = self.clone();
        join(tokio::task::spawn_blocking(move || hub.publish_with(&events, state)).await)
    }

    /// [`Hub::publish_serialized`] for an async publisher, as [`Hub::publish_off_worker`].
    pub async fn publish_serialized_off_worker(
        self: &Arc<Self>,
        batch: Vec<(EventMeta, String)>,
    ) -> Vec<Arc<Frame>> {
        if !self.writes_to_disk {
            return self.publish_serialized(batch);
        }
        let hub = self.clone();
        join(tokio::task::spawn_blocking(move || hub.publish_serialized(batch)).await)
    }

    fn session_tokens(&self) -> std::sync::MutexGuard<'_, SessionTokens> {
        // Two tokens swapped: a panic under the lock leaves them consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancelled when the current epoch ends under the sessions (see [`Hub::end_epoch`]) or
    /// the server shuts down (see [`Hub::end_sessions_with`]).
    pub fn epoch_over(&self) -> CancellationToken {
        self.session_tokens().epoch.clone()
    }

    /// Every epoch's token from now on is a child of `shutdown`: a session's one token ends
    /// it at shutdown as well (it tells the two apart by asking `shutdown`). Called by the
    /// server before any session starts.
    pub fn end_sessions_with(&self, shutdown: &CancellationToken) {
        let mut t = self.session_tokens();
        t.parent = shutdown.clone();
        t.epoch = shutdown.child_token();
    }

    /// The history now numbers in another epoch: every session of the old one is told to
    /// end (it closes with 1012, and its client resumes, learning `recovered: false`).
    pub fn end_epoch(&self) {
        let mut t = self.session_tokens();
        let next = t.parent.child_token();
        let old = std::mem::replace(&mut t.epoch, next);
        drop(t);
        old.cancel();
    }

    /// Sends frames that the history has already numbered and kept (an edge's, taken from
    /// the cluster's stream) to every channel that wants them.
    pub fn deliver(&self, frames: &[Arc<Frame>]) {
        if !frames.is_empty() {
            self.fanout.send(frames);
        }
    }

    /// See [`History::hold_after`].
    pub fn hold_after(&self, seq: u64) {
        self.history.hold_after(seq);
    }

    pub fn epoch(&self) -> Epoch {
        self.history.epoch()
    }

    /// See [`History::known_head`].
    pub fn known_head(&self) -> u64 {
        self.history.known_head()
    }

    /// The seq of the last published event (0 before the first).
    pub fn head_seq(&self) -> u64 {
        self.history.head()
    }

    /// Publishes events in order: serialized once each, numbered and kept by the history,
    /// then sent to every channel that wants them. Only the engine task (or the bench source)
    /// publishes, so seq order is event order.
    pub fn publish(&self, events: &[SignalEvent]) -> Vec<Arc<Frame>> {
        self.publish_with(events, None)
    }

    /// Publishes events with the engine state that reflects them: a durable history commits
    /// both in one transaction (docs/store.md, "Engine state"). With no events, saves the state.
    pub fn publish_with(
        &self,
        events: &[SignalEvent],
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        let batch: Vec<(EventMeta, String)> = events
            .iter()
            .filter_map(|e| match serde_json::to_string(e) {
                Ok(json) => Some((e.meta(), json)),
                Err(err) => {
                    // Plain data serializes; this would be a bug, and it must not stop the rest.
                    tracing::error!(error = %err, event_id = %e.event_id, "event not serializable; dropped");
                    None
                }
            })
            .collect();
        self.publish_batch(batch, state)
    }

    /// Publishes events already serialized, with what filters read.
    pub fn publish_serialized(&self, batch: Vec<(EventMeta, String)>) -> Vec<Arc<Frame>> {
        self.publish_batch(batch, None)
    }

    fn publish_batch(
        &self,
        batch: Vec<(EventMeta, String)>,
        state: Option<Checkpoint>,
    ) -> Vec<Arc<Frame>> {
        if batch.is_empty() && state.is_none() {
            return Vec::new();
        }
        let frames = self.history.append(self.clock.now_us(), batch, state);
        // After the history moved the head: a session joining reads the head inside the
        // fan-out's lock, so every frame past that head reaches it (docs/protocol.md, resume).
        if !frames.is_empty() {
            self.fanout.send(&frames);
        }
        frames
    }

    /// The history's upkeep (retention; retrying a log that failed, whose waiting events are
    /// sent from here). Blocking: run it off the async workers.
    pub fn maintain(&self) {
        let frames = self.history.maintain(self.clock.now_us());
        if !frames.is_empty() {
            self.fanout.send(&frames);
        }
    }

    /// Joins the channel of a session's signal filter set; the head returned is the seq after
    /// which every matching frame reaches the subscription.
    pub fn join_signals(&self, set: &FilterSet) -> (Option<Subscription>, u64) {
        self.fanout.join(set, || self.history.head())
    }

    /// What memory holds after `after` now (a durable history's older frames are not read).
    pub fn since(&self, after: u64, limit: usize) -> Since {
        self.history.since(after, limit)
    }

    /// Frames with `seq > after`, at most `limit`, from memory and, where it falls short, from
    /// the archive, awaited: cancel-safe, and no worker is blocked meanwhile.
    pub async fn read_since(&self, after: u64, limit: usize) -> Since {
        match self.history.read_since(after, limit) {
            history::Read::Done(s) => s,
            history::Read::Archive(reading) => reading.await,
        }
    }

    /// The newest `limit` frames with `seq < before`, from memory and the archive.
    pub async fn read_before(&self, before: Option<u64>, limit: usize) -> Since {
        match self.history.read_before(before, limit) {
            history::Read::Done(s) => s,
            history::Read::Archive(reading) => reading.await,
        }
    }

    /// The oldest retained seq (head + 1 when nothing is retained).
    pub fn oldest_seq(&self) -> u64 {
        self.history.oldest()
    }

    pub fn before(&self, before: Option<u64>, limit: usize) -> Since {
        self.history.before(before, limit)
    }

    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    pub fn pairs(&self) -> &Pairs {
        &self.pairs
    }
}

/// The result of a publish on the blocking pool; its panic goes on in the publisher's task (the
/// supervisor names it).
fn join(r: Result<Vec<Arc<Frame>>, tokio::task::JoinError>) -> Vec<Arc<Frame>> {
    match r {
        Ok(frames) => frames,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only at the runtime's own shutdown.
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_their_fields() {
        assert_eq!(Settings::default().retain, Duration::from_secs(120));
        let raw = RawSettings {
            retain_max_events: 10,
            retain_events: 20,
            ..RawSettings::default()
        };
        assert_eq!(
            Settings::parse(&raw).unwrap_err().field,
            "retain_max_events"
        );
        let raw = RawSettings {
            retain_seconds: -1.0,
            ..RawSettings::default()
        };
        assert_eq!(Settings::parse(&raw).unwrap_err().field, "retain_seconds");
    }

    #[test]
    fn the_sessions_token_ends_with_each_epoch_and_with_the_shutdown() {
        let hub = Hub::new(Settings::default(), Clock::manual(1_000));
        let shutdown = CancellationToken::new();
        hub.end_sessions_with(&shutdown);
        let first = hub.epoch_over();
        hub.end_epoch();
        assert!(first.is_cancelled(), "the epoch ended");
        let second = hub.epoch_over();
        assert!(!second.is_cancelled(), "the next epoch's token is fresh");
        shutdown.cancel();
        assert!(second.is_cancelled(), "and still a child of the shutdown");
        hub.end_epoch();
        assert!(
            hub.epoch_over().is_cancelled(),
            "after shutdown, born ended"
        );
    }

    #[test]
    fn a_joined_session_gets_every_frame_after_its_head() {
        let hub = Hub::new(Settings::default(), Clock::manual(1_000));
        let e = dexpulse_core::model::EventMeta {
            pair: dexpulse_core::model::PairKey::new("sim", "p"),
            kind: dexpulse_core::model::Kind::NewPair,
            direction: dexpulse_core::model::Direction::Neutral,
            score: 50,
        };
        hub.publish_serialized(vec![(e.clone(), "{}".into())]);
        let (sub, head) = hub.join_signals(&FilterSet::Everything);
        assert_eq!(head, 1);
        hub.publish_serialized(vec![(e.clone(), "{}".into()), (e, "{}".into())]);
        let mut sub = sub.unwrap();
        assert_eq!(sub.rx.try_recv().unwrap().seq, 2);
        assert_eq!(sub.rx.try_recv().unwrap().seq, 3);
        assert_eq!(hub.since(head, 10).frames.len(), 2);
        assert_eq!(hub.since(0, 10).frames[0].published_at_us, 1_000_000);
    }
}
