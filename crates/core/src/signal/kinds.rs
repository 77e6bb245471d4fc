//! The signal kinds of docs/signals.md ("Eligibility", "Kinds", "Score"): eligibility gates,
//! every kind's enter and exit rule and how many snapshots confirm them, the score (E, Q, P) and
//! the risk flags, all as pure functions of one snapshot's [`Features`], the configuration and
//! the little the state machine keeps of a pair's past ([`Context`]). No state lives here (the
//! state machine is `signal::machine`), and nothing allocates except [`reasons`] and
//! [`RiskFlags::names`], which run only when an event is built.

use super::params::Params;
use crate::model::{Direction, Kind};

use super::features::{ramp, Move, QuoteMove};

/// Everything the rules read, computed once per fresh, valid snapshot. `None` is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Features {
    pub t_ms: i64,
    pub age_min: Option<f64>,
    pub price: Option<f64>,
    /// Price change % for m5, h1, h6, h24.
    pub pc: [Option<f64>; 4],
    /// Volume USD for m5, h1, h6, h24.
    pub vol: [Option<f64>; 4],
    pub buys_m5: Option<u64>,
    pub sells_m5: Option<u64>,
    pub buys_h1: Option<u64>,
    pub sells_h1: Option<u64>,
    /// Poisson z-scores of the trade counts against their baselines: N_m5 vs the rest of h1,
    /// N_h1 vs the rest of h6.
    pub count_z_m5: Option<f64>,
    pub count_z_h1: Option<f64>,
    pub r5: Option<f64>,
    pub r60: Option<f64>,
    pub r6h: Option<f64>,
    pub cascade: u32,
    /// The falling segments (`momentum_down`'s cascade).
    pub cascade_down: u32,
    /// Price impact per unit of turnover on m5 and h1 (`features::impact`).
    pub impact_m5: Option<f64>,
    pub impact_h1: Option<f64>,
    pub bp_m5: Option<f64>,
    pub bp_h1: Option<f64>,
    pub lvr: Option<f64>,
    pub ur_h1: Option<f64>,
    pub buyer_skew: Option<f64>,
    pub z_vol: Option<f64>,
    /// The price's strongest move against the pair's own volatility (`features::PricePath`);
    /// `None` until the pair's history is long enough.
    pub price_move: Option<Move>,
    /// The quote token's move in USD, where the snapshots give the quote's price.
    #[serde(default)]
    pub quote_move: Option<QuoteMove>,
    pub liquidity: Option<f64>,
    pub liquidity_ref: Option<f64>,
    /// Pool depth now: K for constant-product pools, USD liquidity otherwise.
    pub depth: Option<f64>,
    pub lp_removed: Option<f64>,
    /// `lp_removed` came from USD liquidity (adjusted for the price move), not the pool
    /// invariant: it never raises a rug warning.
    pub liq_usd_proxy: bool,
    /// The USD liquidity is only what sits in the price's range (bars of a concentrated pool),
    /// not what the pool holds.
    pub active_range_only: bool,
    /// `lp_removed` is the chain's own measure: the LP burns of the lookback, exact.
    pub lp_burn: bool,
    pub dd30: Option<f64>,
    pub fdv: Option<f64>,
    /// Some optional field was missing (lowers `q_data`).
    pub optional_missing: bool,
}

impl Features {
    pub fn n_m5(&self) -> Option<u64> {
        Some(self.buys_m5? + self.sells_m5?)
    }

    pub fn n_h1(&self) -> Option<u64> {
        Some(self.buys_h1? + self.sells_h1?)
    }

    /// `(B_h1 − S_h1)/sqrt(N_h1)`: positive for buying, negative for selling.
    pub fn imbalance_z(&self) -> Option<f64> {
        let (b, s) = (self.buys_h1? as f64, self.sells_h1? as f64);
        (b + s > 0.0).then(|| (b - s) / (b + s).sqrt())
    }
}

/// Risk flags as a bit set: computing them allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RiskFlags(u16);

impl RiskFlags {
    pub const SELL_SIDE_ABSENT: u16 = 1;
    pub const WASH_SUSPECTED: u16 = 1 << 1;
    pub const FEW_WALLETS: u16 = 1 << 2;
    pub const LVR_EXTREME: u16 = 1 << 3;
    pub const LVR_ELEVATED: u16 = 1 << 4;
    pub const VERTICAL_SPIKE: u16 = 1 << 5;
    pub const THIN_LIQUIDITY: u16 = 1 << 6;
    pub const LOW_FLOAT: u16 = 1 << 7;
    pub const FLAT_HIGH_VOLUME: u16 = 1 << 8;
    pub const LIQ_USD_PROXY: u16 = 1 << 9;
    pub const LP_BURN: u16 = 1 << 10;
    pub const QUOTE_MOVE: u16 = 1 << 11;

    const NAMES: [&'static str; 12] = [
        "sell_side_absent",
        "wash_suspected",
        "few_wallets",
        "lvr_extreme",
        "lvr_elevated",
        "vertical_spike",
        "thin_liquidity",
        "low_float",
        "flat_high_volume",
        "liq_usd_proxy",
        "lp_burn",
        "quote_move",
    ];

    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }

    pub fn set(&mut self, flag: u16) {
        self.0 |= flag;
    }

    pub fn names(self) -> Vec<String> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| (*n).to_string())
            .collect()
    }
}

