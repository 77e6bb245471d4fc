//! The data model: pair keys, snapshots as decoded from upstream, and the signal events the
//! engine emits. Plain data and its serialization; this module never does I/O.
//!
//! Missing upstream data is `None`, never `0`: a bot must be able to tell "no trades" from
//! "the provider did not say".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A trading pair: chain plus pair (pool) address. The address keeps its case, because Solana
/// addresses are case-sensitive base58 (EVM addresses are compared as the upstream spells them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairKey {
    pub chain: String,
    pub address: String,
}

impl PairKey {
    pub fn new(chain: impl Into<String>, address: impl Into<String>) -> Self {
        PairKey {
            chain: chain.into(),
            address: address.into(),
        }
    }
}

impl fmt::Display for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.chain, self.address)
    }
}

/// `chain:address` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a pair: expected `chain:address`")]
pub struct BadPairKey(pub String);

impl FromStr for PairKey {
    type Err = BadPairKey;

    /// `chain:address`, both non-empty, one colon; the address keeps its case.
    fn from_str(s: &str) -> Result<PairKey, BadPairKey> {
        match s.split_once(':') {
            Some((chain, address))
                if !chain.is_empty() && !address.is_empty() && !address.contains(':') =>
            {
                Ok(PairKey::new(chain, address))
            }
            _ => Err(BadPairKey(s.to_string())),
        }
    }
}

/// Where data came from. A replayed tape keeps the source it was recorded from; simulated data
/// always says `simulator`, so that nobody mistakes it for a live market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Dexscreener,
    Geckoterminal,
    Simulator,
    Bench,
    /// A chain's own logs over JSON-RPC (`[source] kind = "evm"`).
    Evm,
    /// One-minute bars of real pools recorded by others, imported (`dexpulse import`): real
    /// market data, replayed, never live.
    Bars,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dexscreener => "dexscreener",
            Source::Geckoterminal => "geckoterminal",
            Source::Simulator => "simulator",
            Source::Bench => "bench",
            Source::Evm => "evm",
            Source::Bars => "bars",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "dexscreener" => Some(Source::Dexscreener),
            "geckoterminal" => Some(Source::Geckoterminal),
            "simulator" => Some(Source::Simulator),
            "bench" => Some(Source::Bench),
            "evm" => Some(Source::Evm),
            "bars" => Some(Source::Bars),
            _ => None,
        }
    }
}

/// The four rolling windows the signal spec uses (GeckoTerminal's m15/m30 are not kept).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Windows<T> {
    pub m5: Option<T>,
    pub h1: Option<T>,
    pub h6: Option<T>,
    pub h24: Option<T>,
}

impl<T: Copy> Windows<T> {
    pub fn as_array(&self) -> [Option<T>; 4] {
        [self.m5, self.h1, self.h6, self.h24]
    }
}

/// Trade counts of one window. `buyers`/`sellers` (unique wallets) only come from GeckoTerminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Txns {
    pub buys: u64,
    pub sells: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub buyers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sellers: Option<u64>,
}

