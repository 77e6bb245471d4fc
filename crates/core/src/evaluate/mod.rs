//! The outcome study behind `dexpulse evaluate` (docs/evaluation.md): what the price and the
//! liquidity did after each opened event of a tape, against random entries and a naive rule on
//! the same tape. Owns entry, horizon and barrier rules and the statistics; never reads the
//! clock, and its baseline draws from a seeded generator, so the same tape and seed give the
//! same report, byte for byte. Only data strictly after an event's snapshot is used to judge it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::model::{Direction, Kind, PairKey, Phase, SignalEvent, Snapshot};
use crate::signal::Verdict;

mod days;
mod outcome;
mod paired;
pub mod tune;

pub use days::{Move, PairDay};
pub use outcome::wilson;
pub use paired::{Verdict as Comparison, VsNaive};

use outcome::{median, outcome, round, Outcome, Series, Tally};

const MIN_MS: i64 = 60_000;
const DAY_MS: f64 = 86_400_000.0;

/// How outcomes are judged. `Options::new` checks them; the defaults are docs/evaluation.md's.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Forward-return horizons, ascending; the longest is the barriers' time limit.
    pub horizons_ms: Vec<i64>,
    /// Barriers at ±k·σ, σ the pair's own volatility over `vol_lookback_ms` before the event,
    /// scaled to the time limit.
    pub barrier_k: f64,
    /// The narrowest barrier (a log return), for pairs whose recent price barely moved.
    pub min_barrier: f64,
    pub vol_lookback_ms: i64,
    pub seed: u64,
    /// Random entries per event.
    pub replicates: usize,
    /// A random entry is drawn within this much of its event's time.
    pub match_window_ms: i64,
    /// A random entry's pair must have been seen this long before it...
    pub min_history_ms: i64,
    /// ...and show at least this USD liquidity at it.
    pub min_liquidity_usd: f64,
    /// Liquidity kinds: the reference is the most liquidity seen this long before the event.
    pub liquidity_ref_ms: i64,
    /// The fall from the reference that makes a drain and a rug warning true.
    pub drain_fall: f64,
    pub rug_fall: f64,
    /// The naive rule: bullish when `P_h1` crosses this (percent), once per cooldown per pair.
    pub naive_pc_h1: f64,
    pub naive_cooldown_ms: i64,
    /// A kind's alert and the naive rule's are one market event within this much of each
    /// other on the same pair.
    pub naive_match_ms: i64,
    /// The window of a day's largest moves.
    pub move_window_ms: i64,
}

/// A refused option of `evaluate` or `tune`; the text names the flag without its dashes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("horizons: at least one is needed")]
    NoHorizon,
    #[error("horizons: must be positive and ascending")]
    HorizonOrder,
    #[error("horizons: `{0}` is not a number with a unit (5m, 1h)")]
    HorizonNumber(String),
    #[error("horizons: `{0}` needs a unit s, m or h")]
    HorizonUnit(String),
    #[error("horizons: `{0}` is out of range")]
    HorizonRange(String),
    #[error("param `{0}`: expected NAME=V1,V2,…")]
    ParamShape(String),
    #[error("param `{0}`: NAME must be a dotted key under [signal], e.g. momentum.enter_z")]
    ParamName(String),
    #[error("param `{0}`: no values")]
    ParamValues(String),
    #[error("the grid is larger than {0} settings")]
    GridSize(usize),
}

impl Options {
    pub fn new(horizons_ms: Vec<i64>, seed: u64) -> Result<Options, ArgError> {
        if horizons_ms.is_empty() {
            return Err(ArgError::NoHorizon);
        }
        if horizons_ms.windows(2).any(|w| w[0] >= w[1]) || horizons_ms[0] <= 0 {
            return Err(ArgError::HorizonOrder);
        }
        Ok(Options {
            horizons_ms,
            barrier_k: 2.0,
            min_barrier: 0.01,
            vol_lookback_ms: 60 * MIN_MS,
            seed,
            replicates: 10,
            match_window_ms: 15 * MIN_MS,
            min_history_ms: 60 * MIN_MS,
            min_liquidity_usd: 10_000.0,
            liquidity_ref_ms: 30 * MIN_MS,
            drain_fall: 0.25,
            rug_fall: 0.60,
            naive_pc_h1: 15.0,
            naive_cooldown_ms: 60 * MIN_MS,
            naive_match_ms: 60 * MIN_MS,
            move_window_ms: 60 * MIN_MS,
        })
    }

