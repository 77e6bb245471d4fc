//! The chain source's pure half (docs/sources.md, "The chain"): what Uniswap V2 pairs and V3
//! pools (and their forks) say in their logs, turned into the same [`crate::model::Snapshot`]s
//! the aggregators give, but exact and at each block. [`abi`] declares the contracts' events
//! and calls; [`rpc`] is the JSON-RPC as data; [`pool`] keeps one pool's state and windows;
//! [`follower`] decides what to ask next and applies the answers, reorganisations included.
//! No I/O, no clock: the root crate's driver makes the calls, and a replay feeds the recorded
//! answers in the same order to get the same snapshots.

pub mod abi;
pub mod follower;
pub mod pool;
pub mod rpc;

pub use follower::{Factory, Follower, Output, QuotePrice, QuoteToken, Reorg, Settings, Start};
pub use pool::Version;
