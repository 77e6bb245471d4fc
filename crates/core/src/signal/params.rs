//! The engine's parameters: the raw `[signal.*]` sections as a config file spells them (units
//! in the names, the defaults of docs/signals.md), and [`Params`], the typed form the engine is
//! built from (durations as `Duration`, every range checked once). [`Params::hash`] is the
//! `params_hash` every event carries, so that an outcome study always knows which thresholds
//! produced an event.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{
    as_minutes, at_least, hours, in_range, minutes, ms as to_ms, seconds, FieldError,
};

/// The `[signal]` section and its subsections, as configured. Absent keys take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawParams {
    pub gates: RawGates,
    pub momentum: RawMomentum,
    pub volume_surge: RawVolumeSurge,
    pub buy_pressure: RawBuyPressure,
    pub pump_reversal: RawPumpReversal,
    pub liquidity: RawLiquidity,
    pub risk: RawRisk,
    pub fsm: RawFsm,
    pub freshness: RawFreshness,
    pub volatility: RawVolatility,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGates {
    pub min_liquidity_usd_bullish: f64,
    pub min_liquidity_ref_usd_bearish: f64,
    pub min_age_minutes_bullish: f64,
    pub min_txns_h1: u64,
    pub min_volume_h1_usd: f64,
    pub min_txns_h1_bearish: u64,
    pub new_pair_max_age_minutes: f64,
    pub new_pair_min_liquidity_usd: f64,
    pub new_pair_min_txns_h1: u64,
}

