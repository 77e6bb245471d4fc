//! GeckoTerminal (JSON:API) responses into snapshots, discoveries and candles (pure). Shapes:
//! one pool (`data` an object), many pools (`pools/multi`, `pools`, `new_pools`,
//! `trending_pools`), `included` tokens, and OHLCV lists.
//!
//! Upstream facts this relies on: nearly every number is a decimal string and may be `null` or
//! `"NaN"`; older data has fewer windows (no m5/h6, `transactions` without h6 in 2024);
//! `pool_created_at` may be null; `pools/multi` silently drops unknown addresses, so callers
//! match results by `attributes.address`, never by position. Network ids are mapped to
//! DexScreener chain ids (`eth` is `ethereum`) so that a pair has one key whichever source
//! polled it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::dexscreener::txns_of;
use super::{
    bounds, int_ms, non_neg, num, text, type_name, Candle, DecodeError, Decoded, Skip, Skipped,
};
use crate::model::{
    parse_rfc3339_ms, Discovered, PairKey, Price, Snapshot, Source, Token, Windows,
};

/// GeckoTerminal network id to DexScreener chain id, where they differ.
const NETWORK_TO_CHAIN: [(&str, &str); 6] = [
    ("eth", "ethereum"),
    ("polygon_pos", "polygon"),
    ("avax", "avalanche"),
    ("ftm", "fantom"),
    ("arbitrum_nova", "arbitrumnova"),
    ("cro", "cronos"),
];

pub fn chain_of_network(network: &str) -> &str {
    NETWORK_TO_CHAIN
        .iter()
        .find(|(n, _)| *n == network)
        .map_or(network, |(_, c)| c)
}

pub fn network_of_chain(chain: &str) -> &str {
    NETWORK_TO_CHAIN
        .iter()
        .find(|(_, c)| *c == chain)
        .map_or(chain, |(n, _)| n)
}

/// The `{net}` of `/networks/{net}/...`, if the request names one.
fn network_in_request(request: &str) -> Option<&str> {
    let rest = request.split('?').next()?.strip_prefix("/networks/")?;
    let net = rest.split('/').next()?;
    // `/networks/new_pools` and `/networks/trending_pools` span all networks.
    (!net.is_empty() && net != "new_pools" && net != "trending_pools").then_some(net)
}

pub fn decode(request: &str, body: &Value, observed_at_ms: i64) -> Result<Decoded, DecodeError> {
    let obj = body.as_object().ok_or_else(|| {
        DecodeError::Shape(format!("body is {}, expected an object", type_name(body)))
    })?;
    if let Some(errors) = obj.get("errors") {
        let msg = errors
            .as_array()
            .and_then(|es| es.first())
            .map(|e| {
                let status = text(e.get("status")).unwrap_or("?");
                let title = text(e.get("title")).unwrap_or("error");
                format!("{status} {title}")
            })
            .unwrap_or_else(|| "errors".to_string());
        return Err(DecodeError::Upstream(bounds::message(&msg)));
    }
    let data = obj
        .get("data")
        .ok_or_else(|| DecodeError::Shape("no `data`".to_string()))?;
    if let Some(list) = data.get("attributes").and_then(|a| a.get("ohlcv_list")) {
        return decode_ohlcv(list);
    }
    let tokens = included_tokens(obj.get("included"));
    let net_hint = network_in_request(request);
    let discovery = request.contains("new_pools") || request.contains("trending_pools");
    let items: Vec<&Value> = match data {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![data],
        Value::Null => Vec::new(),
        other => {
            return Err(DecodeError::Shape(format!(
                "`data` is {}, expected an array or an object",
                type_name(other)
            )))
        }
    };
    let mut out = Decoded::default();
    let mut seen = HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        match pool(item, net_hint, &tokens, observed_at_ms)
            .and_then(|s| bounds::snapshot(s).map_err(Skip::from))
        {
            Ok(snap) => {
                if !seen.insert(snap.key.clone()) {
                    continue;
                }
                if discovery {
                    out.discovered.push(Discovered::Pair(snap.key.clone()));
                }
                out.snapshots.push(snap);
            }
            Err(reason) => out.skipped.push(Skipped { index, reason }),
        }
    }
    Ok(out)
}

