//! The chain source's driver (docs/sources.md, "The chain"): the JSON-RPC calls of the core's
//! [`Follower`] made over HTTP (reqwest: with `live`, the only module that speaks to an
//! upstream), within a budget of requests per second, with backoff and jitter after a
//! failure, a circuit that `/readyz` reports with its cause, and bodies cut off past a bound.
//! Each reply is recorded to a tape when asked, handed to the follower, and what it gives
//! (snapshots, a tick, a reorganisation's notice) goes to the engine in order; the follower's
//! state goes with the engine's checkpoints, so a restart on the data directory continues
//! from the last block applied. It never touches the hub or the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use bytes::BytesMut;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dexpulse_core::chain::{self, Factory, Follower, QuotePrice, QuoteToken, Start, Version};
use dexpulse_core::model::Source;
use dexpulse_core::schedule::{Backoff, Circuit, Rate};
use dexpulse_core::settings::{at_least, in_range, ms, seconds, FieldError};
use dexpulse_core::source::{bounds, Input};

use crate::health::{Health, UpstreamState};
use crate::live::Recorder;
use crate::metrics::Metrics;
use crate::time::Clock;

/// A factory as configured: `{address = "0x…", kind = "v2", dex = "uniswap_v2"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFactory {
    pub address: String,
    /// `v2` (PairCreated) or `v3` (PoolCreated).
    pub kind: String,
    /// The DEX's name in pair data; `uniswap_v2` or `uniswap_v3` when absent.
    #[serde(default)]
    pub dex: Option<String>,
}

/// A quote token: `{address = "0x…", usd = 1.0}` (a fixed price) or `{address = "0x…",
/// usd_pool = "0x…"}` (priced through a pool whose other token has a fixed price).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuote {
    pub address: String,
    #[serde(default)]
    pub usd: Option<f64>,
    #[serde(default)]
    pub usd_pool: Option<String>,
}

/// `[source.evm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// The node's JSON-RPC over HTTP(S).
    pub rpc_url: String,
    /// The chain's name in pair keys (`base`, `ethereum`, `bsc`).
    pub chain: String,
    /// Pools followed from the start (V2 pairs or V3 pools; the kind is asked of the pool).
    pub pools: Vec<String>,
    /// Factories whose new pools are followed from their creation.
    pub factories: Vec<RawFactory>,
    /// The tokens that price the others in USD.
    pub quote_tokens: Vec<RawQuote>,
    /// Blocks a log waits behind the head before it is applied.
    pub confirmations: u64,
    /// Read from this block on ...
    pub start_block: Option<u64>,
    /// ... or from this long before the head (the default: an hour, for the rolling windows).
    pub start_minutes: Option<f64>,
    pub max_pools: usize,
    /// JSON-RPC calls a second at most (a batch counts each call).
    pub requests_per_second: f64,
    /// How often the head is asked for when caught up.
    pub poll_seconds: f64,
    pub blocks_per_logs: u64,
    pub addresses_per_logs: usize,
    /// A pool no block touched gives a snapshot this often (block time).
    pub snapshot_every_seconds: f64,
    /// Recent blocks remembered to follow a reorganisation.
    pub reorg_depth: u64,
    /// A configured pool whose creation the source has not seen is taken to be at least this
    /// old at the first block it reads (so that it is not taken for a new pair).
    pub configured_pool_min_age_minutes: f64,
    pub timeout_seconds: f64,
    pub max_body_bytes: usize,
    pub backoff_base_seconds: f64,
    pub backoff_max_seconds: f64,
    pub circuit_failures: u32,
    pub circuit_open_seconds: f64,
    /// Write every reply to this tape (also `serve --record FILE`).
    pub record: Option<PathBuf>,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            rpc_url: String::new(),
            chain: "ethereum".into(),
            pools: Vec::new(),
            factories: Vec::new(),
            quote_tokens: Vec::new(),
            confirmations: 2,
            start_block: None,
            start_minutes: None,
            max_pools: 1_000,
            requests_per_second: 10.0,
            poll_seconds: 2.0,
            blocks_per_logs: 500,
            addresses_per_logs: 500,
            snapshot_every_seconds: 60.0,
            reorg_depth: 64,
            configured_pool_min_age_minutes: 1_440.0,
            timeout_seconds: 10.0,
            max_body_bytes: 32 << 20,
            backoff_base_seconds: 0.5,
            backoff_max_seconds: 30.0,
            circuit_failures: 5,
            circuit_open_seconds: 30.0,
            record: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rpc_url: String,
    pub follower: chain::Settings,
    pub rate: Rate,
    pub poll: Duration,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub circuit_failures: u32,
    pub circuit_open_ms: i64,
    pub record: Option<PathBuf>,
}

