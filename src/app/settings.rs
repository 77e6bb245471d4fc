//! The composition of settings (docs/configuration.md): one raw document made of every owner's
//! raw section, layered the same way for every command, defaults < file < environment <
//! command line, then parsed once by each owner into its typed settings. An error names the
//! field and where its bad value came from (the file, the environment variable, the flag, or
//! the default).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use dexpulse_core::settings::{at_least, in_range, FieldError};
use dexpulse_core::signal::{Params, RawParams};
use dexpulse_core::source::simulator;

use crate::server::{auth, session};
use crate::{cluster, evm, hub, live, server, store};

/// The prefix of environment overrides: `DEXPULSE_SERVER__BIND=0.0.0.0:8080` sets
/// `server.bind`; `__` separates the levels (field names have single underscores).
pub const ENV_PREFIX: &str = "DEXPULSE_";

/// The documented short names: the upstream base URLs (to point the sources at a mirror) and
/// the sinks' list.
const ENV_ALIASES: [(&str, &str); 3] = [
    // The whole list of alert sinks, as TOML (docs/sinks.md).
    ("DEXPULSE_SINKS", "sinks"),
    (
        "DEXPULSE_DEXSCREENER_BASE_URL",
        "source.live.dexscreener.base_url",
    ),
    (
        "DEXPULSE_GECKOTERMINAL_BASE_URL",
        "source.live.geckoterminal.base_url",
    ),
];

/// Where the source's data comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The simulator, paced in real time (`[source.simulator]`).
    #[default]
    Simulator,
    /// A tape, at `speed` times its recorded pace (`[source.replay]`).
    Replay,
    /// DexScreener and GeckoTerminal over HTTP (`[source.live]`).
    Live,
    /// Synthetic events straight into the hub (`[source.bench]`), labelled `"source":"bench"`:
    /// measures fan-out apart from the engine (config/bench.toml).
    Bench,
    /// A chain's own logs over JSON-RPC: Uniswap V2 pairs and V3 pools (`[source.evm]`).
    Evm,
}

/// `[source.replay]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReplay {
    pub tape: Option<PathBuf>,
    /// Pace multiplier (1 = as recorded; 0 = as fast as the engine takes it).
    pub speed: f64,
}

impl Default for RawReplay {
    fn default() -> Self {
        RawReplay {
            tape: None,
            speed: 1.0,
        }
    }
}

/// `[source.bench]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBench {
    /// Events published per second, over how many synthetic pairs.
    pub events_per_second: f64,
    pub pairs: usize,
}

impl Default for RawBench {
    fn default() -> Self {
        RawBench {
            events_per_second: 1_000.0,
            pairs: 100,
        }
    }
}

/// `[source]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSource {
    pub kind: SourceKind,
    /// Inputs waiting for the engine; a full channel slows the source, never drops.
    pub channel_capacity: usize,
    pub simulator: simulator::RawSettings,
    pub replay: RawReplay,
    pub bench: RawBench,
    pub live: live::RawSettings,
    pub evm: evm::RawSettings,
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            kind: SourceKind::Simulator,
            channel_capacity: 1_024,
            simulator: simulator::RawSettings::default(),
            replay: RawReplay::default(),
            bench: RawBench::default(),
            live: live::RawSettings::default(),
            evm: evm::RawSettings::default(),
        }
    }
}

/// A whole configuration document, every section with its defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: server::RawSettings,
    pub hub: hub::RawSettings,
    pub session: session::RawSettings,
    pub auth: auth::RawSettings,
    pub source: RawSource,
    pub signal: RawParams,
    pub store: store::RawSettings,
    pub cluster: cluster::RawSettings,
    /// `[[sinks]]`: alert sinks (docs/sinks.md).
    pub sinks: Vec<crate::sinks::RawSink>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub tape: PathBuf,
    pub speed: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bench {
    pub events_per_second: f64,
    pub pairs: usize,
}

/// The configured source, checked.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Simulator(simulator::Settings),
    Replay(Replay),
    Live(Box<live::Settings>),
    Bench(Bench),
    Evm(Box<evm::Settings>),
}

#[derive(Debug, Clone)]
pub struct Source {
    pub channel_capacity: usize,
    pub kind: SourceSettings,
}

