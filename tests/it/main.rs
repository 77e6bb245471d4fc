//! The one integration-test binary. Table of contents:
//!
//! - `support`: fixtures, running the simulator through a tape and the engine in memory.
//! - `decode`: every recorded upstream payload decodes, checked field by field; drift and junk.
//! - `chain`: the chain source against anvil running the real Uniswap V2 and V3 contracts.
//! - `cluster`: the JetStream event stream against a real nats-server started here.
//! - `checkpoint`: the engine restored from its checkpoints continues byte for byte.
//! - `engine`: the worked example of docs/signals.md and the state machine's rules.
//! - `scenarios`: the scenario table below, through simulator, tape, decoder and engine.
//! - `properties`: proptest properties of the engine: bounds, duplicates, interleaving, missing data.
//! - `cli`: the `dexpulse` binary: simulate, replay, bad lines, exit codes.
//! - `server`: helpers for the server tests (a server on 127.0.0.1:0, real WebSocket clients).
//! - `ws`: WebSocket protocol v1: subscribe, filters, resume, slow consumers, bad input, auth.
//! - `http`: /v1/pairs, /v1/signals, /healthz, /readyz, /metrics.
//! - `sinks`: alerts to a signing-checking webhook receiver and Telegram and Discord stand-ins.
//! - `store`: the event log through the server: paging, retention, a long resume, a full disk.
//! - `pipeline`: the whole streamer fed by a tape, as a client sees it.
//! - `hostile`: the attacks found against the server, reproduced, and what holds instead.
//! - `upstream`: a fake DexScreener/GeckoTerminal: recorded payloads, rate limits, faults.
//! - `live`: the live sources against it: values, events, 429s, faults, fallback, recording.
//! - `loadgen`: the load generator against a server that is not dexpulse, and against dexpulse.
//! - `trust`: the cluster's trust boundary: NATS permissions, forgeries, replays, authentication.
//! - `tidy`: the architecture's invariants, read from the source: the module DAG, what each
//!   module never does, a `//!` header on every file.

/// A test run on both of tokio's runtimes: `NAME::current_thread` and `NAME::multi_thread`.
/// Nothing in the server may depend on the runtime's flavour (no `block_in_place`, no second
/// worker to make progress while one blocks), and the cluster and store tests prove it.
macro_rules! on_both_runtimes {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[tokio::test(flavor = "current_thread")]
            async fn current_thread() {
                body().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                body().await
            }
        }
    };
}

mod apidocs;
mod chain;
mod checkpoint;
mod cli;
mod cluster;
mod dashboard;
mod decode;
mod engine;
mod hostile;
mod http;
mod live;
mod loadgen;
mod noise;
mod pipeline;
mod properties;
mod real;
mod scenarios;
mod server;
mod sinks;
mod store;
mod support;
mod tidy;
mod trust;
mod upstream;
mod ws;
