//! The study per pair and UTC day (docs/evaluation.md, "Day by day"): every bullish and
//! bearish event of the day with what followed it, how often the next hour contradicted them
//! against random entries on the same pair and day, and the day's largest moves with whether
//! and when an event in their direction saw them.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::outcome::{outcome, round, Outcome};
use super::{horizon_label, Study, NAIVE};
use crate::model::{format_ms, Direction, Kind};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// One pair's day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairDay {
    pub chain: String,
    pub pair: String,
    pub day: String,
    pub snapshots: usize,
    /// Opened events by `kind direction` (stances apart: they follow the episodes).
    pub events: BTreeMap<String, usize>,
    /// The bullish and bearish ones, and how many of them the next hour contradicted (the
    /// barrier against them touched first).
    pub directional: usize,
    pub contradicted: usize,
    pub contradicted_rate: Option<f64>,
    /// Random entries on the same pair and day, in the same directions, judged alike.
    pub random_entries: usize,
    pub random_contradicted_rate: Option<f64>,
    /// The day's events are contradicted no more often than random entries (`None`: nothing to
    /// compare).
    pub no_worse_than_random: Option<bool>,
    pub alerts: Vec<AlertOutcome>,
    pub moves: Vec<Move>,
}

/// An event and what followed it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertOutcome {
    pub at: String,
    pub kind: String,
    pub direction: Direction,
    pub score: u8,
    pub return_pct: BTreeMap<String, Option<f64>>,
    /// `came_true`, `contradicted`, `neither` (no barrier by the limit) or `censored`.
    pub outcome: &'static str,
}

/// One of the day's largest moves: the largest rise and the largest fall over the move window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Move {
    pub direction: Direction,
    pub start: String,
    pub end: String,
    pub change_pct: f64,
    /// When the move got under way: the last snapshot of the window still within a tenth of
    /// the move from where it started.
    pub onset: String,
    /// The first event in the move's direction opened within the window (stances apart).
    pub seen_at: Option<String>,
    pub seen_by: Option<String>,
    pub minutes_after_start: Option<f64>,
    pub minutes_after_onset: Option<f64>,
}

struct DayAlert {
    kind: Kind,
    dir: Direction,
    t_ms: i64,
    score: u8,
}

fn label(o: Option<&Outcome>, dir: Direction) -> &'static str {
    match o.and_then(|o| o.label) {
        None => "censored",
        Some(0) => "neither",
        Some(l) if (l == 1) == (dir == Direction::Bullish) => "came_true",
        Some(_) => "contradicted",
    }
}

fn contradicted(o: Option<&Outcome>, dir: Direction) -> Option<bool> {
    match label(o, dir) {
        "censored" => None,
        l => Some(l == "contradicted"),
    }
}

pub(super) fn pair_days(study: &Study) -> Vec<PairDay> {
    // Every pair's bullish and bearish openings, stances and the naive rule apart.
    let mut by_pair: BTreeMap<usize, Vec<DayAlert>> = BTreeMap::new();
    for ((g, d), alerts) in &study.groups {
        let Some(kind) = Kind::ALL.get(*g).copied() else {
            continue;
        };
        let dir = super::DIRECTIONS[*d];
        if *g == NAIVE || kind == Kind::Stance {
            continue;
        }
        for a in alerts {
            by_pair.entry(a.pair).or_default().push(DayAlert {
                kind,
                dir,
                t_ms: a.t_ms,
                score: a.score,
            });
        }
    }
    let mut out = Vec::new();
    for (pair, s) in study.series.iter().enumerate() {
        let (Some(&first), Some(&last)) = (s.t.first(), s.t.last()) else {
            continue;
        };
        let alerts = by_pair.remove(&pair).unwrap_or_default();
        let mut day = first.div_euclid(DAY_MS) * DAY_MS;
        while day <= last {
            let lo = s.t.partition_point(|&t| t < day);
            let hi = s.t.partition_point(|&t| t < day + DAY_MS);
            // A day the tape only touches (its last minute, a first snapshot at 23:59) has no
            // hour to judge anything in: it is not a pair-day.
            if hi > lo && s.t[hi - 1] - s.t[lo] >= HOUR_MS {
                out.push(one_day(study, pair, day, lo..hi, &alerts));
            }
            day += DAY_MS;
        }
    }
    out
}