    fn limit_ms(&self) -> i64 {
        self.horizons_ms.last().copied().unwrap_or(60 * MIN_MS)
    }
}

/// Parses `5m,15m,60m` (units `s`, `m`, `h`) into milliseconds, ascending.
pub fn parse_horizons(text: &str) -> Result<Vec<i64>, ArgError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (num, unit) = part.split_at(
            part.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len()),
        );
        let n: i64 = num
            .parse()
            .map_err(|_| ArgError::HorizonNumber(part.to_string()))?;
        let ms = match unit {
            "s" => 1_000,
            "m" => MIN_MS,
            "h" => 60 * MIN_MS,
            _ => return Err(ArgError::HorizonUnit(part.to_string())),
        };
        if n <= 0 || n > 7 * 24 * 60 * 60 {
            return Err(ArgError::HorizonRange(part.to_string()));
        }
        out.push(n * ms);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn horizon_label(ms: i64) -> String {
    if ms % (60 * MIN_MS) == 0 {
        format!("{}h", ms / (60 * MIN_MS))
    } else if ms % MIN_MS == 0 {
        format!("{}m", ms / MIN_MS)
    } else {
        format!("{}s", ms / 1_000)
    }
}

#[derive(Debug, Clone)]
struct Alert {
    pair: usize,
    t_ms: i64,
    score: u8,
}

/// What the study collects from a replay: call `observe` for every snapshot (with the
/// engine's verdict) and `event` for every event, then `report`.
#[derive(Debug)]
pub struct Study {
    opts: Options,
    pairs: Vec<PairKey>,
    /// Pairs by tape and key: several tapes are pooled, each its own market.
    index: FxHashMap<(u32, PairKey), usize>,
    tape: u32,
    series: Vec<Series>,
    groups: BTreeMap<(usize, usize), Vec<Alert>>,
    snapshots: u64,
    /// Each pair's tape.
    pair_tape: Vec<u32>,
    /// Per tape, the span whose entries are judged (`dexpulse tune`'s walk-forward parts);
    /// a tape without one is judged whole.
    windows: FxHashMap<u32, (i64, i64)>,
}

/// A group's row key: the kind's place (`Kind::ALL`, then the naive rule) and the direction's.
fn group_name(g: usize) -> &'static str {
    Kind::ALL.get(g).map_or("naive_p_h1", |k| k.as_str())
}

const NAIVE: usize = Kind::ALL.len();
const DIRECTIONS: [Direction; 3] = [Direction::Bullish, Direction::Bearish, Direction::Neutral];

impl Study {
    pub fn new(opts: Options) -> Study {
        Study {
            opts,
            pairs: Vec::new(),
            index: FxHashMap::default(),
            tape: 0,
            series: Vec::new(),
            groups: BTreeMap::new(),
            snapshots: 0,
            pair_tape: Vec::new(),
            windows: FxHashMap::default(),
        }
    }

    /// Judges only the entries of the current tape in `[from_ms, to_ms)`: its events and the
    /// naive rule's alerts (the market before and after still gives their outcomes and
    /// history). `dexpulse tune` ends an earlier part a limit before the later one starts, so
    /// that no outcome of the first reads the second.
    pub fn window(&mut self, from_ms: i64, to_ms: i64) {
        self.windows.insert(self.tape, (from_ms, to_ms));
    }

    fn in_window(&self, tape: u32, t_ms: i64) -> bool {
        self.windows
            .get(&tape)
            .is_none_or(|(from, to)| *from <= t_ms && t_ms < *to)
    }

    /// Starts the next tape: its pairs are new pairs, whatever their keys, so that tapes of
    /// several seeds (which reuse addresses and times) can be pooled in one report. Replay each
    /// tape with a fresh engine.
    pub fn next_tape(&mut self) {
        self.tape += 1;
    }

    fn pair(&mut self, key: &PairKey) -> usize {
        let k = (self.tape, key.clone());
        if let Some(&i) = self.index.get(&k) {
            return i;
        }
        let i = self.pairs.len();
        self.pairs.push(key.clone());
        self.pair_tape.push(self.tape);
        self.index.insert(k, i);
        self.series.push(Series::default());
        i
    }

