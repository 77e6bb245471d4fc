//! The live pipeline: source task → bounded channel → engine task → hub. A source paces its
//! records (the simulator in real time, a tape at a speed factor), decodes them with the same
//! decoders as everything else, and sends snapshots and ticks; the engine task owns the
//! `Engine` and publishes what it emits. A full channel slows the source; nothing is dropped.
//! Every task here ends when the shutdown token fires.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{SourceConfig, SourceKind};
use crate::hub::{now_us, Hub};
use crate::metrics::Metrics;
use crate::model::{Snapshot, Source};
use crate::server::Health;
use crate::signal::{Engine, Verdict};
use crate::source::simulator::{Scenario, SimOptions, SimRecord, Simulation};
use crate::source::tape::{Body, TapeReader, TapeRecord};
use crate::source::{self, DecodeError, Decoded};

/// What a source hands the engine.
#[derive(Debug)]
pub enum Input {
    Snapshots(Vec<Snapshot>),
    Tick(i64),
    /// A response or line with no usable data (counted).
    Problem(String),
}

fn now_ms() -> i64 {
    now_us() / 1000
}

/// Sends unless shutdown comes first; `false` when the pipeline is ending.
async fn send(tx: &mpsc::Sender<Input>, input: Input, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        r = tx.send(input) => r.is_ok(),
    }
}

/// Sleeps until `wall_ms`, or returns `false` on shutdown.
async fn wait_until(wall_ms: i64, shutdown: &CancellationToken) -> bool {
    let wait = wall_ms - now_ms();
    if wait <= 0 {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => true,
    }
}

fn decoded_input(d: Result<Decoded, DecodeError>, what: &str) -> Input {
    match d {
        Ok(d) => Input::Snapshots(d.snapshots),
        Err(e) => Input::Problem(format!("{what}: {e}")),
    }
}

/// Runs the configured source until it ends or shutdown.
pub async fn run_source(
    cfg: SourceConfig,
    tx: mpsc::Sender<Input>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    match cfg.kind {
        SourceKind::Simulator => run_simulator(cfg, tx, shutdown).await,
        SourceKind::Replay => run_replay(cfg, tx, shutdown).await,
        // Publishes straight into the hub; started by `app` instead of this.
        SourceKind::Bench => {}
        SourceKind::Live => {
            let recorder = match cfg.record.as_deref().map(std::fs::File::create) {
                None => None,
                Some(Ok(f)) => Some(crate::source::tape::TapeWriter::new(
                    std::io::BufWriter::new(f),
                )),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot create the recording; not recording");
                    None
                }
            };
            crate::source::live::run(cfg.live, tx, shutdown, metrics, recorder).await
        }
    }
}

/// The simulator in real time: its first `lead_minutes` lie in the past and are played at
/// once (warming the engine up); the rest waits for the wall clock.
async fn run_simulator(cfg: SourceConfig, tx: mpsc::Sender<Input>, shutdown: CancellationToken) {
    let scenarios: Vec<Scenario> = if cfg.scenarios.iter().any(|s| s == "all") {
        Scenario::ALL.to_vec()
    } else {
        cfg.scenarios
            .iter()
            .filter_map(|s| Scenario::parse(s))
            .collect()
    };
    let opts = SimOptions {
        seed: cfg.seed,
        start_ms: now_ms() - (cfg.lead_minutes * 60_000.0) as i64,
        hours: cfg.hours,
        noise_pairs: cfg.noise_pairs,
        ..SimOptions::default()
    };
    let sim = Simulation::new(&scenarios, &opts);
    tracing::info!(
        pairs = sim.pair_count(),
        scenarios = scenarios.len(),
        "simulator source started"
    );
    for rec in sim {
        if !wait_until(rec.t_ms(), &shutdown).await {
            return;
        }
        let input = match rec {
            SimRecord::Tick { t_ms } => Input::Tick(t_ms),
            SimRecord::Poll {
                t_ms,
                request,
                body,
            } => decoded_input(
                source::decode_bytes(Source::Simulator, &request, body.as_bytes(), t_ms),
                &request,
            ),
        };
        if !send(&tx, input, &shutdown).await {
            return;
        }
    }
    tracing::info!("simulator source finished");
}