fn address(field: &str, s: &str) -> Result<Address, FieldError> {
    s.trim()
        .parse::<Address>()
        .map_err(|_| FieldError::new(field, "is not an address (0x and 40 hex digits)", s))
}

impl Settings {
    /// Field names are relative to `[source.evm]`. `burn_window` is the engine's drain
    /// lookback: LP burns are measured over the same window.
    pub fn parse(raw: &RawSettings, burn_window: Duration) -> Result<Settings, FieldError> {
        let url = raw.rpc_url.trim();
        if url.is_empty() {
            return Err(FieldError::new(
                "rpc_url",
                "is required when source.kind = \"evm\"",
                "nothing",
            ));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FieldError::new(
                "rpc_url",
                "must be an http:// or https:// JSON-RPC endpoint",
                dexpulse_core::settings::redact_url(url),
            ));
        }
        bounds::identifier("chain", &raw.chain, bounds::CHAIN_BYTES)
            .map_err(|e| FieldError::new("chain", e.to_string(), &raw.chain))?;
        let pools = raw
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| address(&format!("pools[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let factories = raw
            .factories
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let version = match f.kind.as_str() {
                    "v2" => Version::V2,
                    "v3" => Version::V3,
                    other => {
                        return Err(FieldError::new(
                            &format!("factories[{i}].kind"),
                            "must be \"v2\" or \"v3\"",
                            other,
                        ))
                    }
                };
                let dex = match &f.dex {
                    Some(d) => {
                        bounds::identifier("dex", d, bounds::DEX_ID_CHARS).map_err(|e| {
                            FieldError::new(&format!("factories[{i}].dex"), e.to_string(), d)
                        })?;
                        d.clone()
                    }
                    None => format!("uniswap_{}", version.label()),
                };
                Ok(Factory {
                    address: address(&format!("factories[{i}].address"), &f.address)?,
                    version,
                    dex,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let quote_tokens = raw
            .quote_tokens
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let field = format!("quote_tokens[{i}]");
                let price = match (q.usd, &q.usd_pool) {
                    (Some(u), None) => QuotePrice::Usd(in_range(&format!("{field}.usd"), u, 0.0, 1e12)?),
                    (None, Some(p)) => QuotePrice::Pool(address(&format!("{field}.usd_pool"), p)?),
                    _ => {
                        return Err(FieldError::new(
                            &field,
                            "needs exactly one of usd (a fixed price) and usd_pool (a pool against a fixed-price token)",
                            &q.address,
                        ))
                    }
                };
                Ok(QuoteToken {
                    address: address(&format!("{field}.address"), &q.address)?,
                    price,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, q) in quote_tokens.iter().enumerate() {
            if let QuotePrice::Pool(_) = q.price {
                if !quote_tokens
                    .iter()
                    .any(|o| matches!(o.price, QuotePrice::Usd(_)))
                {
                    return Err(FieldError::new(
                        &format!("quote_tokens[{i}].usd_pool"),
                        "needs a fixed-price quote token for the pool's other side",
                        q.address,
                    ));
                }
            }
        }
        let start = match (raw.start_block, raw.start_minutes) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "start_block",
                    "cannot be set with start_minutes",
                    "both",
                ))
            }
            (Some(b), None) => Start::Block(b),
            (None, Some(m)) => {
                Start::Minutes(in_range("start_minutes", m, 0.0, 60.0 * 24.0 * 30.0)?)
            }
            (None, None) => Start::Minutes(60.0),
        };
        let rps = in_range("requests_per_second", raw.requests_per_second, 0.01, 1e5)?;
        let backoff_base = seconds(
            "backoff_base_seconds",
            raw.backoff_base_seconds,
            0.001,
            3600.0,
        )?;
        Ok(Settings {
            rpc_url: url.to_string(),
            follower: chain::Settings {
                chain: raw.chain.clone(),
                pools,
                factories,
                quote_tokens,
                confirmations: raw.confirmations,
                start,
                max_pools: at_least("max_pools", raw.max_pools, 1)?,
                blocks_per_logs: at_least("blocks_per_logs", raw.blocks_per_logs, 1)?,
                addresses_per_logs: at_least("addresses_per_logs", raw.addresses_per_logs, 1)?,
                snapshot_every_ms: ms(seconds(
                    "snapshot_every_seconds",
                    raw.snapshot_every_seconds,
                    1.0,
                    86_400.0,
                )?),
                burn_window_ms: ms(burn_window),
                reorg_depth: at_least("reorg_depth", raw.reorg_depth, 1)?,
                configured_min_age_ms: ms(Duration::from_secs_f64(
                    in_range(
                        "configured_pool_min_age_minutes",
                        raw.configured_pool_min_age_minutes,
                        0.0,
                        60.0 * 24.0 * 3650.0,
                    )? * 60.0,
                )),
            },
            rate: Rate::try_new(rps * 60.0, rps.max(1.0))
                .map_err(|e| FieldError::new("requests_per_second", e.to_string(), rps))?,
            poll: seconds("poll_seconds", raw.poll_seconds, 0.05, 3600.0)?,
            timeout: seconds("timeout_seconds", raw.timeout_seconds, 0.05, 600.0)?,
            max_body_bytes: at_least("max_body_bytes", raw.max_body_bytes, 4096)?,
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
            record: raw.record.clone(),
        })
    }
}

