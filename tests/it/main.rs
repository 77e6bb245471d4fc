//! The one integration-test binary. Table of contents:
//!
//! - `support`: fixtures, running the simulator through a tape and the engine in memory.
//! - `decode`: every recorded upstream payload decodes, checked field by field; drift and junk.
//! - `engine`: the worked example of SIGNALS.md 5.7 and the state machine's rules.
//! - `scenarios`: the scenario table of SIGNALS.md 6, through simulator, tape, decoder and engine.
//! - `properties`: proptest properties of SIGNALS.md 6.3.
//! - `cli`: the `dexpulse` binary: simulate, replay, bad lines, exit codes.

mod cli;
mod decode;
mod engine;
mod properties;
mod scenarios;
mod support;
