//! Every recorded upstream payload decodes without panic and with the right values: chosen
//! items field by field against values copied from the fixtures, and every item against the
//! raw JSON by simple independent rules (a key upstream left out is `None`, never 0). Then
//! drift and junk: decoders must survive payloads they have never seen.

use dexpulse::model::{Discovered, PairKey, Snapshot, Source, Txns};
use dexpulse::source::{decode_bytes, DecodeError, Decoded};
use serde_json::{json, Value};

use crate::support::{fixture, fixture_json, tx};

const T: i64 = 1_795_000_000_000;

fn ds(name: &str, request: &str) -> Decoded {
    let d = decode_bytes(Source::Dexscreener, request, &fixture(name), T).unwrap();
    assert!(d.skipped.is_empty(), "{name}: skipped {:?}", d.skipped);
    d
}

fn gt(name: &str, request: &str) -> Decoded {
    let d = decode_bytes(Source::Geckoterminal, request, &fixture(name), T).unwrap();
    assert!(d.skipped.is_empty(), "{name}: skipped {:?}", d.skipped);
    d
}

fn find<'a>(d: &'a Decoded, address: &str) -> &'a Snapshot {
    d.snapshots
        .iter()
        .find(|s| s.key.address == address)
        .unwrap_or_else(|| panic!("no snapshot for {address}"))
}

fn tx4(buys: u64, sells: u64, buyers: u64, sellers: u64) -> Option<Txns> {
    Some(Txns {
        buys,
        sells,
        buyers: Some(buyers),
        sellers: Some(sellers),
    })
}

