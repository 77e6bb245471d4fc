//! One-minute bars of real pools, recorded by others, into a tape (`dexpulse import`,
//! docs/evaluation.md "Real markets"). Owns the manifest that says what each file is (chain,
//! pool, tokens, which token is the base, where the quote's USD price comes from), the bar
//! CSV format of docs/sources.md ("Bars"), and the rolling windows an aggregator would have
//! shown at the end of each minute, written as DexScreener-shaped responses with
//! `"source":"bars"` so that every offline tool reads them as it reads any tape.
//!
//! Pure: texts in, tape lines out; whoever calls it reads the files. What bars do not carry is
//! never made up: a window is present only when every minute of it is on file, trade counts are
//! estimated from the minutes with flow (one trade a minute, on the side the minute's net flow
//! took, a lower bound of the real count), and a pool's liquidity is the depth its active
//! liquidity gives at the close (a constant-product pool's liquidity of the same depth).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::tape::{LineError, TapeWriter};
use crate::model::Source;
use crate::settings::FieldError;

const MIN_MS: i64 = 60_000;
/// The windows' lengths in minutes: m5, h1, h6, h24.
const WINDOWS: [usize; 4] = [5, 60, 360, 1440];
/// How stale another pool's price may be to value this pool's quote token.
const QUOTE_PRICE_MAX_AGE_MIN: i64 = 5;

/// The manifest as written (TOML): one `[[pool]]` per pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    #[serde(default)]
    pub pool: Vec<RawPool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub chain: String,
    pub address: String,
    #[serde(default = "default_dex")]
    pub dex_id: String,
    /// Pool labels as an aggregator shows them (`v3` marks concentrated liquidity).
    #[serde(default)]
    pub labels: Vec<String>,
    /// When the pool was created (RFC 3339): the pair's age.
    pub created_at: String,
    pub token0: RawToken,
    pub token1: RawToken,
    /// `token0` or `token1`: the token whose price the pair shows.
    pub base: String,
    /// The other token's USD price.
    pub quote_usd: RawQuoteUsd,
    /// Bar files, relative to the manifest.
    pub files: Vec<String>,
}

fn default_dex() -> String {
    "uniswap".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub address: String,
    pub symbol: String,
    pub decimals: u8,
}

/// A fixed price (a USD stablecoin: 1), or the base token's USD price in another pool of the
/// manifest, `chain:address`, at the same minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuoteUsd {
    pub fixed: Option<f64>,
    pub pool: Option<String>,
}

/// A pool of the manifest, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub chain: String,
    pub address: String,
    pub dex_id: String,
    pub labels: Vec<String>,
    pub created_ms: i64,
    pub tokens: [RawToken; 2],
    /// 0 or 1: which token is the base.
    pub base: usize,
    pub quote_usd: QuoteUsd,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QuoteUsd {
    Fixed(f64),
    /// The index of the pool (in the manifest) whose base token's price values this quote.
    Pool(usize),
}

impl PoolSpec {
    fn key(&self) -> String {
        format!("{}:{}", self.chain, self.address)
    }
}

