//! The signal engine (docs/signals.md): per-pair rolling state, freshness and validity, the
//! features, and the per-(pair, kind) state machine with confirmation, escalation, exit,
//! `data_gap` close and cooldown.
//!
//! Sans-IO: the only inputs are [`Engine::observe`] (a snapshot, carrying its receive time) and
//! [`Engine::tick`] (the time now). The engine never reads a clock, never does I/O, never
//! spawns, and uses no randomness, so the same inputs give the same events byte for byte.
//! In the steady state `observe` allocates nothing unless it emits an event.
//!
//! Two invariants the tests guard: a snapshot identical to the pair's previous one (same
//! numeric payload) changes nothing at all, and a pair's events depend only on its own
//! snapshots and the ticks, never on other pairs'.

mod budget;
pub mod checkpoint;
mod event;
pub mod features;
mod freshness;
pub mod kinds;
mod machine;
pub mod params;
mod tokens;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::model::{
    CloseReason, Direction, Kind, KindSet, PairKey, PairMetrics, Phase, SignalEvent, Snapshot,
    Source,
};
pub use params::{Params, RawParams};

use budget::{Budget, Gate};
use event::{build, round_to, Emit};
use features::History;
use kinds::Features;
use machine::Machine;
use tokens::{note_token, related_pairs, TokenPair, Tokens};

