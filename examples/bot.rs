//! An example trading-bot client for dexpulse (WebSocket protocol v1), on tokio-tungstenite:
//! subscribes with a filter, prints every event, tracks `seq`, notices gaps, and on any
//! disconnect reconnects with `resume_from` so that nothing retained is missed.
//!
//!     cargo run --example bot -- ws://127.0.0.1:8080/v1/ws '{"min_score":60}'
//!
//! Set DEXPULSE_TOKEN to send an API key. Stops after DEXPULSE_BOT_MAX_EVENTS events (if set).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/v1/ws".to_string());
    let filter: Value = match args.next().map(|f| serde_json::from_str(&f)) {
        None => json!({}),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("the filter is not JSON: {e}");
            std::process::exit(64);
        }
    };
    let max_events: Option<u64> = std::env::var("DEXPULSE_BOT_MAX_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok());
    // Where we are in the stream: (epoch, last seq seen).
    let mut position: Option<(String, u64)> = None;
    let mut received = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&url, &filter, &mut position, &mut received, max_events).await {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(250),
            Err(e) => eprintln!("connection failed: {e}"),
        }
        eprintln!("reconnecting in {backoff:?} (resume from {position:?})");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection. `Ok(true)`: done; `Ok(false)`: the server closed, reconnect.
async fn session(
    url: &str,
    filter: &Value,
    position: &mut Option<(String, u64)>,
    received: &mut u64,
    max_events: Option<u64>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let mut req = url.into_client_request()?;
    if let Ok(token) = std::env::var("DEXPULSE_TOKEN") {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut subscribe = json!({"op": "subscribe", "id": 1, "channel": "signals", "filter": filter});
    if let Some((epoch, seq)) = position.as_ref() {
        subscribe["resume_from"] = json!({"epoch": epoch, "seq": seq});
    }
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(c) => {
                eprintln!("server closed: {c:?}");
                return Ok(false);
            }
            _ => continue,
        };
        let m: Value = serde_json::from_str(text.as_str())?;
        match m["type"].as_str() {
            Some("welcome") => {
                let epoch = m["epoch"].as_str().unwrap_or_default().to_string();
                if position.as_ref().is_some_and(|(e, _)| *e != epoch) {
                    eprintln!("the server restarted (new epoch): events in between are lost");
                    subscribe.as_object_mut().map(|o| o.remove("resume_from"));
                }
                *position = Some((
                    epoch,
                    position
                        .as_ref()
                        .map_or(m["head_seq"].as_u64().unwrap_or(0), |p| p.1),
                ));
                ws.send(Message::Text(subscribe.to_string().into())).await?;
            }
            Some("subscribed") if m["recovered"] == false => {
                eprintln!(
                    "could not resume: retained events start at seq {}",
                    m["oldest_seq"]
                );
            }
            Some("signal") => {
                let seq = m["seq"].as_u64().unwrap_or(0);
                if let Some((_, last)) = position.as_mut() {
                    if seq > *last + 1 && *last > 0 {
                        eprintln!(
                            "gap: seq {} to {} not received (filtered out or missed)",
                            *last + 1,
                            seq - 1
                        );
                    }
                    *last = seq;
                }
                let e = &m["event"];
                println!(
                    "seq={seq} {} {} {} {}:{} score={} source={}",
                    e["phase"],
                    e["kind"],
                    e["direction"],
                    e["chain"],
                    e["pair_address"],
                    e["score"],
                    e["source"]
                );
                *received += 1;
                if max_events.is_some_and(|n| *received >= n) {
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
            }
            Some("lagged") => eprintln!(
                "lagged: missed {} to {}; resuming",
                m["missed_from"], m["missed_to"]
            ),
            Some("error") => eprintln!("error: {} {}", m["code"], m["message"]),
            _ => {}
        }
    }
    Ok(false)
}
