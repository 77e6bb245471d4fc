//! The engine's properties, with proptest: the score stays in [0, 100] and rises with the
//! momentum it measures; a duplicated snapshot never changes the output; a pair's events do
//! not depend on how its snapshots interleave with other pairs'; missing liquidity never raises
//! a drain or rug warning. (That the same tape gives the same bytes across builds is pinned by
//! the golden files of `scenarios`.)

use std::sync::OnceLock;

use dexpulse::model::{Direction, Kind, PairKey, SignalEvent, Snapshot};
use dexpulse::signal::kinds::{self, Features, RiskFlags};
use dexpulse::signal::Engine;
use dexpulse::signal::Params;
use dexpulse::source::simulator::{Scenario, SimOptions};
use dexpulse::source::tape::{Body, TapeReader, TapeRecord};
use proptest::prelude::*;

use crate::support::{tape, to_lines};

/// Decoded snapshots of a few scenarios (3 h), in tape order: the raw material the properties
/// reorder and duplicate.
fn snapshots() -> &'static [Snapshot] {
    static SNAPS: OnceLock<Vec<Snapshot>> = OnceLock::new();
    SNAPS.get_or_init(|| {
        let opts = SimOptions {
            seed: 3,
            hours: 3.0,
            noise_pairs: 2,
            ..SimOptions::default()
        };
        let bytes = tape(
            &[
                Scenario::Breakout,
                Scenario::PumpDump,
                Scenario::LpWithdrawal,
                Scenario::Noise,
            ],
            &opts,
        );
        let mut out = Vec::new();
        for rec in TapeReader::new(&bytes[..]) {
            if let Ok(Ok(TapeRecord::Response(r))) = rec {
                if let Body::Json(b) = &r.body {
                    out.extend(
                        dexpulse::source::decode(r.source, &r.request, b, r.t_ms)
                            .unwrap()
                            .snapshots,
                    );
                }
            }
        }
        out
    })
}

fn run(snaps: &[Snapshot]) -> Vec<SignalEvent> {
    let mut engine = Engine::new(Params::default());
    let mut out = Vec::new();
    for s in snaps {
        engine.observe_into(s, &mut out);
    }
    out
}

fn baseline() -> &'static [SignalEvent] {
    static BASE: OnceLock<Vec<SignalEvent>> = OnceLock::new();
    BASE.get_or_init(|| {
        let ev = run(snapshots());
        assert!(
            ev.len() >= 5,
            "the material has events to disturb: {}",
            ev.len()
        );
        ev
    })
}

fn opt(r: std::ops::Range<f64>) -> impl Strategy<Value = Option<f64>> {
    proptest::option::weighted(0.85, r)
}