/// Checks a manifest; errors name the field (`pool[1].quote_usd.pool`).
pub fn parse_manifest(raw: &RawManifest) -> Result<Vec<PoolSpec>, FieldError> {
    if raw.pool.is_empty() {
        return Err(FieldError::new("pool", "must list at least one pool", "[]"));
    }
    let mut out = Vec::new();
    for (i, p) in raw.pool.iter().enumerate() {
        let field = |name: &str| format!("pool[{i}].{name}");
        let ident = |name: &str, v: &str| -> Result<String, FieldError> {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Ok(v.to_string())
            } else {
                Err(FieldError::new(
                    &field(name),
                    "must be 1 to 64 letters, digits, `_` or `-`",
                    format!("{v:?}"),
                ))
            }
        };
        let chain = ident("chain", &p.chain)?;
        let address = ident("address", &p.address)?.to_ascii_lowercase();
        let dex_id = ident("dex_id", &p.dex_id)?;
        for (j, l) in p.labels.iter().enumerate() {
            ident(&format!("labels[{j}]"), l)?;
        }
        let created_ms = chrono::DateTime::parse_from_rfc3339(&p.created_at)
            .map(|d| d.timestamp_millis())
            .map_err(|e| {
                FieldError::new(
                    &field("created_at"),
                    format!("is not an RFC 3339 time ({e})"),
                    &p.created_at,
                )
            })?;
        for (name, t) in [("token0", &p.token0), ("token1", &p.token1)] {
            ident(&format!("{name}.address"), &t.address)?;
            ident(&format!("{name}.symbol"), &t.symbol)?;
            if t.decimals > 36 {
                return Err(FieldError::new(
                    &field(&format!("{name}.decimals")),
                    "must be at most 36",
                    t.decimals,
                ));
            }
        }
        let base = match p.base.as_str() {
            "token0" => 0,
            "token1" => 1,
            other => {
                return Err(FieldError::new(
                    &field("base"),
                    "must be `token0` or `token1`",
                    format!("{other:?}"),
                ))
            }
        };
        let quote_usd = match (&p.quote_usd.fixed, &p.quote_usd.pool) {
            (Some(x), None) if x.is_finite() && *x > 0.0 => QuoteUsd::Fixed(*x),
            (None, Some(key)) => {
                let j = raw
                    .pool
                    .iter()
                    .position(|q| {
                        format!("{}:{}", q.chain, q.address.to_ascii_lowercase())
                            == key.to_ascii_lowercase()
                    })
                    .filter(|j| *j != i)
                    .ok_or_else(|| {
                        FieldError::new(
                            &field("quote_usd.pool"),
                            "must name another pool of the manifest as `chain:address`",
                            key,
                        )
                    })?;
                QuoteUsd::Pool(j)
            }
            _ => {
                return Err(FieldError::new(
                    &field("quote_usd"),
                    "needs exactly one of `fixed` (a positive price) or `pool`",
                    format!("{:?}", p.quote_usd),
                ))
            }
        };
        if p.files.is_empty() {
            return Err(FieldError::new(
                &field("files"),
                "must list at least one bar file",
                "[]",
            ));
        }
        out.push(PoolSpec {
            chain,
            address,
            dex_id,
            labels: p.labels.clone(),
            created_ms,
            tokens: [p.token0.clone(), p.token1.clone()],
            base,
            quote_usd,
            files: p.files.clone(),
        });
    }
    // A pool valued by a pool valued by it would have no price at all.
    for (i, p) in out.iter().enumerate() {
        if let QuoteUsd::Pool(j) = p.quote_usd {
            if matches!(out[j].quote_usd, QuoteUsd::Pool(_)) {
                return Err(FieldError::new(
                    &format!("pool[{i}].quote_usd.pool"),
                    "must name a pool whose own quote has a fixed price",
                    out[j].key(),
                ));
            }
        }
    }
    Ok(out)
}

/// One minute of one pool, as the file gives it (amounts in the tokens' raw units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// The minute's start, Unix ms.
    pub t_ms: i64,
    pub net: [f64; 2],
    pub close_tick: f64,
    /// Gross amounts paid into the pool by the minute's swaps.
    pub paid_in: [f64; 2],
    /// The active liquidity `L` at the minute's end.
    pub liquidity: f64,
}

const COLUMNS: [&str; 10] = [
    "timestamp",
    "netAmount0",
    "netAmount1",
    "closeTick",
    "openTick",
    "lowestTick",
    "highestTick",
    "inAmount0",
    "inAmount1",
    "currentLiquidity",
];