/// Every module's typed settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: server::Settings,
    pub hub: hub::Settings,
    pub session: session::Settings,
    pub auth: auth::Settings,
    pub source: Source,
    pub signal: Params,
    pub store: store::Settings,
    pub cluster: cluster::Settings,
    pub sinks: Vec<crate::sinks::Settings>,
}

impl Config {
    /// The documented defaults (valid: a unit test proves it).
    pub fn defaults() -> Config {
        Config::parse(&RawConfig::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }

    /// Each owner parses its section; field names come back with their full path.
    pub fn parse(raw: &RawConfig) -> Result<Config, FieldError> {
        let s = &raw.source;
        let kind = match s.kind {
            SourceKind::Simulator => SourceSettings::Simulator(
                simulator::Settings::parse(&s.simulator)
                    .map_err(|e| e.within("source.simulator"))?,
            ),
            SourceKind::Replay => SourceSettings::Replay(Replay {
                tape: s
                    .replay
                    .tape
                    .clone()
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| {
                        FieldError::new(
                            "source.replay.tape",
                            "is required when source.kind = \"replay\"",
                            "nothing",
                        )
                    })?,
                speed: in_range("source.replay.speed", s.replay.speed, 0.0, 1e6)?,
            }),
            SourceKind::Live => SourceSettings::Live(Box::new(
                live::Settings::parse(&s.live).map_err(|e| e.within("source.live"))?,
            )),
            SourceKind::Evm => {
                // LP burns are measured over the engine's drain lookback.
                let lookback = Params::parse(&raw.signal)
                    .map_err(|e| e.within("signal"))?
                    .liquidity
                    .drain_lookback;
                SourceSettings::Evm(Box::new(
                    evm::Settings::parse(&s.evm, lookback).map_err(|e| e.within("source.evm"))?,
                ))
            }
            SourceKind::Bench => SourceSettings::Bench(Bench {
                events_per_second: in_range(
                    "source.bench.events_per_second",
                    s.bench.events_per_second,
                    0.001,
                    1e7,
                )?,
                pairs: at_least("source.bench.pairs", s.bench.pairs, 1)?,
            }),
        };
        Ok(Config {
            server: server::Settings::parse(&raw.server).map_err(|e| e.within("server"))?,
            hub: hub::Settings::parse(&raw.hub).map_err(|e| e.within("hub"))?,
            session: session::Settings::parse(&raw.session).map_err(|e| e.within("session"))?,
            auth: auth::Settings::parse(&raw.auth).map_err(|e| e.within("auth"))?,
            source: Source {
                channel_capacity: at_least("source.channel_capacity", s.channel_capacity, 1)?,
                kind,
            },
            signal: Params::parse(&raw.signal).map_err(|e| e.within("signal"))?,
            store: store::Settings::parse(&raw.store).map_err(|e| e.within("store"))?,
            cluster: cluster::Settings::parse(&raw.cluster).map_err(|e| e.within("cluster"))?,
            sinks: crate::sinks::Settings::parse_all(&raw.sinks)?,
        })
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File(p) => write!(f, "{p}"),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(name) => write!(f, "{name}"),
        }
    }
}

/// A configuration that cannot be used. The binary exits 64 with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {message} (in {origin})")]
    Syntax { origin: Origin, message: String },
    #[error("invalid config: field `{field}`: {message} (from {origin})")]
    Shape {
        field: String,
        message: String,
        origin: Origin,
    },
    #[error("invalid config: {error} (from {origin})")]
    Invalid { error: FieldError, origin: Origin },
}

/// What a configuration is made of, in order of precedence (later wins).
#[derive(Debug, Default, Clone)]
pub struct Layers {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// The environment (only `DEXPULSE_` variables are read).
    pub env: Vec<(String, String)>,
    /// Command-line flags: the flag as typed, the field it sets, its value.
    pub flags: Vec<(String, String, toml::Value)>,
}

impl Layers {
    /// A file and the process's environment.
    pub fn with_process_env(file: Option<&Path>) -> Layers {
        Layers {
            file: file.map(Path::to_path_buf),
            env: std::env::vars().collect(),
            flags: Vec::new(),
        }
    }