/// `included` token id to (address, symbol).
fn included_tokens(v: Option<&Value>) -> HashMap<&str, (&str, Option<&str>)> {
    let mut out = HashMap::new();
    for t in v.and_then(Value::as_array).into_iter().flatten() {
        if t.get("type").and_then(Value::as_str) != Some("token") {
            continue;
        }
        if let (Some(id), Some(addr)) = (
            text(t.get("id")),
            text(t.get("attributes").and_then(|a| a.get("address"))),
        ) {
            let symbol = text(t.get("attributes").and_then(|a| a.get("symbol")));
            out.insert(id, (addr, symbol));
        }
    }
    out
}

fn rel_id<'a>(item: &'a Value, name: &str) -> Option<&'a str> {
    text(
        item.get("relationships")
            .and_then(|r| r.get(name))
            .and_then(|r| r.get("data"))
            .and_then(|d| d.get("id")),
    )
}

fn pool(
    item: &Value,
    net_hint: Option<&str>,
    tokens: &HashMap<&str, (&str, Option<&str>)>,
    observed_at_ms: i64,
) -> Result<Snapshot, Skip> {
    if !item.is_object() {
        return Err(Skip::NotAnObject {
            what: "pool",
            found: type_name(item),
        });
    }
    let attrs = item
        .get("attributes")
        .filter(|a| a.is_object())
        .ok_or(Skip::Missing("attributes"))?;
    let address = text(attrs.get("address")).ok_or(Skip::Missing("attributes.address"))?;
    let id = text(item.get("id")).unwrap_or_default();
    // The network: the relationship if present, else the request path, else the id's prefix.
    let network = rel_id(item, "network")
        .or(net_hint)
        .or_else(|| {
            id.strip_suffix(address)
                .and_then(|p| p.strip_suffix('_'))
                .filter(|p| !p.is_empty())
        })
        .ok_or(Skip::NoNetwork)?;
    let chain = chain_of_network(network);

    let name = text(attrs.get("name")).unwrap_or_default();
    let mut name_parts = name.splitn(2, " / ");
    let (base_name, quote_name) = (name_parts.next(), name_parts.next());
    let token_of = |rel: &str, fallback_symbol: Option<&str>| -> Token {
        let tid = rel_id(item, rel);
        match tid.and_then(|t| tokens.get(t)) {
            Some((addr, sym)) => Token {
                address: (*addr).to_string(),
                symbol: sym.or(fallback_symbol).map(str::to_string),
            },
            None => Token {
                address: tid
                    .map(|t| {
                        t.strip_prefix(network)
                            .and_then(|r| r.strip_prefix('_'))
                            .unwrap_or(t)
                    })
                    .unwrap_or_default()
                    .to_string(),
                symbol: fallback_symbol
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            },
        }
    };

    let pc = attrs.get("price_change_percentage");
    let vol = attrs.get("volume_usd");
    let tx = attrs.get("transactions");
    let w = |v: Option<&Value>, k: &str, read: fn(Option<&Value>) -> Option<f64>| {
        read(v.and_then(|x| x.get(k)))
    };
    Ok(Snapshot {
        key: PairKey::new(chain, address),
        source: Source::Geckoterminal,
        observed_at_ms,
        source_ts_ms: None,
        dex_id: rel_id(item, "dex").map(str::to_string),
        labels: Vec::new(),
        base_token: token_of("base_token", base_name),
        quote_token: token_of("quote_token", quote_name),
        price_usd: text(attrs.get("base_token_price_usd")).and_then(Price::parse),
        price_change_pct: Windows {
            m5: w(pc, "m5", num),
            h1: w(pc, "h1", num),
            h6: w(pc, "h6", num),
            h24: w(pc, "h24", num),
        },
        volume_usd: Windows {
            m5: w(vol, "m5", non_neg),
            h1: w(vol, "h1", non_neg),
            h6: w(vol, "h6", non_neg),
            h24: w(vol, "h24", non_neg),
        },
        txns: Windows {
            m5: txns_of(tx.and_then(|t| t.get("m5"))),
            h1: txns_of(tx.and_then(|t| t.get("h1"))),
            h6: txns_of(tx.and_then(|t| t.get("h6"))),
            h24: txns_of(tx.and_then(|t| t.get("h24"))),
        },
        liquidity_usd: non_neg(attrs.get("reserve_in_usd")),
        liquidity_base: None,
        liquidity_quote: None,
        fdv_usd: non_neg(attrs.get("fdv_usd")),
        market_cap_usd: non_neg(attrs.get("market_cap_usd")),
        pair_created_at_ms: text(attrs.get("pool_created_at"))
            .and_then(parse_rfc3339_ms)
            .or_else(|| int_ms(attrs.get("pool_created_at_ms"))),
        lp_burned: None,
        quote_usd: num(attrs.get("quote_token_price_usd")).filter(|x| *x > 0.0),
    })
}

