//! The live sources (docs/sources.md): DexScreener and GeckoTerminal polled over HTTP
//! ([`http`], the only module that speaks to upstream) on the schedule of
//! `dexpulse_core::schedule`. This driver fetches what the scheduler asks for, records each
//! response to a tape when asked, decodes with the same decoders as the replay, lets the
//! watchlist's policy judge each snapshot, reports outcomes, and hands snapshots to the engine
//! and each endpoint class's state to the health. Upstream junk is counted and skipped; it never
//! stops the source. It never touches the hub or the server.

pub mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{Discovered, PairKey};
use dexpulse_core::schedule::{
    self, Change, Class, DropReason, Next, Outcome, Policy, Scheduler, Via,
};
use dexpulse_core::settings::{at_least, in_range, ms, seconds, FieldError};
use dexpulse_core::source::tape::TapeWriter;
use dexpulse_core::source::{self as decode, Input};

use crate::health::{Health, UpstreamState};
use crate::metrics::Metrics;
use crate::time::Clock;

use http::{Fetched, Upstreams};

/// `[source.live]`: the upstreams, the watchlist and the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// Pairs to track from the start, `chain:address`; never dropped as dead or not found.
    pub pairs: Vec<String>,
    /// GeckoTerminal pools to track, `chain:address` (DexScreener chain names).
    pub gecko_pools: Vec<String>,
    pub max_pairs: usize,
    /// Discovery (profiles, boosts, new and trending pools) adds pairs on these chains.
    pub discovery: bool,
    pub discovery_chains: Vec<String>,
    pub discovery_interval_seconds: f64,
    /// A discovered pair needs this much liquidity to be tracked, and is dropped below a tenth.
    pub min_liquidity_usd: f64,
    /// Misses (asked for, not returned) before a discovered pair is dropped.
    pub evict_after_misses: u32,
    /// A pair refused by upstream when asked for alone waits this long (doubling each time) ...
    pub refusal_backoff_seconds: f64,
    /// ... and is dropped after this many refusals in a row.
    pub drop_after_refusals: u32,
    /// Successful batches after which a halved DexScreener batch size doubles again.
    pub batch_recover_after: u32,
    /// Poll a pair at most this often (hot pairs twice as often); the budget decides the rest.
    pub min_interval_seconds: f64,
    /// No pair waits longer than this, whatever the priorities.
    pub max_staleness_seconds: f64,
    /// Wall-clock ticks for the engine's time-outs.
    pub tick_seconds: f64,
    pub timeout_seconds: f64,
    pub max_in_flight: usize,
    /// A response body larger than this (after decompression) is cut off and counted as a
    /// fault.
    pub max_body_bytes: usize,
    pub backoff_base_seconds: f64,
    pub backoff_max_seconds: f64,
    pub circuit_failures: u32,
    pub circuit_open_seconds: f64,
    /// Seed of the schedule's jitter.
    pub seed: u64,
    /// A pair is hot (polled twice as often) while its last snapshot shows this much activity:
    /// trades in 5 minutes, or an absolute 5-minute price change in %.
    pub hot_txns_m5: u64,
    pub hot_abs_pc_m5: f64,
    /// DexScreener search queries run with discovery (`/latest/dex/search?q=`; 30 results).
    pub search_queries: Vec<String>,
    /// Write every upstream response to this tape (also `serve --record FILE`).
    pub record: Option<PathBuf>,
    pub dexscreener: RawDexScreener,
    pub geckoterminal: RawGeckoTerminal,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            pairs: Vec::new(),
            gecko_pools: Vec::new(),
            max_pairs: 2_000,
            discovery: true,
            discovery_chains: vec!["solana".to_string()],
            discovery_interval_seconds: 60.0,
            min_liquidity_usd: 10_000.0,
            evict_after_misses: 3,
            refusal_backoff_seconds: 60.0,
            drop_after_refusals: 3,
            batch_recover_after: 64,
            min_interval_seconds: 10.0,
            max_staleness_seconds: 300.0,
            tick_seconds: 5.0,
            timeout_seconds: 10.0,
            max_in_flight: 4,
            max_body_bytes: 8 << 20,
            backoff_base_seconds: 1.0,
            backoff_max_seconds: 120.0,
            circuit_failures: 5,
            circuit_open_seconds: 60.0,
            seed: 1,
            hot_txns_m5: 10,
            hot_abs_pc_m5: 3.0,
            search_queries: Vec::new(),
            record: None,
            dexscreener: RawDexScreener::default(),
            geckoterminal: RawGeckoTerminal::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDexScreener {
    pub enabled: bool,
    /// Also `DEXPULSE_DEXSCREENER_BASE_URL`.
    pub base_url: String,
    /// Pairs, tokens, search: 300 req/min documented.
    pub rate_per_minute: f64,
    /// Token profiles and boosts: 60 req/min documented.
    pub discovery_rate_per_minute: f64,
    /// Pair ids per `/latest/dex/pairs` call. The docs disagree (30, or 1); a refused batch
    /// halves it until batches succeed again.
    pub pairs_batch: usize,
}