/// Reads a bar file. A line that cannot be used is reported by its number and skipped; a
/// header other than the expected one makes the whole file unusable.
pub fn parse_bars(text: &str) -> (Vec<Bar>, Vec<LineError>) {
    let mut bars = Vec::new();
    let mut errors = Vec::new();
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim().split(',').eq(COLUMNS) => {}
        Some((_, header)) => {
            errors.push(LineError {
                line: 1,
                message: format!(
                    "expected the header {}, found {:?}",
                    COLUMNS.join(","),
                    header.chars().take(200).collect::<String>()
                ),
            });
            return (bars, errors);
        }
        None => return (bars, errors),
    }
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        match parse_bar(line) {
            Ok(b) => bars.push(b),
            Err(e) => errors.push(LineError {
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    bars.sort_by_key(|b| b.t_ms);
    bars.dedup_by_key(|b| b.t_ms);
    (bars, errors)
}

/// Why a line of a bar file was skipped; the text is the line's `LineError` message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum BadBar {
    #[error("{0} cells, expected {n}", n = COLUMNS.len())]
    Cells(usize),
    #[error("timestamp {0:?}: {1}")]
    Timestamp(String, chrono::ParseError),
    #[error("{0} {1:?} is not a number")]
    NotANumber(&'static str, String),
    #[error("{0} is not finite")]
    NotFinite(&'static str),
    #[error("negative amounts paid in or liquidity")]
    Negative,
    #[error("closeTick {0} is out of range")]
    Tick(f64),
}

fn parse_bar(line: &str) -> Result<Bar, BadBar> {
    let cells: Vec<&str> = line.trim().split(',').collect();
    if cells.len() != COLUMNS.len() {
        return Err(BadBar::Cells(cells.len()));
    }
    let t = chrono::NaiveDateTime::parse_from_str(cells[0], "%Y-%m-%d %H:%M:%S")
        .map_err(|e| BadBar::Timestamp(cells[0].to_string(), e))?
        .and_utc()
        .timestamp_millis();
    let num = |k: usize| -> Result<f64, BadBar> {
        let x: f64 = cells[k]
            .parse()
            .map_err(|_| BadBar::NotANumber(COLUMNS[k], cells[k].to_string()))?;
        if x.is_finite() {
            Ok(x)
        } else {
            Err(BadBar::NotFinite(COLUMNS[k]))
        }
    };
    let bar = Bar {
        t_ms: t,
        net: [num(1)?, num(2)?],
        close_tick: num(3)?,
        paid_in: [num(7)?, num(8)?],
        liquidity: num(9)?,
    };
    if bar.paid_in.iter().any(|x| *x < 0.0) || bar.liquidity < 0.0 {
        return Err(BadBar::Negative);
    }
    // Uniswap's ticks lie within ±887272.
    if bar.close_tick.abs() > 887_272.0 {
        return Err(BadBar::Tick(bar.close_tick));
    }
    Ok(bar)
}

/// What one minute of a pool shows, in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Minute {
    price: f64,
    /// The base token's price in the quote token.
    native: f64,
    volume: f64,
    buys: u64,
    sells: u64,
    liquidity: f64,
}

/// A pool's minutes by their start (ms), with the USD values the bars and the quote's price
/// give.
struct Priced {
    minutes: BTreeMap<i64, Minute>,
    /// Minutes left out because the quote had no USD price then.
    unpriced: usize,
}

fn price_pool(spec: &PoolSpec, bars: &[Bar], quote_usd: &dyn Fn(i64) -> Option<f64>) -> Priced {
    let d = [
        f64::from(spec.tokens[0].decimals),
        f64::from(spec.tokens[1].decimals),
    ];
    let (b, q) = (spec.base, 1 - spec.base);
    let mut minutes = BTreeMap::new();
    let mut unpriced = 0;
    for bar in bars {
        let Some(quote) = quote_usd(bar.t_ms) else {
            unpriced += 1;
            continue;
        };
        // 1.0001^tick is token1 per token0 in raw units.
        let raw = 1.0001f64.powf(bar.close_tick);
        let token0_in_token1 = raw * 10f64.powf(d[0] - d[1]);
        let base_in_quote = if b == 0 {
            token0_in_token1
        } else {
            1.0 / token0_in_token1
        };
        let usd = {
            let mut u = [0.0; 2];
            u[q] = quote;
            u[b] = base_in_quote * quote;
            u
        };
        let human = |k: usize, raw: f64| raw / 10f64.powf(d[k]);
        let volume = human(q, bar.paid_in[q]) * usd[q] + human(b, bar.paid_in[b]) * usd[b];
        // One trade a minute with flow, on the side its net flow took: quote into the pool is
        // buying the base.
        let flow = bar.paid_in[0] > 0.0 || bar.paid_in[1] > 0.0;
        let (buys, sells) = match bar.net[q].partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) if flow => (1, 0),
            Some(std::cmp::Ordering::Less) if flow => (0, 1),
            _ => (0, 0),
        };
        // The virtual reserves of the active liquidity: x = L/sqrt(P), y = L·sqrt(P).
        let sqrt_p = raw.sqrt();
        let liquidity =
            human(0, bar.liquidity / sqrt_p) * usd[0] + human(1, bar.liquidity * sqrt_p) * usd[1];
        let m = Minute {
            price: usd[b],
            native: base_in_quote,
            volume,
            buys,
            sells,
            liquidity,
        };
        if m.price.is_finite() && m.price > 0.0 && m.volume.is_finite() && m.liquidity.is_finite() {
            minutes.insert(bar.t_ms, m);
        } else {
            unpriced += 1;
        }
    }
    Priced { minutes, unpriced }
}

