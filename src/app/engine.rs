//! The engine task: owns the [`Engine`], observes snapshots and ticks in the order the source
//! sent them, publishes what it emits, keeps each fresh pair's latest state in the hub, and
//! tells the health that data arrives. Counters are bound once, so the steady state does no
//! metric lookups and no allocation per snapshot.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dexpulse_core::model::{Direction, Kind};
use dexpulse_core::signal::{Engine, Verdict};
use dexpulse_core::source::Input;

use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

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
            fresh: m.snapshots_counter("fresh"),
            stale: m.snapshots_counter("stale"),
            invalid: m.snapshots_counter("invalid"),
            suspect: m.snapshots_counter("suspect"),
            other_source: m.snapshots_counter("other_source"),
            events: Kind::ALL
                .iter()
                .map(|k| DIRECTIONS.map(|d| m.events_counter(k.as_str(), d.as_str())))
                .collect(),
            problems: m.source_problems.clone(),
            deduped: m.suppressed_counter("dedupe"),
            dropped: m.suppressed_counter("budget"),
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

/// Runs until shutdown. When the source has ended (a tape's end), it keeps serving what is
/// retained and says so to the health.
pub async fn run(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Input>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let c = Counters::new(&metrics);
    health.set_engine_running(true);
    let mut events = Vec::new();
    let mut seen = engine.stats();
    loop {
        let input = tokio::select! {
            _ = shutdown.cancelled() => break,
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
            hub.publish(&events);
        }
    }
    health.set_engine_running(false);
    Ok(())
}
