//! The engine through its public inputs (`observe`, `tick`): the worked example of
//! docs/signals.md, and the state machine's rules one by one, on hand-built snapshots.

use dexpulse::model::{
    CloseReason, Direction, Kind, PairKey, Phase, Price, Severity, SignalEvent, Snapshot, Source,
    Token, Windows,
};
use dexpulse::signal::Params;
use dexpulse::signal::{Engine, Verdict};

use crate::support::tx;

const MIN: i64 = 60_000;
const T0: i64 = 1_795_000_000_000;

/// The snapshot of the worked example (docs/signals.md), observed at `t`, pair aged 400 min at T0.
fn example(t: i64) -> Snapshot {
    Snapshot {
        key: PairKey::new("solana", "PairAddrCaseSensitive"),
        source: Source::Dexscreener,
        observed_at_ms: t,
        source_ts_ms: None,
        dex_id: Some("raydium".into()),
        labels: vec![],
        base_token: Token {
            address: "BaseMint".into(),
            symbol: Some("ABC".into()),
        },
        quote_token: Token {
            address: "So11111111111111111111111111111111111111112".into(),
            symbol: Some("SOL".into()),
        },
        price_usd: Price::parse("0.00012345"),
        price_change_pct: Windows {
            m5: Some(6.1),
            h1: Some(18.4),
            h6: Some(22.0),
            h24: Some(40.2),
        },
        volume_usd: Windows {
            m5: Some(18250.0),
            h1: Some(66975.0),
            h6: Some(245433.0),
            h24: Some(900000.0),
        },
        txns: Windows {
            m5: tx(64, 31),
            h1: tx(410, 260),
            h6: tx(1500, 1200),
            h24: tx(5000, 4500),
        },
        liquidity_usd: Some(84000.0),
        liquidity_base: Some(340_000_000.0),
        liquidity_quote: Some(42000.0),
        fdv_usd: Some(1_200_000.0),
        market_cap_usd: None,
        pair_created_at_ms: Some(T0 - 400 * MIN),
        lp_burned: None,
        quote_usd: None,
    }
}

/// The first surge snapshot of the example, a minute before `t`, with a little less volume (a
/// different payload: an identical one would be stale).
fn warm_up(engine: &mut Engine, t: i64) {
    let mut first = example(t - 61_000);
    first.volume_usd.m5 = Some(17000.0);
    first.volume_usd.h1 = Some(65725.0);
    first.price_change_pct.m5 = Some(5.9);
    assert!(
        engine.observe(&first).is_empty(),
        "an entry needs confirmation"
    );
}

fn find(events: &[SignalEvent], kind: Kind, phase: Phase) -> Option<&SignalEvent> {
    events.iter().find(|e| e.kind == kind && e.phase == phase)
}

#[test]
fn worked_example_scores_54() {
    let mut engine = Engine::new(Params::default());
    warm_up(&mut engine, T0);
    let events = engine.observe(&example(T0));
    let e = find(&events, Kind::VolumeSurge, Phase::Opened).expect("volume_surge opened");
    assert_eq!(e.direction, Direction::Bullish);
    assert_eq!(e.score, 54);
    assert_eq!(e.severity, Severity::Medium);
    assert_eq!(
        (e.components.e, e.components.q, e.components.p),
        (0.436, 0.8175, 5)
    );
    assert_eq!(e.risk_flags, ["lvr_elevated"]);
    let m = &e.metrics;
    assert_eq!(m.r5, Some(4.1201));
    assert_eq!(m.r60, Some(1.8765));
    assert_eq!(m.bp_h1, Some(0.6103));
    assert_eq!(m.bp_m5, Some(0.6571));
    assert_eq!(m.lvr, Some(10.7143));
    assert_eq!(m.age_minutes, Some(400));
    assert_eq!(m.price_usd.as_deref(), Some("0.00012345"));
    assert_eq!(m.market_cap_usd, None, "unknown stays null");
    assert_eq!(e.reasons[0], "R5 4.12 >= 3.00");
    assert_eq!(e.reasons[1], "V_m5 18250 >= 5000");
    assert_eq!(e.reasons[2], "P_m5 +6.10% with BP_m5 0.66");
    assert_eq!(e.schema, "dexpulse.event/v1");
    assert_eq!(e.pair_address, "PairAddrCaseSensitive");
    assert_eq!(e.observed_at, "2026-11-18T11:06:40.000Z");
    assert_eq!(e.episode_started_at, e.observed_at);
    assert_eq!(e.event_id.len(), 32);
    assert_ne!(e.event_id, e.episode_id);
    assert_eq!(e.engine.params_hash, Params::default().hash());

    // The example also qualifies as momentum (P_h1 18.4, P_m5 6.1): same instant, own episode.
    let mo = find(&events, Kind::MomentumUp, Phase::Opened).expect("momentum_up opened");
    assert_ne!(mo.episode_id, e.episode_id);
}

