//! Shared helpers: fixture loading, and the simulator run through a real tape (bytes), the
//! replay and the engine, in memory.

use std::path::PathBuf;

use dexpulse::model::SignalEvent;
use dexpulse::replay::{replay, Problem, ReplayStats};
use dexpulse::signal::Engine;
use dexpulse::signal::Params;
use dexpulse::source::simulator::{simulate, Scenario, SimOptions};
use dexpulse::source::tape::TapeWriter;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// The tape the simulator writes for these scenarios.
pub fn tape(scenarios: &[Scenario], opts: &SimOptions) -> Vec<u8> {
    let mut w = TapeWriter::new(Vec::new());
    simulate(scenarios, opts, &mut w).unwrap();
    w.into_inner()
}

pub struct Run {
    pub events: Vec<SignalEvent>,
    pub problems: Vec<String>,
    pub stats: ReplayStats,
    pub engine: Engine,
}

/// Replays tape bytes through a fresh engine.
pub fn replay_bytes(tape: &[u8], cfg: Params) -> Run {
    let mut engine = Engine::new(cfg);
    let mut events = Vec::new();
    let mut problems = Vec::new();
    let stats = replay(
        tape,
        &mut engine,
        |e| {
            events.push(e.clone());
            Ok(())
        },
        |p: &Problem| problems.push(p.to_string()),
    )
    .unwrap();
    Run {
        events,
        problems,
        stats,
        engine,
    }
}

/// Events as JSON lines, the replay's output format.
pub fn to_lines(events: &[SignalEvent]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect()
}

/// One snapshot's passage through the engine, for latency checks.
pub struct Step {
    /// The snapshot's pair; `None` for a tick.
    pub key: Option<dexpulse::model::PairKey>,
    pub t_ms: i64,
    pub verdict: dexpulse::signal::Verdict,
    /// Whether each state-machine kind's entry condition held on it (fresh snapshots only).
    pub entered: [bool; dexpulse::model::Kind::N_EPISODIC],
    /// The risk flags of its features (fresh snapshots only).
    pub flags: Vec<String>,
    /// The events this snapshot produced.
    pub events: Vec<SignalEvent>,
}

/// Replays a tape snapshot by snapshot, recording what the engine saw at each one.
pub fn trace(tape: &[u8], cfg: Params) -> (Vec<Step>, Engine) {
    use dexpulse::model::Kind;
    use dexpulse::signal::{kinds, Verdict};
    use dexpulse::source::tape::{Body, TapeReader, TapeRecord};
    let mut engine = Engine::new(cfg.clone());
    let mut steps = Vec::new();
    for rec in TapeReader::new(tape) {
        let Ok(Ok(rec)) = rec else { continue };
        match rec {
            TapeRecord::Tick { t_ms } => {
                let events = engine.tick(t_ms);
                if !events.is_empty() {
                    steps.push(Step {
                        key: None,
                        t_ms,
                        verdict: Verdict::Stale,
                        entered: [false; Kind::N_EPISODIC],
                        flags: Vec::new(),
                        events,
                    });
                }
            }
            TapeRecord::Response(r) => {
                let Body::Json(body) = &r.body else { continue };
                let Ok(d) = dexpulse::source::decode(r.source, &r.request, body, r.t_ms) else {
                    continue;
                };
                for snap in &d.snapshots {
                    let mut events = Vec::new();
                    let verdict = engine.observe_into(snap, &mut events);
                    let mut entered = [false; Kind::N_EPISODIC];
                    let mut flag_names = Vec::new();
                    if verdict == Verdict::Fresh {
                        if let Some((_, f)) = engine.latest(&snap.key) {
                            let (flags, _) = kinds::risk(f, &cfg);
                            for k in Kind::EPISODIC {
                                entered[k.index()] =
                                    kinds::enter(k, f, &cfg, flags, &kinds::Context::default())
                                        .is_some();
                            }
                            flag_names = flags.names();
                        }
                    }
                    steps.push(Step {
                        key: Some(snap.key.clone()),
                        t_ms: snap.observed_at_ms,
                        verdict,
                        entered,
                        flags: flag_names,
                        events,
                    });
                }
            }
        }
    }
    (steps, engine)
}

/// A window's trade counts without unique-wallet counts (DexScreener's shape).
pub fn tx(buys: u64, sells: u64) -> Option<dexpulse::model::Txns> {
    Some(dexpulse::model::Txns {
        buys,
        sells,
        buyers: None,
        sellers: None,
    })
}

/// Taken by the tests that run several real processes at once (the cluster's nodes, the
/// browser): on two cores, two of them side by side starve each other's time-outs. An async
/// lock, since most of them hold it across awaits; `heavy_blocking` for plain tests.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

pub fn heavy_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// Something a test starts or drives that `cargo test` alone does not bring: `scripts/test`
/// installs each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Debian's `nats-server`.
    Nats,
    /// Debian's `chromium`.
    Chromium,
    /// The pinned npm packages of `tests/node` (`npm ci --prefix tests/node`).
    NodeModules,
}

impl Component {
    /// Why it is missing, or `None` when it is here.
    pub fn missing(self) -> Option<String> {
        let on_path = |bin: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        };
        match self {
            Component::Nats => (!on_path("nats-server"))
                .then(|| "nats-server is not installed (apt-get install nats-server)".into()),
            Component::Chromium => {
                let c = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
                (!std::path::Path::new(&c).exists())
                    .then(|| format!("{c} is missing (apt-get install chromium)"))
            }
            Component::NodeModules => {
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
                (!dir.join("node_modules/.package-lock.json").exists()).then(|| {
                    "tests/node/node_modules is missing (npm ci --prefix tests/node)".into()
                })
            }
        }
    }
}

/// Whether `test` can run with what it needs. Where something is missing it prints `SKIPPED`,
/// the reason and the command that installs it, and the caller returns; under `CI` nothing is
/// ever skipped: it fails instead.
pub fn requires(test: &str, needs: &[Component]) -> bool {
    let why: Vec<String> = needs.iter().filter_map(|c| c.missing()).collect();
    if why.is_empty() {
        return true;
    }
    let why = why.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of a test that
    // passes, and a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why}; scripts/test installs it"
    );
    false
}
