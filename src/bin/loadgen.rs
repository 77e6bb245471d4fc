//! The load generator: N WebSocket clients against any server that stamps `published_at_us`
//! (dexpulse's protocol, or another with the same two fields). Opens connections at a ramp rate,
//! spread over several 127.0.0.x source addresses when N is large, optionally subscribes, reads
//! continuously (or stops reading, for a fraction of slow consumers), and records each
//! message's latency from its `published_at_us` in an HDR histogram. Prints one JSON summary.
//!
//!     cargo run --release --bin loadgen -- --url ws://127.0.0.1:8080/v1/ws --connections 1000 \
//!         --subscribe '{"op":"subscribe","channel":"signals"}' --duration 30
//!
//! It reports its own CPU use, so that a reader can tell whether it was the bottleneck.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "WebSocket load generator measuring delivery latency from published_at_us"
)]
struct Args {
    /// The WebSocket URL.
    #[arg(long)]
    url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// New connections per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    ramp_per_sec: f64,
    /// A message to send after the first message from the server (e.g. a subscribe).
    #[arg(long)]
    subscribe: Option<String>,
    /// Seconds to measure after the ramp.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Fraction of clients that stop reading after subscribing (slow consumers).
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// SO_RCVBUF for the slow consumers, in bytes (0: the system's default). A small one makes
    /// their backlog reach the server's queue soon, as a stalled client over a WAN would.
    #[arg(long, default_value_t = 0)]
    slow_rcvbuf: u32,
    /// Source addresses 127.0.0.1 to 127.0.0.K, used round robin (each gives ~28k ports).
    #[arg(long, default_value_t = 0)]
    source_addresses: u8,
    /// Print the summary and exit this many seconds after the measurement even if clients hang.
    #[arg(long, default_value_t = 5.0)]
    linger: f64,
}

#[derive(Default)]
struct Totals {
    made: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    measured: AtomicU64,
    gaps: AtomicU64,
    /// Microseconds from the ramp's start to the last completed handshake.
    last_handshake_us: AtomicU64,
}

