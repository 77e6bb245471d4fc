//! Walk-forward tuning (`dexpulse tune`, docs/evaluation.md "Tuning"): the grid of settings,
//! the figures of one part of the tapes under one setting, the choice on the earlier part and
//! the table that puts it beside the current settings on the later part. Sans-IO: the caller
//! replays the tapes and hands in the two reports of each setting.

use std::fmt::Write as _;

use serde::Serialize;

use super::{wilson, ArgError, Report};
use crate::model::Direction;

/// The most settings one grid may try: each is a replay of every tape.
pub const MAX_GRID: usize = 256;

/// One `NAME=V1,V2,…` of the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
}

/// Parses `NAME=V1,V2,…`; `NAME` is a key under `[signal]` (`momentum.enter_z`).
pub fn parse_axis(text: &str) -> Result<Axis, ArgError> {
    let (name, list) = text
        .split_once('=')
        .ok_or_else(|| ArgError::ParamShape(text.to_string()))?;
    let name = name.trim();
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !ok {
        return Err(ArgError::ParamName(text.to_string()));
    }
    let values: Vec<String> = list
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(ArgError::ParamValues(text.to_string()));
    }
    Ok(Axis {
        name: name.to_string(),
        values,
    })
}

/// Every combination of the axes' values, the first axis slowest; an error past `MAX_GRID`.
pub fn grid(axes: &[Axis]) -> Result<Vec<Vec<(String, String)>>, ArgError> {
    let size = axes
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
        .filter(|n| *n <= MAX_GRID)
        .ok_or(ArgError::GridSize(MAX_GRID))?;
    let mut out = Vec::with_capacity(size);
    for i in 0..size {
        let mut rest = i;
        let mut setting = vec![(String::new(), String::new()); axes.len()];
        for (j, a) in axes.iter().enumerate().rev() {
            setting[j] = (a.name.clone(), a.values[rest % a.values.len()].clone());
            rest /= a.values.len();
        }
        out.push(setting);
    }
    Ok(out)
}

/// The bullish and bearish events of one part of the tapes, pooled over kinds (stances
/// apart: they follow the episodes), against random entries and the naive rule of the same
/// part.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Part {
    pub events: usize,
    pub evaluated: usize,
    pub hits: usize,
    pub hit_rate: Option<f64>,
    /// The lower end of the hit rate's Wilson 95 % interval: what the choice maximises, so
    /// that five lucky events do not beat two hundred good ones.
    pub hit_rate_low: Option<f64>,
    pub random_hit_rate: Option<f64>,
    pub lift: Option<f64>,
    pub naive_hit_rate: Option<f64>,
    /// The median lead of the kinds' hits, weighted by their hits.
    pub lead_minutes: Option<f64>,
    pub alerts_per_pair_day: f64,
}

fn rate(hits: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| hits as f64 / n as f64)
}

impl Part {
    pub fn of(report: &Report) -> Part {
        let directional = |r: &&super::Row| {
            matches!(r.direction, Direction::Bullish | Direction::Bearish) && r.kind != "stance"
        };
        let (mut events, mut evaluated, mut hits) = (0, 0, 0);
        let (mut r_n, mut r_hits, mut n_n, mut n_hits) = (0, 0, 0, 0);
        let (mut lead_sum, mut lead_w) = (0.0, 0usize);
        for r in report.rows.iter().filter(directional) {
            if r.kind == "naive_p_h1" {
                n_n += r.tally.evaluated;
                n_hits += r.tally.hits;
                continue;
            }
            events += r.tally.count;
            evaluated += r.tally.evaluated;
            hits += r.tally.hits;
            r_n += r.random.tally.evaluated;
            r_hits += r.random.tally.hits;
            if let Some(l) = r.median_lead_minutes {
                lead_sum += l * r.tally.hits as f64;
                lead_w += r.tally.hits;
            }
        }
        let hit_rate = rate(hits, evaluated);
        let random_hit_rate = rate(r_hits, r_n);
        Part {
            events,
            evaluated,
            hits,
            hit_rate,
            hit_rate_low: wilson(hits, evaluated).map(|[lo, _]| lo),
            random_hit_rate,
            lift: match (hit_rate, random_hit_rate) {
                (Some(h), Some(r)) if r > 0.0 => Some(h / r),
                _ => None,
            },
            naive_hit_rate: rate(n_hits, n_n),
            lead_minutes: (lead_w > 0).then(|| lead_sum / lead_w as f64),
            alerts_per_pair_day: if report.pair_days > 0.0 {
                events as f64 / report.pair_days
            } else {
                0.0
            },
        }
    }
}

/// The setting with the highest lower bound of its hit rate on the earlier part, among those
/// with at least `min_evaluated` judged events there; ties to the fewer alerts, then to the
/// earlier in the grid. `None` when none qualifies.
pub fn choose(earlier: &[Part], min_evaluated: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, p) in earlier.iter().enumerate() {
        let Some(low) = p.hit_rate_low.filter(|_| p.evaluated >= min_evaluated) else {
            continue;
        };
        let better = match best {
            None => true,
            Some(b) => {
                let bl = earlier[b].hit_rate_low.unwrap_or(0.0);
                low > bl || (low == bl && p.alerts_per_pair_day < earlier[b].alerts_per_pair_day)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{:.0}", v * 100.0))
}

fn num(x: Option<f64>, d: usize) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.d$}"))
}

