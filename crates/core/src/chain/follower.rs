//! The chain follower (docs/sources.md, "The chain"): a state machine that says which
//! JSON-RPC call to make next and turns each reply into snapshots, without doing I/O or
//! reading a clock. The live driver asks [`Follower::next`] for a call, makes it, and hands
//! the reply to [`Follower::on_reply`]; a replay hands it the recorded replies in the order
//! they arrived, which gives the same snapshots byte for byte (the follower never depends on
//! anything a reply does not carry).
//!
//! A cycle: the head (`eth_blockNumber`); the logs of the next block range, `confirmations`
//! behind it, for every tracked pool and factory; the logs of pools the factories created in
//! that range, from their creation on, and their tokens' metadata; the headers the range
//! needs (its first and last blocks, and any block whose logs came without a time); then the
//! range is applied in chain order and each pool a block touched gives a snapshot at that
//! block's time, the others one every `snapshot_every`, and the range's end time is a tick.
//!
//! Reorganisations: every range checks that its first block's parent is the block it applied
//! last, and an idle poll checks the last applied block's hash. A mismatch finds the fork
//! among the recent blocks it remembers, rolls every pool back to it, reports which pairs the
//! replaced blocks touched, and reads the new chain from there. A provider that lies (a log
//! of an address not asked for, or outside the range; a head behind what it said before; a
//! time going backwards) is refused and counted; the range is read again later.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use alloy_primitives::{Address, LogData, B256, U256};
use alloy_sol_types::{SolCall, SolEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::abi;
use super::pool::{Event, Pool, SnapCtx, Version};
use super::rpc::{self, Call, Header, Log, Read, RpcError, What};
use crate::model::{PairKey, Snapshot};
use crate::source::bounds;

/// A factory whose new pools are followed from their creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factory {
    pub address: Address,
    pub version: Version,
    /// The DEX's name in pair data (`uniswap_v2`, `pancakeswap_v3`, ...).
    pub dex: String,
}

/// How a quote token is priced in USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotePrice {
    /// A fixed price (a stablecoin at 1.0).
    Usd(f64),
    /// Through a pool whose other token has a fixed price (WETH through WETH/USDC).
    Pool(Address),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteToken {
    pub address: Address,
    pub price: QuotePrice,
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    Block(u64),
    /// This long before the head (estimated from the recent blocks' times).
    Minutes(f64),
}

/// The follower's settings: what the tape's first line records, so that a replay follows the
/// same pools the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The chain's name in pair keys (`base`, `ethereum`).
    pub chain: String,
    pub pools: Vec<Address>,
    pub factories: Vec<Factory>,
    pub quote_tokens: Vec<QuoteToken>,
    pub confirmations: u64,
    pub start: Start,
    /// Pools followed at most; configured ones always are.
    pub max_pools: usize,
    /// Blocks one `eth_getLogs` asks for at most (halved when a provider refuses).
    pub blocks_per_logs: u64,
    /// Addresses one `eth_getLogs` names at most.
    pub addresses_per_logs: usize,
    /// A pool no block touched gives a snapshot this often (block time).
    pub snapshot_every_ms: i64,
    /// LP burns are summed over this window (the engine's drain lookback).
    pub burn_window_ms: i64,
    /// Recent blocks remembered for reorganisations.
    pub reorg_depth: u64,
    /// A configured pool whose creation was not seen is taken to be at least this old at the
    /// first block read (a pool the user names is not a new pair).
    pub configured_min_age_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenMeta {
    symbol: Option<String>,
    decimals: Option<u8>,
    /// Read once, when a pool of it is first followed: its FDV at the pool's price.
    supply: Option<U256>,
}

/// Pairs whose events came from blocks the chain replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reorg {
    /// The last block both chains share.
    pub fork: u64,
    /// The replaced blocks, `fork + 1 ..= replaced_to`.
    pub replaced_to: u64,
    /// The fork block's time.
    pub at_ms: i64,
    pub pairs: Vec<PairKey>,
}

/// What one reply gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub snapshots: Vec<Snapshot>,
    /// The block time the engine may move to, after the snapshots.
    pub tick: Option<i64>,
    pub reorg: Option<Reorg>,
    /// Things refused or skipped, for the log and the counters.
    pub problems: Vec<String>,
    /// The reply was refused (a lie, an error that is not the call's fault): the driver backs
    /// off before the next call, as after a failure.
    pub refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// Waiting for the first head.
    Boot,
    /// Estimating where `start_minutes` falls.
    Dating,
    /// Reading what the configured pools are, their tokens and their state.
    Probing,
    Running,
}

/// The range being read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Range {
    from: u64,
    to: u64,
    /// 1: logs of the known addresses; 2: new pools' logs and metadata; 3: headers.
    stage: u8,
    /// Calls of the stage still unanswered.
    outstanding: usize,
    logs: Vec<Log>,
    /// Pools the factories created in the range, with their creation block.
    created: Vec<(Address, u64)>,
    headers: BTreeMap<u64, Header>,
}

/// What a pending fork search compares against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ForkSearch {
    numbers: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Follower {
    s: Settings,
    phase: Phase,
    queue: VecDeque<Call>,
    /// The provider's head as last said.
    head: u64,
    /// The last block applied (`None`: none yet; the next range starts at `start`).
    processed: Option<u64>,
    start_block: u64,
    /// Recent applied blocks: number, hash, time.
    recent: VecDeque<(u64, B256, i64)>,
    pools: BTreeMap<Address, Pool>,
    tokens: BTreeMap<Address, TokenMeta>,
    /// Pools discovered but not followed (over `max_pools`).
    refused_pools: u64,
    range: Option<Range>,
    fork: Option<ForkSearch>,
    /// Blocks one logs call asks for now (halved on refusals, doubled back on successes).
    span: u64,
    /// The time of the first block applied: the age a configured pool has at least.
    first_ms: Option<i64>,
}

