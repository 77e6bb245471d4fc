//! The `dexpulse` binary as a user runs it: simulate, replay (twice, byte-identical), a tape
//! with garbage lines, a bad config (exit 64, the field named), a missing file, `--help`.

use std::path::PathBuf;
use std::process::{Command, Output};

pub(crate) fn dexpulse(args: &[&str]) -> Output {
    dexpulse_env(args, &[])
}

fn dexpulse_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dexpulse"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dexpulse-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Kills the child process when dropped, so that a failing test never leaves a server behind.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dexpulse serve` with a config text and environment; returns the process (killed on
/// drop) and the address from its "listening" line.
fn spawn_serve(name: &str, config_text: &str, env: &[(&str, String)]) -> (Reap, String) {
    spawn_serve_with(name, config_text, env, &[])
}

/// `spawn_serve` with more arguments after `serve --config FILE` (`--role edge`, say).
pub fn spawn_serve_with(
    name: &str,
    config_text: &str,
    env: &[(&str, String)],
    args: &[&str],
) -> (Reap, String) {
    use std::io::{BufRead, BufReader};
    let cfg = tmp(name);
    std::fs::write(&cfg, config_text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dexpulse"));
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Reap(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // The log is also kept in `<name>.log` beside the config, for a failing test to show.
    let mut log = std::fs::File::create(tmp(&format!("{name}.log"))).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        // Reads the whole log, so that the child never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("no listening line");
        // An ingest serves operations only: its line names http:// addresses.
        if let Some(rest) = line
            .split("listening: ws://")
            .nth(1)
            .or_else(|| line.split("listening: http://").nth(1))
        {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    (child, addr)
}

/// SIGTERM, then the exit code.
pub fn sigterm(child: &mut Reap) -> Option<i32> {
    signal(child, "-TERM")
}

pub fn signal(child: &mut Reap, sig: &str) -> Option<i32> {
    let kill = std::process::Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.0.wait().unwrap().code()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn simulate_then_replay_twice_gives_identical_events() {
    let t = tmp("sim.jsonl");
    let out = dexpulse(&[
        "simulate",
        "--scenario",
        "breakout,lp_withdrawal",
        "--seed",
        "7",
        "--hours",
        "3",
        "--out",
        t.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a = dexpulse(&["replay", t.to_str().unwrap()]);
    let b = dexpulse(&["replay", t.to_str().unwrap()]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let lines: Vec<serde_json::Value> = text(&a.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|e| e["kind"] == "rug_warning"));
    assert!(lines
        .iter()
        .any(|e| e["kind"] == "volume_surge" && e["direction"] == "bullish"));
    assert!(lines
        .iter()
        .all(|e| e["source"] == "simulator" && e["schema"] == "dexpulse.event/v1"));
    assert!(
        text(&a.stderr).contains("0 problems"),
        "{}",
        text(&a.stderr)
    );
}

#[test]
fn garbage_lines_are_reported_by_number_and_skipped() {
    let t = tmp("sim2.jsonl");
    assert!(dexpulse(&[
        "simulate",
        "--scenario",
        "lp_withdrawal",
        "--hours",
        "2",
        "--out",
        t.to_str().unwrap()
    ])
    .status
    .success());
    let clean = dexpulse(&["replay", t.to_str().unwrap()]);
    let mut lines: Vec<String> = text(&std::fs::read(&t).unwrap())
        .lines()
        .map(String::from)
        .collect();
    lines.insert(2, "this is not json".into());
    lines.insert(5, r#"{"t_ms":1,"source":"dexscreener","request":"/latest/dex/pairs/sim/x","status":200,"body_text":"<html>502</html>"}"#.into());
    lines.insert(
        7,
        r#"{"t_ms":1,"source":"dexscreener","request":"/x","status":429,"body":{}}"#.into(),
    );
    let dirty = tmp("dirty.jsonl");
    std::fs::write(&dirty, lines.join("\n")).unwrap();
    let out = dexpulse(&["replay", dirty.to_str().unwrap()]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("tape line 3:"), "{err}");
    assert!(err.contains("tape line 6: body is not JSON"), "{err}");
    assert!(err.contains("tape line 8: HTTP status 429"), "{err}");
    assert!(err.contains("3 problems"), "{err}");
    assert_eq!(
        out.stdout, clean.stdout,
        "the good lines give the same events"
    );
    assert!(!out.stdout.is_empty());
}

#[test]
fn a_bad_config_exits_64_naming_the_field() {
    let t = tmp("cfg-tape.jsonl");
    std::fs::write(&t, "").unwrap();
    for (toml, field) in [
        (
            "[signal.momentum]\nenter_pc_h1 = -5.0\n",
            "signal.momentum.enter_pc_h1",
        ),
        ("[signal.fsm]\nconfirm_snapshot = 2\n", "confirm_snapshot"),
        ("[signal.gates\n", "invalid config"),
        (
            "[[auth.keys]]\nkey = \"key-one-1\"\n[[auth.keys]]\nkey = \"clé-non-ascii\"\n",
            "auth.keys[1].key",
        ),
        (
            "[[auth.keys]]\nkey = \"key-one-1\"\n[[auth.keys]]\nkey = \"key-two-2\"\n[[auth.keys]]\nkey = \"key-one-1\"\n",
            "auth.keys[2].key",
        ),
    ] {
        let c = tmp("bad.toml");
        std::fs::write(&c, toml).unwrap();
        let out = dexpulse(&[
            "replay",
            t.to_str().unwrap(),
            "--config",
            c.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(64), "{toml}");
        assert!(text(&out.stderr).contains(field), "{}", text(&out.stderr));
    }
    let out = dexpulse(&[
        "replay",
        t.to_str().unwrap(),
        "--config",
        "/nonexistent/x.toml",
    ]);
    assert_eq!(out.status.code(), Some(64));
    for shipped in ["default.toml", "demo.toml", "base.toml"] {
        let path = format!("{}/config/{shipped}", env!("CARGO_MANIFEST_DIR"));
        let out = dexpulse(&["replay", t.to_str().unwrap(), "--config", &path]);
        assert!(out.status.success(), "{shipped}: {}", text(&out.stderr));
    }
}

#[test]
fn usage_errors() {
    let out = dexpulse(&["replay", "/nonexistent/tape.jsonl"]);
    assert_eq!(out.status.code(), Some(66));
    // An argument clap refuses is a usage error like any other: 64, as documented.
    for args in [
        &["--bogus"][..],
        &["serve", "--bind"],
        &["simulate", "--seed", "x", "--out", "/tmp/y"],
    ] {
        let out = dexpulse(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = dexpulse(&["simulate", "--scenario", "moonshot", "--out", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("moonshot"));
    let help = dexpulse(&["--help"]);
    assert!(help.status.success());
    let h = text(&help.stdout);
    assert!(h.contains("simulate") && h.contains("replay"), "{h}");
}

/// `dexpulse serve` as an operator runs it: the listening line, a client's welcome, SIGTERM,
/// close frames (1001) and exit status 0.
#[tokio::test]
async fn serve_runs_until_sigterm_and_closes_sessions() {
    use futures_util::StreamExt;
    let (mut child, addr) = spawn_serve(
        "serve.toml",
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"simulator\"\n[source.simulator]\nscenarios = [\"lp_withdrawal\"]\nnoise_pairs = 1\nlead_minutes = 95.0\n",
        &[],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("\"type\":\"welcome\""));
    let exit = tokio::task::spawn_blocking(move || sigterm(&mut child));
    let close = loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => break c,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    assert_eq!(exit.await.unwrap(), Some(0));
}

#[test]
fn serve_with_a_bad_config_exits_64_before_binding() {
    let cfg = tmp("serve-bad.toml");
    std::fs::write(&cfg, "[session]\nheartbeat_seconds = 0\n").unwrap();
    let out = dexpulse(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(
        err.contains("session.heartbeat_seconds") && !err.contains("listening"),
        "{err}"
    );
    let out = dexpulse(&[
        "serve",
        "--config",
        "config/default.toml",
        "--bind",
        "not-an-address",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("server.bind"));
}

/// The issue's check: with the two base URL variables pointing at a local server serving
/// recorded payloads, `dexpulse serve` tracks the configured pairs and shows their values.
/// (Multi-threaded: the test blocks on the child while the fake upstream serves.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_a_mirror_named_by_the_base_url_variables() {
    let up = crate::upstream::Upstream::start().await;
    let (mut child, addr) = spawn_serve(
        "live.toml",
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"live\"\n[source.live]\ndiscovery = false\nmin_interval_seconds = 0.2\n\
         pairs = [\"solana:BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9\"]\ngecko_pools = [\"monad-testnet:0xc0ce32eee0eb8bf24fa2b00923a78abc5002f91e\"]\n\
         [source.live.geckoterminal]\nmin_interval_seconds = 0.2\n",
        &[("DEXPULSE_DEXSCREENER_BASE_URL", up.url()), ("DEXPULSE_GECKOTERMINAL_BASE_URL", up.url())],
    );
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pairs = loop {
        let v: serde_json::Value = serde_json::from_str(&get("/v1/pairs")).unwrap();
        if v["count"] == 2 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pairs not polled: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ds = pairs["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["source"] == "dexscreener")
        .unwrap();
    assert_eq!(ds["price_usd"], "0.9993");
    assert_eq!(ds["price_change_pct"]["m5"], serde_json::Value::Null);
    assert!(up.served("200") >= 2);
    assert_eq!(sigterm(&mut child), Some(0));
}

/// `serve` checks the files its source needs before anything runs: a tape it cannot open
/// exits 66, a recording it cannot create exits 73, each naming the path.
#[test]
fn serve_fails_at_once_on_files_it_cannot_use() {
    let cfg = tmp("serve-tape.toml");
    std::fs::write(
        &cfg,
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"replay\"\n[source.replay]\ntape = \"/nonexistent/tape.jsonl\"\n",
    )
    .unwrap();
    let out = dexpulse(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/tape.jsonl"));
    let cfg = tmp("serve-record.toml");
    std::fs::write(
        &cfg,
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"live\"\n",
    )
    .unwrap();
    let out = dexpulse(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--record",
        "/nonexistent/dir/rec.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(73), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/dir/rec.jsonl"));
}

/// Every command layers the environment over the file (and flags over both): `replay` and
/// `simulate` honour `DEXPULSE_*`, and a bad value names the variable it came from.
#[test]
fn replay_and_simulate_honour_the_environment() {
    let t = tmp("env.jsonl");
    let out = dexpulse_env(
        &["simulate", "--hours", "3", "--out", t.to_str().unwrap()],
        &[(
            "DEXPULSE_SOURCE__SIMULATOR__SCENARIOS",
            "[\"lp_withdrawal\"]",
        )],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tape = text(&std::fs::read(&t).unwrap());
    assert!(tape.contains("simlpwithdrawal00") && !tape.contains("simbreakout"));
    let all = dexpulse(&["replay", t.to_str().unwrap()]);
    assert!(!all.stdout.is_empty());
    let strict = dexpulse_env(
        &["replay", t.to_str().unwrap()],
        &[("DEXPULSE_SIGNAL__FSM__MIN_EMIT_SCORE", "100")],
    );
    assert!(strict.status.success());
    assert!(
        strict.stdout.len() < all.stdout.len(),
        "the variable applied"
    );
    let bad = dexpulse_env(
        &["replay", t.to_str().unwrap()],
        &[("DEXPULSE_SIGNAL__FSM__MIN_EMIT_SCORE", "101")],
    );
    assert_eq!(bad.status.code(), Some(64));
    let err = text(&bad.stderr);
    assert!(
        err.contains("signal.fsm.min_emit_score")
            && err.contains("DEXPULSE_SIGNAL__FSM__MIN_EMIT_SCORE"),
        "{err}"
    );
}

/// SIGHUP ends the server like SIGTERM: close frames (1001), exit 0 (there is no reload).
#[tokio::test]
async fn sighup_closes_sessions_like_sigterm() {
    use futures_util::StreamExt;
    let (mut child, addr) = spawn_serve(
        "hup.toml",
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"bench\"\n[source.bench]\nevents_per_second = 10.0\n",
        &[],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    let exit = tokio::task::spawn_blocking(move || signal(&mut child, "-HUP"));
    let close = loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => break c,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    assert_eq!(exit.await.unwrap(), Some(0));
}

/// `evaluate` on simulated tapes of two seeds: the same bytes twice, a row per kind and
/// direction that opened, the breakout's momentum ahead of random entries (the simulator's
/// breakouts keep rising after the confirmation, so an engine that fired late or at random would
/// show no lift), and bad horizons refused with exit 64.
#[test]
fn evaluate_reports_outcomes_against_a_seeded_baseline() {
    let mut tapes = Vec::new();
    for seed in ["7", "1"] {
        let t = tmp(&format!("eval-{seed}.jsonl"));
        let out = dexpulse(&[
            "simulate",
            "--scenario",
            "breakout,pump_dump,lp_withdrawal,noise",
            "--seed",
            seed,
            "--hours",
            "5",
            "--noise-pairs",
            "4",
            "--out",
            t.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tapes.push(t.to_str().unwrap().to_string());
    }
    let args = |extra: &[&str]| {
        let mut a = vec!["evaluate", "--json", "--horizons", "5m,15m,1h"];
        a.extend(tapes.iter().map(String::as_str));
        a.extend_from_slice(extra);
        dexpulse(&a)
    };
    let first = args(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(first.stdout, args(&[]).stdout, "deterministic");
    assert_ne!(
        first.stdout,
        args(&["--seed", "9"]).stdout,
        "the baseline follows the seed"
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["tapes"], 2);
    assert_eq!(report["horizons"], serde_json::json!(["5m", "15m", "1h"]));
    let row = |kind: &str, dir: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && r["direction"] == dir)
            .unwrap_or_else(|| panic!("no {kind} {dir} row: {report}"))
            .clone()
    };
    // Before the engine has two hours of a pair's own history, its momentum is the naive
    // rule's, published as information (docs/signals.md), and still judged on what followed.
    let up = row("momentum_up", "neutral");
    assert!(up["count"].as_u64().unwrap() >= 4, "{up}");
    assert!(up["lift"].as_f64().unwrap() > 1.0, "{up}");
    assert!(up["random"]["count"].as_u64().unwrap() >= 10 * up["count"].as_u64().unwrap() / 2);
    let rug = row("rug_warning", "bearish");
    assert_eq!(
        (rug["count"].as_u64(), rug["hits"].as_u64()),
        (Some(2), Some(2)),
        "{rug}"
    );
    row("stance", "bullish");
    row("naive_p_h1", "bullish");

    let table = dexpulse(&["evaluate", &tapes[0]]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("momentum_up") && text.contains("lift"),
        "{text}"
    );

    let bad = dexpulse(&["evaluate", "--horizons", "5x", &tapes[0]]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("horizons"));
}

/// The offline demo (`config/demo.toml`) shows the product at once: its market, simulated
/// offline and replayed with its own configuration, has a first event within 10 s of the
/// moment the server would start (the end of its lead), at least 60 in the first ten minutes,
/// bullish and bearish, of at least five kinds; all of it labelled simulated. Simulated time, not
/// the wall clock: the server paces this same market in real time.
#[test]
fn the_demo_is_busy_from_its_first_seconds() {
    let cfg = format!("{}/config/demo.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let lead = table["source"]["simulator"]["lead_minutes"]
        .as_float()
        .unwrap();
    let tape = tmp("demo.jsonl");
    let out = dexpulse(&[
        "simulate",
        "--config",
        &cfg,
        "--hours",
        "1.8",
        "--out",
        tape.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dexpulse(&[
        "replay",
        "--quiet",
        "--config",
        &cfg,
        tape.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let start = dexpulse::source::simulator::DEFAULT_START_MS + (lead * 60_000.0) as i64;
    let live: Vec<dexpulse::model::SignalEvent> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut e: dexpulse::model::SignalEvent = serde_json::from_str(l).unwrap();
            e.observed_at_ms = chrono::DateTime::parse_from_rfc3339(&e.observed_at)
                .unwrap()
                .timestamp_millis();
            e
        })
        .filter(|e| e.observed_at_ms >= start)
        .collect();
    assert!(live
        .iter()
        .all(|e| e.source == dexpulse::model::Source::Simulator && e.chain == "sim"));
    assert!(
        live[0].observed_at_ms - start <= 10_000,
        "first after {} ms",
        live[0].observed_at_ms - start
    );
    let ten: Vec<_> = live
        .iter()
        .filter(|e| e.observed_at_ms < start + 600_000)
        .collect();
    assert!(ten.len() >= 60, "{} events in ten minutes", ten.len());
    let kinds: std::collections::BTreeSet<_> = ten
        .iter()
        .filter(|e| e.kind != dexpulse::model::Kind::Stance)
        .map(|e| e.kind)
        .collect();
    assert!(kinds.len() >= 5, "{kinds:?}");
    for d in [
        dexpulse::model::Direction::Bullish,
        dexpulse::model::Direction::Bearish,
    ] {
        assert!(ten
            .iter()
            .any(|e| e.direction == d && e.kind != dexpulse::model::Kind::Stance));
    }
}

/// `GET path` on a server: the status and the body.
pub fn http_status(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

/// `GET path` on a server, the body as JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&http_status(addr, path).1).unwrap()
}

/// The event log outlives the process: `serve` with a data directory publishes 300 events a
/// second, is killed with SIGKILL, and restarts on the same directory in the same epoch; every
/// event it had published comes back byte for byte (most of them from the file: the memory
/// window holds 100), and the numbering continues after them with no gap and no repeat.
#[test]
fn the_event_log_survives_a_sigkill() {
    let dir = tmp("data-sigkill");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"bench\"\n[source.bench]\nevents_per_second = 300.0\n[hub]\nretain_events = 100\nretain_seconds = 1.0\n";
    let env = [("DEXPULSE_STORE__DATA_DIR", dir.display().to_string())];
    let page =
        |addr: &str, since: u64| get_json(addr, &format!("/v1/signals?since={since}&limit=1000"));
    let (mut child, addr) = spawn_serve("durable.toml", cfg, &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while page(&addr, 0)["head_seq"].as_u64().unwrap() < 600 {
        assert!(std::time::Instant::now() < deadline, "no events published");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = page(&addr, 0);
    assert_eq!(signal(&mut child, "-KILL"), None, "killed by a signal");
    let seen = before["signals"].as_array().unwrap().clone();
    assert!(seen.len() >= 600, "{}", seen.len());
    assert_eq!(seen[0]["seq"], 1);

    let (mut child, addr) = spawn_serve("durable.toml", cfg, &env);
    let after = page(&addr, 0);
    assert_eq!(after["epoch"], before["epoch"]);
    let again = after["signals"].as_array().unwrap();
    assert_eq!(
        &again[..seen.len()],
        &seen[..],
        "what was sent before the kill"
    );
    // New events follow the old head densely.
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let p = page(&addr, last.saturating_sub(5));
        let seqs: Vec<u64> = p["signals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        if seqs.last().is_some_and(|&s| s > last + 50) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no events after the restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sigterm(&mut child), Some(0));

    // A second server on the same directory is refused, naming the file (exit 74).
    let (mut first, _) = spawn_serve("durable.toml", cfg, &env);
    let cfgp = tmp("durable2.toml");
    std::fs::write(&cfgp, cfg).unwrap();
    let out = dexpulse_env(
        &[
            "serve",
            "--config",
            cfgp.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(74), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("events.redb"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sigterm(&mut first), Some(0));
}

/// A WebSocket client resumes across a SIGKILL: it read part of the stream from the first
/// process, the process dies, and from the restarted one (same data directory) it gets every
/// event after its last seq exactly once, in order, then live ones, in the same epoch; the
/// bytes of what it had already seen are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_across_a_sigkill() {
    use crate::server::{ask, next_json};
    let dir = tmp("data-resume");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"bench\"\n[source.bench]\nevents_per_second = 300.0\n[hub]\nretain_events = 100\nretain_seconds = 1.0\n";
    let env = [("DEXPULSE_STORE__DATA_DIR", dir.display().to_string())];
    let (mut child, addr) = spawn_serve("resume.toml", cfg, &env);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let sub = ask(&mut ws, r#"{"op":"subscribe","channel":"signals"}"#).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let m = next_json(&mut ws).await;
        if m["type"] == "signal" {
            seen.push(m);
        }
    }
    drop(ws);
    assert_eq!(signal(&mut child, "-KILL"), None);
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();

    let (mut child, addr) = spawn_serve("resume.toml", cfg, &env);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["epoch"], epoch.as_str());
    let head = welcome["head_seq"].as_u64().unwrap();
    assert!(head >= last, "{head} < {last}");
    let from = seen[0]["seq"].as_u64().unwrap() - 1;
    let sub = ask(
        &mut ws,
        &format!(r#"{{"op":"subscribe","channel":"signals","resume_from":{{"epoch":"{epoch}","seq":{from}}}}}"#),
    )
    .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let mut expect = from + 1;
    while expect <= head + 50 {
        let m = next_json(&mut ws).await;
        if m["type"] != "signal" {
            continue;
        }
        assert_eq!(m["seq"], expect, "dense, in order, once");
        if expect <= last {
            assert_eq!(
                m,
                seen[(expect - from - 1) as usize],
                "unchanged by the restart"
            );
        }
        expect += 1;
    }
    drop(ws);
    assert_eq!(sigterm(&mut child), Some(0));
}

/// The engine's state survives a SIGKILL: a liquidity drain opened by the first process (live
/// source, a local upstream serving recorded pairs) is closed by the second, on the same data
/// directory, and never opened twice. Without the checkpoint the second process would start
/// cold: no reference depth, no open episode, so no close would ever come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_open_before_a_sigkill_closes_after_the_restart() {
    use serde_json::json;
    const PAIR: &str = "BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9";
    let up = crate::upstream::Upstream::start().await;
    up.with(|i| {
        let q = i.pairs.get_mut(PAIR).unwrap();
        let first = q[0].clone();
        q.push_back(first.clone());
        q.push_back(first.clone());
        // Then the pool loses 80 % and holds there: each state differs (24-hour volume), so
        // every poll is fresh and the drain's exit time runs.
        for n in 0..2000 {
            let mut pulled = first.clone();
            for k in ["usd", "base", "quote"] {
                pulled["liquidity"][k] = json!(first["liquidity"][k].as_f64().unwrap() * 0.2);
            }
            pulled["volume"]["m5"] = json!(5900.0);
            pulled["volume"]["h24"] = json!(first["volume"]["h24"].as_f64().unwrap() + n as f64);
            q.push_back(pulled);
        }
    });
    let dir = tmp("data-engine");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"live\"\n[source.live]\n\
         pairs = [\"solana:{PAIR}\"]\ngecko_pools = []\ndiscovery = false\n\
         min_interval_seconds = 0.2\nmax_staleness_seconds = 1.0\ntick_seconds = 0.1\n\
         timeout_seconds = 0.5\nbackoff_base_seconds = 0.05\nbackoff_max_seconds = 0.5\n\
         [source.live.dexscreener]\nbase_url = \"{url}\"\nrate_per_minute = 600.0\n\
         [source.live.geckoterminal]\nbase_url = \"{url}\"\n\
         [signal.liquidity]\ndrain_exit_minutes = 0.25\n[store]\ncheckpoint_seconds = 0.2\n",
        url = up.url()
    );
    let env = [("DEXPULSE_STORE__DATA_DIR", dir.display().to_string())];
    let drains = |addr: &str| -> Vec<serde_json::Value> {
        get_json(addr, "/v1/signals?since=0&limit=1000&kind=liquidity_drain")["signals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["event"].clone())
            .collect()
    };
    let (child, addr) = {
        let cfg = cfg.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || spawn_serve("engine.toml", &cfg, &env))
            .await
            .unwrap()
    };
    let mut child = child;
    let a = addr.clone();
    let (opened, epoch) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let d = drains(&a);
            if let Some(e) = d.iter().find(|e| e["phase"] == "opened") {
                let epoch = get_json(&a, "/v1/signals?since=0&limit=1")["epoch"].clone();
                return (e.clone(), epoch);
            }
            assert!(std::time::Instant::now() < deadline, "no drain opened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(signal(&mut child, "-KILL"), None, "killed by a signal");
    drop(child);

    let (child, addr) = tokio::task::spawn_blocking(move || spawn_serve("engine.toml", &cfg, &env))
        .await
        .unwrap();
    let mut child = child;
    let a = addr.clone();
    let (all, epoch2) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let d = drains(&a);
            if d.iter().any(|e| e["phase"] == "closed") {
                let epoch = get_json(&a, "/v1/signals?since=0&limit=1")["epoch"].clone();
                return (d, epoch);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the drain opened before the kill never closed: {d:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(epoch2, epoch);
    let phases: Vec<&str> = all.iter().map(|e| e["phase"].as_str().unwrap()).collect();
    assert_eq!(
        phases.iter().filter(|p| **p == "opened").count(),
        1,
        "{phases:?}"
    );
    let closed = all.iter().find(|e| e["phase"] == "closed").unwrap();
    assert_eq!(closed["episode_id"], opened["episode_id"]);
    assert_eq!(closed["episode_started_at"], opened["episode_started_at"]);
    assert_eq!(all[0], opened, "the opening as it was sent before the kill");
    assert_eq!(sigterm(&mut child), Some(0));
}

/// A data directory whose `events.redb` is not a log (junk, or a redb file of someone else's)
/// is refused at start with exit 74 and the file's path, and the file is left as it was.
#[test]
fn a_corrupt_or_foreign_log_is_refused_and_left_untouched() {
    let cfg = tmp("corrupt.toml");
    std::fs::write(
        &cfg,
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"bench\"\n",
    )
    .unwrap();
    let dir = tmp("data-corrupt");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.redb");
    // Junk, and an empty file (which redb alone would have taken for a new database).
    for junk in [
        b"not a database; nobody may overwrite it\n".repeat(200),
        Vec::new(),
    ] {
        std::fs::write(&file, &junk).unwrap();
        let out = dexpulse(&[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(!err.contains("listening"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), junk);
    }
}

/// `tune`: the grid chosen on the earlier tapes, judged on the later ones beside the current
/// settings; the same output every time; the config file untouched; a bad value refused with
/// its field named, as any config is.
#[test]
fn tune_chooses_on_the_earlier_part_and_reports_the_later() {
    let tapes: Vec<PathBuf> = (1..=4)
        .map(|seed| {
            let t = tmp(&format!("tune-{seed}.jsonl"));
            let out = dexpulse(&[
                "simulate",
                "--scenario",
                "breakout,pump_dump,noise",
                "--seed",
                &seed.to_string(),
                "--hours",
                "3",
                "--out",
                t.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            t
        })
        .collect();
    let cfg = tmp("tune.toml");
    std::fs::write(&cfg, "[signal.momentum]\nenter_pc_m5 = 3.0\n").unwrap();
    let args = |param: &str| -> Vec<String> {
        let mut a = vec![
            "tune".to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        a.extend(tapes.iter().map(|t| t.display().to_string()));
        a.extend([
            "--param".into(),
            param.into(),
            "--min-events".into(),
            "1".into(),
        ]);
        a
    };
    let run = |param: &str| {
        let a = args(param);
        dexpulse(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run("momentum.enter_pc_h1=10,15,40");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for want in [
        "earlier part (tuning)",
        "momentum.enter_pc_h1=40",
        "later part (out of sample",
        "chosen: momentum.enter_pc_h1=",
        "[signal.momentum]\nenter_pc_h1 = ",
    ] {
        assert!(report.contains(want), "{want}\n{report}");
    }
    // The current settings once per part: the first two tapes, then the last two.
    let current: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_start().starts_with("current"))
        .collect();
    assert_eq!(current.len(), 2, "{report}");
    assert_eq!(text(&run("momentum.enter_pc_h1=10,15,40").stdout), report);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "[signal.momentum]\nenter_pc_m5 = 3.0\n"
    );
    for (bad, field) in [
        ("momentum.enter_z=6,-1", "momentum.enter_z"),
        ("momentum.no_such_key=1", "no_such_key"),
        ("momentum.enter_z", "NAME=V1"),
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(field),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
}
