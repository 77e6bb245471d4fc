//! HTTP routes: `/v1/pairs`, `/v1/signals` (from the hub's history), `/healthz`, `/readyz`,
//! `/metrics`. Responses are assembled from the hub's already serialized frames; nothing is
//! serialized twice. `/v1/signals` reads the history in chunks and filters outside its lock.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use dexpulse_core::model::{Direction, Kind, PairKey};

use crate::hub::pairs::{OpenFilter, PairQuery, PairSort};

use super::auth::{self, Refusal};
use super::AppState;

pub fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    json(status, body)
}

/// The answer to a request refused before it was served.
pub fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unauthorized { presented } => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if presented {
                "unknown API key"
            } else {
                "an API key is required"
            },
        ),
        Refusal::Throttled => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failed_keys",
            "too many wrong API keys from this address; try again in a minute",
        ),
        Refusal::KeyLimit => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many connections for this API key",
        ),
        Refusal::Full => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "the server is at max_connections",
        ),
    }
}

/// The data routes (`/v1/pairs`, `/v1/signals`) need a key when keys are configured; health
/// and metrics do not. The WebSocket upgrade authenticates itself (it also counts per key).
pub async fn require_key(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from = client_ip(&req);
    match auth::authenticate(&state.auth, &state.failed_keys, from, req.headers(), &q) {
        Ok(_) => next.run(req).await,
        Err(r) => refused(r),
    }
}

/// The client's address, as the listener saw the connection.
pub fn client_ip<B>(req: &axum::http::Request<B>) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.health.readiness(state.settings.ready_max_silence);
    let body = serde_json::json!({
        "ready": r.ready(),
        "reason": r.reason,
        "last_data_age_ms": r.last_data_age_ms,
        "head_seq": state.hub.head_seq(),
        "pairs": state.hub.pairs().len(),
    })
    .to_string();
    let status = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .engine
        .pairs_tracked
        .set(i64::try_from(state.hub.pairs().len()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            // What prometheus-client writes: OpenMetrics text (`# EOF` at the end).
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The most `/v1/pairs` returns at once (its default: every pair up to this).
pub const PAIRS_MAX_LIMIT: usize = 5000;

/// A query string the route does not take: the message of its 400.
#[derive(Debug, thiserror::Error)]
enum BadQuery {
    #[error("unknown parameter `{0}`")]
    Unknown(String),
    #[error("`{0}` must not be empty")]
    Empty(String),
    #[error("`{key}` must be an integer from {min} to {max}")]
    Integer { key: String, min: u64, max: u64 },
    #[error("`min_liquidity` must be a number of USD, 0 or more")]
    MinLiquidity,
    #[error("`open` must be true, false or a kind; unknown kind `{0}`")]
    OpenKind(String),
    #[error("`sort` must be one of {}", sort_names())]
    Sort,
    #[error("`order` must be asc or desc")]
    Order,
    #[error("`latest=N` is the newest N: it takes no `since`, `before` or `limit`")]
    LatestAlone,
    #[error("unknown kind `{0}`")]
    Kind(String),
    #[error("unknown direction `{0}`")]
    Direction(String),
}

fn sort_names() -> String {
    let names: Vec<&str> = PairSort::NAMES.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

fn pairs_query(q: &HashMap<String, String>) -> Result<PairQuery, BadQuery> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "chain" | "dex" | "min_liquidity" | "open" | "sort" | "order" | "limit" | "token"
        ) {
            return Err(BadQuery::Unknown(k.clone()));
        }
    }
    let text = |k: &str| -> Result<Option<String>, BadQuery> {
        match q.get(k) {
            Some(v) if v.is_empty() => Err(BadQuery::Empty(k.to_string())),
            v => Ok(v.cloned()),
        }
    };
    let min_liquidity_usd = match q.get("min_liquidity") {
        None => None,
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
            _ => return Err(BadQuery::MinLiquidity),
        },
    };
    let open = match q.get("open").map(String::as_str) {
        None => OpenFilter::Either,
        Some("true") => OpenFilter::Any,
        Some("false") => OpenFilter::No,
        Some(k) => {
            OpenFilter::Kind(Kind::parse(k).ok_or_else(|| BadQuery::OpenKind(k.to_string()))?)
        }
    };
    let sort = match q.get("sort") {
        None => PairSort::Pair,
        Some(v) => PairSort::parse(v).ok_or(BadQuery::Sort)?,
    };
    let descending = match q.get("order").map(String::as_str) {
        None => sort != PairSort::Pair,
        Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(BadQuery::Order),
    };
    let limit = match q.get("limit") {
        None => PAIRS_MAX_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=PAIRS_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(BadQuery::Integer {
                    key: "limit".into(),
                    min: 1,
                    max: PAIRS_MAX_LIMIT as u64,
                })
            }
        },
    };
    Ok(PairQuery {
        chain: text("chain")?,
        dex: text("dex")?,
        min_liquidity_usd,
        open,
        sort,
        descending,
        limit,
    })
}

