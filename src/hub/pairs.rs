//! The pairs room: every pair's latest state (its last fresh snapshot, the engine's derived
//! metrics, its open kinds), for `/v1/pairs` and the `pairs` channel. A state is rendered into
//! JSON only when someone reads it: `pair` messages only while a session listens, `/v1/pairs`
//! when asked. Keeping a state reuses its strings, so the engine task allocates nothing per
//! snapshot in the steady state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::broadcast;

use dexpulse_core::model::{KindSet, PairKey, PairMetrics, Snapshot};
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
            }
            None => {
                self.states.insert(
                    snap.key.clone(),
                    PairState {
                        snapshot: snap.clone(),
                        metrics,
                        open,
                        version,
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

    /// Takes a state another node shared (see [`Pairs::changed`]).
    pub fn apply(&self, json: &[u8]) -> Result<PairKey, String> {
        let r: Received = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        self.update(&r.snapshot, r.metrics, r.open);
        Ok(r.snapshot.key)
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
        assert_eq!(b.apply(&changed[0].1).unwrap(), s.key);
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
