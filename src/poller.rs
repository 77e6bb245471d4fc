//! The polling schedule (sans-IO): which pairs to ask for next, within each endpoint class's
//! rate budget, in full batches, with priority for active pairs and bounded staleness for all;
//! backoff on 429 (`Retry-After` first), 5xx and time-outs; a circuit per endpoint class;
//! batch-size fallback when a batch call fails with a 4xx; the watchlist with eviction.
//!
//! Time is an argument everywhere (as linkerd's EWMA and backoff); jitter comes from a seeded
//! RNG. The async driver in `source::live` does the I/O and reports outcomes back here. This
//! module never parses and never does signal logic.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::PairKey;

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

/// The endpoint classes, each with its own budget, backoff and circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// DexScreener pairs, tokens, search: 300 req/min documented.
    DexPairs,
    /// DexScreener token-profiles and token-boosts: 60 req/min documented.
    DexDiscovery,
    /// GeckoTerminal, keyless: 30 calls/min documented.
    Gecko,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::DexPairs, Class::DexDiscovery, Class::Gecko];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::DexPairs => "dexscreener_pairs",
            Class::DexDiscovery => "dexscreener_discovery",
            Class::Gecko => "geckoterminal",
        }
    }
}

/// A request the driver should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `/latest/dex/pairs/{chain}/{ids}`
    DexPairs {
        chain: String,
        ids: Vec<String>,
    },
    /// `/tokens/v1/{chain}/{addrs}`
    DexTokens {
        chain: String,
        tokens: Vec<String>,
    },
    DexProfiles,
    DexBoosts,
    /// `/latest/dex/search?q=` (pairs class).
    DexSearch {
        query: String,
    },
    /// `/networks/{net}/pools/multi/{addrs}` (chain as DexScreener names it)
    GeckoPools {
        chain: String,
        addresses: Vec<String>,
    },
    GeckoNewPools {
        chain: String,
    },
    GeckoTrending {
        chain: String,
    },
}

impl Request {
    /// The pairs a polling request asks for (none for lookups and feeds).
    pub fn pairs(&self) -> Vec<PairKey> {
        match self {
            Request::DexPairs { chain, ids: addrs }
            | Request::GeckoPools {
                chain,
                addresses: addrs,
            } => addrs
                .iter()
                .map(|a| PairKey::new(chain.clone(), a.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn class(&self) -> Class {
        match self {
            Request::DexPairs { .. } | Request::DexTokens { .. } | Request::DexSearch { .. } => {
                Class::DexPairs
            }
            Request::DexProfiles | Request::DexBoosts => Class::DexDiscovery,
            Request::GeckoPools { .. }
            | Request::GeckoNewPools { .. }
            | Request::GeckoTrending { .. } => Class::Gecko,
        }
    }
}

/// How a request ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx and decoded: the pairs it reported (a pair asked for but absent was not found).
    Ok { found: Vec<PairKey> },
    /// 429, with `Retry-After` in ms when the server sent one.
    RateLimited { retry_after_ms: Option<i64> },
    /// 4xx other than 429 (a batch the endpoint refuses, a bad address).
    ClientError { status: u16 },
    /// 5xx, a time-out, a connection error, or a body that did not decode.
    Failed,
}

/// Which upstream polls a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    Dex,
    Gecko,
}

#[derive(Debug, Clone)]
struct Tracked {
    via: Via,
    last_polled_ms: i64,
    /// Pinned pairs come from configuration and are never evicted.
    pinned: bool,
    /// Open episodes or high activity: polled more often.
    hot: bool,
    misses: u32,
}

/// The scheduler's settings (validated in `config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub dex_rate_per_min: f64,
    pub dex_discovery_rate_per_min: f64,
    pub gecko_rate_per_min: f64,
    pub dex_batch: usize,
    pub gecko_batch: usize,
    /// Poll a pair about this often (hot pairs twice as often), never a GeckoTerminal pool
    /// faster than `gecko_min_interval_ms`.
    pub target_interval_ms: i64,
    pub gecko_min_interval_ms: i64,
    /// A pair this stale goes first, whatever its priority.
    pub max_staleness_ms: i64,
    /// How often to ask the discovery feeds (0: never).
    pub discovery_interval_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub circuit_failures: u32,
    pub circuit_open_ms: i64,
    pub max_pairs: usize,
    /// Misses (asked for, not returned) before a discovered pair is evicted.
    pub evict_after_misses: u32,
    pub discovery_chains: Vec<String>,
    pub gecko_discovery: bool,
    pub search_queries: Vec<String>,
    pub seed: u64,
}

struct ClassState {
    bucket: TokenBucket,
    backoff: Backoff,
    circuit: Circuit,
    /// Send times in the last minute, for the budget-use gauge.
    sent: std::collections::VecDeque<i64>,
    nominal_rate: f64,
}

/// What `Scheduler::report` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Pairs evicted as not found upstream.
    pub evicted: Vec<PairKey>,
    /// How long the class now backs off (0 when it does not).
    pub backoff_ms: i64,
}

