//! The derived features of docs/signals.md ("Features"): small pure functions of one
//! snapshot's windows, the time-aware EW statistics, and [`compute`], which turns a fresh, valid
//! snapshot into [`Features`] while folding it into the pair's [`History`] (the volume
//! baseline, the pool's depth and liquidity over the drain lookback, the pump highs). Time is
//! always an argument; nothing here reads a clock.
//!
//! An unavailable feature is `None`, never 0, and drops out of `max(...)` and `cascade`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::kinds::Features;
use super::params::Params;
use crate::model::{Snapshot, Txns};

const MIN_MS: f64 = 60_000.0;

/// Window lengths in minutes: m5, h1, h6, h24.
pub const LEN_MIN: [f64; 4] = [5.0, 60.0, 360.0, 1440.0];

/// `clamp((x − a)/(b − a), 0, 1)`; 0 for a NaN `x`.
pub fn ramp(x: f64, a: f64, b: f64) -> f64 {
    let r = (x - a) / (b - a);
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// `ln(1 + p/100)`. A change of −100 % or less has no log return; it is clamped just above.
pub fn lr(p: f64) -> f64 {
    (1.0 + p.max(-99.999_999) / 100.0).ln()
}

/// `eff(w) = min(len(w), age)`; with the age unknown the window counts as full.
pub fn eff(window: usize, age_min: Option<f64>) -> f64 {
    match age_min {
        Some(a) => LEN_MIN[window].min(a.max(0.0)),
        None => LEN_MIN[window],
    }
}

/// The disjoint-window volume ratio of the shorter window `w` against the rest of the next
/// window: `(V_w/eff(w)) / max((V_next − V_w)/max(eff(next) − len(w), len(w)), F)`.
/// `w` is 0 (R5), 1 (R60) or 2 (R6h). Needs the pair to be at least `min_age` minutes old
/// (unknown age counts as old enough).
pub fn volume_ratio(
    w: usize,
    v_short: Option<f64>,
    v_long: Option<f64>,
    age_min: Option<f64>,
    floor_per_min: f64,
) -> Option<f64> {
    const MIN_AGE: [f64; 3] = [10.0, 120.0, 720.0];
    if age_min.is_some_and(|a| a < MIN_AGE[w]) {
        return None;
    }
    let (vs, vl) = (v_short?, v_long?);
    let rate = vs / eff(w, age_min).max(1e-9);
    let rest_minutes = (eff(w + 1, age_min) - LEN_MIN[w]).max(LEN_MIN[w]);
    let baseline = ((vl - vs).max(0.0) / rest_minutes).max(floor_per_min);
    let r = rate / baseline;
    r.is_finite().then_some(r)
}

/// The Poisson z-score of the short window's trade count against the rate of the rest of the
/// next window, variance-stabilised (Anscombe): `2·(sqrt(N_w) − sqrt(μ))` with
/// `μ = eff(w) · rate_rest`. The plain `(N − μ)/sqrt(μ)` overstates significance at the small
/// counts of quiet pairs (22 trades against μ = 9.5 scores 4.2 but happens once in 2,000
/// windows). The rest's rate is floored at one trade per window.
pub fn count_z(
    w: usize,
    n_short: Option<f64>,
    n_long: Option<f64>,
    age_min: Option<f64>,
) -> Option<f64> {
    const MIN_AGE: [f64; 3] = [10.0, 120.0, 720.0];
    if age_min.is_some_and(|a| a < MIN_AGE[w]) {
        return None;
    }
    let (ns, nl) = (n_short?, n_long?);
    let rest_minutes = (eff(w + 1, age_min) - LEN_MIN[w]).max(LEN_MIN[w]);
    let rate = ((nl - ns).max(0.0) / rest_minutes).max(1.0 / LEN_MIN[w]);
    let mu = rate * eff(w, age_min).max(1e-9);
    let z = 2.0 * (ns.max(0.0).sqrt() - mu.sqrt());
    z.is_finite().then_some(z)
}

/// Log returns of the disjoint intervals: `s0` the last 5 min, `s1` the 55 before, `s2` the
/// 5 h before that, `s3` the 18 h before that. `s2` needs age ≥ 6 h, `s3` age ≥ 24 h.
pub fn price_segments(p: [Option<f64>; 4], age_min: Option<f64>) -> [Option<f64>; 4] {
    let old = |m: f64| age_min.is_none_or(|a| a >= m);
    let seg = |i: usize| -> Option<f64> {
        if i == 0 {
            return p[0].map(lr);
        }
        Some(lr(p[i]?) - lr(p[i - 1]?))
    };
    [
        seg(0),
        seg(1),
        if old(360.0) { seg(2) } else { None },
        if old(1440.0) { seg(3) } else { None },
    ]
}

/// `#{s_i > 0 : i ∈ {0,1,2}, s_i available}`.
pub fn cascade(s: &[Option<f64>; 4]) -> u32 {
    s[..3].iter().flatten().filter(|x| **x > 0.0).count() as u32
}

/// `#{s_i < 0 : i ∈ {0,1,2}, s_i available}`: the falling segments, `momentum_down`'s cascade.
pub fn cascade_down(s: &[Option<f64>; 4]) -> u32 {
    s[..3].iter().flatten().filter(|x| **x < 0.0).count() as u32
}

/// Price impact per unit of turnover of a window: `|ln(1 + P_w/100)| / (V_w / L)`. One-sided
/// flow through a constant-product pool moves the price by about `4·V/L`, so genuine buying or
/// selling scores near 4 and self-trades that buy and sell back score near 0. Unknown without
/// volume or liquidity.
pub fn impact(p: Option<f64>, v: Option<f64>, liquidity: Option<f64>) -> Option<f64> {
    let (p, v, l) = (p?, v?, liquidity?);
    (v > 0.0 && l > 0.0)
        .then(|| lr(p).abs() / (v / l))
        .filter(|x| x.is_finite())
}

/// Buy pressure with a Beta(prior, prior) prior: `(B + prior)/(B + S + 2·prior)`.
pub fn buy_pressure(buys: u64, sells: u64, prior: f64) -> f64 {
    (buys as f64 + prior) / ((buys + sells) as f64 + 2.0 * prior)
}

/// Exponentially weighted mean and variance with a time-dependent α (Finch's incremental
/// formulas; `α = 1 − exp(−ln2·Δt/H)`), as linkerd's EWMA: the time comes in as an argument.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EwStats {
    half_life_ms: f64,
    mean: f64,
    var: f64,
    n: u32,
    first_ms: i64,
    last_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("EW half-life must be a positive, finite number of ms")]
