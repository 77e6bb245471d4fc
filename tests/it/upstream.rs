//! A fake DexScreener and GeckoTerminal on 127.0.0.1, for the live-source tests and the
//! scheduler benchmark: it serves the recorded payloads of `tests/fixtures/upstream/`, lets a
//! test script a pair's successive states, enforces rate limits with 429 (with or without
//! `Retry-After`), and injects faults (5xx, time-outs, slow and truncated bodies, HTML,
//! `pairs: null`, schema drift).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// Answer after this long (past the client's time-out).
    Delay(Duration),
    /// Send the headers, then the body slowly, past the client's time-out.
    SlowBody,
    /// Cut the JSON in half.
    Truncated,
    Html,
    PairsNull,
    /// Numbers as "NaN", nulls, omitted keys.
    Drift,
    /// A gzip-encoded body (of [`gzip_zeros`]), sent as it is.
    Gzip(std::sync::Arc<Vec<u8>>),
}

/// A rate limit per endpoint class: `per_minute` requests in any rolling minute.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub per_minute: usize,
    pub retry_after_s: Option<u64>,
}

#[derive(Default)]
pub struct Inner {
    /// DexScreener pairs by address: successive states; the last one stays.
    pub pairs: HashMap<String, VecDeque<Value>>,
    /// Answer for any unknown id with a copy of this pair (the benchmark's 2,000 pairs).
    pub synthesize: Option<Value>,
    pub gecko: HashMap<String, Value>,
    pub faults: VecDeque<Fault>,
    /// Refuse `/latest/dex/pairs` batches larger than this with 400.
    pub max_batch: Option<usize>,
    /// Refuse with 400 any `/latest/dex/pairs` request naming one of these ids (a bad address
    /// sinks its whole batch), and count how often they were asked for.
    pub refuse: std::collections::HashSet<String>,
    pub refused_asks: u64,
    pub limits: HashMap<&'static str, Limit>,
    pub seen: HashMap<&'static str, VecDeque<Instant>>,
    pub served: HashMap<String, u64>,
    pub pair_refreshes: u64,
    /// Replaces the recorded token-profiles feed.
    pub profiles: Option<Value>,
    /// Answer every request with this status (a storm), whatever else is set.
    pub always: Option<u16>,
    /// Pairs added to every `/latest/dex/pairs` answer, asked for or not (a hostile mirror).
    pub extra: Vec<Value>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub inner: Arc<Mutex<Inner>>,
}

pub fn fixture(name: &str) -> Value {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

impl Upstream {
    /// Serves the recorded DexScreener pairs (30 Solana pairs) and GeckoTerminal pools.
    pub async fn start() -> Upstream {
        let mut inner = Inner::default();
        for p in fixture("dexscreener-latest-dex-tokens-solana-usd1-30pairs.json")["pairs"]
            .as_array()
            .unwrap()
        {
            inner.pairs.insert(
                p["pairAddress"].as_str().unwrap().to_string(),
                VecDeque::from([p.clone()]),
            );
        }
        for p in fixture("geckoterminal-pools-multi-monad-testnet-5pools.json")["data"]
            .as_array()
            .unwrap()
        {
            inner.gecko.insert(
                p["attributes"]["address"].as_str().unwrap().to_string(),
                p.clone(),
            );
        }
        let inner = Arc::new(Mutex::new(inner));
        let app = Router::new()
            .route("/latest/dex/pairs/{chain}/{ids}", get(dex_pairs))
            .route("/tokens/v1/{chain}/{addrs}", get(dex_tokens))
            .route("/latest/dex/search", get(search))
            .route("/token-profiles/latest/v1", get(profiles))
            .route(
                "/token-boosts/latest/v1",
                get(|| async { axum::Json(fixture("dexscreener-token-boosts-latest-v1.json")) }),
            )
            .route("/networks/{net}/pools/multi/{addrs}", get(gecko_multi))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// Requests answered, by status.
    pub fn served(&self, status: &str) -> u64 {
        self.with(|i| i.served.get(status).copied().unwrap_or(0))
    }
}

/// `n` bytes of zeros, gzip-compressed (about a thousandth of `n`): a bomb.
pub fn gzip_zeros(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(zeros.len());
        gz.write_all(&zeros[..k]).unwrap();
        left -= k;
    }
    gz.finish().unwrap()
}

fn class_of(path: &str) -> &'static str {
    if path.starts_with("/networks/") {
        "gecko"
    } else if path.starts_with("/token-") {
        "discovery"
    } else {
        "pairs"
    }
}