impl Txns {
    pub fn total(&self) -> u64 {
        self.buys.saturating_add(self.sells)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Token {
    pub address: String,
    pub symbol: Option<String>,
}

/// A price as upstream wrote it (kept for output, byte for byte) and as a number for the math.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub raw: String,
    pub value: f64,
}

impl Price {
    /// Parses a decimal string; `None` for junk, `"NaN"`, infinities and negative values.
    pub fn parse(raw: &str) -> Option<Price> {
        let value: f64 = raw.trim().parse().ok()?;
        if value.is_finite() && value >= 0.0 {
            Some(Price {
                raw: raw.trim().to_string(),
                value,
            })
        } else {
            None
        }
    }
}

/// One observation of one pair (docs/signals.md, "Snapshots").
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub key: PairKey,
    pub source: Source,
    /// Our receive time, Unix ms.
    pub observed_at_ms: i64,
    pub source_ts_ms: Option<i64>,
    pub dex_id: Option<String>,
    pub labels: Vec<String>,
    pub base_token: Token,
    pub quote_token: Token,
    pub price_usd: Option<Price>,
    pub price_change_pct: Windows<f64>,
    pub volume_usd: Windows<f64>,
    pub txns: Windows<Txns>,
    pub liquidity_usd: Option<f64>,
    /// Pool token amounts (base and quote units), for the pool invariant K.
    pub liquidity_base: Option<f64>,
    pub liquidity_quote: Option<f64>,
    pub fdv_usd: Option<f64>,
    pub market_cap_usd: Option<f64>,
    pub pair_created_at_ms: Option<i64>,
    /// The share of the pool's liquidity its LPs burned within the drain lookback, measured
    /// exactly from the chain's `Burn` logs (the chain source); `None` from aggregators, which
    /// only show liquidity in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lp_burned: Option<f64>,
    /// The quote token's USD price, where the source gives the pair's price in its quote token
    /// too (DexScreener's `priceNative`, GeckoTerminal's `quote_token_price_usd`, the chain
    /// source's quote pricing): a pair quoted in WETH moves in USD with WETH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_usd: Option<f64>,
}

impl Clone for Snapshot {
    fn clone(&self) -> Self {
        let mut out = Snapshot {
            key: self.key.clone(),
            source: self.source,
            observed_at_ms: self.observed_at_ms,
            source_ts_ms: self.source_ts_ms,
            dex_id: None,
            labels: Vec::new(),
            base_token: self.base_token.clone(),
            quote_token: self.quote_token.clone(),
            price_usd: None,
            price_change_pct: self.price_change_pct,
            volume_usd: self.volume_usd,
            txns: self.txns,
            liquidity_usd: self.liquidity_usd,
            liquidity_base: self.liquidity_base,
            liquidity_quote: self.liquidity_quote,
            fdv_usd: self.fdv_usd,
            market_cap_usd: self.market_cap_usd,
            pair_created_at_ms: self.pair_created_at_ms,
            lp_burned: self.lp_burned,
            quote_usd: self.quote_usd,
        };
        out.dex_id.clone_from(&self.dex_id);
        out.labels.clone_from(&self.labels);
        out.price_usd.clone_from(&self.price_usd);
        out
    }

    /// Field by field, reusing this snapshot's strings: the engine keeps each pair's last
    /// snapshot this way without allocating in the steady state.
    fn clone_from(&mut self, src: &Self) {
        self.key.chain.clone_from(&src.key.chain);
        self.key.address.clone_from(&src.key.address);
        self.source = src.source;
        self.observed_at_ms = src.observed_at_ms;
        self.source_ts_ms = src.source_ts_ms;
        self.dex_id.clone_from(&src.dex_id);
        self.labels.clone_from(&src.labels);
        self.base_token.address.clone_from(&src.base_token.address);
        self.base_token.symbol.clone_from(&src.base_token.symbol);
        self.quote_token
            .address
            .clone_from(&src.quote_token.address);
        self.quote_token.symbol.clone_from(&src.quote_token.symbol);
        match (&mut self.price_usd, &src.price_usd) {
            (Some(dst), Some(p)) => {
                dst.raw.clone_from(&p.raw);
                dst.value = p.value;
            }
            (dst, p) => *dst = p.clone(),
        }
        self.price_change_pct = src.price_change_pct;
        self.volume_usd = src.volume_usd;
        self.txns = src.txns;
        self.liquidity_usd = src.liquidity_usd;
        self.liquidity_base = src.liquidity_base;
        self.liquidity_quote = src.liquidity_quote;
        self.fdv_usd = src.fdv_usd;
        self.market_cap_usd = src.market_cap_usd;
        self.pair_created_at_ms = src.pair_created_at_ms;
        self.lp_burned = src.lp_burned;
        self.quote_usd = src.quote_usd;
    }
}

/// Number of numeric fields [`Snapshot::numeric_fields`] returns.
pub const NUMERIC_FIELDS: usize = 30;

