//! dexpulse turns DEX pair snapshots into trading signals and streams them over WebSocket.
//!
//! The pure core lives in the `dexpulse-core` crate, re-exported here: [`model`],
//! [`settings`], [`signal`], [`source`], [`schedule`], [`protocol`], [`replay`]. This crate adds
//! what does I/O, bottom up: [`time`] (the only wall-clock read), [`metrics`], [`health`]
//! (what `/readyz` reads), [`store`] (the event log on disk, the only module touching the data
//! directory), [`hub`] (history, fan-out, pair states), [`live`] and [`evm`] (the only
//! HTTP and JSON-RPC to upstream), [`sinks`] (alerts to webhooks, Telegram and Discord: the
//! only posts to receivers), [`server`] (HTTP and WebSocket sessions), and [`app`], the composition root, the
//! only module that imports everything. A module imports only from below it in this list;
//! `tests/it/tidy.rs` checks it, and ARCHITECTURE.md draws it.
#![forbid(unsafe_code)]

pub use dexpulse_core::{
    chain, evaluate, model, protocol, replay, schedule, settings, signal, sink, source,
};

pub mod app;
pub mod cluster;
pub mod evm;
pub mod health;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod server;
pub mod sinks;
pub mod store;
pub mod time;