/// The flags of a snapshot and the penalty points they cost bullish and neutral events.
pub fn risk(f: &Features, cfg: &Params) -> (RiskFlags, u32) {
    let r = &cfg.risk;
    let mut flags = RiskFlags::default();
    let mut p = 0;
    if let (Some(b), Some(s)) = (f.buys_h1, f.sells_h1) {
        if b >= r.sell_side_absent_min_buys_h1 && (s as f64) <= (2.0f64).max(0.05 * b as f64) {
            flags.set(RiskFlags::SELL_SIDE_ABSENT);
            p += r.sell_side_absent_penalty;
        }
    }
    let wash_turnover = f.lvr.is_some_and(|l| l >= r.wash_lvr)
        && f.pc[3].is_some_and(|x| x.abs() < r.wash_max_abs_pc_h24);
    let wash_flat_surge = f.r5.is_some_and(|x| x >= cfg.volume_surge.enter_r5)
        && f.pc[0].is_some_and(|x| x.abs() < r.wash_max_abs_pc_m5)
        && f.bp_m5.is_some_and(|x| (x - 0.5).abs() < 0.05)
        && f.n_m5().is_some_and(|n| n >= 20);
    let wash_wallets = f.ur_h1.is_some_and(|u| u < 0.10) && f.n_h1().is_some_and(|n| n >= 100);
    // Volume that moved no price: on the window that makes the surge, the price impact per
    // unit of turnover is small and the counts are balanced. A poll between a wash buy and
    // its sell-back shows the price a few percent off, but against the window's turnover that
    // is still little.
    let (by_m5, by_h1) = surge_paths(f, cfg);
    let no_impact = |impact: Option<f64>, bp: Option<f64>| {
        impact.is_some_and(|i| i < r.wash_max_impact)
            && bp.is_some_and(|bp| (bp - 0.5).abs() < r.wash_balance)
    };
    let wash_impact =
        (by_m5 && no_impact(f.impact_m5, f.bp_m5)) || (by_h1 && no_impact(f.impact_h1, f.bp_h1));
    if wash_turnover || wash_flat_surge || wash_wallets || wash_impact {
        flags.set(RiskFlags::WASH_SUSPECTED);
        p += r.wash_penalty;
    }
    if f.ur_h1.is_some_and(|u| u < r.few_wallets_ratio) && f.n_h1().is_some_and(|n| n >= 50) {
        flags.set(RiskFlags::FEW_WALLETS);
        p += r.few_wallets_penalty;
    }
    match f.lvr {
        Some(l) if l >= r.lvr_extreme => {
            flags.set(RiskFlags::LVR_EXTREME);
            p += r.lvr_extreme_penalty;
        }
        Some(l) if l >= r.lvr_elevated => {
            flags.set(RiskFlags::LVR_ELEVATED);
            p += r.lvr_elevated_penalty;
        }
        _ => {}
    }
    if let (Some(m5), Some(h1)) = (f.pc[0], f.pc[1]) {
        if m5.abs() > r.vertical_spike_pc_m5 && m5.abs() > 0.6 * h1.abs() {
            flags.set(RiskFlags::VERTICAL_SPIKE);
            p += r.vertical_spike_penalty;
        }
    }
    if f.liquidity.is_some_and(|l| l < r.thin_liquidity_usd) {
        flags.set(RiskFlags::THIN_LIQUIDITY);
        p += r.thin_liquidity_penalty;
    }
    if let (Some(fdv), Some(l)) = (f.fdv, f.liquidity) {
        if l > 0.0 && fdv / l > r.low_float_fdv_to_liquidity {
            flags.set(RiskFlags::LOW_FLOAT);
            p += r.low_float_penalty;
        }
    }
    if f.liq_usd_proxy && f.lp_removed.is_some() {
        flags.set(RiskFlags::LIQ_USD_PROXY);
    }
    if f.lp_burn && f.lp_removed.is_some_and(|x| x > 0.0) {
        flags.set(RiskFlags::LP_BURN);
    }
    // Not a risk, a provenance: the pair's USD price is moving with its quote token, which
    // moved as a momentum would have to. A bot trading the pool against its quote sees none
    // of that move.
    let m = &cfg.momentum;
    if f.quote_move.is_some_and(|q| {
        q.quote.z.abs() >= m.enter_z
            && q.quote.pct.abs() >= m.min_move_pct
            && q.pair_pct * q.quote.pct > 0.0
    }) {
        flags.set(RiskFlags::QUOTE_MOVE);
    }
    (flags, p)
}

/// Bullish (and neutral) gate: liquidity, age, activity; missing data fails it.
pub fn gate_bullish(f: &Features, cfg: &Params) -> bool {
    let g = &cfg.gates;
    f.price.is_some()
        && f.liquidity
            .is_some_and(|l| l >= g.min_liquidity_usd_bullish)
        && f.age_min.is_some_and(|a| a >= cfg.ms.min_age_bullish_min)
        && f.n_h1().is_some_and(|n| n >= g.min_txns_h1)
        && f.vol[1].is_some_and(|v| v >= g.min_volume_h1_usd)
}

/// Bearish gate: reference liquidity and a little activity.
pub fn gate_bearish(f: &Features, cfg: &Params) -> bool {
    let g = &cfg.gates;
    f.liquidity_ref
        .is_some_and(|l| l >= g.min_liquidity_ref_usd_bearish)
        && f.n_h1().is_some_and(|n| n >= g.min_txns_h1_bearish)
}

/// Momentum, volume and pressure kinds need a full h1 window behind them, in both directions.
fn old_enough(f: &Features, cfg: &Params) -> bool {
    f.age_min.is_some_and(|a| a >= cfg.ms.min_age_bullish_min)
}

fn ge(x: Option<f64>, t: f64) -> bool {
    x.is_some_and(|x| x >= t)
}

fn le(x: Option<f64>, t: f64) -> bool {
    x.is_some_and(|x| x <= t)
}