/// What an import wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportStats {
    pub pools: usize,
    pub snapshots: u64,
    pub ticks: u64,
    /// Minutes left out because the quote had no USD price then.
    pub unpriced_minutes: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Writes the tape of `pools` (each with its bars, in manifest order): at the end of every
/// minute, one response per pool that has that minute on file, then a tick.
pub fn write_tape<W: Write>(
    pools: &[(PoolSpec, Vec<Bar>)],
    out: &mut TapeWriter<W>,
) -> io::Result<ImportStats> {
    let mut stats = ImportStats {
        pools: pools.len(),
        ..ImportStats::default()
    };
    // Pools with a fixed quote price first: the others are valued by them.
    let mut priced: Vec<Option<Priced>> = (0..pools.len()).map(|_| None).collect();
    for (i, (spec, bars)) in pools.iter().enumerate() {
        if let QuoteUsd::Fixed(x) = spec.quote_usd {
            priced[i] = Some(price_pool(spec, bars, &|_| Some(x)));
        }
    }
    for (i, (spec, bars)) in pools.iter().enumerate() {
        if let QuoteUsd::Pool(j) = spec.quote_usd {
            let other = priced.get(j).and_then(Option::as_ref);
            let lookup = |t: i64| {
                let (at, m) = other?.minutes.range(..=t).next_back()?;
                (t - at <= QUOTE_PRICE_MAX_AGE_MIN * MIN_MS).then_some(m.price)
            };
            priced[i] = Some(price_pool(spec, bars, &lookup));
        }
    }
    let priced: Vec<Priced> = priced
        .into_iter()
        .map(|p| {
            p.unwrap_or(Priced {
                minutes: BTreeMap::new(),
                unpriced: 0,
            })
        })
        .collect();
    stats.unpriced_minutes = priced.iter().map(|p| p.unpriced as u64).sum();
    let first = priced
        .iter()
        .filter_map(|p| p.minutes.keys().next().copied())
        .min();
    let last = priced
        .iter()
        .filter_map(|p| p.minutes.keys().next_back().copied())
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(stats);
    };
    let mut t = first;
    while t <= last {
        // The minute starting at `t` is known at its end.
        let at = t + MIN_MS;
        for (i, (spec, _)) in pools.iter().enumerate() {
            if let Some(body) = pair_body(spec, &priced[i].minutes, t) {
                let request = format!("/latest/dex/pairs/{}/{}", spec.chain, spec.address);
                out.write_response(at, Source::Bars, &request, 200, body.as_bytes())?;
                stats.snapshots += 1;
            }
        }
        out.write_tick(at)?;
        stats.ticks += 1;
        t += MIN_MS;
    }
    stats.first_ms = Some(first + MIN_MS);
    stats.last_ms = Some(last + MIN_MS);
    Ok(stats)
}