impl Default for RawDexScreener {
    fn default() -> Self {
        RawDexScreener {
            enabled: true,
            base_url: "https://api.dexscreener.com".to_string(),
            rate_per_minute: 270.0,
            discovery_rate_per_minute: 50.0,
            pairs_batch: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGeckoTerminal {
    pub enabled: bool,
    /// Also `DEXPULSE_GECKOTERMINAL_BASE_URL`.
    pub base_url: String,
    /// 30 calls/min documented, lower in practice.
    pub rate_per_minute: f64,
    /// Pools per `pools/multi` call (up to 30).
    pub pools_batch: usize,
    /// Responses are cached 60 s: polling a pool faster gains nothing.
    pub min_interval_seconds: f64,
    /// Ask new and trending pools on the discovery chains.
    pub discovery: bool,
}

impl Default for RawGeckoTerminal {
    fn default() -> Self {
        RawGeckoTerminal {
            enabled: true,
            base_url: "https://api.geckoterminal.com/api/v2".to_string(),
            rate_per_minute: 20.0,
            pools_batch: 30,
            min_interval_seconds: 60.0,
            discovery: false,
        }
    }
}

/// One upstream, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub enabled: bool,
    pub base_url: String,
}

/// The live sources' settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pairs: Vec<PairKey>,
    pub gecko_pools: Vec<PairKey>,
    pub tick: Duration,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_body_bytes: usize,
    pub record: Option<PathBuf>,
    pub dexscreener: Upstream,
    pub geckoterminal: Upstream,
    pub schedule: schedule::Settings,
}

fn pair_list(field: &str, list: &[String]) -> Result<Vec<PairKey>, FieldError> {
    list.iter()
        .map(|p| {
            p.parse::<PairKey>().map_err(|_| {
                FieldError::new(field, "must hold `chain:address` entries", format!("{p:?}"))
            })
        })
        .collect()
}

fn base_url(field: &str, url: &str) -> Result<String, FieldError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_string())
    } else {
        Err(FieldError::new(
            field,
            "must be an http(s) URL",
            format!("{url:?}"),
        ))
    }
}

fn batch(field: &str, n: usize) -> Result<usize, FieldError> {
    if (1..=30).contains(&n) {
        Ok(n)
    } else {
        Err(FieldError::new(field, "must be from 1 to 30", n))
    }
}

