//! The pairs room: every pair's latest state (its last fresh snapshot, the engine's derived
//! metrics, its open kinds), for `/v1/pairs` and the `pairs` channel. A state is rendered into
//! JSON only when someone reads it: `pair` messages only while a session listens, `/v1/pairs`
//! when asked. Keeping a state reuses its strings, so the engine task allocates nothing per
//! snapshot in the steady state.

use std::sync::Arc;

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
}

pub struct Pairs {
    states: DashMap<PairKey, PairState>,
    updates: broadcast::Sender<Arc<PairFrame>>,
}

impl Pairs {
    pub fn new(capacity: usize) -> Pairs {
        Pairs {
            states: DashMap::new(),
            updates: broadcast::channel(capacity).0,
        }
    }

    pub fn update(&self, snap: &Snapshot, metrics: PairMetrics, open: KindSet) {
        match self.states.get_mut(&snap.key) {
            Some(mut s) => {
                s.snapshot.clone_from(snap);
                s.metrics = metrics;
                s.open = open;
            }
            None => {
                self.states.insert(
                    snap.key.clone(),
                    PairState {
                        snapshot: snap.clone(),
                        metrics,
                        open,
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
}