/// The pair as an aggregator would show it at the end of minute `t`, or `None` when that
/// minute is not on file.
fn pair_body(spec: &PoolSpec, minutes: &BTreeMap<i64, Minute>, t: i64) -> Option<String> {
    let now = minutes.get(&t)?;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    // A window: every minute of it on file, and the close before it for the price change.
    let window = |len: usize| -> Option<(f64, u64, u64, f64)> {
        let from = t - (len as i64 - 1) * MIN_MS;
        let before = minutes.get(&(from - MIN_MS))?;
        let mut n = 0;
        let (mut v, mut b, mut s) = (0.0, 0, 0);
        for (_, m) in minutes.range(from..=t) {
            n += 1;
            v += m.volume;
            b += m.buys;
            s += m.sells;
        }
        (n == len).then(|| (v, b, s, (now.price / before.price - 1.0) * 100.0))
    };
    let w = WINDOWS.map(window);
    let (base, quote) = (&spec.tokens[spec.base], &spec.tokens[1 - spec.base]);
    let mut txns = serde_json::Map::new();
    let mut volume = serde_json::Map::new();
    let mut change = serde_json::Map::new();
    for (name, x) in ["m5", "h1", "h6", "h24"].iter().zip(w) {
        if let Some((v, b, s, pc)) = x {
            txns.insert((*name).into(), json!({"buys": b, "sells": s}));
            volume.insert((*name).into(), json!(r2(v)));
            change.insert((*name).into(), json!(r2(pc)));
        }
    }
    let price = format_price(now.price);
    let body = json!({
        "schemaVersion": "1.0.0",
        "pairs": [{
            "chainId": spec.chain,
            "dexId": spec.dex_id,
            "pairAddress": spec.address,
            "labels": spec.labels,
            "baseToken": {"address": base.address, "name": base.symbol, "symbol": base.symbol},
            "quoteToken": {"address": quote.address, "name": quote.symbol, "symbol": quote.symbol},
            "priceUsd": price,
            "priceNative": format_price(now.native),
            "txns": txns,
            "volume": volume,
            "priceChange": change,
            "liquidity": {"usd": r2(now.liquidity)},
            "pairCreatedAt": spec.created_ms,
        }]
    });
    Some(body.to_string())
}