impl Snapshot {
    /// The canonical numeric payload that freshness is judged on, as bit patterns (a missing
    /// value and every present value are distinct). Fixed size so that comparing it allocates
    /// nothing.
    pub fn numeric_fields(&self) -> [u64; NUMERIC_FIELDS] {
        const NONE: u64 = 0x7ff8_dead_beef_0001; // a NaN payload no parsed value can carry
        let f = |x: Option<f64>| x.map_or(NONE, f64::to_bits);
        let n = |x: Option<u64>| x.map_or(NONE, |v| v);
        let t = self.txns.as_array();
        let tb = |i: usize| n(t[i].map(|x| x.buys));
        let ts = |i: usize| n(t[i].map(|x| x.sells));
        let tu = |i: usize| {
            n(t[i]
                .and_then(|x| x.buyers)
                .zip(t[i].and_then(|x| x.sellers))
                .map(|(b, s)| (b << 32) ^ s))
        };
        let p = self.price_change_pct.as_array();
        let v = self.volume_usd.as_array();
        [
            f(self.price_usd.as_ref().map(|p| p.value)),
            f(p[0]),
            f(p[1]),
            f(p[2]),
            f(p[3]),
            f(v[0]),
            f(v[1]),
            f(v[2]),
            f(v[3]),
            tb(0),
            ts(0),
            tb(1),
            ts(1),
            tb(2),
            ts(2),
            tb(3),
            ts(3),
            tu(0),
            tu(1),
            tu(2),
            tu(3),
            f(self.liquidity_usd),
            f(self.liquidity_base),
            f(self.liquidity_quote),
            f(self.fdv_usd),
            f(self.market_cap_usd),
            n(self.pair_created_at_ms.map(|x| x as u64)),
            n(self.source_ts_ms.map(|x| x as u64)),
            u64::from(self.price_usd.is_some()),
            self.labels.len() as u64,
        ]
    }