pub struct BadHalfLife;

/// The spec's default half-life, six hours.
impl Default for EwStats {
    fn default() -> Self {
        EwStats {
            half_life_ms: 6.0 * 3_600_000.0,
            mean: 0.0,
            var: 0.0,
            n: 0,
            first_ms: 0,
            last_ms: 0,
        }
    }
}

impl EwStats {
    pub fn try_new(half_life_ms: f64) -> Result<EwStats, BadHalfLife> {
        if half_life_ms.is_finite() && half_life_ms > 0.0 {
            Ok(EwStats {
                half_life_ms,
                ..EwStats::default()
            })
        } else {
            Err(BadHalfLife)
        }
    }

    /// Folds `x` observed at `t_ms` in. An observation not after the last one gets weight 0
    /// for the mean (Δt = 0), so replays with equal timestamps stay well defined.
    pub fn update(&mut self, t_ms: i64, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
            self.first_ms = t_ms;
        } else {
            let dt = (t_ms - self.last_ms).max(0) as f64;
            let alpha = 1.0 - (-std::f64::consts::LN_2 * dt / self.half_life_ms).exp();
            let d = x - self.mean;
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + d * alpha * d);
        }
        self.n = self.n.saturating_add(1);
        self.last_ms = self.last_ms.max(t_ms);
    }

    /// The z-score of `x` against the state before `x` is folded in, once the warm-up holds.
    pub fn z(&self, x: f64, min_obs: u32, min_span_ms: i64) -> Option<f64> {
        if self.n < min_obs || self.last_ms - self.first_ms < min_span_ms {
            return None;
        }
        let z = (x - self.mean) / (self.var + 1e-9).sqrt();
        z.is_finite().then_some(z)
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    pub fn var(&self) -> f64 {
        self.var
    }
}

