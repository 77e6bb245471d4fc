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

pub mod checkpoint;
pub mod features;
pub mod kinds;
pub mod params;

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::model::{
    format_ms, CloseReason, Components, Direction, EngineInfo, Kind, KindSet, Metrics, PairKey,
    PairMetrics, Phase, Severity, SignalEvent, Snapshot, Source, TxnWindows, Windows, EVENT_SCHEMA,
    NUMERIC_FIELDS,
};
pub use params::{Params, RawParams};

use features::{
    buy_pressure, cascade, cascade_down, count_z, impact, price_segments, volume_ratio, EwStats,
};
use kinds::{Features, RiskFlags};

const MIN_MS: f64 = 60_000.0;

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

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Episode {
    start_ms: i64,
    dir: Direction,
    last_score: u8,
    last_emit_ms: i64,
    /// `liquidity_drain`: the pool depth when the episode opened (the "new reference").
    ref_depth: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct KindState {
    pending_n: u32,
    pending_first_ms: i64,
    pending_last_ms: i64,
    /// Consecutive fresh snapshots on which the entry held.
    consecutive: u32,
    active: Option<Episode>,
    exit_n: u32,
    exit_since_ms: Option<i64>,
    cooldown_until_ms: i64,
    closed_score: u8,
    /// `volume_surge`: a flip toward bullish waiting for its confirmation.
    flip_n: u32,
    flip_first_ms: i64,
    flip_last_ms: i64,
    /// `volume_surge`: suspected wash was seen during the surge; until then no surge of this
    /// pair is emitted (the flag holds for the whole episode, and a while after).
    wash_until_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PairState {
    /// The pair's primary source: the first that reported it. Two providers' rolling windows
    /// differ, so mixing them would read their differences as market moves.
    source: Source,
    last_fields: [u64; NUMERIC_FIELDS],
    /// The last fresh, valid snapshot and its features: what time-outs report from.
    last: Snapshot,
    feats: Features,
    has_fresh: bool,
    last_fresh_ms: i64,
    last_price: Option<f64>,
    suspect: Option<f64>,
    m5_since: Option<(u64, i64)>,
    first_age_min: Option<f64>,
    new_pair_done: bool,
    ew: EwStats,
    /// (t, pool depth, price): K for constant-product pools, USD liquidity otherwise (with
    /// the price it was seen at, to adjust it for the price move).
    depth_hist: VecDeque<(i64, f64, Option<f64>)>,
    depth_is_usd: bool,
    liq_hist: VecDeque<(i64, f64)>,
    /// (t, price) of fresh observations that qualify as a pump high.
    highs: VecDeque<(i64, f64)>,
    kinds: [KindState; 9],
    rug_until_ms: i64,
    rug_score: u8,
    /// The stance last emitted, and the score it carried.
    stance: Direction,
    stance_score: u8,
    /// The last stance that was not neutral.
    trend: Option<Direction>,
    /// Its base token's index in `Engine::tokens`, from its first fresh snapshot.
    token: Option<usize>,
    /// The latest snapshot of any verdict: a pair still being polled is never forgotten.
    last_seen_ms: i64,
    /// `Engine::step` when this state last changed: a checkpoint writes the pairs changed
    /// since the one before.
    #[serde(skip)]
    touched: u64,
}

/// One event to build, decided by the state machine.
#[derive(Debug, Clone, Copy)]
struct Emit {
    kind: Kind,
    phase: Phase,
    dir: Direction,
    score: u8,
    e: f64,
    q: f64,
    p: u32,
    start_ms: i64,
    at_ms: i64,
    close_reason: Option<CloseReason>,
    /// `stance`: the open kinds behind it.
    basis: KindSet,
}

/// One pool of a token, as last seen fresh.
#[derive(Debug, Clone)]
struct TokenPair {
    key: PairKey,
    liquidity: Option<f64>,
    last_ms: i64,
}

/// The pools of each base token. A pair keeps its token's index, so that a snapshot reaches
/// its token's pools without hashing the address (a tenth of `observe` when it did); indices of
/// tokens whose last pool was forgotten are reused, so memory follows the pairs tracked.
#[derive(Debug, Default)]
struct Tokens {
    ids: FxHashMap<String, usize>,
    lists: Vec<Vec<TokenPair>>,
    free: Vec<usize>,
}

impl Tokens {
    fn id(&mut self, address: &str) -> usize {
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

    fn forget(&mut self, id: usize, key: &PairKey, address: &str) {
        let Some(list) = self.lists.get_mut(id) else {
            return;
        };
        list.retain(|p| p.key != *key);
        if list.is_empty() && self.ids.remove(address).is_some() {
            self.free.push(id);
        }
    }
}

/// The global event budget: a token bucket over event time (snapshot times), so that a replay
/// drops exactly what the live run dropped.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Budget {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: Option<i64>,
}

impl Budget {
    fn new(per_minute: f64) -> Option<Budget> {
        (per_minute > 0.0).then(|| Budget {
            capacity: per_minute,
            per_ms: per_minute / MIN_MS,
            tokens: per_minute,
            last_ms: None,
        })
    }

    /// Whether an event may go out. Rug warnings always do. Otherwise an event needs one token
    /// plus a reserve that shrinks with its score: a quarter of the bucket for bearish events,
    /// half for the others, at the emit threshold; nothing at 100. So when the bucket runs low
    /// the lowest-priority, lowest-score events are the ones dropped.
    fn admit(&mut self, t: i64, critical: bool, dir: Direction, score: u8, min_emit: u8) -> bool {
        if let Some(last) = self.last_ms {
            let dt = (t - last).max(0) as f64;
            self.tokens = (self.tokens + dt * self.per_ms).min(self.capacity);
        }
        self.last_ms = Some(self.last_ms.map_or(t, |l| l.max(t)));
        if critical {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return true;
        }
        let span = f64::from(100u8.saturating_sub(min_emit)).max(1.0);
        let strength = (f64::from(score.saturating_sub(min_emit)) / span).clamp(0.0, 1.0);
        let share = if dir == Direction::Bearish { 0.25 } else { 0.5 };
        let need = 1.0 + share * self.capacity * (1.0 - strength);
        if self.tokens >= need {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What `step` may open beyond a pair's own state: whether the pair is its token's deepest
/// (market kinds), and the global budget.
struct Gate<'a> {
    deepest: bool,
    budget: Option<&'a mut Budget>,
    min_emit: u8,
    deduped: u64,
    dropped: u64,
}

impl Gate<'_> {
    fn open_allowed(&mut self, t: i64, kind: Kind, dir: Direction, score: u8) -> bool {
        if kind.is_market() && !self.deepest {
            self.deduped += 1;
            return false;
        }
        self.admit(t, kind, dir, score)
    }

    fn admit(&mut self, t: i64, kind: Kind, dir: Direction, score: u8) -> bool {
        let Some(b) = self.budget.as_deref_mut() else {
            return true;
        };
        if b.admit(t, kind == Kind::RugWarning, dir, score, self.min_emit) {
            true
        } else {
            self.dropped += 1;
            false
        }
    }
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
            .filter(|s| s.has_fresh)
            .map(|s| (&s.last, &s.feats))
    }

    /// The kinds with an open episode for a pair.
    pub fn open_kinds(&self, key: &PairKey) -> KindSet {
        self.pairs.get(key).map_or_else(KindSet::default, |s| {
            Kind::EPISODIC
                .into_iter()
                .filter(|k| s.kinds[k.index()].active.is_some())
                .collect()
        })
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
            stance: self.pairs.get(key).map(|s| s.stance),
            trend: self.pairs.get(key).and_then(|s| s.trend),
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
        let fields = snap.numeric_fields();
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
        if st.last_fields == fields {
            self.stats.stale += 1;
            return Verdict::Stale;
        }
        st.last_fields = fields;

        if let Err(why) = validate(snap, st, cfg) {
            self.stats.invalid += 1;
            return Verdict::Invalid(why);
        }
        let t = snap.observed_at_ms;
        let price = snap.price_usd.as_ref().map(|p| p.value);
        if let (Some(p), Some(last)) = (price, st.last_price) {
            let factor = cfg.freshness.price_jump_suspect_factor;
            let recent = t - st.last_fresh_ms <= cfg.ms.price_jump_window;
            let jump = p >= last * factor || p * factor <= last;
            if recent && jump {
                // Confirmed when the next fresh snapshot stays near the jumped-to price.
                let confirmed = st.suspect.is_some_and(|s| p <= s * 2.0 && p * 2.0 >= s);
                if !confirmed {
                    st.suspect = Some(p);
                    self.stats.suspect += 1;
                    return Verdict::Suspect;
                }
            }
        }
        st.suspect = None;

        // Upstream-stale proof: a non-zero V_m5 that does not move for minutes is a frozen feed.
        if let Some(v) = snap.volume_usd.m5.filter(|v| *v > 0.0) {
            match st.m5_since {
                Some((bits, since)) if bits == v.to_bits() => {
                    if t - since >= cfg.ms.stale_m5_proof {
                        self.stats.stale += 1;
                        return Verdict::Stale;
                    }
                }
                _ => st.m5_since = Some((v.to_bits(), t)),
            }
        } else {
            st.m5_since = None;
        }

        self.stats.fresh += 1;
        let mut emits: Vec<Emit> = Vec::new();
        expire(st, t, cfg, &mut emits);
        let first_sighting = !st.has_fresh;
        let f = compute_features(snap, st, cfg);
        if first_sighting {
            st.first_age_min = f.age_min;
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
        step(st, &f, cfg, &mut emits, &mut gate);
        self.stats.deduped += gate.deduped;
        self.stats.dropped += gate.dropped;
        // Only an opening, escalation or close, or the end of a rug's quiet, moves the stance.
        let quiet_over = st.rug_until_ms != i64::MIN && t >= st.rug_until_ms;
        if !emits.is_empty() || (quiet_over && st.stance == Direction::Bearish) {
            if let Some(e) = stance_change(st, t, cfg) {
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
        st.has_fresh = true;
        st.last_fresh_ms = t;
        if price.is_some() {
            st.last_price = price;
        }
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
            expire(st, now_ms, &self.cfg, &mut emits);
            if st.has_fresh {
                // A data-gap close or the end of a rug's quiet can change the stance.
                let at = emits.iter().map(|e| e.at_ms).max().unwrap_or(now_ms);
                if let Some(e) = stance_change(st, at, &self.cfg) {
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
            let keep = now_ms - st.last_seen_ms < idle || st.busy(now_ms);
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
            if !st.has_fresh {
                continue;
            }
            let score = st
                .kinds
                .iter()
                .filter_map(|k| k.active.map(|e| e.last_score))
                .chain((st.rug_until_ms > at_ms).then_some(st.rug_score))
                .max()
                .unwrap_or(0);
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
            // The new chain's blocks may be older than the replaced ones.
            st.last_fresh_ms = st.last_fresh_ms.min(at_ms);
            st.last_fields = [0; NUMERIC_FIELDS];
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
    /// Something is open, pending or cooling down: forgetting it would change what comes next.
    fn busy(&self, now_ms: i64) -> bool {
        now_ms < self.rug_until_ms
            || self
                .kinds
                .iter()
                .any(|k| k.active.is_some() || k.pending_n > 0 || now_ms < k.cooldown_until_ms)
    }

    fn new(snap: &Snapshot, cfg: &Params) -> PairState {
        // The config is validated at start-up; the default only covers a caller that skipped it.
        let ew = EwStats::try_new(cfg.ms.z_half_life as f64).unwrap_or_default();
        PairState {
            source: snap.source,
            last_fields: [0; NUMERIC_FIELDS],
            last: snap.clone(),
            feats: Features::default(),
            has_fresh: false,
            last_fresh_ms: i64::MIN / 2,
            last_price: None,
            suspect: None,
            m5_since: None,
            first_age_min: None,
            new_pair_done: false,
            ew,
            depth_hist: VecDeque::new(),
            depth_is_usd: false,
            liq_hist: VecDeque::new(),
            highs: VecDeque::new(),
            kinds: [KindState::default(); 9],
            rug_until_ms: i64::MIN,
            rug_score: 0,
            stance: Direction::Neutral,
            stance_score: 0,
            trend: None,
            token: None,
            last_seen_ms: snap.observed_at_ms,
            touched: 0,
        }
    }
}

fn validate(snap: &Snapshot, st: &PairState, cfg: &Params) -> Result<(), &'static str> {
    if st.has_fresh && snap.observed_at_ms < st.last_fresh_ms {
        return Err("observed before the pair's last fresh snapshot");
    }
    if snap.price_usd.as_ref().is_some_and(|p| p.value <= 0.0) {
        return Err("price not positive");
    }
    let tol = 1.0 + cfg.freshness.window_monotonic_tolerance;
    let monotonic = |w: [Option<f64>; 4]| {
        let mut prev: Option<f64> = None;
        for x in w.into_iter().flatten() {
            if let Some(p) = prev {
                // A small absolute slack keeps dust-sized windows from failing on rounding.
                if p > x * tol + 1e-6 {
                    return false;
                }
            }
            prev = Some(x);
        }
        true
    };
    if !monotonic(snap.volume_usd.as_array()) {
        return Err("volume windows not monotonic");
    }
    let t = snap.txns.as_array();
    if !monotonic(t.map(|x| x.map(|x| x.total() as f64))) {
        return Err("txn windows not monotonic");
    }
    Ok(())
}

fn prune(q: &mut VecDeque<(i64, f64)>, cutoff: i64) {
    while q.front().is_some_and(|(t, _)| *t < cutoff) {
        q.pop_front();
    }
}

fn is_concentrated(labels: &[String], cfg: &Params) -> bool {
    labels.iter().any(|l| {
        cfg.liquidity
            .concentrated_labels
            .iter()
            .any(|c| c.eq_ignore_ascii_case(l))
    })
}

/// The features of a fresh, valid snapshot; folds it into the pair's histories.
fn compute_features(snap: &Snapshot, st: &mut PairState, cfg: &Params) -> Features {
    let t = snap.observed_at_ms;
    let age_min = snap
        .pair_created_at_ms
        .map(|c| ((t - c) as f64 / MIN_MS).max(0.0));
    let pc = snap.price_change_pct.as_array();
    let vol = snap.volume_usd.as_array();
    let floor = cfg.volume_surge.baseline_floor_usd_per_min;
    let seg = price_segments(pc, age_min);
    let tx_m5 = snap.txns.m5;
    let tx_h1 = snap.txns.h1;
    let prior = cfg.buy_pressure.prior;
    let liquidity = snap.liquidity_usd;

    // Volume z-score against the state before this observation.
    let z_vol = vol[0].and_then(|v| {
        let x = (1.0 + v / 5.0).ln();
        let z = st.ew.z(x, cfg.volume_surge.z_min_obs, cfg.ms.z_min_span);
        st.ew.update(t, x);
        z
    });

    // Pool depth: K = sqrt(base·quote) for constant-product pools, USD liquidity otherwise.
    let lookback = cfg.ms.drain_lookback;
    let k = match (snap.liquidity_base, snap.liquidity_quote) {
        (Some(b), Some(q)) if b > 0.0 && q > 0.0 && !is_concentrated(&snap.labels, cfg) => {
            Some(((b * q).sqrt(), false))
        }
        _ => liquidity.map(|l| (l, true)),
    };
    let depth = k.map(|(d, _)| d);
    let price_now = snap.price_usd.as_ref().map(|p| p.value);
    let (lp_removed, liq_usd_proxy) = match (snap.lp_burned, k) {
        // The chain's own measure: what the LPs burned in the lookback, exactly. Swaps and
        // price moves never count, in any kind of pool.
        (Some(burned), _) => (Some(burned.clamp(0.0, 1.0)), false),
        (None, Some((depth, usd))) => {
            if usd != st.depth_is_usd {
                st.depth_hist.clear();
                st.depth_is_usd = usd;
            }
            st.depth_hist.push_back((t, depth, price_now));
            while st
                .depth_hist
                .front()
                .is_some_and(|(at, _, _)| *at < t - lookback)
            {
                st.depth_hist.pop_front();
            }
            // The reference: the deepest the pool was in the lookback. USD liquidity moves with
            // the price even when no LP leaves (half a constant-product pool is the base token,
            // revalued), so there each past depth is moved to today's price first:
            // `L_i · sqrt(p / p_i)`.
            let reference = st
                .depth_hist
                .iter()
                .map(|(_, d, p)| match (usd, p, price_now) {
                    (true, Some(then), Some(now)) if *then > 0.0 => d * (now / then).sqrt(),
                    _ => *d,
                })
                .fold(0.0, f64::max);
            let removed = if reference > 0.0 {
                (1.0 - depth / reference).max(0.0)
            } else {
                0.0
            };
            (Some(removed), usd)
        }
        (None, None) => (None, false),
    };
    if let Some(l) = liquidity {
        st.liq_hist.push_back((t, l));
    }
    prune(&mut st.liq_hist, t - lookback);
    let liquidity_ref = st
        .liq_hist
        .iter()
        .map(|(_, l)| *l)
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));

    // Drawdown from the 30-minute high, where that high itself followed a ≥ 30 % rise.
    let price = snap.price_usd.as_ref().map(|p| p.value);
    let pr = &cfg.pump_reversal;
    if let (Some(p), Some(h1)) = (price, pc[1]) {
        if h1 >= pr.high_min_rise_pct {
            st.highs.push_back((t, p));
        }
    }
    prune(&mut st.highs, t - cfg.ms.high_lookback);
    let dd30 = price.and_then(|p| {
        let high = st.highs.iter().map(|(_, h)| *h).fold(0.0, f64::max);
        (high > 0.0).then(|| (1.0 - p / high).max(0.0))
    });

    let (ur_h1, buyer_skew) = match tx_h1 {
        Some(tx) => match (tx.buyers, tx.sellers) {
            (Some(b), Some(s)) if tx.total() > 0 => (
                Some((b + s) as f64 / tx.total() as f64),
                Some(b as f64 / (s.max(1)) as f64),
            ),
            _ => (None, None),
        },
        None => (None, None),
    };
    // The disjoint windows of R5 and R60, on trade counts.
    let count = |w: Option<crate::model::Txns>| w.map(|x| x.total() as f64);
    let count_z_m5 = count_z(0, count(tx_m5), count(tx_h1), age_min);
    let count_z_h1 = count_z(1, count(tx_h1), count(snap.txns.h6), age_min);
    let lvr = match (vol[3], liquidity) {
        (Some(v), Some(l)) if l > 0.0 => Some(v / l),
        _ => None,
    };
    Features {
        t_ms: t,
        age_min,
        price,
        pc,
        vol,
        buys_m5: tx_m5.map(|x| x.buys),
        sells_m5: tx_m5.map(|x| x.sells),
        buys_h1: tx_h1.map(|x| x.buys),
        sells_h1: tx_h1.map(|x| x.sells),
        count_z_m5,
        count_z_h1,
        r5: volume_ratio(0, vol[0], vol[1], age_min, floor),
        r60: volume_ratio(1, vol[1], vol[2], age_min, floor),
        r6h: volume_ratio(2, vol[2], vol[3], age_min, floor),
        cascade: cascade(&seg),
        cascade_down: cascade_down(&seg),
        impact_m5: impact(pc[0], vol[0], liquidity),
        impact_h1: impact(pc[1], vol[1], liquidity),
        bp_m5: tx_m5.map(|x| buy_pressure(x.buys, x.sells, prior)),
        bp_h1: tx_h1.map(|x| buy_pressure(x.buys, x.sells, prior)),
        lvr,
        ur_h1,
        buyer_skew,
        z_vol,
        liquidity,
        liquidity_ref,
        depth,
        lp_removed,
        liq_usd_proxy,
        lp_burn: snap.lp_burned.is_some(),
        dd30,
        fdv: snap.fdv_usd,
        optional_missing: snap.fdv_usd.is_none()
            || pc[2].is_none()
            || pc[3].is_none()
            || vol[3].is_none()
            || snap.txns.h24.is_none()
            || snap.pair_created_at_ms.is_none(),
    }
}

/// Time-outs at `now`: data-gap closes of open episodes, expiry of stale confirmations.
fn expire(st: &mut PairState, now: i64, cfg: &Params, emits: &mut Vec<Emit>) {
    if !st.has_fresh {
        return;
    }
    let deadline = st.last_fresh_ms + cfg.ms.data_gap_close;
    let pending_timeout = cfg.ms.pending_timeout;
    for kind in Kind::EPISODIC {
        let ks = &mut st.kinds[kind.index()];
        if ks.pending_n > 0 && now - ks.pending_last_ms > pending_timeout {
            ks.pending_n = 0;
            ks.consecutive = 0;
        }
        if let Some(ep) = ks.active {
            if now >= deadline {
                emits.push(close(ks, ep, kind, deadline, CloseReason::DataGap, cfg));
            }
        }
    }
}

/// Ends an episode and starts its cooldown.
fn close(
    ks: &mut KindState,
    ep: Episode,
    kind: Kind,
    at_ms: i64,
    reason: CloseReason,
    cfg: &Params,
) -> Emit {
    ks.active = None;
    ks.exit_n = 0;
    ks.exit_since_ms = None;
    ks.pending_n = 0;
    ks.cooldown_until_ms = at_ms + cfg.ms.cooldown;
    ks.closed_score = ep.last_score;
    Emit {
        kind,
        phase: Phase::Closed,
        dir: ep.dir,
        score: ep.last_score,
        e: 0.0,
        q: 0.0,
        p: 0,
        start_ms: ep.start_ms,
        at_ms,
        close_reason: Some(reason),
        basis: KindSet::default(),
    }
}

/// The kinds an opening kind supersedes: a bot must not hold both sides of a family.
fn rivals(kind: Kind) -> &'static [Kind] {
    match kind {
        Kind::MomentumUp => &[Kind::MomentumDown],
        Kind::MomentumDown => &[Kind::MomentumUp],
        Kind::BuyPressure => &[Kind::SellPressure],
        Kind::SellPressure => &[Kind::BuyPressure],
        // A dump after the pump ends the pump's buying too.
        Kind::PumpReversal => &[Kind::MomentumUp, Kind::BuyPressure],
        Kind::RugWarning => &[Kind::LiquidityDrain],
        _ => &[],
    }
}

const STEP_ORDER: [Kind; 9] = [
    Kind::RugWarning,
    Kind::LiquidityDrain,
    Kind::MomentumUp,
    Kind::MomentumDown,
    Kind::VolumeSurge,
    Kind::BuyPressure,
    Kind::SellPressure,
    Kind::PumpReversal,
    Kind::NewPair,
];

/// The state machine of docs/signals.md for every kind, on one fresh, valid snapshot.
fn step(
    st: &mut PairState,
    f: &Features,
    cfg: &Params,
    emits: &mut Vec<Emit>,
    gate: &mut Gate<'_>,
) {
    let t = f.t_ms;
    let (flags, penalty) = kinds::risk(f, cfg);
    let fsm = &cfg.fsm;
    let confirm_span = cfg.ms.confirm_min;
    let pending_timeout = cfg.ms.pending_timeout;
    let esc_span = cfg.ms.escalation_min;
    let bearish_ok = kinds::gate_bearish(f, cfg);
    let mut opened: [bool; 9] = [false; 9];

    // Rug warnings first: a rug suppresses the drain warning of the same snapshot.
    for kind in STEP_ORDER {
        let rug_quiet = t < st.rug_until_ms;
        let (entered, confirm_n) = match kind {
            Kind::RugWarning => {
                let l = &cfg.liquidity;
                let by_k = f.lp_removed.is_some_and(|x| x >= l.rug_enter);
                let by_floor = f.liquidity.is_some_and(|x| x < l.rug_abs_floor_usd)
                    && f.liquidity_ref.is_some_and(|x| x >= l.rug_abs_ref_usd);
                let by_crash = f.pc[0].is_some_and(|p| p <= l.rug_crash_pc_m5)
                    && f.lp_removed.is_some_and(|x| x >= l.rug_crash_lp_removed);
                // Never from the USD proxy alone: USD liquidity also falls with the price.
                let ok = !rug_quiet
                    && !f.liq_usd_proxy
                    && f.liquidity.is_some()
                    && f.liquidity_ref
                        .is_some_and(|x| x >= cfg.gates.min_liquidity_ref_usd_bearish)
                    && (by_k || by_floor || by_crash);
                (ok.then_some(Direction::Bearish), 1)
            }
            Kind::LiquidityDrain => {
                let ok = !rug_quiet
                    && bearish_ok
                    && f.liquidity.is_some()
                    && f.lp_removed.is_some_and(|x| x >= cfg.liquidity.drain_enter);
                (ok.then_some(Direction::Bearish), 1)
            }
            Kind::NewPair => {
                let g = &cfg.gates;
                let young = |a: Option<f64>| a.is_some_and(|a| a <= cfg.ms.new_pair_max_age_min);
                if !young(st.first_age_min) || !young(f.age_min) {
                    st.new_pair_done = true;
                }
                let ok = !st.new_pair_done
                    && f.liquidity
                        .is_some_and(|l| l >= g.new_pair_min_liquidity_usd)
                    && f.n_h1().is_some_and(|n| n >= g.new_pair_min_txns_h1);
                (ok.then_some(Direction::Neutral), 1)
            }
            Kind::PumpReversal => {
                let dir = kinds::enter(kind, f, cfg, flags);
                let at_once = f.dd30.is_some_and(|d| d >= cfg.pump_reversal.drawdown);
                (dir, if at_once { 1 } else { fsm.confirm_snapshots })
            }
            _ => (kinds::enter(kind, f, cfg, flags), fsm.confirm_snapshots),
        };

        let ks = &mut st.kinds[kind.index()];
        ks.consecutive = if entered.is_some() {
            ks.consecutive + 1
        } else {
            0
        };
        let surge = kind == Kind::VolumeSurge;
        if surge
            && flags.has(RiskFlags::WASH_SUSPECTED)
            && (entered.is_some() || ks.active.is_some())
        {
            ks.wash_until_ms = ks.wash_until_ms.max(t + cfg.ms.cooldown);
        }
        let wash = surge && t < ks.wash_until_ms;
        let scored = |dir: Direction, consecutive: u32| {
            let (mut score, e, q, mut p) =
                kinds::score(kind, dir, f, cfg, consecutive, flags, penalty);
            if wash {
                // A wash surge has no direction to trade: whatever its direction, it stays
                // below the emit threshold (bearish ones pay the wash penalty as well).
                if dir == Direction::Bearish {
                    p += cfg.risk.wash_penalty;
                }
                score = score.min(fsm.min_emit_score.saturating_sub(1));
            }
            (score, e, q, p)
        };

        if let Some(ep) = ks.active {
            if wash {
                emits.push(close(ks, ep, kind, t, CloseReason::WashSuspected, cfg));
                continue;
            }
            // A surge that changes direction (a pump turning into a dump) is a new episode.
            // Only a decisive move on the window that triggered it flips: ±1 % wobbles of a
            // long surge are not a new episode. A flip toward bearish comes at once (a dump
            // must not wait); toward bullish it needs the ordinary confirmation.
            let decisive =
                kinds::surge_move(f, cfg).is_some_and(|p| p.abs() >= cfg.volume_surge.flip_pc_m5);
            let flip_to =
                entered.filter(|d| surge && *d != ep.dir && *d != Direction::Neutral && decisive);
            let flip_now = match flip_to {
                Some(Direction::Bullish) => {
                    if ks.flip_n == 0 || t - ks.flip_last_ms > pending_timeout {
                        ks.flip_n = 0;
                        ks.flip_first_ms = t;
                    }
                    ks.flip_n += 1;
                    ks.flip_last_ms = t;
                    ks.flip_n >= confirm_n
                        && (confirm_n <= 1 || t - ks.flip_first_ms >= confirm_span)
                }
                Some(_) => true,
                None => {
                    ks.flip_n = 0;
                    false
                }
            };
            if let Some(dir) = flip_to.filter(|_| flip_now) {
                ks.flip_n = 0;
                emits.push(close(ks, ep, kind, t, CloseReason::FamilyFlip, cfg));
                ks.cooldown_until_ms = t;
                let (score, e, q, p) = scored(dir, ks.consecutive);
                if score >= fsm.min_emit_score && gate.admit(t, kind, dir, score) {
                    emits.push(open(ks, kind, dir, t, (score, e, q, p), f));
                }
                continue;
            }
            let exiting = if kind == Kind::LiquidityDrain {
                // Closes once no further liquidity has left, against the post-drain depth,
                // for the exit window.
                let held = f.depth.is_some_and(|d| {
                    ep.ref_depth <= 0.0 || 1.0 - d / ep.ref_depth < cfg.liquidity.drain_exit
                });
                if held {
                    let since = *ks.exit_since_ms.get_or_insert(t);
                    t - since >= cfg.ms.drain_exit_after
                } else {
                    ks.exit_since_ms = None;
                    false
                }
            } else if kinds::exit(kind, f, cfg) {
                ks.exit_n += 1;
                ks.exit_n >= fsm.exit_snapshots
            } else {
                ks.exit_n = 0;
                false
            };
            if exiting {
                emits.push(close(ks, ep, kind, t, CloseReason::ExitCondition, cfg));
                continue;
            }
            if entered.is_some() {
                let (score, e, q, p) = scored(ep.dir, ks.consecutive);
                if score >= ep.last_score.saturating_add(fsm.escalation_points)
                    && t - ep.last_emit_ms >= esc_span
                    && gate.admit(t, kind, ep.dir, score)
                {
                    if let Some(active) = ks.active.as_mut() {
                        active.last_score = score;
                        active.last_emit_ms = t;
                    }
                    emits.push(Emit {
                        kind,
                        phase: Phase::Escalated,
                        dir: ep.dir,
                        score,
                        e,
                        q,
                        p,
                        start_ms: ep.start_ms,
                        at_ms: t,
                        close_reason: None,
                        basis: KindSet::default(),
                    });
                }
            }
            continue;
        }

        let Some(dir) = entered else {
            ks.pending_n = 0;
            continue;
        };
        if ks.pending_n == 0 || t - ks.pending_last_ms > pending_timeout {
            ks.pending_n = 0;
            ks.pending_first_ms = t;
        }
        ks.pending_n += 1;
        ks.pending_last_ms = t;
        let confirmed = ks.pending_n >= confirm_n
            && (confirm_n <= 1 || t - ks.pending_first_ms >= confirm_span);
        if !confirmed {
            continue;
        }
        let (score, e, q, p) = scored(dir, ks.consecutive);
        let in_cooldown = t < ks.cooldown_until_ms;
        if score < fsm.min_emit_score
            || (in_cooldown && score < ks.closed_score.saturating_add(fsm.escalation_points))
        {
            continue;
        }
        if !gate.open_allowed(t, kind, dir, score) {
            // Not this pair's to open (a deeper pool of the token has it), or over the budget:
            // the entry must confirm again.
            ks.pending_n = 0;
            continue;
        }
        emits.push(open(ks, kind, dir, t, (score, e, q, p), f));
        opened[kind.index()] = true;
        match kind {
            Kind::RugWarning => {
                // Never auto-closes: one warning, then quiet for the rug cooldown.
                ks.active = None;
                ks.pending_n = 0;
                st.rug_until_ms = t + cfg.ms.rug_cooldown;
                st.rug_score = score;
            }
            Kind::NewPair => {
                ks.active = None;
                st.new_pair_done = true;
            }
            _ => {}
        }
    }

    // Superseded families, after every kind has seen the snapshot.
    for kind in Kind::EPISODIC {
        if !opened[kind.index()] {
            continue;
        }
        for rival in rivals(kind) {
            let ks = &mut st.kinds[rival.index()];
            if let Some(ep) = ks.active {
                emits.push(close(ks, ep, *rival, t, CloseReason::Superseded, cfg));
            }
        }
    }
}

fn open(
    ks: &mut KindState,
    kind: Kind,
    dir: Direction,
    t: i64,
    s: (u8, f64, f64, u32),
    f: &Features,
) -> Emit {
    ks.pending_n = 0;
    ks.exit_n = 0;
    ks.exit_since_ms = None;
    ks.active = Some(Episode {
        start_ms: t,
        dir,
        last_score: s.0,
        last_emit_ms: t,
        ref_depth: if kind == Kind::LiquidityDrain {
            f.depth.unwrap_or(0.0)
        } else {
            0.0
        },
    });
    Emit {
        kind,
        phase: Phase::Opened,
        dir,
        score: s.0,
        e: s.1,
        q: s.2,
        p: s.3,
        start_ms: t,
        at_ms: t,
        close_reason: None,
        basis: KindSet::default(),
    }
}

/// Records a fresh sighting of a pool of its base token; whether it is now the token's
/// deepest (by USD liquidity; ties go to the smaller address) among the pools on its chain seen
/// fresh within `window` ms. Allocates only for a pool it has not seen before.
fn note_token(
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
fn related_pairs(list: &[TokenPair], snap: &Snapshot, t: i64, window: i64) -> Vec<String> {
    let mut out: Vec<String> = list
        .iter()
        .filter(|p| p.key != snap.key && p.key.chain == snap.key.chain && t - p.last_ms <= window)
        .map(|p| p.key.address.clone())
        .collect();
    out.sort_unstable();
    out
}

/// The pair's stance now (docs/signals.md, "Stance"): bearish while a bearish episode is open or
/// a rug warning's quiet lasts, else bullish while a bullish episode of at least
/// `fsm.stance_min_bullish_score` is open, else neutral. A change is a `stance` event, carrying
/// the strongest score behind it (a return to neutral carries the stance it ends, so that a
/// filter on the score that let a stance through lets its end through too).
fn stance_change(st: &mut PairState, t: i64, cfg: &Params) -> Option<Emit> {
    let mut bear = (0u8, KindSet::default());
    let mut bull = (0u8, KindSet::default());
    for kind in Kind::EPISODIC {
        let Some(ep) = st.kinds[kind.index()].active else {
            continue;
        };
        match ep.dir {
            Direction::Bearish => {
                bear.0 = bear.0.max(ep.last_score);
                bear.1.insert(kind);
            }
            Direction::Bullish if ep.last_score >= cfg.fsm.stance_min_bullish_score => {
                bull.0 = bull.0.max(ep.last_score);
                bull.1.insert(kind);
            }
            _ => {}
        }
    }
    if t < st.rug_until_ms {
        bear.0 = bear.0.max(st.rug_score);
        bear.1.insert(Kind::RugWarning);
    }
    let (dir, score, basis) = if !bear.1.is_empty() {
        (Direction::Bearish, bear.0, bear.1)
    } else if !bull.1.is_empty() {
        (Direction::Bullish, bull.0, bull.1)
    } else {
        (Direction::Neutral, st.stance_score, KindSet::default())
    };
    if dir == st.stance {
        return None;
    }
    st.stance = dir;
    st.stance_score = score;
    if dir != Direction::Neutral {
        st.trend = Some(dir);
    }
    Some(Emit {
        kind: Kind::Stance,
        phase: Phase::Opened,
        dir,
        score,
        e: 0.0,
        q: 0.0,
        p: 0,
        start_ms: t,
        at_ms: t,
        close_reason: None,
        basis,
    })
}

fn stance_reasons(e: &Emit, cfg: &Params) -> Vec<String> {
    let kinds: Vec<&str> = e.basis.iter().map(Kind::as_str).collect();
    vec![match e.dir {
        Direction::Bearish => format!("bearish: {} open", kinds.join(", ")),
        Direction::Bullish => format!(
            "bullish: {} open with a score of at least {}",
            kinds.join(", "),
            cfg.fsm.stance_min_bullish_score
        ),
        Direction::Neutral => format!(
            "neutral: no bearish episode and no bullish one of a score of at least {} open",
            cfg.fsm.stance_min_bullish_score
        ),
    }]
}

fn sha_hex32(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"|");
        }
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn round_to(x: Option<f64>, decimals: i32) -> Option<f64> {
    let m = 10f64.powi(decimals);
    x.map(|v| (v * m).round() / m).filter(|v| v.is_finite())
}

fn round_windows(w: Windows<f64>, decimals: i32) -> Windows<f64> {
    Windows {
        m5: round_to(w.m5, decimals),
        h1: round_to(w.h1, decimals),
        h6: round_to(w.h6, decimals),
        h24: round_to(w.h24, decimals),
    }
}

fn build(
    e: &Emit,
    snap: &Snapshot,
    f: &Features,
    cfg: &Params,
    params_hash: &str,
    related: &[String],
) -> SignalEvent {
    let chain = &snap.key.chain;
    let pair = &snap.key.address;
    let start = e.start_ms.to_string();
    let at = e.at_ms.to_string();
    let episode_id = sha_hex32(&["v1", chain, pair, e.kind.as_str(), &start]);
    let event_id = sha_hex32(&[
        "v1",
        chain,
        pair,
        e.kind.as_str(),
        e.phase.as_str(),
        &start,
        &at,
    ]);
    let (flags, _) = kinds::risk(f, cfg);
    let mut flags = flags;
    if e.kind == Kind::VolumeSurge && e.dir == Direction::Neutral {
        flags.set(RiskFlags::FLAT_HIGH_VOLUME);
    }
    if e.close_reason == Some(CloseReason::WashSuspected) {
        flags.set(RiskFlags::WASH_SUSPECTED);
    }
    let severity = if e.kind == Kind::RugWarning {
        Severity::Critical
    } else {
        Severity::from_score(e.score)
    };
    let reasons = match e.phase {
        Phase::Closed => vec![match e.close_reason {
            Some(CloseReason::DataGap) => format!(
                "no fresh snapshot for {} min",
                crate::settings::as_minutes(cfg.fsm.data_gap_close)
            ),
            Some(CloseReason::Superseded) => "superseded by the opposite signal".to_string(),
            Some(CloseReason::FamilyFlip) => "volume surge changed direction".to_string(),
            Some(CloseReason::WashSuspected) => {
                "suspected wash trading: volume that moves no price".to_string()
            }
            _ => "exit condition held".to_string(),
        }],
        _ if e.kind == Kind::Stance => stance_reasons(e, cfg),
        _ => kinds::reasons(e.kind, e.dir, f, cfg),
    };
    SignalEvent {
        schema: EVENT_SCHEMA.to_string(),
        event_id,
        episode_id,
        phase: e.phase,
        close_reason: e.close_reason,
        kind: e.kind,
        direction: e.dir,
        score: e.score,
        severity,
        confidence: None,
        observed_at: format_ms(e.at_ms),
        episode_started_at: format_ms(e.start_ms),
        chain: chain.clone(),
        pair_address: pair.clone(),
        dex_id: snap.dex_id.clone(),
        base_token: snap.base_token.clone(),
        quote_token: snap.quote_token.clone(),
        source: snap.source,
        snapshot_fingerprint: snap.fingerprint(),
        metrics: Metrics {
            price_usd: snap.price_usd.as_ref().map(|p| p.raw.clone()),
            price_change_pct: round_windows(snap.price_change_pct, 2),
            volume_usd: round_windows(snap.volume_usd, 2),
            txns: TxnWindows::from(&snap.txns),
            liquidity_usd: round_to(snap.liquidity_usd, 2),
            fdv_usd: round_to(snap.fdv_usd, 2),
            market_cap_usd: round_to(snap.market_cap_usd, 2),
            age_minutes: f.age_min.map(|a| a.floor() as i64),
            r5: round_to(f.r5, 4),
            r60: round_to(f.r60, 4),
            r6h: round_to(f.r6h, 4),
            z_vol: round_to(f.z_vol, 4),
            bp_h1: round_to(f.bp_h1, 4),
            bp_m5: round_to(f.bp_m5, 4),
            lvr: round_to(f.lvr, 4),
            lp_removed: round_to(f.lp_removed, 4),
            dd30: round_to(f.dd30, 4),
        },
        components: Components {
            e: round_to(Some(e.e), 4).unwrap_or(0.0),
            q: round_to(Some(e.q), 4).unwrap_or(0.0),
            p: e.p,
        },
        risk_flags: flags.names(),
        reasons,
        related_pairs: if e.kind.is_market() {
            related.to_vec()
        } else {
            Vec::new()
        },
        engine: EngineInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            params_hash: params_hash.to_string(),
        },
        observed_at_ms: e.at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_drops_the_lowest_scores_first_and_never_a_rug() {
        let mut b = Budget::new(120.0).unwrap();
        let t = 1_000;
        // Drain it with strong bullish events: each needs only its token.
        let mut passed = 0;
        while b.admit(t, false, Direction::Bullish, 100, 40) {
            passed += 1;
        }
        assert_eq!(passed, 120, "the whole bucket at once");
        assert!(
            b.admit(t, true, Direction::Bearish, 50, 40),
            "a rug always passes"
        );
        // Refill half the bucket (30 s): a weak bullish event needs 1 + 60 tokens, a weak bearish
        // one 1 + 30, a strong one 1.
        let t = t + 30_000;
        assert!(!b.admit(t, false, Direction::Bullish, 40, 40));
        assert!(b.admit(t, false, Direction::Bearish, 40, 40));
        assert!(b.admit(t, false, Direction::Bullish, 95, 40));
        // Time never runs backwards for the bucket.
        let before = b.tokens;
        b.admit(t - 10_000, false, Direction::Bullish, 40, 40);
        assert!(b.tokens <= before);
        assert!(Budget::new(0.0).is_none(), "0: no limit");
    }
}