impl Settings {
    /// Field names are relative to `[source.live]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let d = &raw.dexscreener;
        let g = &raw.geckoterminal;
        let min_interval = seconds(
            "min_interval_seconds",
            raw.min_interval_seconds,
            0.1,
            86_400.0,
        )?;
        let backoff_base = seconds(
            "backoff_base_seconds",
            raw.backoff_base_seconds,
            0.001,
            3_600.0,
        )?;
        if raw.search_queries.iter().any(|q| q.trim().is_empty()) {
            return Err(FieldError::new(
                "search_queries",
                "must not hold empty queries",
                "\"\"",
            ));
        }
        let dex_batch = batch("dexscreener.pairs_batch", d.pairs_batch)?;
        let schedule = schedule::Settings {
            dex_rate_per_min: in_range(
                "dexscreener.rate_per_minute",
                d.rate_per_minute,
                0.1,
                100_000.0,
            )?,
            dex_discovery_rate_per_min: in_range(
                "dexscreener.discovery_rate_per_minute",
                d.discovery_rate_per_minute,
                0.1,
                100_000.0,
            )?,
            gecko_rate_per_min: in_range(
                "geckoterminal.rate_per_minute",
                g.rate_per_minute,
                0.1,
                100_000.0,
            )?,
            dex_batch,
            gecko_batch: batch("geckoterminal.pools_batch", g.pools_batch)?,
            target_interval_ms: ms(min_interval),
            gecko_min_interval_ms: ms(seconds(
                "geckoterminal.min_interval_seconds",
                g.min_interval_seconds,
                0.0,
                86_400.0,
            )?),
            max_staleness_ms: ms(seconds(
                "max_staleness_seconds",
                raw.max_staleness_seconds,
                min_interval.as_secs_f64(),
                86_400.0,
            )?),
            discovery_interval_ms: {
                let i = seconds(
                    "discovery_interval_seconds",
                    raw.discovery_interval_seconds,
                    1.0,
                    86_400.0,
                )?;
                if raw.discovery && d.enabled {
                    ms(i)
                } else {
                    0
                }
            },
            backoff_base_ms: ms(backoff_base),
            backoff_max_ms: ms(seconds(
                "backoff_max_seconds",
                raw.backoff_max_seconds,
                backoff_base.as_secs_f64(),
                86_400.0,
            )?),
            circuit_failures: at_least("circuit_failures", raw.circuit_failures, 1)?,
            circuit_open_ms: ms(seconds(
                "circuit_open_seconds",
                raw.circuit_open_seconds,
                0.0,
                86_400.0,
            )?),
            batch_recover_after: at_least("batch_recover_after", raw.batch_recover_after, 1)?,
            policy: Policy {
                max_pairs: at_least("max_pairs", raw.max_pairs, 1)?,
                discovery_chains: raw.discovery_chains.clone(),
                min_liquidity_usd: in_range("min_liquidity_usd", raw.min_liquidity_usd, 0.0, 1e15)?,
                dead_liquidity_fraction: 0.1,
                evict_after_misses: at_least("evict_after_misses", raw.evict_after_misses, 1)?,
                hot_txns_m5: raw.hot_txns_m5,
                hot_abs_pc_m5: in_range("hot_abs_pc_m5", raw.hot_abs_pc_m5, 0.0, 1e6)?,
                refusal_backoff_base_ms: ms(seconds(
                    "refusal_backoff_seconds",
                    raw.refusal_backoff_seconds,
                    0.0,
                    86_400.0,
                )?),
                refusal_backoff_max_ms: ms(Duration::from_secs(3_600)),
                drop_after_refusals: at_least("drop_after_refusals", raw.drop_after_refusals, 1)?,
            },
            gecko_discovery: g.enabled && g.discovery,
            search_queries: raw.search_queries.clone(),
            seed: raw.seed,
        };
        Ok(Settings {
            pairs: pair_list("pairs", &raw.pairs)?,
            gecko_pools: pair_list("gecko_pools", &raw.gecko_pools)?,
            tick: seconds("tick_seconds", raw.tick_seconds, 0.05, 3_600.0)?,
            timeout: seconds("timeout_seconds", raw.timeout_seconds, 0.05, 600.0)?,
            max_in_flight: at_least("max_in_flight", raw.max_in_flight, 1)?,
            max_body_bytes: at_least("max_body_bytes", raw.max_body_bytes, 1024)?,
            record: raw.record.clone(),
            dexscreener: Upstream {
                enabled: d.enabled,
                base_url: base_url("dexscreener.base_url", &d.base_url)?,
            },
            geckoterminal: Upstream {
                enabled: g.enabled,
                base_url: base_url("geckoterminal.base_url", &g.base_url)?,
            },
            schedule,
        })
    }
}

/// Where recorded responses go.
pub type Recorder = TapeWriter<std::io::BufWriter<std::fs::File>>;

/// Creates the recording named by the settings; the error names the path.
pub fn open_recorder(path: &std::path::Path) -> std::io::Result<Recorder> {
    std::fs::File::create(path).map(|f| TapeWriter::new(std::io::BufWriter::new(f)))
}

/// A failure that stops the live sources.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("bad schedule settings: {0}")]
    Schedule(#[from] schedule::BadBucket),
}

/// What the driver needs.
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub tx: mpsc::Sender<Input>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clock: Clock,
    pub recorder: Option<Recorder>,
}

/// Each class's last cause of failure and how many refusals (429, 4xx) in a row it has had,
/// for readiness and the logs.
#[derive(Default)]
struct Causes([Option<String>; 3], [u32; 3]);

impl Causes {
    fn slot(class: Class) -> usize {
        match class {
            Class::DexPairs => 0,
            Class::DexDiscovery => 1,
            Class::Gecko => 2,
        }
    }
}

