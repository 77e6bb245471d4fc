//! The live sources against the fake upstream on 127.0.0.1: tracking, values as upstream gave
//! them (unknown stays null), events the data implies reaching a WebSocket client, rate limits
//! (429 with and without Retry-After), faults of every kind, batch fallback, recording.

use std::time::Duration;

use dexpulse::app::settings::{RawConfig as Config, SourceKind};
use dexpulse::app::Running;
use serde_json::{json, Value};

use crate::server::*;
use crate::upstream::{Fault, Limit, Upstream};

const RUG_PAIR: &str = "BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9";
const OTHER: &str = "7hZQ3QmsocJJLuHrw39R9XqZNzt4BmBBNVNSnvJExtqA";
const GT_POOL: &str = "0xc0ce32eee0eb8bf24fa2b00923a78abc5002f91e";

pub(crate) fn live_config(up: &Upstream) -> Config {
    let mut c = test_config();
    c.source.kind = SourceKind::Live;
    let l = &mut c.source.live;
    l.dexscreener.base_url = up.url();
    l.geckoterminal.base_url = up.url();
    l.pairs = vec![format!("solana:{RUG_PAIR}"), format!("solana:{OTHER}")];
    l.gecko_pools = vec![format!("monad-testnet:{GT_POOL}")];
    l.discovery = false;
    l.dexscreener.rate_per_minute = 600.0;
    l.geckoterminal.rate_per_minute = 600.0;
    l.geckoterminal.min_interval_seconds = 0.2;
    l.min_interval_seconds = 0.2;
    l.max_staleness_seconds = 1.0;
    l.tick_seconds = 0.1;
    l.timeout_seconds = 0.5;
    l.backoff_base_seconds = 0.05;
    l.backoff_max_seconds = 0.5;
    l.circuit_open_seconds = 0.5;
    c
}

/// Nothing configured: every pair comes from discovery, asked for every second.
fn discovery_config(up: &Upstream) -> Config {
    let mut cfg = live_config(up);
    cfg.source.live.pairs.clear();
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.discovery = true;
    cfg.source.live.discovery_interval_seconds = 1.0;
    cfg.source.live.dexscreener.discovery_rate_per_minute = 600.0;
    cfg
}

async fn start_live(cfg: Config) -> Running {
    start_sourced(cfg).await
}

