//! The alert sinks (docs/sinks.md): each `[[sinks]]` entry is one more reader of the hub's
//! numbered frames, with its own filter, cursor, limits and receiver: a webhook signed by the
//! Standard Webhooks convention, a Telegram chat, or a Discord channel. A sink delivers in seq
//! order, at least once, with the event id as the idempotency key; it never slows the engine or
//! the WebSocket clients (it reads the history like a resuming client, at its own pace).
//!
//! `settings`: the `[[sinks]]` tables checked, secrets read from their files (never printed);
//! `deliver`: the loop of one sink; `post`: the HTTP requests (the only code here that speaks
//! to a receiver); `Board`: what `GET /v1/sinks` shows.

mod deliver;
mod post;
mod settings;

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use deliver::{run, SinkError};
pub use settings::{ChatId, RawSink, Settings, Target};

use crate::hub::Hub;
use crate::metrics::SinkMetrics;
use crate::store::SinkFiles;
use crate::time::Clock;

/// What one sink needs to run.
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    /// `None` without a data directory: the sink starts at the head at every start.
    pub files: Option<SinkFiles>,
    pub status: Arc<Status>,
    /// The hub's epoch and head when the process built the sink, before anything published:
    /// where a new sink starts (nothing published since is missed, however late its task runs).
    pub start: (dexpulse_core::protocol::Epoch, u64),
    pub metrics: SinkMetrics,
    pub clock: Clock,
    pub shutdown: CancellationToken,
}

/// One sink's state as `GET /v1/sinks` shows it.
#[derive(Debug, Default, Clone, Serialize)]
struct Shown {
    name: String,
    kind: &'static str,
    /// Where it posts, without secrets (a Discord webhook's URL holds its token).
    receiver: String,
    /// Whether the cursor is kept in the data directory (else a restart starts at the head).
    durable: bool,
    /// `starting`, `delivering`, `retrying`, `waiting` (the service's rate), `idle`.
    state: &'static str,
    epoch: String,
    /// The last seq delivered (or passed over: not matching, dead-lettered).
    cursor: u64,
    head: u64,
    lag_seqs: u64,
    /// Age of the oldest undelivered event, seconds.
    lag_seconds: f64,
    delivered: u64,
    retried: u64,
    dead_lettered: u64,
    /// Events the log no longer held when the sink reached them.
    missed: u64,
    last_error: Option<String>,
    last_error_at_us: Option<i64>,
    last_delivered_at_us: Option<i64>,
    dead_letter_file: Option<String>,
    /// Publish time of the oldest undelivered event, for `lag_seconds`.
    #[serde(skip)]
    pending_since_us: Option<i64>,
}

/// A sink's status, written by its loop, read by `/v1/sinks`.
#[derive(Debug)]
pub struct Status(Mutex<Shown>);

impl Status {
    fn new(s: &Settings, files: Option<&SinkFiles>) -> Status {
        Status(Mutex::new(Shown {
            name: s.name.clone(),
            kind: s.target.kind(),
            receiver: s.target.shown(),
            durable: files.is_some(),
            state: "starting",
            dead_letter_file: files.map(|f| f.dead_letter_path().display().to_string()),
            ..Shown::default()
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Shown> {
        // Plain fields: a panic under the lock leaves them readable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shown(&self, now_us: i64) -> Shown {
        let mut s = self.lock().clone();
        s.lag_seqs = s.head.saturating_sub(s.cursor);
        s.lag_seconds = s
            .pending_since_us
            .map_or(0.0, |p| (now_us - p).max(0) as f64 / 1e6);
        s
    }
}

/// Every sink's status, for `GET /v1/sinks`.
#[derive(Debug, Default)]
pub struct Board {
    sinks: Vec<Arc<Status>>,
    clock: Clock,
}

impl Board {
    pub fn new(clock: Clock) -> Board {
        Board {
            sinks: Vec::new(),
            clock,
        }
    }

    /// A status for a sink about to start.
    pub fn add(&mut self, s: &Settings, files: Option<&SinkFiles>) -> Arc<Status> {
        let st = Arc::new(Status::new(s, files));
        self.sinks.push(st.clone());
        st
    }

    /// `{"sinks":[…]}`.
    pub fn render(&self) -> String {
        let now = self.clock.now_us();
        let sinks: Vec<Shown> = self.sinks.iter().map(|s| s.shown(now)).collect();
        serde_json::json!({ "sinks": sinks }).to_string()
    }
}
