//! HTTP routes: `/v1/pairs`, `/v1/signals` (from the hub's retained ring), `/healthz`,
//! `/readyz`, `/metrics`. Responses are assembled from the hub's already serialized frames;
//! nothing is serialized twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::model::{Direction, Kind};

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    json(status, body)
}

/// The API key a request carries: `Authorization: Bearer KEY` or `?token=KEY`.
pub fn presented_key<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str))
}

/// A refused request: 401 with the reason.
pub struct Unauthorized(&'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, "unauthorized", self.0)
    }
}

/// `Ok(Some((key, its connection limit)))` for a valid key, `Ok(None)` when no keys are
/// configured, `Err` (401) otherwise.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<(String, usize)>, Unauthorized> {
    let keys = &state.cfg.auth.keys;
    if keys.is_empty() {
        return Ok(None);
    }
    let presented = presented_key(headers, query);
    match presented.and_then(|p| keys.iter().find(|k| k.key == p)) {
        Some(k) => Ok(Some((k.key.clone(), k.max_connections))),
        None => {
            state.metrics.rejected(401);
            Err(Unauthorized(if presented.is_some() {
                "unknown API key"
            } else {
                "an API key is required"
            }))
        }
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
    match authenticate(&state, req.headers(), &q) {
        Ok(_) => next.run(req).await,
        Err(r) => r.into_response(),
    }
}

pub async fn index() -> &'static str {
    "dexpulse: WebSocket at /v1/ws; HTTP: /v1/pairs, /v1/signals, /healthz, /readyz, /metrics\n"
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let now_ms = crate::hub::now_us() / 1000;
    let last = state.health.last_input_ms.load(Ordering::Acquire);
    let running = state.health.engine_running.load(Ordering::Acquire);
    let max_silence_ms = (state.cfg.server.ready_max_silence_seconds * 1000.0) as i64;
    let reason = if !running {
        Some("the engine is not running")
    } else if state.health.source_ended.load(Ordering::Acquire) {
        Some("the source has ended")
    } else if state.metrics.circuit_open.get() > 0 {
        Some("an upstream circuit is open (repeated failures)")
    } else if last == 0 {
        Some("no data from the source yet")
    } else if now_ms - last > max_silence_ms {
        Some("the source has been silent too long")
    } else {
        None
    };
    let body = serde_json::json!({
        "ready": reason.is_none(),
        "reason": reason,
        "last_input_age_ms": (last > 0).then(|| now_ms - last),
        "head_seq": state.hub.head_seq(),
        "pairs": state.hub.pair_count(),
    })
    .to_string();
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .pairs_tracked
        .set(state.hub.pair_count() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn pairs(State(state): State<AppState>) -> Response {
    let all = state.hub.pairs();
    let mut body = format!("{{\"count\":{},\"pairs\":[", all.len());
    for (i, p) in all.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&p.view);
    }
    body.push_str("]}");
    json(StatusCode::OK, body)
}

/// The query of `/v1/signals`.
struct SignalsQuery<'a> {
    since: u64,
    limit: usize,
    min_score: u8,
    chain: Option<&'a String>,
    kind: Option<Kind>,
    direction: Option<Direction>,
}

fn signals_query(q: &HashMap<String, String>) -> Result<SignalsQuery<'_>, String> {
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "since" | "limit" | "chain" | "kind" | "direction" | "min_score" | "token"
        ) {
            return Err(format!("unknown parameter `{k}`"));
        }
    }
    let num = |k: &str, default: u64, max: u64| -> Result<u64, String> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(format!("`{k}` must be an integer from 0 to {max}")),
            },
        }
    };
    Ok(SignalsQuery {
        since: num("since", 0, u64::MAX)?,
        limit: num("limit", 100, 1000)? as usize,
        min_score: num("min_score", 0, 100)? as u8,
        chain: q.get("chain"),
        kind: q
            .get("kind")
            .map(|k| Kind::parse(k).ok_or_else(|| format!("unknown kind `{k}`")))
            .transpose()?,
        direction: q
            .get("direction")
            .map(|d| Direction::parse(d).ok_or_else(|| format!("unknown direction `{d}`")))
            .transpose()?,
    })
}

/// `GET /v1/signals?since=SEQ&limit=N&chain=&kind=&direction=&min_score=`: retained signal
/// messages after `since`, oldest first, at most `limit` (default 100, at most 1,000).
pub async fn signals(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let sq = match signals_query(&q) {
        Ok(sq) => sq,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    let frames = state.hub.retained();
    let head = state.hub.head_seq();
    let oldest = frames.first().map_or(head + 1, |f| f.seq);
    let mut body = format!(
        "{{\"epoch\":{},\"head_seq\":{head},\"oldest_seq\":{oldest},\"signals\":[",
        serde_json::Value::from(state.hub.epoch()),
    );
    let matching = frames.iter().filter(|f| {
        f.seq > sq.since
            && f.score >= sq.min_score
            && sq.kind.is_none_or(|k| f.kind == k)
            && sq.direction.is_none_or(|d| f.direction == d)
            && sq.chain.is_none_or(|c| *c == f.chain)
    });
    for (i, f) in matching.take(sq.limit).enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(f.text.as_str());
    }
    body.push_str("]}");
    json(StatusCode::OK, body)
}
