//! Configuration: TOML (serde, unknown fields rejected) into one validated [`Config`]. Every
//! threshold of the signal engine lives here with the defaults of SIGNALS.md 5.9; an invalid
//! value is an error naming its field, which the binary turns into exit status 64. Nothing here
//! runs after start-up.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A configuration error. The message always names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: field `{field}` {message} (got {value})")]
    Invalid {
        field: &'static str,
        message: &'static str,
        value: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub hub: Hub,
    pub session: Session,
    pub auth: Auth,
    pub source: SourceConfig,
    pub signal: SignalConfig,
}

/// The prefix of environment overrides: `DEXPULSE_SERVER__BIND=0.0.0.0:8080` sets
/// `server.bind`; `__` separates the levels (field names have single underscores).
pub const ENV_PREFIX: &str = "DEXPULSE_";

impl Config {
    pub fn from_toml_str(text: &str, path: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, path, std::iter::empty())
    }

    /// Parses TOML, applies `DEXPULSE_A__B=value` overrides (the value read as a TOML value,
    /// else as a string), then validates.
    pub fn from_toml_with_env(
        text: &str,
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(&e))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            set_path(&mut table, &keys, parsed).map_err(|m| ConfigError::Parse {
                path: format!("environment {name}"),
                message: m,
            })?;
        }
        let cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file, then the process environment.
    pub fn load_with_env(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_with_env(
            &text,
            &path.display().to_string(),
            with_aliases(std::env::vars()),
        )
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.hub.validate()?;
        self.session.validate()?;
        self.auth.validate()?;
        self.source.validate()?;
        self.signal.validate()
    }
}

/// The documented short names for the upstream base URLs (to point the sources at a mirror).
const ENV_ALIASES: [(&str, &str); 2] = [
    (
        "DEXPULSE_DEXSCREENER_BASE_URL",
        "DEXPULSE_SOURCE__LIVE__DEXSCREENER__BASE_URL",
    ),
    (
        "DEXPULSE_GECKOTERMINAL_BASE_URL",
        "DEXPULSE_SOURCE__LIVE__GECKOTERMINAL__BASE_URL",
    ),
];

/// Rewrites the short aliases to their full names (values untouched: a URL is not a TOML
/// value, so it is read as a string).
pub fn with_aliases(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .map(|(k, v)| match ENV_ALIASES.iter().find(|(a, _)| *a == k) {
            Some((_, full)) => (full.to_string(), v),
            None => (k, v),
        })
        .collect()
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("empty key".to_string()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("`{first}` is not a table")),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Address for WebSocket and HTTP (one port).
    pub bind: String,
    /// Sessions at once, over all keys; more get 503 before the upgrade.
    pub max_connections: usize,
    /// How long shutdown waits for sessions to take their close frames.
    pub shutdown_grace_seconds: f64,
    /// `/readyz` fails when the source has sent nothing for this long.
    pub ready_max_silence_seconds: f64,
    /// SO_SNDBUF of accepted connections (0: the kernel's autotuning, up to several MiB).
    /// Bounded, a stalled client's backlog moves into its session queue soon, where it is
    /// counted, dropped with `lagged` and closed with 4008, instead of sitting in the kernel.
    pub send_buffer_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            bind: "127.0.0.1:8080".to_string(),
            max_connections: 10_000,
            shutdown_grace_seconds: 5.0,
            ready_max_silence_seconds: 120.0,
            send_buffer_bytes: 256 * 1024,
        }
    }
}

impl Server {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                "is not an address like 127.0.0.1:8080",
                &self.bind,
            ));
        }
        at_least_u("server.max_connections", self.max_connections as u64, 1)?;
        if self.send_buffer_bytes != 0 && !(4096..=64 << 20).contains(&self.send_buffer_bytes) {
            return Err(invalid(
                "server.send_buffer_bytes",
                "must be 0 (the kernel's autotuning) or between 4096 and 67108864",
                self.send_buffer_bytes.to_string(),
            ));
        }
        in_range(
            "server.shutdown_grace_seconds",
            self.shutdown_grace_seconds,
            0.0,
            600.0,
        )?;
        in_range(
            "server.ready_max_silence_seconds",
            self.ready_max_silence_seconds,
            1.0,
            86_400.0,
        )
    }
}

/// The broadcast hub: what is retained for `resume_from` and `/v1/signals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hub {
    /// Events kept at least (by count) ...
    pub retain_events: usize,
    /// ... and at least this long (by age); the ring keeps whichever is more.
    pub retain_seconds: f64,
    /// Hard cap on retained events, whatever their age.
    pub retain_max_events: usize,
    /// The in-process broadcast channel between hub and sessions (frames) for sessions that
    /// take every event.
    pub broadcast_capacity: usize,
    /// The same for each distinct filter set (sessions sharing a filter set share a channel).
    /// Smaller: every distinct filter set allocates its channel (about 40 bytes a slot).
    pub topic_capacity: usize,
    /// Distinct filter sets with a channel of their own; sessions with further sets share the
    /// channel of every event and filter for themselves (bounds what clients can allocate).
    pub max_filter_sets: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            retain_events: 1_000,
            retain_seconds: 120.0,
            retain_max_events: 100_000,
            broadcast_capacity: 8_192,
            topic_capacity: 1_024,
            max_filter_sets: 1_024,
        }
    }
}