impl Follower {
    pub fn new(s: Settings) -> Follower {
        let span = s.blocks_per_logs.max(1);
        Follower {
            s,
            phase: Phase::Boot,
            queue: VecDeque::from([Call::Head]),
            head: 0,
            processed: None,
            start_block: 0,
            recent: VecDeque::new(),
            pools: BTreeMap::new(),
            tokens: BTreeMap::new(),
            refused_pools: 0,
            range: None,
            fork: None,
            span,
            first_ms: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The next call to make; `None` when caught up (call [`Follower::wake`] after a while).
    pub fn next(&self) -> Option<&Call> {
        self.queue.front()
    }

    /// Time for another look at the head.
    pub fn wake(&mut self) {
        if self.queue.is_empty() {
            self.queue.push_back(Call::Head);
        }
    }

    /// The last block applied.
    pub fn processed(&self) -> Option<u64> {
        self.processed
    }

    /// Blocks between the head (less the confirmations) and the last applied.
    pub fn behind(&self) -> u64 {
        let target = self.head.saturating_sub(self.s.confirmations);
        target.saturating_sub(self.processed.unwrap_or(self.start_block.saturating_sub(1)))
    }

    pub fn pools(&self) -> usize {
        self.pools.len()
    }

    /// Pools a factory created that are not followed (over `max_pools`).
    pub fn refused_pools(&self) -> u64 {
        self.refused_pools
    }

    /// Takes the reply to `call` (the body as the provider sent it), received at `t_ms`.
    pub fn on_reply(&mut self, call: &Call, body: &Value) -> Output {
        let mut out = Output::default();
        match self.queue.front() {
            Some(front) if front == call => {
                self.queue.pop_front();
            }
            // An idle poll (the live driver woke the follower; a replay just has it).
            None if *call == Call::Head => {}
            _ => {
                out.problems
                    .push(format!("a reply out of step with the follower: {call:?}"));
                return out;
            }
        }
        let results = match rpc::results(call, body) {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(format!("{}: {e}", name(call)));
                out.refused = true;
                self.queue.push_front(call.clone());
                return out;
            }
        };
        match call {
            Call::Head => self.on_head(&results[0], &mut out),
            Call::Logs {
                from,
                to,
                addresses,
            } => self.on_logs(*from, *to, addresses, &results[0], &mut out),
            Call::Headers { numbers } => self.on_headers(numbers, &results, &mut out),
            Call::Reads { reads, block } => self.on_reads(reads, *block, &results, &mut out),
        }
        out
    }

    fn on_head(&mut self, r: &Result<Value, RpcError>, out: &mut Output) {
        let head = match r {
            Ok(v) => match rpc::parse_quantity(v) {
                Ok(h) => h,
                Err(e) => {
                    out.problems.push(format!("eth_blockNumber: {e}"));
                    out.refused = true;
                    self.queue.push_front(Call::Head);
                    return;
                }
            },
            Err(e) => {
                out.problems.push(format!("eth_blockNumber: {}", e.message));
                out.refused = true;
                self.queue.push_front(Call::Head);
                return;
            }
        };
        if head < self.head && self.phase == Phase::Running {
            out.problems.push(format!(
                "the provider's head went back from {} to {head}; refused",
                self.head
            ));
            out.refused = true;
            return;
        }
        self.head = head;
        match self.phase {
            Phase::Boot => match self.s.start {
                Start::Block(b) => self.begin(b.min(head), out),
                Start::Minutes(_) => {
                    self.phase = Phase::Dating;
                    let back = head.saturating_sub(1_000);
                    let numbers = if back == head {
                        vec![head]
                    } else {
                        vec![back, head]
                    };
                    self.queue.push_back(Call::Headers { numbers });
                }
            },
            Phase::Running if self.range.is_none() && self.fork.is_none() => {
                // Nothing new: is the last applied block still the chain's?
                if let (false, Some(p)) = (self.next_range(), self.processed) {
                    self.queue.push_back(Call::Headers { numbers: vec![p] });
                }
            }
            _ => {}
        }
    }

    /// Reading starts at `start`: first what the configured pools are.
    fn begin(&mut self, start: u64, _out: &mut Output) {
        self.start_block = start;
        self.phase = Phase::Probing;
        let mut pools: Vec<Address> = self.s.pools.clone();
        for q in &self.s.quote_tokens {
            if let QuotePrice::Pool(p) = q.price {
                pools.push(p);
            }
        }
        pools.sort();
        pools.dedup();
        if pools.is_empty() {
            self.phase = Phase::Running;
            self.next_range();
            return;
        }
        let reads = pools
            .iter()
            .flat_map(|p| [What::Token0, What::Token1, What::Fee].map(|what| Read { to: *p, what }))
            .collect();
        self.queue.push_back(Call::Reads { reads, block: None });
    }

    /// Starts the next range if the head allows one.
    fn next_range(&mut self) -> bool {
        let target = self.head.saturating_sub(self.s.confirmations);
        let from = self.processed.map_or(self.start_block, |p| p + 1);
        if from > target {
            return false;
        }
        let to = target.min(from + self.span - 1);
        let addresses = self.watched();
        let calls: Vec<Call> = addresses
            .chunks(self.s.addresses_per_logs.max(1))
            .map(|c| Call::Logs {
                from,
                to,
                addresses: c.to_vec(),
            })
            .collect();
        self.range = Some(Range {
            from,
            to,
            stage: 1,
            outstanding: calls.len(),
            logs: Vec::new(),
            created: Vec::new(),
            headers: BTreeMap::new(),
        });
        if calls.is_empty() {
            self.stage_done();
        } else {
            self.queue.extend(calls);
        }
        true
    }

    /// Pools and factories, in address order.
    fn watched(&self) -> Vec<Address> {
        let mut a: Vec<Address> = self.pools.keys().copied().collect();
        a.extend(self.s.factories.iter().map(|f| f.address));
        a.sort();
        a.dedup();
        a
    }

    fn on_logs(
        &mut self,
        from: u64,
        to: u64,
        addresses: &[Address],
        r: &Result<Value, RpcError>,
        out: &mut Output,
    ) {
        let Some(range) = self.range.as_mut() else {
            return;
        };
        let value = match r {
            Ok(v) => v,
            Err(e) if e.too_large() && range.stage == 1 && to > from => {
                // Split: this range becomes its first half; the rest is the next range's.
                self.span = (to - from).div_ceil(2).max(1);
                out.problems.push(format!(
                    "eth_getLogs {from}..{to} refused as too large ({}); asking for {} blocks at a time",
                    e.message, self.span
                ));
                self.queue.retain(|c| !matches!(c, Call::Logs { .. }));
                self.range = None;
                self.next_range();
                return;
            }
            Err(e) => {
                out.problems
                    .push(format!("eth_getLogs {from}..{to}: {}", e.message));
                out.refused = true;
                self.queue.push_front(Call::Logs {
                    from,
                    to,
                    addresses: addresses.to_vec(),
                });
                return;
            }
        };
        let logs: Vec<Log> = match serde_json::from_value(value.clone()) {
            Ok(l) => l,
            Err(e) => {
                out.problems
                    .push(format!("eth_getLogs: unreadable logs ({e})"));
                out.refused = true;
                self.queue.push_front(Call::Logs {
                    from,
                    to,
                    addresses: addresses.to_vec(),
                });
                return;
            }
        };
        let asked: BTreeSet<&Address> = addresses.iter().collect();
        for log in logs {
            let n = log.block_number.to::<u64>();
            if !asked.contains(&log.address) {
                out.problems.push(format!(
                    "a log of {:#x}, not asked for; refused",
                    log.address
                ));
                continue;
            }
            if n < from || n > to || log.removed {
                out.problems.push(format!(
                    "a log of block {n} outside {from}..{to} (or removed); refused"
                ));
                continue;
            }
            range.logs.push(log);
        }
        range.outstanding = range.outstanding.saturating_sub(1);
        if range.outstanding == 0 {
            self.stage_done();
        }
    }

    /// The current stage of the range has all its answers: on to the next.
    fn stage_done(&mut self) {
        let Some(range) = self.range.as_mut() else {
            return;
        };
        match range.stage {
            1 => {
                range.stage = 2;
                let factories: BTreeMap<Address, &Factory> =
                    self.s.factories.iter().map(|f| (f.address, f)).collect();
                let mut created = Vec::new();
                for log in &range.logs {
                    let Some(f) = factories.get(&log.address) else {
                        continue;
                    };
                    if let Some((tokens, pool)) = creation(log, f.version) {
                        created.push((pool, tokens, log.block_number.to::<u64>(), (*f).clone()));
                    }
                }
                let mut calls = Vec::new();
                let mut new_addresses = Vec::new();
                for (pool, tokens, block, f) in created {
                    if self.pools.contains_key(&pool) {
                        continue;
                    }
                    if self.pools.len() >= self.s.max_pools {
                        self.refused_pools += 1;
                        continue;
                    }
                    let base = base_of(&self.s.quote_tokens, tokens);
                    let mut p = Pool::new(pool, f.version, f.dex.clone(), tokens, base);
                    // Made empty in this range: its state is its events from here on.
                    p.created_ms = None;
                    self.pools.insert(pool, p);
                    range.created.push((pool, block));
                    new_addresses.push((pool, block));
                }
                if let Some(first) = new_addresses.iter().map(|(_, b)| *b).min() {
                    let mut addrs: Vec<Address> = new_addresses.iter().map(|(a, _)| *a).collect();
                    addrs.sort();
                    for c in addrs.chunks(self.s.addresses_per_logs.max(1)) {
                        calls.push(Call::Logs {
                            from: first,
                            to: range.to,
                            addresses: c.to_vec(),
                        });
                    }
                }
                let reads = self.missing_metadata();
                if !reads.is_empty() {
                    calls.push(Call::Reads { reads, block: None });
                }
                let range = self.range.as_mut().expect("the range being read");
                range.outstanding = calls.len();
                self.queue.extend(calls);
                if range.outstanding == 0 {
                    self.stage_done();
                }
            }
            2 => {
                range.stage = 3;
                let mut numbers: BTreeSet<u64> = [range.from, range.to].into();
                for log in &range.logs {
                    if log.block_timestamp.is_none() {
                        numbers.insert(log.block_number.to::<u64>());
                    }
                }
                range.outstanding = 1;
                self.queue.push_back(Call::Headers {
                    numbers: numbers.into_iter().collect(),
                });
            }
            _ => {}
        }
    }

    /// Token reads the followed pools still need.
    fn missing_metadata(&mut self) -> Vec<Read> {
        let mut reads = Vec::new();
        let tokens: BTreeSet<Address> = self.pools.values().flat_map(|p| p.tokens).collect();
        for t in tokens {
            if self.tokens.contains_key(&t) {
                continue;
            }
            self.tokens.insert(
                t,
                TokenMeta {
                    symbol: None,
                    decimals: None,
                    supply: None,
                },
            );
            for what in [What::Symbol, What::Decimals, What::TotalSupply] {
                reads.push(Read { to: t, what });
            }
        }
        reads
    }

    fn on_headers(
        &mut self,
        numbers: &[u64],
        results: &[Result<Value, RpcError>],
        out: &mut Output,
    ) {
        let mut headers = BTreeMap::new();
        for (n, r) in numbers.iter().zip(results) {
            let h = match r {
                Ok(v) => serde_json::from_value::<Option<Header>>(v.clone()),
                Err(e) => {
                    out.problems.push(format!("block {n}: {}", e.message));
                    continue;
                }
            };
            match h {
                Ok(Some(h)) if h.number.to::<u64>() == *n => {
                    headers.insert(*n, h);
                }
                Ok(Some(h)) => out.problems.push(format!(
                    "asked for block {n}, the provider answered block {}; refused",
                    h.number
                )),
                Ok(None) => out.problems.push(format!("block {n} not found")),
                Err(e) => out.problems.push(format!("block {n}: {e}")),
            }
        }
        let complete = headers.len() == numbers.len();
        match self.phase {
            Phase::Dating => {
                if !complete {
                    out.refused = true;
                    self.queue.push_front(Call::Headers {
                        numbers: numbers.to_vec(),
                    });
                    return;
                }
                let Start::Minutes(m) = self.s.start else {
                    return;
                };
                let first = headers.values().next().expect("complete");
                let last = headers.values().last().expect("complete");
                let blocks = (last.number.to::<u64>() - first.number.to::<u64>()).max(1);
                let secs = last
                    .timestamp
                    .to::<u64>()
                    .saturating_sub(first.timestamp.to::<u64>());
                let per_block = (secs as f64 / blocks as f64).max(0.001);
                let back = ((m * 60.0) / per_block).ceil() as u64;
                let start = self.head.saturating_sub(back);
                self.begin(start, out);
            }
            Phase::Running if self.fork.is_some() => self.on_fork_headers(headers, out),
            Phase::Running if self.range.as_ref().is_some_and(|r| r.stage == 3) => {
                if !complete {
                    out.refused = true;
                    self.queue.push_front(Call::Headers {
                        numbers: numbers.to_vec(),
                    });
                    return;
                }
                if let Some(range) = self.range.as_mut() {
                    range.headers = headers;
                }
                self.finish_range(out);
            }
            Phase::Running => {
                // The idle check of the last applied block.
                let (Some(p), Some(h)) = (self.processed, headers.values().next()) else {
                    return;
                };
                let known = self.recent.iter().find(|(n, _, _)| *n == p);
                if known.is_some_and(|(_, hash, _)| *hash != h.hash) {
                    self.search_fork();
                }
            }
            _ => {}
        }
    }

    /// Reads the remembered recent blocks again, to find where the chains part.
    fn search_fork(&mut self) {
        let numbers: Vec<u64> = self.recent.iter().map(|(n, _, _)| *n).collect();
        self.range = None;
        self.queue.retain(|c| matches!(c, Call::Reads { .. }));
        self.fork = Some(ForkSearch {
            numbers: numbers.clone(),
        });
        self.queue.push_back(Call::Headers { numbers });
    }

    fn on_fork_headers(&mut self, headers: BTreeMap<u64, Header>, out: &mut Output) {
        self.fork = None;
        let replaced_to = self.processed.unwrap_or(0);
        // The newest remembered block the chain still has.
        let fork = self
            .recent
            .iter()
            .rev()
            .find(|(n, hash, _)| headers.get(n).is_some_and(|h| h.hash == *hash))
            .map(|(n, _, t)| (*n, *t));
        let (fork, at_ms) = match fork {
            Some(f) => f,
            None => {
                // Deeper than remembered: back to the oldest block remembered, and on.
                out.problems.push(format!(
                    "a reorganisation deeper than the {} blocks remembered",
                    self.s.reorg_depth
                ));
                match self.recent.front() {
                    Some((n, _, t)) => (n.saturating_sub(1), *t),
                    None => return,
                }
            }
        };
        let mut pairs = Vec::new();
        for p in self.pools.values_mut() {
            if p.touched.is_some_and(|b| b > fork) {
                pairs.push(PairKey::new(&self.s.chain, format!("{:#x}", p.address)));
            }
            p.roll_back(fork);
        }
        self.recent.retain(|(n, _, _)| *n <= fork);
        self.processed = Some(fork);
        out.problems.push(format!(
            "a reorganisation: blocks {}..{replaced_to} were replaced; {} pairs rolled back",
            fork + 1,
            pairs.len()
        ));
        out.reorg = Some(Reorg {
            fork,
            replaced_to,
            at_ms,
            pairs,
        });
        self.next_range();
    }

    fn on_reads(
        &mut self,
        reads: &[Read],
        block: Option<u64>,
        results: &[Result<Value, RpcError>],
        out: &mut Output,
    ) {
        // A read that failed for the provider's sake (not a revert) is asked again.
        let transient = results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| !e.reverted()));
        if transient {
            out.problems
                .push("eth_call failed; asked again".to_string());
            out.refused = true;
            self.queue.push_front(Call::Reads {
                reads: reads.to_vec(),
                block,
            });
            return;
        }
        let mut probes: BTreeMap<Address, ([Option<Address>; 2], bool)> = BTreeMap::new();
        let mut state_read = false;
        for (read, r) in reads.iter().zip(results) {
            let bytes: Option<Vec<u8>> = r
                .as_ref()
                .ok()
                .and_then(|v| serde_json::from_value::<alloy_primitives::Bytes>(v.clone()).ok())
                .map(|b| b.to_vec());
            match read.what {
                What::Token0 | What::Token1 | What::Fee => {
                    let e = probes.entry(read.to).or_insert(([None, None], false));
                    match read.what {
                        What::Fee => e.1 = bytes.as_ref().is_some_and(|b| b.len() >= 32),
                        w => {
                            let t = bytes.as_deref().and_then(|b| {
                                abi::IUniswapV2Pair::token0Call::abi_decode_returns(b).ok()
                            });
                            e.0[usize::from(w == What::Token1)] = t;
                        }
                    }
                }
                What::Symbol => {
                    let sym = bytes.as_deref().and_then(symbol_of);
                    if let Some(m) = self.tokens.get_mut(&read.to) {
                        m.symbol = sym;
                    }
                }
                What::Decimals => {
                    let d = bytes
                        .as_deref()
                        .and_then(|b| abi::IERC20::decimalsCall::abi_decode_returns(b).ok());
                    if d.is_none() {
                        out.problems.push(format!(
                            "token {:#x} answers no decimals(); taken as 18",
                            read.to
                        ));
                    }
                    if let Some(m) = self.tokens.get_mut(&read.to) {
                        m.decimals = Some(d.unwrap_or(18));
                    }
                }
                What::TotalSupply => {
                    let v = bytes
                        .as_deref()
                        .and_then(|b| abi::IERC20::totalSupplyCall::abi_decode_returns(b).ok());
                    if let Some(m) = self.tokens.get_mut(&read.to) {
                        m.supply = v;
                    }
                }
                What::Reserves | What::Slot0 | What::Liquidity | What::BalanceOf(_) => {
                    state_read = true;
                    self.take_state(read, bytes.as_deref(), out);
                }
                What::Name => {}
            }
        }
        self.decimals_known();
        if !probes.is_empty() {
            for (pool, (tokens, v3)) in probes {
                let (Some(t0), Some(t1)) = (tokens[0], tokens[1]) else {
                    out.problems.push(format!(
                        "{pool:#x} answers no token0()/token1(): not a Uniswap V2 or V3 pool; not followed"
                    ));
                    continue;
                };
                let version = if v3 { Version::V3 } else { Version::V2 };
                let base = base_of(&self.s.quote_tokens, [t0, t1]);
                let dex = match version {
                    Version::V2 => "uniswap_v2",
                    Version::V3 => "uniswap_v3",
                };
                self.pools.insert(
                    pool,
                    Pool::new(pool, version, dex.to_string(), [t0, t1], base),
                );
            }
            let reads = self.missing_metadata();
            if !reads.is_empty() {
                self.queue.push_back(Call::Reads { reads, block: None });
            }
            // The state before the first block read (none before genesis: the pools start
            // empty there, and their events make it).
            if self.start_block > 0 {
                let at = self.start_block - 1;
                let reads: Vec<Read> = self
                    .pools
                    .values()
                    .flat_map(|p| match p.version {
                        Version::V2 => vec![Read {
                            to: p.address,
                            what: What::Reserves,
                        }],
                        Version::V3 => vec![
                            Read {
                                to: p.address,
                                what: What::Slot0,
                            },
                            Read {
                                to: p.address,
                                what: What::Liquidity,
                            },
                            Read {
                                to: p.tokens[0],
                                what: What::BalanceOf(p.address),
                            },
                            Read {
                                to: p.tokens[1],
                                what: What::BalanceOf(p.address),
                            },
                        ],
                    })
                    .collect();
                if !reads.is_empty() {
                    self.queue.push_back(Call::Reads {
                        reads,
                        block: Some(at),
                    });
                }
            }
        }
        if self.phase == Phase::Probing && self.queue.is_empty() {
            self.phase = Phase::Running;
            self.next_range();
        } else if let Some(range) = self.range.as_mut() {
            if range.stage == 2 && !state_read {
                range.outstanding = range.outstanding.saturating_sub(1);
                if range.outstanding == 0 {
                    self.stage_done();
                }
            }
        }
    }

    /// Copies token decimals into the pools that lack them.
    fn decimals_known(&mut self) {
        for p in self.pools.values_mut() {
            if p.decimals.is_none() {
                let d = |t: &Address| self.tokens.get(t).and_then(|m| m.decimals);
                if let (Some(a), Some(b)) = (d(&p.tokens[0]), d(&p.tokens[1])) {
                    p.decimals = Some([a, b]);
                }
            }
        }
    }

    /// A state read at the start block: reserves, price, liquidity, a balance.
    fn take_state(&mut self, read: &Read, bytes: Option<&[u8]>, out: &mut Output) {
        let Some(b) = bytes else {
            out.problems.push(format!(
                "a state read of {:#x} failed (the node may not keep state that old: an archive node, or a later start)",
                read.to
            ));
            return;
        };
        match read.what {
            What::Reserves => {
                if let (Some(p), Ok(r)) = (
                    self.pools.get_mut(&read.to),
                    abi::IUniswapV2Pair::getReservesCall::abi_decode_returns(b),
                ) {
                    p.reserves = [U256::from(r.reserve0), U256::from(r.reserve1)];
                    p.initialized = true;
                }
            }
            What::Slot0 => {
                if let (Some(p), Ok(r)) = (
                    self.pools.get_mut(&read.to),
                    abi::IUniswapV3Pool::slot0Call::abi_decode_returns(b),
                ) {
                    let s = U256::from(r.sqrtPriceX96);
                    if !s.is_zero() {
                        p.sqrt_price_x96 = Some(s);
                        p.initialized = true;
                    }
                }
            }
            What::Liquidity => {
                if let (Some(p), Ok(l)) = (
                    self.pools.get_mut(&read.to),
                    abi::IUniswapV3Pool::liquidityCall::abi_decode_returns(b),
                ) {
                    p.liquidity = l;
                }
            }
            What::BalanceOf(owner) => {
                if let (Some(p), Ok(v)) = (
                    self.pools.get_mut(&owner),
                    abi::IERC20::balanceOfCall::abi_decode_returns(b),
                ) {
                    if let Some(i) = p.tokens.iter().position(|t| *t == read.to) {
                        p.reserves[i] = v;
                    }
                }
            }
            _ => {}
        }
    }

    /// The quote token's USD price now.
    fn quote_usd(&self, token: Address) -> Option<f64> {
        let q = self.s.quote_tokens.iter().find(|q| q.address == token)?;
        match &q.price {
            QuotePrice::Usd(u) => Some(*u),
            QuotePrice::Pool(pool) => {
                let p = self.pools.get(pool)?;
                let i = p.tokens.iter().position(|t| *t == token)?;
                let other = p.tokens[1 - i];
                let other_usd = self.s.quote_tokens.iter().find_map(|q| match q.price {
                    QuotePrice::Usd(u) if q.address == other => Some(u),
                    _ => None,
                })?;
                let price = p.price()?;
                // `price` is the pool's base in its quote units.
                let in_other = if p.base == i { price } else { 1.0 / price };
                Some(in_other * other_usd)
            }
        }
    }

    fn pool_quote_usd(&self, p: &Pool) -> Option<f64> {
        self.quote_usd(p.tokens[1 - p.base])
    }

    /// Applies a fully read range and says what it gave.
    fn finish_range(&mut self, out: &mut Output) {
        let Some(range) = self.range.take() else {
            return;
        };
        let (Some(first), Some(_)) = (range.headers.get(&range.from), range.headers.get(&range.to))
        else {
            return;
        };
        // The chain under the range must continue the one applied.
        if let (Some(p), Some((_, hash, _))) = (self.processed, self.recent.back()) {
            if p + 1 == range.from && first.parent_hash != *hash {
                self.search_fork();
                return;
            }
        }
        let last_ms = self.recent.back().map(|(_, _, t)| *t);
        let time_of = |n: u64, log: Option<&Log>| -> Option<i64> {
            let s = log
                .and_then(|l| l.block_timestamp)
                .or_else(|| range.headers.get(&n).map(|h| h.timestamp))?;
            i64::try_from(s.to::<u64>()).ok().map(|s| s * 1000)
        };
        // Times never go backwards, and logs agree with the headers on their blocks' hashes.
        let mut times: Vec<(u64, i64)> = range
            .headers
            .values()
            .filter_map(|h| time_of(h.number.to::<u64>(), None).map(|t| (h.number.to::<u64>(), t)))
            .collect();
        times.sort();
        let backwards = times.windows(2).any(|w| w[1].1 < w[0].1)
            || last_ms.is_some_and(|l| times.first().is_some_and(|(_, t)| *t < l));
        let mismatch = range.logs.iter().any(|l| {
            range
                .headers
                .get(&l.block_number.to::<u64>())
                .is_some_and(|h| h.hash != l.block_hash)
        });
        if backwards || mismatch {
            out.problems.push(if backwards {
                format!("block times go backwards in {}..{}; refused", range.from, range.to)
            } else {
                format!(
                    "logs and headers disagree on a block's hash in {}..{} (the chain moved); read again",
                    range.from, range.to
                )
            });
            out.refused = true;
            self.next_range();
            return;
        }
        let from_ms = time_of(range.from, None).unwrap_or(0);
        let to_ms = time_of(range.to, None).unwrap_or(from_ms);
        self.first_ms.get_or_insert(from_ms);
        // Configured pools are at least as old as the first block read, and as much older as
        // the settings say.
        let first_ms = self.first_ms.map(|t| t - self.s.configured_min_age_ms);
        let created: BTreeMap<Address, u64> = range.created.iter().copied().collect();
        let mut logs = range.logs.clone();
        logs.sort_by_key(|l| (l.block_number.to::<u64>(), l.log_index.to::<u64>()));
        // Ages first: a pool made in this range is as old as its factory's log; the others
        // at least as old as the settings say.
        let factories: BTreeMap<Address, Version> = self
            .s
            .factories
            .iter()
            .map(|f| (f.address, f.version))
            .collect();
        for log in &logs {
            let Some(version) = factories.get(&log.address) else {
                continue;
            };
            let Some((_, pool)) = creation(log, *version) else {
                continue;
            };
            let t = time_of(log.block_number.to::<u64>(), Some(log));
            if let (Some(p), true) = (self.pools.get_mut(&pool), created.contains_key(&pool)) {
                if p.created_ms.is_none() {
                    p.created_ms = t.or(Some(to_ms));
                }
            }
        }
        for p in self.pools.values_mut() {
            if p.created_ms.is_none() {
                p.created_ms = first_ms;
            }
        }
        // Block by block, in chain order: each pool a block touched gives a snapshot of its
        // state after that block, at that block's time.
        let symbols = |tokens: &BTreeMap<Address, TokenMeta>, p: &Pool| {
            p.tokens
                .map(|t| tokens.get(&t).and_then(|m| m.symbol.clone()))
        };
        let supply = |tokens: &BTreeMap<Address, TokenMeta>, p: &Pool| {
            let m = tokens.get(&p.tokens[p.base])?;
            Some(crate::chain::pool::units(m.supply?, m.decimals?))
        };
        let mut snaps: Vec<(Address, Snapshot)> = Vec::new();
        let mut touched_any: BTreeSet<Address> = BTreeSet::new();
        let mut i = 0;
        while i < logs.len() {
            let n = logs[i].block_number.to::<u64>();
            let mut touched: BTreeSet<Address> = BTreeSet::new();
            let mut t_block = None;
            while i < logs.len() && logs[i].block_number.to::<u64>() == n {
                let log = &logs[i];
                i += 1;
                let Some(t) = time_of(n, Some(log)) else {
                    continue;
                };
                t_block = Some(t);
                let Some(pool) = self.pools.get(&log.address) else {
                    continue; // a factory's log: its pools were registered above
                };
                let Some(event) = pool_event(log, pool.version) else {
                    continue;
                };
                let quote_usd = self.pool_quote_usd(pool);
                if let Some(pool) = self.pools.get_mut(&log.address) {
                    pool.apply(n, t, &event, quote_usd);
                    touched.insert(log.address);
                }
            }
            let Some(t) = t_block else { continue };
            for a in &touched {
                let Some(p) = self.pools.get(a) else { continue };
                let ctx = SnapCtx {
                    chain: &self.s.chain,
                    t_ms: t,
                    quote_usd: self.pool_quote_usd(p),
                    symbols: symbols(&self.tokens, p),
                    base_supply: supply(&self.tokens, p),
                    burn_window_ms: self.s.burn_window_ms,
                };
                if let Some(s) = p.snapshot(&ctx) {
                    snaps.push((*a, s));
                }
            }
            touched_any.extend(touched);
        }
        // The others, every `snapshot_every`, so that their windows roll on.
        for (a, p) in &self.pools {
            if touched_any.contains(a) {
                continue;
            }
            if p.last_snapshot_ms
                .is_some_and(|l| to_ms - l < self.s.snapshot_every_ms)
            {
                continue;
            }
            let ctx = SnapCtx {
                chain: &self.s.chain,
                t_ms: to_ms,
                quote_usd: self.pool_quote_usd(p),
                symbols: symbols(&self.tokens, p),
                base_supply: supply(&self.tokens, p),
                burn_window_ms: self.s.burn_window_ms,
            };
            if let Some(s) = p.snapshot(&ctx) {
                snaps.push((*a, s));
            }
        }
        for (a, s) in snaps {
            if let Some(p) = self.pools.get_mut(&a) {
                p.last_snapshot_ms = Some(s.observed_at_ms);
            }
            out.snapshots.push(s);
        }
        out.tick = Some(to_ms);
        for h in range.headers.values() {
            let n = h.number.to::<u64>();
            if let Some(t) = time_of(n, None) {
                self.recent.push_back((n, h.hash, t));
            }
        }
        let mut recent: Vec<(u64, B256, i64)> = self.recent.drain(..).collect();
        recent.sort_by_key(|r| r.0);
        recent.dedup_by_key(|r| r.0);
        self.recent = recent.into();
        while self.recent.len() as u64 > self.s.reorg_depth.max(1) {
            self.recent.pop_front();
        }
        self.processed = Some(range.to);
        let keep = self.recent.front().map_or(range.to, |(n, _, _)| *n);
        for p in self.pools.values_mut() {
            p.settle(keep);
            p.prune(to_ms);
        }
        // Successes earn the span back, up to the configured one.
        self.span = (self.span * 2).min(self.s.blocks_per_logs.max(1));
        self.next_range();
    }
}

