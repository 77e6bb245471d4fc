//! The per-(pair, kind) state machine of docs/signals.md ("State machine"): confirmation,
//! escalation, exit with hysteresis, `data_gap` close, cooldown, direction flips of a surge,
//! families that supersede each other, the rug warning's quiet, and the pair's stance. It
//! decides what to emit ([`Emit`]); the rules it applies are `kinds`', the events are built by
//! `event`. Pure: time comes in with the features.

use serde::{Deserialize, Serialize};

use super::budget::Gate;
use super::event::Emit;
use super::kinds::{self, Context, ExitAfter, Features, RiskFlags};
use super::params::Params;
use crate::model::{CloseReason, Direction, Kind, KindSet, Phase};

/// Consecutive fresh snapshots on which a condition held, and when the first and last were.
/// A gap longer than the pending time-out starts the count over.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Confirmation {
    n: u32,
    first_ms: i64,
    last_ms: i64,
}

impl Confirmation {
    /// Counts a snapshot at `t` on which the condition held; whether it is now confirmed: `need`
    /// snapshots spanning at least `span` ms (one needs no span).
    fn hold(&mut self, t: i64, timeout: i64, need: u32, span: i64) -> bool {
        if self.n == 0 || t - self.last_ms > timeout {
            self.n = 0;
            self.first_ms = t;
        }
        self.n += 1;
        self.last_ms = t;
        self.n >= need && (need <= 1 || t - self.first_ms >= span)
    }

    fn reset(&mut self) {
        self.n = 0;
    }

    fn pending(&self) -> bool {
        self.n > 0
    }

    fn expired(&self, now: i64, timeout: i64) -> bool {
        self.n > 0 && now - self.last_ms > timeout
    }
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
    pending: Confirmation,
    /// Consecutive fresh snapshots on which the entry held.
    consecutive: u32,
    active: Option<Episode>,
    exit_n: u32,
    exit_since_ms: Option<i64>,
    cooldown_until_ms: i64,
    closed_score: u8,
    /// `volume_surge`: a flip toward bullish waiting for its confirmation.
    flip: Confirmation,
    /// `volume_surge`: suspected wash was seen during the surge; until then no surge of this
    /// pair is emitted (the flag holds for the whole episode, and a while after).
    wash_until_ms: i64,
}

/// One pair's state machines and stance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Machine {
    kinds: [KindState; Kind::N_EPISODIC],
    rug_until_ms: i64,
    rug_score: u8,
    /// The pair's age when first seen fresh: a pair first seen old is never new.
    first_age_min: Option<f64>,
    new_pair_done: bool,
    /// The stance last emitted, and the score it carried.
    stance: Direction,
    stance_score: u8,
    /// The last stance that was not neutral.
    trend: Option<Direction>,
}