fn pairs_json(body: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(body).unwrap()["pairs"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn tracked_pairs_show_upstream_values_and_unknown_stays_null() {
    let up = Upstream::start().await;
    let r = start_live(live_config(&up)).await;
    eventually("three pairs polled", || r.hub().pairs().len() >= 3).await;
    let (status, body) = http_get(&r, "/v1/pairs", &[]).await;
    assert_eq!(status, 200);
    let pairs = pairs_json(&body);
    let ds = pairs
        .iter()
        .find(|p| p["pair_address"] == RUG_PAIR)
        .unwrap();
    assert_eq!(ds["source"], "dexscreener");
    assert_eq!(
        ds["price_usd"], "0.9993",
        "the decimal string, as upstream wrote it"
    );
    assert_eq!(ds["liquidity_usd"], 15064095.04);
    assert_eq!(ds["price_change_pct"]["h24"], 0.05);
    assert_eq!(
        ds["price_change_pct"]["m5"],
        Value::Null,
        "upstream left it out: null, never 0"
    );
    assert_eq!(ds["txns"]["h1"], json!({"buys":169,"sells":12}));
    let gt = pairs.iter().find(|p| p["pair_address"] == GT_POOL).unwrap();
    assert_eq!(gt["source"], "geckoterminal");
    assert_eq!(
        gt["market_cap_usd"],
        Value::Null,
        "`market_cap_usd: null` upstream"
    );
    assert_eq!(gt["price_usd"], "0.163828268957235");
    let (_, metrics) = http_get(&r, "/metrics", &[]).await;
    assert!(
        metrics.contains(
            "dexpulse_upstream_requests_total{class=\"dexscreener_pairs\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("dexpulse_watchlist_pairs 3"), "{metrics}");
    assert!(metrics.contains("dexpulse_pair_staleness_seconds_count"));
    assert_eq!(http_get(&r, "/readyz", &[]).await.0, 200);
    r.shutdown().await.unwrap();
}

/// The recorded pair is a concentrated-liquidity pool: with no pool invariant, its 80 % pull is
/// read from the USD liquidity (adjusted for the price move), which says so, and which is
/// never enough for a rug warning on its own.
#[tokio::test]
async fn a_liquidity_pull_upstream_reaches_a_websocket_subscriber_as_a_drain() {
    let up = Upstream::start().await;
    up.with(|i| {
        let first = i.pairs[RUG_PAIR][0].clone();
        let mut pulled = first.clone();
        for k in ["usd", "base", "quote"] {
            pulled["liquidity"][k] = json!(first["liquidity"][k].as_f64().unwrap() * 0.2);
        }
        pulled["volume"]["m5"] = json!(5900.0);
        i.pairs.get_mut(RUG_PAIR).unwrap().push_back(pulled);
    });
    // The first state may be polled more than once before the pull: hold it for a few polls.
    up.with(|i| {
        let q = i.pairs.get_mut(RUG_PAIR).unwrap();
        let first = q[0].clone();
        q.push_front(first.clone());
        q.push_front(first);
    });
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    let r = start_live(cfg).await;
    // Resuming from 0 gets the warning whenever it came: the ring retains it.
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    ask(&mut ws, &format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"kinds":["rug_warning","liquidity_drain"]}},"resume_from":{{"epoch":"{epoch}","seq":0}}}}"#)).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "signal");
    let e = &m["event"];
    assert_eq!(
        (
            e["kind"].as_str(),
            e["pair_address"].as_str(),
            e["source"].as_str()
        ),
        (Some("liquidity_drain"), Some(RUG_PAIR), Some("dexscreener"))
    );
    assert_eq!(e["direction"], "bearish");
    assert_eq!(e["severity"], "very_high");
    assert!(e["metrics"]["lp_removed"].as_f64().unwrap() >= 0.75, "{e}");
    assert!(
        e["risk_flags"]
            .as_array()
            .unwrap()
            .contains(&json!("liq_usd_proxy")),
        "a CLMM pool: USD liquidity, not K"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn junk_and_faults_never_crash_and_never_make_events() {
    let up = Upstream::start().await;
    up.with(|i| {
        i.faults.extend([
            Fault::Status(500),
            Fault::Status(503),
            Fault::Delay(Duration::from_secs(2)),
            Fault::SlowBody,
            Fault::Truncated,
            Fault::Html,
            Fault::PairsNull,
            Fault::Drift,
            Fault::Drift,
            Fault::Status(502),
        ]);
    });
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.circuit_failures = 100;
    let r = start_live(cfg).await;
    eventually("the faults are used up", || {
        up.with(|i| i.faults.is_empty())
    })
    .await;
    eventually("good data again", || r.hub().pairs().len() >= 2).await;
    assert_eq!(r.hub().head_seq(), 0, "no event from junk");
    let m = |s: &str| metric(&r, s);
    assert!(
        m("dexpulse_upstream_requests_total{class=\"dexscreener_pairs\",status=\"500\"}") >= 1.0
    );
    assert!(
        m("dexpulse_upstream_requests_total{class=\"dexscreener_pairs\",status=\"503\"}") >= 1.0
    );
    assert!(
        m("dexpulse_upstream_requests_total{class=\"dexscreener_pairs\",status=\"error\"}") >= 2.0,
        "time-out and slow body"
    );
    assert!(
        m("dexpulse_source_problems_total") >= 6.0,
        "each fault is counted"
    );
    assert!(m("dexpulse_upstream_backoff_seconds_total") > 0.0);
    // Drifted snapshots (NaN, nulls, missing keys) were taken as unknown, not as zero.
    assert!(m("dexpulse_snapshots_total{verdict=\"fresh\"}") >= 1.0);
    assert_eq!(http_get(&r, "/healthz", &[]).await.0, 200);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limits_back_off_with_and_without_retry_after() {
    for retry_after_s in [Some(1), None] {
        let up = Upstream::start().await;
        up.with(|i| {
            i.limits.insert(
                "pairs",
                Limit {
                    per_minute: 5,
                    retry_after_s,
                },
            );
        });
        let mut cfg = live_config(&up);
        cfg.source.live.gecko_pools.clear();
        // Fast enough that a source ignoring 429s would send dozens in the window below.
        cfg.source.live.dexscreener.rate_per_minute = 6000.0;
        cfg.source.live.min_interval_seconds = 0.1;
        let r = start_live(cfg).await;
        eventually("a 429", || up.served("429") >= 1).await;
        eventually("the source noticed", || {
            metric(&r, "dexpulse_upstream_rate_limited_total") >= 1.0
        })
        .await;
        let asked_429 = up.served("429");
        // Backing off: over the next 300 ms the source does not hammer the limit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            up.served("429") <= asked_429 + 5,
            "{retry_after_s:?}: {} 429s",
            up.served("429")
        );
        assert!(metric(&r, "dexpulse_upstream_backoff_seconds_total") > 0.0);
        r.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_batch_falls_back_to_smaller_batches() {
    let up = Upstream::start().await;
    up.with(|i| i.max_batch = Some(7));
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    let addrs: Vec<String> = up.with(|i| i.pairs.keys().cloned().collect());
    cfg.source.live.pairs = addrs.iter().map(|a| format!("solana:{a}")).collect();
    let r = start_live(cfg).await;
    eventually("all 30 pairs polled despite the refusals", || {
        r.hub().pairs().len() >= 30
    })
    .await;
    assert!(up.served("400") >= 1);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn recording_writes_a_tape_that_replays() {
    let up = Upstream::start().await;
    let path = std::env::temp_dir().join(format!("dexpulse-record-{}.jsonl", std::process::id()));
    let mut cfg = live_config(&up);
    cfg.source.live.record = Some(path.clone());
    let r = start_live(cfg).await;
    eventually("some polls", || {
        r.hub().pairs().len() >= 3 && up.served("200") >= 7
    })
    .await;
    r.shutdown().await.unwrap();
    let tape = std::fs::read(&path).unwrap();
    let run = crate::support::replay_bytes(&tape, dexpulse::signal::Params::default());
    assert!(run.problems.is_empty(), "{:?}", run.problems);
    // Seven served: the poll in flight when shutdown came may be left out, no earlier one.
    assert!(run.stats.responses >= 6, "{:?}", run.stats);
    assert!(run.stats.snapshots >= 6);
    let text = String::from_utf8(tape).unwrap();
    assert!(text
        .lines()
        .any(|l| l.contains("\"source\":\"geckoterminal\"")
            && l.contains("/networks/monad-testnet/pools/multi/")));
    assert!(text
        .lines()
        .any(|l| l.contains("\"request\":\"/latest/dex/pairs/solana/")));
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn discovery_adds_eligible_pairs_and_dead_ones_are_evicted() {
    let up = Upstream::start().await;
    let usd1 = "USD1ttGY1N17NEEHLmELoaybftRBUSErhqYiQzvEmuB";
    up.with(|i| i.profiles = Some(json!([{"chainId":"solana","tokenAddress":usd1},{"chainId":"base","tokenAddress":"0xnotours"}])));
    // Which recorded pairs qualify: Solana, liquidity at least $10k.
    let eligible: Vec<String> = up.with(|i| {
        i.pairs
            .iter()
            .filter(|(_, st)| {
                st[0]["liquidity"]["usd"]
                    .as_f64()
                    .is_some_and(|l| l >= 10_000.0)
            })
            .map(|(a, _)| a.clone())
            .collect()
    });
    assert!(
        eligible.len() >= 10 && eligible.len() < 30,
        "{}",
        eligible.len()
    );
    let cfg = discovery_config(&up);
    let r = start_live(cfg).await;
    let waited = tokio::time::timeout(WAIT, async {
        while metric(&r, "dexpulse_watchlist_pairs") as usize != eligible.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "tracked {} of {}: {:?}",
        metric(&r, "dexpulse_watchlist_pairs"),
        eligible.len(),
        up.with(|i| i.served.clone())
    );
    // One of them dies: its liquidity is pulled to almost nothing and stays there.
    let victim = eligible[0].clone();
    up.with(|i| {
        let mut dead = i.pairs[&victim][0].clone();
        dead["liquidity"] = json!({"usd": 10.0, "base": 1.0, "quote": 1.0});
        i.pairs.get_mut(&victim).unwrap().push_back(dead);
    });
    eventually("the dead pair is evicted", || {
        metric(&r, "dexpulse_watchlist_pairs") as usize == eligible.len() - 1
    })
    .await;
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_circuit_makes_the_server_not_ready() {
    let up = Upstream::start().await;
    up.with(|i| {
        i.faults
            .extend(std::iter::repeat_n(Fault::Status(500), 1000))
    });
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.circuit_failures = 3;
    cfg.source.live.circuit_open_seconds = 30.0;
    let r = start_live(cfg).await;
    eventually("the circuit opens", || {
        metric(&r, "dexpulse_upstream_circuit_open") >= 1.0
    })
    .await;
    let (status, body) = http_get(&r, "/readyz", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("circuit"), "{body}");
    // While open, upstream is left alone.
    let asked = up.served("500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.served("500"), asked);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn search_queries_feed_the_watchlist() {
    let up = Upstream::start().await;
    up.with(|i| i.profiles = Some(json!([])));
    let search = crate::upstream::fixture("dexscreener-search-usd1-usdc-multichain.json");
    let eligible = search["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["chainId"] == "solana"
                && p["liquidity"]["usd"]
                    .as_f64()
                    .is_some_and(|l| l >= 10_000.0)
        })
        .count();
    assert!(eligible > 0);
    let mut cfg = discovery_config(&up);
    cfg.source.live.search_queries = vec!["USD1/USDC".into()];
    let r = start_live(cfg).await;
    eventually("the search's eligible pairs are tracked", || {
        metric(&r, "dexpulse_watchlist_pairs") as usize == eligible
    })
    .await;
    assert!(
        up.served("search?q=USD1%2FUSDC") >= 1,
        "{:?}",
        up.with(|i| i.served.clone())
    );
    r.shutdown().await.unwrap();
}

/// A pair upstream refuses (400 for any request naming it) is not retried at once and
/// forever: the batch it sinks is split, the pair waits longer after each refusal when asked
/// for alone, and after three it leaves the watchlist, with a log line and a metric; the other
/// pairs keep the budget.
#[tokio::test]
async fn a_pair_upstream_refuses_backs_off_and_is_dropped() {
    let up = Upstream::start().await;
    up.with(|i| {
        i.refuse.insert("BADPAIR".to_string());
    });
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.pairs.push("solana:BADPAIR".into());
    cfg.source.live.refusal_backoff_seconds = 0.1;
    cfg.source.live.batch_recover_after = 1_000;
    let r = start_live(cfg).await;
    eventually("the refused pair is dropped", || {
        metric(&r, "dexpulse_watchlist_drops_total{reason=\"refused\"}") >= 1.0
    })
    .await;
    let asked = up.with(|i| i.refused_asks);
    let ok = up.served("200");
    eventually("the good pairs are still polled", || {
        up.served("200") >= ok + 10
    })
    .await;
    assert_eq!(up.with(|i| i.refused_asks), asked, "not asked for again");
    // Once in the first batch, then in halves down to itself, then alone three times.
    assert!(asked <= 6, "asked for {asked} times");
    let (_, body) = http_get(&r, "/v1/pairs", &[]).await;
    assert_eq!(pairs_json(&body).len(), 2);
    r.shutdown().await.unwrap();
}

/// No upstream at all: `/readyz` is not ready from the start (ticks are not data), names the
/// class and the cause, and says so again when the class's circuit opens.
#[tokio::test]
async fn offline_the_server_is_not_ready_and_says_why() {
    let up = Upstream::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = live_config(&up);
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.dexscreener.base_url = format!("http://{closed}");
    cfg.source.live.circuit_failures = 3;
    cfg.source.live.circuit_open_seconds = 30.0;
    let r = start_live(cfg).await;
    let reason = || async {
        let (status, body) = http_get(&r, "/readyz", &[]).await;
        assert_eq!(status, 503, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = reason().await;
    assert!(first.starts_with("no data from the source yet"), "{first}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let why = reason().await;
        if why.contains("circuit open") {
            assert_eq!(
                why,
                "upstream `dexscreener_pairs`: circuit open (connection refused)"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.shutdown().await.unwrap();
}
