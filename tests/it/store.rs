//! The event log through the server (docs/store.md): paging `/v1/signals` through the file
//! (forwards, backwards, the latest N, filtered, with cursors), retention by age and by size,
//! a resume of 100,000 events to a filtered client without a 4008, and a full disk (a real
//! tmpfs filled to the brim): publishing stops, `/readyz` says why, nothing committed is lost,
//! and it recovers by itself when space comes back.

use std::path::PathBuf;
use std::time::Duration;

use dexpulse::app;
use dexpulse::model::{Direction, EventMeta, Kind, PairKey};
use dexpulse::time::Clock;
use futures_util::StreamExt;
use serde_json::Value;

use crate::server::*;

fn dir(name: &str) -> PathBuf {
    // Numbered: the same test runs on both runtimes at once.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!(
        "dexpulse-it-store-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const KINDS: [(Kind, Direction); 3] = [
    (Kind::RugWarning, Direction::Bearish),
    (Kind::MomentumUp, Direction::Bullish),
    (Kind::VolumeSurge, Direction::Neutral),
];

/// Event `i` of a test stream: small, what filters read, one of three kinds in turn.
fn ev(i: u64) -> (EventMeta, String) {
    let (kind, direction) = KINDS[(i % 3) as usize];
    let pair = format!("p{}", i % 17);
    let json = format!(
        r#"{{"chain":"sim","pair_address":"{pair}","kind":"{}","direction":"{}","score":{},"n":{i}}}"#,
        kind.as_str(),
        direction.as_str(),
        40 + i % 60
    );
    (
        EventMeta {
            pair: PairKey::new("sim", pair),
            kind,
            direction,
            score: (40 + i % 60) as u8,
        },
        json,
    )
}

fn publish(r: &app::Running, from: u64, to: u64, batch: u64) -> u64 {
    let mut published = 0;
    let mut i = from;
    while i <= to {
        let end = (i + batch - 1).min(to);
        published += r
            .hub()
            .publish_serialized((i..=end).map(ev).collect())
            .len() as u64;
        i = end + 1;
    }
    published
}

fn durable(d: &std::path::Path) -> dexpulse::app::settings::RawConfig {
    let mut c = retaining(100);
    c.store.data_dir = Some(d.to_path_buf());
    c
}

