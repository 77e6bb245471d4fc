//! dexpulse's pure core. Everything here is a function of its inputs: no async runtime, no
//! sockets, no files but the readers and writers handed to it, no clock (time is always an
//! argument), no randomness without a seed. The crate's dependencies enforce the first three:
//! none of tokio, hyper, axum, reqwest or a WebSocket library is among them.
//!
//! Reading order, bottom up: [`model`] (pair keys, snapshots, events) and [`settings`] (the
//! raw-to-typed conversion of configuration); then [`signal`] (the engine), [`source`]
//! (decoders, tapes, the simulator), [`chain`] (the chain follower: pools' logs into
//! snapshots), [`schedule`] (the polling schedule and the watchlist's
//! policy) and [`protocol`] (WebSocket protocol v1); then [`replay`] (a tape through the
//! decoders and the engine: the backtest). No module reaches up this list.
#![forbid(unsafe_code)]

pub mod chain;
pub mod evaluate;
#[cfg(test)]
mod fuzz;
pub mod model;
pub mod protocol;
pub mod replay;
pub mod schedule;
pub mod settings;
pub mod signal;
pub mod sink;
pub mod source;