    /// Only fresh snapshots with a price count: a stale one repeats the last, and a suspect
    /// one (an outlier) is what the engine refused to believe.
    pub fn observe(&mut self, snap: &Snapshot, verdict: Verdict) {
        if verdict != Verdict::Fresh {
            return;
        }
        let Some(price) = snap
            .price_usd
            .as_ref()
            .map(|p| p.value)
            .filter(|p| *p > 0.0)
        else {
            return;
        };
        let i = self.pair(&snap.key);
        let s = &mut self.series[i];
        if s.t.last().is_some_and(|&t| t >= snap.observed_at_ms) {
            return;
        }
        let invariant = match (snap.liquidity_base, snap.liquidity_quote) {
            (Some(b), Some(q)) if b > 0.0 && q > 0.0 => Some((b * q).sqrt()),
            _ => None,
        };
        self.snapshots += 1;
        s.t.push(snap.observed_at_ms);
        s.price.push(price);
        s.liquidity.push(invariant.or(snap.liquidity_usd));
        s.liquidity_usd.push(snap.liquidity_usd);
        s.pc_h1.push(snap.price_change_pct.h1);
    }

    /// Opened events are studied; a stance only when it turns bullish or bearish.
    pub fn event(&mut self, e: &SignalEvent) {
        if e.phase != Phase::Opened
            || (e.kind == Kind::Stance && e.direction == Direction::Neutral)
            || !self.in_window(self.tape, e.observed_at_ms)
        {
            return;
        }
        let key = PairKey {
            chain: e.chain.clone(),
            address: e.pair_address.clone(),
        };
        let pair = self.pair(&key);
        let d = DIRECTIONS
            .iter()
            .position(|d| *d == e.direction)
            .unwrap_or(2);
        self.groups
            .entry((e.kind.index(), d))
            .or_default()
            .push(Alert {
                pair,
                t_ms: e.observed_at_ms,
                score: e.score,
            });
    }

    /// The naive rule's alerts in a direction: `P_h1` crossing `+naive_pc_h1` upward
    /// (bullish) or `−naive_pc_h1` downward (bearish), once per cooldown per pair.
    fn naive(&self, dir: Direction) -> Vec<Alert> {
        let sign = if dir == Direction::Bearish { -1.0 } else { 1.0 };
        let level = self.opts.naive_pc_h1;
        let mut out = Vec::new();
        for (pair, s) in self.series.iter().enumerate() {
            let mut last = i64::MIN / 2;
            let mut prev: Option<f64> = None;
            for (i, pc) in s.pc_h1.iter().enumerate() {
                let t = s.t[i];
                if let Some(pc) = pc.map(|p| p * sign) {
                    let crossed = pc >= level && prev.is_none_or(|p| p < level);
                    if crossed
                        && t - last >= self.opts.naive_cooldown_ms
                        && self.in_window(self.pair_tape[pair], t)
                    {
                        out.push(Alert {
                            pair,
                            t_ms: t,
                            score: 0,
                        });
                        last = t;
                    }
                }
                prev = pc.map(|p| p * sign);
            }
        }
        out.sort_by_key(|a| (a.t_ms, a.pair));
        out
    }

    /// Whether a pair may host a random entry at `t`: seen `min_history_ms` before, its latest
    /// snapshot at most 5 minutes old and at least `min_liquidity_usd` deep.
    fn eligible(&self, pair: usize, t: i64) -> bool {
        let s = &self.series[pair];
        if s.t
            .first()
            .is_none_or(|&first| first > t - self.opts.min_history_ms)
        {
            return false;
        }
        let i = s.t.partition_point(|&x| x <= t);
        i > 0
            && t - s.t[i - 1] <= 5 * MIN_MS
            && s.liquidity_usd[i - 1].is_some_and(|l| l >= self.opts.min_liquidity_usd)
    }