fn seqs(v: &Value) -> Vec<u64> {
    v["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect()
}

async fn get(r: &app::Running, path: &str) -> Value {
    let (status, body) = http_get(r, path, &[]).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

on_both_runtimes! {
    async fn signals_page_through_the_log_on_disk_both_ways() {
        let d = dir("paging");
        let r = start(durable(&d)).await;
        assert_eq!(publish(&r, 1, 10_000, 250), 10_000);
        // Forwards, 1,000 at a time, following next_since: every seq once, from the file.
        let (mut all, mut since) = (Vec::new(), 0);
        loop {
            let v = get(&r, &format!("/v1/signals?since={since}&limit=1000")).await;
            let s = seqs(&v);
            if s.is_empty() {
                break;
            }
            since = v["next_since"].as_u64().unwrap();
            assert_eq!(since, *s.last().unwrap());
            all.extend(s);
        }
        assert_eq!(all, (1..=10_000).collect::<Vec<_>>());
        // Backwards from the head, following next_before.
        let mut back = Vec::new();
        let mut before = u64::MAX;
        loop {
            let v = get(&r, &format!("/v1/signals?before={before}&limit=700")).await;
            let s = seqs(&v);
            if s.is_empty() {
                break;
            }
            assert!(s.windows(2).all(|w| w[0] < w[1]), "oldest first in a page");
            before = v["next_before"].as_u64().unwrap();
            assert_eq!(before, s[0]);
            back.extend(s.into_iter().rev());
        }
        back.reverse();
        assert_eq!(back, all);
        // The latest N, and a filter over the whole file.
        let v = get(&r, "/v1/signals?latest=5").await;
        assert_eq!(seqs(&v), [9996, 9997, 9998, 9999, 10000]);
        let v = get(&r, "/v1/signals?latest=4&kind=momentum_up").await;
        assert_eq!(seqs(&v), [9991, 9994, 9997, 10000]);
        let v = get(
            &r,
            "/v1/signals?since=10&before=30&limit=1000&kind=rug_warning",
        )
        .await;
        assert_eq!(seqs(&v), [12, 15, 18, 21, 24, 27]);
        let v = get(
            &r,
            "/v1/signals?since=0&limit=1000&kind=volume_surge&min_score=98",
        )
        .await;
        let want: Vec<u64> = (1..=10_000u64)
            .filter(|i| i % 3 == 2 && 40 + i % 60 >= 98)
            .take(1000)
            .collect();
        assert_eq!(seqs(&v), want);
        // The bytes read back from the file are the bytes sent.
        let v = get(&r, "/v1/signals?since=41&limit=1").await;
        let (_, body) = http_get(&r, "/v1/signals?since=41&limit=1", &[]).await;
        assert_eq!(seqs(&v), [42]);
        assert!(body.contains("{\"type\":\"signal\",\"seq\":42,\"published_at_us\":"));
        assert!(body.contains(&ev(42).1));
        for bad in [
            "/v1/signals?latest=5&since=3",
            "/v1/signals?latest=0",
            "/v1/signals?latest=1001",
            "/v1/signals?limit=0",
            "/v1/signals?before=0",
            "/v1/signals?before=x",
        ] {
            let (status, _) = http_get(&r, bad, &[]).await;
            assert_eq!(status, 400, "{bad}");
        }
        r.shutdown().await.unwrap();
    }
}

on_both_runtimes! {
    async fn retention_trims_by_age_and_by_size_and_keeps_the_head() {
        let d = dir("retention");
        let clock = Clock::manual(1_795_000_000_000);
        let mut cfg = durable(&d);
        cfg.store.retain_hours = 1.0;
        cfg.store.max_megabytes = 1.0;
        let r = start_with(
            cfg,
            app::Options {
                no_source: true,
                clock: clock.clone(),
            },
        )
        .await;
        publish(&r, 1, 1000, 100);
        clock.advance(Duration::from_secs(1800));
        publish(&r, 1001, 2000, 100);
        clock.advance(Duration::from_secs(1801));
        // The first thousand are now older than an hour; the rest are not.
        let hub = r.hub().clone();
        tokio::task::spawn_blocking(move || hub.maintain())
            .await
            .unwrap();
        let v = get(&r, "/v1/signals?since=0&limit=10").await;
        assert_eq!(
            (v["oldest_seq"].as_u64(), v["head_seq"].as_u64()),
            (Some(1001), Some(2000))
        );
        assert_eq!(seqs(&v)[0], 1001);
        assert_eq!(metric(&r, "dexpulse_log_trimmed_events_total"), 1000.0);

        // By size: about 190 bytes a frame, so 1 MiB holds about 5,500; write 20,000 more.
        publish(&r, 2001, 22_000, 500);
        let hub = r.hub().clone();
        tokio::task::spawn_blocking(move || hub.maintain())
            .await
            .unwrap();
        let stored = metric(&r, "dexpulse_log_stored_bytes");
        assert!(stored <= 1024.0 * 1024.0, "{stored}");
        assert!(
            stored > 512.0 * 1024.0,
            "not trimmed far below the cap: {stored}"
        );
        let oldest = metric(&r, "dexpulse_log_oldest_seq") as u64;
        assert!(oldest > 10_000 && oldest < 20_000, "{oldest}");
        let v = get(&r, "/v1/signals?since=0&limit=3").await;
        assert_eq!(seqs(&v), [oldest, oldest + 1, oldest + 2]);
        assert_eq!(v["head_seq"], 22_000);
        r.shutdown().await.unwrap();
        // The head survives trimming, and a restart. Under the same clock: to a real one these
        // events are weeks old, and the first upkeep would trim them all.
        let r = start_with(
            durable(&d),
            app::Options {
                no_source: true,
                clock: clock.clone(),
            },
        )
        .await;
        assert_eq!(r.hub().head_seq(), 22_000);
        assert_eq!(r.hub().oldest_seq(), oldest);
        r.shutdown().await.unwrap();
    }
}

on_both_runtimes! {
    async fn a_resume_of_100000_events_reaches_a_filtered_client_without_a_4008() {
        let d = dir("resume");
        let mut cfg = durable(&d);
        // A small outbox: the resume must be streamed at the client's pace, not queued.
        cfg.session.queue_max_messages = 64;
        let r = start(cfg).await;
        assert_eq!(publish(&r, 1, 100_000, 1000), 100_000);
        let mut ws = connect(&r).await;
        let w = next_json(&mut ws).await;
        let epoch = w["epoch"].as_str().unwrap().to_string();
        let a = ask(&mut ws, &format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"kinds":["rug_warning","momentum_up"]}},"resume_from":{{"epoch":"{epoch}","seq":0}}}}"#)).await;
        assert_eq!(a["recovered"], true, "{a}");
        // The client reads nothing for a second (its outbox fills), then reads everything.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let want: Vec<u64> = (1..=100_000u64).filter(|i| i % 3 != 2).collect();
        let mut got = Vec::with_capacity(want.len());
        while got.len() < want.len() {
            let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("the resume stalled")
                .expect("the server closed")
                .unwrap();
            let text = m.into_text().unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "signal", "{v}");
            got.push(v["seq"].as_u64().unwrap());
        }
        assert_eq!(got, want, "every matching event once, in order");
        // Then live (100,001 is a volume surge: filtered out).
        publish(&r, 100_001, 100_002, 1);
        let v = next_json(&mut ws).await;
        assert_eq!(v["seq"], 100_002);
        assert_eq!(
            metric(&r, "dexpulse_session_closes_total{code=\"4008\"}"),
            0.0
        );
        r.shutdown().await.unwrap();
    }
}

