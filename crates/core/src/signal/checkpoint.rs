//! The engine's state as bytes and back (docs/store.md, "Engine state"): every pair's rolling
//! histories and per-kind state machines (open, pending and cooling-down episodes), the global
//! budget and the counters. A checkpoint is incremental: it carries the pairs changed since the
//! previous one and the pairs forgotten since, so a store that applies them in order holds the
//! whole state. CBOR, because the state is full of `f64`s and CBOR keeps them bit for bit (a
//! restored engine must decide exactly as the one that saved it).
//!
//! Pure like the rest of the engine: it produces and reads bytes, whoever keeps them does the
//! I/O. The token index is not saved: it is rebuilt from the pairs (its order never shows in an
//! event: the deepest pool is a minimum, related pairs are sorted).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Budget, Engine, EngineStats, PairState, Params, TokenPair};
use crate::model::PairKey;

/// What the engine-wide entry's `format` says in a checkpoint this version writes.
pub const FORMAT: u32 = 3;

/// The state changed since the previous checkpoint.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Checkpoint {
    /// Everything saved before is void: the store drops its pairs before applying these (the
    /// first checkpoint of an engine that started cold).
    pub replace_all: bool,
    /// The engine-wide entry: format, parameter hash, budget, counters.
    pub global: Vec<u8>,
    /// The source's own state at the same point of its input (the chain follower's), when it
    /// keeps one: saved beside the engine's, so that both continue from one place.
    pub source: Option<Vec<u8>>,
    /// Pairs by [`pair_id`]: their state, or `None` for a pair forgotten.
    pub pairs: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Checkpoint {
    /// Folds a later checkpoint into this one, as applying both in order would.
    pub fn merge(&mut self, later: Checkpoint) {
        if later.replace_all {
            self.pairs.clear();
            self.replace_all = true;
        }
        self.global = later.global;
        if later.source.is_some() {
            self.source = later.source;
        }
        self.pairs.extend(later.pairs);
    }
}

/// The key a pair's state is kept under: `chain`, a NUL, `address`.
pub fn pair_id(key: &PairKey) -> Vec<u8> {
    let mut id = Vec::with_capacity(key.chain.len() + 1 + key.address.len());
    id.extend_from_slice(key.chain.as_bytes());
    id.push(0);
    id.extend_from_slice(key.address.as_bytes());
    id
}

#[derive(Serialize, Deserialize)]
struct Global {
    format: u32,
    params_hash: String,
    budget: Option<Budget>,
    stats: EngineStats,
}

/// A pair's entry: its key with its state, so that the entry alone restores it.
#[derive(Serialize)]
struct PairEntryRef<'a> {
    key: &'a PairKey,
    state: &'a PairState,
}

#[derive(Deserialize)]
struct PairEntry {
    key: PairKey,
    state: PairState,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestoreError {
    #[error("unreadable engine state: {0}")]
    Unreadable(String),
    #[error("engine state of format {0}; this version reads format {FORMAT}")]
    Format(u32),
    #[error("engine state saved under other signal parameters (params_hash {saved}, now {now})")]
    Params { saved: String, now: String },
}

/// A state that did not encode (plain data always does; kept typed for the log line).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EncodeError(#[from] ciborium::ser::Error<std::io::Error>);

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)?;
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RestoreError> {
    ciborium::from_reader(bytes).map_err(|e| RestoreError::Unreadable(e.to_string()))
}

impl Engine {
    /// The state changed since the last checkpoint (every pair when `full`), or `None` when
    /// nothing changed. The first checkpoint of an engine is full and replaces what a store
    /// held. Errors only if a state does not encode, which plain data always does.
    pub fn checkpoint(&mut self, full: bool) -> Result<Option<Checkpoint>, EncodeError> {
        let first = self.saved_step == 0;
        let full = full || first;
        if !full && self.step == self.saved_step && self.forgotten_unsaved.is_empty() {
            return Ok(None);
        }
        let mut pairs = BTreeMap::new();
        for key in self.forgotten_unsaved.drain(..) {
            pairs.insert(pair_id(&key), None);
        }
        for (key, state) in &self.pairs {
            if full || state.touched > self.saved_step {
                pairs.insert(pair_id(key), Some(encode(&PairEntryRef { key, state })?));
            }
        }
        let global = encode(&Global {
            format: FORMAT,
            params_hash: self.params_hash.clone(),
            budget: self.budget,
            stats: self.stats,
        })?;
        // Step 0 means "never saved": an engine that saved at step 0 saves in full again.
        self.saved_step = self.step.max(1);
        self.step = self.saved_step;
        Ok(Some(Checkpoint {
            replace_all: first,
            global,
            source: None,
            pairs,
        }))
    }

    /// An engine continuing a checkpointed one: `global` and every pair entry the store holds.
    /// Refused when the state is unreadable, of another format, or saved under other signal
    /// parameters (its thresholds would not be the ones its episodes were opened under).
    pub fn restore<'a>(
        cfg: Params,
        global: &[u8],
        pairs: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Engine, RestoreError> {
        let mut engine = Engine::new(cfg);
        let g: Global = decode(global)?;
        if g.format != FORMAT {
            return Err(RestoreError::Format(g.format));
        }
        if g.params_hash != engine.params_hash {
            return Err(RestoreError::Params {
                saved: g.params_hash,
                now: engine.params_hash,
            });
        }
        engine.budget = g.budget;
        engine.stats = g.stats;
        let mut entries = Vec::new();
        for bytes in pairs {
            let e: PairEntry = decode(bytes)?;
            entries.push(e);
        }
        // Sorted, so the rebuilt token index does not depend on the store's order.
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        for PairEntry { key, mut state } in entries {
            // The saved index is the old engine's: give the pair one in this engine's.
            if state.token.is_some() {
                let id = engine.tokens.id(&state.last.base_token.address);
                state.token = Some(id);
                if engine.cfg.fsm.dedupe_per_token && state.fresh.has_fresh {
                    engine.tokens.lists[id].push(TokenPair {
                        key: key.clone(),
                        liquidity: state.feats.liquidity,
                        last_ms: state.fresh.last_fresh_ms,
                    });
                }
            }
            engine.pairs.insert(key, state);
        }
        // What was restored is what the store holds: the next checkpoint writes changes only.
        engine.step = 1;
        engine.saved_step = 1;
        Ok(engine)
    }
}
