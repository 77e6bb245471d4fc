//! The cluster room against a real NATS server (Debian's `nats-server` with JetStream, on a
//! free port of 127.0.0.1 with a temporary store, started and stopped here): events published
//! with their ids, deduplicated on republish, read back by seq byte for byte, kept across a
//! server killed and restarted with its store (same epoch), a new epoch when the stream is
//! created anew. `.ci/run` installs the server; without it these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use dexpulse::cluster::{EventStream, RawSettings, Role, Settings};
use dexpulse::protocol::Epoch;

/// The passwords the shipped configuration reads from the environment, in these tests.
pub const INGEST_PASSWORD: &str = "ingest-test-password";
pub const EDGE_PASSWORD: &str = "edge-test-password";

/// The shipped nats-server configuration (config/nats/dexpulse.conf) with its listen address
/// and store moved to the test's: the accounts and permissions are the shipped ones.
pub(crate) fn shipped_config(store: &Path, port: u16) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/nats/dexpulse.conf"
    ))
    .unwrap();
    let conf: String = shipped
        .lines()
        .map(|l| {
            if l.starts_with("listen:") {
                format!("listen: 127.0.0.1:{port}")
            } else if l.trim_start().starts_with("store_dir:") {
                format!("  store_dir: \"{}\"", store.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(conf.contains(&format!("listen: 127.0.0.1:{port}")));
    std::fs::create_dir_all(store).unwrap();
    let path = store.with_extension("conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A `nats-server` on a free port with the shipped configuration, killed when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub store: PathBuf,
}

impl Nats {
    pub fn start(store: PathBuf) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Nats::start_on(store, port)
    }

    pub fn start_on(store: PathBuf, port: u16) -> Nats {
        let conf = shipped_config(&store, port);
        Nats::spawn(&["-c", conf.to_str().unwrap()], store, port)
    }

    /// A server with its own configuration (`{port}` and `{store}` filled in).
    pub fn start_with(conf: &str, store: PathBuf) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(&store).unwrap();
        let path = store.with_extension("conf");
        let text = conf
            .replace("{port}", &port.to_string())
            .replace("{store}", &store.display().to_string());
        std::fs::write(&path, text).unwrap();
        Nats::spawn(&["-c", path.to_str().unwrap()], store, port)
    }

    fn spawn(args: &[&str], store: PathBuf, port: u16) -> Nats {
        let log = std::fs::File::create(store.with_extension("log")).unwrap();
        let child = Command::new("nats-server")
            .args(args)
            .env("DEXPULSE_INGEST_PASSWORD", INGEST_PASSWORD)
            .env("DEXPULSE_EDGE_PASSWORD", EDGE_PASSWORD)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is needed (Debian's package; scripts/test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start: {}",
                std::fs::read_to_string(store.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port, store }
    }

    /// The address, without credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The address with a user of the shipped configuration and its password.
    pub fn url_as(&self, user: &str) -> String {
        let pw = if user == "ingest" {
            INGEST_PASSWORD
        } else {
            EDGE_PASSWORD
        };
        format!("nats://{user}:{pw}@127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no clean shutdown of the store.
    pub fn kill(mut self) -> (PathBuf, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.store.clone(), self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn store(name: &str) -> PathBuf {
    // Numbered: the same test runs on both runtimes at once.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!(
        "dexpulse-it-nats-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The cluster's key pair for this test binary (`dexpulse keygen`'s own code).
pub fn keys() -> &'static Path {
    static KEYS: OnceLock<PathBuf> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dexpulse-it-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dexpulse::cluster::trust::keygen(&dir).unwrap();
        dir
    })
}

/// An ingest's settings against `nats`: its user, its signing key.
pub(crate) fn settings(nats: &Nats) -> Settings {
    Settings::parse(&RawSettings {
        url: Some(nats.url_as("ingest")),
        role: Role::Ingest,
        signing_key_file: Some(keys().join("signing.key")),
        ..RawSettings::default()
    })
    .unwrap()
}

/// Whether the cluster tests can run here (they need nats-server).
pub(crate) fn nats_here(test: &str) -> bool {
    crate::support::requires(test, &[crate::support::Component::Nats])
}

pub(crate) fn payload(i: u64) -> Bytes {
    Bytes::from(format!(r#"{{"event_id":"e{i}","n":{i}}}"#))
}

on_both_runtimes! {
    async fn events_go_to_jetstream_once_each_and_outlive_a_killed_server() {
        if !nats_here("events_go_to_jetstream_once_each_and_outlive_a_killed_server") {
            return;
        }
        let nats = Nats::start(store("basic"));
        let s = EventStream::connect(&settings(&nats)).await.unwrap();
        let epoch = s.epoch().to_string();
        for i in 1..=50u64 {
            let p = s
                .publish(&format!("e{i}"), 1_000 + i as i64, (&Epoch::parse("local").unwrap(), i), payload(i))
                .await
                .unwrap();
            assert_eq!((p.seq, p.duplicate), (i, false));
        }
        // An ingest that crashed after publishing and publishes its last events again.
        for i in 41..=50u64 {
            let p = s
                .publish(&format!("e{i}"), 1_000 + i as i64, (&Epoch::parse("local").unwrap(), i), payload(i))
                .await
                .unwrap();
            assert_eq!((p.seq, p.duplicate), (i, true), "deduplicated by its id");
        }
        assert_eq!(s.bounds().await.unwrap(), (1, 50));
        for i in [1u64, 25, 50] {
            let m = s.get(i).await.unwrap().unwrap();
            assert_eq!(
                (m.seq, m.event_id, m.payload),
                (i, format!("e{i}"), payload(i))
            );
            assert_eq!(m.published_at_us, 1_000 + i as i64);
            assert_eq!(m.origin, Some(("local".to_string(), i)));
        }
        let range = s.range(20, 30).await.unwrap();
        assert_eq!(
            range.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (20..=30).collect::<Vec<_>>()
        );
        assert!(s.range(51, 60).await.unwrap().is_empty());
        assert!(s.get(51).await.unwrap().is_none());
        drop(s);

        // The server dies and comes back with its store: same stream, same epoch, seqs go on.
        let (dir, port) = nats.kill();
        let nats = Nats::start_on(dir, port);
        let s = EventStream::connect(&settings(&nats)).await.unwrap();
        assert_eq!(s.epoch().as_str(), epoch);
        assert_eq!(s.bounds().await.unwrap(), (1, 50));
        assert_eq!(s.get(50).await.unwrap().unwrap().payload, payload(50));
        assert_eq!(
            s.publish("e51", 0, (&Epoch::parse("local").unwrap(), 51), payload(51))
                .await
                .unwrap()
                .seq,
            51
        );
        drop(s);
        drop(nats);

        // A new store (the stream created anew): a new epoch, so clients know their seqs are void.
        let nats = Nats::start(store("basic-new"));
        let s = EventStream::connect(&settings(&nats)).await.unwrap();
        assert_ne!(s.epoch().as_str(), epoch);
        assert_eq!(
            s.publish("e1", 0, (&Epoch::parse("local").unwrap(), 1), payload(1))
                .await
                .unwrap()
                .seq,
            1
        );
    }
}

on_both_runtimes! {
    /// The ingest's pipelining rests on the server: an event that names a predecessor other than
    /// the stream's last message is refused and nothing is stored; a run of events sent before any
    /// acknowledgement, each naming the one before, is stored in order; resending the run after a
    /// refusal in its middle stores each event once. On both runtimes, as every cluster test.
    async fn pipelined_events_are_stored_in_order_and_a_lost_predecessor_refuses_the_rest() {
        if !nats_here("pipelined_events_are_stored_in_order_and_a_lost_predecessor_refuses_the_rest") {
            return;
        }
        let nats = Nats::start(store("pipelined"));
        let s = EventStream::connect(&settings(&nats)).await.unwrap();
        let send = |i: u64, after: Option<String>| {
            let s = s.clone();
            async move {
                let out = s.outgoing(&format!("e{i}"), i as i64, (Epoch::parse("local").unwrap(), i), payload(i));
                s.send(&out, after.as_deref()).await.unwrap()
            }
        };
        // 1 alone, then 2..=300 in flight together.
        send(1, None).await.acked().await.unwrap();
        let mut flight = Vec::new();
        for i in 2..=300u64 {
            flight.push(send(i, Some(format!("e{}", i - 1))).await);
        }
        for (n, p) in flight.into_iter().enumerate() {
            let a = p.acked().await.unwrap();
            assert_eq!((a.seq, a.duplicate), (n as u64 + 2, false));
        }
        // 302 names 301, which never went: refused, and so is 303 after it.
        let lost = send(302, Some("e301".to_string())).await;
        let next = send(303, Some("e302".to_string())).await;
        assert!(
            matches!(
                lost.acked().await,
                Err(dexpulse::cluster::ClusterError::OutOfOrder { .. })
            ),
            "an event ahead of a lost one is refused"
        );
        assert!(next.acked().await.is_err());
        assert_eq!(s.bounds().await.unwrap(), (1, 300));
        // Sent again from 299 (already stored: deduplicated) to 303.
        let mut flight = vec![send(299, None).await];
        for i in 300..=303u64 {
            flight.push(send(i, Some(format!("e{}", i - 1))).await);
        }
        let acks: Vec<_> = futures_util::future::join_all(flight.into_iter().map(|p| p.acked()))
            .await
            .into_iter()
            .map(|a| a.map(|a| (a.seq, a.duplicate)).unwrap())
            .collect();
        assert_eq!(
            acks,
            vec![
                (299, true),
                (300, true),
                (301, false),
                (302, false),
                (303, false)
            ]
        );
        let all = s.range(1, 303).await.unwrap();
        assert_eq!(all.len(), 303);
        for (n, m) in all.iter().enumerate() {
            assert_eq!(m.origin, Some(("local".to_string(), n as u64 + 1)));
            assert_eq!(m.payload, payload(n as u64 + 1));
        }
    }
}

on_both_runtimes! {
    async fn an_unreachable_server_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Settings::parse(&RawSettings {
            url: Some(format!("nats://127.0.0.1:{port}")),
            ..RawSettings::default()
        })
        .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), EventStream::connect(&s))
            .await
            .expect("connect gives up")
            .err()
            .expect("nobody listens");
        assert!(
            err.to_string().contains("DEXPULSE_EVENTS") || err.to_string().contains(&port.to_string()),
            "{err}"
        );
    }
}

// ---- The real binaries: one NATS server, one ingest, edges ----

use crate::cli::{get_json, http_status as http, signal, sigterm, spawn_serve_with, tmp, Reap};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// An edge keeps 100 frames in memory: a resume further back is read from the stream.
pub(crate) const EDGE: &str =
    "[server]\nbind = \"127.0.0.1:0\"\n[hub]\nretain_events = 100\nretain_seconds = 1.0\n";

/// An ingest fed by the bench source: synthetic events, 200 a second.
pub(crate) const INGEST: &str = "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"bench\"\n[source.bench]\nevents_per_second = 200.0\n[hub]\nretain_events = 100\nretain_seconds = 1.0\n";

type Ws = crate::server::Ws;
/// A WebSocket client, as the helpers here take it.
pub type WsClient = Ws;

/// How long a client waits for the next message: longer than a NATS restart takes.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// What a node of `role` is started with: its NATS user and its key.
pub(crate) fn cluster_env(nats: &Nats, role: &str) -> [(&'static str, String); 2] {
    let key = if role == "ingest" {
        ("DEXPULSE_CLUSTER__SIGNING_KEY_FILE", "signing.key")
    } else {
        ("DEXPULSE_CLUSTER__VERIFY_KEY_FILE", "verify.key")
    };
    [
        ("DEXPULSE_CLUSTER__URL", nats.url_as(role)),
        (key.0, keys().join(key.1).display().to_string()),
    ]
}

pub(crate) fn edge(name: &str, nats: &Nats) -> (Reap, String) {
    spawn_serve_with(name, EDGE, &cluster_env(nats, "edge"), &["--role", "edge"])
}

pub(crate) fn ingest(
    name: &str,
    nats: &Nats,
    data_dir: Option<&std::path::Path>,
) -> (Reap, String) {
    ingest_with(name, INGEST, nats, data_dir)
}

pub(crate) fn ingest_with(
    name: &str,
    config: &str,
    nats: &Nats,
    data_dir: Option<&std::path::Path>,
) -> (Reap, String) {
    let mut args = vec!["--role", "ingest"];
    let dir;
    if let Some(d) = data_dir {
        dir = d.display().to_string();
        args.extend(["--data-dir", dir.as_str()]);
    }
    spawn_serve_with(name, config, &cluster_env(nats, "ingest"), &args)
}

/// Polls `/readyz` until it says `want`, panicking after `PATIENCE`.
pub(crate) fn wait_ready(addr: &str, want: bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(addr, "/readyz");
        if (status == 200) == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr}: /readyz never became {want}: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The warnings and errors in the log of the process started with this config name.
pub(crate) fn warnings(name: &str) -> String {
    let log = std::fs::read_to_string(tmp(&format!("{name}.log"))).unwrap_or_default();
    let picked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    format!("\n{name}: {}", picked.join("\n"))
}

/// The warnings of every process this test binary started, for a failure to show.
pub(crate) fn all_warnings() -> String {
    let dir = tmp("x").parent().unwrap().to_path_buf();
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(cfg) = name.strip_suffix(".log") {
            out.push_str(&warnings(cfg));
        }
    }
    out
}

/// A metric's value from a process's /metrics (0 when absent).
pub(crate) fn metric_of(addr: &str, prefix: &str) -> f64 {
    http(addr, "/metrics")
        .1
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn open(addr: &str) -> (Ws, serde_json::Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    let welcome = next_frame(&mut ws).await;
    let welcome: serde_json::Value = serde_json::from_str(&welcome).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame, skipping pings; panics after `PATIENCE` or on a close.
pub(crate) async fn next_frame(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for a message{}", all_warnings()))
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Subscribes to signals (resuming after `seq` of `epoch` if given); returns the answer.
pub(crate) async fn subscribe(ws: &mut Ws, resume: Option<(&str, u64)>) -> serde_json::Value {
    let op = match resume {
        Some((epoch, seq)) => format!(
            r#"{{"op":"subscribe","channel":"signals","resume_from":{{"epoch":"{epoch}","seq":{seq}}}}}"#
        ),
        None => r#"{"op":"subscribe","channel":"signals"}"#.to_string(),
    };
    ws.send(Message::text(op)).await.unwrap();
    loop {
        let t = next_frame(ws).await;
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "signal" {
            return v;
        }
    }
}

/// The next `n` signal frames as (seq, text), other messages skipped; each seq must follow
/// the one before it exactly (`after` is the seq before the first).
pub(crate) async fn signals(ws: &mut Ws, after: u64, n: usize) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::with_capacity(n);
    let mut others = Vec::new();
    let mut last = after;
    while out.len() < n {
        let t = next_frame(ws).await;
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "gap" {
            panic!("a gap after {last}: {v}");
        }
        if v["type"] != "signal" {
            others.push(t);
            continue;
        }
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(
            seq,
            last + 1,
            "contiguous, once each: {seq} after {last}; other messages: {others:?}"
        );
        last = seq;
        out.push((seq, t));
    }
    out
}

on_both_runtimes! {
    /// The two edges serve one stream. Edges started before any ingest are ready and serve once
    /// it appears; a client on each, both resuming from the stream's start, get the same frames
    /// byte for byte with the same seqs (the first 300 are older than an edge's ring, so they are
    /// read from the stream). Then edge A is killed with SIGKILL, and its client resumes on edge
    /// B with the last seq it got: recovered, exact, the same bytes B's own client got.
    async fn two_edges_send_the_same_frames_and_a_client_resumes_on_the_other_after_a_sigkill() {
        if !nats_here(
            "two_edges_send_the_same_frames_and_a_client_resumes_on_the_other_after_a_sigkill",
        ) {
            return;
        }
        let _heavy = crate::support::heavy().await;
        let nats = Nats::start(store("edges"));
        let (mut edge_a, a) = edge("edge-a.toml", &nats);
        let (mut edge_b, b) = edge("edge-b.toml", &nats);
        // Only an ingest creates the stream: until one has, the edges serve nothing and say why.
        for addr in [&a, &b] {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let (status, body) = http(addr, "/readyz");
                assert_eq!(status, 503, "{body}");
                if body.contains("does not exist yet") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{body}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let (_, w) = open(&a).await;
        assert_eq!(w["head_seq"], 0, "nothing published yet: {w}");

        let (mut ingest, i) = ingest("ingest.toml", &nats, None);
        wait_ready(&i, true);
        wait_ready(&a, true);
        wait_ready(&b, true);
        let epoch = open(&a).await.1["epoch"].as_str().unwrap().to_string();
        assert_eq!(http(&i, "/v1/pairs").0, 404, "an ingest serves no clients");
        assert_eq!(http(&i, "/v1/ws").0, 404);

        // Let the stream run past an edge's ring before anyone subscribes.
        let deadline = std::time::Instant::now() + PATIENCE;
        while get_json(&b, "/v1/signals?limit=1")["head_seq"]
            .as_u64()
            .unwrap()
            < 400
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the edges see no events"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (mut on_a, wa) = open(&a).await;
        let (mut on_b, wb) = open(&b).await;
        assert_eq!(wa["epoch"], epoch.as_str(), "one epoch: the stream's");
        assert_eq!(wb["epoch"], epoch.as_str());
        for ws in [&mut on_a, &mut on_b] {
            let sub = subscribe(ws, Some((&epoch, 0))).await;
            assert_eq!(sub["type"], "subscribed", "{sub}");
            assert_eq!(sub["recovered"], true, "{sub}");
        }
        let from_a = signals(&mut on_a, 0, 600).await;
        let from_b = signals(&mut on_b, 0, 900).await;
        assert_eq!(
            &from_b[..600],
            &from_a[..],
            "identical bytes, identical seqs"
        );
        let v: serde_json::Value = serde_json::from_str(&from_a[0].1).unwrap();
        assert_eq!(v["event"]["source"], "bench", "{v}");

        // Edge A dies; its client goes to B with the last seq it got.
        assert_eq!(signal(&mut edge_a, "-KILL"), None);
        let last = from_a.last().unwrap().0;
        let (mut moved, w) = open(&b).await;
        assert_eq!(w["epoch"], epoch.as_str());
        let sub = subscribe(&mut moved, Some((&epoch, last))).await;
        assert_eq!(sub["recovered"], true, "{sub}");
        let after = signals(&mut moved, last, 400).await;
        assert_eq!(
            &after[..300],
            &from_b[600..],
            "what B's own client got, byte for byte"
        );
        drop(on_b);
        drop(moved);
        let acks = metric_of(&i, "dexpulse_cluster_publish_acks_total");
        assert!(acks >= 1000.0, "{acks} acks{}", warnings("ingest.toml"));
        assert_eq!(metric_of(&i, "dexpulse_cluster_unpublished_events"), 0.0);
        let delivered = metric_of(&b, "dexpulse_cluster_delivered_total");
        assert!(
            delivered >= 1000.0,
            "{delivered}: {}",
            http(&b, "/metrics")
                .1
                .lines()
                .filter(|l| l.starts_with("dexpulse_cluster"))
                .collect::<Vec<_>>()
                .join("\n")
                + &warnings("edge-b.toml")
        );
        assert_eq!(sigterm(&mut ingest), Some(0));
        assert_eq!(sigterm(&mut edge_b), Some(0));
    }
}

on_both_runtimes! {
    /// Faults. NATS is killed with SIGKILL and restarted on its store mid-stream: the edge's
    /// client keeps its session, the edge reports not ready meanwhile, and afterwards the client
    /// has every event once, in order, in the same epoch. Then the ingest is killed with SIGKILL
    /// and restarted on its data directory: the stream holds every event of its log once, in
    /// order (each message names the local seq it came from), with no event id twice.
    async fn nats_and_the_ingest_restarted_mid_stream_leave_no_gap_and_no_duplicate() {
        if !nats_here("nats_and_the_ingest_restarted_mid_stream_leave_no_gap_and_no_duplicate") {
            return;
        }
        let _heavy = crate::support::heavy().await;
        let nats = Nats::start(store("faults"));
        let data = tmp("cluster-ingest-data");
        let _ = std::fs::remove_dir_all(&data);
        let (mut ingest1, i) = ingest("ingest-f.toml", &nats, Some(&data));
        let (mut edge1, e) = edge("edge-f.toml", &nats);
        wait_ready(&i, true);
        wait_ready(&e, true);
        let (mut ws, w) = open(&e).await;
        let epoch = w["epoch"].as_str().unwrap().to_string();
        let sub = subscribe(&mut ws, Some((&epoch, 0))).await;
        assert_eq!(sub["recovered"], true, "{sub}");
        let mut got = signals(&mut ws, 0, 200).await;

        // NATS dies with its store on disk; the client reads on while it is away.
        let (dir, port) = nats.kill();
        wait_ready(&e, false);
        wait_ready(&i, false);
        std::thread::sleep(Duration::from_secs(1));
        let nats = Nats::start_on(dir, port);
        let last = got.last().unwrap().0;
        got.extend(signals(&mut ws, last, 800).await);
        wait_ready(&e, true);
        wait_ready(&i, true);
        let (_, w) = open(&e).await;
        assert_eq!(
            w["epoch"],
            epoch.as_str(),
            "a restarted server keeps the epoch"
        );

        // The ingest dies and restarts on its log.
        assert_eq!(signal(&mut ingest1, "-KILL"), None);
        let (mut ingest2, i) = ingest("ingest-f.toml", &nats, Some(&data));
        wait_ready(&i, true);
        let last = got.last().unwrap().0;
        got.extend(signals(&mut ws, last, 600).await);
        drop(ws);
        assert_eq!(sigterm(&mut ingest2), Some(0));
        assert_eq!(sigterm(&mut edge1), Some(0));

        let s = EventStream::connect(&settings(&nats)).await.unwrap();
        assert_eq!(s.epoch().as_str(), epoch);
        let (first, head) = s.bounds().await.unwrap();
        assert_eq!(first, 1);
        let all = s.range(1, head).await.unwrap();
        assert_eq!(all.len() as u64, head);
        let mut ids = std::collections::HashSet::new();
        let origin_epoch = all[0].origin.clone().unwrap().0;
        for (n, m) in all.iter().enumerate() {
            assert!(ids.insert(m.event_id.clone()), "{} twice", m.event_id);
            assert_eq!(
                m.origin,
                Some((origin_epoch.clone(), n as u64 + 1)),
                "the ingest's log, in order, once"
            );
        }
        // What the client got is what the stream holds.
        for (seq, text) in &got {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let m = &all[*seq as usize - 1];
            assert_eq!(v["event"]["event_id"], m.event_id.as_str());
        }
    }
}

on_both_runtimes! {
    /// Pair states reach the edges: an ingest running the simulator shares its pairs, an edge's
    /// `/v1/pairs` lists them (labelled simulated), and its `pairs` channel streams their updates.
    async fn an_edge_serves_the_pairs_the_ingest_tracks() {
        if !nats_here("an_edge_serves_the_pairs_the_ingest_tracks") {
            return;
        }
        let _heavy = crate::support::heavy().await;
        let nats = Nats::start(store("pairs"));
        let sim = "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"simulator\"\n[source.simulator]\nnoise_pairs = 5\n";
        let (mut ing, i) = ingest_with("ingest-sim.toml", sim, &nats, None);
        let (mut edge1, e) = edge("edge-p.toml", &nats);
        wait_ready(&i, true);
        wait_ready(&e, true);
        let deadline = std::time::Instant::now() + PATIENCE;
        let pairs = loop {
            let p = get_json(&e, "/v1/pairs");
            let list = p["pairs"].as_array().cloned().unwrap_or_default();
            if list.len() >= 5 {
                break list;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pairs on the edge: {p}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for p in &pairs {
            assert_eq!(
                (&p["chain"], &p["source"]),
                (&"sim".into(), &"simulator".into()),
                "{p}"
            );
            assert!(p["price_usd"].is_string() && p["r5"].is_number(), "{p}");
        }
        let (mut ws, _) = open(&e).await;
        ws.send(Message::text(r#"{"op":"subscribe","channel":"pairs"}"#))
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 5 {
            let v: serde_json::Value = serde_json::from_str(&next_frame(&mut ws).await).unwrap();
            if v["type"] == "pair" {
                assert_eq!(v["pair"]["source"], "simulator", "{v}");
                seen.insert(v["pair"]["pair_address"].as_str().unwrap().to_string());
            }
        }
        drop(ws);
        assert_eq!(sigterm(&mut ing), Some(0));
        assert_eq!(sigterm(&mut edge1), Some(0));
    }
}

on_both_runtimes! {
    /// The stream created anew (here: NATS restarted on an empty store) is a new epoch: the edge
    /// closes its sessions with 1012, and a client resuming with the old epoch is told
    /// `recovered: false`, then gets the new stream from its start.
    async fn a_stream_created_anew_is_a_new_epoch_at_the_edge() {
        if !nats_here("a_stream_created_anew_is_a_new_epoch_at_the_edge") {
            return;
        }
        let _heavy = crate::support::heavy().await;
        let nats = Nats::start(store("anew"));
        let (mut ing, i) = ingest("ingest-n.toml", &nats, None);
        let (mut edge1, e) = edge("edge-n.toml", &nats);
        wait_ready(&i, true);
        wait_ready(&e, true);
        let (mut ws, w) = open(&e).await;
        let old = w["epoch"].as_str().unwrap().to_string();
        let sub = subscribe(&mut ws, Some((&old, 0))).await;
        assert_eq!(sub["recovered"], true, "{sub}");
        let got = signals(&mut ws, 0, 100).await;

        let (_, port) = nats.kill();
        let nats = Nats::start_on(store("anew-2"), port);
        let closed = loop {
            match tokio::time::timeout(PATIENCE, ws.next())
                .await
                .expect("the edge closes the session")
            {
                Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                other => panic!("expected a close, got {other:?}"),
            }
        };
        assert_eq!(closed, Some(1012));
        wait_ready(&e, true);
        let (mut ws, w) = open(&e).await;
        let epoch = w["epoch"].as_str().unwrap().to_string();
        assert_ne!(epoch, old);
        let sub = subscribe(&mut ws, Some((&old, got.last().unwrap().0))).await;
        assert_eq!(sub["recovered"], false, "{sub}");
        assert_eq!(sub["oldest_seq"], 1, "{sub}");
        drop(ws);
        drop(nats);
        assert_eq!(sigterm(&mut ing), Some(0));
        assert_eq!(sigterm(&mut edge1), Some(0));
    }
}