pub struct Scheduler {
    s: Settings,
    pairs: BTreeMap<PairKey, Tracked>,
    classes: BTreeMap<Class, ClassState>,
    /// The batch size in force for DexScreener pairs (halved after a 4xx on a batch).
    dex_batch: usize,
    /// Tokens discovered and waiting for a lookup, by chain.
    pending_tokens: BTreeMap<String, BTreeSet<String>>,
    next_discovery_ms: i64,
    discovery_turn: usize,
    rng: ChaCha8Rng,
}

/// What the scheduler tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Send(Request),
    /// Nothing to do before this time.
    WaitUntil(i64),
}

impl Scheduler {
    pub fn try_new(s: Settings, now_ms: i64) -> Result<Scheduler, BadBucket> {
        let mut classes = BTreeMap::new();
        for (class, rate) in [
            (Class::DexPairs, s.dex_rate_per_min),
            (Class::DexDiscovery, s.dex_discovery_rate_per_min),
            (Class::Gecko, s.gecko_rate_per_min),
        ] {
            classes.insert(
                class,
                ClassState {
                    bucket: TokenBucket::try_new(rate, (rate / 60.0).clamp(1.0, 5.0), now_ms)?,
                    backoff: Backoff::new(s.backoff_base_ms, s.backoff_max_ms),
                    circuit: Circuit::new(s.circuit_failures, s.circuit_open_ms),
                    sent: std::collections::VecDeque::new(),
                    nominal_rate: rate,
                },
            );
        }
        Ok(Scheduler {
            dex_batch: s.dex_batch.max(1),
            rng: ChaCha8Rng::seed_from_u64(s.seed),
            next_discovery_ms: now_ms,
            discovery_turn: 0,
            pending_tokens: BTreeMap::new(),
            pairs: BTreeMap::new(),
            classes,
            s,
        })
    }

    /// Adds a pair to the watchlist; `false` when the list is full (pinned pairs always fit).
    pub fn track(&mut self, key: PairKey, via: Via, pinned: bool) -> bool {
        if self.pairs.contains_key(&key) {
            return true;
        }
        if !pinned && self.pairs.len() >= self.s.max_pairs {
            return false;
        }
        self.pairs.insert(
            key,
            Tracked {
                via,
                last_polled_ms: i64::MIN / 2,
                pinned,
                hot: false,
                misses: 0,
            },
        );
        true
    }

    pub fn untrack(&mut self, key: &PairKey) -> bool {
        self.pairs.remove(key).is_some()
    }

    pub fn tracked(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_tracked(&self, key: &PairKey) -> bool {
        self.pairs.contains_key(key)
    }

    /// Marks a pair hot (open episodes, high activity) or not.
    pub fn set_hot(&mut self, key: &PairKey, hot: bool) {
        if let Some(t) = self.pairs.get_mut(key) {
            t.hot = hot;
        }
    }

    /// Discovered token addresses to look up on DexScreener.
    pub fn add_tokens(&mut self, chain: &str, tokens: impl IntoIterator<Item = String>) {
        if !self.s.discovery_chains.iter().any(|c| c == chain) {
            return;
        }
        self.pending_tokens
            .entry(chain.to_string())
            .or_default()
            .extend(tokens);
    }

    /// Seconds since each tracked pair was last asked for (for the staleness histogram).
    pub fn staleness_ms(&self, now_ms: i64) -> impl Iterator<Item = i64> + '_ {
        self.pairs
            .values()
            .filter(|t| t.last_polled_ms > i64::MIN / 2)
            .map(move |t| now_ms - t.last_polled_ms)
    }

