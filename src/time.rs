//! The wall clock. This is the only module that reads it (a test in `tests/it/tidy.rs` keeps it
//! so): everything else is handed a [`Clock`] or a time, so that tests can control time and the
//! signal core never sees it at all.
//!
//! Monotonic timers (heartbeats, pacing, time-outs) use tokio's clock, which tests pause.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where "now" comes from: the system's wall clock, or one a test sets.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// Unix microseconds, moved only by the test that holds it.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that stands at `start_ms` until the test moves it.
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms.saturating_mul(1000))))
    }

    /// Unix microseconds.
    pub fn now_us(&self) -> i64 {
        match self {
            Clock::System => system_us(),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_us() / 1000
    }

    /// Moves a manual clock forward; the system clock moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            t.fetch_add(us, Ordering::AcqRel);
        }
    }
}

fn system_us() -> i64 {
    // A clock before 1970 is a broken machine; 0 makes every age huge, which fails safe
    // (readiness reports silence) rather than panicking.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_time_moves_only_when_told() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 2_500);
        assert_eq!(c.now_us(), 2_500_000);
        let s = Clock::System;
        assert!(s.now_ms() > 1_700_000_000_000);
    }
}