fn name(call: &Call) -> &'static str {
    match call {
        Call::Head => "eth_blockNumber",
        Call::Logs { .. } => "eth_getLogs",
        Call::Headers { .. } => "eth_getBlockByNumber",
        Call::Reads { .. } => "eth_call",
    }
}

/// Which token of a pool is the base: the one that is not a quote token; of two quote tokens,
/// the one not priced at a fixed USD value.
fn base_of(quotes: &[QuoteToken], tokens: [Address; 2]) -> usize {
    let q = |t: Address| quotes.iter().find(|q| q.address == t);
    let fixed = |t: Address| q(t).is_some_and(|q| matches!(q.price, QuotePrice::Usd(_)));
    match (q(tokens[0]).is_some(), q(tokens[1]).is_some()) {
        (false, true) => 0,
        (true, false) => 1,
        (true, true) if fixed(tokens[0]) && !fixed(tokens[1]) => 1,
        _ => 0,
    }
}

/// A factory's log: the new pool's tokens and address.
fn creation(log: &Log, version: Version) -> Option<([Address; 2], Address)> {
    let data = LogData::new(log.topics.clone(), log.data.clone())?;
    match version {
        Version::V2 => {
            let e = abi::IUniswapV2Factory::PairCreated::decode_raw_log(data.topics(), &data.data)
                .ok()?;
            Some(([e.token0, e.token1], e.pair))
        }
        Version::V3 => {
            let e = abi::IUniswapV3Factory::PoolCreated::decode_raw_log(data.topics(), &data.data)
                .ok()?;
            Some(([e.token0, e.token1], e.pool))
        }
    }
}

