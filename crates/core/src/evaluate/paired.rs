//! A kind against the naive rule of its direction (`P_h1 ≥ +15` bullish, `P_h1 ≤ −15`
//! bearish) on the same tape (docs/evaluation.md, "Against the naive rule"): the alerts of both
//! are matched by pair and time, and the matched ones, the same market events seen by both,
//! are compared in pairs: which came true (McNemar's exact test on the discordant pairs) and
//! which came first. The unmatched alerts of each are counted apart.

use serde::Serialize;

use super::outcome::{binomial_two_sided, median, round};

/// One alert and whether it came true (`None`: censored, or a rule that does not apply).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Judged {
    pub(super) pair: usize,
    pub(super) t_ms: i64,
    pub(super) hit: Option<bool>,
}

/// The comparison of one kind's alerts with the naive rule's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VsNaive {
    pub rule: String,
    pub naive_alerts: usize,
    pub naive_hit_rate: Option<f64>,
    /// Alerts of both on the same pair within the match window of each other: one market
    /// event seen by both.
    pub matched: usize,
    /// Of the matched events judged for both: came true for both, for the kind only, for the
    /// naive rule only, for neither.
    pub both_hit: usize,
    pub kind_only_hit: usize,
    pub naive_only_hit: usize,
    pub neither_hit: usize,
    /// McNemar's exact two-sided p on the discordant pairs: whether the kind and the rule
    /// differ in how often they come true on the same events.
    pub mcnemar_p: Option<f64>,
    /// How many minutes before the naive rule the kind alerted on the matched events (the
    /// median; negative: after it).
    pub median_minutes_earlier: Option<f64>,
    /// The kind's alerts the naive rule never matched, and how often they came true.
    pub kind_unmatched: usize,
    pub kind_unmatched_hit_rate: Option<f64>,
    /// The naive rule's alerts the kind never matched.
    pub naive_unmatched: usize,
    pub naive_unmatched_hit_rate: Option<f64>,
    pub verdict: Verdict,
}

/// What the comparison says about the kind (docs/evaluation.md says how it is decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A higher hit rate than the rule's, alerting no later on the events both saw.
    BeatsOnHitRate,
    /// Earlier on the events both saw, at a hit rate not below the rule's (or not
    /// significantly below on those events).
    BeatsOnLead,
    DoesNotBeat,
    /// The rule never fired on these tapes (or the kind never did): nothing to compare.
    NoComparison,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::BeatsOnHitRate => "beats on hit rate",
            Verdict::BeatsOnLead => "beats on lead",
            Verdict::DoesNotBeat => "does not beat",
            Verdict::NoComparison => "no comparison",
        }
    }
}

fn rate(judged: &[&Judged]) -> Option<f64> {
    let evaluated: Vec<bool> = judged.iter().filter_map(|j| j.hit).collect();
    (!evaluated.is_empty())
        .then(|| evaluated.iter().filter(|h| **h).count() as f64 / evaluated.len() as f64)
}