/// Which windows make a surge: m5 (R5 or the volume z-score) and h1 (R60, which needs current
/// activity as well: R5 at least `r60_min_r5`). Each needs its absolute volume and a broad rise
/// in the trade count.
pub fn surge_paths(f: &Features, cfg: &Params) -> (bool, bool) {
    let v = &cfg.volume_surge;
    let broad_m5 = ge(f.count_z_m5, v.min_count_z);
    let broad_h1 = ge(f.count_z_h1, v.min_count_z);
    let m5 = (ge(f.r5, v.enter_r5) && ge(f.vol[0], v.min_volume_m5_usd) && broad_m5)
        || (ge(f.z_vol, v.z_threshold) && ge(f.vol[0], v.min_volume_m5_usd) && broad_m5);
    let h1 = ge(f.r60, v.enter_r60)
        && ge(f.vol[1], v.min_volume_h1_usd)
        && broad_h1
        && ge(f.r5, v.r60_min_r5);
    (m5, h1)
}

/// The direction a volume surge takes from price and flow, on the window that triggered it
/// (m5 when the m5 path holds, else h1).
pub fn surge_direction(f: &Features, cfg: &Params) -> Direction {
    let v = &cfg.volume_surge;
    let (by_m5, _) = surge_paths(f, cfg);
    let (p, bp, d) = if by_m5 {
        (f.pc[0], f.bp_m5, v.direction_pc_m5)
    } else {
        (f.pc[1], f.bp_h1, v.direction_pc_h1)
    };
    match (p, bp) {
        (Some(p), Some(bp)) if p > d && bp >= 0.5 => Direction::Bullish,
        (Some(p), Some(bp)) if p < -d && bp < 0.5 => Direction::Bearish,
        _ => Direction::Neutral,
    }
}

/// The price change of the window that triggered a surge: what a direction flip must move.
pub fn surge_move(f: &Features, cfg: &Params) -> Option<f64> {
    if surge_paths(f, cfg).0 {
        f.pc[0]
    } else {
        f.pc[1]
    }
}

fn surging(f: &Features, cfg: &Params) -> bool {
    let (m5, h1) = surge_paths(f, cfg);
    m5 || h1
}

/// What the entry and exit rules read beyond one snapshot's features: what the state machine
/// keeps of the pair's past.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// A rug warning was raised within the rug cooldown: neither a rug nor a drain enters.
    pub rug_quiet: bool,
    /// The pair is young enough, was when first seen, and has had no `new_pair` yet.
    pub new_pair_open: bool,
    /// An open `liquidity_drain`: the pool depth when it opened (the exit's "new reference").
    pub drain_ref_depth: f64,
}

/// The entry condition of every episodic kind. `Some(direction)` when it holds.
pub fn enter(
    kind: Kind,
    f: &Features,
    cfg: &Params,
    flags: RiskFlags,
    ctx: &Context,
) -> Option<Direction> {
    let b = &cfg.buy_pressure;
    let pr = &cfg.pump_reversal;
    let l = &cfg.liquidity;
    let holds = match kind {
        Kind::MomentumUp | Kind::MomentumDown => {
            let sign = momentum_sign(kind);
            let gated = if sign > 0.0 {
                gate_bullish(f, cfg)
            } else {
                gate_bearish(f, cfg) && old_enough(f, cfg)
            };
            if !(gated && momentum(f, cfg, sign)) {
                return None;
            }
            // Before the pair's own history the rule is the naive one with a five-minute
            // condition, a minute late: it cannot tell a bot anything the naive rule does not,
            // so it is information only (docs/signals.md, "What each kind is worth").
            return Some(if relative(f, cfg, sign).is_some() {
                kind_direction(kind)
            } else {
                Direction::Neutral
            });
        }
        Kind::VolumeSurge => {
            if !surging(f, cfg) {
                return None;
            }
            let dir = surge_direction(f, cfg);
            let gated = match dir {
                Direction::Bearish => gate_bearish(f, cfg) && old_enough(f, cfg),
                _ => gate_bullish(f, cfg),
            };
            return gated.then_some(dir);
        }
        Kind::BuyPressure => {
            gate_bullish(f, cfg)
                && ge(f.bp_h1, b.enter_bp_h1)
                && f.n_h1().is_some_and(|n| n >= b.min_txns_h1)
                && ge(f.bp_m5, b.enter_bp_m5)
                && f.n_m5().is_some_and(|n| n >= b.min_txns_m5)
                && ge(f.imbalance_z(), b.min_imbalance_z)
                && ge(f.pc[1], b.min_abs_pc_h1)
                && !flags.has(RiskFlags::SELL_SIDE_ABSENT)
        }
        Kind::SellPressure => {
            gate_bearish(f, cfg)
                && old_enough(f, cfg)
                && le(f.bp_h1, 1.0 - b.enter_bp_h1)
                && f.n_h1().is_some_and(|n| n >= b.min_txns_h1)
                && le(f.imbalance_z(), -b.min_imbalance_z)
                && le(f.pc[1], -b.min_abs_pc_h1)
                && le(f.bp_m5, b.sell_enter_bp_m5)
        }
        Kind::PumpReversal => {
            gate_bearish(f, cfg)
                && le(f.pc[0], pr.enter_pc_m5)
                && (ge(f.pc[1], pr.prior_pc_h1)
                    || ge(f.pc[2], pr.prior_pc_h6)
                    || ge(f.dd30, pr.drawdown))
        }
        Kind::RugWarning => {
            let by_k = ge(f.lp_removed, l.rug_enter);
            let by_floor = f.liquidity.is_some_and(|x| x < l.rug_abs_floor_usd)
                && ge(f.liquidity_ref, l.rug_abs_ref_usd);
            let by_crash =
                le(f.pc[0], l.rug_crash_pc_m5) && ge(f.lp_removed, l.rug_crash_lp_removed);
            // Never from the USD proxy alone: USD liquidity also falls with the price.
            !ctx.rug_quiet
                && !f.liq_usd_proxy
                && f.liquidity.is_some()
                && ge(f.liquidity_ref, cfg.gates.min_liquidity_ref_usd_bearish)
                && (by_k || by_floor || by_crash)
        }
        Kind::LiquidityDrain => {
            // Liquidity that is only what sits in range halves whenever the price leaves the
            // LPs' ranges, and no LP has left: there only the chain's own LP burns say a drain.
            let range_only = f.liq_usd_proxy && f.active_range_only;
            !ctx.rug_quiet
                && !range_only
                && gate_bearish(f, cfg)
                && f.liquidity.is_some()
                && ge(f.lp_removed, l.drain_enter)
        }
        Kind::NewPair => {
            let g = &cfg.gates;
            ctx.new_pair_open
                && ge(f.liquidity, g.new_pair_min_liquidity_usd)
                && f.n_h1().is_some_and(|n| n >= g.new_pair_min_txns_h1)
        }
        Kind::Stance | Kind::Reorg => false,
    };
    holds.then_some(kind_direction(kind))
}

