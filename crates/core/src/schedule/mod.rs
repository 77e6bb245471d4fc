//! The polling schedule (sans-IO; docs/sources.md, "The schedule"): which pairs to ask for
//! next, within each endpoint class's rate budget, in full batches, with priority for active
//! pairs and bounded staleness for all; backoff on 429 (`Retry-After` first), 5xx, time-outs
//! and refused access; a circuit per endpoint class; batch-size fallback when a batch is
//! refused, and recovery when batches succeed again. [`watchlist`] holds the pairs and the
//! policy that adopts, drops and heats them; [`budget`] the rate and failure arithmetic.
//!
//! Time is an argument everywhere; jitter comes from a seeded RNG. The async driver in the
//! `live` module does the I/O and reports outcomes back here. This module never parses and
//! never does signal logic.

pub mod budget;
pub mod watchlist;

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{PairKey, Snapshot};

pub use budget::{Backoff, BadBucket, Circuit, Rate, TokenBucket};
use watchlist::Tracked;
pub use watchlist::{Change, DropReason, Policy, Via, Watchlist};

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

    /// Whether this request looks for new pairs (its answer may add some to the watchlist).
    pub fn discovers(&self) -> bool {
        matches!(
            self,
            Request::DexTokens { .. }
                | Request::DexSearch { .. }
                | Request::DexProfiles
                | Request::DexBoosts
                | Request::GeckoNewPools { .. }
                | Request::GeckoTrending { .. }
        )
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
    /// 4xx other than 429: access refused (401, 403, 407, 451: the class backs off like a
    /// failure), or a request refused (a batch the endpoint will not take, a bad address: the
    /// pairs back off, and one refused alone again and again is dropped).
    ClientError { status: u16 },
    /// 5xx, a time-out, a connection error, or a body that did not decode.
    Failed,
}

/// Whether a 4xx refuses access (the class is blocked), rather than the request.
pub fn access_refused(status: u16) -> bool {
    matches!(status, 401 | 403 | 407 | 451)
}

/// The scheduler's settings (checked by the live sources' settings).
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
    /// A refused batch halves the batch size; this many successful batches in a row double it
    /// again, up to `dex_batch` (the docs disagree about batching; a refusal may have been one
    /// bad address, not the size).
    pub batch_recover_after: u32,
    /// The watchlist's rules (its discovery chains also choose the discovery feeds).
    pub policy: Policy,
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Pairs that left the watchlist (not found, refused).
    pub changes: Vec<Change>,
    /// How long the class now backs off (0 when it does not).
    pub backoff_ms: i64,
    /// The DexScreener batch size changed (a refused batch, or batches succeeding again).
    pub batch_size: Option<usize>,
    /// The class's circuit opened with this report.
    pub circuit_opened: bool,
}

