//! The one place that starts the configured source: the simulator paced by the wall clock, a
//! tape at a speed factor, the live sources, or the bench publisher. Each source decodes with
//! the same decoders as everything else (a tape record through `Response::decode`, as `replay`
//! does) and sends [`Input`]s down a bounded channel; a full channel slows the source, nothing
//! is dropped. Every task here ends when the shutdown token fires.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{Direction, EventMeta, Kind, PairKey, Source};
use dexpulse_core::source::simulator::{self, SimRecord, Simulation};
use dexpulse_core::source::tape::{LineError, TapeReader, TapeRecord};
use dexpulse_core::source::{self as decode, Input};

use super::settings::{Bench, Replay};
use crate::health::Health;
use crate::hub::Hub;
use crate::time::Clock;

/// Sends unless shutdown comes first; `false` when the pipeline is ending.
/// Why a source task stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the tape reader of {path} failed: {source}")]
    Reader {
        path: String,
        source: tokio::task::JoinError,
    },
}

async fn send(tx: &mpsc::Sender<Input>, input: Input, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        r = tx.send(input) => r.is_ok(),
    }
}

/// Sleeps until the wall clock reads `wall_ms`, or returns `false` on shutdown.
async fn wait_until(clock: &Clock, wall_ms: i64, shutdown: &CancellationToken) -> bool {
    let wait = wall_ms - clock.now_ms();
    if wait <= 0 {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))) => true,
    }
}

fn decoded(d: Result<decode::Decoded, impl std::fmt::Display>, what: &str) -> Input {
    match d {
        Ok(d) => Input::Snapshots(d.snapshots),
        Err(e) => Input::Problem(format!("{what}: {e}")),
    }
}

/// The simulator in real time: its first `lead` lies in the past and is played at once
/// (warming the engine up); the rest waits for the wall clock. Ends when the simulated hours
/// are over.
pub async fn simulator(
    s: simulator::Settings,
    clock: Clock,
    tx: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let lead = i64::try_from(s.lead.as_millis()).unwrap_or(i64::MAX);
    let sim = Simulation::new(&s.scenarios, &s.options(clock.now_ms() - lead));
    tracing::info!(
        pairs = sim.pair_count(),
        scenarios = s.scenarios.len(),
        "simulator source started"
    );
    for rec in sim {
        if !wait_until(&clock, rec.t_ms(), &shutdown).await {
            return Ok(());
        }
        let input = match rec {
            SimRecord::Tick { t_ms } => Input::Tick(t_ms),
            SimRecord::Poll {
                t_ms,
                request,
                body,
            } => decoded(
                decode::decode_bytes(Source::Simulator, &request, body.as_bytes(), t_ms),
                &request,
            ),
        };
        if !send(&tx, input, &shutdown).await {
            return Ok(());
        }
    }
    tracing::info!("simulator source finished");
    Ok(())
}

