//! dexpulse turns DEX pair snapshots into trading signals.
//!
//! Reading order, following the data: [`config`] (validated settings), [`model`] (pair keys,
//! snapshots, events), [`source`] (upstream bytes into snapshots: DexScreener, GeckoTerminal,
//! tapes, the simulator), [`signal`] (the sans-IO engine: `observe(snapshot)` and `tick(now)`
//! into events), [`replay`] (a tape through the decoders and the engine: the backtest).
//! Data flows one way: source, engine, output; no module reaches back up.
#![forbid(unsafe_code)]

pub mod config;
pub mod model;
pub mod replay;
pub mod signal;
pub mod source;
