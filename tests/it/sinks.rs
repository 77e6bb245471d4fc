//! The alert sinks against real local HTTP servers: a webhook receiver that verifies Standard
//! Webhooks signatures, and stand-ins answering as Telegram's Bot API and a Discord webhook do,
//! 429s included. Ordered delivery of a filtered stream, a receiver down then back, a SIGKILL
//! mid-backlog, a dead letter, `Retry-After` honoured, a digest under a burst.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dexpulse::app::settings::RawConfig;
use dexpulse::model::{Direction, Kind};
use dexpulse::sink::webhook::Secret;
use dexpulse::sinks::{ChatId, RawSink};
use serde_json::Value;

use crate::server::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// Whether the Standard Webhooks signature is the test secret's for this request.
    fn verified(&self) -> bool {
        let ts: i64 = self.header("webhook-timestamp").parse().unwrap_or(0);
        Secret::parse(SECRET).unwrap().verify(
            self.header("webhook-id"),
            ts,
            &self.body,
            self.header("webhook-signature"),
        )
    }
}

/// What a receiver answers: status, headers, body, and how long it takes.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            ..Reply::ok(body)
        }
    }
}

type Decide = Arc<dyn Fn(usize, &Got) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Got>>>,
    seen: Arc<Mutex<usize>>,
    decide: Decide,
}

/// A real HTTP server on 127.0.0.1:0 that records every request and answers as `decide` says
/// (called with the request's number, from 0). Only requests answered 2xx are kept in `got`.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
}

