//! The event log's figures for BENCHMARKS.md ("The event log"), printed as one JSON line:
//! commit latency of one batch (p50, p99, p99.9) at the engine's batch size, bytes per event on
//! disk, restart time with a full window (after a clean stop and after a crash mid-write), and
//! resume throughput from the file through the durable history.
//!
//! `cargo bench --bench store` (`STORE_BENCH_EVENTS=N`, default 1,000,000 real signal frames;
//! `STORE_BENCH_DIR` for the file system to measure, default the temporary directory). Not
//! criterion: the tail of the commit latency is the figure, and one pass gives it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dexpulse::health::Health;
use dexpulse::hub::{Hub, Settings as HubSettings};
use dexpulse::metrics::Metrics;
use dexpulse::model::EventMeta;
use dexpulse::signal::{Engine, Params};
use dexpulse::source::simulator::{simulate, Scenario, SimOptions};
use dexpulse::source::tape::TapeWriter;
use dexpulse::store::{EventLog, Settings as StoreSettings};
use dexpulse::time::Clock;

/// Real events: the scenario tape's, serialized as the hub serializes them.
fn real_events() -> Vec<(EventMeta, String)> {
    let mut w = TapeWriter::new(Vec::new());
    simulate(&Scenario::ALL, &SimOptions::default(), &mut w).expect("simulate");
    let tape = w.into_inner();
    let mut engine = Engine::new(Params::default());
    let mut out = Vec::new();
    dexpulse::replay::replay(
        tape.as_slice(),
        &mut engine,
        |e| {
            out.push((e.meta(), serde_json::to_string(e).expect("serializable")));
            Ok(())
        },
        |_| {},
    )
    .expect("replay");
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn hub(dir: &Path, log: EventLog) -> Hub {
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(Clock::default()));
    Hub::durable(
        HubSettings::default(),
        Clock::default(),
        StoreSettings::default(),
        log,
        &metrics,
        health,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Fills a log with `n` events in batches of `batch` through the durable hub, timing each
/// commit (the publish minus nothing: it is the commit and the ring push).
fn fill(dir: &Path, events: &[(EventMeta, String)], n: usize, batch: usize) -> Vec<f64> {
    let log = EventLog::open(dir, || {
        dexpulse_core::protocol::Epoch::parse("bench").expect("an epoch")
    })
    .expect("open");
    let hub = hub(dir, log);
    let mut lat = Vec::with_capacity(n / batch + 1);
    let mut i = 0;
    while i < n {
        let b: Vec<_> = (i..(i + batch).min(n))
            .map(|j| events[j % events.len()].clone())
            .collect();
        let t = Instant::now();
        let sent = hub.publish_serialized(b);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(!sent.is_empty());
        i += batch;
    }
    lat
}

fn main() {
    let n: usize = std::env::var("STORE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    if let Ok(dir) = std::env::var("STORE_BENCH_CRASH_CHILD") {
        // The child: appends batches until it is killed (the parent SIGKILLs it mid-write).
        let events = real_events();
        let log = EventLog::open(Path::new(&dir), || {
            dexpulse_core::protocol::Epoch::parse("bench").expect("an epoch")
        })
        .expect("open");
        let hub = hub(Path::new(&dir), log);
        let mut i = 0usize;
        loop {
            let b: Vec<_> = (i..i + 10)
                .map(|j| events[j % events.len()].clone())
                .collect();
            hub.publish_serialized(b);
            i += 10;
            if i == 1000 {
                println!("writing");
            }
        }
    }
    let events = real_events();
    let mean_json = events.iter().map(|e| e.1.len()).sum::<usize>() / events.len();
    let dir = base.join(format!("dexpulse-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Commit latency at the engine's batch size (about ten events a batch at the bench
    // source's rate), over the first 100,000 events; then the window filled in batches of 1,000.
    let small = n.min(100_000);
    let mut lat10 = fill(&dir, &events, small, 10);
    lat10.sort_by(f64::total_cmp);
    let t = Instant::now();
    {
        let log = EventLog::open(&dir, || unreachable!()).expect("reopen");
        let head = log.head() as usize;
        drop(log);
        if n > head {
            // Continue the same log.
            let log = EventLog::open(&dir, || unreachable!()).expect("reopen");
            let hub = hub(&dir, log);
            let mut i = head;
            while i < n {
                let b: Vec<_> = (i..(i + 1000).min(n))
                    .map(|j| events[j % events.len()].clone())
                    .collect();
                hub.publish_serialized(b);
                i += 1000;
            }
        }
    }
    let fill_s = t.elapsed().as_secs_f64();
    let file = dir.join(dexpulse::store::FILE);
    let file_bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
    let usage = EventLog::open(&dir, || unreachable!())
        .expect("reopen")
        .usage()
        .expect("usage");

    // Restart after a clean stop: open the log and the durable history (its memory window).
    let t = Instant::now();
    let log = EventLog::open(&dir, || unreachable!()).expect("reopen");
    let open_clean_ms = t.elapsed().as_secs_f64() * 1e3;
    let h = hub(&dir, log);
    let restart_clean_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(h.head_seq() as usize, n.max(small));

    // Resume from disk: every event after seq 0, 1,000 a read, as a catching-up session reads.
    let t = Instant::now();
    let (mut after, mut frames, mut bytes) = (0, 0usize, 0usize);
    loop {
        let s = h.since(after, 1000);
        let Some(last) = s.frames.last() else { break };
        after = last.seq;
        frames += s.frames.len();
        bytes += s.frames.iter().map(|f| f.text.len()).sum::<usize>();
    }
    let resume_s = t.elapsed().as_secs_f64();
    drop(h);

    // Restart after a crash: a child process writes to the same log and is SIGKILLed mid-way.
    let exe = std::env::current_exe().expect("exe");
    let mut child = std::process::Command::new(exe)
        .env("STORE_BENCH_CRASH_CHILD", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child");
    {
        use std::io::BufRead;
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("child writes");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().expect("kill");
    let _ = child.wait();
    let t = Instant::now();
    let log = EventLog::open(&dir, || unreachable!()).expect("reopen after the crash");
    let open_crash_ms = t.elapsed().as_secs_f64() * 1e3;
    let h = hub(&dir, log);
    let restart_crash_ms = t.elapsed().as_secs_f64() * 1e3;
    let head_after_crash = h.head_seq();
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{}",
        serde_json::json!({
            "events": n.max(small),
            "mean_event_json_bytes": mean_json,
            "commit_batch_10_ms": {
                "p50": pct(&lat10, 0.5), "p99": pct(&lat10, 0.99), "p999": pct(&lat10, 0.999),
                "max": lat10.last(), "batches": lat10.len(),
            },
            "fill_rest_in_batches_of_1000_s": fill_s,
            "file_bytes": file_bytes,
            "file_bytes_per_event": file_bytes as f64 / n.max(small) as f64,
            "stored_bytes_per_event": usage.stored_bytes as f64 / usage.events.max(1) as f64,
            "restart_clean_ms": restart_clean_ms,
            "of_which_redb_open_clean_ms": open_clean_ms,
            "of_which_redb_open_after_sigkill_ms": open_crash_ms,
            "restart_after_sigkill_ms": restart_crash_ms,
            "head_after_sigkill": head_after_crash,
            "resume_from_disk": {
                "frames": frames,
                "seconds": resume_s,
                "frames_per_s": frames as f64 / resume_s,
                "mb_per_s": bytes as f64 / resume_s / 1e6,
            },
        })
    );
}
