//! A dexpulse webhook receiver in Rust (axum, hmac, sha2, base64): verifies each request's
//! Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the `whsec_` secret), refuses
//! stale timestamps, and handles each event once (dexpulse delivers at least once; the
//! `webhook-id` is the event id).
//!
//! ```text
//! cargo run --example webhook_receiver -- 127.0.0.1:8090 /path/to/whsec_file
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOLERANCE_S: i64 = 5 * 60;

struct Receiver {
    key: Vec<u8>,
    seen: Mutex<HashSet<String>>,
}

/// Whether any `v1` signature of the header is ours for this message (constant-time compare).
fn verify(key: &[u8], id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    header.split(' ').any(|sig| {
        let Some(tag) = sig.strip_prefix("v1,").and_then(|b| B64.decode(b).ok()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return false;
        };
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    })
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (id, ts) = (h("webhook-id"), h("webhook-timestamp"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= TOLERANCE_S);
    if !fresh || !verify(&r.key, id, ts, &body, h("webhook-signature")) {
        println!("refused {id}");
        return StatusCode::UNAUTHORIZED;
    }
    let first = r
        .seen
        .lock()
        .map(|mut s| s.insert(id.to_string()))
        .unwrap_or(true);
    if !first {
        println!("duplicate {id}");
        return StatusCode::NO_CONTENT;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(m) => println!("event {} {} {id}", m["seq"], m["event"]["kind"]),
        Err(e) => println!("unreadable body from a valid signature: {e}"),
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, secret_path) = match &args[..] {
        [_, addr, path] => (addr.clone(), path.clone()),
        _ => return Err("usage: webhook_receiver ADDR WHSEC_FILE".into()),
    };
    let text = std::fs::read_to_string(secret_path)?;
    let b64 = text
        .trim()
        .strip_prefix("whsec_")
        .ok_or("a webhook secret starts with whsec_")?;
    let r = Arc::new(Receiver {
        key: B64.decode(b64)?,
        seen: Mutex::new(HashSet::new()),
    });
    let app = axum::Router::new()
        .fallback(axum::routing::post(hook))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
