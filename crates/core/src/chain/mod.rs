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

use crate::source::tape::{Body, Response};
use crate::source::Input;

/// What the engine gets from one reply, in order: a reorganisation's notice, the snapshots,
/// then the tick. The live driver and a replay both hand these on as they are.
pub fn inputs(out: Output) -> Vec<Input> {
    let mut v = Vec::new();
    if let Some(r) = out.reorg {
        v.push(Input::Reorg {
            pairs: r.pairs,
            from_block: r.fork + 1,
            to_block: r.replaced_to,
            at_ms: r.at_ms,
        });
    }
    if !out.snapshots.is_empty() {
        v.push(Input::Snapshots(out.snapshots));
    }
    if let Some(t) = out.tick {
        v.push(Input::Tick(t));
    }
    v
}

/// The name a tape gives the line that holds the follower's state (its first line, and the
/// state a recording started from).
pub const STATE_REQUEST: &str = "state";

/// A chain's recorded replies, followed as the live source followed them: the tape's state
/// line starts a follower, each reply line goes to it in order.
#[derive(Debug, Default)]
pub struct TapeFollower {
    follower: Option<Follower>,
}

impl TapeFollower {
    /// The inputs one `evm` tape line gives, and what was wrong with it.
    pub fn feed(&mut self, r: &Response) -> (Vec<Input>, Vec<String>) {
        let Body::Json(body) = &r.body else {
            return (
                Vec::new(),
                vec![format!("{}: the reply is not JSON", r.request)],
            );
        };
        if r.request == STATE_REQUEST {
            return match serde_json::from_value::<Follower>(body.clone()) {
                Ok(f) => {
                    self.follower = Some(f);
                    (Vec::new(), Vec::new())
                }
                Err(e) => (Vec::new(), vec![format!("the follower's state line: {e}")]),
            };
        }
        let Some(f) = self.follower.as_mut() else {
            return (
                Vec::new(),
                vec!["a chain reply before the follower's state line".to_string()],
            );
        };
        let call: rpc::Call = match serde_json::from_str(&r.request) {
            Ok(c) => c,
            Err(e) => return (Vec::new(), vec![format!("{}: not a call ({e})", r.request)]),
        };
        let out = f.on_reply(&call, body);
        let problems = out.problems.clone();
        (inputs(out), problems)
    }
}