/// What the driver works with.
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub tx: mpsc::Sender<Input>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clock: Clock,
    pub recorder: Option<Recorder>,
    /// The follower's state saved with the engine's (a restart on the data directory).
    pub restored: Option<Vec<u8>>,
    /// How often the follower's state goes to the engine to be saved (`None`: not kept).
    pub save_every: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvmError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("bad request budget: {0}")]
    Budget(#[from] dexpulse_core::schedule::BadBucket),
}

/// The health's name of the chain endpoint.
pub const CLASS: &str = "evm_rpc";

/// Why a JSON-RPC exchange gave no reply body.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{}", crate::live::http::cause(.0))]
    Http(reqwest::Error, Option<u16>),
    #[error("body over {0} bytes (source.evm.max_body_bytes)")]
    TooLarge(usize, u16),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("the reply is not JSON ({0})")]
    NotJson(serde_json::Error, u16),
}

impl PostError {
    /// The HTTP status, when an answer came.
    fn status(&self) -> Option<u16> {
        match self {
            PostError::Http(_, s) => *s,
            PostError::TooLarge(_, s) | PostError::Status(s) | PostError::NotJson(_, s) => Some(*s),
        }
    }
}

/// One JSON-RPC exchange: the reply body, or why there is none.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    max: usize,
) -> Result<serde_json::Value, PostError> {
    let mut resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| PostError::Http(e, None))?;
    let status = resp.status().as_u16();
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > max {
                    return Err(PostError::TooLarge(max, status));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return Err(PostError::Http(e, Some(status))),
        }
    }
    if !(200..300).contains(&status) {
        return Err(PostError::Status(status));
    }
    serde_json::from_slice(&buf).map_err(|e| PostError::NotJson(e, status))
}