/// `"key":123` in the first bytes of a message, without parsing the JSON. The finder is built
/// once: building one per message was a tenth of the load generator's time.
fn field(text: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<i64> {
    let head = &text[..text.len().min(200)];
    let rest = &head[key.find(head)? + key.needle().len()..];
    let (neg, digits) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        _ => (false, rest),
    };
    let mut v: i64 = 0;
    let mut n = 0;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(if neg { -v } else { v })
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// User plus system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let totals = Arc::new(Totals::default());
    // 1 µs to 10 minutes at 3 significant figures.
    let hist = match Histogram::<u64>::new_with_bounds(1, 600_000_000, 3) {
        Ok(h) => Arc::new(Mutex::new(h)),
        Err(e) => {
            eprintln!("histogram: {e}");
            std::process::exit(70);
        }
    };
    let closes = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = tokio_util::sync::CancellationToken::new();
    let url = args.url.clone();
    let host: SocketAddr = {
        let rest = url.trim_start_matches("ws://");
        let hostport = rest.split('/').next().unwrap_or(rest);
        match tokio::net::lookup_host(hostport)
            .await
            .ok()
            .and_then(|mut a| a.next())
        {
            Some(a) => a,
            None => {
                eprintln!("cannot resolve {hostport}");
                std::process::exit(64);
            }
        }
    };
    let cpu0 = cpu_seconds();
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    let slow_every = if args.slow_fraction > 0.0 {
        (1.0 / args.slow_fraction).round().max(1.0) as usize
    } else {
        0
    };
    for i in 0..args.connections {
        if args.ramp_per_sec > 0.0 {
            let due = ramp_start + Duration::from_secs_f64(i as f64 / args.ramp_per_sec);
            tokio::time::sleep_until(due.into()).await;
        }
        let slow = slow_every > 0 && i % slow_every == 0;
        let slow_rcvbuf = args.slow_rcvbuf;
        let source = if args.source_addresses > 0 {
            Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % args.source_addresses as usize) as u8,
            )))
        } else {
            None
        };
        let (url, sub, totals, hist, closes, measuring, stop) = (
            url.clone(),
            args.subscribe.clone(),
            totals.clone(),
            hist.clone(),
            closes.clone(),
            measuring.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let socket = if host.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            let Ok(socket) = socket else {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if slow && slow_rcvbuf > 0 {
                let _ = socket.set_recv_buffer_size(slow_rcvbuf);
            }
            if let Some(ip) = source {
                if socket.bind(SocketAddr::new(ip, 0)).is_err() {
                    totals.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let Ok(stream) = socket.connect(host).await else {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let _ = stream.set_nodelay(true);
            // tungstenite zero-fills its whole read buffer before every read: at its default
            // 128 KiB that memset was a quarter of the load generator's CPU.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(16 * 1024);
            let Ok((mut ws, _)) = tokio_tungstenite::client_async_with_config(
                url,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
                Some(config),
            )
            .await
            else {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            totals.made.fetch_add(1, Ordering::Relaxed);
            totals
                .last_handshake_us
                .fetch_max(ramp_start.elapsed().as_micros() as u64, Ordering::Relaxed);
            // Raw latencies, appended: a histogram per connection (hundreds of KB each) missed
            // the cache at every record. They go into the shared histogram at the end.
            let mut local: Vec<u32> = Vec::new();
            let seq_key = memchr::memmem::Finder::new(b"\"seq\":");
            let at_key = memchr::memmem::Finder::new(b"\"published_at_us\":");
            // Counted here and added to the shared totals once at the end: a shared counter
            // touched per message from every task would make the load generator the bottleneck.
            let (mut messages, mut measured, mut gaps) = (0u64, 0u64, 0u64);
            let mut last_seq: Option<i64> = None;
            let mut sent_sub = sub.is_none();
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                // The socket first: while messages are waiting, the stop signal (a shared lock)
                // is not polled at all.
                let msg = tokio::select! {
                    biased;
                    m = ws.next() => m,
                    _ = &mut stopped => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        messages += 1;
                        if !sent_sub {
                            sent_sub = true;
                            if let Some(s) = &sub {
                                if ws.send(Message::Text(s.clone().into())).await.is_err() {
                                    break;
                                }
                            }
                            if slow {
                                // A slow consumer: holds the connection and reads nothing more.
                                (&mut stopped).await;
                                break;
                            }
                            continue;
                        }
                        let t = t.as_bytes();
                        if let Some(p) = field(t, &at_key) {
                            if measuring.load(Ordering::Relaxed) {
                                local.push((now_us() - p).clamp(1, i64::from(u32::MAX)) as u32);
                                measured += 1;
                            }
                            if let Some(seq) = field(t, &seq_key) {
                                if last_seq.is_some_and(|l| seq > l + 1) {
                                    gaps += 1;
                                }
                                last_seq = Some(seq);
                            }
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        let code = c.map_or(1005, |c| u16::from(c.code));
                        *closes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(code)
                            .or_default() += 1;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            totals.messages.fetch_add(messages, Ordering::Relaxed);
            totals.measured.fetch_add(measured, Ordering::Relaxed);
            totals.gaps.fetch_add(gaps, Ordering::Relaxed);
            let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
            for us in local {
                let _ = h.record(u64::from(us));
            }
        }));
    }
    // Let the last connections finish their handshakes before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ramp_secs = totals.last_handshake_us.load(Ordering::Relaxed) as f64 / 1e6;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let cpu_m0 = cpu_seconds();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu_window = cpu_seconds() - cpu_m0;
    stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs_f64(args.linger),
        futures_util::future::join_all(tasks),
    )
    .await;
    // Only messages that arrived inside the window were counted.
    let measured = totals.measured.load(Ordering::Relaxed);
    let h = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    let made = totals.made.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "url": args.url,
            "connections_requested": args.connections,
            "connections_made": made,
            "connections_failed": totals.failed.load(Ordering::Relaxed),
            "connect_rate_per_s": (made as f64 / ramp_secs.max(1e-9)).round(),
            "slow_consumers": if slow_every > 0 { args.connections.div_ceil(slow_every) } else { 0 },
            "measure_seconds": (window * 100.0).round() / 100.0,
            "messages_received": totals.messages.load(Ordering::Relaxed),
            "deliveries_per_s": (measured as f64 / window).round(),
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": (h.max() as f64 / 10.0).round() / 100.0, "samples": h.len()},
            "seq_gaps": totals.gaps.load(Ordering::Relaxed),
            "close_codes": *closes.lock().unwrap_or_else(|p| p.into_inner()),
            "loadgen_cpu_seconds": ((cpu_seconds() - cpu0) * 100.0).round() / 100.0,
            "loadgen_cpu_share_of_window": (cpu_window / window * 100.0).round() / 100.0,
        })
    );
}

#[cfg(test)]
mod tests {
    use super::field;
    use memchr::memmem::Finder;

    #[test]
    fn fields_are_read_without_parsing() {
        let seq = Finder::new(b"\"seq\":");
        let at = Finder::new(b"\"published_at_us\":");
        let m = br#"{"type":"signal","seq":42,"published_at_us":1763800000000123,"event":{}}"#;
        assert_eq!(field(m, &seq), Some(42));
        assert_eq!(field(m, &at), Some(1_763_800_000_000_123));
        assert_eq!(field(br#"{"seq":-3}"#, &seq), Some(-3));
        assert_eq!(field(br#"{"seq":"x"}"#, &seq), None);
        assert_eq!(field(br#"{"type":"welcome"}"#, &at), None);
        assert_eq!(field(br#"{"seq":99999999999999999999}"#, &seq), None);
    }
}