async fn handle(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let got = Got {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body,
    };
    let n = {
        let mut seen = s.seen.lock().unwrap();
        *seen += 1;
        *seen - 1
    };
    let reply = (s.decide)(n, &got);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if (200..300).contains(&reply.status) {
        s.got.lock().unwrap().push(got);
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

impl Receiver {
    pub async fn start(decide: impl Fn(usize, &Got) -> Reply + Send + Sync + 'static) -> Receiver {
        let shared = Shared {
            got: Arc::default(),
            seen: Arc::default(),
            decide: Arc::new(decide),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, shared }
    }

    pub fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        *self.shared.seen.lock().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn secret_file(name: &str) -> PathBuf {
    let p = crate::cli::tmp(&format!("sink-{name}.whsec"));
    std::fs::write(&p, SECRET).unwrap();
    p
}

fn webhook(name: &str, url: String) -> RawSink {
    RawSink {
        name: name.into(),
        kind: "webhook".into(),
        url: Some(url),
        secret_file: Some(secret_file(name)),
        retry_min_seconds: Some(0.01),
        retry_max_seconds: Some(0.05),
        ..RawSink::default()
    }
}

fn with_sinks(mut c: RawConfig, sinks: Vec<RawSink>, data_dir: Option<PathBuf>) -> RawConfig {
    c.sinks = sinks;
    c.store.data_dir = data_dir;
    c
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dexpulse-it-sinks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn sinks_status(r: &dexpulse::app::Running) -> Value {
    let (status, body) = http_get(r, "/v1/sinks", &[]).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until every sink has read its start (events published before that would be behind
/// its starting cursor).
async fn sinks_started(r: &dexpulse::app::Running) {
    for _ in 0..500 {
        let s = sinks_status(r).await;
        if s["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] != "starting")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the sinks did not start");
}

/// Waits until the first sink's status satisfies `cond`, and returns it.
async fn sink_when(r: &dexpulse::app::Running, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = sinks_status(r).await["sinks"][0].clone();
        if cond(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out; the sink: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 60 events: kinds, directions and scores in turn, so that a filter keeps some of them.
fn mixed() -> Vec<dexpulse::model::SignalEvent> {
    events(60, |i, e| {
        let (kind, dir) = [
            (Kind::RugWarning, Direction::Bearish),
            (Kind::MomentumUp, Direction::Bullish),
            (Kind::VolumeSurge, Direction::Neutral),
        ][i % 3];
        set(e, "base", kind, dir, (30 + (i * 7) % 70) as u8);
    })
}

#[tokio::test]
async fn a_filtered_stream_reaches_a_webhook_in_order_and_signed() {
    let rx = Receiver::start(|_, _| Reply::status(204, "")).await;
    let mut sink = webhook("ordered", rx.url("/hook"));
    sink.filter =
        Some(toml::from_str("kinds = [\"rug_warning\", \"momentum_up\"]\nmin_score = 50").unwrap());
    let r = start(with_sinks(retaining(1000), vec![sink], None)).await;
    sinks_started(&r).await;
    let evs = mixed();
    let published = r.hub().publish(&evs);
    let want: Vec<(u64, String)> = evs
        .iter()
        .zip(published.iter())
        .filter(|(e, _)| matches!(e.kind, Kind::RugWarning | Kind::MomentumUp) && e.score >= 50)
        .map(|(e, f)| (f.seq, e.event_id.clone()))
        .collect();
    assert!(
        want.len() > 5 && want.len() < 40,
        "the filter keeps some: {}",
        want.len()
    );
    until("every matching event", || rx.got().len() >= want.len()).await;
    let got = rx.got();
    let seen: Vec<(u64, String)> = got
        .iter()
        .map(|g| {
            (
                g.json()["seq"].as_u64().unwrap(),
                g.header("webhook-id").to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen, want,
        "in seq order, the event id as webhook-id, nothing else"
    );
    for g in &got {
        assert!(
            g.verified(),
            "a valid Standard Webhooks signature: {:?}",
            g.headers
        );
        assert_eq!(g.header("content-type"), "application/json");
        let v = g.json();
        // The body is the message WebSocket clients get.
        assert_eq!(v["type"], "signal");
        assert_eq!(v["event"]["event_id"], g.header("webhook-id"));
    }
    let s = sink_when(&r, |s| s["delivered"] == want.len() && s["lag_seqs"] == 0).await;
    assert_eq!(s["name"], "ordered");
    assert_eq!(s["kind"], "webhook");
    assert_eq!(s["cursor"], published.last().unwrap().seq);
    assert_eq!(s["durable"], false);
    assert_eq!(
        metric(&r, "dexpulse_sink_delivered_total{sink=\"ordered\"}"),
        want.len() as f64
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_receiver_down_for_a_while_then_back_gets_every_event_in_order() {
    // The first 25 requests fail (503, then connection-level 500s), then the receiver is back.
    let rx = Receiver::start(|n, _| {
        if n < 25 {
            Reply::status(if n % 2 == 0 { 503 } else { 500 }, "down")
        } else {
            Reply::status(200, "")
        }
    })
    .await;
    let mut sink = webhook("down", rx.url("/hook"));
    sink.max_attempts = Some(1_000);
    let r = start(with_sinks(retaining(1000), vec![sink], None)).await;
    sinks_started(&r).await;
    let published = r.hub().publish(&plain(20));
    until("every event", || rx.got().len() >= 20).await;
    let seqs: Vec<u64> = rx
        .got()
        .iter()
        .map(|g| g.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, published.iter().map(|f| f.seq).collect::<Vec<_>>());
    assert!(rx.requests() >= 45, "25 failures retried");
    let s = &sinks_status(&r).await["sinks"][0];
    assert_eq!(s["retried"], 25);
    assert_eq!(s["dead_lettered"], 0);
    assert!(
        s["last_error"].as_str().unwrap().starts_with("HTTP 50"),
        "{s}"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permanently_failing_event_is_dead_lettered_and_the_rest_delivered() {
    let evs = plain(10);
    let poison = evs[4].event_id.clone();
    let p = poison.clone();
    let rx = Receiver::start(move |_, g| {
        if g.header("webhook-id") == p {
            Reply::status(400, "we do not take this one")
        } else {
            Reply::status(200, "")
        }
    })
    .await;
    let dir = data_dir("dead");
    let mut sink = webhook("dead", rx.url("/hook"));
    sink.max_attempts = Some(3);
    let r = start(with_sinks(retaining(100), vec![sink], Some(dir.clone()))).await;
    sinks_started(&r).await;
    let published = r.hub().publish(&evs);
    until("the nine others", || rx.got().len() >= 9).await;
    let seqs: Vec<u64> = rx
        .got()
        .iter()
        .map(|g| g.json()["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = published
        .iter()
        .map(|f| f.seq)
        .filter(|s| *s != published[4].seq)
        .collect();
    assert_eq!(seqs, want);
    assert_eq!(rx.requests(), 9 + 3, "the poison tried three times");
    let dead = std::fs::read_to_string(dir.join("sinks/dead.dead.jsonl")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["event_id"], poison.as_str());
    assert_eq!(lines[0]["seq"], published[4].seq);
    assert_eq!(lines[0]["attempts"], 3);
    assert!(lines[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("HTTP 400: we do not take this one"));
    assert_eq!(lines[0]["message"]["event"]["event_id"], poison.as_str());
    let s = sink_when(&r, |s| s["delivered"] == 9).await;
    assert_eq!(s["dead_lettered"], 1);
    assert_eq!(s["durable"], true);
    assert_eq!(
        metric(&r, "dexpulse_sink_dead_lettered_total{sink=\"dead\"}"),
        1.0
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn telegram_429_is_honoured_and_the_message_says_what_happened() {
    let token_file = crate::cli::tmp("sink-tg.token");
    std::fs::write(&token_file, "123:TOKEN").unwrap();
    let rx = Receiver::start(|n, g| {
        assert_eq!(g.path, "/bot123:TOKEN/sendMessage");
        if n == 0 {
            Reply::status(
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}}"#,
            )
        } else {
            Reply::ok(r#"{"ok":true,"result":{"message_id":1}}"#)
        }
    })
    .await;
    let sink = RawSink {
        name: "tg".into(),
        kind: "telegram".into(),
        bot_token_file: Some(token_file),
        chat_id: Some(ChatId::Id(-10042)),
        api_base_url: Some(rx.url("")),
        retry_min_seconds: Some(0.01),
        ..RawSink::default()
    };
    let r = start(with_sinks(retaining(100), vec![sink], None)).await;
    sinks_started(&r).await;
    let evs = events(1, |_, e| {
        set(e, "base", Kind::RugWarning, Direction::Bearish, 90)
    });
    let published = r.hub().publish(&evs);
    until("the message", || !rx.got().is_empty()).await;
    assert_eq!(rx.requests(), 2);
    // The 429 is not kept in `got`: the delivered request came at least the second Telegram
    // asked for after it.
    let s = sink_when(&r, |s| s["delivered"] == 1).await;
    assert_eq!(s["retried"], 1);
    let got = &rx.got()[0];
    let last_error_at = s["last_error_at_us"].as_i64().unwrap();
    let delivered_at = s["last_delivered_at_us"].as_i64().unwrap();
    assert!(
        delivered_at - last_error_at >= 1_000_000,
        "retry_after 1 s honoured: {}",
        delivered_at - last_error_at
    );
    let body = got.json();
    assert_eq!(body["chat_id"], -10042);
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("BEARISH rug_warning"), "{text}");
    assert!(
        text.contains(&format!("seq {}", published[0].seq)),
        "{text}"
    );
    assert!(text.contains(&evs[0].event_id), "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_burst_to_discord_becomes_digests_not_a_queue_and_its_429_is_honoured() {
    let rx = Receiver::start(|n, g| {
        let v: Value = serde_json::from_slice(&g.body).unwrap();
        // No mention is ever parsed: an upstream string cannot ping the channel.
        assert_eq!(v["allowed_mentions"]["parse"], serde_json::json!([]));
        if n == 0 {
            // Discord's own answer to a webhook over its limit.
            Reply::status(
                429,
                r#"{"message": "You are being rate limited.", "retry_after": 0.5, "global": false}"#,
            )
        } else {
            Reply::status(204, "")
        }
    })
    .await;
    let sink = RawSink {
        name: "dc".into(),
        kind: "discord".into(),
        url: Some(rx.url("/api/webhooks/1/SECRET")),
        rate_per_minute: Some(60.0),
        burst: Some(1.0),
        digest_max: Some(20),
        ..RawSink::default()
    };
    let r = start(with_sinks(retaining(1000), vec![sink], None)).await;
    sinks_started(&r).await;
    let published = r.hub().publish(&plain(50));
    until("every event in some message", || {
        rx.got()
            .iter()
            .map(|g| {
                g.json()["content"]
                    .as_str()
                    .unwrap()
                    .matches("seq ")
                    .count()
            })
            .sum::<usize>()
            >= 50
    })
    .await;
    let got = rx.got();
    assert!(
        got.len() <= 4,
        "50 events in a few digests, not 50 messages: {}",
        got.len()
    );
    let mut seen = Vec::new();
    for g in &got {
        let text = g.json()["content"].as_str().unwrap().to_string();
        assert!(text.chars().count() <= 2_000);
        assert!(text.starts_with("dexpulse digest: "), "{text}");
        for line in text.lines().filter(|l| l.starts_with("• ")) {
            let seq: u64 = line.rsplit("seq ").next().unwrap().trim().parse().unwrap();
            seen.push(seq);
        }
    }
    assert_eq!(
        seen,
        published.iter().map(|f| f.seq).collect::<Vec<_>>(),
        "each once, in order"
    );
    let status = sinks_status(&r).await;
    let s = &status["sinks"][0];
    assert_eq!(s["retried"], 1, "the 429 was tried again: {s}");
    assert_eq!(s["receiver"], "http://127.0.0.1/…");
    assert!(!status.to_string().contains("SECRET"));
    r.shutdown().await.unwrap();
}

/// The process killed with SIGKILL while its webhook receiver is behind, then started again:
/// every event is delivered at least once, and a duplicate only for the delivery that was in
/// flight, with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_backlog_loses_nothing() {
    // A slow receiver: the backlog grows while the bench source publishes 300 events/s.
    let rx = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(5),
        ..Reply::status(200, "")
    })
    .await;
    let dir = data_dir("sigkill");
    let secret = secret_file("sigkill");
    let config = |rate: f64| {
        format!(
            r#"[server]
bind = "127.0.0.1:0"
[source]
kind = "bench"
[source.bench]
events_per_second = {rate}
pairs = 10
[store]
data_dir = "{}"
"#,
            dir.display()
        )
    };
    // The sinks' list from the environment, as TOML.
    let sinks = format!(
        r#"[{{name = "hook", kind = "webhook", url = "{}", secret_file = "{}", retry_min_seconds = 0.01}}]"#,
        rx.url("/hook"),
        secret.display()
    );
    let env = [("DEXPULSE_SINKS", sinks)];
    let (mut first, addr) = crate::cli::spawn_serve_with("sinks-kill-1", &config(300.0), &env, &[]);
    until("a backlog", || rx.got().len() >= 100).await;
    let status: Value = serde_json::from_str(
        &reqwest::get(format!("http://{addr}/v1/sinks"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        status["sinks"][0]["lag_seqs"].as_u64().unwrap() > 0,
        "killed mid-backlog: {status}"
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let before_restart = rx.got().len();
    // Started again with (nearly) nothing new: the backlog is what was left.
    let (_second, addr) = crate::cli::spawn_serve_with("sinks-kill-2", &config(0.001), &env, &[]);
    let url = format!("http://{addr}/v1/sinks");
    let mut head = 0;
    for _ in 0..1500 {
        let s: Value =
            serde_json::from_str(&reqwest::get(&url).await.unwrap().text().await.unwrap()).unwrap();
        let s = &s["sinks"][0];
        head = s["head"].as_u64().unwrap_or(0);
        if head > 0 && s["cursor"] == head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        head as usize > before_restart,
        "the backlog outlived the kill"
    );
    let got = rx.got();
    let mut by_seq: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for g in &got {
        assert!(g.verified());
        by_seq
            .entry(g.json()["seq"].as_u64().unwrap())
            .or_default()
            .push(g.header("webhook-id").to_string());
    }
    let missing: Vec<u64> = (1..=head).filter(|s| !by_seq.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let dups: Vec<(&u64, &Vec<String>)> = by_seq.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        dups.len() <= 1,
        "duplicates beyond the one in flight: {dups:?}"
    );
    for (_, ids) in dups {
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "a duplicate keeps its webhook-id: {ids:?}"
        );
    }
    // In order: the first delivery of each seq came after the one before it.
    let firsts: Vec<u64> = {
        let mut seen = std::collections::HashSet::new();
        got.iter()
            .map(|g| g.json()["seq"].as_u64().unwrap())
            .filter(|s| seen.insert(*s))
            .collect()
    };
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "in seq order");
}

/// The next line a child printed, awaited (the server on this runtime runs meanwhile).
async fn line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a line in time")
        .expect("the child is running")
}

/// The Python receiver of `examples/` (standard library only) takes what dexpulse signs, acts
/// on each event once, and refuses a request whose signature is not the secret's.
#[tokio::test]
async fn the_python_example_verifies_our_signatures_and_refuses_a_forgery() {
    use std::io::{BufRead, BufReader};
    let secret = secret_file("python");
    let mut child = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/webhook_receiver.py"
        ))
        .arg("0")
        .arg(&secret)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the example");
    let stdout = child.stdout.take().unwrap();
    let _reap = crate::cli::Reap(child);
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let listening = line(&mut lines).await;
    let addr = listening
        .strip_prefix("listening on ")
        .expect("its address")
        .to_string();
    let r = start(with_sinks(
        retaining(100),
        vec![webhook("python", format!("http://{addr}/hook"))],
        None,
    ))
    .await;
    sinks_started(&r).await;
    let evs = plain(3);
    let published = r.hub().publish(&evs);
    for (e, f) in evs.iter().zip(&published) {
        assert_eq!(
            line(&mut lines).await,
            format!("event {} {} {}", f.seq, e.kind.as_str(), e.event_id)
        );
    }
    // A forgery: the right id and a fresh timestamp, signed with another secret.
    let other = Secret::parse("whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = published[0].text.clone();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/hook"))
        .header("webhook-id", "forged")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", other.sign("forged", ts, &body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(line(&mut lines).await, "refused forged");
    r.shutdown().await.unwrap();
}

/// A sink on an edge keeps its cursor in the stream's epoch. The edge starts in a placeholder
/// epoch and adopts the stream's when it connects: a new sink starts at the stream's head, and
/// after a restart the sink continues from its saved cursor (reading what the edge's memory no
/// longer holds from the stream), instead of delivering the stream again from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_sink_starts_at_the_head_and_continues_from_its_cursor_after_a_restart() {
    use crate::cluster::{cluster_env, ingest, nats_here, store, wait_ready, Nats, EDGE};
    if !nats_here("an_edge_sink_starts_at_the_head_and_continues_from_its_cursor_after_a_restart") {
        return;
    }
    let _heavy = crate::support::heavy().await;
    let nats = Nats::start(store("sink-edge"));
    let rx = Receiver::start(|_, _| Reply::status(200, "")).await;
    let (mut ing, i) = ingest("sink-ingest.toml", &nats, None);
    wait_ready(&i, true);
    let dir = data_dir("edge");
    let mut env: Vec<(&str, String)> = cluster_env(&nats, "edge").into_iter().collect();
    env.push((
        "DEXPULSE_SINKS",
        format!(
            r#"[{{name = "hook", kind = "webhook", url = "{}", secret_file = "{}"}}]"#,
            rx.url("/hook"),
            secret_file("edge").display()
        ),
    ));
    env.push(("DEXPULSE_STORE__DATA_DIR", dir.display().to_string()));
    let seqs = |rx: &Receiver| -> Vec<u64> {
        rx.got()
            .iter()
            .map(|g| g.json()["seq"].as_u64().unwrap())
            .collect()
    };
    // The stream holds a history before the edge starts (the ingest publishes 200 events/s).
    let mut published = 0;
    while published < 150 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        published = crate::cli::get_json(&i, "/readyz")["head_seq"]
            .as_u64()
            .unwrap_or(0);
    }
    let (mut first, _) =
        crate::cli::spawn_serve_with("sink-edge-1.toml", EDGE, &env, &["--role", "edge"]);
    until("deliveries from the edge", || rx.got().len() >= 100).await;
    let before = seqs(&rx);
    assert!(
        before[0] > published,
        "a new sink starts at the stream's head ({published} or later), not its start: {}",
        before[0]
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // More than the edge's memory (100 events) is published while it is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What the first edge delivered up to its end (it went on between `before` and the kill;
    // a request it had sent is recorded by now).
    let delivered = seqs(&rx);
    let last = *delivered.last().unwrap();
    let (_second, _) =
        crate::cli::spawn_serve_with("sink-edge-2.toml", EDGE, &env, &["--role", "edge"]);
    until("deliveries after the restart", || {
        seqs(&rx).last().is_some_and(|s| *s > last + 400)
    })
    .await;
    let all = seqs(&rx);
    let after = &all[delivered.len()..];
    // Continued from the cursor: at most the delivery in flight again, then every seq in order.
    assert!(
        after[0] >= last,
        "redelivered from {} after {last}",
        after[0]
    );
    assert!(
        after[0] <= last + 1,
        "a gap after the restart: {} after {last}",
        after[0]
    );
    let want: Vec<u64> = (after[0]..after[0] + after.len() as u64).collect();
    assert_eq!(after, want.as_slice(), "in order, no gap");
    assert_eq!(crate::cli::sigterm(&mut ing), Some(0));
}