    /// Whether a class's circuit is open (for `/readyz`).
    pub fn circuit_open(&self, class: Class, now_ms: i64) -> bool {
        self.classes
            .get(&class)
            .is_some_and(|c| c.circuit.is_open(now_ms))
    }

    pub fn effective_rate(&self, class: Class) -> f64 {
        self.classes
            .get(&class)
            .map_or(0.0, |c| c.bucket.effective_rate())
    }

    pub fn dex_batch(&self) -> usize {
        self.dex_batch
    }

    /// When a class may send again (backoff, circuit, bucket).
    fn class_ready_at(&self, class: Class, now_ms: i64) -> i64 {
        let Some(c) = self.classes.get(&class) else {
            return i64::MAX;
        };
        let mut t = c.bucket.ready_at(now_ms).max(c.backoff.blocked_until());
        if c.circuit.is_open(now_ms) {
            t = t.max(c.circuit.open_until());
        }
        t
    }

    /// A pair's urgency now: how overdue it is, doubled for hot pairs; a starving pair first.
    fn urgency(&self, t: &Tracked, now_ms: i64) -> Option<i64> {
        let interval = if t.hot {
            self.s.target_interval_ms / 2
        } else {
            self.s.target_interval_ms
        };
        let interval = if t.via == Via::Gecko {
            interval.max(self.s.gecko_min_interval_ms)
        } else {
            interval
        };
        let age = now_ms - t.last_polled_ms;
        if age < interval {
            return None;
        }
        let weight = if t.hot { 2 } else { 1 };
        let starving = if age >= self.s.max_staleness_ms {
            i64::MAX / 4
        } else {
            0
        };
        Some(starving.saturating_add(age.saturating_mul(weight)))
    }

    /// The most urgent due pairs of one upstream, grouped by chain: the chain with the most
    /// urgent pair, up to `batch` of its due pairs, most urgent first.
    fn batch(&self, via: Via, batch: usize, now_ms: i64) -> Option<(String, Vec<PairKey>)> {
        let mut due: Vec<(i64, &PairKey)> = self
            .pairs
            .iter()
            .filter(|(_, t)| t.via == via)
            .filter_map(|(k, t)| self.urgency(t, now_ms).map(|u| (u, k)))
            .collect();
        if due.is_empty() {
            return None;
        }
        due.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let chain = due[0].1.chain.clone();
        let keys: Vec<PairKey> = due
            .into_iter()
            .filter(|(_, k)| k.chain == chain)
            .take(batch)
            .map(|(_, k)| k.clone())
            .collect();
        Some((chain, keys))
    }

    /// The earliest time some tracked pair of `via` becomes due.
    fn next_due(&self, via: Via, now_ms: i64) -> i64 {
        self.pairs
            .values()
            .filter(|t| t.via == via)
            .map(|t| {
                let interval = if t.hot {
                    self.s.target_interval_ms / 2
                } else {
                    self.s.target_interval_ms
                };
                let interval = if via == Via::Gecko {
                    interval.max(self.s.gecko_min_interval_ms)
                } else {
                    interval
                };
                t.last_polled_ms.saturating_add(interval)
            })
            .min()
            .unwrap_or(i64::MAX)
            .max(now_ms)
    }

