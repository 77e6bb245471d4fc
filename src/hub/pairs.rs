//! The pairs room: every pair's latest state (its last fresh snapshot, the engine's derived
//! metrics, its open kinds), for `/v1/pairs` and the `pairs` channel. A state is rendered into
//! JSON only when someone reads it: `pair` messages only while a session listens, `/v1/pairs`
//! when asked. Keeping a state reuses its strings, so the engine task allocates nothing per
//! snapshot in the steady state.
//!
//! Each state also keeps a short history of points (time, price, 5-minute volume, liquidity)
//! for the dashboard's sparklines: at most `HISTORY_POINTS`, at least `HISTORY_SPACING_MS` of
//! snapshot time apart, so its memory is bounded per pair whatever the polling rate.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::broadcast;

use dexpulse_core::model::{Kind, KindSet, PairKey, PairMetrics, Snapshot};
use dexpulse_core::protocol::view::{pair_message, render_pair};

/// A pair's state as sent on the `pairs` channel.
#[derive(Debug)]
pub struct PairFrame {
    pub key: PairKey,
    /// `{"type":"pair","pair":{…}}`, UTF-8, serialized once for every listening session.
    pub text: Bytes,
}

struct PairState {
    snapshot: Snapshot,
    metrics: PairMetrics,
    open: KindSet,
    /// Which update this is (`Pairs::changed` compares it).
    version: u64,
    history: VecDeque<Point>,
}

/// The most points a pair's history keeps (an hour at the spacing below).
pub const HISTORY_POINTS: usize = 240;
/// Snapshots closer than this to the last point kept add no point.
pub const HISTORY_SPACING_MS: i64 = 15_000;

/// One point of a pair's recent history, as `/v1/pairs/{chain}/{address}` sends it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The snapshot's time, Unix ms.
    pub t: i64,
    pub price_usd: Option<f64>,
    pub volume_m5_usd: Option<f64>,
    pub liquidity_usd: Option<f64>,
}

impl Point {
    fn of(s: &Snapshot) -> Point {
        Point {
            t: s.observed_at_ms,
            price_usd: s.price_usd.as_ref().map(|p| p.value),
            volume_m5_usd: s.volume_usd.m5,
            liquidity_usd: s.liquidity_usd,
        }
    }
}

fn remember(history: &mut VecDeque<Point>, s: &Snapshot) {
    if history
        .back()
        .is_some_and(|p| s.observed_at_ms < p.t.saturating_add(HISTORY_SPACING_MS))
    {
        return;
    }
    if history.len() == HISTORY_POINTS {
        history.pop_front();
    }
    history.push_back(Point::of(s));
}

/// What `/v1/pairs` asks for (docs/protocol.md, "HTTP").
#[derive(Debug, Clone, PartialEq)]
pub struct PairQuery {
    pub chain: Option<String>,
    pub dex: Option<String>,
    pub min_liquidity_usd: Option<f64>,
    pub open: OpenFilter,
    pub sort: PairSort,
    pub descending: bool,
    pub limit: usize,
}

impl Default for PairQuery {
    fn default() -> Self {
        PairQuery {
            chain: None,
            dex: None,
            min_liquidity_usd: None,
            open: OpenFilter::Either,
            sort: PairSort::Pair,
            descending: false,
            limit: usize::MAX,
        }
    }
}

/// Which pairs by their open signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFilter {
    Either,
    /// At least one open signal.
    Any,
    /// None open.
    No,
    /// This kind open.
    Kind(Kind),
}

/// The order of `/v1/pairs`. Pairs without the value sort last either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSort {
    Pair,
    Liquidity,
    VolumeH1,
    VolumeH24,
    ChangeM5,
    ChangeH1,
    Price,
    Age,
    OpenSignals,
}