/// Runs the live sources until shutdown (`Ok`) or a failure that stops them.
pub async fn run(mut ctx: Ctx) -> Result<(), LiveError> {
    let s = ctx.settings.clone();
    let upstreams = Arc::new(Upstreams::new(&s, ctx.clock.clone())?);
    let now = {
        let clock = ctx.clock.clone();
        move || clock.now_ms()
    };
    let mut sched = Scheduler::try_new(s.schedule.clone(), now())?;
    if s.dexscreener.enabled {
        for p in &s.pairs {
            sched.track(p.clone(), Via::Dex, true);
        }
    }
    if s.geckoterminal.enabled {
        for p in &s.gecko_pools {
            sched.track(p.clone(), Via::Gecko, true);
        }
    }
    tracing::info!(
        pairs = sched.watchlist().len(),
        dexscreener = %s.dexscreener.base_url,
        geckoterminal = %s.geckoterminal.base_url,
        "live sources started"
    );
    let mut causes = Causes::default();
    let mut inflight: JoinSet<Fetched> = JoinSet::new();
    let mut ticker = tokio::time::interval(s.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake_ms = now();
    loop {
        while inflight.len() < s.max_in_flight {
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
        ctx.metrics
            .live
            .watchlist
            .set(i64::try_from(sched.watchlist().len()).unwrap_or(i64::MAX));
        let sleep_ms = u64::try_from((wake_ms - now()).clamp(1, 60_000)).unwrap_or(1);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = ticker.tick() => {
                for st in sched.staleness_ms(now()) {
                    ctx.metrics.live.staleness.observe(st as f64 / 1000.0);
                }
                if ctx.tx.send(Input::Tick(now())).await.is_err() {
                    break;
                }
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok(f) = done else { continue };
                if !handle(f, &mut sched, &mut ctx, &mut causes).await {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    }
    inflight.abort_all();
    if let Some(r) = ctx.recorder.as_mut() {
        if let Err(e) = r.flush() {
            tracing::warn!(error = %e, "flushing the recording failed");
        }
    }
    tracing::info!("live sources stopped");
    Ok(())
}

fn log_change(c: &Change, metrics: &Metrics) {
    match c {
        Change::Added(key) => tracing::info!(pair = %key, "tracking a discovered pair"),
        Change::Dropped { key, why, pinned } => {
            let reason = match why {
                DropReason::NotFound { .. } => "not_found",
                DropReason::Dead { .. } => "dead",
                DropReason::Refused { .. } => "refused",
            };
            metrics.live.watchlist_drop(reason);
            if *pinned {
                tracing::warn!(pair = %key, ?why, "a configured pair left the watchlist");
            } else {
                tracing::info!(pair = %key, ?why, "a pair left the watchlist");
            }
        }
    }
}

/// Records, decodes and reports one response; `false` when the engine is gone.
async fn handle(f: Fetched, sched: &mut Scheduler, ctx: &mut Ctx, causes: &mut Causes) -> bool {
    let class = f.req.class();
    let status_label = f
        .status
        .map_or_else(|| "error".to_string(), |s| s.to_string());
    ctx.metrics
        .live
        .upstream_request(class.as_str(), &status_label);
    let source = http::source_of(&f.req);
    if let (Some(r), Some(status)) = (ctx.recorder.as_mut(), f.status) {
        if let Err(e) = r.write_response(f.t_ms, source, &f.path, status, &f.body) {
            tracing::warn!(error = %e, "recording failed");
        }
    }
    let (outcome, cause) = match f.status {
        Some(429) => (
            Outcome::RateLimited {
                retry_after_ms: f.retry_after_ms,
            },
            Some("HTTP 429 (rate limited)".to_string()),
        ),
        Some(s) if (400..500).contains(&s) => (
            Outcome::ClientError { status: s },
            Some(format!("HTTP {s}")),
        ),
        Some(s) if (200..300).contains(&s) => {
            match decode::decode_bytes(source, &f.path, &f.body, f.t_ms) {
                Ok(d) => {
                    for item in &d.skipped {
                        tracing::debug!(path = %f.path, index = item.index, reason = %item.reason, "item skipped");
                    }
                    let found: Vec<PairKey> = d.snapshots.iter().map(|s| s.key.clone()).collect();
                    for disc in &d.discovered {
                        if let Discovered::Token { chain, address } = disc {
                            sched.add_tokens(chain, [address.clone()]);
                        }
                    }
                    let mut keep = Vec::with_capacity(d.snapshots.len());
                    for snap in d.snapshots {
                        let (tracked, change) = sched.observe(&snap, &f.req);
                        if let Some(c) = &change {
                            log_change(c, &ctx.metrics);
                        }
                        if tracked {
                            keep.push(snap);
                        } else if !f.req.discovers() {
                            // A poll's answer with a pair nobody asked for: upstream's doing.
                            ctx.metrics.live.unrequested.inc();
                            tracing::debug!(pair = %snap.key, path = %f.path, "a pair not asked for; ignored");
                        }
                    }
                    if !keep.is_empty() && ctx.tx.send(Input::Snapshots(keep)).await.is_err() {
                        return false;
                    }
                    (Outcome::Ok { found }, None)
                }
                Err(e) => {
                    let why = format!("{}: {e}", f.path);
                    let _ = ctx.tx.send(Input::Problem(why.clone())).await;
                    (Outcome::Failed, Some(format!("undecodable body: {e}")))
                }
            }
        }
        _ => {
            let why = f
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {status_label}"));
            let _ = ctx
                .tx
                .send(Input::Problem(format!("{}: {why}", f.path)))
                .await;
            (Outcome::Failed, Some(why))
        }
    };
    if let Outcome::RateLimited { .. } = outcome {
        ctx.metrics.live.rate_limited.inc();
    }
    let now = ctx.clock.now_ms();
    let report = sched.report(&f.req, &outcome, now);
    for c in &report.changes {
        log_change(c, &ctx.metrics);
    }
    if let Some(b) = report.batch_size {
        tracing::warn!(batch = b, "DexScreener pairs batch size changed");
    }
    if report.backoff_ms > 0 {
        ctx.metrics
            .live
            .backoff_seconds
            .inc_by(report.backoff_ms as f64 / 1000.0);
        tracing::warn!(
            class = class.as_str(),
            backoff_ms = report.backoff_ms,
            cause = cause.as_deref().unwrap_or(""),
            "backing off"
        );
    }
    let slot = Causes::slot(class);
    causes.0[slot] = cause;
    // A storm is refusals of the class (429, refused access); a pair's own 400 says nothing
    // about the class.
    causes.1[slot] = match outcome {
        Outcome::RateLimited { .. } => causes.1[slot] + 1,
        Outcome::ClientError { status } if schedule::access_refused(status) => causes.1[slot] + 1,
        Outcome::ClientError { .. } => causes.1[slot],
        _ => 0,
    };
    let refusing = causes.1[slot] >= ctx.settings.schedule.circuit_failures;
    let open = sched.circuit_open(class, now);
    if report.circuit_opened {
        let until = sched.circuit_open_until(class).unwrap_or(now);
        tracing::warn!(
            class = class.as_str(),
            cause = causes.0[slot].as_deref().unwrap_or("repeated failures"),
            open_for_ms = until - now,
            "upstream circuit open: requests to this class pause"
        );
    }
    ctx.health.set_upstream(
        class.as_str(),
        UpstreamState {
            circuit_open: open,
            refusing,
            problem: causes.0[slot].clone(),
        },
    );
    for c in Class::ALL {
        ctx.metrics
            .live
            .budget_used(c.as_str(), sched.budget_used_pct(c, now));
    }
    let any_open = Class::ALL.iter().any(|c| sched.circuit_open(*c, now));
    ctx.metrics.live.circuit_open.set(i64::from(any_open));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_their_fields() {
        let bad = |f: fn(&mut RawSettings)| {
            let mut raw = RawSettings::default();
            f(&mut raw);
            Settings::parse(&raw).unwrap_err().field
        };
        assert_eq!(bad(|r| r.pairs = vec!["solana".into()]), "pairs");
        assert_eq!(
            bad(|r| r.dexscreener.pairs_batch = 31),
            "dexscreener.pairs_batch"
        );
        assert_eq!(
            bad(|r| r.geckoterminal.base_url = "ftp://x".into()),
            "geckoterminal.base_url"
        );
        assert_eq!(
            bad(|r| r.max_staleness_seconds = 1.0),
            "max_staleness_seconds"
        );
        let s = Settings::parse(&RawSettings {
            pairs: vec!["solana:AbC".into()],
            ..RawSettings::default()
        })
        .unwrap();
        assert_eq!(s.pairs, [PairKey::new("solana", "AbC")]);
        assert_eq!(s.schedule.target_interval_ms, 10_000);
    }
}