    /// `sha256(canonical numeric fields)`, hex: the `snapshot_fingerprint` of events. Computed
    /// only when an event is built; freshness compares [`Snapshot::numeric_fields`] directly.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for x in self.numeric_fields() {
            h.update(x.to_le_bytes());
        }
        // Only the chain source measures burns: the aggregators' fingerprints stay as they were.
        if let Some(b) = self.lp_burned {
            h.update(b.to_bits().to_le_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// A pair's identity found by a discovery feed: not a snapshot, an address to look up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Discovered {
    /// A token address (DexScreener profiles and boosts): look up its pairs.
    Token { chain: String, address: String },
    /// A pool address (GeckoTerminal new and trending pools).
    Pair(PairKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    MomentumUp,
    MomentumDown,
    VolumeSurge,
    BuyPressure,
    SellPressure,
    PumpReversal,
    LiquidityDrain,
    RugWarning,
    NewPair,
    /// A pair's stance changed (docs/signals.md, "Stance"): not an episode of its own.
    Stance,
    /// The chain replaced blocks this pair's events were read from (the chain source,
    /// docs/sources.md "Reorganisations"): information, never bullish or bearish.
    Reorg,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::MomentumUp,
        Kind::MomentumDown,
        Kind::VolumeSurge,
        Kind::BuyPressure,
        Kind::SellPressure,
        Kind::PumpReversal,
        Kind::LiquidityDrain,
        Kind::RugWarning,
        Kind::NewPair,
        Kind::Stance,
        Kind::Reorg,
    ];

    /// How many kinds the per-(pair, kind) state machine runs.
    pub const N_EPISODIC: usize = Kind::ALL.len() - 2;

    /// The kinds the per-(pair, kind) state machine runs: all but `stance` and `reorg` (the
    /// last two).
    pub const EPISODIC: [Kind; Kind::N_EPISODIC] = {
        let mut out = [Kind::MomentumUp; Kind::N_EPISODIC];
        let mut i = 0;
        while i < out.len() {
            out[i] = Kind::ALL[i];
            i += 1;
        }
        out
    };

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MomentumUp => "momentum_up",
            Kind::MomentumDown => "momentum_down",
            Kind::VolumeSurge => "volume_surge",
            Kind::BuyPressure => "buy_pressure",
            Kind::SellPressure => "sell_pressure",
            Kind::PumpReversal => "pump_reversal",
            Kind::LiquidityDrain => "liquidity_drain",
            Kind::RugWarning => "rug_warning",
            Kind::NewPair => "new_pair",
            Kind::Stance => "stance",
            Kind::Reorg => "reorg",
        }
    }

    /// Kinds read from the market's price and flow, which every pool of a token shows alike
    /// (deduplicated per token); liquidity kinds and `new_pair` belong to one pool.
    pub fn is_market(self) -> bool {
        matches!(
            self,
            Kind::MomentumUp
                | Kind::MomentumDown
                | Kind::VolumeSurge
                | Kind::BuyPressure
                | Kind::SellPressure
                | Kind::PumpReversal
        )
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A set of kinds as a bit mask: asking which kinds are open allocates nothing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct KindSet(u16);

impl KindSet {
    pub const ALL: KindSet = KindSet((1 << Kind::ALL.len()) - 1);

    pub fn insert(&mut self, k: Kind) {
        self.0 |= 1 << k.index();
    }

    pub fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<Kind> for KindSet {
    fn from_iter<I: IntoIterator<Item = Kind>>(iter: I) -> KindSet {
        let mut s = KindSet::default();
        for k in iter {
            s.insert(k);
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Bullish,
    Bearish,
    Neutral,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Bullish => "bullish",
            Direction::Bearish => "bearish",
            Direction::Neutral => "neutral",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "bullish" => Some(Direction::Bullish),
            "bearish" => Some(Direction::Bearish),
            "neutral" => Some(Direction::Neutral),
            _ => None,
        }
    }
}

/// Closed events sort before opened ones of the same instant, so that a bot sees a position's
/// exit before the entry that replaces it (a `volume_surge` direction flip, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Closed,
    Opened,
    Escalated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Opened => "opened",
            Phase::Escalated => "escalated",
            Phase::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    ExitCondition,
    DataGap,
    Superseded,
    FamilyFlip,
    /// A volume surge turned out to be suspected wash trading: it has no direction to trade.
    WashSuspected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    VeryHigh,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::VeryHigh => "very_high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_score(score: u8) -> Severity {
        match score {
            0..=39 => Severity::Low,
            40..=59 => Severity::Medium,
            60..=79 => Severity::High,
            _ => Severity::VeryHigh,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TxnPair {
    pub buys: u64,
    pub sells: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnWindows {
    pub m5: Option<TxnPair>,
    pub h1: Option<TxnPair>,
    pub h6: Option<TxnPair>,
    pub h24: Option<TxnPair>,
}

impl From<&Windows<Txns>> for TxnWindows {
    /// Buys and sells per window (unique wallets are not part of events).
    fn from(w: &Windows<Txns>) -> TxnWindows {
        let tp = |x: Option<Txns>| {
            x.map(|x| TxnPair {
                buys: x.buys,
                sells: x.sells,
            })
        };
        TxnWindows {
            m5: tp(w.m5),
            h1: tp(w.h1),
            h6: tp(w.h6),
            h24: tp(w.h24),
        }
    }
}

/// The metrics an event was computed from. Ratios are rounded to 4 decimals, percents and USD
/// to 2; unknown values are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub price_usd: Option<String>,
    pub price_change_pct: Windows<f64>,
    pub volume_usd: Windows<f64>,
    pub txns: TxnWindows,
    pub liquidity_usd: Option<f64>,
    pub fdv_usd: Option<f64>,
    pub market_cap_usd: Option<f64>,
    pub age_minutes: Option<i64>,
    pub r5: Option<f64>,
    pub r60: Option<f64>,
    pub r6h: Option<f64>,
    pub z_vol: Option<f64>,
    pub bp_h1: Option<f64>,
    pub bp_m5: Option<f64>,
    pub lvr: Option<f64>,
    pub lp_removed: Option<f64>,
    pub dd30: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Components {
    #[serde(rename = "E")]
    pub e: f64,
    #[serde(rename = "Q")]
    pub q: f64,
    #[serde(rename = "P")]
    pub p: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub version: String,
    pub params_hash: String,
}

/// `dexpulse.event/v1` (docs/signals.md, "The event"). Field order is the serialization order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalEvent {
    pub schema: String,
    pub event_id: String,
    pub episode_id: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub close_reason: Option<CloseReason>,
    pub kind: Kind,
    pub direction: Direction,
    pub score: u8,
    pub severity: Severity,
    pub confidence: Option<f64>,
    pub observed_at: String,
    pub episode_started_at: String,
    pub chain: String,
    pub pair_address: String,
    pub dex_id: Option<String>,
    pub base_token: Token,
    pub quote_token: Token,
    pub source: Source,
    pub snapshot_fingerprint: String,
    pub metrics: Metrics,
    pub components: Components,
    pub risk_flags: Vec<String>,
    pub reasons: Vec<String>,
    pub related_pairs: Vec<String>,
    pub engine: EngineInfo,
    /// Unix ms of `observed_at`, for ordering; not serialized.
    #[serde(skip)]
    pub observed_at_ms: i64,
}

pub const EVENT_SCHEMA: &str = "dexpulse.event/v1";

/// What subscription filters read of an event, kept beside its serialized frame so that
/// matching never parses JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub pair: PairKey,
    pub kind: Kind,
    pub direction: Direction,
    pub score: u8,
}

/// A pair's derived metrics as the engine last computed them (rounded as in events; unknown is
/// `None`): the plain output that pair views are rendered from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    pub age_minutes: Option<i64>,
    pub r5: Option<f64>,
    pub r60: Option<f64>,
    pub bp_h1: Option<f64>,
    pub bp_m5: Option<f64>,
    pub lvr: Option<f64>,
    pub lp_removed: Option<f64>,
    /// The pair's stance (docs/signals.md, "Stance"), and its trend: the last stance that was
    /// not neutral (`None` before any).
    pub stance: Option<Direction>,
    pub trend: Option<Direction>,
}

impl SignalEvent {
    pub fn meta(&self) -> EventMeta {
        EventMeta {
            pair: PairKey::new(self.chain.clone(), self.pair_address.clone()),
            kind: self.kind,
            direction: self.direction,
            score: self.score,
        }
    }

    /// The deterministic output order of docs/signals.md ("Event order").
    pub fn order_key(&self) -> (i64, &str, &str, Phase, Kind) {
        (
            self.observed_at_ms,
            &self.chain,
            &self.pair_address,
            self.phase,
            self.kind,
        )
    }
}

/// Unix ms as `2026-11-22T04:41:05.123Z`.
pub fn format_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => String::from("invalid-time"),
    }
}

