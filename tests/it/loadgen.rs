//! The load generator (`src/bin/loadgen.rs`) as a user runs it: against a server that is not
//! dexpulse (a few lines of tokio-tungstenite that stamp `published_at_us` and `seq`), and
//! against dexpulse's bench source. Counts only: no assertion on time.

use std::process::Command;

use dexpulse::app::settings::SourceKind;
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

/// Runs the load generator to completion and parses its one-line JSON summary.
async fn loadgen(args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["--url", url, "--duration", "1", "--linger", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_measures_any_server_that_stamps_published_at_us() {
    // Not dexpulse: no welcome, no subscribe; a message every 5 ms until the client leaves,
    // with seq 10 left out once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
                for seq in (1u64..).filter(|s| *s != 10) {
                    tick.tick().await;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros();
                    let text = format!(r#"{{"seq":{seq},"published_at_us":{now},"x":"y"}}"#);
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let url = format!("ws://{addr}/anything");
    let s = loadgen(args(&url, &["--connections", "4", "--ramp-per-sec", "0"])).await;
    assert_eq!(s["connections_made"], 4, "{s}");
    assert_eq!(s["connections_failed"], 0, "{s}");
    assert_eq!(s["seq_gaps"], 4, "one per connection: {s}");
    assert!(s["messages_received"].as_u64().unwrap() >= 4 * 10, "{s}");
    assert!(s["latency_ms"]["samples"].as_u64().unwrap() > 0, "{s}");
    assert!(s["latency_ms"]["max"].as_f64().unwrap() >= s["latency_ms"]["p50"].as_f64().unwrap());
    assert_eq!(s["slow_consumers"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_against_the_bench_source_counts_every_delivery_and_no_gap() {
    let mut cfg = test_config();
    cfg.source.kind = SourceKind::Bench;
    cfg.source.bench.events_per_second = 200.0;
    let r = start_sourced(cfg).await;
    let url = url(&r, "/v1/ws");
    let s = loadgen(args(
        &url,
        &[
            "--connections",
            "3",
            "--subscribe",
            r#"{"op":"subscribe","channel":"signals"}"#,
            "--source-addresses",
            "2",
        ],
    ))
    .await;
    assert_eq!(s["connections_made"], 3, "{s}");
    assert_eq!(s["seq_gaps"], 0, "{s}");
    assert!(s["latency_ms"]["samples"].as_u64().unwrap() > 0, "{s}");
    assert!(s["deliveries_per_s"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["close_codes"], serde_json::json!({}), "{s}");
    r.shutdown().await.unwrap();
}