fn one_day(
    study: &Study,
    pair: usize,
    day: i64,
    range: std::ops::Range<usize>,
    alerts: &[DayAlert],
) -> PairDay {
    let opts = &study.opts;
    let s = &study.series[pair];
    let todays: Vec<&DayAlert> = alerts
        .iter()
        .filter(|a| a.t_ms >= day && a.t_ms < day + DAY_MS)
        .collect();
    let mut events = BTreeMap::new();
    let mut outcomes = Vec::new();
    let (mut directional, mut against, mut judged) = (0, 0, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(
        opts.seed ^ (pair as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ day as u64,
    );
    let (mut random_n, mut random_against) = (0, 0);
    let (t_lo, t_hi) = (s.t[range.start], s.t[range.end - 1]);
    for a in &todays {
        *events
            .entry(format!("{} {}", a.kind.as_str(), a.dir.as_str()))
            .or_insert(0) += 1;
        let o = outcome(s, a.t_ms, a.dir, None, opts);
        outcomes.push(AlertOutcome {
            at: format_ms(a.t_ms),
            kind: a.kind.as_str().to_string(),
            direction: a.dir,
            score: a.score,
            return_pct: opts
                .horizons_ms
                .iter()
                .zip(
                    o.as_ref()
                        .map_or(vec![None; opts.horizons_ms.len()], |o| o.returns.clone()),
                )
                .map(|(&h, r)| (horizon_label(h), r.map(|r| round(r * 100.0, 2))))
                .collect(),
            outcome: label(o.as_ref(), a.dir),
        });
        if a.dir == Direction::Neutral || matches!(a.kind, Kind::LiquidityDrain | Kind::RugWarning)
        {
            continue;
        }
        directional += 1;
        if let Some(c) = contradicted(o.as_ref(), a.dir) {
            judged += 1;
            against += usize::from(c);
        }
        for _ in 0..opts.replicates {
            for _attempt in 0..50 {
                let t = rng.gen_range(t_lo..=t_hi);
                if study.eligible(pair, t) {
                    if let Some(c) = contradicted(outcome(s, t, a.dir, None, opts).as_ref(), a.dir)
                    {
                        random_n += 1;
                        random_against += usize::from(c);
                    }
                    break;
                }
            }
        }
    }
    let rate = |k: usize, n: usize| (n > 0).then(|| round(k as f64 / n as f64, 4));
    let (mine, random) = (rate(against, judged), rate(random_against, random_n));
    PairDay {
        chain: study.pairs[pair].chain.clone(),
        pair: study.pairs[pair].address.clone(),
        day: format_ms(day)[..10].to_string(),
        snapshots: range.len(),
        events,
        directional,
        contradicted: against,
        contradicted_rate: mine,
        random_entries: random_n,
        random_contradicted_rate: random,
        no_worse_than_random: match (mine, random) {
            (None, _) => None,
            (Some(m), Some(r)) => Some(m <= r),
            (Some(_), None) => None,
        },
        alerts: outcomes,
        moves: moves(study, pair, range, &todays),
    }
}

/// The day's largest rise and largest fall over the move window, and who saw them.
fn moves(
    study: &Study,
    pair: usize,
    range: std::ops::Range<usize>,
    alerts: &[&DayAlert],
) -> Vec<Move> {
    let s = &study.series[pair];
    let w = study.opts.move_window_ms;
    // (log change, start index, end index)
    let mut up: Option<(f64, usize, usize)> = None;
    let mut down: Option<(f64, usize, usize)> = None;
    for i in range.clone() {
        let j = s.t.partition_point(|&t| t <= s.t[i] + w) - 1;
        // A whole window only: at most five minutes short of it.
        if j <= i || s.t[j] - s.t[i] < w - 5 * 60_000 {
            continue;
        }
        let r = (s.price[j] / s.price[i]).ln();
        if r > 0.0 && up.is_none_or(|(u, _, _)| r > u) {
            up = Some((r, i, j));
        }
        if r < 0.0 && down.is_none_or(|(d, _, _)| r < d) {
            down = Some((r, i, j));
        }
    }
    let mut out = Vec::new();
    for (dir, m) in [(Direction::Bullish, up), (Direction::Bearish, down)] {
        let Some((r, i, j)) = m else { continue };
        // The onset: the last snapshot still within a tenth of the move from the start.
        let onset = (i..=j)
            .filter(|&k| (s.price[k] / s.price[i]).ln() / r <= 0.1)
            .max()
            .unwrap_or(i);
        let seen = alerts
            .iter()
            .filter(|a| a.dir == dir && a.t_ms >= s.t[i] && a.t_ms <= s.t[j])
            .filter(|a| !matches!(a.kind, Kind::LiquidityDrain | Kind::RugWarning))
            .min_by_key(|a| a.t_ms);
        let minutes = |from: i64, to: i64| round((to - from) as f64 / 60_000.0, 1);
        out.push(Move {
            direction: dir,
            start: format_ms(s.t[i]),
            end: format_ms(s.t[j]),
            change_pct: round(r.exp_m1() * 100.0, 2),
            onset: format_ms(s.t[onset]),
            seen_at: seen.map(|a| format_ms(a.t_ms)),
            seen_by: seen.map(|a| a.kind.as_str().to_string()),
            minutes_after_start: seen.map(|a| minutes(s.t[i], a.t_ms)),
            minutes_after_onset: seen.map(|a| minutes(s.t[onset], a.t_ms)),
        });
    }
    out
}