    /// The next request to send now, or when to ask again.
    pub fn next(&mut self, now_ms: i64) -> Next {
        let mut wake = i64::MAX;
        // Discovery first when due: it is cheap and feeds the watchlist.
        if self.s.discovery_interval_ms > 0 && now_ms >= self.next_discovery_ms {
            let feeds = self.discovery_feeds();
            if !feeds.is_empty() {
                let req = feeds[self.discovery_turn % feeds.len()].clone();
                let class = req.class();
                if self.class_ready_at(class, now_ms) <= now_ms && self.take(class, now_ms) {
                    self.discovery_turn += 1;
                    if self.discovery_turn % feeds.len() == 0 {
                        self.next_discovery_ms = now_ms + self.s.discovery_interval_ms;
                    }
                    return Next::Send(req);
                }
                wake = wake.min(self.class_ready_at(class, now_ms));
            }
        } else if self.s.discovery_interval_ms > 0 {
            wake = wake.min(self.next_discovery_ms);
        }

        // DexScreener: pairs due, then token lookups from discovery.
        let dex_ready = self.class_ready_at(Class::DexPairs, now_ms);
        if dex_ready <= now_ms {
            if let Some((chain, keys)) = self.batch(Via::Dex, self.dex_batch, now_ms) {
                if self.take(Class::DexPairs, now_ms) {
                    self.mark_polled(&keys, now_ms);
                    let ids = keys.into_iter().map(|k| k.address).collect();
                    return Next::Send(Request::DexPairs { chain, ids });
                }
            } else if let Some((chain, tokens)) = self.next_tokens() {
                if self.take(Class::DexPairs, now_ms) {
                    return Next::Send(Request::DexTokens { chain, tokens });
                }
            }
        }
        wake = wake.min(dex_ready.max(self.next_due(Via::Dex, now_ms)));
        if !self.pending_tokens.is_empty() {
            wake = wake.min(dex_ready);
        }

        let gecko_ready = self.class_ready_at(Class::Gecko, now_ms);
        if gecko_ready <= now_ms {
            if let Some((chain, keys)) = self.batch(Via::Gecko, self.s.gecko_batch.max(1), now_ms) {
                if self.take(Class::Gecko, now_ms) {
                    self.mark_polled(&keys, now_ms);
                    let addresses = keys.into_iter().map(|k| k.address).collect();
                    return Next::Send(Request::GeckoPools { chain, addresses });
                }
            }
        }
        wake = wake.min(gecko_ready.max(self.next_due(Via::Gecko, now_ms)));
        Next::WaitUntil(wake.max(now_ms + 1))
    }

    fn discovery_feeds(&self) -> Vec<Request> {
        let mut feeds = vec![Request::DexProfiles, Request::DexBoosts];
        for q in &self.s.search_queries {
            feeds.push(Request::DexSearch { query: q.clone() });
        }
        if self.s.gecko_discovery {
            for c in &self.s.discovery_chains {
                feeds.push(Request::GeckoNewPools { chain: c.clone() });
                feeds.push(Request::GeckoTrending { chain: c.clone() });
            }
        }
        feeds
    }

    fn next_tokens(&mut self) -> Option<(String, Vec<String>)> {
        let chain = self.pending_tokens.keys().next()?.clone();
        let set = self.pending_tokens.get_mut(&chain)?;
        let tokens: Vec<String> = set.iter().take(30).cloned().collect();
        for t in &tokens {
            set.remove(t);
        }
        if set.is_empty() {
            self.pending_tokens.remove(&chain);
        }
        Some((chain, tokens))
    }

    fn take(&mut self, class: Class, now_ms: i64) -> bool {
        let Some(c) = self.classes.get_mut(&class) else {
            return false;
        };
        if !c.bucket.try_take(now_ms) {
            return false;
        }
        c.sent.push_back(now_ms);
        while c.sent.front().is_some_and(|t| *t <= now_ms - 60_000) {
            c.sent.pop_front();
        }
        true
    }

    /// Requests sent in the last minute as a percentage of the class's configured rate.
    pub fn budget_used_pct(&self, class: Class, now_ms: i64) -> f64 {
        self.classes.get(&class).map_or(0.0, |c| {
            let n = c.sent.iter().filter(|t| **t > now_ms - 60_000).count();
            100.0 * n as f64 / c.nominal_rate
        })
    }

    /// Reports how a request ended.
    pub fn report(&mut self, req: &Request, outcome: &Outcome, now_ms: i64) -> Report {
        let class = req.class();
        let mut evicted = Vec::new();
        let mut backoff_ms = 0;
        let Some(c) = self.classes.get_mut(&class) else {
            return Report::default();
        };
        match outcome {
            Outcome::Ok { found } => {
                c.backoff.succeed();
                c.circuit.succeed();
                c.bucket.recover();
                let asked = req.pairs();
                let found: BTreeSet<&PairKey> = found.iter().collect();
                for k in asked {
                    let Some(t) = self.pairs.get_mut(&k) else {
                        continue;
                    };
                    if found.contains(&k) {
                        t.misses = 0;
                    } else {
                        t.misses += 1;
                        if !t.pinned && t.misses >= self.s.evict_after_misses {
                            self.pairs.remove(&k);
                            evicted.push(k);
                        }
                    }
                }
            }
            Outcome::RateLimited { retry_after_ms } => {
                c.bucket.slow_down();
                backoff_ms = c.backoff.fail(now_ms, *retry_after_ms, &mut self.rng);
                self.retry_soon(req);
            }
            Outcome::ClientError { status } => {
                // A batch the endpoint refuses: smaller batches from now on (the docs disagree
                // about batching; remember what works).
                if let Request::DexPairs { ids, .. } = req {
                    if ids.len() > 1 && *status != 404 {
                        self.dex_batch = (ids.len() / 2).max(1);
                        tracing::warn!(
                            status,
                            batch = self.dex_batch,
                            "pairs batch refused; smaller batches from now on"
                        );
                    }
                }
                self.retry_soon(req);
            }
            Outcome::Failed => {
                c.circuit.fail(now_ms);
                backoff_ms = c.backoff.fail(now_ms, None, &mut self.rng);
                self.retry_soon(req);
            }
        }
        Report {
            evicted,
            backoff_ms,
        }
    }