impl PairSort {
    pub const NAMES: [(&'static str, PairSort); 9] = [
        ("pair", PairSort::Pair),
        ("liquidity", PairSort::Liquidity),
        ("volume_h1", PairSort::VolumeH1),
        ("volume_h24", PairSort::VolumeH24),
        ("change_m5", PairSort::ChangeM5),
        ("change_h1", PairSort::ChangeH1),
        ("price", PairSort::Price),
        ("age", PairSort::Age),
        ("open_signals", PairSort::OpenSignals),
    ];

    pub fn parse(s: &str) -> Option<PairSort> {
        PairSort::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
    }

    fn value(self, st: &PairState) -> Option<f64> {
        let s = &st.snapshot;
        match self {
            PairSort::Pair => None,
            PairSort::Liquidity => s.liquidity_usd,
            PairSort::VolumeH1 => s.volume_usd.h1,
            PairSort::VolumeH24 => s.volume_usd.h24,
            PairSort::ChangeM5 => s.price_change_pct.m5,
            PairSort::ChangeH1 => s.price_change_pct.h1,
            PairSort::Price => s.price_usd.as_ref().map(|p| p.value),
            PairSort::Age => s.pair_created_at_ms.map(|c| (s.observed_at_ms - c) as f64),
            PairSort::OpenSignals => Some(st.open.iter().count() as f64),
        }
        .filter(|v| v.is_finite())
    }
}

impl PairQuery {
    fn matches(&self, st: &PairState) -> bool {
        let s = &st.snapshot;
        self.chain.as_ref().is_none_or(|c| *c == s.key.chain)
            && self
                .dex
                .as_ref()
                .is_none_or(|d| s.dex_id.as_deref() == Some(d.as_str()))
            && self
                .min_liquidity_usd
                .is_none_or(|m| s.liquidity_usd.is_some_and(|l| l >= m))
            && match self.open {
                OpenFilter::Either => true,
                OpenFilter::Any => !st.open.is_empty(),
                OpenFilter::No => st.open.is_empty(),
                OpenFilter::Kind(k) => st.open.contains(k),
            }
    }
}

/// A pair's state as another node receives it (a cluster's pairs bucket): JSON, every f64
/// back bit for bit.
#[derive(Serialize)]
struct Shared<'a> {
    snapshot: &'a Snapshot,
    metrics: &'a PairMetrics,
    open: KindSet,
}

#[derive(Deserialize)]
struct Received {
    snapshot: Snapshot,
    metrics: PairMetrics,
    open: KindSet,
}

pub struct Pairs {
    states: DashMap<PairKey, PairState>,
    versions: AtomicU64,
    updates: broadcast::Sender<Arc<PairFrame>>,
}

impl Pairs {
    pub fn new(capacity: usize) -> Pairs {
        Pairs {
            states: DashMap::new(),
            versions: AtomicU64::new(0),
            updates: broadcast::channel(capacity).0,
        }
    }