/// A tape at `speed` times its recorded pace (0: as fast as the engine takes it). Reading is
/// blocking file I/O, so lines are read on a blocking thread and handed over in order.
async fn run_replay(cfg: SourceConfig, tx: mpsc::Sender<Input>, shutdown: CancellationToken) {
    let Some(path) = cfg.tape.clone() else {
        return;
    };
    let (line_tx, mut line_rx) = mpsc::channel::<Result<TapeRecord, String>>(256);
    let reader_stop = shutdown.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = line_tx.blocking_send(Err(format!("cannot open tape {path}: {e}")));
                return;
            }
        };
        for item in TapeReader::new(std::io::BufReader::new(file)) {
            if reader_stop.is_cancelled() {
                return;
            }
            let msg = match item {
                Ok(Ok(rec)) => Ok(rec),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => {
                    let _ = line_tx.blocking_send(Err(format!("reading {path}: {e}")));
                    return;
                }
            };
            if line_tx.blocking_send(msg).is_err() {
                return;
            }
        }
    });
    let mut origin: Option<(i64, i64)> = None;
    while let Some(item) = tokio::select! {
        _ = shutdown.cancelled() => None,
        m = line_rx.recv() => m,
    } {
        let input = match item {
            Err(problem) => Input::Problem(problem),
            Ok(rec) => {
                let t = rec.t_ms();
                if cfg.speed > 0.0 {
                    let (t0, w0) = *origin.get_or_insert((t, now_ms()));
                    let wall = w0 + ((t - t0) as f64 / cfg.speed) as i64;
                    if !wait_until(wall, &shutdown).await {
                        break;
                    }
                }
                match rec {
                    TapeRecord::Tick { t_ms } => Input::Tick(t_ms),
                    TapeRecord::Response(r) if !(200..300).contains(&r.status) => {
                        Input::Problem(format!("{}: HTTP status {}", r.request, r.status))
                    }
                    TapeRecord::Response(r) => {
                        let d = match &r.body {
                            Body::Json(v) => source::decode(r.source, &r.request, v, r.t_ms),
                            Body::Text(t) => {
                                source::decode_bytes(r.source, &r.request, t.as_bytes(), r.t_ms)
                            }
                        };
                        decoded_input(d, &r.request)
                    }
                }
            }
        };
        if !send(&tx, input, &shutdown).await {
            break;
        }
    }
    drop(line_rx);
    let _ = reader.await;
    tracing::info!("replay source finished");
}

/// Owns the engine: observes snapshots and ticks in order, publishes the events, records each
/// fresh pair's latest state. Ends when the channel closes or on shutdown.
pub async fn run_engine(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Input>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    health.engine_running.store(true, Ordering::Release);
    let mut events = Vec::new();
    loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => {
                    // The source is done (a tape's end): keep serving what is retained.
                    health.source_ended.store(true, Ordering::Release);
                    tracing::info!("the source has ended; serving retained state");
                    shutdown.cancelled().await;
                    break;
                }
            },
        };
        health.last_input_ms.store(now_ms(), Ordering::Release);
        events.clear();
        match input {
            Input::Tick(t) => {
                events.extend(engine.tick(t));
                for key in engine.take_forgotten() {
                    hub.forget_pair(&key);
                }
            }
            Input::Problem(p) => {
                metrics.source_problems.inc();
                tracing::warn!(problem = %p, "source data skipped");
            }
            Input::Snapshots(snaps) => {
                for s in &snaps {
                    let v = engine.observe_into(s, &mut events);
                    metrics.snapshot(v);
                    if v == Verdict::Fresh {
                        if let Some((snap, f)) = engine.latest(&s.key) {
                            hub.update_pair(snap, f, engine.open_kinds(&s.key));
                        }
                    }
                }
            }
        }
        if !events.is_empty() {
            for e in &events {
                metrics.event(e.kind.as_str(), e.direction.as_str());
            }
            hub.publish(&events);
        }
    }
    health.engine_running.store(false, Ordering::Release);
}

/// The bench source: synthetic events of about 300 bytes, straight into the hub at a fixed
/// rate (in 1 ms slices), labelled `"source":"bench"`, rotating over pairs, kinds, directions
/// and scores so that filters have work.
pub async fn run_bench(
    cfg: SourceConfig,
    hub: Arc<Hub>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    use crate::hub::Meta;
    use crate::model::{Direction, Kind};
    health.engine_running.store(true, Ordering::Release);
    let kinds = [
        Kind::VolumeSurge,
        Kind::MomentumUp,
        Kind::BuyPressure,
        Kind::PumpReversal,
    ];
    let directions = [Direction::Bullish, Direction::Bearish];
    let pairs: Vec<String> = (0..cfg.bench_pairs)
        .map(|i| format!("bench{i:05}"))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut body = String::with_capacity(400);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * cfg.bench_events_per_second) as u64;
        health.last_input_ms.store(now_ms(), Ordering::Release);
        while sent < due {
            let i = sent as usize;
            let (kind, direction) = (
                kinds[i % kinds.len()],
                directions[(i / 7) % directions.len()],
            );
            let score = 40 + (i % 61) as u8;
            let pair = &pairs[i % pairs.len()];
            body.clear();
            use std::fmt::Write;
            let _ = write!(
                body,
                "{{\"schema\":\"dexpulse.event/v1\",\"event_id\":\"{sent:032x}\",\"phase\":\"opened\",\"kind\":\"{}\",\"direction\":\"{}\",\"score\":{score},\"chain\":\"bench\",\"pair_address\":\"{pair}\",\"source\":\"bench\",\"observed_at_ms\":{}}}",
                kind.as_str(),
                direction.as_str(),
                now_ms()
            );
            hub.publish_raw(
                Meta {
                    chain: "bench",
                    pair_address: pair,
                    kind,
                    direction,
                    score,
                },
                &body,
            );
            sent += 1;
        }
    }
    health.engine_running.store(false, Ordering::Release);
}
