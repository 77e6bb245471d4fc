//! The broadcast hub: assigns each event its `seq` within the `epoch`, serializes it once into
//! a shared frame, keeps a retained ring for `resume_from` and `/v1/signals`, fans frames out
//! over a broadcast channel that never waits for a slow receiver, and holds the latest state of
//! every pair for the `pairs` channel and `/v1/pairs`.
//!
//! The hub never does socket I/O and never blocks on a session: a receiver that falls behind
//! the broadcast channel lags (and is told so by its session); the publisher never waits.
//! The ring's lock is a std `Mutex` held only for pushes and copies of `Arc`s, never across
//! an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::config;
use crate::model::{
    format_ms, Direction, Kind, PairKey, SignalEvent, Snapshot, Source, TokenRef, TxnWindows,
    Windows,
};
use crate::protocol::Filter;
use crate::signal::kinds::Features;

/// One published signal: the message every matching session sends as is, and what filters
/// look at (so that matching never parses the frame).
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    pub published_at_us: i64,
    pub chain: String,
    /// `chain:address`, as filters name pairs.
    pub pair: String,
    pub kind: Kind,
    pub direction: Direction,
    pub score: u8,
    /// `{"type":"signal","seq":…,"published_at_us":…,"event":{…}}`, serialized once.
    pub text: Utf8Bytes,
}

/// The latest state of one pair, as the `pairs` channel and `/v1/pairs` show it.
#[derive(Debug)]
pub struct PairFrame {
    pub chain: String,
    pub pair: String,
    /// The pair object alone (for `/v1/pairs`).
    pub view: String,
    /// `{"type":"pair","pair":{…}}` (for sessions), serialized once.
    pub text: Utf8Bytes,
}

/// The metrics of a pair in `pair` messages: what upstream said (unknown is `null`) and the
/// engine's derived features.
#[derive(Debug, Serialize)]
pub struct PairView<'a> {
    pub chain: &'a str,
    pub pair_address: &'a str,
    pub dex_id: Option<&'a str>,
    pub base_token: TokenRef,
    pub quote_token: TokenRef,
    pub source: Source,
    pub observed_at: String,
    pub price_usd: Option<&'a str>,
    pub price_change_pct: Windows<f64>,
    pub volume_usd: Windows<f64>,
    pub txns: TxnWindows,
    pub liquidity_usd: Option<f64>,
    pub fdv_usd: Option<f64>,
    pub market_cap_usd: Option<f64>,
    pub age_minutes: Option<i64>,
    pub r5: Option<f64>,
    pub r60: Option<f64>,
    pub bp_h1: Option<f64>,
    pub bp_m5: Option<f64>,
    pub lvr: Option<f64>,
    pub lp_removed: Option<f64>,
    pub open_signals: Vec<Kind>,
}

fn r4(x: Option<f64>) -> Option<f64> {
    x.map(|v| (v * 1e4).round() / 1e4).filter(|v| v.is_finite())
}

impl<'a> PairView<'a> {
    pub fn new(s: &'a Snapshot, f: &Features, open_signals: Vec<Kind>) -> PairView<'a> {
        PairView {
            chain: &s.key.chain,
            pair_address: &s.key.address,
            dex_id: s.dex_id.as_deref(),
            base_token: TokenRef::from(&s.base_token),
            quote_token: TokenRef::from(&s.quote_token),
            source: s.source,
            observed_at: format_ms(s.observed_at_ms),
            price_usd: s.price_usd.as_ref().map(|p| p.raw.as_str()),
            price_change_pct: s.price_change_pct,
            volume_usd: s.volume_usd,
            txns: TxnWindows::from(&s.txns),
            liquidity_usd: s.liquidity_usd,
            fdv_usd: s.fdv_usd,
            market_cap_usd: s.market_cap_usd,
            age_minutes: f.age_min.map(|a| a.floor() as i64),
            r5: r4(f.r5),
            r60: r4(f.r60),
            bp_h1: r4(f.bp_h1),
            bp_m5: r4(f.bp_m5),
            lvr: r4(f.lvr),
            lp_removed: r4(f.lp_removed),
            open_signals,
        }
    }
}

/// What filters read of an event.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub chain: &'a str,
    pub pair_address: &'a str,
    pub kind: Kind,
    pub direction: Direction,
    pub score: u8,
}