/// A tape, already opened, at `speed` times its recorded pace (0: as fast as the engine takes
/// it). Reading is blocking file I/O, so lines are read on a blocking thread and handed over in
/// order.
pub async fn replay(
    r: Replay,
    file: std::fs::File,
    clock: Clock,
    tx: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let path = r.tape.display().to_string();
    let (line_tx, mut line_rx) = mpsc::channel::<Result<TapeRecord, LineError>>(256);
    let reader_stop = shutdown.clone();
    let shown = path.clone();
    let reader = tokio::task::spawn_blocking(move || {
        for item in TapeReader::new(std::io::BufReader::new(file)) {
            if reader_stop.is_cancelled() {
                return Ok(());
            }
            let msg = match item {
                Ok(Ok(rec)) => Ok(rec),
                Ok(Err(e)) => Err(e),
                Err(source) => {
                    return Err(SourceError::Read {
                        path: shown,
                        source,
                    })
                }
            };
            if line_tx.blocking_send(msg).is_err() {
                return Ok(());
            }
        }
        Ok(())
    });
    let mut origin: Option<(i64, i64)> = None;
    let mut chain = dexpulse_core::chain::TapeFollower::default();
    while let Some(item) = tokio::select! {
        _ = shutdown.cancelled() => None,
        m = line_rx.recv() => m,
    } {
        let inputs = match item {
            Err(problem) => vec![Input::Problem(problem.to_string())],
            Ok(rec) => {
                let t = rec.t_ms();
                if r.speed > 0.0 {
                    let (t0, w0) = *origin.get_or_insert((t, clock.now_ms()));
                    let wall = w0 + ((t - t0) as f64 / r.speed) as i64;
                    if !wait_until(&clock, wall, &shutdown).await {
                        break;
                    }
                }
                match rec {
                    TapeRecord::Tick { t_ms } => vec![Input::Tick(t_ms)],
                    // A chain's replies go to its follower, in order (`replay` does the same).
                    TapeRecord::Response(resp) if resp.source == Source::Evm => {
                        let (mut inputs, problems) = chain.feed(&resp);
                        inputs.extend(problems.into_iter().map(Input::Problem));
                        inputs
                    }
                    TapeRecord::Response(resp) => vec![decoded(resp.decode(), &resp.request)],
                }
            }
        };
        for input in inputs {
            if !send(&tx, input, &shutdown).await {
                drop(line_rx);
                return match reader.await {
                    Ok(r) => r,
                    Err(source) => Err(SourceError::Reader { path, source }),
                };
            }
        }
    }
    drop(line_rx);
    let read = reader.await.map_err(|source| SourceError::Reader {
        path: path.clone(),
        source,
    })?;
    read?;
    tracing::info!(tape = %path, "replay source finished");
    Ok(())
}

/// The bench source: synthetic events of about 300 bytes, straight into the hub at a fixed
/// rate (in 1 ms slices), labelled `"source":"bench"`, rotating over pairs, kinds, directions
/// and scores so that filters have work.
pub async fn bench(
    b: Bench,
    hub: Arc<Hub>,
    health: Arc<Health>,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    health.set_engine_running(true);
    let kinds = [
        Kind::VolumeSurge,
        Kind::MomentumUp,
        Kind::BuyPressure,
        Kind::PumpReversal,
    ];
    let directions = [Direction::Bullish, Direction::Bearish];
    let pairs: Vec<PairKey> = (0..b.pairs)
        .map(|i| PairKey::new("bench", format!("bench{i:05}")))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = tokio::time::Instant::now();
    // The ids are unique across restarts, as the engine's are: a cluster's ingest that restarts
    // must not have new events taken for republished ones (docs/cluster.md).
    let run = u64::try_from(clock.now_ms()).unwrap_or(0);
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * b.events_per_second) as u64;
        let mut batch = Vec::new();
        while sent < due {
            let i = usize::try_from(sent).unwrap_or(0);
            let (kind, direction) = (
                kinds[i % kinds.len()],
                directions[(i / 7) % directions.len()],
            );
            let score = 40 + (i % 61) as u8;
            let pair = &pairs[i % pairs.len()];
            let mut body = String::with_capacity(400);
            let _ = write!(
                body,
                "{{\"schema\":\"dexpulse.event/v1\",\"event_id\":\"{run:016x}{sent:016x}\",\"phase\":\"opened\",\"kind\":\"{}\",\"direction\":\"{}\",\"score\":{score},\"chain\":\"bench\",\"pair_address\":\"{}\",\"source\":\"bench\",\"observed_at_ms\":{}}}",
                kind.as_str(),
                direction.as_str(),
                pair.address,
                clock.now_ms()
            );
            batch.push((
                EventMeta {
                    pair: pair.clone(),
                    kind,
                    direction,
                    score,
                },
                body,
            ));
            sent += 1;
        }
        if !batch.is_empty() {
            hub.publish_serialized_off_worker(batch).await;
            health.data_received();
        }
    }
    health.set_engine_running(false);
    Ok(())
}
