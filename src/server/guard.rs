//! What every request passes through, whatever its route (docs/hardening.md): the `Host` check
//! that stops DNS rebinding (a page on `evil.example` whose name was made to resolve to this
//! server sends `Host: evil.example`), error bodies made JSON where a framework layer answered
//! in plain text (an extractor's rejection, a bad UTF-8 path segment), and
//! `Referrer-Policy: no-referrer` so that no URL of ours (with a `?token=`) leaves in a
//! `Referer`. It never looks at a request's body and never touches a session.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::http::error;
use super::AppState;

/// Which `Host` values a request may carry (`server.allowed_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Names (lower case), each with or without a port; `*.example.com` matches any name under
    /// it; `*` matches everything.
    names: Vec<String>,
    /// Bound to loopback: `localhost` and `*.localhost` are this machine's names.
    loopback: bool,
}

impl AllowedHosts {
    pub fn new(names: &[String], bind: std::net::SocketAddr) -> AllowedHosts {
        AllowedHosts {
            names: names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .collect(),
            loopback: bind.ip().is_loopback(),
        }
    }

    /// Whether a request with this `Host` header is for us. An IP literal always is: a page
    /// that rebinds a name still sends the name.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = strip_port(&host);
        if name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            return true;
        }
        if self.loopback && (name == "localhost" || name.ends_with(".localhost")) {
            return true;
        }
        self.names.iter().any(|a| {
            a == "*"
                || *a == host
                || *a == name
                || a.strip_prefix("*.")
                    .is_some_and(|suffix| name.ends_with(&format!(".{suffix}")))
        })
    }
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The largest plain-text error body kept as the JSON error's message.
const MESSAGE_BYTES: usize = 512;

/// The layer around every route and the fallbacks.
pub async fn guard(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let mut res = match host {
        // HTTP/1.0 without a Host (a load balancer's health check, say) cannot be a browser
        // tricked by a rebound name: browsers always send one.
        Some(h) if !state.allowed_hosts.allows(&h) => error(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            "this server does not answer for that Host (server.allowed_hosts)",
        ),
        _ => json_errors(next.run(req).await).await,
    };
    res.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// An error answered in plain text by a layer below the routes, as the JSON every other error
/// is; the text becomes the message.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MESSAGE_BYTES * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(MESSAGE_BYTES)]).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    let mut out = error(status, code, &message);
    // What the layer said besides the body (`Allow`, `Retry-After`) stays.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *out.status_mut() = status;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_listed_ip_literals_never_need_to_be() {
        let loopback = AllowedHosts::new(&[], "127.0.0.1:8080".parse().unwrap());
        let check = |a: &AllowedHosts, host: &str, want: bool| {
            assert_eq!(a.allows(host), want, "{host}");
        };
        check(&loopback, "127.0.0.1:8080", true);
        check(&loopback, "127.0.0.1", true);
        check(&loopback, "[::1]:8080", true);
        check(&loopback, "localhost:8080", true);
        check(&loopback, "dash.localhost", true);
        check(&loopback, "evil.example:8080", false);
        check(&loopback, "localhost.evil.example", false);
        let public = AllowedHosts::new(
            &["stream.example.com".into(), "*.edge.example".into()],
            "0.0.0.0:8080".parse().unwrap(),
        );
        check(&public, "10.0.0.5:8080", true);
        check(&public, "localhost:8080", false);
        check(&public, "STREAM.example.com:443", true);
        check(&public, "a.edge.example", true);
        check(&public, "edge.example", false);
        check(&public, "evil.example", false);
        let any = AllowedHosts::new(&["*".into()], "0.0.0.0:8080".parse().unwrap());
        check(&any, "whatever.example", true);
    }
}
