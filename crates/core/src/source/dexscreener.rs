//! DexScreener responses into snapshots and discoveries (pure). Shapes handled: `{schemaVersion,
//! pairs}` with `pairs` possibly `null`, the legacy `pair` key, bare arrays (`/token-pairs/v1`,
//! `/tokens/v1`), search results, and the token-profiles / token-boosts discovery feeds.
//!
//! Upstream facts this relies on: prices are strings, other numbers are numbers; `priceUsd`,
//! `liquidity`, `fdv` and `marketCap` may be omitted (together or alone); newer data omits a
//! `priceChange` window whose value is 0. An omitted window stays `None` here: the decoder
//! reports what upstream said, and the engine treats unknown as unknown.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{
    bounds, count, int_ms, non_neg, num, text, type_name, DecodeError, Decoded, Skip, Skipped,
};
use crate::model::{Discovered, PairKey, Price, Snapshot, Source, Token, Txns, Windows};

/// Decodes a DexScreener response (or a simulator response, which has the same shape).
pub fn decode(
    request: &str,
    body: &Value,
    observed_at_ms: i64,
    source: Source,
) -> Result<Decoded, DecodeError> {
    let path = request.split('?').next().unwrap_or(request);
    if path.starts_with("/token-profiles/") || path.starts_with("/token-boosts/") {
        return decode_discovery(body);
    }
    decode_pairs(body, observed_at_ms, source)
}

/// Any response that carries Pair objects: `{pairs}`, `{pair}`, or a bare array.
pub fn decode_pairs(
    body: &Value,
    observed_at_ms: i64,
    source: Source,
) -> Result<Decoded, DecodeError> {
    let items: Vec<&Value> = match body {
        Value::Array(items) => items.iter().collect(),
        Value::Object(obj) => match (obj.get("pairs"), obj.get("pair")) {
            (Some(Value::Array(items)), _) => items.iter().collect(),
            (Some(Value::Null) | None, Some(pair @ Value::Object(_))) => vec![pair],
            (Some(Value::Null) | None, Some(Value::Null) | None) => {
                if obj.contains_key("pairs")
                    || obj.contains_key("pair")
                    || obj.contains_key("schemaVersion")
                {
                    Vec::new()
                } else {
                    return Err(upstream_error(obj).unwrap_or_else(|| {
                        DecodeError::Shape("object without `pairs` or `pair`".to_string())
                    }));
                }
            }
            (Some(other), _) => {
                return Err(DecodeError::Shape(format!(
                    "`pairs` is {}, expected an array or null",
                    type_name(other)
                )))
            }
            (_, Some(other)) => {
                return Err(DecodeError::Shape(format!(
                    "`pair` is {}, expected an object or null",
                    type_name(other)
                )))
            }
        },
        other => {
            return Err(DecodeError::Shape(format!(
                "body is {}, expected an object or an array",
                type_name(other)
            )))
        }
    };

    let mut out = Decoded::default();
    let mut seen: HashSet<PairKey> = HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        match pair(item, observed_at_ms, source)
            .and_then(|s| bounds::snapshot(s).map_err(Skip::from))
        {
            Ok(snap) => {
                // The legacy shape repeats the pair under `pairs` and `pair`; a search can list
                // a pair twice. One snapshot per pair and response.
                if seen.insert(snap.key.clone()) {
                    out.snapshots.push(snap);
                }
            }
            Err(reason) => out.skipped.push(Skipped { index, reason }),
        }
    }
    Ok(out)
}

fn upstream_error(obj: &Map<String, Value>) -> Option<DecodeError> {
    let msg = text(obj.get("error"))
        .or_else(|| text(obj.get("message")))
        .map(str::to_string)?;
    Some(DecodeError::Upstream(bounds::message(&msg)))
}

fn token(v: Option<&Value>) -> Token {
    Token {
        address: text(v.and_then(|t| t.get("address")))
            .unwrap_or_default()
            .to_string(),
        symbol: text(v.and_then(|t| t.get("symbol"))).map(str::to_string),
    }
}

fn windows_f64(v: Option<&Value>, read: fn(Option<&Value>) -> Option<f64>) -> Windows<f64> {
    let get = |k: &str| read(v.and_then(|w| w.get(k)));
    Windows {
        m5: get("m5"),
        h1: get("h1"),
        h6: get("h6"),
        h24: get("h24"),
    }
}

