//! One WebSocket session (docs/protocol.md): [`state`] is the protocol as a state machine with
//! no I/O and no clock (time comes in as milliseconds since the session began), [`outbox`] the
//! bounded queue of what waits to be written, with high and low watermarks, [`run`] the
//! session's driver that feeds them from the hub, the client and the timers, generic over
//! `Sink`/`Stream` so that unit tests drive it through channels with paused time, and
//! [`shard`] the writer tasks that run the sessions (a session has no task of its own).

pub mod outbox;
pub mod run;
pub mod shard;
pub mod state;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use dexpulse_core::protocol::FilterLimits;
use dexpulse_core::schedule::Rate;
use dexpulse_core::settings::{at_least, in_range, seconds, FieldError};

pub use run::{start, Ending, SessionCtx};

/// `[session]`: one WebSocket session's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub heartbeat_seconds: f64,
    /// Outgoing queue bounds (the high watermark): messages and bytes. Past them the session
    /// stops taking frames and reads them from the history once the queue has drained to half.
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    /// A session whose queue stays above its high watermark this long is closed with 4008.
    pub stall_close_seconds: f64,
    /// Inbound messages larger than this are closed with 1009.
    pub max_message_bytes: usize,
    /// Inbound rate limit (token bucket); a flood is closed with 1008.
    pub inbound_per_second: f64,
    pub inbound_burst: f64,
    pub max_subscriptions: usize,
    /// Entries in one filter's `chains` or `pairs` list.
    pub max_filter_list: usize,
    /// Filter entries over all of a session's subscriptions.
    pub max_filter_entries: usize,
    /// Filter entries over all sessions together: what a crowd of connections can make the
    /// server hold (each entry costs a few hundred bytes).
    pub max_total_filter_entries: usize,
    /// tungstenite's buffers, sized for many small outgoing frames (its 128 KiB defaults cost
    /// about 135 KiB per idle connection).
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Frames taken from the hub per wake-up; they are written with one flush.
    pub flush_batch: usize,
    /// Writer tasks that deliver the hub's frames to the sockets, each owning a shard of the
    /// sessions; 0: one per runtime worker thread (docs/configuration.md, "Threads").
    pub writers: usize,
    /// After the server's close frame, how long to wait for the client's (the closing
    /// handshake), so that the close frame is not lost to a connection reset.
    pub close_linger_seconds: f64,
    /// How long a client the server closes (4008, 4000, 1008, ...) has to take what it is owed
    /// (the `lagged` notice, the close frame) before the connection is dropped. At shutdown the
    /// grace period applies instead.
    pub close_timeout_seconds: f64,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            heartbeat_seconds: 25.0,
            queue_max_messages: 4_096,
            queue_max_bytes: 1 << 20,
            stall_close_seconds: 4.0,
            max_message_bytes: 64 * 1024,
            inbound_per_second: 20.0,
            inbound_burst: 40.0,
            max_subscriptions: 32,
            max_filter_list: 1_000,
            max_filter_entries: 4_096,
            max_total_filter_entries: 500_000,
            read_buffer_bytes: 256,
            write_buffer_bytes: 8 * 1024,
            flush_batch: 64,
            writers: 0,
            close_linger_seconds: 2.0,
            close_timeout_seconds: 10.0,
        }
    }
}

/// The session's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub heartbeat: Duration,
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    pub stall_close: Duration,
    pub max_message_bytes: usize,
    /// Inbound messages: a token bucket per session.
    pub inbound: Rate,
    pub max_subscriptions: usize,
    pub filter_limits: FilterLimits,
    pub max_filter_entries: usize,
    pub max_total_filter_entries: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub flush_batch: usize,
    /// `None`: one per worker thread.
    pub writers: Option<usize>,
    pub close_linger: Duration,
    pub close_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// Field names are relative to `[session]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        Ok(Settings {
            heartbeat: seconds("heartbeat_seconds", raw.heartbeat_seconds, 0.05, 3_600.0)?,
            queue_max_messages: at_least("queue_max_messages", raw.queue_max_messages, 2)?,
            queue_max_bytes: at_least("queue_max_bytes", raw.queue_max_bytes, 1024)?,
            stall_close: seconds("stall_close_seconds", raw.stall_close_seconds, 0.0, 3_600.0)?,
            max_message_bytes: at_least("max_message_bytes", raw.max_message_bytes, 256)?,
            inbound: {
                let per_s = in_range("inbound_per_second", raw.inbound_per_second, 0.01, 1e6)?;
                let burst = in_range("inbound_burst", raw.inbound_burst, 1.0, 1e6)?;
                Rate::try_new(per_s * 60.0, burst)
                    .map_err(|e| FieldError::new("inbound_per_second", e.to_string(), per_s))?
            },
            max_subscriptions: at_least("max_subscriptions", raw.max_subscriptions, 1)?,
            filter_limits: FilterLimits {
                max_list: at_least("max_filter_list", raw.max_filter_list, 1)?,
            },
            max_filter_entries: at_least("max_filter_entries", raw.max_filter_entries, 1)?,
            max_total_filter_entries: at_least(
                "max_total_filter_entries",
                raw.max_total_filter_entries,
                raw.max_filter_entries,
            )?,
            read_buffer_bytes: at_least("read_buffer_bytes", raw.read_buffer_bytes, 256)?,
            write_buffer_bytes: at_least("write_buffer_bytes", raw.write_buffer_bytes, 256)?,
            flush_batch: at_least("flush_batch", raw.flush_batch, 1)?,
            writers: match raw.writers {
                0 => None,
                n => Some(in_range("writers", n as f64, 1.0, 1024.0)? as usize),
            },
            close_linger: seconds("close_linger_seconds", raw.close_linger_seconds, 0.0, 60.0)?,
            close_timeout: seconds(
                "close_timeout_seconds",
                raw.close_timeout_seconds,
                0.1,
                3_600.0,
            )?,
        })
    }
}

/// The filter entries all sessions hold, against `session.max_total_filter_entries`. A
/// session takes its subscriptions' entries when it subscribes and gives them back when it
/// unsubscribes or ends.
#[derive(Debug)]
pub struct FilterBudget {
    max: usize,
    used: AtomicUsize,
}

impl FilterBudget {
    pub fn new(max: usize) -> FilterBudget {
        FilterBudget {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` entries if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    pub fn give(&self, n: usize) {
        // Never below zero: each give matches an earlier take.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_takes_what_fits_and_gets_it_back() {
        let b = FilterBudget::new(10);
        assert!(b.try_take(6));
        assert!(!b.try_take(5), "11 > 10");
        assert!(b.try_take(4));
        assert_eq!(b.used(), 10);
        b.give(6);
        assert!(b.try_take(5));
        assert_eq!(b.used(), 9);
        assert!(!b.try_take(usize::MAX), "no overflow");
    }
}