impl Hub {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least_u("hub.retain_events", self.retain_events as u64, 1)?;
        in_range("hub.retain_seconds", self.retain_seconds, 0.0, 86_400.0)?;
        at_least_u(
            "hub.retain_max_events",
            self.retain_max_events as u64,
            self.retain_events as u64,
        )?;
        at_least_u("hub.broadcast_capacity", self.broadcast_capacity as u64, 16)?;
        at_least_u("hub.topic_capacity", self.topic_capacity as u64, 16)?;
        at_least_u("hub.max_filter_sets", self.max_filter_sets as u64, 1)
    }
}

/// One WebSocket session's limits (DESIGN.md 5.4, 5.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Session {
    pub heartbeat_seconds: f64,
    /// Outgoing queue bounds: messages and bytes.
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    /// A session whose queue stays full this long is closed with 4008.
    pub stall_close_seconds: f64,
    /// Inbound messages larger than this are closed with 1009.
    pub max_message_bytes: usize,
    /// Inbound rate limit (token bucket); a flood is closed with 1008.
    pub inbound_per_second: f64,
    pub inbound_burst: f64,
    pub max_subscriptions: usize,
    /// tungstenite's buffers, sized for many small outgoing frames (its 128 KiB defaults cost
    /// about 135 KiB per idle connection).
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Frames taken from the hub per wake-up; they are written with one flush.
    pub flush_batch: usize,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            heartbeat_seconds: 25.0,
            queue_max_messages: 4_096,
            queue_max_bytes: 1 << 20,
            stall_close_seconds: 4.0,
            max_message_bytes: 64 * 1024,
            inbound_per_second: 20.0,
            inbound_burst: 40.0,
            max_subscriptions: 32,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 8 * 1024,
            flush_batch: 64,
        }
    }
}

impl Session {
    fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "session.heartbeat_seconds",
            self.heartbeat_seconds,
            0.05,
            3_600.0,
        )?;
        at_least_u(
            "session.queue_max_messages",
            self.queue_max_messages as u64,
            1,
        )?;
        at_least_u("session.queue_max_bytes", self.queue_max_bytes as u64, 1024)?;
        in_range(
            "session.stall_close_seconds",
            self.stall_close_seconds,
            0.0,
            3_600.0,
        )?;
        at_least_u(
            "session.max_message_bytes",
            self.max_message_bytes as u64,
            256,
        )?;
        in_range(
            "session.inbound_per_second",
            self.inbound_per_second,
            0.01,
            1e6,
        )?;
        in_range("session.inbound_burst", self.inbound_burst, 1.0, 1e6)?;
        at_least_u(
            "session.max_subscriptions",
            self.max_subscriptions as u64,
            1,
        )?;
        at_least_u(
            "session.read_buffer_bytes",
            self.read_buffer_bytes as u64,
            256,
        )?;
        at_least_u("session.flush_batch", self.flush_batch as u64, 1)
    }
}

/// Optional API keys. With none configured the server is open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    #[serde(default = "default_key_connections")]
    pub max_connections: usize,
}

fn default_key_connections() -> usize {
    100
}

impl Auth {
    fn validate(&self) -> Result<(), ConfigError> {
        for k in &self.keys {
            if k.key.len() < 8 || k.key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "auth.keys.key",
                    "must be at least 8 characters, no spaces",
                    "a short or blank key",
                ));
            }
            at_least_u("auth.keys.max_connections", k.max_connections as u64, 1)?;
        }
        Ok(())
    }
}

/// Where snapshots come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The simulator, paced in real time.
    Simulator,
    /// A tape, at `speed` times its recorded pace.
    Replay,
    /// DexScreener and GeckoTerminal over HTTP (`[source.live]`).
    Live,
    /// Synthetic events straight into the hub at `bench_events_per_second`, labelled
    /// `"source":"bench"`: measures fan-out apart from the engine (config/bench.toml).
    Bench,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// `replay`: the tape file.
    pub tape: Option<String>,
    /// `replay`: pace multiplier (1 = as recorded; 0 = as fast as possible).
    pub speed: f64,
    /// `simulator`: scenarios (names, or "all"), seed and noise pairs.
    pub scenarios: Vec<String>,
    pub seed: u64,
    pub noise_pairs: usize,
    /// `simulator`: how many simulated minutes lie before now. The past is played at once (it
    /// warms the engine up), the rest in real time. The scripted events start at minute 90.
    pub lead_minutes: f64,
    /// `simulator`: simulated hours in all (afterwards the source idles).
    pub hours: f64,
    /// Snapshots waiting for the engine; a full channel slows the source, never drops.
    pub channel_capacity: usize,
    /// `live`: the upstreams, the watchlist and the schedule.
    pub live: Live,
    /// `live`: write every upstream response to this tape (`serve --record FILE`).
    pub record: Option<String>,
    /// `bench`: events published per second, and over how many synthetic pairs.
    pub bench_events_per_second: f64,
    pub bench_pairs: usize,
}