#[test]
fn ids_are_deterministic_and_the_json_has_the_schema_order() {
    let run = || {
        let mut engine = Engine::new(Params::default());
        warm_up(&mut engine, T0);
        engine.observe(&example(T0))
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    let json = serde_json::to_string(&a[0]).unwrap();
    let keys = [
        "\"schema\"",
        "\"event_id\"",
        "\"episode_id\"",
        "\"phase\"",
        "\"kind\"",
        "\"direction\"",
        "\"score\"",
        "\"severity\"",
        "\"confidence\"",
        "\"observed_at\"",
        "\"episode_started_at\"",
        "\"chain\"",
        "\"pair_address\"",
        "\"dex_id\"",
        "\"base_token\"",
        "\"quote_token\"",
        "\"source\"",
        "\"snapshot_fingerprint\"",
        "\"metrics\"",
        "\"components\"",
        "\"risk_flags\"",
        "\"reasons\"",
        "\"related_pairs\"",
        "\"engine\"",
    ];
    let pos: Vec<usize> = keys
        .iter()
        .map(|k| json.find(k).unwrap_or_else(|| panic!("{k}")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{json}");
    assert!(json.contains("\"confidence\":null"));
    assert!(!json.contains("observed_at_ms"));
}

#[test]
fn confirmation_needs_two_fresh_snapshots_a_minute_apart() {
    let mut engine = Engine::new(Params::default());
    let mut a = example(T0);
    a.volume_usd.m5 = Some(18000.0);
    assert!(engine.observe(&a).is_empty());
    // 30 s later: holds again but the span is too short.
    assert!(engine.observe(&example(T0 + 30_000)).is_empty());
    let mut c = example(T0 + 60_000);
    c.volume_usd.m5 = Some(18100.0);
    let events = engine.observe(&c);
    assert!(
        find(&events, Kind::VolumeSurge, Phase::Opened).is_some(),
        "{events:?}"
    );
}

#[test]
fn a_duplicate_snapshot_is_stale_and_changes_nothing() {
    let mut engine = Engine::new(Params::default());
    assert_eq!(
        engine.observe_into(&example(T0), &mut Vec::new()),
        Verdict::Fresh
    );
    // Same payload, later receive time: stale, even 10 minutes on.
    let mut out = Vec::new();
    assert_eq!(
        engine.observe_into(&example(T0 + 10 * MIN), &mut out),
        Verdict::Stale
    );
    assert!(out.is_empty());
    let stats = engine.stats();
    assert_eq!((stats.fresh, stats.stale), (1, 1));
    // The stale one did not count as a confirmation either.
    let mut b = example(T0 + 11 * MIN);
    b.volume_usd.m5 = Some(18300.0);
    assert!(engine.observe(&b).is_empty());
}

#[test]
fn data_gap_closes_open_episodes_at_the_deadline_then_cools_down() {
    let mut engine = Engine::new(Params::default());
    warm_up(&mut engine, T0 + 1);
    let opened = engine.observe(&example(T0 + 1));
    assert!(find(&opened, Kind::VolumeSurge, Phase::Opened).is_some());
    assert!(engine.tick(T0 + 14 * MIN).is_empty());
    let closed = engine.tick(T0 + 20 * MIN);
    let gap = find(&closed, Kind::VolumeSurge, Phase::Closed).expect("data_gap close");
    assert_eq!(gap.close_reason, Some(CloseReason::DataGap));
    assert_eq!(
        gap.observed_at_ms,
        T0 + 1 + 15 * MIN,
        "closed at the deadline, not the tick"
    );
    assert_eq!(
        gap.score,
        find(&opened, Kind::VolumeSurge, Phase::Opened)
            .unwrap()
            .score
    );
    assert!(closed.iter().all(|e| e.phase == Phase::Closed));
    assert!(engine.tick(T0 + 30 * MIN).is_empty(), "closed once");
    // Within the 30 min cooldown the same score does not reopen.
    let mut again = example(T0 + 21 * MIN);
    again.volume_usd.m5 = Some(18260.0);
    engine.observe(&again);
    let mut again2 = example(T0 + 22 * MIN);
    again2.volume_usd.m5 = Some(18270.0);
    let ev = engine.observe(&again2);
    assert!(
        find(&ev, Kind::VolumeSurge, Phase::Opened).is_none(),
        "{ev:?}"
    );
}

#[test]
fn a_snapshot_arriving_after_a_gap_closes_first_with_the_old_metrics() {
    let mut engine = Engine::new(Params::default());
    warm_up(&mut engine, T0 + 1);
    engine.observe(&example(T0 + 1));
    let mut late = example(T0 + 40 * MIN);
    late.volume_usd.m5 = Some(100.0);
    let ev = engine.observe(&late);
    let gap = find(&ev, Kind::VolumeSurge, Phase::Closed).expect("closed");
    assert_eq!(gap.close_reason, Some(CloseReason::DataGap));
    assert_eq!(
        gap.metrics.volume_usd.m5,
        Some(18250.0),
        "the metrics of the last fresh snapshot"
    );
}

fn pool(t: i64, base: f64, quote: f64, liquidity: Option<f64>) -> Snapshot {
    let mut s = example(t);
    s.price_change_pct = Windows {
        m5: Some(0.1),
        h1: Some(0.2),
        h6: Some(0.3),
        h24: Some(0.4),
    };
    s.volume_usd = Windows {
        m5: Some(1000.0 + (t - T0) as f64 / 1e6),
        h1: Some(12000.0),
        h6: Some(72000.0),
        h24: Some(288000.0),
    };
    s.liquidity_base = Some(base);
    s.liquidity_quote = Some(quote);
    s.liquidity_usd = liquidity;
    s
}

#[test]
fn lp_withdrawal_is_one_rug_warning_and_no_drain() {
    let mut engine = Engine::new(Params::default());
    assert!(engine
        .observe(&pool(T0, 1e9, 100_000.0, Some(200_000.0)))
        .is_empty());
    let ev = engine.observe(&pool(T0 + MIN, 2e8, 20_000.0, Some(40_000.0)));
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        (ev[0].kind, ev[0].phase, ev[0].severity),
        (Kind::RugWarning, Phase::Opened, Severity::Critical)
    );
    assert_eq!(ev[0].metrics.lp_removed, Some(0.8));
    // The pair's stance turns bearish with it, for the rug's quiet.
    assert_eq!(
        (ev[1].kind, ev[1].direction, ev[1].score),
        (Kind::Stance, Direction::Bearish, ev[0].score)
    );
    // Quiet afterwards: one warning per pair per 24 h, and no drain on the same evidence.
    for i in 2..30 {
        let ev = engine.observe(&pool(T0 + i * MIN, 2e8, 20_000.0, Some(40_000.0)));
        assert!(ev.is_empty(), "{ev:?}");
    }
}

#[test]
fn missing_liquidity_never_warns() {
    let mut engine = Engine::new(Params::default());
    engine.observe(&pool(T0, 1e9, 100_000.0, Some(200_000.0)));
    // Liquidity vanishes from the response (DexScreener omits the key): unknown, not drained.
    let mut s = pool(T0 + MIN, 1e9, 100_000.0, None);
    s.liquidity_base = None;
    s.liquidity_quote = None;
    assert!(engine.observe(&s).is_empty());
}

#[test]
fn a_partial_drain_opens_liquidity_drain_and_it_closes_when_the_pool_holds() {
    let mut engine = Engine::new(Params::default());
    engine.observe(&pool(T0, 1e9, 100_000.0, Some(200_000.0)));
    let ev = engine.observe(&pool(T0 + MIN, 6e8, 60_000.0, Some(120_000.0)));
    let e = find(&ev, Kind::LiquidityDrain, Phase::Opened).expect("drain");
    assert_eq!(e.metrics.lp_removed, Some(0.4));
    assert_eq!(e.direction, Direction::Bearish);
    let mut closed = None;
    for i in 2..40 {
        let ev = engine.observe(&pool(T0 + i * MIN, 6e8, 60_000.0, Some(120_000.0)));
        if let Some(c) = find(&ev, Kind::LiquidityDrain, Phase::Closed) {
            closed = Some((i, c.close_reason));
            break;
        }
    }
    assert_eq!(
        closed,
        Some((17, Some(CloseReason::ExitCondition))),
        "15 min after the drain stopped"
    );
}

#[test]
fn an_outlier_price_waits_for_confirmation() {
    let mut engine = Engine::new(Params::default());
    engine.observe(&pool(T0, 1e9, 100_000.0, Some(200_000.0)));
    let mut spike = pool(T0 + MIN, 1e9, 100_000.0, Some(200_000.0));
    spike.price_usd = Price::parse("0.0061725");
    spike.price_change_pct.m5 = Some(4900.0);
    let mut out = Vec::new();
    assert_eq!(engine.observe_into(&spike, &mut out), Verdict::Suspect);
    assert!(out.is_empty());
    // The next snapshot is back to normal: the outlier is dropped, nothing happened.
    assert_eq!(
        engine.observe_into(
            &pool(T0 + 2 * MIN, 1e9, 100_000.0, Some(200_000.0)),
            &mut out
        ),
        Verdict::Fresh
    );
    assert!(out.is_empty());
}

#[test]
fn inconsistent_windows_are_invalid() {
    let mut engine = Engine::new(Params::default());
    let mut s = example(T0);
    s.volume_usd.m5 = Some(70000.0); // more than V_h1
    assert_eq!(
        engine.observe_into(&s, &mut Vec::new()),
        Verdict::Invalid("volume windows not monotonic")
    );
    let mut s = example(T0 + MIN);
    s.price_usd = Price::parse("0");
    assert_eq!(
        engine.observe_into(&s, &mut Vec::new()),
        Verdict::Invalid("price not positive")
    );
    assert_eq!(engine.stats().invalid, 2);
}

#[test]
fn no_bullish_event_for_a_pair_younger_than_an_hour() {
    let mut engine = Engine::new(Params::default());
    let mut events = Vec::new();
    for i in 0..5 {
        let mut s = example(T0 + i * MIN);
        s.pair_created_at_ms = Some(T0 - 30 * MIN);
        s.volume_usd.m5 = Some(18000.0 + i as f64);
        events.extend(engine.observe(&s));
    }
    assert!(
        events.iter().all(|e| e.direction != Direction::Bullish),
        "{events:?}"
    );
}

#[test]
fn a_pair_keeps_its_first_source() {
    let mut engine = Engine::new(Params::default());
    assert_eq!(
        engine.observe_into(&example(T0), &mut Vec::new()),
        Verdict::Fresh
    );
    let mut other = example(T0 + MIN);
    other.source = Source::Geckoterminal;
    other.volume_usd.m5 = Some(1.0);
    assert_eq!(
        engine.observe_into(&other, &mut Vec::new()),
        Verdict::OtherSource
    );
    assert_eq!(engine.stats().other_source, 1);
    assert_eq!(
        engine.latest(&example(T0).key).unwrap().0.source,
        Source::Dexscreener
    );
}

#[test]
fn an_idle_pair_is_forgotten_unless_something_is_open_or_cooling_down() {
    let mut raw = dexpulse::signal::RawParams::default();
    raw.fsm.forget_idle_hours = 2.0;
    let mut engine = Engine::new(Params::parse(&raw).unwrap());
    const H: i64 = 60 * MIN;
    // Quiet: seen once, then never again.
    let mut quiet = example(T0);
    quiet.key.address = "Quiet".into();
    engine.observe(&quiet);
    // Rugged: one rug warning, so a 24 h cooldown.
    assert_eq!(
        engine
            .observe(&pool(T0, 1e9, 100_000.0, Some(200_000.0)))
            .len(),
        0
    );
    let rug = engine.observe(&pool(T0 + MIN, 2e8, 20_000.0, Some(40_000.0)));
    assert_eq!(rug[0].kind, Kind::RugWarning);
    let rugged = rug[0].pair_address.clone();
    // Polled: still observed every 30 min, though nothing changes.
    let mut polled = example(T0);
    polled.key.address = "Polled".into();
    for i in 0..=6 {
        polled.observed_at_ms = T0 + i * 30 * MIN;
        engine.observe(&polled);
    }
    assert_eq!(engine.pairs_tracked(), 3);

    engine.tick(T0 + 3 * H);
    let gone = engine.take_forgotten();
    assert_eq!(
        gone,
        [PairKey::new("solana", "Quiet")],
        "idle 3 h, nothing open"
    );
    assert_eq!(
        engine.pairs_tracked(),
        2,
        "the rugged pair cools down, the polled one is seen"
    );
    assert!(engine.take_forgotten().is_empty(), "taken once");

    engine.tick(T0 + 26 * H);
    assert_eq!(
        engine
            .take_forgotten()
            .iter()
            .map(|k| k.address.as_str())
            .collect::<Vec<_>>(),
        [rugged.as_str(), "Polled"],
        "after the cooldown, and once polling stopped"
    );
    assert_eq!(engine.stats().forgotten, 3);
    // A forgotten pair that comes back starts afresh.
    quiet.observed_at_ms = T0 + 27 * H;
    assert_eq!(engine.observe_into(&quiet, &mut Vec::new()), Verdict::Fresh);
    assert_eq!(engine.pairs_tracked(), 1);
}

/// A pair quoted in WETH (docs/signals.md, "A pair moves with its quote"): for three hours its
/// pool jumps 2.5 % every 17 minutes, so against its own volatility a steady 2 % rise of WETH is nothing; against
/// WETH's own, it is a move. `ratio_drift` moves the pool against its quote during the rise.
fn quoted_in_weth(
    address: &str,
    quote_rise: f64,
    ratio_drift: f64,
    junk_at: &[i64],
) -> Vec<SignalEvent> {
    let mut engine = Engine::new(Params::default());
    let mut events = Vec::new();
    for m in -180..=20i64 {
        let t = T0 + m * MIN;
        let rising = (m - 5).clamp(0, 15) as f64;
        // WETH in USD: a wobble of a few hundredths of a percent, then 0.15 % a minute.
        let quote = 2000.0 * (0.0003 * (m as f64 * 1.3).sin() + quote_rise * rising).exp();
        // The pool's own jumps, until the minute before the rise's window.
        let jumps = if m < 0 && m.div_euclid(17) % 2 != 0 {
            0.025
        } else {
            0.0
        };
        let ratio = 0.001 * (jumps + ratio_drift * rising).exp();
        let mut s = pool(t, 340_000_000.0, 42_000.0, Some(84_000.0));
        s.key = PairKey::new("ethereum", address);
        s.base_token.address = format!("{address}-token");
        s.price_usd = Price::parse(&format!("{:.12}", ratio * quote));
        s.quote_usd = Some(quote);
        if junk_at.contains(&m) {
            // One response whose `priceNative` is off by a third: its USD price is right.
            s.quote_usd = Some(quote * 1.3);
        }
        s.pair_created_at_ms = Some(T0 - 3000 * MIN);
        events.extend(engine.observe(&s));
    }
    events
}

#[test]
fn a_pair_rises_with_its_quote_and_says_so_and_not_when_its_pool_fell_as_much() {
    let events = quoted_in_weth("0xweth-quoted", 0.0015, 0.0, &[]);
    let up = find(&events, Kind::MomentumUp, Phase::Opened).expect("momentum_up");
    assert!(up.reasons[0].starts_with("the quote token +"), "{up:?}");
    assert!(up.risk_flags.iter().any(|f| f == "quote_move"), "{up:?}");
    // Within the rise (it began at +5 minutes), not before it.
    assert!(up.observed_at_ms > T0 + 5 * MIN, "{up:?}");
    // Nothing of the kind came from the pool's own jumps before the rise.
    assert!(
        events
            .iter()
            .all(|e| !e.kind.as_str().starts_with("momentum") || e.observed_at_ms > T0),
        "{events:?}"
    );
    // The same WETH rise while the pool fell as much: the pair's USD price did not rise.
    let flat = quoted_in_weth("0xweth-offset", 0.0015, -0.0015, &[]);
    assert!(
        find(&flat, Kind::MomentumUp, Phase::Opened).is_none(),
        "{flat:?}"
    );
}

#[test]
fn junk_native_prices_are_no_quote_move() {
    // The pool rises 1.4 % in USD on its own (nothing against its jumpy σ) while one response,
    // then two in a row, say WETH leapt 30 %. A leap in one step is the move's largest step,
    // left out as for the pair's own price: no quote move is read from it.
    for junk in [&[12][..], &[12, 13]] {
        let events = quoted_in_weth("0xjunk-native", 0.0, 0.002, junk);
        assert!(
            events
                .iter()
                .all(|e| !e.kind.as_str().starts_with("momentum")),
            "{junk:?}: {events:?}"
        );
    }
}
