//! The `dexpulse` binary as a user runs it: simulate, replay (twice, byte-identical), a tape
//! with garbage lines, a bad config (exit 64, the field named), a missing file, `--help`.

use std::path::PathBuf;
use std::process::{Command, Output};

fn dexpulse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dexpulse"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dexpulse-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
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
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
    assert!(
        dexpulse(&["replay", t.to_str().unwrap(), "--config", shipped])
            .status
            .success()
    );
}

#[test]
fn usage_errors() {
    let out = dexpulse(&["replay", "/nonexistent/tape.jsonl"]);
    assert_eq!(out.status.code(), Some(66));
    let out = dexpulse(&["simulate", "--scenario", "moonshot", "--out", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("moonshot"));
    let help = dexpulse(&["--help"]);
    assert!(help.status.success());
    let h = text(&help.stdout);
    assert!(h.contains("simulate") && h.contains("replay"), "{h}");
}
