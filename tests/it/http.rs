//! The HTTP API on the same port: /v1/pairs, /v1/signals (filters, limits, errors), /healthz,
//! /readyz, /metrics, and API keys on /v1/*.

use dexpulse::model::{Direction, Kind};
use serde_json::Value;

use crate::server::*;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn signals_from_the_retained_ring_with_filters() {
    let r = start(test_config()).await;
    let shapes = [
        ("solana", Kind::VolumeSurge, Direction::Bullish, 70),
        ("base", Kind::MomentumUp, Direction::Bullish, 50),
        ("solana", Kind::SellPressure, Direction::Bearish, 90),
    ];
    r.hub().publish(&events(3, |i, e| {
        let (c, k, d, s) = shapes[i];
        set(e, c, k, d, s);
    }));
    let check = |path: &'static str, want: &'static [u64]| {
        let r = &r;
        async move {
            let (status, body) = http_get(r, path, &[]).await;
            assert_eq!(status, 200, "{path}: {body}");
            let v = json(&body);
            let got: Vec<u64> = v["signals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(got, want, "{path}");
            assert_eq!(v["head_seq"], 3);
            assert_eq!(v["epoch"], r.hub().epoch().as_str());
        }
    };
    check("/v1/signals", &[1, 2, 3]).await;
    check("/v1/signals?since=1", &[2, 3]).await;
    check("/v1/signals?limit=2", &[1, 2]).await;
    check("/v1/signals?chain=solana", &[1, 3]).await;
    check("/v1/signals?kind=momentum_up", &[2]).await;
    check("/v1/signals?direction=bearish", &[3]).await;
    check("/v1/signals?min_score=60&direction=bullish", &[1]).await;
    for bad in [
        "/v1/signals?kind=moon",
        "/v1/signals?limit=5000",
        "/v1/signals?since=-1",
        "/v1/signals?sinse=1",
        "/v1/signals?direction=up",
    ] {
        let (status, body) = http_get(&r, bad, &[]).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(json(&body)["error"]["code"], "bad_request");
    }
    // The messages are the WebSocket frames, byte for byte.
    let (_, body) = http_get(&r, "/v1/signals?limit=1", &[]).await;
    let first = String::from_utf8(r.hub().since(0, 1).frames[0].text.to_vec()).unwrap();
    assert!(body.contains(&first));
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn pairs_health_readiness_and_metrics() {
    let r = start(test_config()).await;
    let (status, body) = http_get(&r, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(&r, "/readyz", &[]).await;
    assert_eq!(status, 503, "no source in this test server: {body}");
    assert_eq!(json(&body)["ready"], false);
    let (status, body) = http_get(&r, "/v1/pairs", &[]).await;
    assert_eq!((status, json(&body)["count"].as_u64()), (200, Some(0)));

    let mut engine = dexpulse::signal::Engine::new(dexpulse::signal::Params::default());
    let mut snap = dexpulse::source::simulator::example_snapshot();
    snap.market_cap_usd = None;
    engine.observe(&snap);
    let (s, m, open) = engine.pair_view(&snap.key).unwrap();
    r.hub().pairs().update(s, m, open);
    let (_, body) = http_get(&r, "/v1/pairs", &[]).await;
    let v = json(&body);
    assert_eq!(v["count"], 1);
    let p = &v["pairs"][0];
    assert_eq!(p["pair_address"], "simexample00");
    assert_eq!(p["market_cap_usd"], Value::Null, "unknown is null, never 0");
    assert_eq!(p["liquidity_usd"], 500000.0);

    r.hub().publish(&plain(2));
    let (status, text) = http_get(&r, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("dexpulse_sessions_connected 0"), "{text}");
    assert!(
        text.contains("dexpulse_publish_to_send_seconds_bucket"),
        "{text}"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_keys_guard_the_data_routes_not_health() {
    let mut cfg = test_config();
    cfg.auth.keys = vec![dexpulse::server::auth::RawKey {
        key: "secret-key-1".into(),
        max_connections: 5,
    }];
    let r = start(cfg).await;
    assert_eq!(http_get(&r, "/v1/pairs", &[]).await.0, 401);
    assert_eq!(
        http_get(&r, "/v1/signals?token=nope-nope", &[]).await.0,
        401
    );
    assert_eq!(
        http_get(&r, "/v1/signals?token=secret-key-1", &[]).await.0,
        200
    );
    assert_eq!(
        http_get(&r, "/v1/pairs", &[("Authorization", "Bearer secret-key-1")])
            .await
            .0,
        200
    );
    assert_eq!(http_get(&r, "/healthz", &[]).await.0, 200);
    assert_eq!(http_get(&r, "/metrics", &[]).await.0, 200);
    r.shutdown().await.unwrap();
}

/// A pair state in the hub: chain, address, DEX, liquidity, 5-minute change, open kinds.
fn put_pair(
    r: &dexpulse::app::Running,
    chain: &str,
    address: &str,
    dex: &str,
    liquidity: Option<f64>,
    m5: f64,
    open: &[Kind],
) {
    let mut s = dexpulse::source::simulator::example_snapshot();
    s.key = dexpulse::model::PairKey::new(chain, address);
    s.dex_id = Some(dex.into());
    s.liquidity_usd = liquidity;
    s.price_change_pct.m5 = Some(m5);
    let mut kinds = dexpulse::model::KindSet::default();
    for k in open {
        kinds.insert(*k);
    }
    r.hub()
        .pairs()
        .update(&s, dexpulse::model::PairMetrics::default(), kinds);
}

#[tokio::test]
async fn pairs_are_filtered_sorted_and_limited() {
    let r = start(test_config()).await;
    put_pair(&r, "solana", "a", "raydium", Some(50_000.0), 3.0, &[]);
    put_pair(
        &r,
        "solana",
        "b",
        "orca",
        Some(5_000.0),
        -8.0,
        &[Kind::SellPressure],
    );
    put_pair(
        &r,
        "base",
        "c",
        "aerodrome",
        None,
        12.0,
        &[Kind::MomentumUp],
    );
    put_pair(
        &r,
        "solana",
        "d",
        "raydium",
        Some(900_000.0),
        0.5,
        &[Kind::MomentumUp, Kind::VolumeSurge],
    );
    let check = |path: &'static str, want: &'static [&'static str], matched: u64| {
        let r = &r;
        async move {
            let (status, body) = http_get(r, path, &[]).await;
            assert_eq!(status, 200, "{path}: {body}");
            let v = json(&body);
            let got: Vec<&str> = v["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["pair_address"].as_str().unwrap())
                .collect();
            assert_eq!(got, want, "{path}");
            assert_eq!(v["count"], want.len(), "{path}");
            assert_eq!(v["matched"], matched, "{path}");
        }
    };
    check("/v1/pairs", &["c", "a", "b", "d"], 4).await; // by key: base:c first
    check("/v1/pairs?chain=solana", &["a", "b", "d"], 3).await;
    check("/v1/pairs?dex=raydium", &["a", "d"], 2).await;
    check("/v1/pairs?min_liquidity=10000", &["a", "d"], 2).await;
    check("/v1/pairs?open=true", &["c", "b", "d"], 3).await;
    check("/v1/pairs?open=false", &["a"], 1).await;
    check("/v1/pairs?open=momentum_up", &["c", "d"], 2).await;
    check("/v1/pairs?sort=liquidity", &["d", "a", "b", "c"], 4).await; // unknown last
    check(
        "/v1/pairs?sort=liquidity&order=asc",
        &["b", "a", "d", "c"],
        4,
    )
    .await;
    check("/v1/pairs?sort=change_m5&limit=2", &["c", "a"], 4).await;
    check("/v1/pairs?sort=open_signals&limit=1", &["d"], 4).await;
    check(
        "/v1/pairs?chain=solana&open=true&sort=liquidity",
        &["d", "b"],
        2,
    )
    .await;
    check("/v1/pairs?chain=eth", &[], 0).await;
    for bad in [
        "/v1/pairs?chian=solana",
        "/v1/pairs?min_liquidity=-1",
        "/v1/pairs?min_liquidity=lots",
        "/v1/pairs?open=moon",
        "/v1/pairs?sort=hype",
        "/v1/pairs?order=up",
        "/v1/pairs?limit=0",
        "/v1/pairs?limit=5001",
        "/v1/pairs?chain=",
    ] {
        let (status, body) = http_get(&r, bad, &[]).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(json(&body)["error"]["code"], "bad_request", "{bad}");
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pair_comes_with_its_recent_history_bounded() {
    use dexpulse::hub::pairs::{HISTORY_POINTS, HISTORY_SPACING_MS};
    let r = start(test_config()).await;
    let mut s = dexpulse::source::simulator::example_snapshot();
    let t0 = s.observed_at_ms;
    // Every 10 s: one point per 20 s is kept (15 s apart at least).
    for i in 0..100i64 {
        s.observed_at_ms = t0 + i * 10_000;
        s.price_usd = dexpulse::model::Price::parse(&format!("{}", 1.0 + i as f64 / 100.0));
        r.hub().pairs().update(
            &s,
            dexpulse::model::PairMetrics::default(),
            dexpulse::model::KindSet::default(),
        );
    }
    let path = format!("/v1/pairs/{}/{}", s.key.chain, s.key.address);
    let (status, body) = http_get(&r, &path, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["pair"]["pair_address"], s.key.address.as_str());
    assert_eq!(v["pair"]["price_usd"], "1.99");
    let h = v["history"].as_array().unwrap();
    assert_eq!(h.len(), 50);
    assert_eq!(h[0]["t"], t0);
    assert_eq!(h[1]["t"], t0 + 20_000);
    assert!(h
        .windows(2)
        .all(|w| w[1]["t"].as_i64().unwrap() - w[0]["t"].as_i64().unwrap() >= HISTORY_SPACING_MS));
    assert_eq!(h[49]["price_usd"], 1.98);
    assert_eq!(h[0]["liquidity_usd"], 500000.0);
    // Long runs keep only the newest points.
    for i in 100..2000i64 {
        s.observed_at_ms = t0 + i * 20_000;
        r.hub().pairs().update(
            &s,
            dexpulse::model::PairMetrics::default(),
            dexpulse::model::KindSet::default(),
        );
    }
    let v = json(&http_get(&r, &path, &[]).await.1);
    let h = v["history"].as_array().unwrap();
    assert_eq!(h.len(), HISTORY_POINTS);
    assert_eq!(h[HISTORY_POINTS - 1]["t"], t0 + 1999 * 20_000);

    let (status, body) = http_get(&r, "/v1/pairs/solana/nothing-here", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"]["code"], "unknown_pair");
    let (status, body) = http_get(&r, &format!("{path}?window=1h"), &[]).await;
    assert_eq!(status, 400, "{body}");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors_and_metrics_say_their_format() {
    let r = start(test_config()).await;
    for (method, path, status, code) in [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/v1/pairs/solana", 404, "not_found"),
        ("POST", "/v1/pairs", 405, "method_not_allowed"),
        ("DELETE", "/v1/signals", 405, "method_not_allowed"),
        ("PUT", "/metrics", 405, "method_not_allowed"),
    ] {
        let (got, head, body) = http_request(&r, method, path, &[]).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(json(&body)["error"]["code"], code, "{method} {path}");
        if status == 405 {
            assert!(head.contains("allow: get"), "{head}");
        }
    }
    let (status, head, body) = http_request(&r, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends so");
    r.shutdown().await.unwrap();
}
