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
            assert_eq!(v["epoch"], &*r.hub().epoch());
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
