//! The WebSocket handshake (RFC 6455 section 4.2): the request is checked (a GET over HTTP/1.1
//! with `Connection: upgrade`, `Upgrade: websocket`, version 13 and a key that is 16 bytes of
//! base64), authenticated and counted against the connection limits before the upgrade; then the
//! session runs on tokio-tungstenite over the upgraded connection, and the connection is ended
//! the way the session's [`Ending`] says: when the closing handshake could not complete on the
//! WebSocket, the socket is half-closed and drained for a moment, so that the client reads the
//! close frame instead of a reset.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::auth::{self, Refusal};
use super::http::{client_ip, error, refused};
use super::listener::ConnPermit;
use super::session::{self, Ending, SessionCtx};
use super::AppState;

/// Why a request is not a WebSocket handshake we accept (400, or 426 for the version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHandshake(pub &'static str);

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|h| {
        h.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks a handshake request; returns the `Sec-WebSocket-Accept` value.
pub fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, BadHandshake> {
    if method != Method::GET {
        return Err(BadHandshake("a WebSocket handshake is a GET"));
    }
    if version != Version::HTTP_11 {
        return Err(BadHandshake("a WebSocket handshake needs HTTP/1.1"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(BadHandshake("`Connection` must include `upgrade`"));
    }
    if !header_is(headers, header::UPGRADE, "websocket") {
        return Err(BadHandshake("`Upgrade` must be `websocket`"));
    }
    if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(BadHandshake("`Sec-WebSocket-Version` must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(BadHandshake("`Sec-WebSocket-Key` is missing"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| BadHandshake("`Sec-WebSocket-Key` is not base64"))?;
    if decoded.len() != 16 {
        return Err(BadHandshake(
            "`Sec-WebSocket-Key` must be 16 bytes, base64-encoded",
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Whether a browser page may open a WebSocket: no `Origin` (not a browser), the server's own
/// (the `Origin` names the `Host` the request went to), or one listed (`*`: any).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let accept = match check(req.method(), req.version(), req.headers()) {
        Ok(a) => a,
        Err(BadHandshake(why)) => {
            let status = if why.contains("Version") {
                StatusCode::UPGRADE_REQUIRED
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut r = error(status, "bad_handshake", why);
            if status == StatusCode::UPGRADE_REQUIRED {
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return r;
        }
    };
    if !origin_allowed(req.headers(), &state.settings.allowed_origins) {
        state.metrics.session.rejected(403);
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this page's origin may not open a WebSocket here (server.allowed_origins)",
        );
    }
    let from = client_ip(&req);
    let permit = match auth::authenticate(&state.auth, &state.failed_keys, from, req.headers(), &q)
        .and_then(|who| {
            state
                .limits
                .acquire(who, &state.auth, state.settings.max_connections)
        }) {
        Ok(p) => p,
        Err(r) => {
            state.metrics.session.rejected(match r {
                Refusal::Unauthorized { .. } => 401,
                Refusal::Throttled | Refusal::KeyLimit => 429,
                Refusal::Full => 503,
            });
            return refused(r);
        }
    };
    // The connection's place among the open ones goes with the session.
    let conn_place = req.extensions_mut().remove::<ConnPermit>();
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "this connection cannot be upgraded",
        );
    };
    let s = &state.session;
    let config = WebSocketConfig::default()
        .read_buffer_size(s.read_buffer_bytes)
        .write_buffer_size(s.write_buffer_bytes)
        .max_write_buffer_size(
            s.write_buffer_bytes.max(s.max_message_bytes) * 4 + s.queue_max_bytes,
        )
        .max_message_size(Some(s.max_message_bytes))
        .max_frame_size(Some(s.max_message_bytes));
    let ctx = SessionCtx {
        id: state.session_id(),
        hub: state.hub.clone(),
        settings: state.session.clone(),
        grace: state
            .settings
            .shutdown_grace
            .max(Duration::from_millis(100)),
        metrics: state.metrics.clone(),
        clock: state.clock.clone(),
        shutdown: state.shutdown.clone(),
        filter_budget: state.filter_budget.clone(),
        writers: state.writers.clone(),
        tracker: state.sessions.clone(),
    };
    // The settings rather than the duration: every open session carries what this captures.
    let settings = state.session.clone();
    state.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, stream) = ws.split();
        // From here the session lives in its writer's shard, not in this task.
        session::start(sink, stream, ctx, move |sink, stream, ending| async move {
            if let Ending::Closed { linger: true, .. } = ending {
                if let Ok(ws) = sink.reunite(stream) {
                    drain(ws, settings.close_linger).await;
                }
            }
            drop((permit, conn_place));
        });
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r.into_response()
}

/// A lingering close: our close frame is written; half-close, then read and discard what the
/// client still sends until it closes or `linger` passes. Dropping a socket with unread data
/// makes the kernel reset it, and a reset can destroy the close frame before the client reads
/// it.
async fn drain<S>(mut ws: WebSocketStream<TokioIo<S>>, linger: Duration)
where
    TokioIo<S>: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io = ws.get_mut();
    let _ = io.shutdown().await;
    // On the heap, and only here: a buffer in the future's state would be reserved in every
    // session's task for its whole life.
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(linger, async {
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn browsers_from_other_origins_need_to_be_listed() {
        let h = |origin: Option<&str>| {
            let mut pairs = vec![("host", "stream.example:8080")];
            if let Some(o) = origin {
                pairs.push(("origin", o));
            }
            headers(&pairs)
        };
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&h(None), &none), "not a browser");
        assert!(
            origin_allowed(&h(Some("http://stream.example:8080")), &none),
            "its own page"
        );
        assert!(origin_allowed(
            &h(Some("https://STREAM.example:8080/")),
            &none
        ));
        assert!(!origin_allowed(&h(Some("https://evil.example")), &none));
        assert!(!origin_allowed(&h(Some("null")), &none));
        let listed = vec!["https://dash.example".to_string()];
        assert!(origin_allowed(&h(Some("https://dash.example")), &listed));
        assert!(origin_allowed(
            &h(Some("https://evil.example")),
            &["*".to_string()]
        ));
    }

    #[test]
    fn handshakes_are_checked_field_by_field() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // RFC 6455's example.
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, &headers(&good)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let with = |k: &str, v: &str| {
            let mut h: Vec<(&str, &str)> = good.iter().copied().filter(|(n, _)| *n != k).collect();
            if !v.is_empty() {
                h.push((k, v));
            }
            check(&Method::GET, Version::HTTP_11, &headers(&h))
                .unwrap_err()
                .0
        };
        assert!(with("sec-websocket-key", "not base64!").contains("base64"));
        assert!(with("sec-websocket-key", "c2hvcnQ=").contains("16 bytes"));
        assert!(with("sec-websocket-key", "").contains("missing"));
        assert!(with("sec-websocket-version", "8").contains("13"));
        assert!(with("upgrade", "h2c").contains("Upgrade"));
        assert!(with("connection", "keep-alive").contains("Connection"));
        assert!(check(&Method::POST, Version::HTTP_11, &headers(&good)).is_err());
        assert!(check(&Method::GET, Version::HTTP_10, &headers(&good)).is_err());
    }
}