/// Eight significant digits, as an aggregator's price string.
fn format_price(p: f64) -> String {
    let digits = (7 - p.abs().log10().floor() as i32).clamp(0, 30) as usize;
    format!("{p:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tape::{Body, TapeReader, TapeRecord};

    const HEADER: &str = "timestamp,netAmount0,netAmount1,closeTick,openTick,lowestTick,highestTick,inAmount0,inAmount1,currentLiquidity";

    fn manifest(extra: &str) -> RawManifest {
        let text = format!(
            r#"
[[pool]]
chain = "polygon"
address = "0xAB"
labels = ["v3"]
created_at = "2022-01-01T00:00:00Z"
token0 = {{ address = "usdc", symbol = "USDC", decimals = 6 }}
token1 = {{ address = "weth", symbol = "WETH", decimals = 18 }}
base = "token1"
quote_usd = {{ fixed = 1.0 }}
files = ["a.csv"]
{extra}
"#
        );
        toml_like(&text)
    }

    fn toml_like(text: &str) -> RawManifest {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_manifest_names_the_field_it_refuses() {
        let check = |edit: &dyn Fn(&mut RawManifest), field: Option<&str>| {
            let mut m = manifest("");
            edit(&mut m);
            match (parse_manifest(&m), field) {
                (Ok(_), None) => {}
                (Err(e), Some(f)) => assert_eq!(e.field, f, "{e}"),
                (r, f) => panic!("{r:?} for {f:?}"),
            }
        };
        check(&|_| {}, None);
        check(&|m| m.pool[0].base = "token2".into(), Some("pool[0].base"));
        check(
            &|m| m.pool[0].created_at = "yesterday".into(),
            Some("pool[0].created_at"),
        );
        check(
            &|m| m.pool[0].token1.decimals = 99,
            Some("pool[0].token1.decimals"),
        );
        check(&|m| m.pool[0].chain = "a b".into(), Some("pool[0].chain"));
        check(
            &|m| {
                m.pool[0].quote_usd = RawQuoteUsd {
                    fixed: None,
                    pool: None,
                }
            },
            Some("pool[0].quote_usd"),
        );
        check(
            &|m| {
                m.pool[0].quote_usd = RawQuoteUsd {
                    fixed: None,
                    pool: Some("polygon:0xab".into()),
                }
            },
            Some("pool[0].quote_usd.pool"),
        );
        check(&|m| m.pool.clear(), Some("pool"));
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_skipped() {
        let text = format!(
            "{HEADER}\n2023-08-17 00:00:00,1,-1,201328,201329,201328,201329,2,3,100\nnot,a,bar\n2023-08-17 00:01:00,1,-1,x,0,0,0,0,0,1\n2023-08-17 00:02:00,1,-1,201328,0,0,0,-5,0,1\n2023-08-17 00:03:00,0,0,201330,0,0,0,0,0,1\n"
        );
        let (bars, errors) = parse_bars(&text);
        assert_eq!(bars.len(), 2);
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(errors[1].message.contains("closeTick"), "{errors:?}");
        let (bars, errors) = parse_bars("a,b\n1,2\n");
        assert!(bars.is_empty() && errors[0].line == 1);
    }

    /// Bars of a USDC/WETH pool, price 2000 USD then up 1 % a minute for the last five.
    fn bars(minutes: usize) -> Vec<Bar> {
        // ETH at $2000: token0 USDC (6), token1 WETH (18): WETH per USDC raw = 1e12/2000.
        let tick_at = |usd: f64| (1e12f64 / usd).ln() / 1.0001f64.ln();
        (0..minutes)
            .map(|i| {
                let usd = if i + 5 >= minutes {
                    2000.0 * 1.01f64.powi((i + 6 - minutes) as i32)
                } else {
                    2000.0
                };
                Bar {
                    t_ms: 1_692_230_400_000 + i as i64 * MIN_MS,
                    // Buying WETH with 1,000 USDC a minute: USDC in, WETH out.
                    net: [1e9, -0.5e18],
                    close_tick: tick_at(usd),
                    paid_in: [1e9, 0.0],
                    liquidity: 1e18,
                }
            })
            .collect()
    }

    #[test]
    fn windows_prices_volumes_and_counts_follow_the_bars() {
        let spec = parse_manifest(&manifest("")).unwrap().remove(0);
        let mut w = TapeWriter::new(Vec::new());
        let stats = write_tape(&[(spec, bars(70))], &mut w).unwrap();
        assert_eq!((stats.snapshots, stats.ticks), (70, 70));
        let tape = w.into_inner();
        let records: Vec<TapeRecord> = TapeReader::new(&tape[..])
            .filter_map(|r| r.ok().and_then(Result::ok))
            .collect();
        let last = records
            .iter()
            .rev()
            .find_map(|r| match r {
                TapeRecord::Response(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(last.source, Source::Bars);
        let Body::Json(body) = &last.body else {
            panic!()
        };
        let pair = &body["pairs"][0];
        let price: f64 = pair["priceUsd"].as_str().unwrap().parse().unwrap();
        assert!(
            (price / (2000.0 * 1.01f64.powi(5)) - 1.0).abs() < 1e-6,
            "{price}"
        );
        // m5: five rises of 1 % on the close before; h1 the same (flat before).
        let pc5 = pair["priceChange"]["m5"].as_f64().unwrap();
        assert!((pc5 - 5.1).abs() < 0.01, "{pc5}");
        assert_eq!(pair["txns"]["m5"], json!({"buys": 5, "sells": 0}));
        assert_eq!(pair["txns"]["h1"], json!({"buys": 60, "sells": 0}));
        assert_eq!(pair["volume"]["h1"], json!(60_000.0));
        // 70 minutes on file: no h6 or h24 window yet.
        assert!(pair["volume"].get("h6").is_none() && pair["priceChange"].get("h24").is_none());
        // The worth of the active liquidity's virtual reserves at the close: L/sqrt(P) USDC
        // and L·sqrt(P) WETH, P in raw units.
        let liq = pair["liquidity"]["usd"].as_f64().unwrap();
        let sqrt_p = (1e12f64 / (2000.0 * 1.01f64.powi(5))).sqrt();
        let expect = 1e18 / sqrt_p / 1e6 + 1e18 * sqrt_p / 1e18 * 2000.0 * 1.01f64.powi(5);
        assert!((liq / expect - 1.0).abs() < 1e-3, "{liq} vs {expect}");
        // It decodes as any response does.
        let d = last.decode().unwrap();
        assert_eq!(d.snapshots.len(), 1);
        assert_eq!(d.snapshots[0].source, Source::Bars);
    }

    #[test]
    fn a_window_with_a_missing_minute_is_absent_and_another_pool_prices_the_quote() {
        let m = manifest(
            r#"
[[pool]]
chain = "ethereum"
address = "0xCD"
created_at = "2022-01-01T00:00:00Z"
token0 = { address = "weth", symbol = "WETH", decimals = 18 }
token1 = { address = "osqth", symbol = "oSQTH", decimals = 18 }
base = "token1"
quote_usd = { pool = "polygon:0xab" }
files = ["b.csv"]
"#,
        );
        let specs = parse_manifest(&m).unwrap();
        let eth = bars(70);
        // oSQTH at 0.05 WETH: 20 oSQTH per WETH, tick = ln 20 / ln 1.0001; minute 30 missing.
        let mut sq: Vec<Bar> = eth
            .iter()
            .map(|b| Bar {
                close_tick: 20f64.ln() / 1.0001f64.ln(),
                ..*b
            })
            .collect();
        sq.remove(30);
        let mut w = TapeWriter::new(Vec::new());
        write_tape(&[(specs[0].clone(), eth), (specs[1].clone(), sq)], &mut w).unwrap();
        let tape = w.into_inner();
        let last = TapeReader::new(&tape[..])
            .filter_map(|r| r.ok().and_then(Result::ok))
            .filter_map(|r| match r {
                TapeRecord::Response(r) if r.request.contains("0xcd") => Some(r),
                _ => None,
            })
            .last()
            .unwrap();
        let Body::Json(body) = &last.body else {
            panic!()
        };
        let pair = &body["pairs"][0];
        let price: f64 = pair["priceUsd"].as_str().unwrap().parse().unwrap();
        // 0.05 WETH at the last ETH price.
        assert!(
            (price / (0.05 * 2000.0 * 1.01f64.powi(5)) - 1.0).abs() < 1e-6,
            "{price}"
        );
        assert!(pair["volume"].get("m5").is_some());
        assert!(
            pair["volume"].get("h1").is_none(),
            "minute 30 is not on file"
        );
    }
}