/// The live sources (DESIGN.md 2). Rates default to a safety margin below the documented limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Live {
    /// Pairs to track from the start, `chain:address`; never evicted.
    pub pairs: Vec<String>,
    /// GeckoTerminal pools to track, `chain:address` (DexScreener chain names).
    pub gecko_pools: Vec<String>,
    pub max_pairs: usize,
    /// Discovery (profiles, boosts, new and trending pools) adds pairs on these chains.
    pub discovery: bool,
    pub discovery_chains: Vec<String>,
    pub discovery_interval_seconds: f64,
    /// A discovered pair needs this much liquidity to be tracked, and is evicted below a tenth.
    pub min_liquidity_usd: f64,
    /// Misses (asked for, not returned) before a discovered pair is evicted.
    pub evict_after_misses: u32,
    /// Poll a pair at most this often (hot pairs twice as often); the budget decides the rest.
    pub min_interval_seconds: f64,
    /// No pair waits longer than this, whatever the priorities.
    pub max_staleness_seconds: f64,
    /// Wall-clock ticks for the engine's time-outs.
    pub tick_seconds: f64,
    pub timeout_seconds: f64,
    pub max_in_flight: usize,
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
    pub dexscreener: DexScreener,
    pub geckoterminal: GeckoTerminal,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            pairs: Vec::new(),
            gecko_pools: Vec::new(),
            max_pairs: 2_000,
            discovery: true,
            discovery_chains: vec!["solana".to_string()],
            discovery_interval_seconds: 60.0,
            min_liquidity_usd: 10_000.0,
            evict_after_misses: 3,
            min_interval_seconds: 10.0,
            max_staleness_seconds: 300.0,
            tick_seconds: 5.0,
            timeout_seconds: 10.0,
            max_in_flight: 4,
            backoff_base_seconds: 1.0,
            backoff_max_seconds: 120.0,
            circuit_failures: 5,
            circuit_open_seconds: 60.0,
            seed: 1,
            hot_txns_m5: 10,
            hot_abs_pc_m5: 3.0,
            search_queries: Vec::new(),
            dexscreener: DexScreener::default(),
            geckoterminal: GeckoTerminal::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DexScreener {
    pub enabled: bool,
    /// Also `DEXPULSE_DEXSCREENER_BASE_URL`.
    pub base_url: String,
    /// Pairs, tokens, search: 300 req/min documented.
    pub rate_per_minute: f64,
    /// Token profiles and boosts: 60 req/min documented.
    pub discovery_rate_per_minute: f64,
    /// Pair ids per `/latest/dex/pairs` call. The docs disagree (30, or 1); a 4xx on a batch
    /// halves it for the rest of the run.
    pub pairs_batch: usize,
}

impl Default for DexScreener {
    fn default() -> Self {
        DexScreener {
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
pub struct GeckoTerminal {
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

impl Default for GeckoTerminal {
    fn default() -> Self {
        GeckoTerminal {
            enabled: true,
            base_url: "https://api.geckoterminal.com/api/v2".to_string(),
            rate_per_minute: 20.0,
            pools_batch: 30,
            min_interval_seconds: 60.0,
            discovery: false,
        }
    }
}

impl Live {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, list) in [
            ("source.live.pairs", &self.pairs),
            ("source.live.gecko_pools", &self.gecko_pools),
        ] {
            for p in list {
                if crate::source::live::parse_pair(p).is_none() {
                    return Err(invalid(field, "must hold `chain:address` entries", p));
                }
            }
        }
        at_least_u("source.live.max_pairs", self.max_pairs as u64, 1)?;
        in_range(
            "source.live.discovery_interval_seconds",
            self.discovery_interval_seconds,
            1.0,
            86_400.0,
        )?;
        in_range(
            "source.live.min_liquidity_usd",
            self.min_liquidity_usd,
            0.0,
            BIG,
        )?;
        at_least_u(
            "source.live.evict_after_misses",
            u64::from(self.evict_after_misses),
            1,
        )?;
        in_range(
            "source.live.min_interval_seconds",
            self.min_interval_seconds,
            0.1,
            86_400.0,
        )?;
        in_range(
            "source.live.max_staleness_seconds",
            self.max_staleness_seconds,
            self.min_interval_seconds,
            86_400.0,
        )?;
        in_range("source.live.tick_seconds", self.tick_seconds, 0.05, 3_600.0)?;
        in_range(
            "source.live.timeout_seconds",
            self.timeout_seconds,
            0.05,
            600.0,
        )?;
        at_least_u("source.live.max_in_flight", self.max_in_flight as u64, 1)?;
        in_range(
            "source.live.backoff_base_seconds",
            self.backoff_base_seconds,
            0.001,
            3_600.0,
        )?;
        in_range(
            "source.live.backoff_max_seconds",
            self.backoff_max_seconds,
            self.backoff_base_seconds,
            86_400.0,
        )?;
        at_least_u(
            "source.live.circuit_failures",
            u64::from(self.circuit_failures),
            1,
        )?;
        in_range(
            "source.live.circuit_open_seconds",
            self.circuit_open_seconds,
            0.0,
            86_400.0,
        )?;
        in_range("source.live.hot_abs_pc_m5", self.hot_abs_pc_m5, 0.0, 1e6)?;
        if self.search_queries.iter().any(|q| q.trim().is_empty()) {
            return Err(invalid(
                "source.live.search_queries",
                "must not hold empty queries",
                "\"\"",
            ));
        }
        let d = &self.dexscreener;
        if !(d.base_url.starts_with("http://") || d.base_url.starts_with("https://")) {
            return Err(invalid(
                "source.live.dexscreener.base_url",
                "must be an http(s) URL",
                &d.base_url,
            ));
        }
        in_range(
            "source.live.dexscreener.rate_per_minute",
            d.rate_per_minute,
            0.1,
            100_000.0,
        )?;
        in_range(
            "source.live.dexscreener.discovery_rate_per_minute",
            d.discovery_rate_per_minute,
            0.1,
            100_000.0,
        )?;
        if !(1..=30).contains(&d.pairs_batch) {
            return Err(invalid(
                "source.live.dexscreener.pairs_batch",
                "must be from 1 to 30",
                d.pairs_batch,
            ));
        }
        let g = &self.geckoterminal;
        if !(g.base_url.starts_with("http://") || g.base_url.starts_with("https://")) {
            return Err(invalid(
                "source.live.geckoterminal.base_url",
                "must be an http(s) URL",
                &g.base_url,
            ));
        }
        in_range(
            "source.live.geckoterminal.rate_per_minute",
            g.rate_per_minute,
            0.1,
            100_000.0,
        )?;
        if !(1..=30).contains(&g.pools_batch) {
            return Err(invalid(
                "source.live.geckoterminal.pools_batch",
                "must be from 1 to 30",
                g.pools_batch,
            ));
        }
        in_range(
            "source.live.geckoterminal.min_interval_seconds",
            g.min_interval_seconds,
            0.0,
            86_400.0,
        )
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Simulator,
            tape: None,
            speed: 1.0,
            scenarios: vec!["all".to_string()],
            seed: 7,
            noise_pairs: 20,
            lead_minutes: 90.8,
            hours: 24.0,
            channel_capacity: 1_024,
            live: Live::default(),
            record: None,
            bench_events_per_second: 1_000.0,
            bench_pairs: 100,
        }
    }
}

impl SourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        in_range("source.speed", self.speed, 0.0, 1e6)?;
        in_range("source.lead_minutes", self.lead_minutes, 0.0, 100_000.0)?;
        in_range("source.hours", self.hours, 0.01, 24.0 * 365.0)?;
        at_least_u("source.channel_capacity", self.channel_capacity as u64, 1)?;
        in_range(
            "source.bench_events_per_second",
            self.bench_events_per_second,
            0.001,
            1e7,
        )?;
        at_least_u("source.bench_pairs", self.bench_pairs as u64, 1)?;
        self.live.validate()?;
        if self.kind == SourceKind::Replay && self.tape.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "source.tape",
                "is required when source.kind = \"replay\"",
                "nothing",
            ));
        }
        for s in &self.scenarios {
            if s != "all" && crate::source::simulator::Scenario::parse(s).is_none() {
                return Err(invalid("source.scenarios", "names an unknown scenario", s));
            }
        }
        Ok(())
    }
}