    pub fn report(&self) -> Report {
        let opts = &self.opts;
        let pair_days: f64 = self
            .series
            .iter()
            .zip(&self.pair_tape)
            .filter_map(|(s, tape)| {
                let (mut a, mut b) = (*s.t.first()?, *s.t.last()?);
                if let Some((from, to)) = self.windows.get(tape) {
                    (a, b) = (a.max(*from), b.min(*to));
                }
                Some((b - a).max(0) as f64 / DAY_MS)
            })
            // An empty f64 sum is −0.0.
            .fold(0.0, |a, b| a + b);
        let mut groups: Vec<((usize, usize), Vec<Alert>)> =
            self.groups.iter().map(|(k, v)| (*k, v.clone())).collect();
        let naive = [
            self.judged(&self.naive(Direction::Bullish), Direction::Bullish),
            self.judged(&self.naive(Direction::Bearish), Direction::Bearish),
        ];
        for (d, dir) in [Direction::Bullish, Direction::Bearish]
            .into_iter()
            .enumerate()
        {
            let alerts = self.naive(dir);
            if !alerts.is_empty() {
                groups.push(((NAIVE, d), alerts));
            }
        }
        let rows = groups
            .iter()
            .map(|((g, d), alerts)| {
                let dir = DIRECTIONS[*d];
                let mut row = self.row(*g, dir, alerts, pair_days);
                // Price kinds against the rule of their direction; liquidity kinds are judged
                // by another rule, and the naive rows are the rule.
                let price_kind = Kind::ALL.get(*g).is_some_and(|k| {
                    !matches!(k, Kind::LiquidityDrain | Kind::RugWarning | Kind::Reorg)
                });
                if price_kind && dir != Direction::Neutral {
                    let rule = format!(
                        "P_h1 {} {}{}",
                        if dir == Direction::Bearish {
                            "<="
                        } else {
                            ">="
                        },
                        if dir == Direction::Bearish { "-" } else { "+" },
                        opts.naive_pc_h1
                    );
                    let mine = self.judged(alerts, dir);
                    row.vs_naive = Some(paired::compare(
                        &mine,
                        &naive[usize::from(dir == Direction::Bearish)],
                        opts.naive_match_ms,
                        &rule,
                    ));
                }
                row
            })
            .collect();
        Report {
            schema: "dexpulse.evaluate/v2",
            tapes: self.tape as usize + 1,
            horizons: opts.horizons_ms.iter().map(|&h| horizon_label(h)).collect(),
            limit: horizon_label(opts.limit_ms()),
            barrier_k: opts.barrier_k,
            seed: opts.seed,
            replicates: opts.replicates,
            pairs: self.pairs.len(),
            snapshots: self.snapshots,
            pair_days: round(pair_days, 3),
            naive_match_minutes: opts.naive_match_ms as f64 / MIN_MS as f64,
            rows,
            days: days::pair_days(self),
        }
    }

    /// Each alert with whether it came true by the price rule of `dir`.
    fn judged(&self, alerts: &[Alert], dir: Direction) -> Vec<paired::Judged> {
        alerts
            .iter()
            .map(|a| paired::Judged {
                pair: a.pair,
                t_ms: a.t_ms,
                hit: outcome(&self.series[a.pair], a.t_ms, dir, None, &self.opts)
                    .and_then(|o| o.hit()),
            })
            .collect()
    }

    fn row(&self, g: usize, dir: Direction, alerts: &[Alert], pair_days: f64) -> Row {
        let opts = &self.opts;
        let fall = match Kind::ALL.get(g) {
            Some(Kind::LiquidityDrain) => Some(opts.drain_fall),
            Some(Kind::RugWarning) => Some(opts.rug_fall),
            _ => None,
        };
        let outcomes: Vec<(u8, Option<Outcome>)> = alerts
            .iter()
            .map(|a| {
                (
                    a.score,
                    outcome(&self.series[a.pair], a.t_ms, dir, fall, opts),
                )
            })
            .collect();
        // The baseline: random pairs and times near each alert, judged the same way.
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ fnv(group_name(g), dir));
        let mut random = Vec::new();
        if !self.pairs.is_empty() {
            for a in alerts {
                for _ in 0..opts.replicates {
                    for _attempt in 0..50 {
                        let pair = rng.gen_range(0..self.pairs.len());
                        let t =
                            a.t_ms + rng.gen_range(-opts.match_window_ms..=opts.match_window_ms);
                        if self.eligible(pair, t) {
                            random.push(outcome(&self.series[pair], t, dir, fall, opts));
                            break;
                        }
                    }
                }
            }
        }
        let mine = Tally::of(outcomes.iter().map(|(_, o)| o.as_ref()), opts);
        let base = Tally::of(random.iter().map(Option::as_ref), opts);
        let bands = [(40u8, 59u8), (60, 79), (80, 100)]
            .iter()
            .map(|&(lo, hi)| {
                let t = Tally::of(
                    outcomes
                        .iter()
                        .filter(|(s, _)| (lo..=hi).contains(s))
                        .map(|(_, o)| o.as_ref()),
                    opts,
                );
                Band {
                    band: format!("{lo}-{hi}"),
                    tally: t.counts(),
                }
            })
            .filter(|b| b.tally.count > 0)
            .collect();
        let lift = match (mine.rate(), base.rate()) {
            (Some(m), Some(b)) if b > 0.0 => Some(round(m / b, 2)),
            _ => None,
        };
        Row {
            kind: group_name(g).to_string(),
            direction: dir,
            hit_rule: match (fall, dir) {
                (Some(f), _) => format!(
                    "liquidity {:.0}% below its 30 min high at the limit",
                    f * 100.0
                ),
                (None, Direction::Bullish) => "upper barrier first".into(),
                (None, Direction::Bearish) => "lower barrier first".into(),
                (None, Direction::Neutral) => "either barrier".into(),
            },
            tally: mine.counts(),
            hit_rate_ci95: mine.wilson(),
            median_return_pct: mine.median_returns(opts),
            median_lead_minutes: mine.median_lead_minutes(),
            median_mfe_pct: median(&mine.mfe).map(|v| round(v * 100.0, 2)),
            median_mae_pct: median(&mine.mae).map(|v| round(v * 100.0, 2)),
            alerts_per_pair_day: if pair_days > 0.0 {
                round(mine.count as f64 / pair_days, 3)
            } else {
                0.0
            },
            score_bands: bands,
            random: Baseline {
                tally: base.counts(),
                hit_rate_ci95: base.wilson(),
                median_return_pct: base.median_returns(opts),
            },
            lift,
            vs_naive: None,
        }
    }
}

