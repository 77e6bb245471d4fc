//! The live sources: DexScreener and GeckoTerminal over HTTP (reqwest with rustls; time-outs,
//! gzip, a descriptive User-Agent), driven by the `poller::Scheduler`. Only this module speaks
//! HTTP. It fetches, records each response to the tape when asked, decodes with the same
//! decoders as the replay, reports outcomes to the scheduler, and hands snapshots and
//! wall-clock ticks to the engine. Upstream junk is counted and skipped; it never stops the
//! source.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Live;
use crate::hub::now_us;
use crate::metrics::Metrics;
use crate::model::{Discovered, PairKey, Source};
use crate::pipeline::Input;
use crate::poller::{Next, Outcome, Request, Scheduler, Settings, Via};
use crate::source::geckoterminal::network_of_chain;
use crate::source::tape::TapeWriter;

pub const USER_AGENT: &str = concat!(
    "dexpulse/",
    env!("CARGO_PKG_VERSION"),
    " (real-time DEX signal streamer; polls within documented rate limits)"
);

/// `chain:address` into a key (the address keeps its case).
pub fn parse_pair(s: &str) -> Option<PairKey> {
    let (chain, address) = s.split_once(':')?;
    (!chain.is_empty() && !address.is_empty() && !address.contains(':'))
        .then(|| PairKey::new(chain, address))
}

/// The path (and query) of a request, as the tape records it.
pub fn path(req: &Request) -> String {
    match req {
        Request::DexPairs { chain, ids } => format!("/latest/dex/pairs/{chain}/{}", ids.join(",")),
        Request::DexTokens { chain, tokens } => format!("/tokens/v1/{chain}/{}", tokens.join(",")),
        Request::DexProfiles => "/token-profiles/latest/v1".to_string(),
        Request::DexBoosts => "/token-boosts/latest/v1".to_string(),
        Request::DexSearch { query } => format!("/latest/dex/search?q={}", encode_query(query)),
        Request::GeckoPools { chain, addresses } => {
            format!(
                "/networks/{}/pools/multi/{}",
                network_of_chain(chain),
                addresses.join(",")
            )
        }
        Request::GeckoNewPools { chain } => {
            format!("/networks/{}/new_pools", network_of_chain(chain))
        }
        Request::GeckoTrending { chain } => {
            format!("/networks/{}/trending_pools", network_of_chain(chain))
        }
    }
}

/// Percent-encodes a query value (unreserved characters pass).
fn encode_query(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn source_of(req: &Request) -> Source {
    match req.class() {
        crate::poller::Class::Gecko => Source::Geckoterminal,
        _ => Source::Dexscreener,
    }
}

/// One HTTP exchange as seen by the driver.
#[derive(Debug)]
pub struct Fetched {
    pub req: Request,
    pub path: String,
    pub t_ms: i64,
    /// `None`: no HTTP response (time-out, connection error, a body cut short).
    pub status: Option<u16>,
    pub retry_after_ms: Option<i64>,
    pub body: Bytes,
    pub error: Option<String>,
}

pub struct Upstreams {
    http: reqwest::Client,
    dex_base: String,
    gecko_base: String,
}

impl Upstreams {
    pub fn new(cfg: &Live) -> Result<Upstreams, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_secs_f64(cfg.timeout_seconds))
            .connect_timeout(Duration::from_secs_f64(cfg.timeout_seconds.min(5.0)))
            .gzip(true)
            .build()?;
        Ok(Upstreams {
            http,
            dex_base: cfg.dexscreener.base_url.trim_end_matches('/').to_string(),
            gecko_base: cfg.geckoterminal.base_url.trim_end_matches('/').to_string(),
        })
    }

    pub async fn fetch(&self, req: Request) -> Fetched {
        let path = path(&req);
        let is_gecko = source_of(&req) == Source::Geckoterminal;
        let url = format!(
            "{}{path}",
            if is_gecko {
                &self.gecko_base
            } else {
                &self.dex_base
            }
        );
        let mut rb = self.http.get(&url);
        if is_gecko {
            rb = rb.header(reqwest::header::ACCEPT, "application/json;version=20230302");
        } else {
            rb = rb.header(reqwest::header::ACCEPT, "application/json");
        }
        let mut out = Fetched {
            req,
            path,
            t_ms: 0,
            status: None,
            retry_after_ms: None,
            body: Bytes::new(),
            error: None,
        };
        match rb.send().await {
            Ok(resp) => {
                out.status = Some(resp.status().as_u16());
                out.retry_after_ms = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| (s * 1000.0) as i64);
                match resp.bytes().await {
                    Ok(b) => out.body = b,
                    Err(e) => {
                        out.error = Some(format!("body: {e}"));
                        out.status = None;
                    }
                }
            }
            Err(e) => {
                out.error = Some(if e.is_timeout() {
                    "time-out".to_string()
                } else {
                    e.to_string()
                })
            }
        }
        out.t_ms = now_us() / 1000;
        out
    }
}