/// How many consecutive fresh snapshots (spanning `fsm.confirm_min_seconds`) an entry needs
/// before it opens. The liquidity kinds and `new_pair` open on one, and so does a reversal
/// deep below its high: a bot needs those at once. So does momentum measured against the
/// pair's own volatility: that measure already leaves the move's largest step out, which is
/// what a second snapshot would guard against, and a real move's strongest minute is often
/// followed by a quieter one.
pub fn confirm_snapshots(kind: Kind, f: &Features, cfg: &Params) -> u32 {
    match kind {
        Kind::RugWarning | Kind::LiquidityDrain | Kind::NewPair => 1,
        Kind::MomentumUp | Kind::MomentumDown if f.price_move.is_some() => 1,
        Kind::PumpReversal if ge(f.dd30, cfg.pump_reversal.drawdown) => 1,
        _ => cfg.fsm.confirm_snapshots,
    }
}

/// How long an exit condition must hold before the episode closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAfter {
    /// On this many consecutive fresh snapshots.
    Snapshots(u32),
    /// For this many ms of fresh snapshots.
    Lasting(i64),
}

pub fn exit_after(kind: Kind, cfg: &Params) -> ExitAfter {
    match kind {
        Kind::LiquidityDrain => ExitAfter::Lasting(cfg.ms.drain_exit_after),
        _ => ExitAfter::Snapshots(cfg.fsm.exit_snapshots),
    }
}

/// The direction a momentum kind reads moves in: −1 for `momentum_down`, +1 otherwise.
fn momentum_sign(kind: Kind) -> f64 {
    if kind == Kind::MomentumDown {
        -1.0
    } else {
        1.0
    }
}

/// The move momentum reads once the pair's history allows, in the direction of `sign`.
#[derive(Debug, Clone, Copy)]
struct Relative {
    mv: Move,
    /// The pair's own USD move over `mv`'s span, in percent.
    pct: f64,
    /// `mv` is the quote token's move, not the pool's.
    quote: bool,
}

/// The pair's own move, or its quote token's when that is the stronger one `sign`'s way, at
/// least `min_move_pct` in size, and carried the pair's USD price that way by as much: a pair
/// quoted in WETH rises in USD with WETH, and its own volatility (one pool's jumps) would
/// hide a move its quote makes plain.
fn relative(f: &Features, cfg: &Params, sign: f64) -> Option<Relative> {
    let own = f.price_move?;
    let min = cfg.momentum.min_move_pct;
    let by_quote = f.quote_move.filter(|q| {
        sign * q.quote.pct >= min && sign * q.pair_pct >= min && sign * q.quote.z > sign * own.z
    });
    Some(match by_quote {
        Some(q) => Relative {
            mv: q.quote,
            pct: q.pair_pct,
            quote: true,
        },
        None => Relative {
            mv: own,
            pct: own.pct,
            quote: false,
        },
    })
}

/// Momentum in the direction of `sign` (+1 up, −1 down). Against the pair's own volatility
/// once its history allows (a move of at least `enter_z` σ of its span without its largest
/// step, and `min_move_pct` percent); until then the absolute thresholds, with
/// `absolute_min_txns_h1` trades in the hour.
fn momentum(f: &Features, cfg: &Params, sign: f64) -> bool {
    let m = &cfg.momentum;
    let along = |x: Option<f64>, t: f64| x.is_some_and(|x| sign * x >= t);
    match relative(f, cfg, sign) {
        Some(r) => sign * r.mv.z >= m.enter_z && sign * r.pct >= m.min_move_pct,
        None => {
            along(f.pc[1], m.enter_pc_h1)
                && along(f.pc[0], m.enter_pc_m5)
                && f.pc[0].is_some_and(|p| sign * p > 0.0)
                && f.n_h1().is_some_and(|n| n >= m.absolute_min_txns_h1)
        }
    }
}

/// The direction of each kind (`volume_surge` takes its own, and momentum before the pair's
/// history is neutral: `enter`).
pub fn kind_direction(kind: Kind) -> Direction {
    match kind {
        Kind::MomentumUp => Direction::Bullish,
        // Information only (docs/signals.md, "What each kind is worth"): on tapes they were
        // not tuned on they do not beat the naive rule, so they never say which way.
        Kind::BuyPressure | Kind::SellPressure | Kind::PumpReversal => Direction::Neutral,
        Kind::VolumeSurge | Kind::NewPair | Kind::Stance | Kind::Reorg => Direction::Neutral,
        _ => Direction::Bearish,
    }
}