/// What happened to one snapshot (for metrics and the replay report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    /// Same payload as the pair's previous snapshot, or upstream proved frozen.
    Stale,
    /// Failed a validity check (counted, skipped).
    Invalid(&'static str),
    /// A ≥ 10x price jump, held until the next fresh snapshot confirms it.
    Suspect,
    /// From another source than the pair's primary one (ignored).
    OtherSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub snapshots: u64,
    pub fresh: u64,
    pub stale: u64,
    pub invalid: u64,
    pub suspect: u64,
    pub other_source: u64,
    pub events: u64,
    /// Pairs whose state was freed after `forget_idle_hours` without any snapshot.
    pub forgotten: u64,
    /// Openings not made because another pair of the token is deeper (`fsm.dedupe_per_token`).
    pub deduped: u64,
    /// Opened and escalated events dropped by the global budget (`fsm.global_events_per_minute`).
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PairState {
    /// The pair's primary source: the first that reported it. Two providers' rolling windows
    /// differ, so mixing them would read their differences as market moves.
    source: Source,
    fresh: freshness::State,
    /// The last fresh, valid snapshot and its features: what time-outs report from.
    last: Snapshot,
    feats: Features,
    hist: History,
    machine: Machine,
    /// Its base token's index in `Engine::tokens`, from its first fresh snapshot.
    token: Option<usize>,
    /// The latest snapshot of any verdict: a pair still being polled is never forgotten.
    last_seen_ms: i64,
    /// `Engine::step` when this state last changed: a checkpoint writes the pairs changed
    /// since the one before.
    #[serde(skip)]
    touched: u64,
}

pub struct Engine {
    cfg: Params,
    params_hash: String,
    /// Fx, not SipHash: hashing the key was a sixth of `observe`. Deterministic (no random
    /// seed), and nothing depends on its order: `tick` sorts what it emits.
    pairs: FxHashMap<PairKey, PairState>,
    /// The pools of each base token, for per-token deduplication.
    tokens: Tokens,
    budget: Option<Budget>,
    forgotten: Vec<PairKey>,
    stats: EngineStats,
    /// Counts `observe` and `tick` calls; a pair's `touched` is the step that last changed it.
    step: u64,
    /// The step of the last checkpoint, and the pairs forgotten since then.
    saved_step: u64,
    forgotten_unsaved: Vec<PairKey>,
}

impl Engine {
    /// The configuration is assumed validated ([`Params::validate`]); an invalid half-life
    /// is replaced by the default rather than panicking.
    pub fn new(cfg: Params) -> Engine {
        let params_hash = cfg.hash().to_string();
        let budget = Budget::new(cfg.fsm.global_events_per_minute);
        Engine {
            cfg,
            params_hash,
            pairs: FxHashMap::default(),
            tokens: Tokens::default(),
            budget,
            forgotten: Vec::new(),
            stats: EngineStats::default(),
            step: 0,
            saved_step: 0,
            forgotten_unsaved: Vec::new(),
        }
    }

    pub fn params_hash(&self) -> &str {
        &self.params_hash
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The last fresh snapshot of a pair and its features.
    pub fn latest(&self, key: &PairKey) -> Option<(&Snapshot, &Features)> {
        self.pairs
            .get(key)
            .filter(|s| s.fresh.has_fresh)
            .map(|s| (&s.last, &s.feats))
    }

    /// The kinds with an open episode for a pair.
    pub fn open_kinds(&self, key: &PairKey) -> KindSet {
        self.pairs
            .get(key)
            .map_or_else(KindSet::default, |s| s.machine.open_kinds())
    }

    /// A pair's last fresh snapshot, its derived metrics (rounded as in events) and its open
    /// kinds: what a pair view shows. Allocates nothing.
    pub fn pair_view(&self, key: &PairKey) -> Option<(&Snapshot, PairMetrics, KindSet)> {
        let (snap, f) = self.latest(key)?;
        let metrics = PairMetrics {
            age_minutes: f.age_min.map(|a| a.floor() as i64),
            r5: round_to(f.r5, 4),
            r60: round_to(f.r60, 4),
            bp_h1: round_to(f.bp_h1, 4),
            bp_m5: round_to(f.bp_m5, 4),
            lvr: round_to(f.lvr, 4),
            lp_removed: round_to(f.lp_removed, 4),
            stance: self.pairs.get(key).map(|s| s.machine.stance()),
            trend: self.pairs.get(key).and_then(|s| s.machine.trend()),
        };
        Some((snap, metrics, self.open_kinds(key)))
    }

    pub fn observe(&mut self, snap: &Snapshot) -> Vec<SignalEvent> {
        let mut out = Vec::new();
        self.observe_into(snap, &mut out);
        out
    }

    /// Feeds one snapshot; appends its events (in the order of docs/signals.md, "The event") to `out`.
    pub fn observe_into(&mut self, snap: &Snapshot, out: &mut Vec<SignalEvent>) -> Verdict {
        self.stats.snapshots += 1;
        self.step += 1;
        let now_step = self.step;
        let cfg = &self.cfg;
        let st = match self.pairs.get_mut(&snap.key) {
            Some(st) => st,
            None => self
                .pairs
                .entry(snap.key.clone())
                .or_insert_with(|| PairState::new(snap, cfg)),
        };
        if st.source != snap.source {
            self.stats.other_source += 1;
            return Verdict::OtherSource;
        }
        st.last_seen_ms = st.last_seen_ms.max(snap.observed_at_ms);
        st.touched = now_step;
        if let Err(verdict) = st.fresh.check(snap, cfg) {
            match verdict {
                Verdict::Stale => self.stats.stale += 1,
                Verdict::Invalid(_) => self.stats.invalid += 1,
                Verdict::Suspect => self.stats.suspect += 1,
                Verdict::Fresh | Verdict::OtherSource => {}
            }
            return verdict;
        }
        let t = snap.observed_at_ms;

        self.stats.fresh += 1;
        let mut emits: Vec<Emit> = Vec::new();
        if st.fresh.has_fresh {
            st.machine
                .expire(t, st.fresh.last_fresh_ms, cfg, &mut emits);
        }
        let f = features::compute(snap, &mut st.hist, cfg);
        if !st.fresh.has_fresh {
            st.machine.first_sighting(f.age_min);
        }
        let token = *st
            .token
            .get_or_insert_with(|| self.tokens.id(&snap.base_token.address));
        let deepest = if cfg.fsm.dedupe_per_token {
            note_token(
                &mut self.tokens.lists[token],
                snap,
                f.liquidity,
                t,
                cfg.ms.data_gap_close,
            )
        } else {
            true
        };
        let mut gate = Gate {
            deepest,
            budget: self.budget.as_mut(),
            min_emit: cfg.fsm.min_emit_score,
            deduped: 0,
            dropped: 0,
        };
        st.machine.step(&f, cfg, &mut emits, &mut gate);
        self.stats.deduped += gate.deduped;
        self.stats.dropped += gate.dropped;
        // Only an opening, escalation or close, or the end of a rug's quiet, moves the stance.
        if !emits.is_empty() || st.machine.rug_quiet_over(t) {
            if let Some(e) = st.machine.stance_change(t, cfg) {
                emits.push(e);
            }
        }

        // Time-out closes report the previous snapshot; build them before it is replaced.
        let n_before = out.len();
        let related = if emits.is_empty() || !cfg.fsm.dedupe_per_token {
            Vec::new()
        } else {
            related_pairs(&self.tokens.lists[token], snap, t, cfg.ms.data_gap_close)
        };
        for e in emits
            .iter()
            .filter(|e| e.close_reason == Some(CloseReason::DataGap))
        {
            out.push(build(
                e,
                &st.last,
                &st.feats,
                cfg,
                &self.params_hash,
                &related,
            ));
        }
        for e in emits
            .iter()
            .filter(|e| e.close_reason != Some(CloseReason::DataGap))
        {
            out.push(build(e, snap, &f, cfg, &self.params_hash, &related));
        }
        out[n_before..].sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.stats.events += (out.len() - n_before) as u64;

        st.last.clone_from(snap);
        st.feats = f;
        st.fresh.taken(snap);
        Verdict::Fresh
    }

    /// Advances time: closes episodes whose pair has had no fresh snapshot for the data-gap
    /// time-out, and expires pending confirmations. Events are ordered as docs/signals.md says ("The event").
    pub fn tick(&mut self, now_ms: i64) -> Vec<SignalEvent> {
        let mut out = Vec::new();
        let mut emits = Vec::new();
        self.step += 1;
        for st in self.pairs.values_mut() {
            emits.clear();
            if st.fresh.has_fresh {
                st.machine
                    .expire(now_ms, st.fresh.last_fresh_ms, &self.cfg, &mut emits);
                // A data-gap close or the end of a rug's quiet can change the stance.
                let at = emits.iter().map(|e| e.at_ms).max().unwrap_or(now_ms);
                if let Some(e) = st.machine.stance_change(at, &self.cfg) {
                    emits.push(e);
                }
            }
            // A silent expiry (a pending confirmation running out) is not saved: it is a
            // function of time, and the first tick after a restore makes it again.
            if !emits.is_empty() {
                st.touched = self.step;
            }
            for e in &emits {
                let related = match st.token {
                    Some(id) if self.cfg.fsm.dedupe_per_token && e.kind.is_market() => {
                        related_pairs(
                            &self.tokens.lists[id],
                            &st.last,
                            now_ms,
                            self.cfg.ms.data_gap_close,
                        )
                    }
                    _ => Vec::new(),
                };
                out.push(build(
                    e,
                    &st.last,
                    &st.feats,
                    &self.cfg,
                    &self.params_hash,
                    &related,
                ));
            }
        }
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.stats.events += out.len() as u64;
        let idle = self.cfg.ms.forget_idle;
        let before = self.pairs.len();
        let forgotten = &mut self.forgotten;
        let unsaved = &mut self.forgotten_unsaved;
        let tokens = &mut self.tokens;
        self.pairs.retain(|key, st| {
            let keep = now_ms - st.last_seen_ms < idle || st.machine.busy(now_ms);
            if !keep {
                forgotten.push(key.clone());
                unsaved.push(key.clone());
                if let Some(id) = st.token {
                    tokens.forget(id, key, &st.last.base_token.address);
                }
            }
            keep
        });
        self.stats.forgotten += (before - self.pairs.len()) as u64;
        out
    }

    /// The chain replaced blocks `from_block..=to_block`, which `pairs` were read from (the
    /// chain source, docs/sources.md "Reorganisations"): each pair the engine knows gets one
    /// `reorg` event (neutral, never in the stance) carrying the score of its strongest open
    /// episode, so that a filter that let those through lets this through; and the pair takes
    /// the new chain's snapshots from the fork's time on (they may be older than the replaced
    /// ones). What the replaced blocks already made the engine say stays said.
    pub fn reorg(
        &mut self,
        pairs: &[PairKey],
        from_block: u64,
        to_block: u64,
        at_ms: i64,
    ) -> Vec<SignalEvent> {
        self.step += 1;
        let mut out = Vec::new();
        let mut keys = pairs.to_vec();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(st) = self.pairs.get_mut(&key) else {
                continue;
            };
            if !st.fresh.has_fresh {
                continue;
            }
            let score = st.machine.strongest(at_ms);
            let at = st.last_seen_ms.max(at_ms);
            let emit = Emit {
                kind: Kind::Reorg,
                phase: Phase::Opened,
                dir: Direction::Neutral,
                score,
                e: 0.0,
                q: 1.0,
                p: 0,
                start_ms: at,
                at_ms: at,
                close_reason: None,
                basis: KindSet::default(),
            };
            let mut e = build(
                &emit,
                &st.last,
                &st.feats,
                &self.cfg,
                &self.params_hash,
                &[],
            );
            e.reasons = vec![format!(
                "the chain replaced blocks {from_block}-{to_block}: this pair's events read from them rest on blocks no longer in the chain"
            )];
            out.push(e);
            st.fresh.rewind(at_ms);
        }
        self.stats.events += out.len() as u64;
        out
    }

    /// Pairs forgotten by `tick` since the last call, for whoever keeps per-pair state beside
    /// the engine (the hub's pair states).
    pub fn take_forgotten(&mut self) -> Vec<PairKey> {
        let mut keys = std::mem::take(&mut self.forgotten);
        keys.sort_unstable();
        keys
    }

    /// The pairs the engine holds state for, sorted.
    pub fn pair_keys(&self) -> Vec<PairKey> {
        let mut keys: Vec<PairKey> = self.pairs.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    /// Pairs the engine holds state for.
    pub fn pairs_tracked(&self) -> usize {
        self.pairs.len()
    }
}

impl PairState {
    fn new(snap: &Snapshot, cfg: &Params) -> PairState {
        PairState {
            source: snap.source,
            fresh: freshness::State::new(),
            last: snap.clone(),
            feats: Features::default(),
            hist: History::new(cfg),
            machine: Machine::new(),
            token: None,
            last_seen_ms: snap.observed_at_ms,
            touched: 0,
        }
    }
}