/// Applies the rate limit and the next fault; `Some(response)` short-circuits.
fn gate(inner: &mut Inner, path: &str) -> Option<Response> {
    if let Some(status) = inner.always {
        *inner.served.entry(status.to_string()).or_default() += 1;
        let mut r = (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"errors":[{"status":status.to_string(),"title":"refused"}]})),
        )
            .into_response();
        if status == 429 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().unwrap());
        }
        return Some(r);
    }
    let class = class_of(path);
    if let Some(limit) = inner.limits.get(class).copied() {
        let now = Instant::now();
        let q = inner.seen.entry(class).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.len() >= limit.per_minute {
            *inner.served.entry("429".into()).or_default() += 1;
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"errors":[{"status":"429","title":"Rate limit exceeded"}]})),
            )
                .into_response();
            if let Some(s) = limit.retry_after_s {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            return Some(r);
        }
        q.push_back(now);
    }
    None
}

enum Planned {
    Now(Response),
    Later(Duration, Response),
    Slow(String),
}

fn finish(inner: &mut Inner, body: Value, status: &str) -> Planned {
    let fault = inner.faults.pop_front();
    let label = match &fault {
        Some(Fault::Status(s)) => s.to_string(),
        _ => status.to_string(),
    };
    *inner.served.entry(label).or_default() += 1;
    let text = body.to_string();
    match fault {
        None => Planned::Now(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                text,
            )
                .into_response(),
        ),
        Some(Fault::Status(s)) => Planned::Now(
            (
                StatusCode::from_u16(s).unwrap(),
                [(header::CONTENT_TYPE, "application/json")],
                "{\"error\":\"upstream trouble\"}",
            )
                .into_response(),
        ),
        Some(Fault::Delay(d)) => Planned::Later(d, (StatusCode::OK, text).into_response()),
        Some(Fault::SlowBody) => Planned::Slow(text),
        Some(Fault::Truncated) => {
            Planned::Now((StatusCode::OK, text[..text.len() / 2].to_string()).into_response())
        }
        Some(Fault::Gzip(body)) => Planned::Now(
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CONTENT_ENCODING, "gzip"),
                ],
                body.to_vec(),
            )
                .into_response(),
        ),
        Some(Fault::Html) => Planned::Now(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>Just a moment...</h1></body></html>",
            )
                .into_response(),
        ),
        Some(Fault::PairsNull) => Planned::Now(
            axum::Json(json!({"schemaVersion":"1.0.0","pairs":null,"pair":null})).into_response(),
        ),
        Some(Fault::Drift) => {
            let mut b = body;
            if let Some(ps) = b["pairs"].as_array_mut() {
                for p in ps {
                    p["priceUsd"] = json!("NaN");
                    p["volume"] = json!({"m5": null, "h1": "NaN"});
                    p.as_object_mut().unwrap().remove("liquidity");
                    p["txns"] = json!(null);
                    p["priceChange"] = json!({"h1": "junk"});
                }
            }
            Planned::Now(axum::Json(b).into_response())
        }
    }
}

