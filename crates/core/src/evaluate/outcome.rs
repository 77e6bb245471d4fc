//! What followed one entry: the pair's series of fresh snapshots, the outcome of an entry after
//! an alert (forward returns, the triple-barrier label, excursions, the liquidity's fall), the
//! tallies over many, and the statistics (Wilson intervals, medians, an exact binomial test).
//! Only data strictly after an alert's snapshot judges it.

use std::collections::BTreeMap;

use super::{horizon_label, Counts, Options, MIN_MS};
use crate::model::Direction;

/// One pair's fresh snapshots, in time order.
#[derive(Debug, Default)]
pub(super) struct Series {
    pub(super) t: Vec<i64>,
    pub(super) price: Vec<f64>,
    /// √(base·quote) where the pool amounts are known, else the USD liquidity.
    pub(super) liquidity: Vec<Option<f64>>,
    pub(super) liquidity_usd: Vec<Option<f64>>,
    pub(super) pc_h1: Vec<Option<f64>>,
}

/// What followed one entry. `None` fields are censored: the tape ended first.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outcome {
    pub(super) returns: Vec<Option<f64>>,
    /// +1 upper barrier first, −1 lower first, 0 neither by the limit; `None`: censored.
    pub(super) label: Option<i8>,
    pub(super) touch_after_ms: Option<i64>,
    /// Favourable and adverse excursions over the limit, as returns in the alert's direction.
    pub(super) mfe: f64,
    pub(super) mae: f64,
    /// Liquidity kinds: whether the liquidity was down by the threshold at the limit.
    pub(super) liquidity_fell: Option<bool>,
    /// The barrier rule for the direction: bullish the upper first, bearish the lower first,
    /// neutral either; `None`: censored.
    pub(super) price_hit: Option<bool>,
}

/// The outcome of an entry after an alert at `t_ms` on a series: entry at the first snapshot
/// strictly after `t_ms` (never the alert's own, whose price already moved), `None` if there
/// is none.
pub(super) fn outcome(
    s: &Series,
    t_ms: i64,
    dir: Direction,
    fall: Option<f64>,
    opts: &Options,
) -> Option<Outcome> {
    let i0 = s.t.partition_point(|&t| t <= t_ms);
    if i0 >= s.t.len() {
        return None;
    }
    let (te, p0) = (s.t[i0], s.price[i0]);
    let limit = opts.limit_ms();
    let returns = opts
        .horizons_ms
        .iter()
        .map(|&h| {
            let j = s.t.partition_point(|&t| t < te + h);
            (j < s.t.len()).then(|| s.price[j] / p0 - 1.0)
        })
        .collect();

    // σ per step from the log returns before the alert, scaled to the limit's number of steps.
    let from = s.t.partition_point(|&t| t < t_ms - opts.vol_lookback_ms);
    let lr: Vec<f64> = (from.max(1)..i0)
        .map(|j| (s.price[j] / s.price[j - 1]).ln())
        .collect();
    let dts: Vec<f64> = (from.max(1)..i0)
        .map(|j| (s.t[j] - s.t[j - 1]) as f64)
        .collect();
    let width = if lr.len() >= 3 {
        let mean = lr.iter().sum::<f64>() / lr.len() as f64;
        let var = lr.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (lr.len() - 1) as f64;
        let step = median(&dts).unwrap_or(60_000.0).max(1.0);
        opts.barrier_k * var.sqrt() * (limit as f64 / step).sqrt()
    } else {
        0.0
    }
    .max(opts.min_barrier);

    let end = te + limit;
    let mut label = None;
    let mut touch = None;
    let (mut hi, mut lo) = (0.0f64, 0.0f64);
    let mut j = i0 + 1;
    while j < s.t.len() && s.t[j] <= end {
        let x = (s.price[j] / p0).ln();
        hi = hi.max(x);
        lo = lo.min(x);
        if label.is_none() {
            if x >= width {
                label = Some(1);
                touch = Some(s.t[j] - t_ms);
            } else if x <= -width {
                label = Some(-1);
                touch = Some(s.t[j] - t_ms);
            }
        }
        j += 1;
    }
    let complete = s.t.last().is_some_and(|&t| t >= end);
    if label.is_none() && complete {
        label = Some(0);
    }
    let (mfe, mae) = match dir {
        Direction::Bearish => (1.0 - lo.exp(), 1.0 - hi.exp()),
        _ => (hi.exp() - 1.0, lo.exp() - 1.0),
    };
    let liquidity_fell = fall.and_then(|f| {
        if !complete {
            return None;
        }
        let r0 = s.t.partition_point(|&t| t < t_ms - opts.liquidity_ref_ms);
        let reference = s.liquidity[r0..i0]
            .iter()
            .flatten()
            .fold(None, |m: Option<f64>, &l| Some(m.map_or(l, |m| m.max(l))))?;
        let at = s.t.partition_point(|&t| t < end);
        let now = s.liquidity.get(at).copied().flatten()?;
        Some(now <= reference * (1.0 - f))
    });
    let price_hit = label.map(|l| match dir {
        Direction::Bullish => l == 1,
        Direction::Bearish => l == -1,
        Direction::Neutral => l != 0,
    });
    Some(Outcome {
        returns,
        label,
        price_hit,
        touch_after_ms: touch,
        mfe,
        mae,
        liquidity_fell,
    })
}

