//! The global event budget (`fsm.global_events_per_minute`) and the gate every opening and
//! escalation passes: whether the pair may open a market kind (it is its token's deepest pool)
//! and whether the budget has room. Time is the events' own (snapshot times), never a clock,
//! so a replay drops exactly what the live run dropped.

use serde::{Deserialize, Serialize};

use crate::model::{Direction, Kind};

const MIN_MS: f64 = 60_000.0;

/// A token bucket over event time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Budget {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: Option<i64>,
}

impl Budget {
    /// `None` for 0: no limit.
    pub(super) fn new(per_minute: f64) -> Option<Budget> {
        (per_minute > 0.0).then(|| Budget {
            capacity: per_minute,
            per_ms: per_minute / MIN_MS,
            tokens: per_minute,
            last_ms: None,
        })
    }

    /// Whether an event may go out. Rug warnings always do. Otherwise an event needs one token
    /// plus a reserve that shrinks with its score: a quarter of the bucket for bearish events,
    /// half for the others, at the emit threshold; nothing at 100. So when the bucket runs low
    /// the lowest-priority, lowest-score events are the ones dropped.
    fn admit(&mut self, t: i64, critical: bool, dir: Direction, score: u8, min_emit: u8) -> bool {
        if let Some(last) = self.last_ms {
            let dt = (t - last).max(0) as f64;
            self.tokens = (self.tokens + dt * self.per_ms).min(self.capacity);
        }
        self.last_ms = Some(self.last_ms.map_or(t, |l| l.max(t)));
        if critical {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return true;
        }
        let span = f64::from(100u8.saturating_sub(min_emit)).max(1.0);
        let strength = (f64::from(score.saturating_sub(min_emit)) / span).clamp(0.0, 1.0);
        let share = if dir == Direction::Bearish { 0.25 } else { 0.5 };
        let need = 1.0 + share * self.capacity * (1.0 - strength);
        if self.tokens >= need {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a pair may open beyond its own state: whether it is its token's deepest pool (market
/// kinds), and the global budget. Counts what it refused.
pub(super) struct Gate<'a> {
    pub(super) deepest: bool,
    pub(super) budget: Option<&'a mut Budget>,
    pub(super) min_emit: u8,
    pub(super) deduped: u64,
    pub(super) dropped: u64,
}

impl Gate<'_> {
    pub(super) fn open_allowed(&mut self, t: i64, kind: Kind, dir: Direction, score: u8) -> bool {
        if kind.is_market() && !self.deepest {
            self.deduped += 1;
            return false;
        }
        self.admit(t, kind, dir, score)
    }

    pub(super) fn admit(&mut self, t: i64, kind: Kind, dir: Direction, score: u8) -> bool {
        let Some(b) = self.budget.as_deref_mut() else {
            return true;
        };
        if b.admit(t, kind == Kind::RugWarning, dir, score, self.min_emit) {
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_drops_the_lowest_scores_first_and_never_a_rug() {
        let mut b = Budget::new(120.0).unwrap();
        let t = 1_000;
        // Drain it with strong bullish events: each needs only its token.
        let mut passed = 0;
        while b.admit(t, false, Direction::Bullish, 100, 40) {
            passed += 1;
        }
        assert_eq!(passed, 120, "the whole bucket at once");
        assert!(
            b.admit(t, true, Direction::Bearish, 50, 40),
            "a rug always passes"
        );
        // Refill half the bucket (30 s): a weak bullish event needs 1 + 60 tokens, a weak bearish
        // one 1 + 30, a strong one 1.
        let t = t + 30_000;
        assert!(!b.admit(t, false, Direction::Bullish, 40, 40));
        assert!(b.admit(t, false, Direction::Bearish, 40, 40));
        assert!(b.admit(t, false, Direction::Bullish, 95, 40));
        // Time never runs backwards for the bucket.
        let before = b.tokens;
        b.admit(t - 10_000, false, Direction::Bullish, 40, 40);
        assert!(b.tokens <= before);
        assert!(Budget::new(0.0).is_none(), "0: no limit");
    }
}
