//! Replay: a tape through the same decoders and the same engine as live data, events out as
//! JSON lines (the backtest that tunes thresholds). Owns the order of work per tape line and
//! the report of what was skipped; never reads the clock, so the same tape gives the same
//! bytes.

use std::io::{self, BufRead, Write};

use crate::chain::TapeFollower;
use crate::model::{SignalEvent, Snapshot, Source};
use crate::signal::{Engine, EngineStats, Verdict};
use crate::source::tape::{LineError, TapeReader, TapeRecord, Unusable};
use crate::source::{DecodeError, Input, Skip};

/// Something in the tape that was not used, with where it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// A line that is not a tape line.
    Line(LineError),
    /// A response whose body did not decode.
    Decode { line: usize, error: DecodeError },
    /// A response with a non-2xx status (kept on the tape, carries no data).
    Status { line: usize, status: u16 },
    /// Items of a decoded response that were skipped.
    Skipped {
        line: usize,
        index: usize,
        reason: Skip,
    },
    /// What a chain follower refused or noted in a recorded reply.
    Chain { line: usize, message: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Line(e) => write!(f, "{e}"),
            Problem::Decode { line, error } => write!(f, "tape line {line}: {error}"),
            Problem::Status { line, status } => {
                write!(f, "tape line {line}: HTTP status {status}, no data")
            }
            Problem::Skipped {
                line,
                index,
                reason,
            } => {
                write!(f, "tape line {line}: item {index} skipped: {reason}")
            }
            Problem::Chain { line, message } => write!(f, "tape line {line}: {message}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub lines: usize,
    pub responses: u64,
    pub ticks: u64,
    pub snapshots: u64,
    pub problems: u64,
    pub events: u64,
    pub engine: EngineStats,
}

/// Feeds a tape to `engine`, handing each event and each problem to the callbacks in order.
pub fn replay<R: BufRead>(
    input: R,
    engine: &mut Engine,
    on_event: impl FnMut(&SignalEvent) -> io::Result<()>,
    on_problem: impl FnMut(&Problem),
) -> io::Result<ReplayStats> {
    replay_observed(input, engine, |_, _| {}, on_event, on_problem)
}

/// `replay`, also handing each decoded snapshot and the engine's verdict on it to
/// `on_snapshot`, before the events it caused (what `evaluate` measures outcomes on).
pub fn replay_observed<R: BufRead>(
    input: R,
    engine: &mut Engine,
    mut on_snapshot: impl FnMut(&Snapshot, Verdict),
    mut on_event: impl FnMut(&SignalEvent) -> io::Result<()>,
    mut on_problem: impl FnMut(&Problem),
) -> io::Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    let mut events = Vec::new();
    let mut chain = TapeFollower::default();
    let mut reader = TapeReader::new(input);
    while let Some(item) = reader.next() {
        let item = item?;
        let line = reader.line();
        let record = match item {
            Ok(r) => r,
            Err(e) => {
                stats.problems += 1;
                on_problem(&Problem::Line(e));
                continue;
            }
        };
        events.clear();
        match record {
            TapeRecord::Tick { t_ms } => {
                stats.ticks += 1;
                events.extend(engine.tick(t_ms));
            }
            TapeRecord::Response(r) if r.source == Source::Evm => {
                stats.responses += 1;
                let (inputs, problems) = chain.feed(&r);
                for message in problems {
                    stats.problems += 1;
                    on_problem(&Problem::Chain { line, message });
                }
                for input in inputs {
                    match input {
                        Input::Snapshots(snaps) => {
                            for snap in &snaps {
                                stats.snapshots += 1;
                                let verdict = engine.observe_into(snap, &mut events);
                                on_snapshot(snap, verdict);
                            }
                        }
                        Input::Tick(t) => {
                            stats.ticks += 1;
                            events.extend(engine.tick(t));
                        }
                        Input::Reorg {
                            pairs,
                            from_block,
                            to_block,
                            at_ms,
                        } => events.extend(engine.reorg(&pairs, from_block, to_block, at_ms)),
                        Input::Problem(_) | Input::SourceState(_) => {}
                    }
                }
            }
            TapeRecord::Response(r) => {
                stats.responses += 1;
                match r.decode() {
                    Err(Unusable::Status(status)) => {
                        stats.problems += 1;
                        on_problem(&Problem::Status { line, status });
                        continue;
                    }
                    Ok(d) => {
                        for s in d.skipped {
                            stats.problems += 1;
                            on_problem(&Problem::Skipped {
                                line,
                                index: s.index,
                                reason: s.reason,
                            });
                        }
                        for snap in &d.snapshots {
                            stats.snapshots += 1;
                            let verdict = engine.observe_into(snap, &mut events);
                            on_snapshot(snap, verdict);
                        }
                    }
                    Err(Unusable::Decode(error)) => {
                        stats.problems += 1;
                        on_problem(&Problem::Decode { line, error });
                    }
                }
            }
        }
        for e in &events {
            stats.events += 1;
            on_event(e)?;
        }
    }
    stats.lines = reader.line();
    stats.engine = engine.stats();
    Ok(stats)
}

/// Replays a tape and writes its events as JSON lines.
pub fn replay_to_writer<R: BufRead, W: Write>(
    input: R,
    engine: &mut Engine,
    out: &mut W,
    on_problem: impl FnMut(&Problem),
) -> io::Result<ReplayStats> {
    let stats = replay(
        input,
        engine,
        |e| {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")
        },
        on_problem,
    )?;
    out.flush()?;
    Ok(stats)
}