fn decode_ohlcv(list: &Value) -> Result<Decoded, DecodeError> {
    let rows = list.as_array().ok_or_else(|| {
        DecodeError::Shape(format!(
            "`ohlcv_list` is {}, expected an array",
            type_name(list)
        ))
    })?;
    let mut out = Decoded::default();
    for (index, row) in rows.iter().enumerate() {
        let r = row
            .as_array()
            .map(|r| r.iter().map(Some).collect::<Vec<_>>());
        let bar = r.filter(|r| r.len() >= 6).and_then(|r| {
            Some(Candle {
                t_s: int_ms(r[0])?,
                open: num(r[1])?,
                high: num(r[2])?,
                low: num(r[3])?,
                close: num(r[4])?,
                volume_usd: non_neg(r[5])?,
            })
        });
        match bar {
            Some(c) => out.candles.push(c),
            None => out.skipped.push(Skipped {
                index,
                reason: Skip::BadOhlcvRow,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nan_null_and_missing_windows() {
        let body = json!({"data":{"id":"eth_0xabc","type":"pool","attributes":{
            "address":"0xabc","name":"A / B","base_token_price_usd":"NaN",
            "price_change_percentage":{"h1":"NaN","h24":null},"volume_usd":{"h24":"12.5"},
            "transactions":{"h1":{"buys":3,"sells":4}},"reserve_in_usd":"1000",
            "pool_created_at":null,"fdv_usd":"NaN","market_cap_usd":null}}});
        let d = decode("/networks/eth/pools/0xabc", &body, 5).unwrap();
        let s = &d.snapshots[0];
        assert_eq!(s.key, PairKey::new("ethereum", "0xabc"));
        assert_eq!(s.price_usd, None);
        assert_eq!(s.price_change_pct.h1, None);
        assert_eq!(s.price_change_pct.h24, None);
        assert_eq!(s.volume_usd.h24, Some(12.5));
        assert_eq!(s.volume_usd.m5, None);
        assert_eq!(s.txns.h1.map(|t| t.total()), Some(7));
        assert_eq!(s.pair_created_at_ms, None);
        assert_eq!(s.fdv_usd, None);
        assert_eq!(s.base_token.symbol.as_deref(), Some("A"));
        assert_eq!(s.quote_usd, None);
    }

    #[test]
    fn the_quote_price_is_read_when_positive() {
        let pool = |q: Value| {
            let body = json!({"data":{"id":"eth_0xabc","type":"pool","attributes":{
                "address":"0xabc","name":"A / WETH","base_token_price_usd":"2.5",
                "quote_token_price_usd": q}}});
            decode("/networks/eth/pools/0xabc", &body, 5)
                .unwrap()
                .snapshots[0]
                .quote_usd
        };
        assert_eq!(pool(json!("1843.25")), Some(1843.25));
        assert_eq!(pool(json!("0")), None);
        assert_eq!(pool(json!("-3")), None);
        assert_eq!(pool(json!("junk")), None);
    }

    #[test]
    fn errors_and_shapes() {
        let check = |body: Value, frag: &str| {
            let e = decode("/networks/eth/pools", &body, 0).unwrap_err();
            assert!(e.to_string().contains(frag), "{e} / {frag}");
        };
        check(
            json!({"errors":[{"status":"429","title":"Rate limit exceeded"}]}),
            "429 Rate limit exceeded",
        );
        check(json!([1]), "expected an object");
        check(json!({"meta":{}}), "no `data`");
        check(json!({"data":"x"}), "`data` is a string");
        let d = decode("/networks/eth/pools/multi/a,b", &json!({"data":[]}), 0).unwrap();
        assert!(d.snapshots.is_empty());
    }

    #[test]
    fn network_mapping() {
        assert_eq!(chain_of_network("eth"), "ethereum");
        assert_eq!(chain_of_network("solana"), "solana");
        assert_eq!(network_of_chain("polygon"), "polygon_pos");
        assert_eq!(
            network_in_request("/networks/solana/pools/multi/a"),
            Some("solana")
        );
        assert_eq!(network_in_request("/networks/new_pools"), None);
    }
}