fn features() -> impl Strategy<Value = Features> {
    (
        (
            opt(0.0..5000.0),
            opt(-99.0..1e4),
            opt(-99.0..1e4),
            opt(-99.0..1e5),
            opt(-99.0..1e6),
        ),
        (
            opt(0.0..1e7),
            opt(0.0..1e8),
            proptest::option::of(0u64..5000),
            proptest::option::of(0u64..5000),
        ),
        (
            opt(0.0..50.0),
            opt(0.0..50.0),
            opt(-10.0..20.0),
            0u32..4,
            opt(0.0..1.0),
            opt(0.0..1.0),
        ),
        (
            opt(0.0..200.0),
            opt(0.0..1.0),
            opt(0.0..20.0),
            opt(0.0..1e9),
            opt(0.0..1.0),
            opt(0.0..1.0),
            opt(0.0..1e12),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (age, p5, p1, p6, p24),
                (v5, liq, b1, s1),
                (r5, r60, z, cascade, bp5, bp1),
                (lvr, ur, skew, liq_ref, lp, dd, fdv, missing),
            )| Features {
                age_min: age,
                price: Some(1.0),
                pc: [p5, p1, p6, p24],
                vol: [
                    v5,
                    v5.map(|v| v * 8.0),
                    v5.map(|v| v * 50.0),
                    v5.map(|v| v * 200.0),
                ],
                buys_m5: b1.map(|b| b / 12),
                sells_m5: s1.map(|s| s / 12),
                buys_h1: b1,
                sells_h1: s1,
                count_z_m5: z,
                count_z_h1: z,
                r5,
                r60,
                r6h: r60,
                cascade,
                bp_m5: bp5,
                bp_h1: bp1,
                lvr,
                ur_h1: ur,
                buyer_skew: skew,
                z_vol: z,
                liquidity: liq,
                liquidity_ref: liq_ref,
                depth: liq,
                lp_removed: lp,
                liq_usd_proxy: false,
                dd30: dd,
                fdv,
                optional_missing: missing,
                ..Features::default()
            },
        )
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Bullish),
        Just(Direction::Bearish),
        Just(Direction::Neutral)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn score_is_in_0_100(f in features(), kind in 0usize..9, dir in direction(), consecutive in 0u32..10) {
        let cfg = Params::default();
        let (flags, penalty) = kinds::risk(&f, &cfg);
        let (score, e, q, _) = kinds::score(Kind::ALL[kind], dir, &f, &cfg, consecutive, flags, penalty);
        prop_assert!(score <= 100);
        prop_assert!((0.0..=1.0).contains(&e), "E {e}");
        prop_assert!((0.0..=1.0).contains(&q), "Q {q}");
    }

    #[test]
    fn raising_p_h1_never_lowers_a_momentum_score(f in features(), bump in 0.0f64..500.0) {
        let cfg = Params::default();
        let Some(p1) = f.pc[1] else { return Ok(()) };
        for (kind, sign) in [(Kind::MomentumUp, 1.0), (Kind::MomentumDown, -1.0)] {
            let mut lo = f;
            lo.pc[1] = Some(sign * p1.abs());
            let mut hi = lo;
            hi.pc[1] = Some(sign * (p1.abs() + bump));
            // The flags are held equal: the property is about the excess, not the risk.
            let s = |x: &Features| kinds::score(kind, kinds::kind_direction(kind), x, &cfg, 2, RiskFlags::default(), 0).0;
            prop_assert!(s(&hi) >= s(&lo), "{kind:?}: {} < {}", s(&hi), s(&lo));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_duplicated_snapshot_never_changes_the_output(i in any::<prop::sample::Index>(), gap in any::<prop::sample::Index>(), later_ms in 0i64..30_000) {
        let snaps = snapshots();
        let i = i.index(snaps.len());
        let key = &snaps[i].key;
        // The duplicate goes anywhere before the pair's next snapshot (a re-delivered response).
        let next = snaps[i + 1..].iter().position(|s| &s.key == key).map_or(snaps.len(), |p| i + 1 + p);
        let at = i + 1 + gap.index(next - i);
        let mut dup = snaps[i].clone();
        dup.observed_at_ms += later_ms.min(snaps.get(next).map_or(i64::MAX, |s| s.observed_at_ms) - dup.observed_at_ms);
        let mut disturbed = snaps.to_vec();
        disturbed.insert(at, dup);
        prop_assert_eq!(to_lines(&run(&disturbed)), to_lines(baseline()));
    }

    #[test]
    fn a_pairs_events_do_not_depend_on_interleaving(seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let snaps = snapshots();
        // A random interleaving that keeps each pair's own order.
        let mut queues: std::collections::BTreeMap<&PairKey, std::collections::VecDeque<&Snapshot>> = Default::default();
        for s in snaps {
            queues.entry(&s.key).or_default().push_back(s);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut shuffled = Vec::with_capacity(snaps.len());
        while !queues.is_empty() {
            let keys: Vec<_> = queues.keys().copied().collect();
            let k = keys[rng.gen_range(0..keys.len())];
            let q = queues.get_mut(k).unwrap();
            shuffled.push(q.pop_front().unwrap().clone());
            if q.is_empty() {
                queues.remove(k);
            }
        }
        let per_pair = |ev: &[SignalEvent]| {
            let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for e in ev {
                m.entry(e.pair_address.clone()).or_default().push(serde_json::to_string(e).unwrap());
            }
            m
        };
        prop_assert_eq!(per_pair(&run(&shuffled)), per_pair(baseline()));
    }

    /// Liquidity that falls by random steps (some far past the drain and rug thresholds), with
    /// a random set of snapshots where upstream did not say: a drain or rug warning is only
    /// ever raised on a snapshot that has liquidity, and the same steps with nothing missing
    /// raise what the thresholds say (so the property is not vacuous; see also
    /// `drops_in_the_generator_reach_the_thresholds`).
    #[test]
    fn missing_liquidity_never_raises_a_drain_or_rug(
        steps in proptest::collection::vec((0.0f64..0.9, any::<bool>()), 5..40),
    ) {
        let (with_gaps, gaps) = liquidity_run(&steps, true);
        for e in &with_gaps {
            if matches!(e.kind, Kind::LiquidityDrain | Kind::RugWarning) && e.phase == dexpulse::model::Phase::Opened {
                prop_assert!(!gaps.contains(&e.observed_at_ms), "raised on a snapshot without liquidity: {e:?}");
                prop_assert!(e.metrics.liquidity_usd.is_some());
            }
        }
        let (full, _) = liquidity_run(&steps, false);
        // Without gaps, a fall of 60 % or more from the pool's 30-minute high is a rug.
        let mut level: f64 = 1.0;
        let mut high: f64 = 1.0;
        let mut expect_rug = false;
        for (i, (drop, _)) in steps.iter().enumerate() {
            // As `liquidity_run` does: the first snapshot is the pool before any drop.
            if i > 0 {
                level *= 1.0 - drop;
            }
            high = high.max(level);
            expect_rug |= i > 0 && level <= 0.4 * high && i < 30;
        }
        if expect_rug {
            prop_assert!(full.iter().any(|e| e.kind == Kind::RugWarning), "{full:?}");
        }
    }
}

/// A constant-product pool whose reserves (and USD liquidity) fall by the given fractions, one
/// snapshot a minute; with `gaps`, the snapshots marked `true` say nothing about liquidity.
/// Returns the events and the times of the snapshots without liquidity.
fn liquidity_run(steps: &[(f64, bool)], gaps: bool) -> (Vec<SignalEvent>, Vec<i64>) {
    let base = snapshots()
        .iter()
        .find(|s| s.key.address == "simlpwithdrawal00")
        .unwrap()
        .clone();
    let mut engine = Engine::new(Params::default());
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let mut level = 1.0;
    for (i, (drop, gap)) in steps.iter().enumerate() {
        if i > 0 {
            level *= 1.0 - drop;
        }
        let mut s = base.clone();
        s.observed_at_ms += i as i64 * 60_000;
        s.volume_usd.m5 = s.volume_usd.m5.map(|v| v + i as f64);
        if gaps && *gap && i > 0 {
            s.liquidity_usd = None;
            s.liquidity_base = None;
            s.liquidity_quote = None;
            missing.push(s.observed_at_ms);
        } else {
            s.liquidity_usd = s.liquidity_usd.map(|l| l * level);
            s.liquidity_base = s.liquidity_base.map(|b| b * level);
            s.liquidity_quote = s.liquidity_quote.map(|q| q * level);
        }
        engine.observe_into(&s, &mut out);
    }
    (out, missing)
}

#[test]
fn drops_in_the_generator_reach_the_thresholds() {
    // The property's material can raise both warnings when liquidity is known ...
    let (full, _) = liquidity_run(&[(0.0, false), (0.3, false), (0.0, false)], false);
    assert!(
        full.iter().any(|e| e.kind == Kind::LiquidityDrain),
        "{full:?}"
    );
    let (full, _) = liquidity_run(&[(0.0, false), (0.8, false)], false);
    assert!(full.iter().any(|e| e.kind == Kind::RugWarning), "{full:?}");
    // ... and not on the snapshot where it is unknown.
    let (gapped, missing) = liquidity_run(&[(0.0, false), (0.8, true), (0.0, true)], true);
    assert_eq!(missing.len(), 2);
    assert!(
        !gapped.iter().any(|e| e.kind == Kind::RugWarning),
        "{gapped:?}"
    );
}