/// The (looser) exit condition of an open episode. Unknown data never exits. A rug warning and
/// a `new_pair` never stay open, so they have none.
pub fn exit(kind: Kind, f: &Features, cfg: &Params, ctx: &Context) -> bool {
    let m = &cfg.momentum;
    match kind {
        Kind::MomentumUp | Kind::MomentumDown => {
            let sign = momentum_sign(kind);
            match relative(f, cfg, sign) {
                Some(r) => sign * r.mv.z < m.exit_z,
                None => {
                    f.pc[1].is_some_and(|p| sign * p < m.exit_pc_h1)
                        || f.pc[0].is_some_and(|p| sign * p <= m.exit_pc_m5)
                }
            }
        }
        Kind::VolumeSurge => {
            // Over when the volume is back near its baseline on both windows, or when the
            // current activity is (an hour's volume can hold a burst long after it ended).
            let v = &cfg.volume_surge;
            let x = v.exit_ratio;
            (f.r5.is_some() || f.r60.is_some())
                && f.r5.is_none_or(|r| r < x)
                && (f.r60.is_none_or(|r| r < x) || f.r5.is_some_and(|r| r < v.r60_min_r5))
        }
        Kind::BuyPressure => f.bp_h1.is_some_and(|bp| bp < cfg.buy_pressure.exit_bp_h1),
        Kind::SellPressure => f
            .bp_h1
            .is_some_and(|bp| bp > 1.0 - cfg.buy_pressure.exit_bp_h1),
        Kind::PumpReversal => f.pc[0].is_some_and(|p| p > cfg.pump_reversal.exit_pc_m5),
        // No further liquidity has left, against the depth when the drain opened.
        Kind::LiquidityDrain => f.depth.is_some_and(|d| {
            ctx.drain_ref_depth <= 0.0 || 1.0 - d / ctx.drain_ref_depth < cfg.liquidity.drain_exit
        }),
        Kind::RugWarning | Kind::NewPair | Kind::Stance | Kind::Reorg => false,
    }
}

/// `E ∈ [0, 1]`: the excess over the entry threshold. `consecutive` counts the consecutive
/// fresh snapshots on which the entry held (for `volume_surge`).
pub fn excess(kind: Kind, f: &Features, cfg: &Params, consecutive: u32) -> f64 {
    let abs = |x: Option<f64>| x.map_or(0.0, f64::abs);
    let m = &cfg.momentum;
    let b = &cfg.buy_pressure;
    let e = match kind {
        Kind::MomentumUp | Kind::MomentumDown => {
            // The cascade counts the segments that move the episode's way.
            let cascade = if kind == Kind::MomentumDown {
                f.cascade_down
            } else {
                f.cascade
            };
            // Against the pair's own volatility when known: saturating at three times the
            // entry's σ, and at ten times the least move.
            let sign = momentum_sign(kind);
            let (hour, five) = match relative(f, cfg, sign) {
                Some(r) => (
                    ramp_from(r.mv.z.abs(), m.enter_z, 3.0 * m.enter_z),
                    ramp_from(r.pct.abs(), m.min_move_pct, 10.0 * m.min_move_pct.max(0.5)),
                ),
                _ => (
                    ramp_from(abs(f.pc[1]), m.enter_pc_h1, 60.0),
                    ramp_from(abs(f.pc[0]), m.enter_pc_m5, 15.0),
                ),
            };
            0.40 * hour
                + 0.25 * five
                + 0.20 * f.r60.map_or(0.0, |r| ramp(r, 1.0, 3.0))
                + 0.15 * (f64::from(cascade) - 1.0).max(0.0) / 2.0
        }
        Kind::VolumeSurge => {
            let v = &cfg.volume_surge;
            let v_cfg = v;
            let m = [
                f.r5.map(|r| r / v.enter_r5),
                f.r60.map(|r| r / v.enter_r60),
                f.z_vol.map(|z| z / v.z_threshold),
            ]
            .into_iter()
            .flatten()
            .fold(f64::NAN, f64::max);
            let m_term = if m > 0.0 {
                ramp(m.log2(), 0.0, 2.0)
            } else {
                0.0
            };
            0.45 * m_term
                + 0.25
                    * f.vol[0].filter(|v| *v > 0.0).map_or(0.0, |v| {
                        ramp_from(v.log10(), v_cfg.min_volume_m5_usd.max(1.0).log10(), 5.0)
                    })
                + 0.15 * f64::from(consecutive.saturating_sub(1).min(2)) / 2.0
                + 0.15 * f.n_m5().map_or(0.0, |n| ramp(n as f64, 10.0, 60.0))
        }
        Kind::BuyPressure | Kind::SellPressure => {
            let flip = |x: f64| {
                if kind == Kind::SellPressure {
                    1.0 - x
                } else {
                    x
                }
            };
            let third = match f.buyer_skew {
                Some(skew) => {
                    let s = if kind == Kind::SellPressure && skew > 0.0 {
                        1.0 / skew
                    } else {
                        skew
                    };
                    ramp(s, 1.2, 3.0)
                }
                None => f.bp_m5.map_or(0.0, |bp| {
                    let enter = if kind == Kind::SellPressure {
                        1.0 - b.sell_enter_bp_m5
                    } else {
                        b.enter_bp_m5
                    };
                    ramp_from(flip(bp), enter, 0.80)
                }),
            };
            0.50 * f
                .bp_h1
                .map_or(0.0, |bp| ramp_from(flip(bp), b.enter_bp_h1, 0.80))
                + 0.25
                    * f.n_h1().filter(|n| *n > 0).map_or(0.0, |n| {
                        ramp_from((n as f64).log10(), (b.min_txns_h1 as f64).log10(), 3.0)
                    })
                + 0.25 * third
        }
        Kind::PumpReversal => {
            0.6 * f.pc[0].map_or(0.0, |p| ramp_from(-p, -cfg.pump_reversal.enter_pc_m5, 40.0))
                + 0.4 * f.dd30.map_or(0.0, |d| ramp(d, 0.15, 0.6))
        }
        Kind::LiquidityDrain => f
            .lp_removed
            .map_or(0.0, |x| ramp_from(x, cfg.liquidity.drain_enter, 0.9)),
        Kind::RugWarning => {
            0.6 + 0.4
                * f.lp_removed
                    .map_or(1.0, |x| ramp_from(x, cfg.liquidity.rug_enter, 1.0))
        }
        Kind::NewPair => {
            0.4 * f
                .liquidity
                .filter(|l| *l > 0.0)
                .map_or(0.0, |l| ramp(l.log10(), 4.0, 5.4))
                + 0.3
                    * f.n_h1().map_or(0.0, |n| {
                        ramp_from(n as f64, cfg.gates.new_pair_min_txns_h1 as f64, 200.0)
                    })
                + 0.3 * f.ur_h1.map_or(0.5, |u| u.clamp(0.0, 1.0))
        }
        // A stance has no threshold to exceed: it carries its episodes' score; a reorg notice
        // is no signal.
        Kind::Stance | Kind::Reorg => 0.0,
    };
    e.clamp(0.0, 1.0)
}

