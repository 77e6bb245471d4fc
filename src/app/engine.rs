//! The engine task: owns the [`Engine`], observes snapshots and ticks in the order the source
//! sent them, publishes what it emits, keeps each fresh pair's latest state in the hub, and
//! tells the health that data arrives. Counters are bound once, so the steady state does no
//! metric lookups and no allocation per snapshot.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{Direction, Kind};
use dexpulse_core::signal::checkpoint::Checkpoint;
use dexpulse_core::signal::{Engine, Params, Verdict};
use dexpulse_core::source::Input;

use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::EventLog;

/// The engine's counters, bound to their labels once.
struct Counters {
    fresh: Counter,
    stale: Counter,
    invalid: Counter,
    suspect: Counter,
    other_source: Counter,
    events: Vec<[Counter; 3]>,
    problems: Counter,
    deduped: Counter,
    dropped: Counter,
}

const DIRECTIONS: [Direction; 3] = [Direction::Bullish, Direction::Bearish, Direction::Neutral];

impl Counters {
    fn new(m: &Metrics) -> Counters {
        Counters {
            fresh: m.engine.snapshots_counter("fresh"),
            stale: m.engine.snapshots_counter("stale"),
            invalid: m.engine.snapshots_counter("invalid"),
            suspect: m.engine.snapshots_counter("suspect"),
            other_source: m.engine.snapshots_counter("other_source"),
            events: Kind::ALL
                .iter()
                .map(|k| DIRECTIONS.map(|d| m.engine.events_counter(k.as_str(), d.as_str())))
                .collect(),
            problems: m.engine.source_problems.clone(),
            deduped: m.engine.suppressed_counter("dedupe"),
            dropped: m.engine.suppressed_counter("budget"),
        }
    }

    fn verdict(&self, v: Verdict) {
        match v {
            Verdict::Fresh => &self.fresh,
            Verdict::Stale => &self.stale,
            Verdict::Invalid(_) => &self.invalid,
            Verdict::Suspect => &self.suspect,
            Verdict::OtherSource => &self.other_source,
        }
        .inc();
    }

    fn event(&self, kind: Kind, direction: Direction) {
        let d = DIRECTIONS.iter().position(|x| *x == direction).unwrap_or(2);
        self.events[kind.index()][d].inc();
    }
}

/// What the engine task works with besides its engine and input.
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    /// Save the engine's state with every published batch and at least this often
    /// (docs/store.md); `None`: the history is in memory, or the source starts over anyway.
    pub checkpoints: Option<Duration>,
}

/// The engine the log's saved state describes, with the source's state saved beside it, or
/// `None` (start cold) with a log line saying why. The epoch is the log's either way.
pub fn restore(log: &EventLog, params: &Params) -> Option<(Engine, Option<Vec<u8>>)> {
    let saved = match log.engine_state() {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "engine state unreadable; the engine starts cold (the epoch and the log are kept)");
            return None;
        }
    };
    match Engine::restore(
        params.clone(),
        &saved.global,
        saved.pairs.iter().map(Vec::as_slice),
    ) {
        Ok(engine) => {
            tracing::info!(
                seq = saved.seq,
                pairs = engine.pairs_tracked(),
                "engine state restored: open episodes continue"
            );
            Some((engine, saved.source))
        }
        Err(e) => {
            tracing::warn!(error = %e, seq = saved.seq, "engine state not restored; the engine starts cold (the epoch and the log are kept)");
            None
        }
    }
}

/// The state changed since the last checkpoint, when checkpoints are kept, with the source's
/// state received since (which waits for the next checkpoint otherwise).
fn checkpoint(engine: &mut Engine, on: bool, source: &mut Option<Vec<u8>>) -> Option<Checkpoint> {
    if !on {
        return None;
    }
    match engine.checkpoint(false) {
        Ok(Some(mut c)) => {
            c.source = source.take();
            Some(c)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "engine state not saved");
            None
        }
    }
}

/// Runs until shutdown. When the source has ended (a tape's end), it keeps serving what is
/// retained and says so to the health.
pub async fn run(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Input>,
    ctx: Ctx,
) -> Result<(), std::convert::Infallible> {
    let Ctx {
        hub,
        metrics,
        health,
        shutdown,
        checkpoints,
    } = ctx;
    let c = Counters::new(&metrics);
    health.set_engine_running(true);
    // A restored engine's pairs are shown before their next snapshot.
    for key in engine.pair_keys() {
        if let Some((snap, m, open)) = engine.pair_view(&key) {
            hub.pairs().update(snap, m, open);
        }
    }
    let saving = checkpoints.is_some();
    let mut timer = tokio::time::interval(checkpoints.unwrap_or(Duration::from_secs(3600)));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = Vec::new();
    let mut seen = engine.stats();
    let mut source_state: Option<Vec<u8>> = None;
    loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = timer.tick(), if saving => {
                if let Some(state) = checkpoint(&mut engine, saving, &mut source_state) {
                    hub.publish_off_worker(Vec::new(), Some(state)).await;
                }
                continue;
            }
            m = rx.recv() => match m {
                Some(m) => m,
                None => {
                    health.source_ended();
                    tracing::info!("the source has ended; serving retained state");
                    shutdown.cancelled().await;
                    break;
                }
            },
        };
        events.clear();
        match input {
            Input::Tick(t) => {
                events.extend(engine.tick(t));
                for key in engine.take_forgotten() {
                    hub.pairs().forget(&key);
                }
            }
            Input::Problem(p) => {
                c.problems.inc();
                tracing::warn!(problem = %p, "source data skipped");
            }
            Input::Reorg {
                pairs,
                from_block,
                to_block,
                at_ms,
            } => {
                tracing::warn!(
                    from_block,
                    to_block,
                    pairs = pairs.len(),
                    "a reorganisation: the pairs read from the replaced blocks get a reorg notice"
                );
                events.extend(engine.reorg(&pairs, from_block, to_block, at_ms));
            }
            Input::SourceState(state) => source_state = Some(state),
            Input::Snapshots(snaps) => {
                if !snaps.is_empty() {
                    health.data_received();
                }
                for s in &snaps {
                    let v = engine.observe_into(s, &mut events);
                    c.verdict(v);
                    if v == Verdict::Fresh {
                        if let Some((snap, m, open)) = engine.pair_view(&s.key) {
                            hub.pairs().update(snap, m, open);
                        }
                    }
                }
            }
        }
        let now = engine.stats();
        c.deduped.inc_by(now.deduped - seen.deduped);
        c.dropped.inc_by(now.dropped - seen.dropped);
        seen = now;
        if !events.is_empty() {
            for e in &events {
                c.event(e.kind, e.direction);
            }
            // The state that produced these events is committed with them: a restart never
            // opens an episode twice, and the close of one open before it still comes.
            let state = checkpoint(&mut engine, saving, &mut source_state);
            hub.publish_off_worker(std::mem::take(&mut events), state)
                .await;
        }
    }
    if let Some(state) = checkpoint(&mut engine, saving, &mut source_state) {
        hub.publish_off_worker(Vec::new(), Some(state)).await;
    }
    health.set_engine_running(false);
    Ok(())
}