/// Runs until shutdown.
pub async fn run(mut ctx: Ctx) -> Result<(), EvmError> {
    let s = ctx.settings.clone();
    let http = reqwest::Client::builder()
        .user_agent(crate::live::http::USER_AGENT)
        .timeout(s.timeout)
        .connect_timeout(s.timeout.min(Duration::from_secs(5)))
        .gzip(true)
        .build()?;
    let mut follower = match ctx
        .restored
        .take()
        .and_then(|b| ciborium::from_reader::<Follower, _>(b.as_slice()).ok())
    {
        Some(f) if f.settings() == &s.follower => {
            tracing::info!(block = ?f.processed(), pools = f.pools(), "chain source continues from its saved state");
            f
        }
        Some(_) => {
            tracing::warn!(
                "the saved chain state was made with other [source.evm] settings; starting over"
            );
            Follower::new(s.follower.clone())
        }
        None => Follower::new(s.follower.clone()),
    };
    if let Some(r) = ctx.recorder.as_mut() {
        let state = serde_json::to_vec(&follower).unwrap_or_default();
        if let Err(e) = r.write_response(
            ctx.clock.now_ms(),
            Source::Evm,
            chain::STATE_REQUEST,
            200,
            &state,
        ) {
            tracing::warn!(error = %e, "recording failed");
        }
    }
    let now = || ctx.clock.now_ms();
    let mut bucket = s.rate.full_bucket(now());
    let mut backoff = Backoff::new(s.backoff_base_ms, s.backoff_max_ms);
    let mut circuit = Circuit::new(s.circuit_failures, s.circuit_open_ms);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut last_save = now();
    let shown = dexpulse_core::settings::redact_url(&s.rpc_url);
    tracing::info!(rpc = %shown, chain = %s.follower.chain, pools = s.follower.pools.len(), factories = s.follower.factories.len(), "chain source started");
    let mut failures_in_a_row = 0u32;
    loop {
        let Some(call) = follower.next().cloned() else {
            ctx.metrics
                .evm
                .evm_behind
                .set(i64::try_from(follower.behind()).unwrap_or(i64::MAX));
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = tokio::time::sleep(s.poll) => {}
            }
            follower.wake();
            continue;
        };
        // The budget: each call of a batch counts.
        for _ in 0..call.weight() {
            loop {
                let t = now();
                if bucket.try_take(t) {
                    break;
                }
                let wait = u64::try_from((bucket.ready_at(t) - t).clamp(1, 60_000)).unwrap_or(1);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            }
        }
        let method = match &call {
            chain::rpc::Call::Head => "eth_blockNumber",
            chain::rpc::Call::Logs { .. } => "eth_getLogs",
            chain::rpc::Call::Headers { .. } => "eth_getBlockByNumber",
            chain::rpc::Call::Reads { .. } => "eth_call",
        };
        let request = call.to_request();
        let sent = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = post(&http, &s.rpc_url, &request, s.max_body_bytes) => r,
        };
        let t = now();
        let refused = match sent {
            Ok(body) => {
                ctx.metrics.live.upstream_request(CLASS, "200");
                ctx.metrics.evm.evm_calls(method, call.weight());
                if let Some(r) = ctx.recorder.as_mut() {
                    let request = serde_json::to_string(&call).unwrap_or_default();
                    let bytes = serde_json::to_vec(&body).unwrap_or_default();
                    if let Err(e) = r.write_response(t, Source::Evm, &request, 200, &bytes) {
                        tracing::warn!(error = %e, "recording failed");
                    }
                }
                let out = follower.on_reply(&call, &body);
                for p in &out.problems {
                    ctx.metrics.evm.evm_problems.inc();
                    tracing::warn!(problem = %p, "chain source");
                }
                let refused = out.refused;
                let tick = out.tick.is_some();
                if !out.snapshots.is_empty() {
                    ctx.health.data_received();
                }
                for input in chain::inputs(out) {
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        r = ctx.tx.send(input) => if r.is_err() { return Ok(()) },
                    }
                }
                // A range applied: the follower's state may go with the engine's next save.
                if tick
                    && ctx.save_every.is_some_and(|e| {
                        t - last_save >= i64::try_from(e.as_millis()).unwrap_or(i64::MAX)
                    })
                {
                    let mut bytes = Vec::new();
                    if ciborium::into_writer(&follower, &mut bytes).is_ok() {
                        last_save = t;
                        if ctx.tx.send(Input::SourceState(bytes)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                ctx.metrics
                    .evm
                    .evm_behind
                    .set(i64::try_from(follower.behind()).unwrap_or(i64::MAX));
                ctx.metrics
                    .evm
                    .evm_pools
                    .set(i64::try_from(follower.pools()).unwrap_or(i64::MAX));
                if let Some(b) = follower.processed() {
                    ctx.metrics
                        .evm
                        .evm_block
                        .set(i64::try_from(b).unwrap_or(i64::MAX));
                }
                refused.then(|| "the provider's reply was refused (see the log)".to_string())
            }
            Err(failed) => {
                ctx.metrics.live.upstream_request(
                    CLASS,
                    &failed
                        .status()
                        .map_or_else(|| "error".to_string(), |s| s.to_string()),
                );
                Some(failed.to_string())
            }
        };
        match refused {
            None => {
                backoff.succeed();
                circuit.succeed();
                failures_in_a_row = 0;
                ctx.health.set_upstream(CLASS, UpstreamState::default());
            }
            Some(why) => {
                failures_in_a_row += 1;
                circuit.fail(t);
                let wait = backoff.fail(t, None, &mut rng);
                let open = circuit.is_open(t);
                ctx.health.set_upstream(
                    CLASS,
                    UpstreamState {
                        circuit_open: open,
                        refusing: failures_in_a_row >= s.circuit_failures,
                        problem: Some(format!("{shown}: {why}")),
                    },
                );
                tracing::warn!(rpc = %shown, cause = %why, wait_ms = wait, "chain source: backing off");
                let until = if open {
                    circuit.open_until().max(t + wait)
                } else {
                    t + wait
                };
                let sleep = u64::try_from((until - t).clamp(1, 3_600_000)).unwrap_or(1);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
                }
            }
        }
    }
    if let Some(r) = ctx.recorder.as_mut() {
        if let Err(e) = r.flush() {
            tracing::warn!(error = %e, "flushing the recording failed");
        }
    }
    tracing::info!("chain source stopped");
    Ok(())
}
