//! The dashboard at `/`: static files embedded in the binary at build time (docs/dashboard.md),
//! so nothing is fetched from anywhere else and no Node toolchain is needed to build or run.
//! The page is a client like any other: it reads `/v1/ws`, `/v1/pairs` and
//! `/v1/pairs/{chain}/{address}` with the user's key. The API documents a client is generated
//! from (`/v1/asyncapi.json`, `/v1/openapi.json`) are served from here too.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// uPlot 1.6.32 from npm, its built files unchanged (vendor/VENDORED.md: checksums, licence).
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("dashboard/vendor/uPlot.LICENSE"),
    ),
];

const INDEX: &str = include_str!("dashboard/index.html");

/// Only this origin, for scripts, styles, fetches and the socket: the page makes no external
/// request, and an injected one would be refused by the browser. uPlot sizes its elements
/// with inline styles, hence `'unsafe-inline'` for styles only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The files change only with the binary; a short cache keeps an upgrade visible soon.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// The API documents (docs/api/), served as written; tests/it/apidocs.rs keeps them true.
const ASYNCAPI: &str = include_str!("../../docs/api/asyncapi.json");
const OPENAPI: &str = include_str!("../../docs/api/openapi.json");

pub async fn asyncapi() -> Response {
    super::http::json(StatusCode::OK, ASYNCAPI.to_string())
}

pub async fn openapi() -> Response {
    super::http::json(StatusCode::OK, OPENAPI.to_string())
}

pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX.as_bytes())
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => page(ct, body),
        None => super::http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no asset `{name}`"),
        ),
    }
}