/// Checks each decoded DexScreener pair against its raw JSON object with rules that do not
/// share code with the decoder.
fn check_against_raw(snaps: &[Snapshot], raw: &[Value]) {
    assert_eq!(snaps.len(), raw.len());
    for (s, r) in snaps.iter().zip(raw) {
        let ctx = &s.key;
        assert_eq!(s.key.chain, r["chainId"].as_str().unwrap(), "{ctx}");
        assert_eq!(s.key.address, r["pairAddress"].as_str().unwrap(), "{ctx}");
        assert_eq!(s.observed_at_ms, T);
        assert_eq!(
            s.price_usd.as_ref().map(|p| p.raw.as_str()),
            r["priceUsd"].as_str(),
            "{ctx}"
        );
        let get = |path: &[&str]| -> Option<f64> {
            let mut v = r;
            for p in path {
                v = v.get(*p)?;
            }
            v.as_f64()
        };
        assert_eq!(s.liquidity_usd, get(&["liquidity", "usd"]), "{ctx}");
        assert_eq!(s.liquidity_base, get(&["liquidity", "base"]), "{ctx}");
        assert_eq!(s.liquidity_quote, get(&["liquidity", "quote"]), "{ctx}");
        assert_eq!(s.fdv_usd, get(&["fdv"]), "{ctx}");
        assert_eq!(s.market_cap_usd, get(&["marketCap"]), "{ctx}");
        for (w, (pc, vol, t)) in ["m5", "h1", "h6", "h24"].iter().zip(
            s.price_change_pct
                .as_array()
                .into_iter()
                .zip(s.volume_usd.as_array())
                .zip(s.txns.as_array())
                .map(|((a, b), c)| (a, b, c)),
        ) {
            assert_eq!(pc, get(&["priceChange", w]), "{ctx} priceChange.{w}");
            assert_eq!(vol, get(&["volume", w]), "{ctx} volume.{w}");
            let raw_t = r.get("txns").and_then(|x| x.get(*w));
            assert_eq!(
                t.map(|t| (t.buys, t.sells)),
                raw_t.map(|x| (x["buys"].as_u64().unwrap(), x["sells"].as_u64().unwrap())),
                "{ctx} txns.{w}"
            );
        }
        assert_eq!(s.pair_created_at_ms, r["pairCreatedAt"].as_i64(), "{ctx}");
        assert_eq!(s.dex_id.as_deref(), r["dexId"].as_str(), "{ctx}");
        let labels: Vec<&str> = r
            .get("labels")
            .and_then(Value::as_array)
            .map(|ls| ls.iter().map(|l| l.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(s.labels, labels, "{ctx}");
        assert_eq!(
            s.base_token.symbol.as_deref(),
            r["baseToken"]["symbol"].as_str()
        );
        assert_eq!(
            s.quote_token.address,
            r["quoteToken"]["address"].as_str().unwrap()
        );
    }
}

#[test]
fn dexscreener_tokens_response_with_30_pairs() {
    let name = "upstream/dexscreener-latest-dex-tokens-solana-usd1-30pairs.json";
    let d = ds(
        name,
        "/latest/dex/tokens/USD1ttGY1N17NEEHLmELoaybftRBUSErhqYiQzvEmuB",
    );
    assert_eq!(d.snapshots.len(), 30);
    check_against_raw(
        &d.snapshots,
        fixture_json(name)["pairs"].as_array().unwrap(),
    );

    let s = find(&d, "BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9");
    assert_eq!(
        s.key,
        PairKey::new("solana", "BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9")
    );
    assert_eq!(s.source, Source::Dexscreener);
    assert_eq!(s.dex_id.as_deref(), Some("raydium"));
    assert_eq!(s.labels, ["CLMM"]);
    assert_eq!(s.base_token.symbol.as_deref(), Some("USD1"));
    assert_eq!(
        s.base_token.address,
        "USD1ttGY1N17NEEHLmELoaybftRBUSErhqYiQzvEmuB"
    );
    assert_eq!(s.quote_token.symbol.as_deref(), Some("USDC"));
    let p = s.price_usd.as_ref().unwrap();
    assert_eq!((p.raw.as_str(), p.value), ("0.9993", 0.9993));
    assert_eq!(s.txns.m5, tx(10, 1));
    assert_eq!(s.txns.h1, tx(169, 12));
    assert_eq!(s.txns.h6, tx(514, 635));
    assert_eq!(s.txns.h24, tx(3646, 3770));
    assert_eq!(s.volume_usd.h24, Some(3212583.0));
    assert_eq!(s.volume_usd.h6, Some(436907.66));
    assert_eq!(s.volume_usd.h1, Some(36720.83));
    assert_eq!(s.volume_usd.m5, Some(5814.59));
    // Only h24 is present: newer data omits zero windows, and an omitted window stays unknown.
    assert_eq!(s.price_change_pct.h24, Some(0.05));
    assert_eq!(s.price_change_pct.m5, None);
    assert_eq!(s.price_change_pct.h1, None);
    assert_eq!(s.liquidity_usd, Some(15064095.04));
    assert_eq!(s.liquidity_base, Some(10624607.0));
    assert_eq!(s.liquidity_quote, Some(4446007.0));
    assert_eq!(s.fdv_usd, Some(157903102.0));
    assert_eq!(s.market_cap_usd, Some(2987043662.0));
    assert_eq!(s.pair_created_at_ms, Some(1756577941000));
}

#[test]
fn dexscreener_legacy_pair_key_is_one_snapshot() {
    let d = ds(
        "upstream/dexscreener-pairs-solana-raydium-2023-legacy-pair-key.json",
        "/latest/dex/pairs/solana/6guiXw4mBNpXrGe9rcQ2mhJh3E8is8JZynd8BoAtAX93",
    );
    assert_eq!(
        d.snapshots.len(),
        1,
        "`pairs` and `pair` repeat the same pair"
    );
    let s = &d.snapshots[0];
    assert_eq!(
        s.key.address,
        "6guiXw4mBNpXrGe9rcQ2mhJh3E8is8JZynd8BoAtAX93"
    );
    assert_eq!(s.price_usd.as_ref().unwrap().raw, "0.0000009108");
    assert_eq!(s.price_change_pct.m5, Some(0.0), "an explicit 0 stays 0");
    assert_eq!(s.price_change_pct.h1, Some(-33.53));
    assert_eq!(s.price_change_pct.h24, Some(-18.54));
    assert_eq!(s.volume_usd.m5, Some(0.0));
    assert_eq!(s.volume_usd.h24, Some(73.23));
    assert_eq!(s.txns.h24, tx(5, 3));
    assert_eq!(s.liquidity_usd, Some(254.49));
    assert_eq!(s.liquidity_base, Some(167956909.0));
    assert_eq!(s.fdv_usd, Some(721.0));
    assert_eq!(s.market_cap_usd, None, "2023 responses had no marketCap");
    assert!(s.labels.is_empty());
    assert_eq!(s.pair_created_at_ms, Some(1701274530000));
}

#[test]
fn dexscreener_search_across_chains_with_missing_liquidity() {
    let name = "upstream/dexscreener-search-usd1-usdc-multichain.json";
    let d = ds(name, "/latest/dex/search?q=USD1/USDC");
    assert_eq!(d.snapshots.len(), 30);
    check_against_raw(
        &d.snapshots,
        fixture_json(name)["pairs"].as_array().unwrap(),
    );
    let chains = |c: &str| d.snapshots.iter().filter(|s| s.key.chain == c).count();
    assert_eq!(
        (
            chains("solana"),
            chains("bsc"),
            chains("ethereum"),
            chains("base")
        ),
        (23, 5, 1, 1)
    );
    assert_eq!(
        d.snapshots
            .iter()
            .filter(|s| s.liquidity_usd.is_none())
            .count(),
        7
    );

    let s = find(&d, "8jrM4GjStxitob5nWquiF4pmYUeeEQFt5FNX3FenQbzG");
    assert_eq!(s.liquidity_usd, None);
    assert_eq!(s.liquidity_base, None);
    assert_eq!(s.price_usd.as_ref().unwrap().raw, "0.000004111");
    assert_eq!(s.fdv_usd, Some(4111.64));
    assert_eq!(s.volume_usd.h6, Some(0.0));
    assert_eq!(s.txns.h24, tx(3, 5));

    let evm = find(&d, "0xB3F27Fe82Bd1e5D7458E02b543CF0C6610fFAD83");
    assert_eq!(evm.key.chain, "bsc");
    assert_eq!(evm.labels, ["v3"]);
    assert_eq!(evm.price_change_pct.m5, None);
    assert_eq!(evm.price_change_pct.h1, Some(0.01));
    assert_eq!(evm.txns.h1, tx(17, 52));
    assert_eq!(evm.liquidity_usd, Some(296319.63));
}

#[test]
fn dexscreener_bare_array_of_token_pairs() {
    let name = "upstream/dexscreener-token-pairs-v1-solana-usd1.json";
    let d = ds(
        name,
        "/token-pairs/v1/solana/USD1ttGY1N17NEEHLmELoaybftRBUSErhqYiQzvEmuB",
    );
    assert_eq!(d.snapshots.len(), 30);
    check_against_raw(&d.snapshots, fixture_json(name).as_array().unwrap());
    let s = find(&d, "4qpDaAUb5oUrFH7EomqoEvvTjQeh9D4svZ48sUk7JVrk");
    assert_eq!(s.price_change_pct.m5, Some(0.02));
    assert_eq!(s.price_change_pct.h6, None);
}

#[test]
fn dexscreener_discovery_feeds_are_token_addresses() {
    let p = ds(
        "upstream/dexscreener-token-profiles-latest-v1.json",
        "/token-profiles/latest/v1",
    );
    assert!(p.snapshots.is_empty());
    assert_eq!(p.discovered.len(), 30);
    assert_eq!(
        p.discovered[0],
        Discovered::Token {
            chain: "base".into(),
            address: "0xaF2E4F3E10B8d06ecEcABBB7F8A7022c6EAb7B07".into()
        }
    );
    let chains: std::collections::BTreeSet<_> = p
        .discovered
        .iter()
        .map(|d| match d {
            Discovered::Token { chain, .. } => chain.as_str(),
            Discovered::Pair(k) => k.chain.as_str(),
        })
        .collect();
    assert_eq!(
        chains.into_iter().collect::<Vec<_>>(),
        ["base", "bsc", "ethereum", "pulsechain", "solana"]
    );

    let b = ds(
        "upstream/dexscreener-token-boosts-latest-v1.json",
        "/token-boosts/latest/v1",
    );
    assert!(b.snapshots.is_empty());
    assert_eq!(
        b.discovered[0],
        Discovered::Token {
            chain: "solana".into(),
            address: "8xEdEh9JaqXyCftRXJNQD4UjTwvBuBbeatXFZSQW55VL".into()
        }
    );
    // Boosts repeat tokens; discovery lists each once.
    let raw = fixture_json("upstream/dexscreener-token-boosts-latest-v1.json");
    let distinct: std::collections::BTreeSet<_> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["tokenAddress"].as_str().unwrap())
        .collect();
    assert_eq!(b.discovered.len(), distinct.len());
}

#[test]
fn geckoterminal_pools_multi() {
    let d = gt(
        "upstream/geckoterminal-pools-multi-monad-testnet-5pools.json",
        "/networks/monad-testnet/pools/multi/a,b,c,d,e",
    );
    assert_eq!(d.snapshots.len(), 5);
    assert!(d.discovered.is_empty(), "pools/multi is not discovery");
    let s = find(&d, "0xc0ce32eee0eb8bf24fa2b00923a78abc5002f91e");
    assert_eq!(s.key.chain, "monad-testnet");
    assert_eq!(s.source, Source::Geckoterminal);
    assert_eq!(s.dex_id.as_deref(), Some("uniswap-v2-monad-testnet"));
    assert_eq!(s.base_token.symbol.as_deref(), Some("CHOG"));
    assert_eq!(
        s.base_token.address,
        "0xe0590015a873bf326bd645c3e1266d4db41c4e6b"
    );
    assert_eq!(s.quote_token.symbol.as_deref(), Some("WMON"));
    assert_eq!(s.price_usd.as_ref().unwrap().raw, "0.163828268957235");
    assert_eq!(s.price_change_pct.m5, Some(0.15));
    assert_eq!(s.price_change_pct.h1, Some(0.63));
    assert_eq!(s.price_change_pct.h6, Some(2.41));
    assert_eq!(s.price_change_pct.h24, Some(1.98));
    assert_eq!(s.volume_usd.m5, Some(739.6638222092));
    assert_eq!(s.volume_usd.h24, Some(230090.703679488));
    assert_eq!(s.txns.m5, tx4(142, 23, 136, 23));
    assert_eq!(s.txns.h1, tx4(3224, 457, 2830, 431));
    assert_eq!(s.txns.h24, tx4(77796, 11782, 65320, 10675));
    assert_eq!(s.liquidity_usd, Some(1922839.6737));
    assert_eq!(
        s.liquidity_base, None,
        "GeckoTerminal gives no pool token amounts"
    );
    assert_eq!(s.fdv_usd, Some(16382826.3675859));
    assert_eq!(s.market_cap_usd, None, "`market_cap_usd: null`");
    assert_eq!(s.pair_created_at_ms, Some(1740050596000));
}

#[test]
fn geckoterminal_new_pools_2024_shape_without_h6_transactions() {
    let d = gt(
        "upstream/geckoterminal-new-pools-all-networks-2024-05.json",
        "/networks/new_pools",
    );
    assert_eq!(d.snapshots.len(), 20);
    assert_eq!(d.discovered.len(), 20, "new pools are discoveries too");
    let s = find(&d, "0xcb23862fe8915036fa34a0b5c2255cd22b5385c7");
    assert_eq!(s.key.chain, "bsc", "from the `network` relationship");
    assert_eq!(s.dex_id.as_deref(), Some("pancakeswap_v2"));
    assert_eq!(
        s.base_token.symbol.as_deref(),
        Some("TCC"),
        "from the pool name"
    );
    assert_eq!(
        s.base_token.address,
        "0x1949cf0a51863c1c125eb3414d28f34b2b795088"
    );
    assert_eq!(s.price_usd.as_ref().unwrap().raw, "0.00000372609042851775");
    assert_eq!(s.price_change_pct.h1, Some(0.0));
    assert_eq!(s.txns.m5, tx4(0, 1, 0, 1));
    assert_eq!(s.txns.h6, None, "2024 transactions had no h6");
    assert_eq!(s.txns.h24, tx4(0, 1, 0, 1));
    assert_eq!(s.volume_usd.h6, Some(0.000244445229930863));
    assert_eq!(s.liquidity_usd, Some(0.0));
    assert_eq!(s.pair_created_at_ms, Some(1715613012000));
    let chains: std::collections::BTreeSet<_> =
        d.snapshots.iter().map(|s| s.key.chain.as_str()).collect();
    assert_eq!(
        chains.into_iter().collect::<Vec<_>>(),
        ["base", "bsc", "ethereum", "polygon", "solana"],
        "GeckoTerminal network ids map to DexScreener chain ids"
    );
    // Solana addresses keep their case.
    assert!(d
        .snapshots
        .iter()
        .any(|s| s.key.address == "FrtovtNjYT3ENbLkw6gWmEMUPNNMWMh8cjeuGfAGyPQG"));
}

#[test]
fn geckoterminal_old_top_pools_with_included_tokens() {
    let d = gt(
        "upstream/geckoterminal-top-pools-eth-2023-07-included-tokens.json",
        "/networks/eth/pools?include=base_token,quote_token",
    );
    assert_eq!(d.snapshots.len(), 20);
    let s = find(&d, "0x5f97e72e16d9a6ffec6c70589c61ee224494ccda");
    assert_eq!(s.key.chain, "ethereum");
    assert_eq!(
        s.base_token.symbol.as_deref(),
        Some("xAi"),
        "from `included`"
    );
    assert_eq!(
        s.base_token.address,
        "0x616dc2536ea9c5cf44001bc6356e67fbefe0a029"
    );
    assert_eq!(s.price_change_pct.m5, None);
    assert_eq!(s.price_change_pct.h1, Some(8.35));
    assert_eq!(s.price_change_pct.h24, Some(-26.78));
    assert_eq!(s.volume_usd.h1, None);
    assert_eq!(s.volume_usd.h24, Some(5920012.566978924));
    assert_eq!(s.txns.h1, tx(60, 53));
    assert_eq!(s.liquidity_usd, Some(94447.963914053));
    assert_eq!(s.pair_created_at_ms, Some(1689175895000));
    assert_eq!(
        d.snapshots
            .iter()
            .filter(|s| s.pair_created_at_ms.is_none())
            .count(),
        4,
        "four pools have `pool_created_at: null`"
    );
}

#[test]
fn geckoterminal_ohlcv_is_candles() {
    let d = gt(
        "upstream/geckoterminal-ohlcv-eth-2023-07.json",
        "/networks/eth/pools/0x/ohlcv/minute?aggregate=15",
    );
    assert!(d.snapshots.is_empty());
    assert_eq!(d.candles.len(), 100);
    let c = d.candles[0];
    assert_eq!(c.t_s, 1689280200);
    assert_eq!(c.open, 1.00176903067631);
    assert_eq!(c.close, 1.00090364948961);
    assert_eq!(c.volume_usd, 55810.14196810057);
    // Newest first, 15-minute bars; the recorded data skips two bars and repeats one.
    let gaps: Vec<i64> = d.candles.windows(2).map(|w| w[0].t_s - w[1].t_s).collect();
    assert_eq!(gaps.iter().filter(|g| **g == 900).count(), 96);
    assert!(gaps.iter().all(|g| *g >= 0 && g % 900 == 0));
}

/// Drift the real APIs have shown or may show: each case decodes to an error value or a
/// result, never a panic, and never invents a 0.
#[test]
fn drift_and_junk_never_panic() {
    let pair = json!({"chainId":"solana","pairAddress":"AbCdE","priceUsd":"1.5",
        "priceChange":{"m5":"NaN","h1":null,"h24":3.7e42},"volume":{"m5":"12.5","h1":"junk","h6":-3},
        "txns":{"m5":{"buys":"4","sells":2.0},"h1":{"buys":-1,"sells":3}},
        "liquidity":{"usd":"NaN","base":null},"fdv":{"nested":1},"pairCreatedAt":"1700000000000"});
    let d = decode_bytes(
        Source::Dexscreener,
        "/latest/dex/pairs/solana/AbCdE",
        json!({"pairs":[pair, null, "x", {"pairAddress":"noChain"}]})
            .to_string()
            .as_bytes(),
        T,
    )
    .unwrap();
    assert_eq!(d.snapshots.len(), 1);
    assert_eq!(d.skipped.len(), 3);
    let s = &d.snapshots[0];
    assert_eq!(s.key.address, "AbCdE", "case preserved");
    assert_eq!(s.price_change_pct.m5, None);
    assert_eq!(s.price_change_pct.h1, None);
    assert_eq!(s.price_change_pct.h24, Some(3.7e42));
    assert_eq!(s.volume_usd.m5, Some(12.5));
    assert_eq!(s.volume_usd.h1, None);
    assert_eq!(s.volume_usd.h6, None, "a negative volume is junk, not data");
    assert_eq!(s.txns.m5, tx(4, 2));
    assert_eq!(s.txns.h1, None);
    assert_eq!(s.liquidity_usd, None);
    assert_eq!(s.fdv_usd, None);
    assert_eq!(s.pair_created_at_ms, Some(1_700_000_000_000));

    let errors: [(&[u8], Source, &str); 8] = [
        (
            b"<html><body>502 Bad Gateway</body></html>",
            Source::Dexscreener,
            "not JSON",
        ),
        (
            b"{\"pairs\":[{\"chainId\":\"solana\"",
            Source::Dexscreener,
            "not JSON",
        ),
        (b"", Source::Geckoterminal, "not JSON"),
        (b"42", Source::Dexscreener, "body is a number"),
        (
            b"{\"pairs\":{}}",
            Source::Dexscreener,
            "`pairs` is an object",
        ),
        (
            b"{\"errors\":[{\"status\":\"429\",\"title\":\"Rate limit exceeded\"}]}",
            Source::Geckoterminal,
            "429",
        ),
        (b"{\"data\":[{\"id\":1}]}", Source::Geckoterminal, "SKIP"),
        (b"[{\"chainId\":5}]", Source::Dexscreener, "SKIP"),
    ];
    for (body, source, want) in errors {
        match decode_bytes(source, "/networks/eth/pools", body, T) {
            Err(e) => assert!(e.to_string().contains(want), "{e} / {want}"),
            Ok(d) => {
                assert_eq!(want, "SKIP", "{:?} decoded", String::from_utf8_lossy(body));
                assert!(d.snapshots.is_empty());
                assert_eq!(d.skipped.len(), 1);
            }
        }
    }
    assert!(matches!(
        decode_bytes(Source::Bench, "/x", b"{}", T),
        Err(DecodeError::UnknownRequest { .. })
    ));
}