/// `Q = q_liq · q_age · q_data` for bullish and neutral events; bearish and risk kinds use 1.
pub fn quality(dir: Direction, f: &Features) -> f64 {
    if dir == Direction::Bearish {
        return 1.0;
    }
    let q_liq = 0.6
        + 0.4
            * f.liquidity
                .filter(|l| *l > 0.0)
                .map_or(0.0, |l| ramp(l.log10(), 4.0, 5.7));
    let q_age = if f.age_min.is_none_or(|a| a < 360.0) {
        0.8
    } else {
        1.0
    };
    let q_data = if f.optional_missing { 0.85 } else { 1.0 };
    q_liq * q_age * q_data
}

/// The score of docs/signals.md ("Score") and its components: `clamp(round((50 + 50·E)·Q − P), 0, 100)`.
pub fn score(
    kind: Kind,
    dir: Direction,
    f: &Features,
    cfg: &Params,
    consecutive: u32,
    flags: RiskFlags,
    penalty: u32,
) -> (u8, f64, f64, u32) {
    let e = excess(kind, f, cfg, consecutive);
    let q = quality(dir, f);
    let p = if dir == Direction::Bearish {
        0
    } else {
        penalty
    };
    let raw = ((50.0 + 50.0 * e) * q - f64::from(p)).round();
    let mut s = raw.clamp(0.0, 100.0) as u8;
    if dir == Direction::Bullish && flags.has(RiskFlags::SELL_SIDE_ABSENT) {
        s = s.min(cfg.risk.sell_side_absent_cap);
    }
    (s, e, q, p)
}

/// `ramp(x; enter, saturation)`: 0 at the configured entry threshold, 1 at the saturation
/// point of docs/signals.md ("Score"), which stays above the threshold however it is tuned.
fn ramp_from(x: f64, enter: f64, saturation: f64) -> f64 {
    let top = if saturation > enter {
        saturation
    } else {
        enter + enter.abs().max(1e-9)
    };
    ramp(x, enter, top)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |x| format!("{x:+.2}%"))
}