    /// Pairs of a request that did not succeed are due again (at their old urgency); token
    /// lookups go back to the queue.
    fn retry_soon(&mut self, req: &Request) {
        if let Request::DexTokens { chain, tokens } = req {
            self.pending_tokens
                .entry(chain.clone())
                .or_default()
                .extend(tokens.iter().cloned());
        }
        self.mark_polled(&req.pairs(), i64::MIN / 2);
    }

    fn mark_polled(&mut self, keys: &[PairKey], at_ms: i64) {
        for k in keys {
            if let Some(t) = self.pairs.get_mut(k) {
                t.last_polled_ms = at_ms;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> Settings {
        Settings {
            dex_rate_per_min: 270.0,
            dex_discovery_rate_per_min: 50.0,
            gecko_rate_per_min: 25.0,
            dex_batch: 30,
            gecko_batch: 30,
            target_interval_ms: 10_000,
            gecko_min_interval_ms: 60_000,
            max_staleness_ms: 300_000,
            discovery_interval_ms: 0,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            circuit_failures: 5,
            circuit_open_ms: 30_000,
            max_pairs: 10_000,
            evict_after_misses: 3,
            discovery_chains: vec!["solana".into()],
            gecko_discovery: false,
            search_queries: Vec::new(),
            seed: 1,
        }
    }

    /// The next request, waiting as the scheduler says.
    fn next_request(s: &mut Scheduler, now: &mut i64) -> Request {
        loop {
            match s.next(*now) {
                Next::Send(r) => return r,
                Next::WaitUntil(t) => *now = t,
            }
        }
    }

    fn key(i: usize) -> PairKey {
        PairKey::new("solana", format!("P{i:04}"))
    }

    /// Drives the scheduler against an upstream that answers instantly and finds everything;
    /// returns the requests sent, polls per pair, and the largest gap between a pair's polls.
    fn simulate(s: &mut Scheduler, from: i64, to: i64) -> (usize, BTreeMap<PairKey, usize>, i64) {
        let mut now = from;
        let mut sent = 0;
        let mut polls = BTreeMap::new();
        let mut last: BTreeMap<PairKey, i64> = BTreeMap::new();
        let mut max_gap = 0;
        while now < to {
            match s.next(now) {
                Next::Send(req) => {
                    sent += 1;
                    let found: Vec<PairKey> = match &req {
                        Request::DexPairs { chain, ids } => ids
                            .iter()
                            .map(|a| PairKey::new(chain.clone(), a.clone()))
                            .collect(),
                        _ => Vec::new(),
                    };
                    for k in &found {
                        *polls.entry(k.clone()).or_insert(0) += 1;
                        let prev = last.insert(k.clone(), now).unwrap_or(from);
                        max_gap = max_gap.max(now - prev);
                    }
                    s.report(&req, &Outcome::Ok { found }, now);
                }
                Next::WaitUntil(t) => now = t,
            }
        }
        (sent, polls, max_gap)
    }

    #[test]
    fn fills_the_budget_with_full_batches_and_starves_nobody() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        for i in 0..2000 {
            s.track(key(i), Via::Dex, true);
        }
        let (sent, polls, _) = simulate(&mut s, 0, 10 * 60_000);
        // 270 requests a minute, for ten minutes (plus the one starting token).
        assert!((2690..=2702).contains(&sent), "{sent}");
        let refreshes: usize = polls.values().sum();
        assert!(
            refreshes >= sent * 30 - 30,
            "full batches: {refreshes} for {sent}"
        );
        let (lo, hi) = (polls.values().min().unwrap(), polls.values().max().unwrap());
        assert!(hi - lo <= 1, "fair: {lo}..{hi}");
    }

    #[test]
    fn hot_pairs_are_polled_more_often_but_cold_ones_within_max_staleness() {
        let mut cfg = settings();
        cfg.dex_rate_per_min = 10.0; // 300 pair refreshes a minute for 600 pairs: a shortage
        let mut s = Scheduler::try_new(cfg, 0).unwrap();
        for i in 0..600 {
            s.track(key(i), Via::Dex, true);
        }
        for i in 0..30 {
            s.set_hot(&key(i), true);
        }
        let (_, polls, max_gap) = simulate(&mut s, 0, 20 * 60_000);
        let hot = polls[&key(0)];
        let cold = polls[&key(599)];
        assert!(hot >= cold * 3 / 2, "{hot} vs {cold}");
        // Bounded staleness: max_staleness plus one request slot (6 s at 10 a minute).
        assert!(max_gap <= 300_000 + 6_000, "a pair waited {max_gap} ms");
    }

    #[test]
    fn a_429_backs_off_honours_retry_after_and_slows_the_bucket() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        s.track(key(1), Via::Dex, true);
        let Next::Send(req) = s.next(0) else { panic!() };
        let rate = s.effective_rate(Class::DexPairs);
        s.report(
            &req,
            &Outcome::RateLimited {
                retry_after_ms: Some(7_000),
            },
            0,
        );
        assert!(s.effective_rate(Class::DexPairs) < rate);
        assert_eq!(s.next(1_000), Next::WaitUntil(7_000));
        assert!(matches!(s.next(7_000), Next::Send(_)));
    }

    #[test]
    fn repeated_failures_open_the_circuit() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        s.track(key(1), Via::Dex, true);
        let mut now = 0;
        for _ in 0..5 {
            loop {
                match s.next(now) {
                    Next::Send(req) => {
                        s.report(&req, &Outcome::Failed, now);
                        break;
                    }
                    Next::WaitUntil(t) => now = t,
                }
            }
        }
        assert!(s.circuit_open(Class::DexPairs, now));
        assert!(matches!(s.next(now), Next::WaitUntil(t) if t >= now + 29_000));
    }

