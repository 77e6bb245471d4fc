//! Sources: what turns upstream bytes into [`Snapshot`]s. This module owns the decode contract
//! (bytes in; snapshots, discoveries and a list of skipped items out; a malformed body is an
//! error value, never a panic) and the lenient readers every decoder shares. Decoding never
//! does signal logic and never reads the clock: the receive time is an argument.
//!
//! The real APIs drift (keys vanish, numbers become strings, `null`, `"NaN"`), so a decoder
//! reads each field on its own and an item it cannot use is skipped with a reason, never
//! allowed to sink the rest of the response.

pub mod bars;
pub mod bounds;
pub mod dexscreener;
pub mod geckoterminal;
pub mod simulator;
pub mod tape;

use serde_json::Value;

use crate::model::{Discovered, Snapshot, Source};

/// What a source hands the engine, in order.
#[derive(Debug)]
pub enum Input {
    Snapshots(Vec<Snapshot>),
    /// The time now: the engine's time-outs fire on ticks, so a replay fires them exactly as
    /// they fired live.
    Tick(i64),
    /// A response or line with no usable data (counted and logged, never fatal).
    Problem(String),
    /// The chain replaced blocks `from_block..=to_block` (the chain source): these pairs had
    /// been read from them; the chain they continue on forked at `at_ms`.
    Reorg {
        pairs: Vec<crate::model::PairKey>,
        from_block: u64,
        to_block: u64,
        at_ms: i64,
    },
    /// The source's own state after the inputs before it (the chain follower's): saved with
    /// the engine's next checkpoint.
    SourceState(Vec<u8>),
}

/// One OHLCV bar (GeckoTerminal): not a snapshot, kept for charts and back-fills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    pub t_s: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume_usd: f64,
}

/// An item of a response that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub reason: Skip,
}

/// Why one item of a response was skipped; the rest of the response is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("{what} is {found}, expected an object")]
    NotAnObject {
        what: &'static str,
        found: &'static str,
    },
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("cannot tell the pool's network")]
    NoNetwork,
    #[error("missing or malformed `chainId` or `tokenAddress`")]
    BadDiscovery,
    #[error("OHLCV row is not [t, o, h, l, c, v] of numbers")]
    BadOhlcvRow,
    #[error(transparent)]
    Bounds(#[from] bounds::Rejected),
}

/// What one upstream response decodes into.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    pub snapshots: Vec<Snapshot>,
    pub discovered: Vec<Discovered>,
    pub candles: Vec<Candle>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("unexpected response shape: {0}")]
    Shape(String),
    #[error("upstream error response: {0}")]
    Upstream(String),
    #[error("no decoder for {origin} request {request}")]
    UnknownRequest { origin: String, request: String },
}

/// Decodes one recorded or live response, choosing the decoder from the source and the request
/// path (the same dispatch the live sources and the tape replay use).
pub fn decode(
    source: Source,
    request: &str,
    body: &Value,
    observed_at_ms: i64,
) -> Result<Decoded, DecodeError> {
    match source {
        // The simulator and the bar importer write DexScreener-shaped responses.
        Source::Dexscreener | Source::Simulator | Source::Bars => {
            dexscreener::decode(request, body, observed_at_ms, source)
        }
        Source::Geckoterminal => geckoterminal::decode(request, body, observed_at_ms),
        // A chain's replies are read by its follower, which keeps state between them, never
        // one by one.
        Source::Bench | Source::Evm => Err(DecodeError::UnknownRequest {
            origin: source.as_str().to_string(),
            request: request.to_string(),
        }),
    }
}

/// Parses bytes and decodes them.
pub fn decode_bytes(
    source: Source,
    request: &str,
    body: &[u8],
    observed_at_ms: i64,
) -> Result<Decoded, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    decode(source, request, &value, observed_at_ms)
}

/// A finite number from a JSON number or a decimal string; `None` for `null`, `"NaN"`,
/// infinities, junk and absent keys.
pub(crate) fn num(v: Option<&Value>) -> Option<f64> {
    let x = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// A finite, non-negative number (volumes, liquidity, FDV): a negative one is junk.
pub(crate) fn non_neg(v: Option<&Value>) -> Option<f64> {
    num(v).filter(|x| *x >= 0.0)
}

/// A count: a non-negative integer, from a number or a string.
pub(crate) fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0 && *x < 9.0e15)
                .map(|x| x as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// A non-empty string.
pub(crate) fn text(v: Option<&Value>) -> Option<&str> {
    v?.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// An integer time in ms (number or string).
pub(crate) fn int_ms(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|x| x.is_finite() && x.abs() < 9.0e15)
                .map(|x| x as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// A short description of a JSON value's type, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_numbers() {
        let check = |v: Value, want: Option<f64>| assert_eq!(num(Some(&v)), want, "{v}");
        check(json!(1.5), Some(1.5));
        check(json!("1.5"), Some(1.5));
        check(json!(" 2 "), Some(2.0));
        check(json!("NaN"), None);
        check(json!("inf"), None);
        check(json!(null), None);
        check(json!([1]), None);
        check(json!(3.7e42), Some(3.7e42));
        assert_eq!(num(None), None);
        assert_eq!(non_neg(Some(&json!(-1))), None);
    }

    #[test]
    fn lenient_counts() {
        let check = |v: Value, want: Option<u64>| assert_eq!(count(Some(&v)), want, "{v}");
        check(json!(10), Some(10));
        check(json!(10.0), Some(10));
        check(json!("7"), Some(7));
        check(json!(-1), None);
        check(json!(1.5), None);
        check(json!(null), None);
        check(json!(1e300), None);
    }
}