/// Matches each kind alert, in time order, to the nearest unmatched naive alert on the same
/// pair within `window_ms`, and compares.
pub(super) fn compare(kind: &[Judged], naive: &[Judged], window_ms: i64, rule: &str) -> VsNaive {
    let mut order: Vec<&Judged> = kind.iter().collect();
    order.sort_by_key(|j| (j.t_ms, j.pair));
    let mut taken = vec![false; naive.len()];
    let mut pairs: Vec<(&Judged, &Judged)> = Vec::new();
    let mut kind_unmatched: Vec<&Judged> = Vec::new();
    for k in order {
        let best = naive
            .iter()
            .enumerate()
            .filter(|(i, n)| !taken[*i] && n.pair == k.pair && (n.t_ms - k.t_ms).abs() <= window_ms)
            .min_by_key(|(i, n)| ((n.t_ms - k.t_ms).abs(), *i));
        match best {
            Some((i, n)) => {
                taken[i] = true;
                pairs.push((k, n));
            }
            None => kind_unmatched.push(k),
        }
    }
    let naive_unmatched: Vec<&Judged> = naive
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(n, _)| n)
        .collect();
    let (mut both, mut only_k, mut only_n, mut neither) = (0, 0, 0, 0);
    for (k, n) in &pairs {
        match (k.hit, n.hit) {
            (Some(true), Some(true)) => both += 1,
            (Some(true), Some(false)) => only_k += 1,
            (Some(false), Some(true)) => only_n += 1,
            (Some(false), Some(false)) => neither += 1,
            _ => {}
        }
    }
    let earlier: Vec<f64> = pairs
        .iter()
        .map(|(k, n)| (n.t_ms - k.t_ms) as f64 / 60_000.0)
        .collect();
    let mcnemar_p =
        (only_k + only_n > 0).then(|| round(binomial_two_sided(only_k, only_k + only_n), 4));
    let all_kind: Vec<&Judged> = kind.iter().collect();
    let all_naive: Vec<&Judged> = naive.iter().collect();
    let (hk, hn) = (rate(&all_kind), rate(&all_naive));
    let median_earlier = median(&earlier);
    let verdict = match (hk, hn) {
        (Some(k), Some(n)) => {
            let no_later = median_earlier.is_none_or(|m| m >= 0.0);
            let earlier = median_earlier.is_some_and(|m| m > 0.0);
            // Not below the rule's rate, or not significantly different on the shared events.
            let not_worse = k >= n || mcnemar_p.is_none_or(|p| p >= 0.05);
            if k > n && no_later {
                Verdict::BeatsOnHitRate
            } else if earlier && not_worse {
                Verdict::BeatsOnLead
            } else {
                Verdict::DoesNotBeat
            }
        }
        _ => Verdict::NoComparison,
    };
    VsNaive {
        rule: rule.to_string(),
        naive_alerts: naive.len(),
        naive_hit_rate: hn.map(|r| round(r, 4)),
        matched: pairs.len(),
        both_hit: both,
        kind_only_hit: only_k,
        naive_only_hit: only_n,
        neither_hit: neither,
        mcnemar_p,
        median_minutes_earlier: median_earlier.map(|m| round(m, 1)),
        kind_unmatched: kind_unmatched.len(),
        kind_unmatched_hit_rate: rate(&kind_unmatched).map(|r| round(r, 4)),
        naive_unmatched: naive_unmatched.len(),
        naive_unmatched_hit_rate: rate(&naive_unmatched).map(|r| round(r, 4)),
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(pair: usize, minute: i64, hit: bool) -> Judged {
        Judged {
            pair,
            t_ms: minute * 60_000,
            hit: Some(hit),
        }
    }

    #[test]
    fn alerts_pair_up_by_pair_and_time_and_the_verdict_follows() {
        // The kind sees pair 0's event 10 minutes earlier and comes true more often.
        let kind = [j(0, 100, true), j(1, 300, true), j(2, 500, false)];
        let naive = [
            j(0, 110, false),
            j(1, 305, true),
            j(3, 500, true),
            j(1, 900, false),
        ];
        let c = compare(&kind, &naive, 60 * 60_000, "P_h1 >= +15");
        assert_eq!(c.matched, 2);
        assert_eq!((c.both_hit, c.kind_only_hit, c.naive_only_hit), (1, 1, 0));
        assert_eq!(c.median_minutes_earlier, Some(7.5));
        assert_eq!((c.kind_unmatched, c.naive_unmatched), (1, 2));
        // Kind 2/3, naive 2/4 and earlier: beats on hit rate.
        assert_eq!(c.verdict, Verdict::BeatsOnHitRate);

        // Later, at a lower rate: does not beat.
        let late = [j(0, 130, false), j(1, 330, true)];
        let c = compare(&late, &naive, 60 * 60_000, "");
        assert_eq!(c.verdict, Verdict::DoesNotBeat);
        assert!(c.median_minutes_earlier.unwrap() < 0.0);

        // Earlier on the same events and as often true on them: beats on lead.
        let early = [j(0, 100, false), j(1, 290, true), j(3, 490, true)];
        let naive2 = [
            j(0, 110, false),
            j(1, 305, true),
            j(3, 500, true),
            j(4, 10, true),
        ];
        let c = compare(&early, &naive2, 60 * 60_000, "");
        assert_eq!(c.verdict, Verdict::BeatsOnLead, "{c:?}");

        let c = compare(&kind, &[], 60 * 60_000, "");
        assert_eq!(c.verdict, Verdict::NoComparison);
    }
}
