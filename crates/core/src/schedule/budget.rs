//! Rate and failure arithmetic with the time passed in (as linkerd's EWMA and backoff): a token
//! bucket per endpoint class (and per WebSocket session, for inbound messages), exponential
//! backoff with seeded jitter, and a circuit breaker. Validated constructors; no clock.

use rand::Rng;

/// A token bucket: `rate` tokens per minute, at most `burst`. `slow_down` lowers the rate after
/// a 429 (the documented limit is not the real one); it recovers gradually on success.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_min: f64,
    burst: f64,
    tokens: f64,
    last_ms: i64,
    factor: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a token bucket needs a positive rate and a burst of at least 1")]
pub struct BadBucket;

impl TokenBucket {
    pub fn try_new(rate_per_min: f64, burst: f64, now_ms: i64) -> Result<TokenBucket, BadBucket> {
        if !(rate_per_min.is_finite() && rate_per_min > 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(BadBucket);
        }
        Ok(TokenBucket {
            rate_per_min,
            burst,
            // Start with one token, not a full burst: a restart must not spike upstream.
            tokens: 1.0,
            last_ms: now_ms,
            factor: 1.0,
        })
    }

    /// A bucket that starts full: a client's first burst of messages is allowed at once.
    pub fn try_full(rate_per_min: f64, burst: f64, now_ms: i64) -> Result<TokenBucket, BadBucket> {
        Ok(Rate::try_new(rate_per_min, burst)?.full_bucket(now_ms))
    }

    fn refill(&mut self, now_ms: i64) {
        let dt = (now_ms - self.last_ms).max(0) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt * self.effective_rate() / 60_000.0).min(self.burst);
    }

    pub fn effective_rate(&self) -> f64 {
        self.rate_per_min * self.factor
    }

    pub fn try_take(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub fn ready_at(&self, now_ms: i64) -> i64 {
        let mut b = self.clone();
        b.refill(now_ms);
        if b.tokens >= 1.0 {
            now_ms
        } else {
            now_ms + ((1.0 - b.tokens) * 60_000.0 / b.effective_rate()).ceil() as i64
        }
    }

    pub fn slow_down(&mut self) {
        self.factor = (self.factor * 0.7).max(0.1);
        self.tokens = self.tokens.min(0.0);
    }

    pub fn recover(&mut self) {
        self.factor = (self.factor * 1.02).min(1.0);
    }
}

/// A checked rate and burst: buckets made from it cannot be invalid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_min: f64,
    burst: f64,
}

impl Rate {
    pub fn try_new(per_min: f64, burst: f64) -> Result<Rate, BadBucket> {
        if per_min.is_finite() && per_min > 0.0 && burst.is_finite() && burst >= 1.0 {
            Ok(Rate { per_min, burst })
        } else {
            Err(BadBucket)
        }
    }

    /// A bucket at this rate that starts full.
    pub fn full_bucket(&self, now_ms: i64) -> TokenBucket {
        TokenBucket {
            rate_per_min: self.per_min,
            burst: self.burst,
            tokens: self.burst,
            last_ms: now_ms,
            factor: 1.0,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_min / 60.0
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: i64,
    max_ms: i64,
    attempt: u32,
    until_ms: i64,
}

impl Backoff {
    pub fn new(base_ms: i64, max_ms: i64) -> Backoff {
        Backoff {
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms.max(1)),
            attempt: 0,
            until_ms: i64::MIN,
        }
    }

    /// Backs off after a failure; `retry_after_ms` (from the server) wins when given.
    pub fn fail(&mut self, now_ms: i64, retry_after_ms: Option<i64>, rng: &mut impl Rng) -> i64 {
        self.attempt = self.attempt.saturating_add(1);
        let wait = match retry_after_ms {
            Some(r) => r.clamp(0, self.max_ms * 10),
            None => {
                let cap = (self.base_ms.saturating_mul(1 << self.attempt.min(20))).min(self.max_ms);
                // Full jitter, but at least half: never hammer right back.
                rng.gen_range(cap / 2..=cap)
            }
        };
        self.until_ms = self.until_ms.max(now_ms + wait);
        wait
    }

    pub fn succeed(&mut self) {
        self.attempt = 0;
    }

    pub fn blocked_until(&self) -> i64 {
        self.until_ms
    }
}

/// Opens after `threshold` consecutive failures, for `open_ms`; then lets one try through.
#[derive(Debug, Clone)]
pub struct Circuit {
    threshold: u32,
    open_ms: i64,
    failures: u32,
    open_until: i64,
}

impl Circuit {
    pub fn new(threshold: u32, open_ms: i64) -> Circuit {
        Circuit {
            threshold: threshold.max(1),
            open_ms,
            failures: 0,
            open_until: i64::MIN,
        }
    }

    pub fn fail(&mut self, now_ms: i64) {
        self.failures += 1;
        if self.failures >= self.threshold {
            self.open_until = now_ms + self.open_ms;
        }
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
        self.open_until = i64::MIN;
    }

    pub fn is_open(&self, now_ms: i64) -> bool {
        now_ms < self.open_until
    }

    pub fn open_until(&self) -> i64 {
        self.open_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn a_bucket_refills_at_its_rate_and_slows_down_after_a_429() {
        assert!(TokenBucket::try_new(0.0, 1.0, 0).is_err());
        assert!(TokenBucket::try_new(60.0, 0.5, 0).is_err());
        let mut b = TokenBucket::try_new(60.0, 2.0, 0).unwrap();
        assert!(b.try_take(0), "one token to start with, not a burst");
        assert!(!b.try_take(0));
        assert_eq!(b.ready_at(0), 1_000);
        assert!(b.try_take(1_000));
        b.slow_down();
        assert!(b.effective_rate() < 60.0);
        let mut f = TokenBucket::try_full(60.0, 3.0, 0).unwrap();
        assert!(f.try_take(0) && f.try_take(0) && f.try_take(0) && !f.try_take(0));
    }

    #[test]
    fn a_circuit_opens_after_its_threshold_and_closes_on_success() {
        let mut c = Circuit::new(3, 1_000);
        c.fail(0);
        c.fail(0);
        assert!(!c.is_open(0));
        c.fail(10);
        assert!(c.is_open(10) && !c.is_open(1_010));
        c.succeed();
        assert!(!c.is_open(10));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_its_cap(fails in 1u32..40, seed in any::<u64>()) {
            let mut b = Backoff::new(1_000, 60_000);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..fails {
                let w = b.fail(0, None, &mut rng);
                prop_assert!((500..=60_000).contains(&w), "{w}");
            }
        }

        #[test]
        fn a_bucket_never_gives_more_than_rate_and_burst(
            rate in 1.0f64..600.0, burst in 1.0f64..10.0, steps in proptest::collection::vec(0i64..5_000, 1..200),
        ) {
            let mut b = TokenBucket::try_full(rate, burst, 0).unwrap();
            let (mut now, mut taken) = (0i64, 0u64);
            for dt in steps {
                now += dt;
                while b.try_take(now) {
                    taken += 1;
                }
            }
            prop_assert!(taken as f64 <= burst + rate * now as f64 / 60_000.0 + 1e-9);
        }
    }
}