    pub fn flag(mut self, flag: &str, field: &str, value: impl Into<toml::Value>) -> Layers {
        self.flags
            .push((flag.to_string(), field.to_string(), value.into()));
        self
    }
}

/// A dotted key that cannot be set in a table.
#[derive(Debug, thiserror::Error)]
enum BadPath {
    #[error("empty key")]
    Empty,
    #[error("`{0}` is not a table")]
    NotATable(String),
}

fn set_path(table: &mut toml::Table, keys: &[&str], value: toml::Value) -> Result<(), BadPath> {
    match keys {
        [] => Err(BadPath::Empty),
        [last] => {
            table.insert((*last).to_string(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(BadPath::NotATable((*first).to_string())),
            }
        }
    }
}

/// Every leaf path of a table (arrays are leaves), for the origins map.
fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaves(&path, t, out),
            _ => out.push(path),
        }
    }
}

/// The origin of `field`: the longest layered path that is it or contains it.
fn origin_of(origins: &BTreeMap<String, Origin>, field: &str) -> Origin {
    let mut best: Option<(&String, &Origin)> = None;
    for (path, o) in origins {
        let covers = field == path
            || field.starts_with(&format!("{path}."))
            || path.starts_with(&format!("{field}."));
        if covers && best.is_none_or(|(b, _)| path.len() > b.len()) {
            best = Some((path, o));
        }
    }
    best.map_or(Origin::Default, |(_, o)| o.clone())
}

/// The raw document of the layers, and where each value came from.
pub fn layer(layers: &Layers) -> Result<(RawConfig, BTreeMap<String, Origin>), ConfigError> {
    let mut table = toml::Table::new();
    let mut origins = BTreeMap::new();
    if let Some(path) = &layers.file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        table = toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: Origin::File(shown.clone()),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut paths = Vec::new();
        leaves("", &table, &mut paths);
        for p in paths {
            origins.insert(p, Origin::File(shown.clone()));
        }
    }
    for (name, value) in &layers.env {
        let path = match ENV_ALIASES.iter().find(|(a, _)| a == name) {
            Some((_, full)) => full.to_string(),
            None => match name.strip_prefix(ENV_PREFIX) {
                Some(rest) if rest.contains("__") => rest
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join("."),
                _ => continue,
            },
        };
        // A value is read as TOML (numbers, booleans, lists), else as a string: a URL or an
        // address is not a TOML value.
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let keys: Vec<&str> = path.split('.').collect();
        set_path(&mut table, &keys, parsed).map_err(|e| ConfigError::Syntax {
            origin: Origin::Env(name.clone()),
            message: e.to_string(),
        })?;
        origins.insert(path, Origin::Env(name.clone()));
    }
    for (flag, field, value) in &layers.flags {
        let keys: Vec<&str> = field.split('.').collect();
        set_path(&mut table, &keys, value.clone()).map_err(|e| ConfigError::Syntax {
            origin: Origin::Flag(flag.clone()),
            message: e.to_string(),
        })?;
        origins.insert(field.clone(), Origin::Flag(flag.clone()));
    }
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            let field = e.path().to_string();
            let message = e.inner().to_string().trim_end().replace('\n', " ");
            // An unknown key's path is its parent's; the key itself is in the message.
            let origin = origin_of(&origins, &field);
            ConfigError::Shape {
                field,
                message,
                origin,
            }
        },
    )?;
    Ok((raw, origins))
}