/// The pair's own price path and volatility (docs/signals.md, "Relative to the pair"): the
/// log prices of the last hour or so, and time-aware EW estimates of the variance per minute
/// of the steps between fresh snapshots (so the estimates do not depend on how often the
/// pair is polled), one long-run and one short-run; a move is measured against the larger.
/// A step taken while the price already stands `freeze_z` long-run σ from where it was is
/// part of a move and left out of both: a crash does not redefine the pair's normal for the
/// rebound that follows it. A move the size of an event sets the short-run estimate back to
/// the long-run one: the minutes that led into it were the move's, not a new normal. So a
/// market that turns hot on its own is learnt within the hour, and one that turns hot with
/// a crash is not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PricePath {
    /// EW variance of `ln(p_t / p_{t-1})` per minute, long-run.
    var: f64,
    /// The same, short-run. Absent from the states of earlier versions, which are not restored
    /// anyway (their `params_hash` differs); 0 would leave the long-run one alone until learnt.
    #[serde(default)]
    fast: f64,
    n: u32,
    first_ms: i64,
    /// (t, ln p) of fresh snapshots, oldest first, back to the longest lookback.
    path: VecDeque<(i64, f64)>,
}

/// How a [`PricePath`] learns its volatility (`[signal.volatility]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yardstick {
    pub half_life_ms: f64,
    pub fast_half_life_ms: f64,
    /// A step taken this many long-run σ from where the price was is left out.
    pub freeze_z: f64,
    /// A move this many σ (momentum's `enter_z`) sets the short-run estimate back.
    pub reset_z: f64,
}

/// A move of the price against the pair's own volatility.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// The move in σ of its span, with its largest single step in that direction taken out
    /// (one whale's trade is not a trend); the sign is the direction.
    pub z: f64,
    /// The whole move, in percent.
    pub pct: f64,
    /// The span it was measured over, in minutes.
    pub minutes: f64,
    /// The pair's σ per minute, as a log return.
    pub sigma_min: f64,
    /// Where the span began, Unix ms.
    #[serde(default)]
    pub from_ms: i64,
}

/// The quote token's move in USD, on a pair quoted in something that moves (WETH): the pair's
/// USD price moves with it, whatever the pool does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuoteMove {
    /// The quote token's USD price's strongest move against its own volatility.
    pub quote: Move,
    /// The pair's own USD price over the same span, in percent.
    pub pair_pct: f64,
}

impl PricePath {
    /// The largest move (in |z|) over the lookbacks that ends at `(t_ms, lp)`, once `min_obs`
    /// steps span `min_span_ms`. Each lookback starts at the last snapshot at least that long
    /// ago, and counts only if that snapshot is within a fifth more of it.
    pub fn strongest(
        &self,
        t_ms: i64,
        lp: f64,
        lookbacks: &[i64],
        min_obs: u32,
        min_span_ms: i64,
    ) -> Option<Move> {
        if self.n < min_obs || t_ms - self.first_ms < min_span_ms || self.var <= 0.0 {
            return None;
        }
        let var = self.yardstick();
        let sigma_min = var.sqrt();
        let mut best: Option<Move> = None;
        for &k in lookbacks {
            let Some(i) = self.path.iter().rposition(|(at, _)| *at <= t_ms - k) else {
                continue;
            };
            let (t0, lp0) = self.path[i];
            let span = (t_ms - t0) as f64;
            if span > k as f64 * 1.2 || span <= 0.0 {
                continue;
            }
            let total = lp - lp0;
            // The largest step the move's way inside the span, the last one to `lp` included.
            let mut prev = lp0;
            let mut largest = 0.0f64;
            for (_, x) in self
                .path
                .iter()
                .skip(i + 1)
                .chain(std::iter::once(&(t_ms, lp)))
            {
                let step = (x - prev) * total.signum();
                largest = largest.max(step);
                prev = *x;
            }
            let trimmed = total.signum() * (total.abs() - largest).max(0.0);
            let z = trimmed / (var * span / MIN_MS).sqrt();
            if z.is_finite() && best.is_none_or(|b| z.abs() > b.z.abs()) {
                best = Some(Move {
                    z,
                    pct: total.exp_m1() * 100.0,
                    minutes: span / MIN_MS,
                    sigma_min,
                    from_ms: t0,
                });
            }
        }
        best
    }

