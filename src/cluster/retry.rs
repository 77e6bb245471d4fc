//! Waiting between attempts for the cluster's loops (the ingest's connection and publishes,
//! the edge's follower and pairs): the core's `Backoff` (exponential, capped, jittered by a
//! seeded generator so that edges restarted together do not retry in step), a pause that ends
//! early on shutdown, and a reset after progress.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio_util::sync::CancellationToken;

use dexpulse_core::schedule::budget::Backoff;

const MIN_MS: i64 = 100;
const MAX_MS: i64 = 5_000;

/// One loop's retries.
pub struct Retry {
    backoff: Backoff,
    rng: ChaCha8Rng,
}

impl Retry {
    /// `seed` spreads the jitter of processes that fail together (the process id will do).
    pub fn new(seed: u64) -> Retry {
        Retry {
            backoff: Backoff::new(MIN_MS, MAX_MS),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A retry for this process.
    pub fn here() -> Retry {
        Retry::new(u64::from(std::process::id()))
    }

    /// The next wait after a failure.
    pub fn next_wait(&mut self) -> Duration {
        // The backoff's own deadline is not used: the wait is slept here.
        let ms = self.backoff.fail(0, None, &mut self.rng);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Sleeps the next wait; `false` when shutdown came first.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// After progress: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.backoff.succeed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_start_again_after_progress() {
        let mut r = Retry::new(7);
        let waits: Vec<u64> = (0..10).map(|_| r.next_wait().as_millis() as u64).collect();
        assert!(waits[0] >= 100 && waits[0] <= 200, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= 5_000), "{waits:?}");
        assert!(waits[9] >= 2_500, "{waits:?}");
        r.reset();
        assert!(r.next_wait() <= Duration::from_millis(200));
    }

    #[test]
    fn the_same_seed_gives_the_same_waits() {
        let mut a = Retry::new(3);
        let mut b = Retry::new(3);
        for _ in 0..8 {
            assert_eq!(a.next_wait(), b.next_wait());
        }
    }
}
