//! Helpers for the server tests: a dexpulse on 127.0.0.1:0 whose hub the test feeds directly
//! (deterministic: no source, no sleeping), real tokio-tungstenite clients, and real events.

use std::time::Duration;

use dexpulse::app::settings::{Config, RawConfig};
use dexpulse::app::{self, Running};
use dexpulse::model::{Direction, Kind, SignalEvent};
use dexpulse::signal::{Engine, Params};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests, as a file would spell it (the tests change what they need).
pub fn test_config() -> RawConfig {
    let mut c = RawConfig::default();
    c.server.bind = "127.0.0.1:0".into();
    c.server.shutdown_grace_seconds = 3.0;
    c
}

/// The test config with a history of exactly `events` (no time-based retention).
pub fn retaining(events: usize) -> RawConfig {
    let mut c = test_config();
    c.hub.retain_events = events;
    c.hub.retain_max_events = events;
    c.hub.retain_seconds = 0.0;
    c
}

/// A server on 127.0.0.1:0 with nothing feeding the engine: the test publishes.
pub async fn start(cfg: RawConfig) -> Running {
    start_with(
        cfg,
        app::Options {
            no_source: true,
            ..app::Options::default()
        },
    )
    .await
}

pub async fn start_with(cfg: RawConfig, opts: app::Options) -> Running {
    let cfg = Config::parse(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    app::start(cfg, listener, opts).unwrap()
}

/// A server fed by its configured source.
pub async fn start_sourced(cfg: RawConfig) -> Running {
    start_with(cfg, app::Options::default()).await
}

pub fn url(r: &Running, path: &str) -> String {
    format!("ws://{}{}", r.addr, path)
}

pub async fn connect(r: &Running) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url(r, "/v1/ws"))
        .await
        .unwrap();
    ws
}

/// The next text message, skipping pings and pongs; panics after `WAIT`.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message")
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Reads until the close frame; returns its code and reason, and the texts before it.
pub async fn until_close(ws: &mut Ws) -> (Option<(u16, String)>, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the close")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.as_str().to_string()),
            Some(Ok(Message::Close(c))) => {
                return (
                    c.map(|c| (u16::from(c.code), c.reason.as_str().to_string())),
                    texts,
                )
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (None, texts),
        }
    }
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Sends and returns the next message's JSON.
pub async fn ask(ws: &mut Ws, text: &str) -> serde_json::Value {
    send(ws, text).await;
    next_json(ws).await
}

/// `n` real events from the engine (rug warnings on distinct pairs), then reshaped per index
/// by `shape` so that filters have something to tell apart.
pub fn events(n: usize, shape: impl Fn(usize, &mut SignalEvent)) -> Vec<SignalEvent> {
    let mut engine = Engine::new(Params::default());
    let mut out = Vec::new();
    for i in 0..n {
        let mut s = dexpulse::source::simulator::example_snapshot();
        s.key.address = format!("p{i}");
        engine.observe(&s);
        let mut t = s.clone();
        t.observed_at_ms += 60_000;
        t.liquidity_base = t.liquidity_base.map(|b| b * 0.1);
        t.liquidity_quote = t.liquidity_quote.map(|q| q * 0.1);
        t.liquidity_usd = t.liquidity_usd.map(|l| l * 0.1);
        let mut ev = engine.observe(&t);
        // The rug warning, then the pair's stance turning bearish.
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].kind, dexpulse::model::Kind::Stance);
        let mut e = ev.remove(0);
        shape(i, &mut e);
        out.push(e);
    }
    out
}

pub fn plain(n: usize) -> Vec<SignalEvent> {
    events(n, |_, _| {})
}

/// Reshapes an event: chain, kind, direction, score.
pub fn set(e: &mut SignalEvent, chain: &str, kind: Kind, direction: Direction, score: u8) {
    e.chain = chain.into();
    e.kind = kind;
    e.direction = direction;
    e.score = score;
}

/// A plain HTTP/1.1 GET over loopback: status and body.
pub async fn http_get(r: &Running, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, head, body) = http_request(r, "GET", path, headers).await;
    assert!(!head.contains("transfer-encoding: chunked"), "{head}");
    (status, body)
}

/// A request with any method over loopback: the status, the head (lower-cased) and the body.
pub async fn http_request(
    r: &Running,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        r.addr
    );
    if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Waits until a condition on the server holds (polled every 10 ms), panicking after `WAIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric's value from the server's /metrics text (0 when absent).
pub fn metric(r: &Running, line_prefix: &str) -> f64 {
    r.state
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