    /// The move from the last point at or before `from_ms` to `lp`, in percent.
    pub fn change_since(&self, from_ms: i64, lp: f64) -> Option<f64> {
        let (_, lp0) = self.path.iter().rev().find(|(at, _)| *at <= from_ms)?;
        Some((lp - lp0).exp_m1() * 100.0)
    }

    /// The variance per minute a move is measured against: the larger of the long-run and
    /// the short-run estimates.
    fn yardstick(&self) -> f64 {
        self.var.max(self.fast)
    }

    /// Folds a fresh snapshot's price in (after its move was measured). `z` is that move's,
    /// against [`PricePath::yardstick`].
    pub fn update(&mut self, t_ms: i64, lp: f64, z: Option<f64>, cfg: &Yardstick, keep_ms: i64) {
        if !lp.is_finite() {
            return;
        }
        match self.path.back().copied() {
            None => self.first_ms = t_ms,
            Some((t0, lp0)) if t_ms > t0 => {
                // Whether a step is part of a move is judged against the long-run σ alone:
                // a hot market's wanderings are learnt, not frozen out, while a crash's are
                // frozen out whatever the short-run σ has learnt on its way in.
                let long_z = z.map(|z| {
                    if self.var > 0.0 {
                        z * (self.yardstick() / self.var).sqrt()
                    } else {
                        z
                    }
                });
                let in_move = long_z.is_some_and(|z| z.abs() >= cfg.freeze_z);
                if z.is_some_and(|z| z.abs() >= cfg.reset_z) {
                    self.fast = self.fast.min(self.var);
                }
                if !in_move {
                    let dt = (t_ms - t0) as f64;
                    let x = (lp - lp0).powi(2) / (dt / MIN_MS);
                    let alpha = |half_life_ms: f64| {
                        if self.n == 0 {
                            1.0
                        } else {
                            1.0 - (-std::f64::consts::LN_2 * dt / half_life_ms.max(1.0)).exp()
                        }
                    };
                    let (a_long, a_fast) = (alpha(cfg.half_life_ms), alpha(cfg.fast_half_life_ms));
                    self.var += a_long * (x - self.var);
                    self.fast += a_fast * (x - self.fast);
                    self.n = self.n.saturating_add(1);
                }
            }
            // Out of order or a repeat: nothing to learn.
            Some(_) => return,
        }
        self.path.push_back((t_ms, lp));
        while self.path.len() > 2
            && self
                .path
                .get(1)
                .is_some_and(|(at, _)| *at <= t_ms - keep_ms)
        {
            self.path.pop_front();
        }
    }
}

/// What a pair's features need of its past, beyond the snapshot before.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The volume baseline of `z_vol`.
    ew: EwStats,
    /// The price's own path and volatility, for the size of a move.
    path: PricePath,
    /// The quote token's USD price's path, where the snapshots give it.
    #[serde(default)]
    quote: PricePath,
    /// (t, pool depth, price): K for constant-product pools, USD liquidity otherwise (with
    /// the price it was seen at, to adjust it for the price move).
    depth_hist: VecDeque<(i64, f64, Option<f64>)>,
    depth_is_usd: bool,
    liq_hist: VecDeque<(i64, f64)>,
    /// (t, price) of fresh observations that qualify as a pump high.
    highs: VecDeque<(i64, f64)>,
}