/// What `resume_from` finds in the ring.
#[derive(Debug)]
pub struct Since {
    /// Retained frames with `seq` greater than asked, oldest first.
    pub frames: Vec<Arc<Frame>>,
    /// The oldest retained seq (head + 1 when nothing is retained).
    pub oldest_seq: u64,
    /// Whether every event after the asked seq is among `frames`.
    pub complete: bool,
}

struct Topic {
    /// The sessions' signal subscriptions' filters; a frame matching any of them is sent.
    filters: Vec<Filter>,
    tx: broadcast::Sender<Arc<Frame>>,
}

pub struct Hub {
    epoch: String,
    cfg: config::Hub,
    head: AtomicU64,
    ring: Mutex<VecDeque<Arc<Frame>>>,
    /// One channel per distinct filter set: a session is woken only by frames it wants, and
    /// the hub matches each frame once per filter set, not once per session.
    topics: Mutex<Vec<Topic>>,
    pair_updates: broadcast::Sender<Arc<PairFrame>>,
    pairs: DashMap<PairKey, Arc<PairFrame>>,
    last_publish_us: AtomicI64,
}

/// Unix microseconds now. The hub stamps `published_at_us` so that clients can measure
/// delivery latency; the signal core never reads this clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Hub {
    /// A hub whose sequence starts at 1 in a new epoch.
    pub fn new(cfg: config::Hub) -> Hub {
        // The epoch names this process's numbering: start time and pid make it unique enough
        // that a client holding an old seq can tell it cannot resume.
        let epoch = format!("{:x}-{:x}", now_us(), std::process::id());
        let (pair_updates, _) = broadcast::channel(cfg.broadcast_capacity);
        Hub {
            epoch,
            cfg,
            head: AtomicU64::new(0),
            ring: Mutex::new(VecDeque::new()),
            topics: Mutex::new(Vec::new()),
            pair_updates,
            pairs: DashMap::new(),
            last_publish_us: AtomicI64::new(0),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The seq of the last published event (0 before the first).
    pub fn head_seq(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// A receiver of the frames that match any of `filters` (a session's signal
    /// subscriptions), shared with every session subscribed the same way. It may carry more
    /// than that (the session filters again): a set with a match-all filter, and any new set
    /// once `max_filter_sets` are open, share the channel of every event, so that clients
    /// cannot make the hub allocate without bound.
    pub fn subscribe_signals(&self, filters: &[Filter]) -> broadcast::Receiver<Arc<Frame>> {
        let everything = [Filter::default()];
        let mut topics = self.topics();
        let filters = if filters.iter().any(Filter::matches_everything) {
            &everything[..]
        } else {
            filters
        };
        if let Some(t) = topics.iter().find(|t| t.filters == filters) {
            return t.tx.subscribe();
        }
        let filters = if filters != everything && topics.len() >= self.cfg.max_filter_sets {
            if let Some(t) = topics.iter().find(|t| t.filters == everything) {
                return t.tx.subscribe();
            }
            &everything[..]
        } else {
            filters
        };
        let (tx, rx) = broadcast::channel(if filters == everything {
            self.cfg.broadcast_capacity
        } else {
            self.cfg.topic_capacity
        });
        topics.push(Topic {
            filters: filters.to_vec(),
            tx,
        });
        rx
    }

    /// Sessions that receive signal frames (those with a signals subscription).
    pub fn signal_receivers(&self) -> usize {
        self.topics().iter().map(|t| t.tx.receiver_count()).sum()
    }

    /// Distinct filter sets among the sessions (one channel each).
    pub fn topics_open(&self) -> usize {
        self.topics().len()
    }

    fn topics(&self) -> MutexGuard<'_, Vec<Topic>> {
        // Sends and pushes only: a panic while holding the lock leaves it consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe_pairs(&self) -> broadcast::Receiver<Arc<PairFrame>> {
        self.pair_updates.subscribe()
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<Arc<Frame>>> {
        // A panic while holding the lock cannot leave the ring inconsistent (push/pop only).
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes events in order: one seq each, serialized once, retained, broadcast. Only the
    /// engine task (or the bench source) publishes, so seq order is event order.
    pub fn publish(&self, events: &[SignalEvent]) -> Vec<Arc<Frame>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            match serde_json::to_string(e) {
                Ok(body) => out.push(self.publish_raw(
                    Meta {
                        chain: &e.chain,
                        pair_address: &e.pair_address,
                        kind: e.kind,
                        direction: e.direction,
                        score: e.score,
                    },
                    &body,
                )),
                Err(err) => tracing::error!(error = %err, "event not serializable; dropped"),
            }
        }
        out
    }

    /// Publishes an event already serialized as JSON, with what filters read.
    pub fn publish_raw(&self, meta: Meta<'_>, event_json: &str) -> Arc<Frame> {
        let published_at_us = now_us();
        let mut ring = self.ring();
        let seq = self.head.load(Ordering::Relaxed) + 1;
        let text = format!(
            "{{\"type\":\"signal\",\"seq\":{seq},\"published_at_us\":{published_at_us},\"event\":{event_json}}}"
        );
        let frame = Arc::new(Frame {
            seq,
            published_at_us,
            chain: meta.chain.to_string(),
            pair: format!("{}:{}", meta.chain, meta.pair_address),
            kind: meta.kind,
            direction: meta.direction,
            score: meta.score,
            text: Utf8Bytes::from(text),
        });
        ring.push_back(frame.clone());
        self.evict(&mut ring, published_at_us);
        // Head moves while the ring lock is held, so a reader never sees a head its ring
        // snapshot lacks.
        self.head.store(seq, Ordering::Release);
        drop(ring);
        self.last_publish_us
            .store(published_at_us, Ordering::Relaxed);
        // After the ring and the head: a session joining a topic reads the head after
        // subscribing, so every frame past that head reaches it (DESIGN 5.3, no gap).
        let mut topics = self.topics();
        topics.retain(|t| t.tx.receiver_count() > 0);
        for t in topics.iter() {
            if t.filters.iter().any(|f| f.matches_signal(&frame)) {
                // A receiver that left since the retain is not an error.
                let _ = t.tx.send(frame.clone());
            }
        }
        drop(topics);
        frame
    }

    fn evict(&self, ring: &mut VecDeque<Arc<Frame>>, now_us: i64) {
        let keep_us = (self.cfg.retain_seconds * 1e6) as i64;
        while let Some(front) = ring.front() {
            let over_cap = ring.len() > self.cfg.retain_max_events;
            let expendable =
                ring.len() > self.cfg.retain_events && now_us - front.published_at_us > keep_us;
            if over_cap || expendable {
                ring.pop_front();
            } else {
                break;
            }
        }
    }

    /// The retained frames after `seq`, for `resume_from`.
    pub fn since(&self, seq: u64) -> Since {
        let ring = self.ring();
        let head = self.head.load(Ordering::Acquire);
        let oldest_seq = ring.front().map_or(head + 1, |f| f.seq);
        let frames: Vec<Arc<Frame>> = ring.iter().filter(|f| f.seq > seq).cloned().collect();
        Since {
            frames,
            oldest_seq,
            complete: seq + 1 >= oldest_seq && seq <= head,
        }
    }

    /// Every retained frame, oldest first.
    pub fn retained(&self) -> Vec<Arc<Frame>> {
        self.ring().iter().cloned().collect()
    }

    /// Records a pair's latest state and tells `pairs` subscribers.
    pub fn update_pair(&self, snap: &Snapshot, f: &Features, open: Vec<Kind>) {
        let view = PairView::new(snap, f, open);
        let Ok(view_json) = serde_json::to_string(&view) else {
            return;
        };
        let frame = Arc::new(PairFrame {
            chain: snap.key.chain.clone(),
            pair: format!("{}:{}", snap.key.chain, snap.key.address),
            text: Utf8Bytes::from(format!("{{\"type\":\"pair\",\"pair\":{view_json}}}")),
            view: view_json,
        });
        self.pairs.insert(snap.key.clone(), frame.clone());
        let _ = self.pair_updates.send(frame);
    }

    /// Drops a pair's latest state (the engine forgot the pair: it has not been seen for
    /// `signal.fsm.forget_idle_hours`).
    pub fn forget_pair(&self, key: &PairKey) {
        self.pairs.remove(key);
    }

    /// Every pair's latest state, ordered by pair key.
    pub fn pairs(&self) -> Vec<Arc<PairFrame>> {
        let mut all: Vec<(PairKey, Arc<PairFrame>)> = self
            .pairs
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, v)| v).collect()
    }

    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignalConfig;
    use crate::signal::Engine;

    fn events(n: usize) -> Vec<SignalEvent> {
        // Real events from the engine: a rug warning per pair.
        let mut engine = Engine::new(SignalConfig::default());
        let mut out = Vec::new();
        for i in 0..n {
            let mut s = crate::source::simulator::example_snapshot();
            s.key.address = format!("p{i}");
            engine.observe(&s);
            let mut t = s.clone();
            t.observed_at_ms += 60_000;
            t.liquidity_base = t.liquidity_base.map(|b| b * 0.1);
            t.liquidity_quote = t.liquidity_quote.map(|q| q * 0.1);
            t.liquidity_usd = t.liquidity_usd.map(|l| l * 0.1);
            out.extend(engine.observe(&t));
        }
        assert_eq!(out.len(), n);
        out
    }

    #[test]
    fn seq_is_dense_and_the_ring_keeps_the_newest() {
        let hub = Hub::new(config::Hub {
            retain_events: 3,
            retain_seconds: 0.0,
            retain_max_events: 3,
            broadcast_capacity: 16,
            topic_capacity: 16,
            max_filter_sets: 16,
        });
        let mut rx = hub.subscribe_signals(&[Filter::default()]);
        let frames = hub.publish(&events(5));
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(hub.head_seq(), 5);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        let since = hub.since(1);
        assert_eq!(since.oldest_seq, 3);
        assert!(!since.complete, "2 is gone");
        let since = hub.since(2);
        assert!(since.complete);
        assert_eq!(
            since.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(hub.since(5).complete && hub.since(5).frames.is_empty());
        assert!(!hub.since(9).complete, "a seq from the future is not ours");
        let f = &frames[0];
        assert!(f
            .text
            .as_str()
            .starts_with("{\"type\":\"signal\",\"seq\":1,\"published_at_us\":"));
        let v: serde_json::Value = serde_json::from_str(f.text.as_str()).unwrap();
        assert_eq!(v["event"]["kind"], "rug_warning");
        assert_eq!(f.pair, "sim:p0");
    }

    #[test]
    fn frames_go_only_to_the_filter_sets_that_match_them() {
        let hub = Hub::new(config::Hub::default());
        let only = |chain: &str| Filter {
            chains: Some(vec![chain.to_string()]),
            ..Filter::default()
        };
        let mut all = hub.subscribe_signals(&[Filter::default()]);
        let mut sim_a = hub.subscribe_signals(&[only("sim")]);
        let mut sim_b = hub.subscribe_signals(&[only("sim")]);
        let mut base = hub.subscribe_signals(&[only("base")]);
        let mut either = hub.subscribe_signals(&[only("base"), only("sim")]);
        assert_eq!(
            hub.topics_open(),
            4,
            "the same filter set shares one channel"
        );
        assert_eq!(hub.signal_receivers(), 5);
        hub.publish(&events(2));
        for rx in [&mut all, &mut sim_a, &mut sim_b, &mut either] {
            assert_eq!(rx.try_recv().unwrap().seq, 1);
            assert_eq!(rx.try_recv().unwrap().seq, 2);
        }
        assert!(
            base.try_recv().is_err(),
            "no frame for a filter that matches none"
        );
        drop((sim_a, sim_b, base));
        hub.publish(&events(1));
        assert_eq!(hub.topics_open(), 2, "a channel nobody holds is closed");
        assert_eq!(all.try_recv().unwrap().seq, 3);
        assert_eq!(either.try_recv().unwrap().seq, 3);
    }

    #[test]
    fn filter_sets_are_bounded_and_a_match_all_set_is_the_everything_channel() {
        let hub = Hub::new(config::Hub {
            max_filter_sets: 2,
            ..config::Hub::default()
        });
        let only = |chain: &str| Filter {
            chains: Some(vec![chain.to_string()]),
            ..Filter::default()
        };
        let mut wide = hub.subscribe_signals(&[only("base"), Filter::default()]);
        let _base = hub.subscribe_signals(&[only("base")]);
        assert_eq!(
            hub.topics_open(),
            2,
            "a set with a match-all filter is every event"
        );
        // A third distinct set is over the cap: it shares the channel of every event.
        let mut third = hub.subscribe_signals(&[only("eth")]);
        assert_eq!(hub.topics_open(), 2);
        hub.publish(&events(1));
        assert_eq!(wide.try_recv().unwrap().seq, 1);
        assert_eq!(
            third.try_recv().unwrap().seq,
            1,
            "more than it asked for, never less"
        );
    }

    #[test]
    fn retention_keeps_recent_events_beyond_the_count() {
        let hub = Hub::new(config::Hub {
            retain_events: 2,
            retain_seconds: 3600.0,
            retain_max_events: 100,
            broadcast_capacity: 16,
            topic_capacity: 16,
            max_filter_sets: 16,
        });
        hub.publish(&events(5));
        assert_eq!(hub.retained().len(), 5, "all younger than retain_seconds");
    }
}
