//! The whole streamer as a client sees it: a replay source (a simulator tape, as fast as the
//! engine takes it) through the engine and the hub to a WebSocket client and the HTTP API.

use dexpulse::app::settings::SourceKind;
use dexpulse::app::Running;
use dexpulse::source::simulator::{Scenario, SimOptions};

use crate::server::*;
use crate::support::tape;

/// Waits until the replay source has played its whole tape.
async fn source_ended(r: &Running) {
    eventually("the source ends", || {
        r.state
            .health
            .readiness(std::time::Duration::from_secs(3600))
            .reason
            .as_deref()
            == Some("the source has ended")
    })
    .await;
}

#[tokio::test]
async fn a_replayed_tape_reaches_a_subscriber_and_the_http_api() {
    let path = std::env::temp_dir().join(format!("dexpulse-pipeline-{}.jsonl", std::process::id()));
    let opts = SimOptions {
        hours: 2.0,
        noise_pairs: 2,
        ..SimOptions::default()
    };
    std::fs::write(
        &path,
        tape(
            &[Scenario::LpWithdrawal, Scenario::NewPair, Scenario::Noise],
            &opts,
        ),
    )
    .unwrap();
    let mut cfg = test_config();
    cfg.source.kind = SourceKind::Replay;
    cfg.source.replay.tape = Some(path.clone());
    cfg.source.replay.speed = 0.0;
    let r = start_sourced(cfg).await;
    eventually("the tape is played", || {
        r.hub().head_seq() >= 2 && r.hub().pairs().len() >= 4
    })
    .await;

    // A client resuming from 0 gets every event, exactly once.
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let head = w["head_seq"].as_u64().unwrap();
    let a = ask(&mut ws, &format!(r#"{{"op":"subscribe","channel":"signals","resume_from":{{"epoch":"{epoch}","seq":0}}}}"#)).await;
    assert_eq!(a["recovered"], true, "{a}");
    let mut kinds = Vec::new();
    for seq in 1..=head {
        let m = next_json(&mut ws).await;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["event"]["source"], "simulator");
        kinds.push(m["event"]["kind"].as_str().unwrap().to_string());
    }
    assert!(
        kinds.contains(&"rug_warning".to_string()) && kinds.contains(&"new_pair".to_string()),
        "{kinds:?}"
    );

    // The tape is over: the server still serves, and says why it is not ready for live data.
    source_ended(&r).await;
    let (status, body) = http_get(&r, "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"],
        "the source has ended"
    );
    let (_, body) = http_get(&r, "/v1/pairs", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["source"] == "simulator" && p["chain"] == "sim"));
    let (_, metrics) = http_get(&r, "/metrics", &[]).await;
    assert!(
        metrics.contains("dexpulse_events_total{kind=\"rug_warning\",direction=\"bearish\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("dexpulse_snapshots_total{verdict=\"fresh\"}"));
    r.shutdown().await.unwrap();
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn the_simulator_source_warms_up_then_the_server_is_ready() {
    let mut cfg = test_config();
    cfg.source.kind = SourceKind::Simulator;
    cfg.source.simulator.scenarios = vec!["lp_withdrawal".into()];
    cfg.source.simulator.noise_pairs = 2;
    // The withdrawal (minute 90) lies in the played-at-once past.
    cfg.source.simulator.lead_minutes = 95.0;
    let r = start_sourced(cfg).await;
    eventually("the rug warning of the warm-up", || r.hub().head_seq() >= 1).await;
    let (status, body) = http_get(&r, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = http_get(&r, "/v1/signals?kind=rug_warning", &[]).await;
    assert!(
        body.contains("\"pair_address\":\"simlpwithdrawal00\""),
        "{body}"
    );
    r.shutdown().await.unwrap();
}

/// What the engine does not emit is counted where an operator looks: a tape of one token in
/// two pools and a crowd of breakouts, through the server with a small global budget, shows
/// `dexpulse_events_suppressed_total` for both reasons, and the deeper pool's events name the
/// other in `related_pairs`.
#[tokio::test]
async fn deduplicated_and_dropped_events_are_counted_in_the_metrics() {
    let path =
        std::env::temp_dir().join(format!("dexpulse-suppressed-{}.jsonl", std::process::id()));
    let opts = SimOptions {
        hours: 2.5,
        noise_pairs: 0,
        crowd_pairs: 40,
        ..SimOptions::default()
    };
    std::fs::write(&path, tape(&[Scenario::SameToken, Scenario::Crowd], &opts)).unwrap();
    let mut cfg = test_config();
    cfg.source.kind = SourceKind::Replay;
    cfg.source.replay.tape = Some(path.clone());
    cfg.source.replay.speed = 0.0;
    cfg.signal.fsm.global_events_per_minute = 10.0;
    let r = start_sourced(cfg).await;
    source_ended(&r).await;
    let (_, metrics) = http_get(&r, "/metrics", &[]).await;
    let count = |reason: &str| -> f64 {
        let key = format!("dexpulse_events_suppressed_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(count("dedupe") >= 1.0, "{metrics}");
    assert!(count("budget") >= 1.0, "{metrics}");
    let (_, body) = http_get(&r, "/v1/signals?kind=volume_surge&limit=1000", &[]).await;
    assert!(
        body.contains("\"pair_address\":\"simsametoken00\"")
            && body.contains("\"related_pairs\":[\"simsametoken01\"]")
            && !body.contains("\"pair_address\":\"simsametoken01\""),
        "{body}"
    );
    r.shutdown().await.unwrap();
    let _ = std::fs::remove_file(path);
}