pub struct Scheduler {
    s: Settings,
    watch: Watchlist,
    classes: BTreeMap<Class, ClassState>,
    /// The batch size in force for DexScreener pairs (halved after a 4xx on a batch).
    dex_batch: usize,
    /// Successful DexScreener batches since the batch size last changed.
    batch_successes: u32,
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
            watch: Watchlist::new(s.policy.clone()),
            batch_successes: 0,
            classes,
            s,
        })
    }

    /// Adds a pair to the watchlist; `false` when the list is full (pinned pairs always fit).
    pub fn track(&mut self, key: PairKey, via: Via, pinned: bool) -> bool {
        self.watch.track(key, via, pinned)
    }

    pub fn watchlist(&self) -> &Watchlist {
        &self.watch
    }

    /// A snapshot upstream returned for `req`: the watchlist's policy decides whether it is for
    /// a tracked pair, drops a dead one, and marks activity. Only a discovery request's answer
    /// (with discovery on) may add a pair: a pair in a poll's answer that nobody asked for is
    /// not ours, whatever upstream says.
    pub fn observe(&mut self, s: &Snapshot, req: &Request) -> (bool, Option<Change>) {
        let via = match req.class() {
            Class::Gecko => Via::Gecko,
            _ => Via::Dex,
        };
        let discovering = self.s.discovery_interval_ms > 0 || self.s.gecko_discovery;
        self.watch.observe(s, via, discovering && req.discovers())
    }

    /// Discovered token addresses to look up on DexScreener.
    pub fn add_tokens(&mut self, chain: &str, tokens: impl IntoIterator<Item = String>) {
        if !self.s.policy.discovery_chains.iter().any(|c| c == chain) {
            return;
        }
        self.pending_tokens
            .entry(chain.to_string())
            .or_default()
            .extend(tokens);
    }

    /// Seconds since each tracked pair was last asked for (for the staleness histogram).
    pub fn staleness_ms(&self, now_ms: i64) -> impl Iterator<Item = i64> + '_ {
        self.watch
            .pairs
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
        if age < interval || now_ms < t.blocked_until_ms {
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
            .watch
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
        self.watch
            .pairs
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
                t.last_polled_ms
                    .saturating_add(interval)
                    .max(t.blocked_until_ms)
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
            for c in &self.s.policy.discovery_chains {
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
        let mut r = Report::default();
        let Some(c) = self.classes.get_mut(&class) else {
            return r;
        };
        let was_open = c.circuit.is_open(now_ms);
        let fail = |c: &mut ClassState, retry_after: Option<i64>, rng: &mut ChaCha8Rng| {
            c.circuit.fail(now_ms);
            c.backoff.fail(now_ms, retry_after, rng)
        };
        match outcome {
            Outcome::Ok { found } => {
                c.backoff.succeed();
                c.circuit.succeed();
                c.bucket.recover();
                r.changes = self.watch.found(&req.pairs(), found);
                if matches!(req, Request::DexPairs { .. }) && self.dex_batch < self.s.dex_batch {
                    self.batch_successes += 1;
                    if self.batch_successes >= self.s.batch_recover_after {
                        self.dex_batch = (self.dex_batch * 2).min(self.s.dex_batch);
                        self.batch_successes = 0;
                        r.batch_size = Some(self.dex_batch);
                    }
                }
            }
            Outcome::RateLimited { retry_after_ms } => {
                c.bucket.slow_down();
                // A 429 is the budget's fault, not the upstream's: it slows the class, and opens
                // no circuit.
                r.backoff_ms = c.backoff.fail(now_ms, *retry_after_ms, &mut self.rng);
                self.retry_soon(req);
            }
            Outcome::ClientError { status } if access_refused(*status) => {
                r.backoff_ms = fail(c, None, &mut self.rng);
                self.retry_soon(req);
            }
            Outcome::ClientError { status } => {
                if let Request::DexPairs { ids, .. } = req {
                    if ids.len() > 1 && *status != 404 {
                        self.dex_batch = (ids.len() / 2).max(1);
                        self.batch_successes = 0;
                        r.batch_size = Some(self.dex_batch);
                    }
                }
                r.changes = self
                    .watch
                    .refused(&req.pairs(), *status, now_ms, &mut self.rng);
            }
            Outcome::Failed => {
                r.backoff_ms = fail(c, None, &mut self.rng);
                self.retry_soon(req);
            }
        }
        r.circuit_opened = !was_open
            && self
                .classes
                .get(&class)
                .is_some_and(|c| c.circuit.is_open(now_ms));
        r
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
        self.watch.mark_polled(keys, at_ms);
    }

    /// When the class's circuit is open, how long it stays so.
    pub fn circuit_open_until(&self, class: Class) -> Option<i64> {
        self.classes.get(&class).map(|c| c.circuit.open_until())
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
            batch_recover_after: 4,
            policy: Policy {
                max_pairs: 10_000,
                ..Policy::default()
            },
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

    /// Marks a pair hot the way the driver does: by showing the watchlist an active snapshot.
    fn heat(s: &mut Scheduler, k: &PairKey) {
        let mut snap = crate::source::simulator::example_snapshot();
        snap.key = k.clone();
        snap.txns.m5 = Some(crate::model::Txns {
            buys: 20,
            sells: 20,
            buyers: None,
            sellers: None,
        });
        s.observe(
            &snap,
            &Request::DexPairs {
                chain: k.chain.clone(),
                ids: vec![k.address.clone()],
            },
        );
        assert!(s.watchlist().is_hot(k));
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
            heat(&mut s, &key(i));
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
        let Next::Send(refused) = s.next(0) else {
            panic!()
        };
        s.report(&refused, &Outcome::ClientError { status: 400 }, 0);
        assert_eq!(s.dex_batch(), 15);
        // The refused pairs wait a moment (a second), not retried at the top of the queue at
        // once; the other ten go first, then the refused ones in halves.
        let mut now = 0;
        let req = next_request(&mut s, &mut now);
        assert_eq!(req.pairs().len(), 10);
        assert!(req.pairs().iter().all(|k| !refused.pairs().contains(k)));
        s.report(&req, &Outcome::Ok { found: req.pairs() }, now);
        let req = next_request(&mut s, &mut now);
        assert!(now >= 1_000, "{now}");
        assert_eq!(req.pairs().len(), 15);
    }

    #[test]
    fn a_refused_batch_recovers_after_successes() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        for i in 0..40 {
            s.track(key(i), Via::Dex, true);
        }
        let mut now = 0;
        let req = next_request(&mut s, &mut now);
        let r = s.report(&req, &Outcome::ClientError { status: 400 }, now);
        assert_eq!((r.batch_size, s.dex_batch()), (Some(15), 15));
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let req = next_request(&mut s, &mut now);
            let found = req.pairs();
            if let Some(b) = s.report(&req, &Outcome::Ok { found }, now).batch_size {
                sizes.push(b);
            }
        }
        assert_eq!(
            sizes,
            [30],
            "doubled back after 4 successes, up to the configured 30"
        );
    }

    #[test]
    fn a_pair_refused_alone_is_not_retried_at_once_and_is_dropped_in_the_end() {
        let mut cfg = settings();
        cfg.dex_batch = 1;
        let mut s = Scheduler::try_new(cfg, 0).unwrap();
        s.track(key(1), Via::Dex, true);
        s.track(key(2), Via::Dex, true);
        let mut now = 0;
        let mut asked = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..40 {
            let req = next_request(&mut s, &mut now);
            asked.extend(req.pairs());
            let outcome = if req.pairs() == [key(1)] {
                Outcome::ClientError { status: 400 }
            } else {
                Outcome::Ok { found: req.pairs() }
            };
            dropped.extend(s.report(&req, &outcome, now).changes);
        }
        let bad = asked.iter().filter(|k| **k == key(1)).count();
        assert_eq!(bad, 3, "asked three times, backing off, then dropped");
        assert!(matches!(
            &dropped[..],
            [Change::Dropped {
                why: DropReason::Refused {
                    status: 400,
                    times: 3
                },
                ..
            }]
        ));
        assert!(
            asked.iter().filter(|k| **k == key(2)).count() >= 30,
            "the budget went to the good pair"
        );
    }

    #[test]
    fn refused_access_backs_off_the_class_and_counts_toward_its_circuit() {
        let mut s = Scheduler::try_new(settings(), 0).unwrap();
        s.track(key(1), Via::Dex, true);
        let mut now = 0;
        let mut opened = false;
        for _ in 0..5 {
            let req = next_request(&mut s, &mut now);
            let r = s.report(&req, &Outcome::ClientError { status: 403 }, now);
            assert!(r.backoff_ms > 0);
            opened |= r.circuit_opened;
        }
        assert!(opened && s.circuit_open(Class::DexPairs, now));
        assert!(
            s.watchlist().contains(&key(1)),
            "a 403 is about us, not the pair"
        );
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
            evicted.extend(s.report(&req, &Outcome::Ok { found: vec![] }, now).changes);
        }
        assert_eq!(
            evicted,
            [Change::Dropped {
                key: key(1),
                why: DropReason::NotFound { misses: 3 },
                pinned: false
            }]
        );
        assert!(s.watchlist().contains(&key(2)));
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
    }
}