impl History {
    pub fn new(cfg: &Params) -> History {
        // The config is validated at start-up; the default only covers a caller that skipped it.
        History {
            ew: EwStats::try_new(cfg.ms.z_half_life as f64).unwrap_or_default(),
            ..History::default()
        }
    }
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

/// The features of a fresh, valid snapshot; folds it into the pair's history.
pub fn compute(snap: &Snapshot, h: &mut History, cfg: &Params) -> Features {
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
        let z = h.ew.z(x, cfg.volume_surge.z_min_obs, cfg.ms.z_min_span);
        h.ew.update(t, x);
        z
    });

    // The price's move against the pair's own volatility, before this snapshot is folded in.
    let pv = &cfg.volatility;
    let lookbacks: Vec<i64> = pv
        .lookbacks
        .iter()
        .map(|d| crate::settings::ms(*d))
        .collect();
    let lp = snap
        .price_usd
        .as_ref()
        .map(|p| p.value.ln())
        .filter(|x| x.is_finite());
    let keep = lookbacks.last().copied().unwrap_or(0) * 6 / 5;
    let yardstick = Yardstick {
        half_life_ms: cfg.ms.vol_half_life as f64,
        fast_half_life_ms: cfg.ms.vol_fast_half_life as f64,
        freeze_z: pv.freeze_z,
        reset_z: cfg.momentum.enter_z,
    };
    let fold = |path: &mut PricePath, lp: f64| {
        let m = path.strongest(t, lp, &lookbacks, pv.min_obs, cfg.ms.vol_min_span);
        path.update(t, lp, m.map(|m| m.z), &yardstick, keep);
        m
    };
    // The quote's move first: the pair's own path must not yet hold this snapshot when the
    // pair's move over the quote's span is read from it.
    let quote_move = match (lp, snap.quote_usd.map(f64::ln).filter(|x| x.is_finite())) {
        (Some(lp), Some(lq)) => fold(&mut h.quote, lq).and_then(|quote| {
            Some(QuoteMove {
                quote,
                pair_pct: h.path.change_since(quote.from_ms, lp)?,
            })
        }),
        _ => None,
    };
    let price_move = lp.and_then(|lp| fold(&mut h.path, lp));

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
            if usd != h.depth_is_usd {
                h.depth_hist.clear();
                h.depth_is_usd = usd;
            }
            h.depth_hist.push_back((t, depth, price_now));
            while h
                .depth_hist
                .front()
                .is_some_and(|(at, _, _)| *at < t - lookback)
            {
                h.depth_hist.pop_front();
            }
            // The reference: the deepest the pool was in the lookback. USD liquidity moves with
            // the price even when no LP leaves (half a constant-product pool is the base token,
            // revalued), so there each past depth is moved to today's price first:
            // `L_i · sqrt(p / p_i)`.
            let reference = h
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
        h.liq_hist.push_back((t, l));
    }
    prune(&mut h.liq_hist, t - lookback);
    let liquidity_ref = h
        .liq_hist
        .iter()
        .map(|(_, l)| *l)
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));

    // Drawdown from the 30-minute high, where that high itself followed a ≥ 30 % rise.
    let price = snap.price_usd.as_ref().map(|p| p.value);
    let pr = &cfg.pump_reversal;
    if let (Some(p), Some(h1)) = (price, pc[1]) {
        if h1 >= pr.high_min_rise_pct {
            h.highs.push_back((t, p));
        }
    }
    prune(&mut h.highs, t - cfg.ms.high_lookback);
    let dd30 = price.and_then(|p| {
        let high = h.highs.iter().map(|(_, h)| *h).fold(0.0, f64::max);
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
    let count = |w: Option<Txns>| w.map(|x| x.total() as f64);
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
        price_move,
        quote_move,
        liquidity,
        liquidity_ref,
        depth,
        lp_removed,
        liq_usd_proxy,
        lp_burn: snap.lp_burned.is_some(),
        active_range_only: snap.source == crate::model::Source::Bars,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    const LOOKBACKS: [i64; 4] = [5 * 60_000, 15 * 60_000, 30 * 60_000, 60 * 60_000];

    fn yardstick(reset_z: f64) -> Yardstick {
        Yardstick {
            half_life_ms: 360.0 * 60_000.0,
            fast_half_life_ms: 60.0 * 60_000.0,
            freeze_z: 3.0,
            reset_z,
        }
    }

    /// Folds one snapshot a minute, each step `step(minute)` in log price; returns the σ per
    /// minute the last move was measured against (in percent) and the largest |z| seen.
    fn walk(
        path: &mut PricePath,
        y: &Yardstick,
        minutes: std::ops::Range<i64>,
        lp: &mut f64,
        mut step: impl FnMut(i64) -> f64,
    ) -> (f64, f64) {
        let (mut sigma, mut largest) = (0.0, 0.0f64);
        for m in minutes {
            *lp += step(m);
            let t = m * 60_000;
            let mv = path.strongest(t, *lp, &LOOKBACKS, 60, 120 * 60_000);
            if let Some(mv) = mv {
                sigma = mv.sigma_min * 100.0;
                largest = largest.max(mv.z.abs());
            }
            path.update(t, *lp, mv.map(|m| m.z), y, 72 * 60_000);
        }
        (sigma, largest)
    }

    fn normal_steps(seed: u64, sigma_pct: f64) -> impl FnMut(i64) -> f64 {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        move |_| {
            let e: f64 = StandardNormal.sample(&mut rng);
            e * sigma_pct / 100.0
        }
    }

    #[test]
    fn a_market_that_turns_hot_on_its_own_is_learnt_within_the_hour() {
        // Six calm hours, then 90 minutes with three times the volatility and no trend: the σ
        // a move is measured against, over the calm one.
        let check = |fast: bool| {
            let mut y = yardstick(6.0);
            if !fast {
                y.fast_half_life_ms = y.half_life_ms;
            }
            let (mut path, mut lp) = (PricePath::default(), 0.0);
            let (calm, _) = walk(&mut path, &y, 0..360, &mut lp, normal_steps(7, 0.1));
            walk(&mut path, &y, 360..450, &mut lp, normal_steps(8, 0.3)).0 / calm
        };
        let (with, without) = (check(true), check(false));
        assert!(with > 1.5, "σ ×{with:.2} after 90 hot minutes");
        assert!(without < 1.3, "the long-run σ alone: ×{without:.2}");
    }

    #[test]
    fn a_crash_does_not_teach_the_short_run_yardstick() {
        let check = |reset_z: f64| {
            let y = yardstick(reset_z);
            let (mut path, mut lp) = (PricePath::default(), 0.0);
            let (calm, _) = walk(&mut path, &y, 0..360, &mut lp, normal_steps(7, 0.05));
            // A jumpy lead-in, a slide of 0.3 % a minute for ten minutes, then a hot, trendless
            // aftermath.
            walk(&mut path, &y, 360..380, &mut lp, normal_steps(8, 0.15));
            let (_, crash_z) = walk(&mut path, &y, 380..390, &mut lp, |_| -0.003);
            let (after, _) = walk(&mut path, &y, 390..420, &mut lp, normal_steps(9, 0.25));
            (after / calm, crash_z)
        };
        let (with, crash_z) = check(6.0);
        assert!(crash_z >= 6.0, "the crash is a move: {crash_z:.1}σ");
        assert!(with < 1.25, "σ ×{with:.2} after the crash");
        // What the reset is for: the jumpy lead-in, learnt by the short-run estimate.
        let (without, _) = check(f64::INFINITY);
        assert!(without > 1.5, "without the reset: ×{without:.2}");
    }

    #[test]
    fn worked_example_ratios() {
        // The worked example of docs/signals.md: R5 = 4.1201, R60 = 1.8765.
        let r5 = volume_ratio(0, Some(18250.0), Some(66975.0), Some(400.0), 20.0).unwrap();
        let r60 = volume_ratio(1, Some(66975.0), Some(245433.0), Some(400.0), 20.0).unwrap();
        assert!(close(r5, 4.1201, 5e-5), "{r5}");
        assert!(close(r60, 1.8765, 5e-5), "{r60}");
        assert!(close(buy_pressure(410, 260, 5.0), 415.0 / 680.0, 1e-12));
    }

    #[test]
    fn impact_is_near_four_for_one_sided_flow_and_near_zero_for_self_trades() {
        // Buying $10k in a $1M constant-product pool (y = $500k) moves the price by
        // (1 + 10k/500k)^2 − 1 = 4.04 %.
        let one_sided = impact(Some(4.04), Some(10_000.0), Some(1_000_000.0)).unwrap();
        assert!(close(one_sided, 3.96, 0.01), "{one_sided}");
        // $60k of buys and sell-backs, one $2k leg still out: +0.8 %.
        let wash = impact(Some(0.8), Some(60_000.0), Some(1_000_000.0)).unwrap();
        assert!(wash < 0.2, "{wash}");
        assert_eq!(impact(Some(1.0), Some(0.0), Some(1.0)), None);
        assert_eq!(impact(Some(1.0), Some(1.0), None), None);
        let s = price_segments([Some(-1.0), Some(-5.0), Some(2.0), None], None);
        assert_eq!((cascade(&s), cascade_down(&s)), (1, 2));
    }

    #[test]
    fn steady_flow_is_one_and_disjoint_beats_nested() {
        // $2k per 5 min steady: R5 = 1. Then $8k in the last 5 min: R5 = 4 (nested would be 3.2).
        let r = volume_ratio(0, Some(2000.0), Some(24000.0), None, 20.0).unwrap();
        assert!(close(r, 1.0, 1e-12));
        let r = volume_ratio(0, Some(8000.0), Some(30000.0), None, 20.0).unwrap();
        assert!(close(r, 4.0, 1e-12), "{r}");
    }

    #[test]
    fn count_z_is_a_poisson_score() {
        // 110 trades in the 55 min before: mu = 10 in 5 min; 20 trades is 2(sqrt 20 - sqrt 10).
        let z = count_z(0, Some(20.0), Some(130.0), None).unwrap();
        assert!(close(z, 2.0 * (20f64.sqrt() - 10f64.sqrt()), 1e-12), "{z}");
        assert_eq!(count_z(0, Some(20.0), Some(130.0), Some(5.0)), None);
        assert!(count_z(0, Some(3.0), Some(3.0), None).unwrap().is_finite());
    }

    #[test]
    fn availability_by_age() {
        assert_eq!(volume_ratio(0, Some(1.0), Some(2.0), Some(9.0), 20.0), None);
        assert!(volume_ratio(0, Some(1.0), Some(2.0), Some(10.0), 20.0).is_some());
        assert_eq!(
            volume_ratio(1, Some(1.0), Some(2.0), Some(119.0), 20.0),
            None
        );
        assert_eq!(
            volume_ratio(2, Some(1.0), Some(2.0), Some(700.0), 20.0),
            None
        );
        assert_eq!(volume_ratio(0, None, Some(2.0), None, 20.0), None);
        let s = price_segments([Some(1.0), Some(2.0), Some(3.0), Some(4.0)], Some(100.0));
        assert!(s[0].is_some() && s[1].is_some() && s[2].is_none() && s[3].is_none());
    }

    #[test]
    fn segments_are_disjoint_log_returns() {
        let s = price_segments([Some(10.0), Some(21.0), None, Some(50.0)], None);
        assert!(close(s[0].unwrap(), 1.1f64.ln(), 1e-12));
        assert!(close(s[1].unwrap(), (1.21f64 / 1.1).ln(), 1e-12));
        assert_eq!(s[2], None);
        assert_eq!(s[3], None);
        assert_eq!(cascade(&s), 2);
        assert!(lr(-100.0).is_finite());
        assert!(lr(3.7e42).is_finite());
    }

    #[test]
    fn ew_stats_validate_and_converge() {
        assert!(EwStats::try_new(0.0).is_err());
        assert!(EwStats::try_new(f64::NAN).is_err());
        let mut s = EwStats::try_new(3_600_000.0).unwrap();
        for i in 0..200 {
            s.update(i * 60_000, 5.0);
        }
        assert!(close(s.mean(), 5.0, 1e-9));
        assert!(s.var() < 1e-12);
        assert_eq!(s.z(5.0, 300, 0), None, "warm-up not reached");
        assert!(s.z(5.0, 30, 7_200_000).is_some());
    }

    proptest! {
        #[test]
        fn ramp_is_bounded(x in proptest::num::f64::ANY, a in -1e6f64..1e6, d in 1e-6f64..1e6) {
            let r = ramp(x, a, a + d);
            prop_assert!((0.0..=1.0).contains(&r));
        }

        #[test]
        fn ew_mean_stays_within_the_range_of_inputs(
            xs in proptest::collection::vec((0i64..600_000, -1e6f64..1e6), 1..100),
            h in 1_000f64..1e8,
        ) {
            let mut s = EwStats::try_new(h).unwrap();
            let (mut t, mut lo, mut hi) = (0i64, f64::MAX, f64::MIN);
            for (dt, x) in xs {
                t += dt;
                s.update(t, x);
                lo = lo.min(x);
                hi = hi.max(x);
                prop_assert!(s.mean() >= lo - 1e-6 * lo.abs().max(1.0));
                prop_assert!(s.mean() <= hi + 1e-6 * hi.abs().max(1.0));
                prop_assert!(s.var() >= 0.0);
            }
        }

        #[test]
        fn volume_ratio_is_finite_and_non_negative(
            vs in 0f64..1e12, extra in 0f64..1e12, age in proptest::option::of(0f64..1e5), w in 0usize..3,
        ) {
            if let Some(r) = volume_ratio(w, Some(vs), Some(vs + extra), age, 20.0) {
                prop_assert!(r.is_finite() && r >= 0.0);
            }
        }
    }
}