fn settings(cfg: &Live) -> Settings {
    Settings {
        dex_rate_per_min: cfg.dexscreener.rate_per_minute,
        dex_discovery_rate_per_min: cfg.dexscreener.discovery_rate_per_minute,
        gecko_rate_per_min: cfg.geckoterminal.rate_per_minute,
        dex_batch: cfg.dexscreener.pairs_batch,
        gecko_batch: cfg.geckoterminal.pools_batch,
        target_interval_ms: (cfg.min_interval_seconds * 1000.0) as i64,
        gecko_min_interval_ms: (cfg.geckoterminal.min_interval_seconds * 1000.0) as i64,
        max_staleness_ms: (cfg.max_staleness_seconds * 1000.0) as i64,
        discovery_interval_ms: if cfg.discovery && cfg.dexscreener.enabled {
            (cfg.discovery_interval_seconds * 1000.0) as i64
        } else {
            0
        },
        backoff_base_ms: (cfg.backoff_base_seconds * 1000.0) as i64,
        backoff_max_ms: (cfg.backoff_max_seconds * 1000.0) as i64,
        circuit_failures: cfg.circuit_failures,
        circuit_open_ms: (cfg.circuit_open_seconds * 1000.0) as i64,
        max_pairs: cfg.max_pairs,
        evict_after_misses: cfg.evict_after_misses,
        discovery_chains: cfg.discovery_chains.clone(),
        gecko_discovery: cfg.geckoterminal.enabled && cfg.geckoterminal.discovery,
        search_queries: cfg.search_queries.clone(),
        seed: cfg.seed,
    }
}

/// Where recorded responses go.
pub type Recorder = TapeWriter<std::io::BufWriter<std::fs::File>>;

/// Runs the live sources until shutdown.
pub async fn run(
    cfg: Live,
    tx: mpsc::Sender<Input>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    mut recorder: Option<Recorder>,
) {
    let upstreams = match Upstreams::new(&cfg) {
        Ok(u) => Arc::new(u),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client");
            return;
        }
    };
    let now = || now_us() / 1000;
    let mut sched = match Scheduler::try_new(settings(&cfg), now()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "bad schedule settings");
            return;
        }
    };
    if cfg.dexscreener.enabled {
        for p in cfg.pairs.iter().filter_map(|p| parse_pair(p)) {
            sched.track(p, Via::Dex, true);
        }
    }
    if cfg.geckoterminal.enabled {
        for p in cfg.gecko_pools.iter().filter_map(|p| parse_pair(p)) {
            sched.track(p, Via::Gecko, true);
        }
    }
    tracing::info!(
        pairs = sched.tracked(),
        dexscreener = %cfg.dexscreener.base_url,
        geckoterminal = %cfg.geckoterminal.base_url,
        "live sources started"
    );
    let mut inflight: JoinSet<Fetched> = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(cfg.tick_seconds));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake_ms = now();
    loop {
        // Send what the schedule allows now.
        while inflight.len() < cfg.max_in_flight {
            match sched.next(now()) {
                Next::Send(req) => {
                    let up = upstreams.clone();
                    inflight.spawn(async move { up.fetch(req).await });
                }
                Next::WaitUntil(t) => {
                    wake_ms = t;
                    break;
                }
            }
        }
        metrics.watchlist.set(sched.tracked() as i64);
        let sleep_ms = (wake_ms - now()).clamp(1, 60_000) as u64;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                for s in sched.staleness_ms(now()) {
                    metrics.staleness.observe(s as f64 / 1000.0);
                }
                if tx.send(Input::Tick(now())).await.is_err() {
                    break;
                }
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok(f) = done else { continue };
                if !handle(f, &cfg, &mut sched, &tx, &metrics, recorder.as_mut()).await {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    }
    inflight.abort_all();
    if let Some(r) = recorder.as_mut() {
        let _ = r.flush();
    }
    tracing::info!("live sources stopped");
}