/// A tmpfs of a few MiB, unmounted at the end (even when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test fills a real filesystem: it mounts a tmpfs, which needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold the log open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

on_both_runtimes! {
    async fn a_full_disk_stops_publishing_loses_nothing_and_recovers_by_itself() {
        let root = dir("full");
        let fs = Tmpfs::mount(&root, "4m");
        // Most of the space goes to a filler file, deleted later to make room again.
        let filler = fs.0.join("filler");
        std::fs::write(&filler, vec![7u8; 2 << 20]).unwrap();
        let mut cfg = durable(&fs.0.join("data"));
        cfg.store.max_pending_events = 1_000_000;
        let r = start(cfg).await;
        let mut ws = connect(&r).await;
        next_json(&mut ws).await;
        ask(&mut ws, r#"{"op":"subscribe","channel":"signals"}"#).await;

        // Publish until a commit fails for want of space.
        let mut i = 1;
        let committed = loop {
            let n = r
                .hub()
                .publish_serialized((i..i + 200).map(ev).collect())
                .len();
            i += 200;
            if n == 0 {
                break r.hub().head_seq();
            }
            assert!(i < 1_000_000, "the disk never filled");
        };
        assert!(committed > 1000, "{committed}");
        let (_, body) = http_get(&r, "/readyz", &[]).await;
        assert!(body.contains("the event log cannot be written"), "{body}");
        assert!(metric(&r, "dexpulse_log_commit_failures_total") >= 1.0);
        // More events while the disk is full: none published, all waiting.
        for _ in 0..5 {
            assert!(r
                .hub()
                .publish_serialized((i..i + 100).map(ev).collect())
                .is_empty());
            i += 100;
        }
        let waiting = i - 1 - committed;
        assert_eq!(metric(&r, "dexpulse_log_pending_events"), waiting as f64);
        assert_eq!(
            r.hub().head_seq(),
            committed,
            "nothing past the committed head"
        );

        // What was committed is all there and readable, and the client got exactly that.
        let mut got = Vec::new();
        while (got.len() as u64) < committed {
            let v = next_json(&mut ws).await;
            got.push(v["seq"].as_u64().unwrap_or_else(|| panic!("{v}")));
        }
        assert_eq!(got, (1..=committed).collect::<Vec<_>>());
        let v = get(&r, &format!("/v1/signals?since={}&limit=10", committed - 3)).await;
        assert_eq!(seqs(&v), [committed - 2, committed - 1, committed]);

        // Space comes back: the upkeep retries, publishes what waited, in order, and the
        // readiness no longer names the log.
        std::fs::remove_file(&filler).unwrap();
        let hub = r.hub().clone();
        tokio::task::spawn_blocking(move || hub.maintain())
            .await
            .unwrap();
        assert_eq!(r.hub().head_seq(), i - 1);
        while (got.len() as u64) < i - 1 {
            let v = next_json(&mut ws).await;
            got.push(v["seq"].as_u64().unwrap());
        }
        assert_eq!(got, (1..i).collect::<Vec<_>>(), "no gap, no duplicate");
        let (_, body) = http_get(&r, "/readyz", &[]).await;
        assert!(!body.contains("event log"), "{body}");
        assert_eq!(metric(&r, "dexpulse_log_pending_events"), 0.0);
        // The events that waited were numbered when they were committed: their bytes are the
        // ones a client got, and the file holds them.
        let v = get(&r, &format!("/v1/signals?since={}&limit=1", i - 2)).await;
        assert!(v["signals"][0]
            .to_string()
            .contains(&format!("\"n\":{}", i - 1)));
        publish(&r, i, i + 9, 10);
        assert_eq!(r.hub().head_seq(), i + 9);
        r.shutdown().await.unwrap();
    }
}