/// An ISO-8601 / RFC 3339 time (GeckoTerminal's `pool_created_at`) as Unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_keeps_its_string_and_rejects_junk() {
        let p = Price::parse("0.0000009108").unwrap();
        assert_eq!(p.raw, "0.0000009108");
        assert!((p.value - 9.108e-7).abs() < 1e-18);
        assert_eq!(Price::parse("NaN"), None);
        assert_eq!(Price::parse("inf"), None);
        assert_eq!(Price::parse("-1"), None);
        assert_eq!(Price::parse("abc"), None);
    }

    #[test]
    fn time_formats_round_trip() {
        assert_eq!(format_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            parse_rfc3339_ms("2024-05-13T15:10:12Z"),
            Some(1_715_613_012_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn clone_from_is_a_clone() {
        let a = crate::source::simulator::example_snapshot();
        let mut b = a.clone();
        assert_eq!(a, b);
        let mut c = a.clone();
        c.price_usd = None;
        c.labels.push("x".into());
        c.key.address.push('z');
        b.clone_from(&c);
        assert_eq!(b, c);
        b.clone_from(&a);
        assert_eq!(b, a);
    }

    #[test]
    fn missing_and_zero_have_different_fingerprints() {
        let mut a = crate::source::simulator::example_snapshot();
        a.fdv_usd = None;
        let mut b = a.clone();
        b.fdv_usd = Some(0.0);
        assert_ne!(a.numeric_fields(), b.numeric_fields());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
