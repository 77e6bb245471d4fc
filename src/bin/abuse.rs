//! `abuse`: hostile clients and a hostile upstream, for `bench/abuse.sh`. Each subcommand runs
//! one attack against a server on 127.0.0.1 and prints one JSON line of what it saw. It is a
//! measuring tool, not a test (`tests/it/hostile.rs` checks the same cases): it never asserts.
//!
//! ```text
//! abuse filters   ws://127.0.0.1:8080/v1/ws --connections 31 --subscribes 32 --pairs 2650 --hold 5
//! abuse slowloris 127.0.0.1:8080 --sockets 1100 --hold 15
//! abuse protocol  ws://127.0.0.1:8080/v1/ws
//! abuse stall     ws://127.0.0.1:8080/v1/ws --pause 8
//! abuse upstream  127.0.0.1:9000 --mode bomb|429|403 --bomb-mib 512
//! abuse resume    ws://127.0.0.1:8080/v1/ws --events 100000
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "abuse",
    about = "Hostile clients and upstreams for bench/abuse.sh"
)]
struct Cli {
    #[command(subcommand)]
    attack: Attack,
}

#[derive(Subcommand)]
enum Attack {
    /// Many connections, each subscribing many times with huge filters.
    Filters {
        url: String,
        #[arg(long, default_value_t = 31)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        subscribes: usize,
        #[arg(long, default_value_t = 2650)]
        pairs: usize,
        /// Seconds to hold the connections open afterwards.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// Sockets that send half a request and wait.
    Slowloris {
        addr: String,
        #[arg(long, default_value_t = 1100)]
        sockets: usize,
        #[arg(long, default_value_t = 15.0)]
        hold: f64,
        /// Connect from this local address (127.0.0.2: another client than the bystander's).
        #[arg(long)]
        source: Option<std::net::IpAddr>,
    },
    /// Protocol violations and handshake abuse: the close codes and statuses the server gives.
    Protocol { url: String },
    /// A client that subscribes, stops reading for `pause` seconds, then reads what is left.
    Stall {
        url: String,
        #[arg(long, default_value_t = 8.0)]
        pause: f64,
    },
    /// Not an attack: a resume of the last `events` retained events, timed until the client has
    /// them all (and whether any were lost or reported missing).
    Resume {
        url: String,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Only this chain (a filtered resume); all when absent.
        #[arg(long)]
        chain: Option<String>,
    },
    /// A hostile DexScreener: every request answered with a gzip bomb, 429 or 403; or
    /// (`strings`) with the pair asked for and six unasked ones, each with a 1 MiB symbol (the
    /// asked one's behind a right-to-left override and a zero-width space).
    Upstream {
        addr: String,
        #[arg(long)]
        mode: String,
        #[arg(long, default_value_t = 512)]
        bomb_mib: usize,
    },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Option<Ws> {
    tokio_tungstenite::connect_async(url)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// The next text message, or `None` at a close, an error, or after `wait`.
async fn next_text(ws: &mut Ws, wait: Duration) -> Option<String> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Reads until the close frame: its code (`None`: the connection ended without one).
async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => return c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn filters(
    url: String,
    connections: usize,
    subscribes: usize,
    pairs: usize,
    hold: f64,
) -> Value {
    let mut accepted = 0;
    let mut refused = 0;
    let mut failed = 0;
    let mut sent_bytes = 0usize;
    let mut held = Vec::new();
    let start = Instant::now();
    for c in 0..connections {
        let Some(mut ws) = connect(&url).await else {
            failed += 1;
            continue;
        };
        next_text(&mut ws, Duration::from_secs(5)).await;
        for k in 0..subscribes {
            let list: Vec<String> = (0..pairs)
                .map(|i| format!("\"solana:C{c}K{k}P{i:06}\""))
                .collect();
            let msg = format!(
                r#"{{"op":"subscribe","channel":"signals","filter":{{"pairs":[{}]}}}}"#,
                list.join(",")
            );
            sent_bytes += msg.len();
            if ws.send(Message::Text(msg.into())).await.is_err() {
                failed += 1;
                break;
            }
            match next_text(&mut ws, Duration::from_secs(10)).await {
                Some(t) if t.contains("\"type\":\"subscribed\"") => accepted += 1,
                Some(_) => refused += 1,
                None => {
                    failed += 1;
                    break;
                }
            }
        }
        held.push(ws);
    }
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    json!({
        "attack": "filters", "connections": connections, "subscribes_each": subscribes,
        "pairs_per_filter": pairs, "sent_mib": (sent_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
        "accepted": accepted, "refused": refused, "failed": failed,
        "seconds": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

async fn slowloris(
    addr: String,
    sockets: usize,
    hold: f64,
    source: Option<std::net::IpAddr>,
) -> Value {
    let mut open = Vec::new();
    let mut connect_failed = 0;
    let Ok(target) = addr.parse::<std::net::SocketAddr>() else {
        return json!({"attack": "slowloris", "error": "bad address"});
    };
    for _ in 0..sockets {
        let connected = async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            if let Some(ip) = source {
                sock.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            sock.connect(target).await
        };
        match connected.await {
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .await;
                open.push(s);
            }
            Err(_) => connect_failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    // A socket the server closed reads EOF (or an error) at once.
    let mut closed = 0;
    for s in &mut open {
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) if b[..n].starts_with(b"HTTP/1.1 408") => closed += 1,
            _ => {}
        }
    }
    json!({
        "attack": "slowloris", "sockets": sockets, "connected": open.len(),
        "connect_failed": connect_failed, "closed_by_server_after_hold": closed, "hold_s": hold,
    })
}

async fn raw_status(addr: &str, req: String) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    if s.write_all(req.as_bytes()).await.is_err() {
        return "write failed".into();
    }
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .unwrap_or("none")
            .to_string(),
        _ => "no answer".into(),
    }
}

async fn protocol(url: String) -> Value {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let mut out = serde_json::Map::new();
    for (name, frame) in [
        (
            "invalid_utf8",
            Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true),
        ),
        ("ping_126_bytes", Frame::ping(vec![0u8; 126])),
    ] {
        let code = match connect(&url).await {
            Some(mut ws) => {
                next_text(&mut ws, Duration::from_secs(5)).await;
                let _ = ws.send(Message::Frame(frame)).await;
                close_code(&mut ws, Duration::from_secs(10)).await
            }
            None => None,
        };
        out.insert(name.into(), json!(code));
    }
    let handshake = |key: &str, extra: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
        )
    };
    out.insert(
        "bad_key_status".into(),
        json!(raw_status(&addr, handshake("not-a-key", "")).await),
    );
    out.insert(
        "foreign_origin_status".into(),
        json!(
            raw_status(
                &addr,
                handshake(
                    "dGhlIHNhbXBsZSBub25jZQ==",
                    "Origin: https://evil.example\r\n"
                )
            )
            .await
        ),
    );
    // Key guessing needs a server with keys: bench/abuse.sh does it with curl.
    // A flood that goes on after the close.
    let code = match connect(&url).await {
        Some(mut ws) => {
            let mut n = 0;
            for _ in 0..5_000 {
                if ws
                    .send(Message::Text(
                        format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(500)).into(),
                    ))
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            let c = close_code(&mut ws, Duration::from_secs(10)).await;
            out.insert("flood_messages_sent".into(), json!(n));
            c
        }
        None => None,
    };
    out.insert("flood_close".into(), json!(code));
    out.insert("attack".into(), json!("protocol"));
    Value::Object(out)
}

async fn stall(url: String, pause: f64) -> Value {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let socket = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return json!({"attack": "stall", "error": e.to_string()}),
    };
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(sa) = addr.parse() else {
        return json!({"attack": "stall", "error": "bad address"});
    };
    let Ok(stream) = socket.connect(sa).await else {
        return json!({"attack": "stall", "error": "connect failed"});
    };
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(
        url.as_str(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    else {
        return json!({"attack": "stall", "error": "handshake failed"});
    };
    next_text(&mut ws, Duration::from_secs(5)).await;
    let _ = ws
        .send(Message::Text(
            r#"{"op":"subscribe","channel":"signals"}"#.into(),
        ))
        .await;
    let subscribed = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
    let (mut signals, mut first_seq, mut last_seq, mut lagged, mut code) =
        (0u64, 0u64, 0u64, None, None);
    // Seqs skipped that no `lagged` notice covered.
    let (mut unreported, mut covered_to) = (0u64, 0u64);
    let mut close_after = None;
    let mut ended = "read for 10 s";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if let Some(s) = v["seq"].as_u64() {
                    if first_seq == 0 {
                        first_seq = s;
                    } else if s > last_seq + 1 && s > covered_to + 1 {
                        unreported += s - 1 - last_seq.max(covered_to);
                    }
                    signals += 1;
                    last_seq = s;
                } else if v["type"] == "lagged" {
                    covered_to = covered_to.max(v["missed_to"].as_u64().unwrap_or(0));
                    lagged = Some(json!([v["missed_from"], v["missed_to"]]));
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                code = c.map(|c| u16::from(c.code));
                close_after = Some((subscribed.elapsed().as_secs_f64() * 10.0).round() / 10.0);
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => {
                ended = "connection closed without a close frame";
                break;
            }
            Err(_) => break,
        }
    }
    if code.is_some() {
        ended = "close frame";
    }
    json!({
        "attack": "stall", "paused_s": pause, "ended": ended, "signals_read": signals, "first_seq": first_seq,
        "last_seq": last_seq, "unreported_gaps": unreported, "final_lagged": lagged,
        "close": code, "close_after_subscribe_s": close_after,
    })
}

async fn resume(url: String, events: u64, chain: Option<String>) -> Value {
    let Some(mut ws) = connect(&url).await else {
        return json!({"attack": "resume", "error": "connect failed"});
    };
    let Some(w) = next_text(&mut ws, Duration::from_secs(5)).await else {
        return json!({"attack": "resume", "error": "no welcome"});
    };
    let w: Value = serde_json::from_str(&w).unwrap_or(Value::Null);
    let head = w["head_seq"].as_u64().unwrap_or(0);
    let from = head.saturating_sub(events);
    let filter = chain.as_ref().map_or(String::new(), |c| {
        format!(r#","filter":{{"chains":["{c}"]}}"#)
    });
    let sub = format!(
        r#"{{"op":"subscribe","channel":"signals"{filter},"resume_from":{{"epoch":{},"seq":{from}}}}}"#,
        w["epoch"]
    );
    let start = Instant::now();
    let _ = ws.send(Message::Text(sub.into())).await;
    let (mut n, mut last, mut out_of_order, mut lagged, mut recovered) =
        (0u64, 0u64, 0u64, 0u64, Value::Null);
    let mut close = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while last < head {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let t = t.as_str();
                if t.starts_with("{\"type\":\"signal\"") {
                    // The seq is the first number: no full parse on the hot path.
                    let seq: u64 = t[23..]
                        .split(',')
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    if seq <= last {
                        out_of_order += 1;
                    }
                    last = seq;
                    n += 1;
                } else {
                    let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("subscribed") => recovered = v["recovered"].clone(),
                        Some("lagged") => lagged += 1,
                        _ => {}
                    }
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                close = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    json!({
        "attack": "resume", "from_seq": from, "head_at_connect": head, "recovered": recovered,
        "signals": n, "out_of_order": out_of_order, "lagged_notices": lagged, "close": close,
        "seconds": (secs * 1000.0).round() / 1000.0, "events_per_s": (n as f64 / secs).round(),
    })
}

fn gzip_zeros(mib: usize) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        let _ = gz.write_all(&zeros);
    }
    gz.finish().unwrap_or_default()
}

async fn upstream(addr: String, mode: String, bomb_mib: usize) -> Value {
    let bomb = std::sync::Arc::new(if mode == "bomb" {
        gzip_zeros(bomb_mib)
    } else {
        Vec::new()
    });
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => return json!({"attack": "upstream", "error": e.to_string()}),
    };
    eprintln!(
        "abuse upstream: {mode} on {addr} (bomb {} bytes on the wire)",
        bomb.len()
    );
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let bomb = bomb.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                // One request at a time on the connection (keep-alive), headers only.
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if mode == "strings" {
                    let request = String::from_utf8_lossy(&got).into_owned();
                    let body = hostile_strings(&request).to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                let head: Vec<u8> = match mode.as_str() {
                    "bomb" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                        bomb.len()
                    )
                    .into_bytes(),
                    "429" => b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
                    _ => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
                };
                if s.write_all(&head).await.is_err() {
                    return;
                }
                if mode == "bomb" && s.write_all(&bomb).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A pairs answer with 1 MiB symbols: the pair the request line asks for, and six others.
fn hostile_strings(request: &str) -> Value {
    let path = request.split(' ').nth(1).unwrap_or("/");
    let asked = path
        .rsplit('/')
        .next()
        .unwrap_or("x")
        .split(',')
        .next()
        .unwrap_or("x");
    let mb = "W".repeat(1 << 20);
    let pair = |address: &str, symbol: String| {
        json!({
            "chainId": "solana", "dexId": "raydium", "pairAddress": address,
            "labels": ["CLMM"],
            "baseToken": {"address": "So11111111111111111111111111111111111111112", "symbol": symbol},
            "quoteToken": {"address": "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", "symbol": "USDC"},
            "priceUsd": "1.0001", "priceChange": {"m5": 0.1, "h1": 0.2, "h6": 0.3, "h24": 0.4},
            "volume": {"m5": 1000.0, "h1": 12000.0, "h6": 70000.0, "h24": 300000.0},
            "txns": {"m5": {"buys": 5, "sells": 5}, "h1": {"buys": 60, "sells": 60},
                     "h6": {"buys": 300, "sells": 300}, "h24": {"buys": 1200, "sells": 1200}},
            "liquidity": {"usd": 500000.0, "base": 250000.0, "quote": 250000.0},
            "pairCreatedAt": 1700000000000i64
        })
    };
    let mut pairs = vec![pair(asked, format!("\u{202e}US\u{200b}DC{mb}"))];
    for i in 0..6 {
        pairs.push(pair(&format!("Unasked{i:04}"), mb.clone()));
    }
    json!({"schemaVersion": "1.0.0", "pairs": pairs})
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let out = match cli.attack {
        Attack::Filters {
            url,
            connections,
            subscribes,
            pairs,
            hold,
        } => filters(url, connections, subscribes, pairs, hold).await,
        Attack::Slowloris {
            addr,
            sockets,
            hold,
            source,
        } => slowloris(addr, sockets, hold, source).await,
        Attack::Protocol { url } => protocol(url).await,
        Attack::Stall { url, pause } => stall(url, pause).await,
        Attack::Resume { url, events, chain } => resume(url, events, chain).await,
        Attack::Upstream {
            addr,
            mode,
            bomb_mib,
        } => upstream(addr, mode, bomb_mib).await,
    };
    println!("{out}");
}