impl Default for RawGates {
    fn default() -> Self {
        RawGates {
            min_liquidity_usd_bullish: 10_000.0,
            min_liquidity_ref_usd_bearish: 5_000.0,
            min_age_minutes_bullish: 60.0,
            min_txns_h1: 1,
            min_volume_h1_usd: 5_000.0,
            min_txns_h1_bearish: 5,
            new_pair_max_age_minutes: 60.0,
            new_pair_min_liquidity_usd: 5_000.0,
            new_pair_min_txns_h1: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMomentum {
    /// Against the pair's own volatility (`[signal.volatility]`), once known: the price's
    /// move over one of the lookbacks, with its largest single step taken out, at least this
    /// many σ of that span...
    pub enter_z: f64,
    /// ...and at least this percent (a stablecoin's 0.2 % is no momentum).
    pub min_move_pct: f64,
    /// Closes when the move is back under this many σ.
    pub exit_z: f64,
    /// Until the pair's volatility is known: these absolute thresholds, with this many trades
    /// in the hour.
    pub enter_pc_h1: f64,
    pub enter_pc_m5: f64,
    pub exit_pc_h1: f64,
    pub exit_pc_m5: f64,
    pub absolute_min_txns_h1: u64,
}

impl Default for RawMomentum {
    fn default() -> Self {
        RawMomentum {
            enter_z: 6.0,
            min_move_pct: 1.0,
            exit_z: 2.0,
            enter_pc_h1: 15.0,
            enter_pc_m5: 3.0,
            exit_pc_h1: 7.5,
            exit_pc_m5: -3.0,
            absolute_min_txns_h1: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawVolumeSurge {
    pub baseline_floor_usd_per_min: f64,
    pub enter_r5: f64,
    pub enter_r60: f64,
    pub min_volume_m5_usd: f64,
    pub min_volume_h1_usd: f64,
    pub z_threshold: f64,
    pub z_half_life_minutes: f64,
    pub z_min_obs: u32,
    pub z_min_span_minutes: f64,
    pub exit_ratio: f64,
    /// `P_m5` beyond which a surge has a direction (bullish above, bearish below minus it).
    pub direction_pc_m5: f64,
    /// `|P_m5|` an open surge needs to flip direction (a pump turning into a dump).
    pub flip_pc_m5: f64,
    /// A surge must be broad: the trade count must rise significantly too, `2·(sqrt N − sqrt μ)`
    /// against its baseline μ at least this (a variance-stabilised Poisson z; N_m5 against the
    /// rest of h1 for the R5 and z paths, N_h1 against the rest of h6 for R60), so that two
    /// whale trades in a quiet pool are not a surge.
    pub min_count_z: f64,
    /// The R60 path needs current activity too: R5 at least this, so that an hour-old burst
    /// still inside V_h1 opens nothing. An open surge also exits once R5 falls below it.
    pub r60_min_r5: f64,
    /// `P_h1` beyond which a surge that the hour's volume triggered (the R60 path) has a
    /// direction: its direction comes from the window that triggered it.
    pub direction_pc_h1: f64,
}

impl Default for RawVolumeSurge {
    fn default() -> Self {
        RawVolumeSurge {
            baseline_floor_usd_per_min: 20.0,
            enter_r5: 3.0,
            enter_r60: 2.5,
            min_volume_m5_usd: 5_000.0,
            min_volume_h1_usd: 25_000.0,
            z_threshold: 3.0,
            z_half_life_minutes: 360.0,
            z_min_obs: 30,
            z_min_span_minutes: 360.0,
            exit_ratio: 1.5,
            direction_pc_m5: 2.0,
            flip_pc_m5: 3.0,
            min_count_z: 3.5,
            r60_min_r5: 1.0,
            direction_pc_h1: 3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBuyPressure {
    pub prior: f64,
    pub enter_bp_h1: f64,
    pub exit_bp_h1: f64,
    pub enter_bp_m5: f64,
    pub min_txns_h1: u64,
    pub min_txns_m5: u64,
    pub sell_enter_bp_m5: f64,
    /// The imbalance must also be significant: `|B_h1 − S_h1| / sqrt(N_h1)` at least this (a
    /// binomial z-score). BP_h1 ≥ 0.62 over 60 trades is a coin-flip streak, not pressure.
    pub min_imbalance_z: f64,
    /// The pressure must have moved the price its way: `P_h1 ≥` this for buying, `≤ −`this
    /// for selling. Organic flow comes in runs and moods that the binomial test takes for
    /// pressure; buying the pool absorbs without a move has shown no forward edge.
    pub min_abs_pc_h1: f64,
}

impl Default for RawBuyPressure {
    fn default() -> Self {
        RawBuyPressure {
            prior: 5.0,
            enter_bp_h1: 0.62,
            exit_bp_h1: 0.56,
            enter_bp_m5: 0.55,
            min_txns_h1: 50,
            min_txns_m5: 10,
            sell_enter_bp_m5: 0.45,
            min_imbalance_z: 3.5,
            min_abs_pc_h1: 3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPumpReversal {
    pub enter_pc_m5: f64,
    pub prior_pc_h1: f64,
    pub prior_pc_h6: f64,
    pub drawdown: f64,
    pub high_lookback_minutes: f64,
    pub high_min_rise_pct: f64,
    pub exit_pc_m5: f64,
}

impl Default for RawPumpReversal {
    fn default() -> Self {
        RawPumpReversal {
            enter_pc_m5: -10.0,
            prior_pc_h1: 30.0,
            prior_pc_h6: 100.0,
            drawdown: 0.25,
            high_lookback_minutes: 30.0,
            high_min_rise_pct: 30.0,
            exit_pc_m5: -3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLiquidity {
    pub drain_lookback_minutes: f64,
    pub drain_enter: f64,
    pub drain_exit: f64,
    pub drain_exit_minutes: f64,
    pub rug_enter: f64,
    pub rug_abs_floor_usd: f64,
    pub rug_abs_ref_usd: f64,
    pub rug_crash_pc_m5: f64,
    pub rug_crash_lp_removed: f64,
    /// Pool labels that mean concentrated liquidity, where `K = sqrt(base·quote)` does not hold
    /// and the USD liquidity is used instead (matched case-insensitively).
    pub concentrated_labels: Vec<String>,
}

impl Default for RawLiquidity {
    fn default() -> Self {
        RawLiquidity {
            drain_lookback_minutes: 30.0,
            drain_enter: 0.25,
            drain_exit: 0.10,
            drain_exit_minutes: 15.0,
            rug_enter: 0.60,
            rug_abs_floor_usd: 1_000.0,
            rug_abs_ref_usd: 10_000.0,
            rug_crash_pc_m5: -50.0,
            rug_crash_lp_removed: 0.30,
            concentrated_labels: ["CLMM", "DLMM", "wp", "v3", "v4", "DYN", "DYN2"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// Risk flags and their score penalties (docs/signals.md, "Risk flags").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRisk {
    pub sell_side_absent_min_buys_h1: u64,
    pub sell_side_absent_penalty: u32,
    pub sell_side_absent_cap: u8,
    pub wash_lvr: f64,
    pub wash_max_abs_pc_h24: f64,
    /// A surge on a price this flat (|P_m5| below it) with balanced flow is suspected wash
    /// trading. The spec proposed 0.5; 1.0 is the band in which a surge has no direction, and
    /// one arbitrage correction in a deep pool already moves the price 0.5 %.
    pub wash_max_abs_pc_m5: f64,
    pub wash_penalty: u32,
    /// Price impact per unit of turnover, `|ln(1 + P_w)| / (V_w / L)`, on the window that
    /// triggered a surge: below this, with balanced counts, the volume moved no price and is
    /// suspected wash. One-sided flow in a constant-product pool scores about 4.
    pub wash_max_impact: f64,
    /// "Balanced counts": `|BP_w − 0.5|` below this.
    pub wash_balance: f64,
    pub few_wallets_ratio: f64,
    pub few_wallets_penalty: u32,
    pub lvr_extreme: f64,
    pub lvr_extreme_penalty: u32,
    pub lvr_elevated: f64,
    pub lvr_elevated_penalty: u32,
    pub vertical_spike_pc_m5: f64,
    pub vertical_spike_penalty: u32,
    pub thin_liquidity_usd: f64,
    pub thin_liquidity_penalty: u32,
    pub low_float_fdv_to_liquidity: f64,
    pub low_float_penalty: u32,
}

impl Default for RawRisk {
    fn default() -> Self {
        RawRisk {
            sell_side_absent_min_buys_h1: 30,
            sell_side_absent_penalty: 30,
            sell_side_absent_cap: 39,
            wash_lvr: 20.0,
            wash_max_abs_pc_h24: 5.0,
            wash_max_abs_pc_m5: 1.0,
            wash_penalty: 20,
            wash_max_impact: 0.5,
            wash_balance: 0.10,
            few_wallets_ratio: 0.15,
            few_wallets_penalty: 15,
            lvr_extreme: 20.0,
            lvr_extreme_penalty: 15,
            lvr_elevated: 10.0,
            lvr_elevated_penalty: 5,
            vertical_spike_pc_m5: 15.0,
            vertical_spike_penalty: 10,
            thin_liquidity_usd: 25_000.0,
            thin_liquidity_penalty: 5,
            low_float_fdv_to_liquidity: 200.0,
            low_float_penalty: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFsm {
    pub confirm_snapshots: u32,
    pub confirm_min_seconds: f64,
    pub pending_timeout_minutes: f64,
    pub exit_snapshots: u32,
    pub cooldown_minutes: f64,
    pub escalation_points: u8,
    pub escalation_min_seconds: f64,
    pub data_gap_close_minutes: f64,
    pub rug_cooldown_hours: f64,
    pub min_emit_score: u8,
    /// A pair not observed at all for this long, with nothing open, pending or cooling down,
    /// is forgotten (its state freed); if it comes back it starts afresh. Bounds the engine's
    /// memory under discovery.
    pub forget_idle_hours: f64,
    /// Opened and escalated events a minute over all pairs (a token bucket of this size,
    /// refilled at this rate; 0: no limit). When it runs low, lower-priority and lower-score
    /// events are dropped first: rug warnings always pass, bearish events keep a quarter of
    /// the bucket for themselves, and a bullish event needs more tokens the lower its score.
    pub global_events_per_minute: f64,
    /// Among the pairs of one token (same chain and base token), only the deepest opens the
    /// market kinds (momentum, surge, pressure, reversal); the others are its `related_pairs`.
    pub dedupe_per_token: bool,
    /// A pair's stance is bullish while a bullish episode at least this score is open (and no
    /// bearish one is); a change emits a `stance` event.
    pub stance_min_bullish_score: u8,
}

impl Default for RawFsm {
    fn default() -> Self {
        RawFsm {
            confirm_snapshots: 2,
            confirm_min_seconds: 60.0,
            pending_timeout_minutes: 10.0,
            exit_snapshots: 2,
            cooldown_minutes: 30.0,
            escalation_points: 15,
            escalation_min_seconds: 300.0,
            data_gap_close_minutes: 15.0,
            rug_cooldown_hours: 24.0,
            min_emit_score: 40,
            forget_idle_hours: 48.0,
            global_events_per_minute: 120.0,
            dedupe_per_token: true,
            stance_min_bullish_score: 60,
        }
    }
}

/// The pair's own price volatility, the yardstick of the relative rules (docs/signals.md,
/// "Relative to the pair").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawVolatility {
    pub half_life_minutes: f64,
    /// The short-run yardstick's half-life: a market that turns hot is learnt in an hour,
    /// and a move is measured against the larger of the two σ. A move of `momentum.enter_z`
    /// sets it back to the long-run one (the minutes that led into a move were the move's).
    pub fast_half_life_minutes: f64,
    /// Observations (fresh snapshots) and the span they need before the z-scores exist; until
    /// then the absolute thresholds hold.
    pub min_obs: u32,
    pub min_span_minutes: f64,
    /// A step taken while the price stands this many σ from where it was is part of a move,
    /// not of the pair's normal: it is left out of the estimate.
    pub freeze_z: f64,
    /// The spans a move is measured over.
    pub lookbacks_minutes: Vec<f64>,
}

impl Default for RawVolatility {
    fn default() -> Self {
        RawVolatility {
            half_life_minutes: 360.0,
            fast_half_life_minutes: 60.0,
            min_obs: 60,
            min_span_minutes: 120.0,
            freeze_z: 3.0,
            lookbacks_minutes: vec![5.0, 15.0, 30.0, 60.0],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFreshness {
    pub price_jump_suspect_factor: f64,
    pub price_jump_window_minutes: f64,
    pub window_monotonic_tolerance: f64,
    pub stale_m5_proof_minutes: f64,
}

impl Default for RawFreshness {
    fn default() -> Self {
        RawFreshness {
            price_jump_suspect_factor: 10.0,
            price_jump_window_minutes: 10.0,
            window_monotonic_tolerance: 0.01,
            stale_m5_proof_minutes: 6.0,
        }
    }
}

const BIG: f64 = 1e15;

/// Eligibility gates (docs/signals.md, "Eligibility").
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub min_liquidity_usd_bullish: f64,
    pub min_liquidity_ref_usd_bearish: f64,
    pub min_age_bullish: Duration,
    pub min_txns_h1: u64,
    pub min_volume_h1_usd: f64,
    pub min_txns_h1_bearish: u64,
    pub new_pair_max_age: Duration,
    pub new_pair_min_liquidity_usd: f64,
    pub new_pair_min_txns_h1: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Momentum {
    pub enter_z: f64,
    pub min_move_pct: f64,
    pub exit_z: f64,
    pub absolute_min_txns_h1: u64,
    pub enter_pc_h1: f64,
    pub enter_pc_m5: f64,
    pub exit_pc_h1: f64,
    pub exit_pc_m5: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSurge {
    pub baseline_floor_usd_per_min: f64,
    pub enter_r5: f64,
    pub enter_r60: f64,
    pub min_volume_m5_usd: f64,
    pub min_volume_h1_usd: f64,
    pub z_threshold: f64,
    pub z_half_life: Duration,
    pub z_min_obs: u32,
    pub z_min_span: Duration,
    pub exit_ratio: f64,
    pub direction_pc_m5: f64,
    pub flip_pc_m5: f64,
    pub min_count_z: f64,
    pub r60_min_r5: f64,
    pub direction_pc_h1: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuyPressure {
    pub prior: f64,
    pub enter_bp_h1: f64,
    pub exit_bp_h1: f64,
    pub enter_bp_m5: f64,
    pub min_txns_h1: u64,
    pub min_txns_m5: u64,
    pub sell_enter_bp_m5: f64,
    pub min_imbalance_z: f64,
    pub min_abs_pc_h1: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PumpReversal {
    pub enter_pc_m5: f64,
    pub prior_pc_h1: f64,
    pub prior_pc_h6: f64,
    pub drawdown: f64,
    pub high_lookback: Duration,
    pub high_min_rise_pct: f64,
    pub exit_pc_m5: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Liquidity {
    pub drain_lookback: Duration,
    pub drain_enter: f64,
    pub drain_exit: f64,
    pub drain_exit_after: Duration,
    pub rug_enter: f64,
    pub rug_abs_floor_usd: f64,
    pub rug_abs_ref_usd: f64,
    pub rug_crash_pc_m5: f64,
    pub rug_crash_lp_removed: f64,
    /// Lower-cased once, so that matching a pool's labels does not allocate.
    pub concentrated_labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Risk {
    pub sell_side_absent_min_buys_h1: u64,
    pub sell_side_absent_penalty: u32,
    pub sell_side_absent_cap: u8,
    pub wash_lvr: f64,
    pub wash_max_abs_pc_h24: f64,
    pub wash_max_abs_pc_m5: f64,
    pub wash_penalty: u32,
    pub wash_max_impact: f64,
    pub wash_balance: f64,
    pub few_wallets_ratio: f64,
    pub few_wallets_penalty: u32,
    pub lvr_extreme: f64,
    pub lvr_extreme_penalty: u32,
    pub lvr_elevated: f64,
    pub lvr_elevated_penalty: u32,
    pub vertical_spike_pc_m5: f64,
    pub vertical_spike_penalty: u32,
    pub thin_liquidity_usd: f64,
    pub thin_liquidity_penalty: u32,
    pub low_float_fdv_to_liquidity: f64,
    pub low_float_penalty: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fsm {
    pub confirm_snapshots: u32,
    pub confirm_min: Duration,
    pub pending_timeout: Duration,
    pub exit_snapshots: u32,
    pub cooldown: Duration,
    pub escalation_points: u8,
    pub escalation_min: Duration,
    pub data_gap_close: Duration,
    pub rug_cooldown: Duration,
    pub min_emit_score: u8,
    pub forget_idle: Duration,
    pub global_events_per_minute: f64,
    pub dedupe_per_token: bool,
    pub stance_min_bullish_score: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Volatility {
    pub half_life: Duration,
    pub fast_half_life: Duration,
    pub min_obs: u32,
    pub min_span: Duration,
    pub freeze_z: f64,
    pub lookbacks: Vec<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    pub price_jump_suspect_factor: f64,
    pub price_jump_window: Duration,
    pub window_monotonic_tolerance: f64,
    pub stale_m5_proof: Duration,
}

/// The engine's parameters, every range checked ([`Params::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub gates: Gates,
    pub momentum: Momentum,
    pub volume_surge: VolumeSurge,
    pub buy_pressure: BuyPressure,
    pub pump_reversal: PumpReversal,
    pub liquidity: Liquidity,
    pub risk: Risk,
    pub fsm: Fsm,
    pub freshness: Freshness,
    pub volatility: Volatility,
    hash: String,
    /// The durations in the units the engine computes in, converted once.
    pub(crate) ms: Millis,
}

/// The durations of [`Params`] as Unix-ms spans and ages in minutes, so that the per-snapshot
/// path does no unit conversions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Millis {
    pub min_age_bullish_min: f64,
    pub new_pair_max_age_min: f64,
    pub z_half_life: i64,
    pub z_min_span: i64,
    pub high_lookback: i64,
    pub drain_lookback: i64,
    pub drain_exit_after: i64,
    pub confirm_min: i64,
    pub pending_timeout: i64,
    pub cooldown: i64,
    pub escalation_min: i64,
    pub data_gap_close: i64,
    pub rug_cooldown: i64,
    pub forget_idle: i64,
    pub price_jump_window: i64,
    pub stale_m5_proof: i64,
    pub vol_half_life: i64,
    pub vol_fast_half_life: i64,
    pub vol_min_span: i64,
}

impl RawGates {
    /// Checks `[signal.gates]`.
    fn parse(&self) -> Result<Gates, FieldError> {
        let g = self;
        Ok(Gates {
            min_liquidity_usd_bullish: in_range(
                "gates.min_liquidity_usd_bullish",
                g.min_liquidity_usd_bullish,
                0.0,
                BIG,
            )?,
            min_liquidity_ref_usd_bearish: in_range(
                "gates.min_liquidity_ref_usd_bearish",
                g.min_liquidity_ref_usd_bearish,
                0.0,
                BIG,
            )?,
            min_age_bullish: minutes(
                "gates.min_age_minutes_bullish",
                g.min_age_minutes_bullish,
                0.0,
                525_600.0,
            )?,
            min_txns_h1: g.min_txns_h1,
            min_volume_h1_usd: in_range("gates.min_volume_h1_usd", g.min_volume_h1_usd, 0.0, BIG)?,
            min_txns_h1_bearish: g.min_txns_h1_bearish,
            new_pair_max_age: minutes(
                "gates.new_pair_max_age_minutes",
                g.new_pair_max_age_minutes,
                1.0,
                1440.0,
            )?,
            new_pair_min_liquidity_usd: in_range(
                "gates.new_pair_min_liquidity_usd",
                g.new_pair_min_liquidity_usd,
                0.0,
                BIG,
            )?,
            new_pair_min_txns_h1: g.new_pair_min_txns_h1,
        })
    }
}

impl RawMomentum {
    /// Checks `[signal.momentum]`.
    fn parse(&self) -> Result<Momentum, FieldError> {
        let m = self;
        let enter_pc_h1 = in_range("momentum.enter_pc_h1", m.enter_pc_h1, 0.1, 10_000.0)?;
        let enter_z = in_range("momentum.enter_z", m.enter_z, 0.5, 100.0)?;
        Ok(Momentum {
            enter_z,
            min_move_pct: in_range("momentum.min_move_pct", m.min_move_pct, 0.0, 10_000.0)?,
            exit_z: in_range("momentum.exit_z", m.exit_z, 0.0, enter_z)?,
            absolute_min_txns_h1: m.absolute_min_txns_h1,
            enter_pc_h1,
            enter_pc_m5: in_range("momentum.enter_pc_m5", m.enter_pc_m5, 0.0, 10_000.0)?,
            exit_pc_h1: in_range("momentum.exit_pc_h1", m.exit_pc_h1, 0.0, enter_pc_h1)?,
            exit_pc_m5: in_range("momentum.exit_pc_m5", m.exit_pc_m5, -100.0, 0.0)?,
        })
    }
}

impl RawVolumeSurge {
    /// Checks `[signal.volume_surge]`.
    fn parse(&self) -> Result<VolumeSurge, FieldError> {
        let v = self;
        let enter_r5 = in_range("volume_surge.enter_r5", v.enter_r5, 1.0, 1e6)?;
        let enter_r60 = in_range("volume_surge.enter_r60", v.enter_r60, 1.0, 1e6)?;
        let direction_pc_m5 = in_range(
            "volume_surge.direction_pc_m5",
            v.direction_pc_m5,
            0.0,
            100.0,
        )?;
        Ok(VolumeSurge {
            baseline_floor_usd_per_min: in_range(
                "volume_surge.baseline_floor_usd_per_min",
                v.baseline_floor_usd_per_min,
                1e-6,
                BIG,
            )?,
            enter_r5,
            enter_r60,
            min_volume_m5_usd: in_range(
                "volume_surge.min_volume_m5_usd",
                v.min_volume_m5_usd,
                0.0,
                BIG,
            )?,
            min_volume_h1_usd: in_range(
                "volume_surge.min_volume_h1_usd",
                v.min_volume_h1_usd,
                0.0,
                BIG,
            )?,
            z_threshold: in_range("volume_surge.z_threshold", v.z_threshold, 0.5, 100.0)?,
            z_half_life: minutes(
                "volume_surge.z_half_life_minutes",
                v.z_half_life_minutes,
                1.0,
                100_000.0,
            )?,
            z_min_obs: at_least("volume_surge.z_min_obs", v.z_min_obs, 2)?,
            z_min_span: minutes(
                "volume_surge.z_min_span_minutes",
                v.z_min_span_minutes,
                0.0,
                100_000.0,
            )?,
            exit_ratio: in_range(
                "volume_surge.exit_ratio",
                v.exit_ratio,
                0.0,
                enter_r5.min(enter_r60),
            )?,
            direction_pc_m5,
            flip_pc_m5: in_range(
                "volume_surge.flip_pc_m5",
                v.flip_pc_m5,
                direction_pc_m5,
                100.0,
            )?,
            min_count_z: in_range("volume_surge.min_count_z", v.min_count_z, 0.0, 100.0)?,
            r60_min_r5: in_range("volume_surge.r60_min_r5", v.r60_min_r5, 0.0, enter_r5)?,
            direction_pc_h1: in_range(
                "volume_surge.direction_pc_h1",
                v.direction_pc_h1,
                0.0,
                1_000.0,
            )?,
        })
    }
}

impl RawBuyPressure {
    /// Checks `[signal.buy_pressure]`.
    fn parse(&self) -> Result<BuyPressure, FieldError> {
        let b = self;
        let enter_bp_h1 = in_range("buy_pressure.enter_bp_h1", b.enter_bp_h1, 0.5, 1.0)?;
        Ok(BuyPressure {
            prior: in_range("buy_pressure.prior", b.prior, 0.0, 1e6)?,
            enter_bp_h1,
            exit_bp_h1: in_range("buy_pressure.exit_bp_h1", b.exit_bp_h1, 0.5, enter_bp_h1)?,
            enter_bp_m5: in_range("buy_pressure.enter_bp_m5", b.enter_bp_m5, 0.0, 1.0)?,
            min_txns_h1: at_least("buy_pressure.min_txns_h1", b.min_txns_h1, 1)?,
            min_txns_m5: b.min_txns_m5,
            sell_enter_bp_m5: in_range(
                "buy_pressure.sell_enter_bp_m5",
                b.sell_enter_bp_m5,
                0.0,
                1.0,
            )?,
            min_imbalance_z: in_range(
                "buy_pressure.min_imbalance_z",
                b.min_imbalance_z,
                0.0,
                100.0,
            )?,
            min_abs_pc_h1: in_range("buy_pressure.min_abs_pc_h1", b.min_abs_pc_h1, 0.0, 1e6)?,
        })
    }
}

impl RawPumpReversal {
    /// Checks `[signal.pump_reversal]`.
    fn parse(&self) -> Result<PumpReversal, FieldError> {
        let p = self;
        let enter_pc_m5 = in_range("pump_reversal.enter_pc_m5", p.enter_pc_m5, -100.0, 0.0)?;
        Ok(PumpReversal {
            enter_pc_m5,
            prior_pc_h1: in_range("pump_reversal.prior_pc_h1", p.prior_pc_h1, 0.0, 1e6)?,
            prior_pc_h6: in_range("pump_reversal.prior_pc_h6", p.prior_pc_h6, 0.0, 1e6)?,
            drawdown: in_range("pump_reversal.drawdown", p.drawdown, 0.01, 1.0)?,
            high_lookback: minutes(
                "pump_reversal.high_lookback_minutes",
                p.high_lookback_minutes,
                1.0,
                1440.0,
            )?,
            high_min_rise_pct: in_range(
                "pump_reversal.high_min_rise_pct",
                p.high_min_rise_pct,
                0.0,
                1e6,
            )?,
            exit_pc_m5: in_range("pump_reversal.exit_pc_m5", p.exit_pc_m5, enter_pc_m5, 0.0)?,
        })
    }
}

impl RawLiquidity {
    /// Checks `[signal.liquidity]`.
    fn parse(&self) -> Result<Liquidity, FieldError> {
        let l = self;
        let drain_enter = in_range("liquidity.drain_enter", l.drain_enter, 0.01, 1.0)?;
        let rug_abs_floor_usd =
            in_range("liquidity.rug_abs_floor_usd", l.rug_abs_floor_usd, 0.0, BIG)?;
        Ok(Liquidity {
            drain_lookback: minutes(
                "liquidity.drain_lookback_minutes",
                l.drain_lookback_minutes,
                1.0,
                1440.0,
            )?,
            drain_enter,
            drain_exit: in_range("liquidity.drain_exit", l.drain_exit, 0.0, drain_enter)?,
            drain_exit_after: minutes(
                "liquidity.drain_exit_minutes",
                l.drain_exit_minutes,
                0.0,
                1440.0,
            )?,
            rug_enter: in_range("liquidity.rug_enter", l.rug_enter, drain_enter, 1.0)?,
            rug_abs_floor_usd,
            rug_abs_ref_usd: in_range(
                "liquidity.rug_abs_ref_usd",
                l.rug_abs_ref_usd,
                rug_abs_floor_usd,
                BIG,
            )?,
            rug_crash_pc_m5: in_range("liquidity.rug_crash_pc_m5", l.rug_crash_pc_m5, -100.0, 0.0)?,
            rug_crash_lp_removed: in_range(
                "liquidity.rug_crash_lp_removed",
                l.rug_crash_lp_removed,
                0.0,
                1.0,
            )?,
            concentrated_labels: l
                .concentrated_labels
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        })
    }
}

impl RawRisk {
    /// Checks `[signal.risk]`.
    fn parse(&self) -> Result<Risk, FieldError> {
        let r = self;
        let lvr_elevated = in_range("risk.lvr_elevated", r.lvr_elevated, 0.0, 1e9)?;
        Ok(Risk {
            sell_side_absent_min_buys_h1: r.sell_side_absent_min_buys_h1,
            sell_side_absent_penalty: r.sell_side_absent_penalty,
            sell_side_absent_cap: in_range(
                "risk.sell_side_absent_cap",
                f64::from(r.sell_side_absent_cap),
                0.0,
                100.0,
            )
            .map(|_| r.sell_side_absent_cap)?,
            wash_lvr: in_range("risk.wash_lvr", r.wash_lvr, 0.0, 1e9)?,
            wash_max_abs_pc_h24: in_range(
                "risk.wash_max_abs_pc_h24",
                r.wash_max_abs_pc_h24,
                0.0,
                1e6,
            )?,
            wash_max_abs_pc_m5: in_range(
                "risk.wash_max_abs_pc_m5",
                r.wash_max_abs_pc_m5,
                0.0,
                1e6,
            )?,
            wash_penalty: r.wash_penalty,
            wash_max_impact: in_range("risk.wash_max_impact", r.wash_max_impact, 0.0, 1e6)?,
            wash_balance: in_range("risk.wash_balance", r.wash_balance, 0.0, 0.5)?,
            few_wallets_ratio: in_range("risk.few_wallets_ratio", r.few_wallets_ratio, 0.0, 1.0)?,
            few_wallets_penalty: r.few_wallets_penalty,
            lvr_extreme: in_range("risk.lvr_extreme", r.lvr_extreme, lvr_elevated, 1e9)?,
            lvr_extreme_penalty: r.lvr_extreme_penalty,
            lvr_elevated,
            lvr_elevated_penalty: r.lvr_elevated_penalty,
            vertical_spike_pc_m5: in_range(
                "risk.vertical_spike_pc_m5",
                r.vertical_spike_pc_m5,
                0.0,
                1e6,
            )?,
            vertical_spike_penalty: r.vertical_spike_penalty,
            thin_liquidity_usd: in_range(
                "risk.thin_liquidity_usd",
                r.thin_liquidity_usd,
                0.0,
                BIG,
            )?,
            thin_liquidity_penalty: r.thin_liquidity_penalty,
            low_float_fdv_to_liquidity: in_range(
                "risk.low_float_fdv_to_liquidity",
                r.low_float_fdv_to_liquidity,
                0.0,
                1e12,
            )?,
            low_float_penalty: r.low_float_penalty,
        })
    }
}

impl RawFsm {
    /// Checks `[signal.fsm]`.
    fn parse(&self) -> Result<Fsm, FieldError> {
        let f = self;
        Ok(Fsm {
            confirm_snapshots: at_least("fsm.confirm_snapshots", f.confirm_snapshots, 1)?,
            confirm_min: seconds(
                "fsm.confirm_min_seconds",
                f.confirm_min_seconds,
                0.0,
                86_400.0,
            )?,
            pending_timeout: minutes(
                "fsm.pending_timeout_minutes",
                f.pending_timeout_minutes,
                0.1,
                1440.0,
            )?,
            exit_snapshots: at_least("fsm.exit_snapshots", f.exit_snapshots, 1)?,
            cooldown: minutes("fsm.cooldown_minutes", f.cooldown_minutes, 0.0, 10_080.0)?,
            escalation_points: at_least("fsm.escalation_points", f.escalation_points, 1)?,
            escalation_min: seconds(
                "fsm.escalation_min_seconds",
                f.escalation_min_seconds,
                0.0,
                86_400.0,
            )?,
            data_gap_close: minutes(
                "fsm.data_gap_close_minutes",
                f.data_gap_close_minutes,
                0.1,
                1440.0,
            )?,
            rug_cooldown: hours("fsm.rug_cooldown_hours", f.rug_cooldown_hours, 0.0, 8760.0)?,
            min_emit_score: in_range(
                "fsm.min_emit_score",
                f64::from(f.min_emit_score),
                0.0,
                100.0,
            )
            .map(|_| f.min_emit_score)?,
            forget_idle: hours("fsm.forget_idle_hours", f.forget_idle_hours, 1.0, 8760.0)?,
            global_events_per_minute: in_range(
                "fsm.global_events_per_minute",
                f.global_events_per_minute,
                0.0,
                1e9,
            )?,
            dedupe_per_token: f.dedupe_per_token,
            stance_min_bullish_score: in_range(
                "fsm.stance_min_bullish_score",
                f64::from(f.stance_min_bullish_score),
                0.0,
                100.0,
            )
            .map(|_| f.stance_min_bullish_score)?,
        })
    }
}

impl RawFreshness {
    /// Checks `[signal.freshness]`.
    fn parse(&self) -> Result<Freshness, FieldError> {
        let fr = self;
        Ok(Freshness {
            price_jump_suspect_factor: in_range(
                "freshness.price_jump_suspect_factor",
                fr.price_jump_suspect_factor,
                1.5,
                1e6,
            )?,
            price_jump_window: minutes(
                "freshness.price_jump_window_minutes",
                fr.price_jump_window_minutes,
                0.0,
                1440.0,
            )?,
            window_monotonic_tolerance: in_range(
                "freshness.window_monotonic_tolerance",
                fr.window_monotonic_tolerance,
                0.0,
                1.0,
            )?,
            stale_m5_proof: minutes(
                "freshness.stale_m5_proof_minutes",
                fr.stale_m5_proof_minutes,
                0.5,
                1440.0,
            )?,
        })
    }
}

impl RawVolatility {
    /// Checks `[signal.volatility]`.
    fn parse(&self) -> Result<Volatility, FieldError> {
        let half_life = minutes(
            "volatility.half_life_minutes",
            self.half_life_minutes,
            1.0,
            100_000.0,
        )?;
        Ok(Volatility {
            half_life,
            // Longer than the long-run one, it would be the long-run one.
            fast_half_life: minutes(
                "volatility.fast_half_life_minutes",
                self.fast_half_life_minutes,
                1.0,
                as_minutes(half_life),
            )?,
            min_obs: at_least("volatility.min_obs", self.min_obs, 2)?,
            min_span: minutes(
                "volatility.min_span_minutes",
                self.min_span_minutes,
                0.0,
                100_000.0,
            )?,
            freeze_z: in_range("volatility.freeze_z", self.freeze_z, 0.5, 1e6)?,
            lookbacks: {
                if self.lookbacks_minutes.is_empty() || self.lookbacks_minutes.len() > 8 {
                    return Err(FieldError::new(
                        "volatility.lookbacks_minutes",
                        "must list 1 to 8 spans",
                        format!("{} spans", self.lookbacks_minutes.len()),
                    ));
                }
                let mut l = self
                    .lookbacks_minutes
                    .iter()
                    .map(|m| minutes("volatility.lookbacks_minutes", *m, 1.0, 1440.0))
                    .collect::<Result<Vec<_>, _>>()?;
                l.sort_unstable();
                l.dedup();
                l
            },
        })
    }
}

impl Default for Params {
    /// The documented defaults. They are valid by construction; `defaults_parse` in the tests
    /// below proves it, so the fallback never runs.
    fn default() -> Self {
        Params::parse(&RawParams::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Params {
    /// Checks every range, one section at a time, and converts units once. Field names are
    /// relative to `[signal]`.
    pub fn parse(raw: &RawParams) -> Result<Params, FieldError> {
        let gates = raw.gates.parse()?;
        let momentum = raw.momentum.parse()?;
        let volume_surge = raw.volume_surge.parse()?;
        let buy_pressure = raw.buy_pressure.parse()?;
        let pump_reversal = raw.pump_reversal.parse()?;
        let liquidity = raw.liquidity.parse()?;
        let risk = raw.risk.parse()?;
        let fsm = raw.fsm.parse()?;
        if risk.sell_side_absent_cap >= fsm.min_emit_score && fsm.min_emit_score > 0 {
            // A capped event must not be emitted: the cap is what keeps a honeypot quiet.
            return Err(FieldError::new(
                "risk.sell_side_absent_cap",
                format!(
                    "must be below fsm.min_emit_score ({}), or capped events are still emitted",
                    fsm.min_emit_score
                ),
                risk.sell_side_absent_cap,
            ));
        }
        let freshness = raw.freshness.parse()?;
        let volatility = raw.volatility.parse()?;
        let ms = Millis {
            min_age_bullish_min: as_minutes(gates.min_age_bullish),
            new_pair_max_age_min: as_minutes(gates.new_pair_max_age),
            z_half_life: to_ms(volume_surge.z_half_life),
            z_min_span: to_ms(volume_surge.z_min_span),
            high_lookback: to_ms(pump_reversal.high_lookback),
            drain_lookback: to_ms(liquidity.drain_lookback),
            drain_exit_after: to_ms(liquidity.drain_exit_after),
            confirm_min: to_ms(fsm.confirm_min),
            pending_timeout: to_ms(fsm.pending_timeout),
            cooldown: to_ms(fsm.cooldown),
            escalation_min: to_ms(fsm.escalation_min),
            data_gap_close: to_ms(fsm.data_gap_close),
            rug_cooldown: to_ms(fsm.rug_cooldown),
            forget_idle: to_ms(fsm.forget_idle),
            price_jump_window: to_ms(freshness.price_jump_window),
            stale_m5_proof: to_ms(freshness.stale_m5_proof),
            vol_half_life: to_ms(volatility.half_life),
            vol_fast_half_life: to_ms(volatility.fast_half_life),
            vol_min_span: to_ms(volatility.min_span),
        };
        Ok(Params {
            ms,
            gates,
            momentum,
            volume_surge,
            buy_pressure,
            pump_reversal,
            liquidity,
            risk,
            fsm,
            freshness,
            volatility,
            hash: params_hash(raw),
        })
    }

    /// `params_hash`: sha256 of the canonical JSON of the raw parameters (struct field order is
    /// fixed, so the JSON is canonical), first 16 bytes in hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

fn params_hash(raw: &RawParams) -> String {
    use sha2::{Digest, Sha256};
    // Serializing plain numbers, strings and lists cannot fail.
    let json = serde_json::to_vec(raw).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        assert!(Params::parse(&RawParams::default()).is_ok());
        let p = Params::default();
        assert_eq!(p.fsm.cooldown, Duration::from_secs(30 * 60));
        assert_eq!(p.fsm.rug_cooldown, Duration::from_secs(24 * 3600));
        assert!(p
            .liquidity
            .concentrated_labels
            .contains(&"clmm".to_string()));
    }

    fn check(edit: impl Fn(&mut RawParams), expect_field: Option<&str>) {
        let mut raw = RawParams::default();
        edit(&mut raw);
        match (Params::parse(&raw), expect_field) {
            (Ok(_), None) => {}
            (Err(e), Some(field)) => assert_eq!(e.field, field, "{e}"),
            (Ok(_), Some(field)) => panic!("accepted, expected an error naming {field}"),
            (Err(e), None) => panic!("rejected: {e}"),
        }
    }

    #[test]
    fn each_range_names_its_field() {
        check(|r| r.momentum.enter_pc_h1 = 20.0, None);
        check(
            |r| r.momentum.enter_pc_h1 = -1.0,
            Some("momentum.enter_pc_h1"),
        );
        check(
            |r| r.momentum.exit_pc_h1 = 99.0,
            Some("momentum.exit_pc_h1"),
        );
        check(
            |r| r.fsm.confirm_snapshots = 0,
            Some("fsm.confirm_snapshots"),
        );
        check(
            |r| r.freshness.window_monotonic_tolerance = f64::NAN,
            Some("freshness.window_monotonic_tolerance"),
        );
        check(
            |r| r.fsm.cooldown_minutes = -1.0,
            Some("fsm.cooldown_minutes"),
        );
        check(|r| r.liquidity.rug_enter = 0.1, Some("liquidity.rug_enter"));
        check(|r| r.fsm.min_emit_score = 101, Some("fsm.min_emit_score"));
        check(
            |r| r.risk.sell_side_absent_cap = 40,
            Some("risk.sell_side_absent_cap"),
        );
        check(
            |r| {
                r.risk.sell_side_absent_cap = 45;
                r.fsm.min_emit_score = 50;
            },
            None,
        );
        check(
            |r| r.volume_surge.r60_min_r5 = 5.0,
            Some("volume_surge.r60_min_r5"),
        );
        check(
            |r| r.volatility.fast_half_life_minutes = 361.0,
            Some("volatility.fast_half_life_minutes"),
        );
        check(
            |r| {
                r.volatility.half_life_minutes = 720.0;
                r.volatility.fast_half_life_minutes = 361.0;
            },
            None,
        );
    }

    #[test]
    fn the_hash_changes_with_any_threshold() {
        let a = Params::default();
        let mut raw = RawParams::default();
        raw.momentum.enter_pc_m5 = 3.5;
        let b = Params::parse(&raw).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), Params::default().hash());
        assert_eq!(a.hash().len(), 32);
    }
}
