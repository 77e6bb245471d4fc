//! dexpulse turns DEX pair snapshots into trading signals and streams them over WebSocket.
//!
//! Reading order, following the data: [`config`] (validated settings), [`model`] (pair keys,
//! snapshots, events), [`source`] (upstream bytes into snapshots: DexScreener, GeckoTerminal,
//! tapes, the simulator), [`signal`] (the sans-IO engine: `observe(snapshot)` and `tick(now)`
//! into events), [`replay`] (a tape through the decoders and the engine: the backtest),
//! [`pipeline`] (source and engine tasks), [`hub`] (seq, serialize once, retained ring,
//! fan-out), [`protocol`] (WebSocket protocol v1, pure), [`server`] (HTTP and WebSocket),
//! [`metrics`], [`app`] (wiring and shutdown).
//! Data flows one way: source, engine, hub, sessions; no module reaches back up.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod poller;
pub mod protocol;
pub mod replay;
pub mod server;
pub mod signal;
pub mod source;