/// `GET /v1/pairs`: the tracked pairs' latest states, filtered and sorted (docs/protocol.md,
/// "HTTP"): `count` pairs in `pairs`, of `matched`.
pub async fn pairs(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pq = match pairs_query(&q) {
        Ok(pq) => pq,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m.to_string()),
    };
    let (matched, all) = state.hub.pairs().select(&pq);
    let mut body = format!(
        "{{\"count\":{},\"matched\":{matched},\"pairs\":[",
        all.len()
    );
    for (i, p) in all.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(p);
    }
    body.push_str("]}");
    json(StatusCode::OK, body)
}

/// `GET /v1/sinks`: each alert sink's cursor, lag, counts and last error (docs/sinks.md).
pub async fn sinks(State(state): State<AppState>) -> Response {
    json(StatusCode::OK, state.sinks.render())
}

/// `GET /v1/pairs/{chain}/{address}`: one pair's state and its recent history (the points of
/// `hub::pairs::HISTORY_POINTS`), for sparklines.
pub async fn pair(
    State(state): State<AppState>,
    Path((chain, address)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(k) = q.keys().find(|k| *k != "token") {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("unknown parameter `{k}`"),
        );
    }
    let key = PairKey::new(chain, address);
    match state.hub.pairs().detail(&key) {
        Some(body) => json(StatusCode::OK, body),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_pair",
            &format!("`{key}` is not tracked"),
        ),
    }
}

/// Any path no route serves.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for `{}`", uri.path()),
    )
}

/// A route asked with a method it does not serve (every route here is GET).
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("`{}` takes GET, not {method}", uri.path()),
    );
    r.headers_mut().insert(
        header::ALLOW,
        axum::http::HeaderValue::from_static("GET, HEAD"),
    );
    r
}

/// The query of `/v1/signals`.
struct SignalsQuery {
    since: u64,
    /// Reading backwards: the newest matching events below this seq (`u64::MAX`: the head).
    before: Option<u64>,
    limit: usize,
    min_score: u8,
    chain: Option<String>,
    kind: Option<Kind>,
    direction: Option<Direction>,
}

impl SignalsQuery {
    fn matches(&self, m: &dexpulse_core::model::EventMeta) -> bool {
        m.score >= self.min_score
            && self.kind.is_none_or(|k| m.kind == k)
            && self.direction.is_none_or(|d| m.direction == d)
            && self.chain.as_ref().is_none_or(|c| *c == m.pair.chain)
    }
}

/// The most `/v1/signals` returns at once.
pub const SIGNALS_MAX_LIMIT: u64 = 1000;
/// The most events one request reads to find its page: a filter that matches rarely returns a
/// short page and the cursor to continue from, rather than reading the whole log.
pub const SIGNALS_MAX_SCAN: usize = 100_000;

fn signals_query(q: &HashMap<String, String>) -> Result<SignalsQuery, BadQuery> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "since"
                | "before"
                | "latest"
                | "limit"
                | "chain"
                | "kind"
                | "direction"
                | "min_score"
                | "token"
        ) {
            return Err(BadQuery::Unknown(k.clone()));
        }
    }
    let num = |k: &str, default: u64, min: u64, max: u64| -> Result<u64, BadQuery> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(BadQuery::Integer {
                    key: k.to_string(),
                    min,
                    max,
                }),
            },
        }
    };
    let latest = q.contains_key("latest");
    if latest
        && ["since", "before", "limit"]
            .iter()
            .any(|k| q.contains_key(*k))
    {
        return Err(BadQuery::LatestAlone);
    }
    let limit = if latest {
        num("latest", 100, 1, SIGNALS_MAX_LIMIT)?
    } else {
        num("limit", 100, 1, SIGNALS_MAX_LIMIT)?
    };
    let before = match (latest, q.contains_key("before")) {
        (true, _) => Some(u64::MAX),
        (false, true) => Some(num("before", 0, 1, u64::MAX)?),
        (false, false) => None,
    };
    Ok(SignalsQuery {
        since: num("since", 0, 0, u64::MAX - 1)?,
        before,
        limit: usize::try_from(limit).unwrap_or(100),
        min_score: u8::try_from(num("min_score", 0, 0, 100)?).unwrap_or(100),
        chain: q.get("chain").cloned(),
        kind: q
            .get("kind")
            .map(|k| Kind::parse(k).ok_or_else(|| BadQuery::Kind(k.clone())))
            .transpose()?,
        direction: q
            .get("direction")
            .map(|d| Direction::parse(d).ok_or_else(|| BadQuery::Direction(d.clone())))
            .transpose()?,
    })
}

