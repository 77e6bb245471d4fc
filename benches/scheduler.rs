//! The scheduler against a rate-enforcing fake DexScreener on 127.0.0.1 (the documented 300
//! requests a minute, 429 beyond, `Retry-After: 1`), with 2,000 tracked pairs and the default
//! live configuration (270 requests a minute, batches of 30). Prints one JSON line: pair
//! refreshes per minute, as a fraction of the theoretical budget (rate × batch), and the 429s.
//!
//!     cargo bench --bench scheduler            # BENCH_SECONDS=60 by default
//!
//! A benchmark, not a test: it runs in real time and asserts nothing.

#[path = "../tests/it/upstream.rs"]
mod upstream;

use std::time::{Duration, Instant};

use dexpulse::app::settings::{Config, RawConfig, SourceKind};
use upstream::{Limit, Upstream};

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let pairs: usize = std::env::var("BENCH_PAIRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let up = Upstream::start().await;
    let template = up.with(|i| i.pairs.values().next().unwrap()[0].clone());
    up.with(|i| {
        i.synthesize = Some(template);
        i.limits.insert(
            "pairs",
            Limit {
                per_minute: 300,
                retry_after_s: Some(1),
            },
        );
    });
    let mut cfg = RawConfig::default();
    cfg.source.kind = SourceKind::Live;
    let live = &mut cfg.source.live;
    live.dexscreener.base_url = up.url();
    live.geckoterminal.base_url = up.url();
    live.discovery = false;
    live.pairs = (0..pairs).map(|i| format!("solana:BENCH{i:05}")).collect();
    let rate = live.dexscreener.rate_per_minute;
    let batch = live.dexscreener.pairs_batch;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = Config::parse(&cfg).unwrap();
    let running = dexpulse::app::start(cfg, listener, dexpulse::app::Options::default()).unwrap();

    let start = Instant::now();
    let (r0, l0) = up.with(|i| (i.pair_refreshes, i.served.get("429").copied().unwrap_or(0)));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let (r1, l1) = up.with(|i| (i.pair_refreshes, i.served.get("429").copied().unwrap_or(0)));
    let per_min = (r1 - r0) as f64 * 60.0 / elapsed;
    let budget = rate * batch as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "scheduler",
            "pairs": pairs,
            "seconds": (elapsed * 10.0).round() / 10.0,
            "configured_rate_per_min": rate,
            "batch": batch,
            "refreshes_per_min": per_min.round(),
            "budget_per_min": budget,
            "fraction_of_budget": (per_min / budget * 1000.0).round() / 1000.0,
            "fraction_of_documented_limit": (per_min / (300.0 * batch as f64) * 1000.0).round() / 1000.0,
            "rate_limited_429": l1 - l0,
        })
    );
    running.shutdown().await.unwrap();
}