/// A pool's log as an event; `None` for a log of another kind (the LP token's transfers).
pub fn pool_event(log: &Log, version: Version) -> Option<Event> {
    let topics = &log.topics;
    let data = &log.data;
    let t0 = *topics.first()?;
    match version {
        Version::V2 => {
            use abi::IUniswapV2Pair as P;
            if t0 == P::Sync::SIGNATURE_HASH {
                let e = P::Sync::decode_raw_log(topics, data).ok()?;
                Some(Event::V2Sync {
                    reserve0: U256::from(e.reserve0),
                    reserve1: U256::from(e.reserve1),
                })
            } else if t0 == P::Swap::SIGNATURE_HASH {
                let e = P::Swap::decode_raw_log(topics, data).ok()?;
                Some(Event::V2Swap {
                    in0: e.amount0In,
                    in1: e.amount1In,
                    out0: e.amount0Out,
                    out1: e.amount1Out,
                })
            } else if t0 == P::Mint::SIGNATURE_HASH {
                P::Mint::decode_raw_log(topics, data).ok()?;
                Some(Event::V2Mint)
            } else if t0 == P::Burn::SIGNATURE_HASH {
                let e = P::Burn::decode_raw_log(topics, data).ok()?;
                Some(Event::V2Burn {
                    amount0: e.amount0,
                    amount1: e.amount1,
                })
            } else {
                None
            }
        }
        Version::V3 => {
            use abi::IUniswapV3Pool as P;
            if t0 == P::Swap::SIGNATURE_HASH {
                let e = P::Swap::decode_raw_log(topics, data).ok()?;
                Some(Event::V3Swap {
                    amount0: e.amount0,
                    amount1: e.amount1,
                    sqrt_price_x96: U256::from(e.sqrtPriceX96),
                    liquidity: e.liquidity,
                })
            } else if t0 == P::Mint::SIGNATURE_HASH {
                let e = P::Mint::decode_raw_log(topics, data).ok()?;
                Some(Event::V3Mint {
                    amount0: e.amount0,
                    amount1: e.amount1,
                })
            } else if t0 == P::Burn::SIGNATURE_HASH {
                let e = P::Burn::decode_raw_log(topics, data).ok()?;
                Some(Event::V3Burn {
                    amount0: e.amount0,
                    amount1: e.amount1,
                })
            } else if t0 == P::Collect::SIGNATURE_HASH {
                let e = P::Collect::decode_raw_log(topics, data).ok()?;
                Some(Event::V3Collect {
                    amount0: U256::from(e.amount0),
                    amount1: U256::from(e.amount1),
                })
            } else if t0 == P::Initialize::SIGNATURE_HASH {
                let e = P::Initialize::decode_raw_log(topics, data).ok()?;
                Some(Event::V3Initialize {
                    sqrt_price_x96: U256::from(e.sqrtPriceX96),
                })
            } else {
                None
            }
        }
    }
}