/// Counts over a set of outcomes, with the direction's and the kind's hit rule.
pub(super) struct Tally {
    pub(super) count: usize,
    pub(super) evaluated: usize,
    pub(super) hits: usize,
    pub(super) returns: Vec<Vec<f64>>,
    pub(super) leads: Vec<f64>,
    pub(super) mfe: Vec<f64>,
    pub(super) mae: Vec<f64>,
}

impl Tally {
    pub(super) fn of<'a>(
        outcomes: impl Iterator<Item = Option<&'a Outcome>>,
        opts: &Options,
    ) -> Tally {
        let mut t = Tally {
            count: 0,
            evaluated: 0,
            hits: 0,
            returns: vec![Vec::new(); opts.horizons_ms.len()],
            leads: Vec::new(),
            mfe: Vec::new(),
            mae: Vec::new(),
        };
        for o in outcomes {
            t.count += 1;
            let Some(o) = o else { continue };
            for (i, r) in o.returns.iter().enumerate() {
                if let Some(r) = r {
                    t.returns[i].push(*r);
                }
            }
            let Some(hit) = o.hit() else { continue };
            t.evaluated += 1;
            t.mfe.push(o.mfe);
            t.mae.push(o.mae);
            if hit {
                t.hits += 1;
                // A liquidity kind's hit is not a barrier touch: it has no lead time.
                if let (None, Some(ms)) = (o.liquidity_fell, o.touch_after_ms) {
                    t.leads.push(ms as f64 / MIN_MS as f64);
                }
            }
        }
        t
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            count: self.count,
            evaluated: self.evaluated,
            hits: self.hits,
            hit_rate: self.rate().map(|r| round(r, 4)),
        }
    }

    pub(super) fn rate(&self) -> Option<f64> {
        (self.evaluated > 0).then(|| self.hits as f64 / self.evaluated as f64)
    }

    pub(super) fn wilson(&self) -> Option<[f64; 2]> {
        let [lo, hi] = wilson(self.hits, self.evaluated)?;
        Some([round(lo, 4), round(hi, 4)])
    }

    pub(super) fn median_returns(&self, opts: &Options) -> BTreeMap<String, Option<f64>> {
        opts.horizons_ms
            .iter()
            .zip(&self.returns)
            .map(|(&h, r)| (horizon_label(h), median(r).map(|m| round(m * 100.0, 2))))
            .collect()
    }

    pub(super) fn median_lead_minutes(&self) -> Option<f64> {
        median(&self.leads).map(|m| round(m, 1))
    }
}

impl Outcome {
    /// Whether the alert came true; `None` when censored.
    pub(super) fn hit(&self) -> Option<bool> {
        self.liquidity_fell.or(self.price_hit)
    }
}

/// The Wilson score interval at 95 %, for `hits` of `n`.
pub fn wilson(hits: usize, n: usize) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (n, p, z) = (n as f64, hits as f64 / n as f64, 1.96f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

pub(super) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

pub(super) fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// The exact two-sided binomial test of `k` successes in `n` trials at p = 1/2 (McNemar's exact
/// test on `k` of `n` discordant pairs): twice the smaller tail, at most 1.
pub(super) fn binomial_two_sided(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let k = k.min(n - k);
    // ln C(n, i) − n ln 2, summed in log space so that large n do not overflow.
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut ln_c = 0.0f64;
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_c - ln2n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binomial_test_matches_hand_figures() {
        // 0 of 5: 2 · (1/32) = 0.0625; 1 of 10: 2 · 11/1024.
        assert!((binomial_two_sided(0, 5) - 0.0625).abs() < 1e-12);
        assert!((binomial_two_sided(1, 10) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_two_sided(9, 10) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(binomial_two_sided(3, 6), 1.0);
        assert!(binomial_two_sided(500, 2000) < 1e-20);
    }
}
