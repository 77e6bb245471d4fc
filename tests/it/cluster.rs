//! The cluster room against a real NATS server (Debian's `nats-server` with JetStream, on a
//! free port of 127.0.0.1 with a temporary store, started and stopped here): events published
//! with their ids, deduplicated on republish, read back by seq byte for byte, kept across a
//! server killed and restarted with its store (same epoch), a new epoch when the stream is
//! created anew. `.ci/run` installs the server; without it these tests fail, they never skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use dexpulse::cluster::{EventStream, RawSettings, Settings};

/// A `nats-server -js` on a free port, killed when dropped.
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
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is needed (Debian's package; .ci/run installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port, store }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

fn store(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dexpulse-it-nats-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn settings(nats: &Nats) -> Settings {
    Settings::parse(&RawSettings {
        url: Some(nats.url()),
        ..RawSettings::default()
    })
    .unwrap()
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!(r#"{{"event_id":"e{i}","n":{i}}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_jetstream_once_each_and_outlive_a_killed_server() {
    let nats = Nats::start(store("basic"));
    let s = EventStream::connect(&settings(&nats)).await.unwrap();
    let epoch = s.epoch().to_string();
    for i in 1..=50u64 {
        let p = s
            .publish(&format!("e{i}"), 1_000 + i as i64, ("local", i), payload(i))
            .await
            .unwrap();
        assert_eq!((p.seq, p.duplicate), (i, false));
    }
    // An ingest that crashed after publishing and publishes its last events again.
    for i in 41..=50u64 {
        let p = s
            .publish(&format!("e{i}"), 1_000 + i as i64, ("local", i), payload(i))
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
    assert_eq!(s.epoch(), epoch);
    assert_eq!(s.bounds().await.unwrap(), (1, 50));
    assert_eq!(s.get(50).await.unwrap().unwrap().payload, payload(50));
    assert_eq!(
        s.publish("e51", 0, ("local", 51), payload(51))
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
    assert_ne!(s.epoch(), epoch);
    assert_eq!(
        s.publish("e1", 0, ("local", 1), payload(1))
            .await
            .unwrap()
            .seq,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