pub(crate) fn txns_of(v: Option<&Value>) -> Option<Txns> {
    let v = v?;
    Some(Txns {
        buys: count(v.get("buys"))?,
        sells: count(v.get("sells"))?,
        buyers: count(v.get("buyers")),
        sellers: count(v.get("sellers")),
    })
}

fn pair(item: &Value, observed_at_ms: i64, source: Source) -> Result<Snapshot, Skip> {
    let obj = item.as_object().ok_or(Skip::NotAnObject {
        what: "pair",
        found: type_name(item),
    })?;
    let chain = text(obj.get("chainId")).ok_or(Skip::Missing("chainId"))?;
    let address = text(obj.get("pairAddress")).ok_or(Skip::Missing("pairAddress"))?;
    let txns = obj.get("txns");
    let liq = obj.get("liquidity");
    let labels = obj
        .get("labels")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| text(Some(l)).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Snapshot {
        key: PairKey::new(chain, address),
        source,
        observed_at_ms,
        source_ts_ms: None,
        dex_id: text(obj.get("dexId")).map(str::to_string),
        labels,
        base_token: token(obj.get("baseToken")),
        quote_token: token(obj.get("quoteToken")),
        price_usd: text(obj.get("priceUsd"))
            .and_then(Price::parse)
            .or_else(|| {
                // A number where a string was documented: drift, still a price.
                num(obj.get("priceUsd"))
                    .filter(|p| *p >= 0.0)
                    .map(|value| Price {
                        raw: value.to_string(),
                        value,
                    })
            }),
        price_change_pct: windows_f64(obj.get("priceChange"), num),
        volume_usd: windows_f64(obj.get("volume"), non_neg),
        txns: Windows {
            m5: txns_of(txns.and_then(|t| t.get("m5"))),
            h1: txns_of(txns.and_then(|t| t.get("h1"))),
            h6: txns_of(txns.and_then(|t| t.get("h6"))),
            h24: txns_of(txns.and_then(|t| t.get("h24"))),
        },
        liquidity_usd: non_neg(liq.and_then(|l| l.get("usd"))),
        liquidity_base: non_neg(liq.and_then(|l| l.get("base"))),
        liquidity_quote: non_neg(liq.and_then(|l| l.get("quote"))),
        fdv_usd: non_neg(obj.get("fdv")),
        market_cap_usd: non_neg(obj.get("marketCap")),
        pair_created_at_ms: int_ms(obj.get("pairCreatedAt")).filter(|t| *t > 0),
        lp_burned: None,
        quote_usd: quote_usd(obj),
    })
}

/// The quote token's USD price: `priceUsd / priceNative`, when both are positive numbers.
fn quote_usd(obj: &Map<String, Value>) -> Option<f64> {
    let read = |k: &str| num(obj.get(k)).filter(|x| *x > 0.0);
    let q = read("priceUsd")? / read("priceNative")?;
    q.is_finite().then_some(q)
}