fn label(setting: &[(String, String)]) -> String {
    if setting.is_empty() {
        return "current".to_string();
    }
    setting
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn line(out: &mut String, w: usize, name: &str, p: &Part) {
    let _ = writeln!(
        out,
        "  {name:<w$} {:>5} {:>6} {:>5} {:>7} {:>6} {:>7} {:>6} {:>8.3}",
        p.evaluated,
        pct(p.hit_rate),
        pct(p.hit_rate_low),
        pct(p.random_hit_rate),
        num(p.lift, 2),
        pct(p.naive_hit_rate),
        num(p.lead_minutes, 1),
        p.alerts_per_pair_day
    );
}

fn header(out: &mut String, w: usize) {
    let _ = writeln!(
        out,
        "  {:<w$} {:>5} {:>6} {:>5} {:>7} {:>6} {:>7} {:>6} {:>8}",
        "setting", "eval", "hit %", "low %", "random", "lift", "naive %", "lead", "/pairday"
    );
}

/// The report: every setting on the earlier part, then the chosen and the current ones on
/// the later part beside their earlier figures, and the configuration it would choose.
pub fn table(
    settings: &[Vec<(String, String)>],
    earlier: &[Part],
    current: (&Part, &Part),
    later: &[Part],
    chosen: Option<usize>,
    min_evaluated: usize,
) -> String {
    let mut out = String::new();
    let w = settings
        .iter()
        .map(|s| label(s).chars().count() + "chosen: ".len())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = writeln!(
        out,
        "earlier part (tuning): bullish and bearish events pooled; chosen by the lowest hit rate its 95 % interval allows, with at least {min_evaluated} judged"
    );
    header(&mut out, w);
    line(&mut out, w, "current", current.0);
    for (s, p) in settings.iter().zip(earlier) {
        line(&mut out, w, &label(s), p);
    }
    let _ = writeln!(
        out,
        "\nlater part (out of sample, never seen by the choice)"
    );
    header(&mut out, w);
    line(&mut out, w, "current", current.1);
    match chosen {
        Some(i) => {
            line(
                &mut out,
                w,
                &format!("chosen: {}", label(&settings[i])),
                &later[i],
            );
            let gap = match (earlier[i].hit_rate, later[i].hit_rate) {
                (Some(a), Some(b)) => format!("{:+.0} points", (b - a) * 100.0),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "\nin-sample to out-of-sample hit rate of the chosen setting: {gap} (a large fall is a setting fitted to the earlier part's noise)"
            );
            let _ = writeln!(
                out,
                "\nthe configuration it would choose (not written; put it in your config file to use it):"
            );
            out.push_str(&as_toml(&settings[i]));
        }
        None => {
            let _ = writeln!(
                out,
                "\nno setting gave {min_evaluated} judged events on the earlier part: nothing to choose"
            );
        }
    }
    out
}

/// The setting as the `[signal.…]` tables of a config file.
pub fn as_toml(setting: &[(String, String)]) -> String {
    let mut tables: std::collections::BTreeMap<String, Vec<(String, String)>> =
        std::collections::BTreeMap::new();
    for (k, v) in setting {
        let (table, key) = match k.rsplit_once('.') {
            Some((t, key)) => (format!("signal.{t}"), key.to_string()),
            None => ("signal".to_string(), k.clone()),
        };
        tables.entry(table).or_default().push((key, v.clone()));
    }
    let mut out = String::new();
    for (t, kv) in tables {
        let _ = writeln!(out, "[{t}]");
        for (k, v) in kv {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_and_bad_ones_say_why() {
        let a = parse_axis("momentum.enter_z=5, 5.5,6").unwrap();
        assert_eq!(a.name, "momentum.enter_z");
        assert_eq!(a.values, ["5", "5.5", "6"]);
        for bad in [
            "momentum.enter_z",
            "=1,2",
            "a..b=1",
            "momentum.enter_z=",
            "x y=1",
        ] {
            assert!(parse_axis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_grid_is_every_combination_in_order() {
        let axes = [
            parse_axis("a=1,2").unwrap(),
            parse_axis("b.c=x,y,z").unwrap(),
        ];
        let g = grid(&axes).unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(g[0], [("a".into(), "1".into()), ("b.c".into(), "x".into())]);
        assert_eq!(g[5], [("a".into(), "2".into()), ("b.c".into(), "z".into())]);
        let big: Vec<Axis> = (0..9)
            .map(|i| parse_axis(&format!("k{i}=1,2")).unwrap())
            .collect();
        assert!(grid(&big).is_err(), "512 settings");
    }

    #[test]
    fn the_choice_wants_enough_events_and_then_the_surest_rate() {
        let part = |evaluated: usize, hits: usize, per_day: f64| Part {
            evaluated,
            hits,
            hit_rate: rate(hits, evaluated),
            hit_rate_low: wilson(hits, evaluated).map(|[lo, _]| lo),
            alerts_per_pair_day: per_day,
            ..Part::default()
        };
        // 5 of 5 is a wide interval; 180 of 200 is surer; 3 events do not qualify.
        let earlier = [part(5, 5, 0.1), part(200, 180, 1.0), part(3, 3, 0.01)];
        assert_eq!(choose(&earlier, 4), Some(1));
        assert_eq!(choose(&earlier, 500), None);
        // A tie goes to the fewer alerts.
        let tie = [part(100, 90, 2.0), part(100, 90, 1.0)];
        assert_eq!(choose(&tie, 10), Some(1));
    }

    #[test]
    fn the_chosen_setting_prints_as_config_tables() {
        let s = vec![
            ("momentum.enter_z".to_string(), "6".to_string()),
            (
                "volatility.half_life_minutes".to_string(),
                "240".to_string(),
            ),
        ];
        assert_eq!(
            as_toml(&s),
            "[signal.momentum]\nenter_z = 6\n[signal.volatility]\nhalf_life_minutes = 240\n"
        );
    }
}