/// Records, decodes and reports one response; `false` when the engine is gone.
async fn handle(
    f: Fetched,
    cfg: &Live,
    sched: &mut Scheduler,
    tx: &mpsc::Sender<Input>,
    metrics: &Metrics,
    recorder: Option<&mut Recorder>,
) -> bool {
    let class = f.req.class().as_str();
    let status_label = f
        .status
        .map_or_else(|| "error".to_string(), |s| s.to_string());
    metrics.upstream_request(class, &status_label);
    let source = source_of(&f.req);
    if let (Some(r), Some(status)) = (recorder, f.status) {
        if let Err(e) = r.write_response(f.t_ms, source, &f.path, status, &f.body) {
            tracing::warn!(error = %e, "recording failed");
        }
    }
    let outcome = match f.status {
        Some(429) => Outcome::RateLimited {
            retry_after_ms: f.retry_after_ms,
        },
        Some(s) if (400..500).contains(&s) => Outcome::ClientError { status: s },
        Some(s) if (200..300).contains(&s) => {
            match crate::source::decode_bytes(source, &f.path, &f.body, f.t_ms) {
                Ok(d) => {
                    for item in &d.skipped {
                        tracing::debug!(path = %f.path, index = item.index, reason = %item.reason, "item skipped");
                    }
                    let found: Vec<PairKey> = d.snapshots.iter().map(|s| s.key.clone()).collect();
                    let via = if source == Source::Geckoterminal {
                        Via::Gecko
                    } else {
                        Via::Dex
                    };
                    for disc in &d.discovered {
                        match disc {
                            Discovered::Token { chain, address } => {
                                sched.add_tokens(chain, [address.clone()])
                            }
                            Discovered::Pair(_) => {}
                        }
                    }
                    let mut keep = Vec::with_capacity(d.snapshots.len());
                    for s in d.snapshots {
                        let tracked = sched.is_tracked(&s.key);
                        let eligible = cfg.discovery_chains.contains(&s.key.chain)
                            && s.liquidity_usd.is_some_and(|l| l >= cfg.min_liquidity_usd);
                        if !tracked && eligible && sched.track(s.key.clone(), via, false) {
                            tracing::info!(pair = %s.key, "tracking a discovered pair");
                        }
                        if tracked {
                            // Dead pairs leave the watchlist: liquidity gone, or no trade in 24 h.
                            let dead_liq = s
                                .liquidity_usd
                                .is_some_and(|l| l < cfg.min_liquidity_usd / 10.0);
                            let no_trades = s.txns.h24.is_some_and(|t| t.total() == 0);
                            if (dead_liq || no_trades)
                                && !cfg
                                    .pairs
                                    .iter()
                                    .any(|p| parse_pair(p).as_ref() == Some(&s.key))
                            {
                                sched.untrack(&s.key);
                                tracing::info!(pair = %s.key, dead_liq, no_trades, "evicted a dead pair");
                            }
                        }
                        if tracked || sched.is_tracked(&s.key) {
                            // Activity is this source's view of "where signals happen": those
                            // pairs are polled twice as often (bounded staleness keeps the rest).
                            let hot = s.txns.m5.is_some_and(|t| t.total() >= cfg.hot_txns_m5)
                                || s.price_change_pct
                                    .m5
                                    .is_some_and(|p| p.abs() >= cfg.hot_abs_pc_m5);
                            sched.set_hot(&s.key, hot);
                            keep.push(s);
                        }
                    }
                    if !keep.is_empty() && tx.send(Input::Snapshots(keep)).await.is_err() {
                        return false;
                    }
                    Outcome::Ok { found }
                }
                Err(e) => {
                    let _ = tx.send(Input::Problem(format!("{}: {e}", f.path))).await;
                    Outcome::Failed
                }
            }
        }
        _ => {
            let why = f
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {status_label}"));
            let _ = tx.send(Input::Problem(format!("{}: {why}", f.path))).await;
            Outcome::Failed
        }
    };
    if let Outcome::RateLimited { .. } = outcome {
        metrics.rate_limited.inc();
    }
    let now = now_us() / 1000;
    let report = sched.report(&f.req, &outcome, now);
    for key in report.evicted {
        tracing::info!(pair = %key, "evicted: not found upstream");
    }
    if report.backoff_ms > 0 {
        metrics
            .backoff_seconds
            .inc_by(report.backoff_ms as f64 / 1000.0);
        tracing::warn!(class, backoff_ms = report.backoff_ms, status = %status_label, "backing off");
    }
    for c in crate::poller::Class::ALL {
        metrics.budget_used(c.as_str(), sched.budget_used_pct(c, now));
    }
    let open = crate::poller::Class::ALL
        .iter()
        .any(|c| sched.circuit_open(*c, now));
    metrics.circuit_open.set(i64::from(open));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        let check = |req: Request, want: &str| assert_eq!(path(&req), want);
        check(
            Request::DexPairs {
                chain: "solana".into(),
                ids: vec!["A".into(), "b".into()],
            },
            "/latest/dex/pairs/solana/A,b",
        );
        check(
            Request::DexTokens {
                chain: "bsc".into(),
                tokens: vec!["0x1".into()],
            },
            "/tokens/v1/bsc/0x1",
        );
        check(
            Request::DexSearch {
                query: "USD1/USDC x".into(),
            },
            "/latest/dex/search?q=USD1%2FUSDC%20x",
        );
        check(
            Request::GeckoPools {
                chain: "ethereum".into(),
                addresses: vec!["0xa".into(), "0xb".into()],
            },
            "/networks/eth/pools/multi/0xa,0xb",
        );
        check(
            Request::GeckoTrending {
                chain: "polygon".into(),
            },
            "/networks/polygon_pos/trending_pools",
        );
        assert_eq!(
            parse_pair("solana:AbC"),
            Some(PairKey::new("solana", "AbC"))
        );
        assert_eq!(parse_pair("solana"), None);
        assert_eq!(parse_pair(":x"), None);
        assert_eq!(parse_pair("a:b:c"), None);
    }
}