async fn deliver(p: Planned) -> Response {
    match p {
        Planned::Now(r) => r,
        Planned::Later(d, r) => {
            tokio::time::sleep(d).await;
            r
        }
        Planned::Slow(text) => {
            let stream = async_stream(text);
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// The body a byte at a time, 200 ms apart.
fn async_stream(text: String) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(text.into_bytes().into_iter(), |mut it| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        it.next().map(|b| (Ok(vec![b]), it))
    })
}

async fn dex_pairs(
    State(s): State<Arc<Mutex<Inner>>>,
    Path((chain, ids)): Path<(String, String)>,
) -> Response {
    let planned = {
        let mut inner = s.lock().unwrap();
        let path = format!("/latest/dex/pairs/{chain}/{ids}");
        if let Some(r) = gate(&mut inner, &path) {
            return r;
        }
        let ids: Vec<&str> = ids.split(',').collect();
        if ids.iter().any(|id| inner.refuse.contains(*id)) {
            inner.refused_asks += 1;
            *inner.served.entry("400".into()).or_default() += 1;
            return (
                StatusCode::BAD_REQUEST,
                "{\"error\":\"invalid pair address\"}",
            )
                .into_response();
        }
        if inner.max_batch.is_some_and(|m| ids.len() > m) {
            *inner.served.entry("400".into()).or_default() += 1;
            return (StatusCode::BAD_REQUEST, "{\"error\":\"too many pair ids\"}").into_response();
        }
        let mut pairs = Vec::new();
        for id in ids {
            let v = match inner.pairs.get_mut(id) {
                Some(states) => {
                    let v = states.front().cloned();
                    if states.len() > 1 {
                        states.pop_front();
                    }
                    v
                }
                None => inner.synthesize.clone().map(|mut t| {
                    t["pairAddress"] = json!(id);
                    t
                }),
            };
            if let Some(mut v) = v {
                v["chainId"] = json!(chain);
                pairs.push(v);
            }
        }
        inner.pair_refreshes += pairs.len() as u64;
        pairs.extend(inner.extra.iter().cloned());
        let body = if pairs.is_empty() {
            json!({"schemaVersion":"1.0.0","pairs":null})
        } else {
            json!({"schemaVersion":"1.0.0","pairs":pairs})
        };
        finish(&mut inner, body, "200")
    };
    deliver(planned).await
}

async fn dex_tokens(
    State(s): State<Arc<Mutex<Inner>>>,
    Path((chain, addrs)): Path<(String, String)>,
) -> Response {
    let planned = {
        let mut inner = s.lock().unwrap();
        if let Some(r) = gate(&mut inner, "/tokens") {
            return r;
        }
        let want: Vec<&str> = addrs.split(',').collect();
        let found: Vec<Value> = inner
            .pairs
            .values()
            .filter_map(|st| st.front())
            .filter(|p| {
                p["chainId"] == json!(chain)
                    // A token's pairs have it on either side.
                    && want.iter().any(|a| p["baseToken"]["address"] == json!(a) || p["quoteToken"]["address"] == json!(a))
            })
            .cloned()
            .collect();
        finish(&mut inner, Value::Array(found), "200")
    };
    deliver(planned).await
}

/// The recorded search (any query), counting queries.
async fn search(
    State(s): State<Arc<Mutex<Inner>>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let planned = {
        let mut inner = s.lock().unwrap();
        if let Some(r) = gate(&mut inner, "/latest/dex/search") {
            return r;
        }
        *inner
            .served
            .entry(format!("search?{}", q.unwrap_or_default()))
            .or_default() += 1;
        finish(
            &mut inner,
            fixture("dexscreener-search-usd1-usdc-multichain.json"),
            "200",
        )
    };
    deliver(planned).await
}

async fn profiles(State(s): State<Arc<Mutex<Inner>>>) -> Response {
    let planned = {
        let mut inner = s.lock().unwrap();
        if let Some(r) = gate(&mut inner, "/token-profiles") {
            return r;
        }
        let body = inner
            .profiles
            .clone()
            .unwrap_or_else(|| fixture("dexscreener-token-profiles-latest-v1.json"));
        finish(&mut inner, body, "200")
    };
    deliver(planned).await
}

async fn gecko_multi(
    State(s): State<Arc<Mutex<Inner>>>,
    Path((_net, addrs)): Path<(String, String)>,
) -> Response {
    let planned = {
        let mut inner = s.lock().unwrap();
        if let Some(r) = gate(&mut inner, "/networks/") {
            return r;
        }
        // Unknown addresses are dropped silently, as GeckoTerminal does.
        let data: Vec<Value> = addrs
            .split(',')
            .filter_map(|a| inner.gecko.get(a).cloned())
            .collect();
        finish(&mut inner, json!({"data": data}), "200")
    };
    deliver(planned).await
}