/// `GET /v1/signals`: retained signal messages, oldest first, filtered (docs/protocol.md,
/// "HTTP"). Forwards: after `since`, at most `limit` (default 100, at most 1,000), with
/// `next_since` to continue from. Backwards: with `before=SEQ` the newest matching ones below
/// SEQ, or with `latest=N` the newest N, with `next_before`. One request reads at most
/// `SIGNALS_MAX_SCAN` events; the cursor says where it stopped.
pub async fn signals(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let sq = match signals_query(&q) {
        Ok(sq) => sq,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m.to_string()),
    };
    // Matching up to `SIGNALS_MAX_SCAN` events is work for a reader of the past, at its lower
    // priority (the publisher's commit and the fan-out go first); the reads of older frames
    // are awaited there, in place.
    let hub = state.hub.clone();
    let rt = tokio::runtime::Handle::current();
    let page = crate::hub::past::run(move || {
        let epoch = hub.epoch().to_string();
        rt.block_on(async {
            match sq.before {
                None => forwards(&hub, &sq, epoch).await,
                Some(b) => backwards(&hub, &sq, b, epoch).await,
            }
        })
    })
    .await;
    match page {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("reading the history failed: {e}"),
        ),
    }
}

const CHUNK: usize = 4096;

async fn forwards(hub: &crate::hub::Hub, sq: &SignalsQuery, epoch: String) -> String {
    let mut after = sq.since;
    let mut picked = Vec::with_capacity(sq.limit.min(CHUNK));
    let mut oldest = None;
    let mut head;
    let mut scanned = 0;
    // Chunk by chunk: the history's lock is held only to copy (or read) a chunk.
    loop {
        let chunk = hub.read_since(after, CHUNK).await;
        oldest.get_or_insert(chunk.oldest_seq);
        head = chunk.head;
        let n = chunk.frames.len();
        for f in chunk.frames {
            after = f.seq;
            scanned += 1;
            if sq.matches(&f.meta) {
                picked.push(f);
                if picked.len() == sq.limit {
                    break;
                }
            }
        }
        if picked.len() == sq.limit || n < CHUNK || scanned >= SIGNALS_MAX_SCAN {
            break;
        }
    }
    let oldest = oldest.unwrap_or(head + 1);
    page(
        &epoch,
        head,
        oldest,
        &format!("\"next_since\":{}", after.max(sq.since)),
        &picked,
    )
}

async fn backwards(hub: &crate::hub::Hub, sq: &SignalsQuery, before: u64, epoch: String) -> String {
    let mut cursor = before;
    let mut picked = Vec::with_capacity(sq.limit.min(CHUNK));
    let mut scanned = 0;
    let (mut head, mut oldest);
    'read: loop {
        let chunk = hub.read_before(Some(cursor), CHUNK).await;
        head = chunk.head;
        oldest = chunk.oldest_seq;
        let n = chunk.frames.len();
        for f in chunk.frames.into_iter().rev() {
            if f.seq <= sq.since {
                cursor = sq.since + 1;
                break 'read;
            }
            cursor = f.seq;
            scanned += 1;
            if sq.matches(&f.meta) {
                picked.push(f);
                if picked.len() == sq.limit {
                    break 'read;
                }
            }
        }
        if n < CHUNK || scanned >= SIGNALS_MAX_SCAN {
            break;
        }
    }
    picked.reverse();
    page(
        &epoch,
        head,
        oldest,
        &format!("\"next_before\":{}", cursor.min(head + 1)),
        &picked,
    )
}

fn page(
    epoch: &str,
    head: u64,
    oldest: u64,
    cursor: &str,
    picked: &[std::sync::Arc<crate::hub::Frame>],
) -> String {
    let mut body = format!(
        "{{\"epoch\":{},\"head_seq\":{head},\"oldest_seq\":{oldest},{cursor},\"signals\":[",
        serde_json::Value::from(epoch),
    );
    for (i, f) in picked.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // The hub's frames are UTF-8 by construction.
        body.push_str(&String::from_utf8_lossy(&f.text));
    }
    body.push_str("]}");
    body
}
