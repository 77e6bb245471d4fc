//! Per-token deduplication (docs/signals.md, "Per-token dedupe"): the pools of each base token,
//! which of them is the deepest (the only one that opens market kinds), and the others as an
//! event's `related_pairs`.

use rustc_hash::FxHashMap;

use crate::model::{PairKey, Snapshot};

/// One pool of a token, as last seen fresh.
#[derive(Debug, Clone)]
pub(super) struct TokenPair {
    pub(super) key: PairKey,
    pub(super) liquidity: Option<f64>,
    pub(super) last_ms: i64,
}

/// The pools of each base token. A pair keeps its token's index, so that a snapshot reaches
/// its token's pools without hashing the address (a tenth of `observe` when it did); indices of
/// tokens whose last pool was forgotten are reused, so memory follows the pairs tracked.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    ids: FxHashMap<String, usize>,
    pub(super) lists: Vec<Vec<TokenPair>>,
    free: Vec<usize>,
}

impl Tokens {
    pub(super) fn id(&mut self, address: &str) -> usize {
        if let Some(&id) = self.ids.get(address) {
            return id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.lists.push(Vec::new());
            self.lists.len() - 1
        });
        self.ids.insert(address.to_string(), id);
        id
    }

    pub(super) fn forget(&mut self, id: usize, key: &PairKey, address: &str) {
        let Some(list) = self.lists.get_mut(id) else {
            return;
        };
        list.retain(|p| p.key != *key);
        if list.is_empty() && self.ids.remove(address).is_some() {
            self.free.push(id);
        }
    }
}

/// Records a fresh sighting of a pool of its base token; whether it is now the token's
/// deepest (by USD liquidity; ties go to the smaller address) among the pools on its chain seen
/// fresh within `window` ms. Allocates only for a pool it has not seen before.
pub(super) fn note_token(
    list: &mut Vec<TokenPair>,
    snap: &Snapshot,
    liquidity: Option<f64>,
    t: i64,
    window: i64,
) -> bool {
    match list.iter_mut().find(|p| p.key == snap.key) {
        Some(p) => {
            p.liquidity = liquidity;
            p.last_ms = t;
        }
        None => list.push(TokenPair {
            key: snap.key.clone(),
            liquidity,
            last_ms: t,
        }),
    }
    let mine = liquidity.unwrap_or(-1.0);
    list.iter()
        .filter(|p| p.key != snap.key && p.key.chain == snap.key.chain && t - p.last_ms <= window)
        .all(|p| {
            let theirs = p.liquidity.unwrap_or(-1.0);
            theirs < mine || (theirs == mine && p.key.address > snap.key.address)
        })
}

/// The other pools of the snapshot's token seen fresh within `window` ms: an event's
/// `related_pairs` (addresses on the same chain, sorted).
pub(super) fn related_pairs(
    list: &[TokenPair],
    snap: &Snapshot,
    t: i64,
    window: i64,
) -> Vec<String> {
    let mut out: Vec<String> = list
        .iter()
        .filter(|p| p.key != snap.key && p.key.chain == snap.key.chain && t - p.last_ms <= window)
        .map(|p| p.key.address.clone())
        .collect();
    out.sort_unstable();
    out
}