    #[test]
    fn a_refused_batch_halves_the_batch_size() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        for i in 0..40 {
            s.track(key(i), Via::Dex, true);
        }
        let Next::Send(req) = s.next(0) else { panic!() };
        s.report(&req, &Outcome::ClientError { status: 400 }, 0);
        assert_eq!(s.dex_batch(), 15);
        let mut now = 0;
        let req = next_request(&mut s, &mut now);
        assert!(matches!(req, Request::DexPairs { ids, .. } if ids.len() == 15));
    }

    #[test]
    fn pairs_not_found_are_evicted_unless_pinned() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        s.track(key(1), Via::Dex, false);
        s.track(key(2), Via::Dex, true);
        let mut now = 0;
        let mut evicted = Vec::new();
        for _ in 0..6 {
            let req = next_request(&mut s, &mut now);
            evicted.extend(s.report(&req, &Outcome::Ok { found: vec![] }, now).evicted);
        }
        assert_eq!(evicted, [key(1)]);
        assert!(s.is_tracked(&key(2)));
    }

    #[test]
    fn geckoterminal_pools_wait_for_the_cache() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        s.track(key(1), Via::Gecko, true);
        assert!(matches!(s.next(0), Next::Send(Request::GeckoPools { .. })));
        match s.next(1) {
            Next::WaitUntil(t) => assert_eq!(t, 60_000),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn never_over_budget(rate in 1.0f64..600.0, pairs in 1usize..500, minutes in 1i64..5) {
            let mut cfg = settings();
            cfg.dex_rate_per_min = rate;
            let mut s = Scheduler::try_new(cfg, 0).unwrap();
            for i in 0..pairs {
                s.track(key(i), Via::Dex, true);
            }
            let (sent, _, _) = simulate(&mut s, 0, minutes * 60_000);
            let burst = (rate / 60.0).clamp(1.0, 5.0);
            prop_assert!(sent as f64 <= rate * minutes as f64 + burst + 1.0, "{sent} > {rate}/min");
        }

        #[test]
        fn backoff_stays_within_its_cap(fails in 1u32..40, seed in any::<u64>()) {
            let mut b = Backoff::new(1_000, 60_000);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..fails {
                let w = b.fail(0, None, &mut rng);
                prop_assert!((500..=60_000).contains(&w), "{w}");
            }
        }
    }
}