/// The signal engine's parameters. Its canonical JSON is what `params_hash` is computed over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    pub gates: Gates,
    pub momentum: Momentum,
    pub volume_surge: VolumeSurge,
    pub buy_pressure: BuyPressure,
    pub pump_reversal: PumpReversal,
    pub liquidity: Liquidity,
    pub risk: Risk,
    pub fsm: Fsm,
    pub freshness: Freshness,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gates {
    pub min_liquidity_usd_bullish: f64,
    pub min_liquidity_ref_usd_bearish: f64,
    pub min_age_minutes_bullish: f64,
    pub min_txns_h1: u64,
    pub min_volume_h1_usd: f64,
    pub min_txns_h1_bearish: u64,
    pub new_pair_max_age_minutes: f64,
    pub new_pair_min_liquidity_usd: f64,
    pub new_pair_min_txns_h1: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_liquidity_usd_bullish: 10_000.0,
            min_liquidity_ref_usd_bearish: 5_000.0,
            min_age_minutes_bullish: 60.0,
            min_txns_h1: 20,
            min_volume_h1_usd: 5_000.0,
            min_txns_h1_bearish: 5,
            new_pair_max_age_minutes: 60.0,
            new_pair_min_liquidity_usd: 5_000.0,
            new_pair_min_txns_h1: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Momentum {
    pub enter_pc_h1: f64,
    pub enter_pc_m5: f64,
    pub exit_pc_h1: f64,
    pub exit_pc_m5: f64,
}

impl Default for Momentum {
    fn default() -> Self {
        Momentum {
            enter_pc_h1: 15.0,
            enter_pc_m5: 3.0,
            exit_pc_h1: 7.5,
            exit_pc_m5: -3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeSurge {
    pub baseline_floor_usd_per_min: f64,
    pub enter_r5: f64,
    pub enter_r60: f64,
    pub min_volume_m5_usd: f64,
    pub min_volume_h1_usd: f64,
    pub z_threshold: f64,
    pub z_half_life_minutes: f64,
    pub z_min_obs: u32,
    pub z_min_span_minutes: f64,
    pub exit_ratio: f64,
    /// `P_m5` beyond which a surge has a direction (bullish above, bearish below minus it).
    pub direction_pc_m5: f64,
    /// `|P_m5|` an open surge needs to flip direction (a pump turning into a dump).
    pub flip_pc_m5: f64,
    /// A surge must be broad: the trade count must rise significantly too, `2·(sqrt N − sqrt μ)`
    /// against its baseline μ at least this (a variance-stabilised Poisson z; N_m5 against the
    /// rest of h1 for the R5 and z paths, N_h1 against the rest of h6 for R60), so that two
    /// whale trades in a quiet pool are not a surge.
    pub min_count_z: f64,
}

impl Default for VolumeSurge {
    fn default() -> Self {
        VolumeSurge {
            baseline_floor_usd_per_min: 20.0,
            enter_r5: 3.0,
            enter_r60: 2.5,
            min_volume_m5_usd: 5_000.0,
            min_volume_h1_usd: 25_000.0,
            z_threshold: 3.0,
            z_half_life_minutes: 360.0,
            z_min_obs: 30,
            z_min_span_minutes: 360.0,
            exit_ratio: 1.5,
            direction_pc_m5: 1.0,
            flip_pc_m5: 3.0,
            min_count_z: 3.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuyPressure {
    pub prior: f64,
    pub enter_bp_h1: f64,
    pub exit_bp_h1: f64,
    pub enter_bp_m5: f64,
    pub min_txns_h1: u64,
    pub min_txns_m5: u64,
    pub sell_enter_bp_m5: f64,
    /// The imbalance must also be significant: `|B_h1 − S_h1| / sqrt(N_h1)` at least this (a
    /// binomial z-score). BP_h1 ≥ 0.62 over 60 trades is a coin-flip streak, not pressure.
    pub min_imbalance_z: f64,
}

impl Default for BuyPressure {
    fn default() -> Self {
        BuyPressure {
            prior: 5.0,
            enter_bp_h1: 0.62,
            exit_bp_h1: 0.56,
            enter_bp_m5: 0.55,
            min_txns_h1: 50,
            min_txns_m5: 10,
            sell_enter_bp_m5: 0.45,
            min_imbalance_z: 3.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PumpReversal {
    pub enter_pc_m5: f64,
    pub prior_pc_h1: f64,
    pub prior_pc_h6: f64,
    pub drawdown: f64,
    pub high_lookback_minutes: f64,
    pub high_min_rise_pct: f64,
    pub exit_pc_m5: f64,
}

impl Default for PumpReversal {
    fn default() -> Self {
        PumpReversal {
            enter_pc_m5: -10.0,
            prior_pc_h1: 30.0,
            prior_pc_h6: 100.0,
            drawdown: 0.25,
            high_lookback_minutes: 30.0,
            high_min_rise_pct: 30.0,
            exit_pc_m5: -3.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Liquidity {
    pub drain_lookback_minutes: f64,
    pub drain_enter: f64,
    pub drain_exit: f64,
    pub drain_exit_minutes: f64,
    pub rug_enter: f64,
    pub rug_abs_floor_usd: f64,
    pub rug_abs_ref_usd: f64,
    pub rug_crash_pc_m5: f64,
    pub rug_crash_lp_removed: f64,
    /// Pool labels that mean concentrated liquidity, where `K = sqrt(base·quote)` does not hold
    /// and the USD liquidity is used instead (matched case-insensitively).
    pub concentrated_labels: Vec<String>,
}

impl Default for Liquidity {
    fn default() -> Self {
        Liquidity {
            drain_lookback_minutes: 30.0,
            drain_enter: 0.25,
            drain_exit: 0.10,
            drain_exit_minutes: 15.0,
            rug_enter: 0.60,
            rug_abs_floor_usd: 1_000.0,
            rug_abs_ref_usd: 10_000.0,
            rug_crash_pc_m5: -50.0,
            rug_crash_lp_removed: 0.30,
            concentrated_labels: ["CLMM", "DLMM", "wp", "v3", "v4", "DYN", "DYN2"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// Risk flags and their score penalties (SIGNALS.md 5.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Risk {
    pub sell_side_absent_min_buys_h1: u64,
    pub sell_side_absent_penalty: u32,
    pub sell_side_absent_cap: u8,
    pub wash_lvr: f64,
    pub wash_max_abs_pc_h24: f64,
    /// A surge on a price this flat (|P_m5| below it) with balanced flow is suspected wash
    /// trading. SIGNALS.md proposes 0.5; 1.0 is the band in which a surge has no direction,
    /// and one arbitrage correction in a deep pool already moves the price 0.5 %.
    pub wash_max_abs_pc_m5: f64,
    pub wash_penalty: u32,
    pub few_wallets_ratio: f64,
    pub few_wallets_penalty: u32,
    pub lvr_extreme: f64,
    pub lvr_extreme_penalty: u32,
    pub lvr_elevated: f64,
    pub lvr_elevated_penalty: u32,
    pub vertical_spike_pc_m5: f64,
    pub vertical_spike_penalty: u32,
    pub thin_liquidity_usd: f64,
    pub thin_liquidity_penalty: u32,
    pub low_float_fdv_to_liquidity: f64,
    pub low_float_penalty: u32,
}

impl Default for Risk {
    fn default() -> Self {
        Risk {
            sell_side_absent_min_buys_h1: 30,
            sell_side_absent_penalty: 30,
            sell_side_absent_cap: 40,
            wash_lvr: 20.0,
            wash_max_abs_pc_h24: 5.0,
            wash_max_abs_pc_m5: 1.0,
            wash_penalty: 20,
            few_wallets_ratio: 0.15,
            few_wallets_penalty: 15,
            lvr_extreme: 20.0,
            lvr_extreme_penalty: 15,
            lvr_elevated: 10.0,
            lvr_elevated_penalty: 5,
            vertical_spike_pc_m5: 15.0,
            vertical_spike_penalty: 10,
            thin_liquidity_usd: 25_000.0,
            thin_liquidity_penalty: 5,
            low_float_fdv_to_liquidity: 200.0,
            low_float_penalty: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fsm {
    pub confirm_snapshots: u32,
    pub confirm_min_seconds: f64,
    pub pending_timeout_minutes: f64,
    pub exit_snapshots: u32,
    pub cooldown_minutes: f64,
    pub escalation_points: u8,
    pub escalation_min_seconds: f64,
    pub data_gap_close_minutes: f64,
    pub rug_cooldown_hours: f64,
    pub min_emit_score: u8,
    /// A pair not observed at all for this long, with nothing open, pending or cooling down,
    /// is forgotten (its state freed); if it comes back it starts afresh. Bounds the engine's
    /// memory under discovery.
    pub forget_idle_hours: f64,
}

impl Default for Fsm {
    fn default() -> Self {
        Fsm {
            confirm_snapshots: 2,
            confirm_min_seconds: 60.0,
            pending_timeout_minutes: 10.0,
            exit_snapshots: 2,
            cooldown_minutes: 30.0,
            escalation_points: 15,
            escalation_min_seconds: 300.0,
            data_gap_close_minutes: 15.0,
            rug_cooldown_hours: 24.0,
            min_emit_score: 40,
            forget_idle_hours: 48.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Freshness {
    pub price_jump_suspect_factor: f64,
    pub price_jump_window_minutes: f64,
    pub window_monotonic_tolerance: f64,
    pub stale_m5_proof_minutes: f64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            price_jump_suspect_factor: 10.0,
            price_jump_window_minutes: 10.0,
            window_monotonic_tolerance: 0.01,
            stale_m5_proof_minutes: 6.0,
        }
    }
}

fn invalid(field: &'static str, message: &'static str, value: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        field,
        message,
        value: value.to_string(),
    }
}

/// `x` must be a finite number in `[lo, hi]`.
fn in_range(field: &'static str, x: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if x.is_finite() && x >= lo && x <= hi {
        Ok(())
    } else {
        Err(invalid(
            field,
            "is out of range",
            format!("{x}; allowed {lo}..={hi}"),
        ))
    }
}

fn at_least_u(field: &'static str, x: u64, lo: u64) -> Result<(), ConfigError> {
    if x >= lo {
        Ok(())
    } else {
        Err(invalid(field, "is too small", format!("{x}; minimum {lo}")))
    }
}

const BIG: f64 = 1e15;

impl SignalConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gates;
        in_range(
            "signal.gates.min_liquidity_usd_bullish",
            g.min_liquidity_usd_bullish,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.gates.min_liquidity_ref_usd_bearish",
            g.min_liquidity_ref_usd_bearish,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.gates.min_age_minutes_bullish",
            g.min_age_minutes_bullish,
            0.0,
            525_600.0,
        )?;
        in_range(
            "signal.gates.min_volume_h1_usd",
            g.min_volume_h1_usd,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.gates.new_pair_max_age_minutes",
            g.new_pair_max_age_minutes,
            1.0,
            1440.0,
        )?;
        in_range(
            "signal.gates.new_pair_min_liquidity_usd",
            g.new_pair_min_liquidity_usd,
            0.0,
            BIG,
        )?;

        let m = &self.momentum;
        in_range("signal.momentum.enter_pc_h1", m.enter_pc_h1, 0.1, 10_000.0)?;
        in_range("signal.momentum.enter_pc_m5", m.enter_pc_m5, 0.0, 10_000.0)?;
        in_range(
            "signal.momentum.exit_pc_h1",
            m.exit_pc_h1,
            0.0,
            m.enter_pc_h1,
        )?;
        in_range("signal.momentum.exit_pc_m5", m.exit_pc_m5, -100.0, 0.0)?;

        let v = &self.volume_surge;
        in_range(
            "signal.volume_surge.baseline_floor_usd_per_min",
            v.baseline_floor_usd_per_min,
            1e-6,
            BIG,
        )?;
        in_range("signal.volume_surge.enter_r5", v.enter_r5, 1.0, 1e6)?;
        in_range("signal.volume_surge.enter_r60", v.enter_r60, 1.0, 1e6)?;
        in_range(
            "signal.volume_surge.min_volume_m5_usd",
            v.min_volume_m5_usd,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.volume_surge.min_volume_h1_usd",
            v.min_volume_h1_usd,
            0.0,
            BIG,
        )?;
        in_range("signal.volume_surge.z_threshold", v.z_threshold, 0.5, 100.0)?;
        in_range(
            "signal.volume_surge.z_half_life_minutes",
            v.z_half_life_minutes,
            1.0,
            100_000.0,
        )?;
        at_least_u("signal.volume_surge.z_min_obs", u64::from(v.z_min_obs), 2)?;
        in_range(
            "signal.volume_surge.z_min_span_minutes",
            v.z_min_span_minutes,
            0.0,
            100_000.0,
        )?;
        in_range(
            "signal.volume_surge.exit_ratio",
            v.exit_ratio,
            0.0,
            v.enter_r5.min(v.enter_r60),
        )?;
        in_range(
            "signal.volume_surge.direction_pc_m5",
            v.direction_pc_m5,
            0.0,
            100.0,
        )?;
        in_range(
            "signal.volume_surge.flip_pc_m5",
            v.flip_pc_m5,
            v.direction_pc_m5,
            100.0,
        )?;
        in_range("signal.volume_surge.min_count_z", v.min_count_z, 0.0, 100.0)?;

        let b = &self.buy_pressure;
        in_range("signal.buy_pressure.prior", b.prior, 0.0, 1e6)?;
        in_range("signal.buy_pressure.enter_bp_h1", b.enter_bp_h1, 0.5, 1.0)?;
        in_range(
            "signal.buy_pressure.exit_bp_h1",
            b.exit_bp_h1,
            0.5,
            b.enter_bp_h1,
        )?;
        in_range("signal.buy_pressure.enter_bp_m5", b.enter_bp_m5, 0.0, 1.0)?;
        in_range(
            "signal.buy_pressure.sell_enter_bp_m5",
            b.sell_enter_bp_m5,
            0.0,
            1.0,
        )?;
        at_least_u("signal.buy_pressure.min_txns_h1", b.min_txns_h1, 1)?;
        in_range(
            "signal.buy_pressure.min_imbalance_z",
            b.min_imbalance_z,
            0.0,
            100.0,
        )?;

        let p = &self.pump_reversal;
        in_range(
            "signal.pump_reversal.enter_pc_m5",
            p.enter_pc_m5,
            -100.0,
            0.0,
        )?;
        in_range(
            "signal.pump_reversal.exit_pc_m5",
            p.exit_pc_m5,
            p.enter_pc_m5,
            0.0,
        )?;
        in_range("signal.pump_reversal.prior_pc_h1", p.prior_pc_h1, 0.0, 1e6)?;
        in_range("signal.pump_reversal.prior_pc_h6", p.prior_pc_h6, 0.0, 1e6)?;
        in_range("signal.pump_reversal.drawdown", p.drawdown, 0.01, 1.0)?;
        in_range(
            "signal.pump_reversal.high_lookback_minutes",
            p.high_lookback_minutes,
            1.0,
            1440.0,
        )?;
        in_range(
            "signal.pump_reversal.high_min_rise_pct",
            p.high_min_rise_pct,
            0.0,
            1e6,
        )?;

        let l = &self.liquidity;
        in_range(
            "signal.liquidity.drain_lookback_minutes",
            l.drain_lookback_minutes,
            1.0,
            1440.0,
        )?;
        in_range("signal.liquidity.drain_enter", l.drain_enter, 0.01, 1.0)?;
        in_range(
            "signal.liquidity.drain_exit",
            l.drain_exit,
            0.0,
            l.drain_enter,
        )?;
        in_range(
            "signal.liquidity.drain_exit_minutes",
            l.drain_exit_minutes,
            0.0,
            1440.0,
        )?;
        in_range(
            "signal.liquidity.rug_enter",
            l.rug_enter,
            l.drain_enter,
            1.0,
        )?;
        in_range(
            "signal.liquidity.rug_abs_floor_usd",
            l.rug_abs_floor_usd,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.liquidity.rug_abs_ref_usd",
            l.rug_abs_ref_usd,
            l.rug_abs_floor_usd,
            BIG,
        )?;
        in_range(
            "signal.liquidity.rug_crash_pc_m5",
            l.rug_crash_pc_m5,
            -100.0,
            0.0,
        )?;
        in_range(
            "signal.liquidity.rug_crash_lp_removed",
            l.rug_crash_lp_removed,
            0.0,
            1.0,
        )?;

        let r = &self.risk;
        in_range("signal.risk.wash_lvr", r.wash_lvr, 0.0, 1e9)?;
        in_range(
            "signal.risk.wash_max_abs_pc_h24",
            r.wash_max_abs_pc_h24,
            0.0,
            1e6,
        )?;
        in_range(
            "signal.risk.few_wallets_ratio",
            r.few_wallets_ratio,
            0.0,
            1.0,
        )?;
        in_range(
            "signal.risk.lvr_extreme",
            r.lvr_extreme,
            r.lvr_elevated,
            1e9,
        )?;
        in_range("signal.risk.lvr_elevated", r.lvr_elevated, 0.0, 1e9)?;
        in_range(
            "signal.risk.vertical_spike_pc_m5",
            r.vertical_spike_pc_m5,
            0.0,
            1e6,
        )?;
        in_range(
            "signal.risk.thin_liquidity_usd",
            r.thin_liquidity_usd,
            0.0,
            BIG,
        )?;
        in_range(
            "signal.risk.low_float_fdv_to_liquidity",
            r.low_float_fdv_to_liquidity,
            0.0,
            1e12,
        )?;
        in_range(
            "signal.risk.sell_side_absent_cap",
            f64::from(r.sell_side_absent_cap),
            0.0,
            100.0,
        )?;

        let f = &self.fsm;
        at_least_u(
            "signal.fsm.confirm_snapshots",
            u64::from(f.confirm_snapshots),
            1,
        )?;
        at_least_u("signal.fsm.exit_snapshots", u64::from(f.exit_snapshots), 1)?;
        in_range(
            "signal.fsm.confirm_min_seconds",
            f.confirm_min_seconds,
            0.0,
            86_400.0,
        )?;
        in_range(
            "signal.fsm.pending_timeout_minutes",
            f.pending_timeout_minutes,
            0.1,
            1440.0,
        )?;
        in_range(
            "signal.fsm.cooldown_minutes",
            f.cooldown_minutes,
            0.0,
            10_080.0,
        )?;
        in_range(
            "signal.fsm.escalation_min_seconds",
            f.escalation_min_seconds,
            0.0,
            86_400.0,
        )?;
        in_range(
            "signal.fsm.data_gap_close_minutes",
            f.data_gap_close_minutes,
            0.1,
            1440.0,
        )?;
        in_range(
            "signal.fsm.rug_cooldown_hours",
            f.rug_cooldown_hours,
            0.0,
            8760.0,
        )?;
        in_range(
            "signal.fsm.forget_idle_hours",
            f.forget_idle_hours,
            1.0,
            8760.0,
        )?;
        in_range(
            "signal.fsm.min_emit_score",
            f64::from(f.min_emit_score),
            0.0,
            100.0,
        )?;
        at_least_u(
            "signal.fsm.escalation_points",
            u64::from(f.escalation_points),
            1,
        )?;

        let fr = &self.freshness;
        in_range(
            "signal.freshness.price_jump_suspect_factor",
            fr.price_jump_suspect_factor,
            1.5,
            1e6,
        )?;
        in_range(
            "signal.freshness.price_jump_window_minutes",
            fr.price_jump_window_minutes,
            0.0,
            1440.0,
        )?;
        in_range(
            "signal.freshness.window_monotonic_tolerance",
            fr.window_monotonic_tolerance,
            0.0,
            1.0,
        )?;
        in_range(
            "signal.freshness.stale_m5_proof_minutes",
            fr.stale_m5_proof_minutes,
            0.5,
            1440.0,
        )?;
        Ok(())
    }

    /// sha256 of the canonical JSON of these parameters, first 16 bytes in hex: every event
    /// carries it, so that an outcome study knows which thresholds produced the event.
    pub fn params_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        // Struct field order is fixed, so the JSON is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, expect_field: Option<&str>) {
        let got = Config::from_toml_str(toml_text, "test.toml");
        match (got, expect_field) {
            (Ok(_), None) => {}
            (Err(e), Some(field)) => {
                let msg = e.to_string();
                assert!(msg.contains(field), "error {msg:?} does not name {field:?}");
            }
            (Ok(_), Some(field)) => panic!("accepted, expected an error naming {field}"),
            (Err(e), None) => panic!("rejected: {e}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        check("", None);
        check("[signal.momentum]\nenter_pc_h1 = 20.0\n", None);
        check(
            "[signal.momentum]\nenter_pc_h1 = -1.0\n",
            Some("signal.momentum.enter_pc_h1"),
        );
        check(
            "[signal.momentum]\nexit_pc_h1 = 99.0\n",
            Some("signal.momentum.exit_pc_h1"),
        );
        check(
            "[signal.fsm]\nconfirm_snapshots = 0\n",
            Some("signal.fsm.confirm_snapshots"),
        );
        check("[signal.gates]\nmin_txns_h1 = -3\n", Some("min_txns_h1"));
        check(
            "[signal.momentum]\nenter_pc_hl = 3.0\n",
            Some("enter_pc_hl"),
        );
        check(
            "[signal.momentum]\nenter_pc_h1 = \"lots\"\n",
            Some("enter_pc_h1"),
        );
        check("[signl]\n", Some("signl"));
        check(
            "[signal.freshness]\nwindow_monotonic_tolerance = nan\n",
            Some("window_monotonic_tolerance"),
        );
    }

    #[test]
    fn server_sections_validate() {
        check("[server]\nbind = \"nowhere\"\n", Some("server.bind"));
        check(
            "[server]\nsend_buffer_bytes = 100\n",
            Some("server.send_buffer_bytes"),
        );
        check("[server]\nsend_buffer_bytes = 0\n", None);
        check(
            "[session]\nqueue_max_bytes = 10\n",
            Some("session.queue_max_bytes"),
        );
        check("[source]\nkind = \"replay\"\n", Some("source.tape"));
        check("[source]\nkind = \"ftp\"\n", Some("kind"));
        check(
            "[source]\nscenarios = [\"moon\"]\n",
            Some("source.scenarios"),
        );
        check("[[auth.keys]]\nkey = \"abc\"\n", Some("auth.keys.key"));
        check(
            "[[auth.keys]]\nkey = \"abcdefgh1\"\nmax_connections = 2\n",
            None,
        );
    }

    #[test]
    fn environment_overrides_apply_and_are_validated() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let cfg = Config::from_toml_with_env(
            "[server]\nbind = \"127.0.0.1:1\"\n",
            "t",
            env(&[
                ("DEXPULSE_SERVER__BIND", "0.0.0.0:9000"),
                ("DEXPULSE_SIGNAL__FSM__MIN_EMIT_SCORE", "50"),
                ("DEXPULSE_SOURCE__SCENARIOS", "[\"breakout\"]"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.bind, "0.0.0.0:9000");
        assert_eq!(cfg.signal.fsm.min_emit_score, 50);
        assert_eq!(cfg.source.scenarios, ["breakout"]);
        let err = Config::from_toml_with_env(
            "",
            "t",
            env(&[("DEXPULSE_SESSION__HEARTBEAT_SECONDS", "-1")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("session.heartbeat_seconds"),
            "{err}"
        );
        let err = Config::from_toml_with_env("", "t", env(&[("DEXPULSE_SERVER__BINDD", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
    }

    #[test]
    fn the_shipped_default_config_is_the_default() {
        let text = include_str!("../config/default.toml");
        let cfg = Config::from_toml_str(text, "config/default.toml").unwrap();
        assert_eq!(cfg.signal, SignalConfig::default());
        assert_eq!(cfg.hub, Hub::default());
        assert_eq!(cfg.session, Session::default());
        assert_eq!(cfg.source.kind, SourceKind::Live);
        assert_eq!(cfg.source.live, Live::default());
        let demo = include_str!("../config/demo.toml");
        let demo = Config::from_toml_str(demo, "config/demo.toml").unwrap();
        assert_eq!(demo.source.kind, SourceKind::Simulator);
    }

    #[test]
    fn params_hash_changes_with_any_threshold() {
        let a = SignalConfig::default();
        let mut b = a.clone();
        b.momentum.enter_pc_m5 = 3.5;
        assert_ne!(a.params_hash(), b.params_hash());
        assert_eq!(a.params_hash(), SignalConfig::default().params_hash());
    }
}