/// Token profiles and boosts: token addresses to look up, not snapshots.
pub fn decode_discovery(body: &Value) -> Result<Decoded, DecodeError> {
    let items = match body {
        Value::Array(items) => items,
        Value::Object(obj) => {
            return Err(upstream_error(obj).unwrap_or_else(|| {
                DecodeError::Shape("discovery feed is an object, expected an array".to_string())
            }))
        }
        other => {
            return Err(DecodeError::Shape(format!(
                "discovery feed is {}, expected an array",
                type_name(other)
            )))
        }
    };
    let mut out = Decoded::default();
    let mut seen = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        let chain = text(item.get("chainId"));
        let address = text(item.get("tokenAddress"));
        let chain = chain.filter(|v| bounds::identifier("chain", v, bounds::CHAIN_BYTES).is_ok());
        let address =
            address.filter(|v| bounds::identifier("address", v, bounds::ADDRESS_BYTES).is_ok());
        match (chain, address) {
            (Some(chain), Some(address)) => {
                let d = Discovered::Token {
                    chain: chain.to_string(),
                    address: address.to_string(),
                };
                if seen.insert(d.clone()) {
                    out.discovered.push(d);
                }
            }
            _ => out.skipped.push(Skipped {
                index,
                reason: Skip::BadDiscovery,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(body: Value) -> Snapshot {
        let d = decode_pairs(&body, 1_000, Source::Dexscreener).unwrap();
        assert_eq!(d.snapshots.len(), 1, "{d:?}");
        d.snapshots.into_iter().next().unwrap()
    }

    #[test]
    fn omitted_keys_are_none_not_zero() {
        let s = one(
            json!({"pairs":[{"chainId":"solana","pairAddress":"AbC","priceChange":{"h24":0.05},
            "volume":{"m5":0,"h1":1.5}}]}),
        );
        assert_eq!(s.key, PairKey::new("solana", "AbC"));
        assert_eq!(s.price_usd, None);
        assert_eq!(s.liquidity_usd, None);
        assert_eq!(s.fdv_usd, None);
        assert_eq!(s.price_change_pct.h24, Some(0.05));
        assert_eq!(s.price_change_pct.m5, None);
        assert_eq!(s.volume_usd.m5, Some(0.0));
        assert_eq!(s.volume_usd.h6, None);
        assert_eq!(s.txns.h1, None);
    }

    /// `(priceUsd, priceNative)` and the quote's USD price they give: a ratio of two positive
    /// numbers, strings or not, and nothing from junk, zero or a missing half.
    #[test]
    fn the_quote_price_is_the_usd_price_over_the_native_one() {
        fn check(usd: Value, native: Value, want: Option<f64>) {
            let s = one(json!({"pairs":[{"chainId":"ethereum","pairAddress":"0xA",
                "priceUsd": usd, "priceNative": native}]}));
            match (s.quote_usd, want) {
                (Some(got), Some(want)) => assert!((got - want).abs() < 1e-9, "{got} vs {want}"),
                (got, want) => assert_eq!(got, want),
            }
        }
        check(json!("3.6"), json!("0.002"), Some(1800.0));
        check(json!(3.6), json!("0.002"), Some(1800.0));
        check(json!("1.0001"), json!("1.0001"), Some(1.0));
        check(json!("3.6"), json!("0"), None);
        check(json!("3.6"), json!("NaN"), None);
        check(json!("3.6"), json!("-0.002"), None);
        check(json!("3.6"), Value::Null, None);
        check(json!("junk"), json!("0.002"), None);
    }

    #[test]
    fn junk_items_are_skipped_not_fatal() {
        let d = decode_pairs(
            &json!([1, {"chainId":"x"}, {"chainId":"bsc","pairAddress":"0xA","priceUsd":"NaN",
                "volume":{"m5":"junk","h1":-5},"txns":{"m5":{"buys":"3","sells":null}}}]),
            0,
            Source::Dexscreener,
        )
        .unwrap();
        assert_eq!(d.skipped.len(), 2);
        assert_eq!(d.skipped[0].index, 0);
        assert_eq!(d.skipped[1].reason.to_string(), "missing `pairAddress`");
        let s = &d.snapshots[0];
        assert_eq!(s.price_usd, None);
        assert_eq!(s.volume_usd.m5, None);
        assert_eq!(s.volume_usd.h1, None);
        assert_eq!(s.txns.m5, None);
    }

    #[test]
    fn shapes() {
        let check = |body: Value, want: Result<usize, &str>| {
            let got = decode_pairs(&body, 0, Source::Dexscreener);
            match (got, want) {
                (Ok(d), Ok(n)) => assert_eq!(d.snapshots.len(), n, "{body}"),
                (Err(e), Err(frag)) => assert!(e.to_string().contains(frag), "{e} / {frag}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        };
        check(json!({"schemaVersion":"1.0.0","pairs":null}), Ok(0));
        check(
            json!({"schemaVersion":"1.0.0","pairs":null,"pair":null}),
            Ok(0),
        );
        check(json!({"pair":{"chainId":"a","pairAddress":"b"}}), Ok(1));
        check(json!([]), Ok(0));
        check(json!({"pairs":"no"}), Err("`pairs` is a string"));
        check(json!("hello"), Err("body is a string"));
        check(json!({"error":"rate limited"}), Err("rate limited"));
        check(json!({"foo":1}), Err("without `pairs`"));
    }

    #[test]
    fn absurd_values_do_not_overflow() {
        let s = one(
            json!({"pairs":[{"chainId":"solana","pairAddress":"p","priceUsd":"0.1",
            "priceChange":{"h24":3.7e42,"h1":1e308},"volume":{"h24":1e300}}]}),
        );
        assert_eq!(s.price_change_pct.h24, Some(3.7e42));
        assert_eq!(s.price_change_pct.h1, Some(1e308));
    }
}