fn num(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

/// Human-readable reasons for an opened or escalated event.
pub fn reasons(kind: Kind, dir: Direction, f: &Features, cfg: &Params) -> Vec<String> {
    let m = &cfg.momentum;
    let v = &cfg.volume_surge;
    let b = &cfg.buy_pressure;
    let mut out = Vec::new();
    match kind {
        Kind::MomentumUp | Kind::MomentumDown => {
            let (cmp, sign) = if kind == Kind::MomentumDown {
                ("<=", "-")
            } else {
                (">=", "+")
            };
            let way = momentum_sign(kind);
            match relative(f, cfg, way) {
                Some(r) => {
                    let mv = r.mv;
                    let (what, whose) = if r.quote {
                        ("the quote token", "its moves")
                    } else {
                        ("price", "this pair's moves")
                    };
                    let unit = if r.quote { " in USD" } else { "" };
                    out.push(format!(
                        "{what} {:+.2}%{unit} in {:.0} min is {:+.1}σ of {whose} \
                         without its largest step (σ {:.3}%/min); {cmp} {sign}{:.1}σ",
                        mv.pct,
                        mv.minutes,
                        mv.z,
                        mv.sigma_min.exp_m1() * 100.0,
                        m.enter_z
                    ));
                    out.push(if r.quote {
                        format!(
                            "price {:+.2}% in USD over the same {:.0} min; |move| >= {:.2}%",
                            r.pct, mv.minutes, m.min_move_pct
                        )
                    } else {
                        format!("|move| {:.2}% >= {:.2}%", mv.pct.abs(), m.min_move_pct)
                    });
                }
                _ => {
                    out.push(format!(
                        "P_h1 {} {cmp} {sign}{:.2}%",
                        pct(f.pc[1]),
                        m.enter_pc_h1
                    ));
                    out.push(format!(
                        "P_m5 {} {cmp} {sign}{:.2}%",
                        pct(f.pc[0]),
                        m.enter_pc_m5
                    ));
                }
            }
        }
        Kind::VolumeSurge => {
            if ge(f.r5, v.enter_r5) && ge(f.vol[0], v.min_volume_m5_usd) {
                out.push(format!("R5 {} >= {:.2}", num(f.r5, 2), v.enter_r5));
                out.push(format!(
                    "V_m5 {} >= {:.0}",
                    num(f.vol[0], 0),
                    v.min_volume_m5_usd
                ));
            }
            if surge_paths(f, cfg).1 {
                out.push(format!("R60 {} >= {:.2}", num(f.r60, 2), v.enter_r60));
                out.push(format!("R5 {} >= {:.2}", num(f.r5, 2), v.r60_min_r5));
                out.push(format!(
                    "V_h1 {} >= {:.0}",
                    num(f.vol[1], 0),
                    v.min_volume_h1_usd
                ));
            }
            if ge(f.z_vol, v.z_threshold) && ge(f.vol[0], v.min_volume_m5_usd) {
                out.push(format!("z_vol {} >= {:.2}", num(f.z_vol, 2), v.z_threshold));
            }
            if surge_paths(f, cfg).0 {
                out.push(format!(
                    "P_m5 {} with BP_m5 {}",
                    pct(f.pc[0]),
                    num(f.bp_m5, 2)
                ));
            } else {
                out.push(format!(
                    "P_h1 {} with BP_h1 {}",
                    pct(f.pc[1]),
                    num(f.bp_h1, 2)
                ));
            }
            if dir == Direction::Neutral {
                out.push("no clear direction: price flat or flow balanced".to_string());
            }
        }
        Kind::BuyPressure => {
            out.push(format!("BP_h1 {} >= {:.2}", num(f.bp_h1, 2), b.enter_bp_h1));
            out.push(format!("BP_m5 {} >= {:.2}", num(f.bp_m5, 2), b.enter_bp_m5));
            out.push(format!("N_h1 {}", f.n_h1().unwrap_or(0)));
        }
        Kind::SellPressure => {
            out.push(format!(
                "BP_h1 {} <= {:.2}",
                num(f.bp_h1, 2),
                1.0 - b.enter_bp_h1
            ));
            out.push(format!(
                "BP_m5 {} <= {:.2}",
                num(f.bp_m5, 2),
                b.sell_enter_bp_m5
            ));
            out.push(format!("N_h1 {}", f.n_h1().unwrap_or(0)));
        }
        Kind::PumpReversal => {
            out.push(format!(
                "P_m5 {} <= {:.2}%",
                pct(f.pc[0]),
                cfg.pump_reversal.enter_pc_m5
            ));
            if let Some(d) = f.dd30 {
                out.push(format!(
                    "{:.1}% below the {}-minute high",
                    d * 100.0,
                    crate::settings::as_minutes(cfg.pump_reversal.high_lookback)
                ));
            }
            out.push(format!(
                "after P_h1 {}, P_h6 {}",
                pct(f.pc[1]),
                pct(f.pc[2])
            ));
        }
        Kind::LiquidityDrain | Kind::RugWarning => {
            if let Some(x) = f.lp_removed {
                let what = if f.lp_burn {
                    "the pool's liquidity, burned by its LPs (lp_burn, from the chain)"
                } else if f.liq_usd_proxy {
                    "USD liquidity (adjusted for the price move; no pool invariant)"
                } else {
                    "pool invariant K"
                };
                out.push(format!(
                    "{:.1}% of {what} removed within {} min",
                    x * 100.0,
                    crate::settings::as_minutes(cfg.liquidity.drain_lookback)
                ));
            }
            out.push(format!(
                "liquidity ${} (reference ${})",
                num(f.liquidity, 0),
                num(f.liquidity_ref, 0)
            ));
            if kind == Kind::RugWarning && le(f.pc[0], cfg.liquidity.rug_crash_pc_m5) {
                out.push(format!("P_m5 {}", pct(f.pc[0])));
            }
        }
        Kind::NewPair => {
            out.push(format!("pair age {} min", num(f.age_min, 0)));
            out.push(format!("liquidity ${}", num(f.liquidity, 0)));
            out.push(format!("N_h1 {}", f.n_h1().unwrap_or(0)));
        }
        // Built by the engine, which knows the episodes (or the blocks) behind them.
        Kind::Stance | Kind::Reorg => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::params::RawParams;

    fn params(edit: impl Fn(&mut RawParams)) -> Params {
        let mut raw = RawParams::default();
        edit(&mut raw);
        Params::parse(&raw).unwrap()
    }

    #[test]
    fn reasons_and_scores_follow_the_configured_thresholds() {
        let f = Features {
            lp_removed: Some(0.5),
            liquidity: Some(50_000.0),
            liquidity_ref: Some(100_000.0),
            dd30: Some(0.3),
            pc: [Some(-12.0), Some(40.0), None, None],
            bp_h1: Some(0.70),
            buys_h1: Some(700),
            sells_h1: Some(300),
            ..Features::default()
        };
        let p = params(|r| {
            r.liquidity.drain_lookback_minutes = 20.0;
            r.pump_reversal.high_lookback_minutes = 45.0;
        });
        let drain = reasons(Kind::LiquidityDrain, Direction::Bearish, &f, &p);
        assert!(drain[0].ends_with("removed within 20 min"), "{drain:?}");
        let pump = reasons(Kind::PumpReversal, Direction::Bearish, &f, &p);
        assert!(
            pump.iter().any(|r| r.contains("below the 45-minute high")),
            "{pump:?}"
        );

        // At the configured entry, a component starts from zero, wherever the entry is.
        let default = excess(Kind::BuyPressure, &f, &Params::default(), 0);
        let raised = excess(
            Kind::BuyPressure,
            &f,
            &params(|r| r.buy_pressure.enter_bp_h1 = 0.70),
            0,
        );
        assert!(raised < default, "{raised} vs {default}");
        let at_entry = params(|r| r.liquidity.drain_enter = 0.5);
        assert_eq!(excess(Kind::LiquidityDrain, &f, &at_entry, 0), 0.0);
        assert!(excess(Kind::LiquidityDrain, &f, &Params::default(), 0) > 0.0);
    }

    /// Momentum read on the pair's own move or on its quote's: `(own z, quote z, quote %,
    /// the pair's USD % over the quote's span)` and whether `momentum_up` enters, and on
    /// which. The quote counts only when it is the stronger way up, at least the least move,
    /// and it carried the pair's USD price up by as much.
    #[test]
    fn momentum_reads_the_quote_when_it_moved_the_pair() {
        fn mv(z: f64, pct: f64) -> Move {
            Move {
                z,
                pct,
                minutes: 15.0,
                sigma_min: 0.0005,
                from_ms: 0,
            }
        }
        fn check(own: (f64, f64), quote: Option<(f64, f64, f64)>, want: Option<bool>) {
            let f = Features {
                price_move: Some(mv(own.0, own.1)),
                quote_move: quote.map(|(z, pct, pair_pct)| QuoteMove {
                    quote: mv(z, pct),
                    pair_pct,
                }),
                ..Features::default()
            };
            let p = Params::default();
            let entered = momentum(&f, &p, 1.0);
            assert_eq!(entered, want.is_some(), "{own:?} {quote:?}");
            if let Some(by_quote) = want {
                let r = reasons(Kind::MomentumUp, Direction::Bullish, &f, &p);
                assert_eq!(r[0].starts_with("the quote token"), by_quote, "{r:?}");
            }
            // The flag says the quote moved the pair, whichever move the entry read.
            let (flags, _) = risk(&f, &p);
            assert_eq!(
                flags.has(RiskFlags::QUOTE_MOVE),
                quote.is_some_and(|(z, pct, pair)| z >= 6.0 && pct >= 1.0 && pair > 0.0),
                "{own:?} {quote:?}"
            );
            // Over when the move read, the quote's when it qualifies, is under `exit_z`.
            let read = match quote {
                Some((z, pct, pair)) if pct >= 1.0 && pair >= 1.0 && z > own.0 => z,
                _ => own.0,
            };
            assert_eq!(
                exit(Kind::MomentumUp, &f, &p, &Context::default()),
                read < 2.0,
                "{own:?} {quote:?}"
            );
        }
        check((7.0, 2.0), None, Some(false));
        check((2.0, 3.0), None, None);
        check((2.0, 1.6), Some((6.5, 1.5, 1.6)), Some(true));
        check((6.5, 2.0), Some((7.0, 1.5, 2.0)), Some(true));
        check((7.0, 2.0), Some((6.5, 1.5, 2.0)), Some(false));
        // The pool fell while its quote rose: the pair's USD price did not rise.
        check((-3.0, -2.0), Some((8.0, 2.0, -0.1)), None);
        // A quote that moved too little, however significant (a stablecoin's wobble).
        check((1.0, 0.1), Some((30.0, 0.05, 0.1)), None);
    }

    #[test]
    fn momentum_before_the_pairs_history_is_information_only() {
        // A pair that passes both gates, moving 20 % in the hour and 5 % in five minutes
        // (the absolute rule), with or without its own history's move of 7σ (the relative).
        fn check(sign: f64, history: bool, want: Option<Direction>) {
            let f = Features {
                price: Some(1.0),
                age_min: Some(600.0),
                liquidity: Some(100_000.0),
                liquidity_ref: Some(100_000.0),
                vol: [Some(10_000.0), Some(50_000.0), None, None],
                buys_h1: Some(30),
                sells_h1: Some(30),
                pc: [Some(sign * 5.0), Some(sign * 20.0), None, None],
                price_move: history.then_some(Move {
                    z: sign * 7.0,
                    pct: sign * 3.0,
                    minutes: 15.0,
                    sigma_min: 0.001,
                    from_ms: 0,
                }),
                ..Features::default()
            };
            let kind = if sign > 0.0 {
                Kind::MomentumUp
            } else {
                Kind::MomentumDown
            };
            let got = enter(
                kind,
                &f,
                &Params::default(),
                RiskFlags::default(),
                &Context::default(),
            );
            assert_eq!(got, want, "{kind:?} history {history}");
        }
        check(1.0, false, Some(Direction::Neutral));
        check(1.0, true, Some(Direction::Bullish));
        check(-1.0, false, Some(Direction::Neutral));
        check(-1.0, true, Some(Direction::Bearish));
    }

    #[test]
    fn momentum_down_counts_the_falling_segments() {
        let f = Features {
            pc: [Some(-5.0), Some(-20.0), Some(-30.0), None],
            cascade: 0,
            cascade_down: 3,
            ..Features::default()
        };
        let rising = Features {
            cascade: 3,
            cascade_down: 0,
            ..f
        };
        let p = Params::default();
        assert!(excess(Kind::MomentumDown, &f, &p, 0) > excess(Kind::MomentumDown, &rising, &p, 0));
        assert!(excess(Kind::MomentumUp, &rising, &p, 0) > excess(Kind::MomentumUp, &f, &p, 0));
    }
}