/// Layers, then parses: the configuration every command runs with.
pub fn load(layers: &Layers) -> Result<Config, ConfigError> {
    let (raw, origins) = layer(layers)?;
    Config::parse(&raw).map_err(|error| ConfigError::Invalid {
        origin: origin_of(&origins, &error.field),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dexpulse-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = dir.join(format!(
            "c{}.toml",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn err(layers: Layers) -> String {
        load(&layers).unwrap_err().to_string()
    }

    #[test]
    fn the_defaults_parse_and_the_shipped_files_are_the_defaults() {
        let d = Config::defaults();
        assert!(matches!(d.source.kind, SourceSettings::Simulator(_)));
        let text = include_str!("../../config/default.toml");
        let raw: RawConfig = toml::from_str(text).unwrap();
        assert_eq!(raw.signal, RawParams::default());
        assert_eq!(raw.hub, hub::RawSettings::default());
        assert_eq!(raw.session, session::RawSettings::default());
        assert_eq!(raw.server, server::RawSettings::default());
        assert_eq!(raw.source.live, live::RawSettings::default());
        assert_eq!(raw.source.kind, SourceKind::Live);
        assert!(Config::parse(&raw).is_ok());
        for text in [
            include_str!("../../config/demo.toml"),
            include_str!("../../config/bench.toml"),
        ] {
            let raw: RawConfig = toml::from_str(text).unwrap();
            Config::parse(&raw).unwrap();
        }
    }

    #[test]
    fn layers_apply_in_order_and_errors_say_where_the_value_came_from() {
        let f = file("[server]\nbind = \"127.0.0.1:1\"\n[signal.fsm]\nmin_emit_score = 45\n");
        let c = load(&Layers {
            file: Some(f.clone()),
            env: env(&[
                ("DEXPULSE_SERVER__BIND", "0.0.0.0:9000"),
                ("DEXPULSE_SOURCE__SIMULATOR__SCENARIOS", "[\"breakout\"]"),
                ("HOME", "/root"),
            ]),
            flags: vec![],
        })
        .unwrap();
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:9000");
        assert_eq!(c.signal.fsm.min_emit_score, 45);
        let SourceSettings::Simulator(sim) = &c.source.kind else {
            panic!()
        };
        assert_eq!(sim.scenarios, [simulator::Scenario::Breakout]);
        let c = load(
            &Layers {
                file: Some(f.clone()),
                env: env(&[("DEXPULSE_SERVER__BIND", "0.0.0.0:9000")]),
                flags: vec![],
            }
            .flag("--bind", "server.bind", "127.0.0.1:7"),
        )
        .unwrap();
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:7", "the flag wins");

        let e = err(Layers {
            env: env(&[("DEXPULSE_SESSION__HEARTBEAT_SECONDS", "-1")]),
            ..Layers::default()
        });
        assert!(e.contains("field `session.heartbeat_seconds`"), "{e}");
        assert!(
            e.contains("environment variable DEXPULSE_SESSION__HEARTBEAT_SECONDS"),
            "{e}"
        );

        let bad = file("[signal.momentum]\nexit_pc_h1 = 99.0\n");
        let e = err(Layers {
            file: Some(bad.clone()),
            ..Layers::default()
        });
        assert!(e.contains("field `signal.momentum.exit_pc_h1`"), "{e}");
        assert!(e.contains(&bad.display().to_string()), "{e}");

        let e = err(Layers::default().flag("--bind", "server.bind", "nowhere"));
        assert!(
            e.contains("field `server.bind`") && e.contains("from --bind"),
            "{e}"
        );

        let e = err(Layers {
            env: env(&[("DEXPULSE_SERVER__BINDD", "x")]),
            ..Layers::default()
        });
        assert!(
            e.contains("bindd") && e.contains("DEXPULSE_SERVER__BINDD"),
            "{e}"
        );

        let typo = file("[signal.momentum]\nenter_pc_h1 = \"lots\"\n");
        let e = err(Layers {
            file: Some(typo),
            ..Layers::default()
        });
        assert!(e.contains("signal.momentum.enter_pc_h1"), "{e}");

        let e = err(Layers {
            env: env(&[("DEXPULSE_SOURCE__KIND", "replay")]),
            ..Layers::default()
        });
        assert!(e.contains("source.replay.tape"), "{e}");
        let e = err(Layers {
            env: env(&[("DEXPULSE_SOURCE__SIMULATOR__SCENARIOS", "[\"moon\"]")]),
            ..Layers::default()
        });
        assert!(
            e.contains("source.simulator.scenarios") && e.contains("moon"),
            "{e}"
        );
    }

    #[test]
    fn the_base_url_aliases_point_the_live_sources_elsewhere() {
        let c = load(&Layers {
            env: env(&[
                ("DEXPULSE_SOURCE__KIND", "live"),
                ("DEXPULSE_DEXSCREENER_BASE_URL", "http://127.0.0.1:9000"),
            ]),
            ..Layers::default()
        })
        .unwrap();
        let SourceSettings::Live(l) = c.source.kind else {
            panic!()
        };
        assert_eq!(l.dexscreener.base_url, "http://127.0.0.1:9000");
    }
}