    pub fn update(&self, snap: &Snapshot, metrics: PairMetrics, open: KindSet) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        match self.states.get_mut(&snap.key) {
            Some(mut s) => {
                s.snapshot.clone_from(snap);
                s.metrics = metrics;
                s.open = open;
                s.version = version;
                remember(&mut s.history, snap);
            }
            None => {
                self.states.insert(
                    snap.key.clone(),
                    PairState {
                        snapshot: snap.clone(),
                        metrics,
                        open,
                        version,
                        history: VecDeque::from([Point::of(snap)]),
                    },
                );
            }
        }
        if self.updates.receiver_count() > 0 {
            let text = pair_message(&render_pair(snap, &metrics, open));
            // A session that left since the count is not an error.
            let _ = self.updates.send(Arc::new(PairFrame {
                key: snap.key.clone(),
                text: Bytes::from(text),
            }));
        }
    }

    pub fn forget(&self, key: &PairKey) {
        self.states.remove(key);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<PairFrame>> {
        self.updates.subscribe()
    }

    /// Every pair's state as a pair object (JSON), ordered by pair key. Each entry is rendered
    /// under its own shard's read lock, never the whole map's.
    pub fn render_all(&self) -> Vec<String> {
        let mut keys: Vec<PairKey> = self.states.iter().map(|r| r.key().clone()).collect();
        keys.sort_unstable();
        keys.iter()
            .filter_map(|k| {
                self.states
                    .get(k)
                    .map(|s| render_pair(&s.snapshot, &s.metrics, s.open))
            })
            .collect()
    }

    /// The pairs a query selects, rendered, in its order and up to its limit; and how many
    /// matched before the limit. The sort keys are read under each shard's lock, and the
    /// states rendered one by one after, never under the whole map's.
    pub fn select(&self, q: &PairQuery) -> (usize, Vec<String>) {
        let mut picked: Vec<(PairKey, Option<f64>)> = self
            .states
            .iter()
            .filter(|r| q.matches(r.value()))
            .map(|r| (r.key().clone(), q.sort.value(r.value())))
            .collect();
        let matched = picked.len();
        picked.sort_by(|(ka, a), (kb, b)| {
            let by_value = match (a, b) {
                (Some(a), Some(b)) if q.descending => b.total_cmp(a),
                (Some(a), Some(b)) => a.total_cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            let by_key = if q.descending && q.sort == PairSort::Pair {
                kb.cmp(ka)
            } else {
                ka.cmp(kb)
            };
            by_value.then(by_key)
        });
        let out = picked
            .iter()
            .take(q.limit)
            .filter_map(|(k, _)| {
                self.states
                    .get(k)
                    .map(|s| render_pair(&s.snapshot, &s.metrics, s.open))
            })
            .collect();
        (matched, out)
    }

    /// One pair's state as a `pair` message, as the channel sends it.
    pub fn message(&self, key: &PairKey) -> Option<Bytes> {
        let s = self.states.get(key)?;
        Some(Bytes::from(pair_message(&render_pair(
            &s.snapshot,
            &s.metrics,
            s.open,
        ))))
    }

    /// One pair's state and its recent history, as JSON; `None` for a pair not tracked.
    pub fn detail(&self, key: &PairKey) -> Option<String> {
        let s = self.states.get(key)?;
        let pair = render_pair(&s.snapshot, &s.metrics, s.open);
        // Points are numbers and options: they always serialize.
        let history = serde_json::to_string(&s.history).unwrap_or_else(|_| "[]".into());
        Some(format!("{{\"pair\":{pair},\"history\":{history}}}"))
    }

    /// The pairs updated since `seen` recorded them, as JSON to share, and the pairs `seen`
    /// holds that are gone; `seen` is brought up to date.
    pub fn changed(
        &self,
        seen: &mut HashMap<PairKey, u64>,
    ) -> (Vec<(PairKey, Vec<u8>)>, Vec<PairKey>) {
        let mut changed = Vec::new();
        for r in self.states.iter() {
            if seen.get(r.key()) == Some(&r.version) {
                continue;
            }
            let shared = Shared {
                snapshot: &r.snapshot,
                metrics: &r.metrics,
                open: r.open,
            };
            match serde_json::to_vec(&shared) {
                Ok(json) => {
                    seen.insert(r.key().clone(), r.version);
                    changed.push((r.key().clone(), json));
                }
                Err(e) => {
                    tracing::error!(error = %e, pair = %r.key(), "pair state not serializable")
                }
            }
        }
        let gone: Vec<PairKey> = seen
            .keys()
            .filter(|k| !self.states.contains_key(*k))
            .cloned()
            .collect();
        for k in &gone {
            seen.remove(k);
        }
        (changed, gone)
    }

    /// Takes a state another node shared (see [`Pairs::changed`]): its pair and the time of
    /// its snapshot.
    pub fn apply(&self, json: &[u8]) -> Result<(PairKey, i64), serde_json::Error> {
        let r: Received = serde_json::from_slice(json)?;
        self.update(&r.snapshot, r.metrics, r.open);
        Ok((r.snapshot.key, r.snapshot.observed_at_ms))
    }

    /// The pair and snapshot time of a shared state, without taking it.
    pub fn peek(json: &[u8]) -> Result<(PairKey, i64), serde_json::Error> {
        #[derive(Deserialize)]
        struct Snap {
            key: PairKey,
            observed_at_ms: i64,
        }
        #[derive(Deserialize)]
        struct Peek {
            snapshot: Snap,
        }
        let p: Peek = serde_json::from_slice(json)?;
        Ok((p.snapshot.key, p.snapshot.observed_at_ms))
    }

    /// The keys held now, for pruning after a full resync.
    pub fn keys(&self) -> Vec<PairKey> {
        self.states.iter().map(|r| r.key().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_render_on_demand_and_updates_reach_listeners_only() {
        let p = Pairs::new(16);
        let mut s = dexpulse_core::source::simulator::example_snapshot();
        p.update(&s, PairMetrics::default(), KindSet::default());
        let mut rx = p.subscribe();
        s.price_usd = dexpulse_core::model::Price::parse("2.5");
        p.update(&s, PairMetrics::default(), KindSet::default());
        let f = rx.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&f.text).unwrap();
        assert_eq!(v["type"], "pair");
        assert_eq!(v["pair"]["price_usd"], "2.5");
        assert!(
            rx.try_recv().is_err(),
            "the update before subscribing was not sent"
        );
        let all = p.render_all();
        assert_eq!(all.len(), 1);
        assert!(all[0].contains("\"price_usd\":\"2.5\""));
        p.forget(&s.key);
        assert!(p.is_empty());
    }

    #[test]
    fn shared_states_come_back_whole_and_only_changes_are_shared() {
        let a = Pairs::new(16);
        let b = Pairs::new(16);
        let s = dexpulse_core::source::simulator::example_snapshot();
        let m = PairMetrics {
            r5: Some(0.1 + 0.2),
            stance: Some(dexpulse_core::model::Direction::Bullish),
            ..PairMetrics::default()
        };
        let mut open = KindSet::default();
        open.insert(dexpulse_core::model::Kind::MomentumUp);
        a.update(&s, m, open);
        let mut seen = HashMap::new();
        let (changed, gone) = a.changed(&mut seen);
        assert_eq!((changed.len(), gone.len()), (1, 0));
        assert_eq!(
            b.apply(&changed[0].1).unwrap(),
            (s.key.clone(), s.observed_at_ms)
        );
        assert_eq!(
            Pairs::peek(&changed[0].1).unwrap(),
            (s.key.clone(), s.observed_at_ms)
        );
        assert_eq!(
            a.render_all(),
            b.render_all(),
            "the same state renders the same"
        );
        let (changed, gone) = a.changed(&mut seen);
        assert!(changed.is_empty() && gone.is_empty(), "nothing changed");
        a.forget(&s.key);
        let (_, gone) = a.changed(&mut seen);
        assert_eq!(gone, vec![s.key.clone()]);
        assert!(b.apply(b"{\"snapshot\":1}").is_err());
    }
}