/// A token's symbol from `symbol()`'s answer: a string, or (old tokens) a `bytes32`; bounded
/// and cleaned as every upstream string is (a symbol is whatever its deployer wrote).
fn symbol_of(b: &[u8]) -> Option<String> {
    let text = match abi::IERC20::symbolCall::abi_decode_returns(b) {
        Ok(s) => s,
        Err(_) => {
            let raw = abi::IERC20Bytes32::symbolCall::abi_decode_returns(b).ok()?;
            String::from_utf8_lossy(raw.as_slice())
                .trim_end_matches('\0')
                .to_string()
        }
    };
    bounds::display(&text, bounds::SYMBOL_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const F: Address = Address::repeat_byte(0xf0);

    fn settings() -> Settings {
        Settings {
            chain: "test".into(),
            pools: Vec::new(),
            factories: vec![Factory {
                address: F,
                version: Version::V2,
                dex: "uniswap_v2".into(),
            }],
            quote_tokens: Vec::new(),
            confirmations: 0,
            start: Start::Block(1),
            max_pools: 10,
            blocks_per_logs: 100,
            addresses_per_logs: 100,
            snapshot_every_ms: 60_000,
            burn_window_ms: 1_800_000,
            reorg_depth: 8,
            configured_min_age_ms: 0,
        }
    }

    fn ok(result: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "result": result})
    }

    fn hash(n: u64, fork: u8) -> B256 {
        let mut h = [fork; 32];
        h[..8].copy_from_slice(&n.to_be_bytes());
        B256::from(h)
    }

    fn header(n: u64, t: u64, fork: u8) -> Value {
        json!({
            "number": format!("{n:#x}"),
            "hash": hash(n, fork),
            "parentHash": hash(n.saturating_sub(1), fork),
            "timestamp": format!("{t:#x}"),
        })
    }

    fn headers(numbers: &[u64], time: impl Fn(u64) -> u64, fork: u8) -> Value {
        Value::Array(
            numbers
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"jsonrpc": "2.0", "id": i + 1, "result": header(*n, time(*n), fork)}))
                .collect(),
        )
    }

    fn log(address: Address, block: u64) -> Value {
        json!({
            "address": address,
            "topics": [B256::repeat_byte(9)],
            "data": "0x",
            "blockNumber": format!("{block:#x}"),
            "blockHash": hash(block, 0),
            "logIndex": "0x0",
        })
    }

    /// Answers the follower's calls until it is caught up, as an honest chain of `head` blocks
    /// 12 s apart.
    fn follow(f: &mut Follower, head: u64, fork: u8) -> Vec<Output> {
        let mut outs = Vec::new();
        f.wake();
        while let Some(call) = f.next().cloned() {
            let body = match &call {
                Call::Head => ok(json!(format!("{head:#x}"))),
                Call::Logs { .. } => ok(json!([])),
                Call::Headers { numbers } => headers(numbers, |n| 1_000 + 12 * n, fork),
                Call::Reads { reads, .. } => Value::Array(
                    (0..reads.len())
                        .map(|i| json!({"jsonrpc": "2.0", "id": i + 1, "result": "0x"}))
                        .collect(),
                ),
            };
            outs.push(f.on_reply(&call, &body));
        }
        outs
    }

    #[test]
    fn a_provider_that_lies_is_refused_and_counted() {
        let mut f = Follower::new(settings());
        let out = f.on_reply(&Call::Head, &ok(json!("0xa")));
        assert!(out.problems.is_empty());
        let call = f.next().cloned().unwrap();
        assert_eq!(
            call,
            Call::Logs {
                from: 1,
                to: 10,
                addresses: vec![F]
            }
        );
        // A log of an address not asked for, one outside the range.
        let other = Address::repeat_byte(1);
        let out = f.on_reply(&call, &ok(json!([log(other, 5), log(F, 11)])));
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("not asked for"));
        assert!(out.problems[1].contains("outside"));
        // Times going backwards: the range is refused and read again.
        let call = f.next().cloned().unwrap();
        let Call::Headers { numbers } = &call else {
            panic!("{call:?}")
        };
        let out = f.on_reply(&call, &headers(numbers, |n| 10_000 - n, 0));
        assert!(out.refused, "{:?}", out.problems);
        assert!(out.problems[0].contains("backwards"));
        assert_eq!(f.processed(), None);
        // Honest answers from here: caught up at 10.
        for o in follow(&mut f, 10, 0) {
            assert!(o.problems.is_empty(), "{:?}", o.problems);
        }
        assert_eq!(f.processed(), Some(10));
        // A head behind what the provider said before.
        let out = f.on_reply(&Call::Head, &ok(json!("0x9")));
        assert!(out.refused && out.problems[0].contains("went back"));
    }

    #[test]
    fn a_range_refused_as_too_large_is_split() {
        let mut f = Follower::new(settings());
        f.on_reply(&Call::Head, &ok(json!("0x64")));
        let call = f.next().cloned().unwrap();
        let err = json!({"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"query returned more than 10000 results"}});
        let out = f.on_reply(&call, &err);
        assert!(!out.refused, "a split, not a failure");
        assert_eq!(
            f.next(),
            Some(&Call::Logs {
                from: 1,
                to: 50,
                addresses: vec![F]
            })
        );
        follow(&mut f, 100, 0);
        assert_eq!(f.processed(), Some(100));
    }

    #[test]
    fn a_replaced_block_is_found_and_the_pairs_rolled_back() {
        let mut f = Follower::new(settings());
        follow(&mut f, 20, 0);
        assert_eq!(f.processed(), Some(20));
        // The chain under block 20 is another from block 18 on: the idle check sees it.
        f.wake();
        let call = f.next().cloned().unwrap();
        let out = f.on_reply(&call, &ok(json!("0x14")));
        assert!(out.problems.is_empty());
        let call = f.next().cloned().unwrap();
        assert_eq!(call, Call::Headers { numbers: vec![20] });
        let out = f.on_reply(&call, &headers(&[20], |n| 1_000 + 12 * n, 1));
        assert!(out.reorg.is_none());
        // The search: blocks up to 17 agree.
        let call = f.next().cloned().unwrap();
        let Call::Headers { numbers } = &call else {
            panic!("{call:?}")
        };
        let mixed = Value::Array(
            numbers
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let fork = if *n >= 18 { 1 } else { 0 };
                    json!({"jsonrpc":"2.0","id":i + 1,"result": header(*n, 1_000 + 12 * n, fork)})
                })
                .collect(),
        );
        let out = f.on_reply(&call, &mixed);
        let r = out.reorg.expect("a reorganisation");
        assert_eq!(r.replaced_to, 20);
        assert!(r.fork <= 17, "{r:?}");
        assert_eq!(f.processed(), Some(r.fork));
    }

    #[test]
    fn the_follower_is_saved_and_restored_whole() {
        let mut f = Follower::new(settings());
        follow(&mut f, 30, 0);
        let mut bytes = Vec::new();
        ciborium::into_writer(&f, &mut bytes).unwrap();
        let back: Follower = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, f);
    }
}