/// The order kinds see a snapshot in: rug warnings first, as a rug suppresses the drain
/// warning of the same snapshot.
const STEP_ORDER: [Kind; Kind::N_EPISODIC] = [
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
    ks.pending.reset();
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

fn open(
    ks: &mut KindState,
    kind: Kind,
    dir: Direction,
    t: i64,
    s: (u8, f64, f64, u32),
    f: &Features,
) -> Emit {
    ks.pending.reset();
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

/// Whether an open episode's exit has now held long enough, counting this snapshot.
fn exiting(ks: &mut KindState, kind: Kind, holds: bool, t: i64, cfg: &Params) -> bool {
    match kinds::exit_after(kind, cfg) {
        ExitAfter::Lasting(ms) => {
            if holds {
                let since = *ks.exit_since_ms.get_or_insert(t);
                t - since >= ms
            } else {
                ks.exit_since_ms = None;
                false
            }
        }
        ExitAfter::Snapshots(n) => {
            if holds {
                ks.exit_n += 1;
                ks.exit_n >= n
            } else {
                ks.exit_n = 0;
                false
            }
        }
    }
}

impl Machine {
    pub(super) fn new() -> Machine {
        Machine {
            kinds: [KindState::default(); Kind::N_EPISODIC],
            rug_until_ms: i64::MIN,
            rug_score: 0,
            first_age_min: None,
            new_pair_done: false,
            stance: Direction::Neutral,
            stance_score: 0,
            trend: None,
        }
    }

    /// Records the pair's age on its first fresh snapshot.
    pub(super) fn first_sighting(&mut self, age_min: Option<f64>) {
        self.first_age_min = age_min;
    }

    pub(super) fn stance(&self) -> Direction {
        self.stance
    }

    pub(super) fn trend(&self) -> Option<Direction> {
        self.trend
    }

    /// The kinds with an open episode.
    pub(super) fn open_kinds(&self) -> KindSet {
        Kind::EPISODIC
            .into_iter()
            .filter(|k| self.kinds[k.index()].active.is_some())
            .collect()
    }

    /// Something is open, pending or cooling down: forgetting it would change what comes next.
    pub(super) fn busy(&self, now_ms: i64) -> bool {
        now_ms < self.rug_until_ms
            || self
                .kinds
                .iter()
                .any(|k| k.active.is_some() || k.pending.pending() || now_ms < k.cooldown_until_ms)
    }

    /// The score of the strongest open episode, a rug warning's while its quiet lasts.
    pub(super) fn strongest(&self, at_ms: i64) -> u8 {
        self.kinds
            .iter()
            .filter_map(|k| k.active.map(|e| e.last_score))
            .chain((self.rug_until_ms > at_ms).then_some(self.rug_score))
            .max()
            .unwrap_or(0)
    }

    /// A rug warning's quiet ended by `t` while the stance still shows it.
    pub(super) fn rug_quiet_over(&self, t: i64) -> bool {
        self.rug_until_ms != i64::MIN && t >= self.rug_until_ms && self.stance == Direction::Bearish
    }

    /// Time-outs at `now`: data-gap closes of open episodes (the pair's last fresh snapshot was
    /// at `last_fresh_ms`), expiry of stale confirmations.
    pub(super) fn expire(
        &mut self,
        now: i64,
        last_fresh_ms: i64,
        cfg: &Params,
        emits: &mut Vec<Emit>,
    ) {
        let deadline = last_fresh_ms + cfg.ms.data_gap_close;
        let pending_timeout = cfg.ms.pending_timeout;
        for kind in Kind::EPISODIC {
            let ks = &mut self.kinds[kind.index()];
            if ks.pending.expired(now, pending_timeout) {
                ks.pending.reset();
                ks.consecutive = 0;
            }
            if let Some(ep) = ks.active {
                if now >= deadline {
                    emits.push(close(ks, ep, kind, deadline, CloseReason::DataGap, cfg));
                }
            }
        }
    }

    /// Every kind's state machine on one fresh, valid snapshot.
    pub(super) fn step(
        &mut self,
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
        let mut opened = [false; Kind::N_EPISODIC];
        let young = |a: Option<f64>| a.is_some_and(|a| a <= cfg.ms.new_pair_max_age_min);
        if !young(self.first_age_min) || !young(f.age_min) {
            self.new_pair_done = true;
        }

        for kind in STEP_ORDER {
            let ks = &mut self.kinds[kind.index()];
            let ctx = Context {
                rug_quiet: t < self.rug_until_ms,
                new_pair_open: !self.new_pair_done,
                drain_ref_depth: ks.active.map_or(0.0, |e| e.ref_depth),
            };
            let entered = kinds::enter(kind, f, cfg, flags, &ctx);
            let confirm_n = kinds::confirm_snapshots(kind, f, cfg);
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
                let decisive = kinds::surge_move(f, cfg)
                    .is_some_and(|p| p.abs() >= cfg.volume_surge.flip_pc_m5);
                let flip_to = entered
                    .filter(|d| surge && *d != ep.dir && *d != Direction::Neutral && decisive);
                let flip_now = match flip_to {
                    Some(Direction::Bullish) => {
                        ks.flip.hold(t, pending_timeout, confirm_n, confirm_span)
                    }
                    Some(_) => true,
                    None => {
                        ks.flip.reset();
                        false
                    }
                };
                if let Some(dir) = flip_to.filter(|_| flip_now) {
                    ks.flip.reset();
                    emits.push(close(ks, ep, kind, t, CloseReason::FamilyFlip, cfg));
                    ks.cooldown_until_ms = t;
                    let (score, e, q, p) = scored(dir, ks.consecutive);
                    if score >= fsm.min_emit_score && gate.admit(t, kind, dir, score) {
                        emits.push(open(ks, kind, dir, t, (score, e, q, p), f));
                    }
                    continue;
                }
                let holds = kinds::exit(kind, f, cfg, &ctx);
                if exiting(ks, kind, holds, t, cfg) {
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
                ks.pending.reset();
                continue;
            };
            if !ks.pending.hold(t, pending_timeout, confirm_n, confirm_span) {
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
                // Not this pair's to open (a deeper pool of the token has it), or over the
                // budget: the entry must confirm again.
                ks.pending.reset();
                continue;
            }
            emits.push(open(ks, kind, dir, t, (score, e, q, p), f));
            opened[kind.index()] = true;
            match kind {
                Kind::RugWarning => {
                    // Never auto-closes: one warning, then quiet for the rug cooldown.
                    ks.active = None;
                    ks.pending.reset();
                    self.rug_until_ms = t + cfg.ms.rug_cooldown;
                    self.rug_score = score;
                }
                Kind::NewPair => {
                    ks.active = None;
                    self.new_pair_done = true;
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
                let ks = &mut self.kinds[rival.index()];
                if let Some(ep) = ks.active {
                    emits.push(close(ks, ep, *rival, t, CloseReason::Superseded, cfg));
                }
            }
        }
    }

    /// The pair's stance now (docs/signals.md, "Stance"): bearish while a bearish episode is
    /// open or a rug warning's quiet lasts, else bullish while a bullish episode of at least
    /// `fsm.stance_min_bullish_score` is open, else neutral. A change is a `stance` event,
    /// carrying the strongest score behind it (a return to neutral carries the stance it ends,
    /// so that a filter on the score that let a stance through lets its end through too).
    pub(super) fn stance_change(&mut self, t: i64, cfg: &Params) -> Option<Emit> {
        let mut bear = (0u8, KindSet::default());
        let mut bull = (0u8, KindSet::default());
        for kind in Kind::EPISODIC {
            let Some(ep) = self.kinds[kind.index()].active else {
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
        if t < self.rug_until_ms {
            bear.0 = bear.0.max(self.rug_score);
            bear.1.insert(Kind::RugWarning);
        }
        let (dir, score, basis) = if !bear.1.is_empty() {
            (Direction::Bearish, bear.0, bear.1)
        } else if !bull.1.is_empty() {
            (Direction::Bullish, bull.0, bull.1)
        } else {
            (Direction::Neutral, self.stance_score, KindSet::default())
        };
        if dir == self.stance {
            return None;
        }
        self.stance = dir;
        self.stance_score = score;
        if dir != Direction::Neutral {
            self.trend = Some(dir);
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
}