/// A stable 64-bit hash of a group's name, so each group draws its own baseline and adding a
/// kind leaves the others' unchanged.
fn fnv(name: &str, dir: Direction) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(dir.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub schema: &'static str,
    pub tapes: usize,
    pub horizons: Vec<String>,
    pub limit: String,
    pub barrier_k: f64,
    pub seed: u64,
    pub replicates: usize,
    pub pairs: usize,
    pub snapshots: u64,
    pub pair_days: f64,
    pub naive_match_minutes: f64,
    pub rows: Vec<Row>,
    /// Per pair and UTC day: the events, what followed them against random entries, and the
    /// day's largest moves with whether and when an event saw them.
    pub days: Vec<PairDay>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub kind: String,
    pub direction: Direction,
    pub hit_rule: String,
    #[serde(flatten)]
    pub tally: Counts,
    pub hit_rate_ci95: Option<[f64; 2]>,
    pub median_return_pct: BTreeMap<String, Option<f64>>,
    pub median_lead_minutes: Option<f64>,
    pub median_mfe_pct: Option<f64>,
    pub median_mae_pct: Option<f64>,
    pub alerts_per_pair_day: f64,
    pub score_bands: Vec<Band>,
    pub random: Baseline,
    pub lift: Option<f64>,
    /// Against the naive rule of the row's direction on the same tapes (price kinds only).
    pub vs_naive: Option<VsNaive>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Band {
    pub band: String,
    #[serde(flatten)]
    pub tally: Counts,
}

/// Alerts, those not censored, those that came true, and the rate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counts {
    pub count: usize,
    pub evaluated: usize,
    pub hits: usize,
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Baseline {
    #[serde(flatten)]
    pub tally: Counts,
    pub hit_rate_ci95: Option<[f64; 2]>,
    pub median_return_pct: BTreeMap<String, Option<f64>>,
}

impl Report {
    /// Day by day for people: each pair-day's events, how often the next hour contradicted
    /// them against random entries, and its largest moves with who saw them.
    pub fn days_table(&self) -> String {
        let mut out = String::new();
        for d in &self.days {
            let events: Vec<String> = d.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
            let _ =
                writeln!(
                out,
                "{} {} {}: {} snapshots; events: {}; contradicted {} of {} ({}) vs random {} of {}",
                d.chain,
                d.pair,
                d.day,
                d.snapshots,
                if events.is_empty() { "none".to_string() } else { events.join(", ") },
                d.contradicted,
                d.directional,
                pct(d.contradicted_rate),
                pct(d.random_contradicted_rate),
                d.random_entries,
            );
            for m in &d.moves {
                let seen = match (
                    &m.seen_at,
                    &m.seen_by,
                    m.minutes_after_onset,
                    m.minutes_after_start,
                ) {
                    (Some(at), Some(by), Some(o), Some(s)) => format!(
                        "seen by {by} at {} ({s:+.0} min after the start, {o:+.0} after the onset)",
                        &at[11..16]
                    ),
                    _ => "not seen".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  largest {}: {:+.2}% {}-{} (onset {}); {seen}",
                    if m.direction == Direction::Bullish {
                        "rise"
                    } else {
                        "fall"
                    },
                    m.change_pct,
                    &m.start[11..16],
                    &m.end[11..16],
                    &m.onset[11..16],
                );
            }
        }
        out
    }

    /// The table for people: one line per kind and direction.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} tape(s), {} pairs, {:.1} pair-days, {} fresh snapshots; barriers ±{}σ, limit {}; random baseline {}× per alert, seed {}",
            self.tapes, self.pairs, self.pair_days, self.snapshots, self.barrier_k, self.limit, self.replicates, self.seed
        );
        let _ = write!(
            out,
            "{:<16} {:<8} {:>5} {:>5} {:>15} {:>7} {:>6}",
            "kind", "dir", "n", "eval", "hit % [95% CI]", "random", "lift"
        );
        for h in &self.horizons {
            let _ = write!(out, " {:>8}", format!("ret {h}"));
        }
        let _ = writeln!(
            out,
            " {:>6} {:>7} {:>7} {:>7}",
            "lead", "MFE %", "MAE %", "/pairday"
        );
        for r in &self.rows {
            let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.0}", v * 100.0));
            let ci = r.hit_rate_ci95.map_or(String::new(), |[a, b]| {
                format!(" [{:.0}-{:.0}]", a * 100.0, b * 100.0)
            });
            let _ = write!(
                out,
                "{:<16} {:<8} {:>5} {:>5} {:>15} {:>7} {:>6}",
                r.kind,
                r.direction.as_str(),
                r.tally.count,
                r.tally.evaluated,
                format!("{}{ci}", pct(r.tally.hit_rate)),
                pct(r.random.tally.hit_rate),
                r.lift.map_or("-".to_string(), |l| format!("{l:.2}")),
            );
            for h in &self.horizons {
                let v = r.median_return_pct.get(h).copied().flatten();
                let _ = write!(
                    out,
                    " {:>8}",
                    v.map_or("-".to_string(), |v| format!("{v:+.2}"))
                );
            }
            let opt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
            let _ = writeln!(
                out,
                " {:>6} {:>7} {:>7} {:>7.3}",
                opt(r.median_lead_minutes, 1),
                opt(r.median_mfe_pct, 2),
                opt(r.median_mae_pct, 2),
                r.alerts_per_pair_day
            );
        }
        let compared: Vec<&Row> = self.rows.iter().filter(|r| r.vs_naive.is_some()).collect();
        if !compared.is_empty() {
            let _ = writeln!(
                out,
                "\nagainst the naive rule of each direction (the same events paired: alerts within {} min on one pair)",
                self.naive_match_minutes
            );
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>5} {:>7} {:>5} {:>7} {:>7} {:>9} {:>8}  verdict",
                "kind",
                "dir",
                "naive",
                "naive %",
                "pairs",
                "k-only",
                "n-only",
                "McNemar p",
                "earlier",
            );
            for r in compared {
                let Some(v) = &r.vs_naive else { continue };
                let pct =
                    |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.0}", v * 100.0));
                let _ = writeln!(
                    out,
                    "{:<16} {:<8} {:>5} {:>7} {:>5} {:>7} {:>7} {:>9} {:>8}  {}",
                    r.kind,
                    r.direction.as_str(),
                    v.naive_alerts,
                    pct(v.naive_hit_rate),
                    v.matched,
                    v.kind_only_hit,
                    v.naive_only_hit,
                    v.mcnemar_p.map_or("-".to_string(), |p| format!("{p:.3}")),
                    v.median_minutes_earlier
                        .map_or("-".to_string(), |m| format!("{m:+.1}")),
                    v.verdict.as_str(),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    /// A series of one snapshot a minute at these prices (liquidity 50k, flat unless given).
    fn series(prices: &[f64], liquidity: Option<&[f64]>) -> Series {
        let mut s = Series::default();
        for (i, p) in prices.iter().enumerate() {
            s.t.push(T0 + i as i64 * MIN_MS);
            s.price.push(*p);
            let l = liquidity.map_or(50_000.0, |l| l[i]);
            s.liquidity.push(Some(l));
            s.liquidity_usd.push(Some(l));
            s.pc_h1.push(None);
        }
        s
    }

    /// The outcome of a bullish alert at `minute` on one-minute prices.
    fn bullish_at(prices: &[f64], minute: i64, horizons_min: &[i64]) -> Option<Outcome> {
        let o = opts(horizons_min);
        outcome(
            &series(prices, None),
            T0 + minute * MIN_MS,
            Direction::Bullish,
            None,
            &o,
        )
    }

    fn opts(horizons_min: &[i64]) -> Options {
        Options::new(horizons_min.iter().map(|m| m * MIN_MS).collect(), 1).unwrap()
    }

    /// 61 flat-ish minutes (σ small, so the 1 % floor is the barrier), then `after`.
    fn with_history(after: &[f64]) -> Vec<f64> {
        let mut v: Vec<f64> = (0..61)
            .map(|i| if i % 2 == 0 { 1.0 } else { 1.0001 })
            .collect();
        v.extend_from_slice(after);
        v
    }

    #[test]
    fn the_entry_is_the_snapshot_after_the_alert_not_its_own() {
        // The alert's snapshot (minute 60) jumped +50 %; the next is flat from there.
        let mut p = with_history(&[]);
        p[60] = 1.5;
        p.extend(std::iter::repeat_n(1.5, 70));
        let o = bullish_at(&p, 60, &[5, 60]).unwrap();
        assert_eq!(o.returns, vec![Some(0.0), Some(0.0)]);
        assert_eq!((o.label, o.price_hit), (Some(0), Some(false)));
    }

    #[test]
    fn barrier_labels_by_the_first_touch_in_the_direction() {
        let o = opts(&[60]);
        let check = |after: &[f64], dir: Direction, label: Option<i8>, hit: Option<bool>| {
            let mut p = with_history(after);
            p.extend(std::iter::repeat_n(*after.last().unwrap(), 70));
            let out = outcome(&series(&p, None), T0 + 60 * MIN_MS, dir, None, &o).unwrap();
            assert_eq!(
                (out.label, out.price_hit),
                (label, hit),
                "{after:?} {dir:?}"
            );
        };
        // Entry at minute 61 (price 1.0); up 2 % then down 2 %: the upper barrier is first.
        check(&[1.0, 1.02, 0.97], Direction::Bullish, Some(1), Some(true));
        check(&[1.0, 1.02, 0.97], Direction::Bearish, Some(1), Some(false));
        check(&[1.0, 0.97, 1.02], Direction::Bearish, Some(-1), Some(true));
        check(&[1.0, 0.97, 1.02], Direction::Neutral, Some(-1), Some(true));
        check(&[1.0, 1.005], Direction::Neutral, Some(0), Some(false));
    }

    #[test]
    fn an_outcome_past_the_end_of_the_tape_is_censored() {
        let p = with_history(&[1.0, 1.001, 1.002]);
        let o = bullish_at(&p, 60, &[5, 60]).unwrap();
        assert_eq!((o.label, o.price_hit), (None, None));
        assert_eq!(o.returns, vec![None, None]);
        // No snapshot after the alert at all: no entry.
        assert!(bullish_at(&p, 70, &[5]).is_none());
    }

    #[test]
    fn the_barrier_scales_with_the_pairs_own_volatility() {
        // ±1 % every minute before the alert: σ ≈ 1.4 %, over 60 steps a 2σ barrier ≈ 22 %, so
        // a 5 % rise is no touch; on a quiet pair (the 1 % floor) it is.
        let mut noisy: Vec<f64> = (0..61)
            .map(|i| if i % 2 == 0 { 1.0 } else { 1.01 })
            .collect();
        noisy.extend(std::iter::repeat_n(1.05, 70));
        noisy[61] = 1.0;
        let label = |p: &[f64]| {
            outcome(
                &series(p, None),
                T0 + 60 * MIN_MS,
                Direction::Bullish,
                None,
                &opts(&[60]),
            )
            .unwrap()
            .label
        };
        assert_eq!(label(&noisy), Some(0));
        let mut quiet = with_history(&[1.0]);
        quiet.extend(std::iter::repeat_n(1.05, 70));
        assert_eq!(label(&quiet), Some(1));
    }

    #[test]
    fn a_liquidity_kind_is_true_when_the_liquidity_stayed_down() {
        let o = opts(&[60]);
        let check = |liq_after: f64, fall: f64, expect: Option<bool>| {
            let p = vec![1.0; 140];
            let mut l = vec![100_000.0; 140];
            for x in l.iter_mut().skip(60) {
                *x = liq_after;
            }
            let out = outcome(
                &series(&p, Some(&l)),
                T0 + 60 * MIN_MS,
                Direction::Bearish,
                Some(fall),
                &o,
            )
            .unwrap();
            assert_eq!(out.liquidity_fell, expect, "{liq_after} {fall}");
            assert_eq!(out.hit(), expect);
        };
        check(20_000.0, 0.6, Some(true));
        check(50_000.0, 0.6, Some(false));
        check(50_000.0, 0.25, Some(true));
        check(90_000.0, 0.25, Some(false));
    }

    #[test]
    fn wilson_intervals() {
        let check = |hits, n, lo: f64, hi: f64| {
            let [a, b] = wilson(hits, n).unwrap();
            assert!(
                (a - lo).abs() < 5e-4 && (b - hi).abs() < 5e-4,
                "{hits}/{n}: {a} {b}"
            );
        };
        // Reference values (Wilson 1927; e.g. statsmodels proportion_confint method="wilson").
        check(0, 10, 0.0, 0.2775);
        check(5, 10, 0.2366, 0.7634);
        check(10, 10, 0.7225, 1.0);
        check(81, 100, 0.7222, 0.8749);
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn horizons_parse_with_units_and_refuse_junk() {
        assert_eq!(
            parse_horizons("5m,15m,1h").unwrap(),
            vec![5 * MIN_MS, 15 * MIN_MS, 60 * MIN_MS]
        );
        assert_eq!(
            parse_horizons("60m, 30s").unwrap(),
            vec![30_000, 60 * MIN_MS]
        );
        for bad in ["", "5", "5x", "m", "-5m", "0m", "5m,,1h"] {
            assert!(parse_horizons(bad).is_err(), "{bad}");
        }
    }

    fn snap(i: i64, price: f64, pc_h1: f64) -> Snapshot {
        let mut s = crate::source::simulator::example_snapshot();
        s.observed_at_ms = T0 + i * MIN_MS;
        s.price_usd = crate::model::Price::parse(&format!("{price}"));
        s.price_change_pct.h1 = Some(pc_h1);
        s
    }

    #[test]
    fn the_naive_rule_fires_on_a_crossing_once_per_cooldown() {
        let mut study = Study::new(opts(&[5]));
        let pcs = [0.0, 16.0, 17.0, 10.0, 20.0];
        for (i, pc) in pcs.iter().enumerate() {
            study.observe(&snap(i as i64, 1.0, *pc), Verdict::Fresh);
        }
        // Crossed at minute 1; the recrossing at minute 4 is inside the hour's cooldown.
        let n = study.naive(Direction::Bullish);
        assert_eq!(
            n.iter().map(|a| a.t_ms).collect::<Vec<_>>(),
            vec![T0 + MIN_MS]
        );
        // Stale and suspect snapshots are not the market.
        study.observe(&snap(200, 9.0, 0.0), Verdict::Stale);
        study.observe(&snap(201, 9.0, 0.0), Verdict::Suspect);
        assert_eq!(study.series[0].t.len(), pcs.len());
    }

    #[test]
    fn the_same_input_and_seed_give_the_same_report() {
        let run = |seed: u64| {
            let mut o = opts(&[5, 15]);
            o.seed = seed;
            let mut study = Study::new(o);
            let mut ev = None;
            for pair in 0..5 {
                for i in 0..200 {
                    let mut s = snap(i, 1.0 + 0.01 * ((i * (pair + 3)) % 7) as f64, 0.0);
                    s.key.address = format!("p{pair}");
                    study.observe(&s, Verdict::Fresh);
                    if pair == 0 && i % 50 == 49 {
                        let mut engine =
                            crate::signal::Engine::new(crate::signal::Params::default());
                        engine.observe(&s);
                        let mut t = s.clone();
                        t.liquidity_base = t.liquidity_base.map(|b| b * 0.1);
                        t.liquidity_quote = t.liquidity_quote.map(|q| q * 0.1);
                        t.liquidity_usd = t.liquidity_usd.map(|l| l * 0.1);
                        ev = engine.observe(&t).into_iter().next();
                        if let Some(e) = &ev {
                            let mut e = e.clone();
                            e.kind = Kind::MomentumUp;
                            e.direction = Direction::Bullish;
                            study.event(&e);
                        }
                    }
                }
            }
            assert!(ev.is_some());
            serde_json::to_string(&study.report()).unwrap()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2), "the baseline must depend on the seed");
    }
}
