//! The cluster's trust boundary against a real nats-server run with the shipped configuration
//! (config/nats/dexpulse.conf) and real processes: nobody gets in without a user; an edge's
//! user cannot publish, write the bucket, purge or delete; a forgery published with the
//! ingest's own user, but without its signing key, is never served by an edge (live, from the
//! stream's past, or as a pair state), nor is a signed event replayed; a forged origin cannot
//! make a restarted ingest publish again what the stream holds. Every way of authenticating a
//! user needs works (user and password in the URL or the config, a token, an NKey, TLS with
//! client certificates), and no secret is ever shown.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::cli::{get_json, http_status as http, sigterm, spawn_serve_with, tmp};
use crate::cluster::*;
use dexpulse::cluster::{EventStream, RawSettings, Role, Secret, Settings};
use dexpulse::protocol::Epoch;

/// A raw NATS client as `user` of the shipped configuration.
async fn client_as(nats: &Nats, user: &str) -> async_nats::Client {
    let pw = if user == "ingest" {
        INGEST_PASSWORD
    } else {
        EDGE_PASSWORD
    };
    async_nats::ConnectOptions::with_user_and_password(user.into(), pw.into())
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .connect(nats.url())
        .await
        .unwrap()
}

fn edge_settings(nats: &Nats) -> Settings {
    Settings::parse(&RawSettings {
        url: Some(nats.url_as("edge")),
        role: Role::Edge,
        verify_key_file: Some(keys().join("verify.key")),
        ..RawSettings::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_nats_configuration_lets_an_edge_only_read() {
    if !nats_here("the_shipped_nats_configuration_lets_an_edge_only_read") {
        return;
    }
    let nats = Nats::start(store("perms"));
    // Nobody without a user, nor with a wrong password.
    assert!(async_nats::connect(nats.url()).await.is_err());
    assert!(
        async_nats::ConnectOptions::with_user_and_password("edge".into(), "guess".into())
            .connect(nats.url())
            .await
            .is_err()
    );

    let ingest = EventStream::connect(&settings(&nats)).await.unwrap();
    ingest
        .publish("e1", 1, (&Epoch::parse("x").unwrap(), 1), payload(1))
        .await
        .unwrap();
    let bucket = ingest.pairs(true).await.unwrap();
    bucket.put("sim.a", Bytes::from_static(b"v")).await.unwrap();

    // The edge's own code reads the stream and the bucket with the edge's user.
    let reader = EventStream::connect_reader(&edge_settings(&nats))
        .await
        .unwrap();
    assert_eq!(reader.get(1).await.unwrap().unwrap().payload, payload(1));
    let kv = reader.pairs(false).await.unwrap();
    assert_eq!(
        kv.get("sim.a").await.unwrap().unwrap(),
        Bytes::from_static(b"v")
    );
    let mut watch = kv.watch_with_history(">").await.unwrap();
    assert!(
        watch.next().await.is_some(),
        "the edge may watch the bucket"
    );

    // The edge's user writes nothing: each attempt is refused by the server (a permission
    // violation leaves the request unanswered, so it times out).
    let edge = client_as(&nats, "edge").await;
    let mut js = jetstream::new(edge.clone());
    js.set_timeout(Duration::from_secs(1));
    let publish = async {
        js.publish("dexpulse.events", Bytes::from_static(br#"{"forged":1}"#))
            .await?
            .await
    };
    assert!(publish.await.is_err(), "an edge publishes an event");
    let kv = js.get_key_value("DEXPULSE_PAIRS").await.unwrap();
    assert!(
        kv.put("solana.forged", Bytes::from_static(b"{}"))
            .await
            .is_err(),
        "an edge writes a pair state"
    );
    assert!(
        kv.delete("sim.a").await.is_err(),
        "an edge deletes a pair state"
    );
    assert!(
        js.delete_stream("DEXPULSE_EVENTS").await.is_err(),
        "an edge deletes the stream"
    );
    let stream = js.get_stream("DEXPULSE_EVENTS").await.unwrap();
    assert!(stream.purge().await.is_err(), "an edge purges the stream");
    assert!(
        stream.delete_message(1).await.is_err(),
        "an edge deletes an event"
    );
    assert!(
        js.create_stream(jetstream::stream::Config {
            name: "EVIL".into(),
            subjects: vec!["evil".into()],
            ..Default::default()
        })
        .await
        .is_err(),
        "an edge creates a stream"
    );
    assert!(
        edge.request("$JS.API.STREAM.DELETE.DEXPULSE_EVENTS", Bytes::new())
            .await
            .is_err(),
        "a raw request to delete the stream"
    );
    // Nothing changed.
    assert_eq!(ingest.bounds().await.unwrap(), (1, 1));
    assert_eq!(ingest.get(1).await.unwrap().unwrap().payload, payload(1));
    assert_eq!(
        bucket.get("sim.a").await.unwrap().unwrap(),
        Bytes::from_static(b"v")
    );
    assert!(bucket.get("solana.forged").await.unwrap().is_none());
    // Refused by the server's permissions, each one (not lost some other way).
    let log = std::fs::read_to_string(nats.store.with_extension("log")).unwrap_or_default();
    for subject in [
        "dexpulse.events",
        "$KV.DEXPULSE_PAIRS.solana.forged",
        "$KV.DEXPULSE_PAIRS.sim.a",
        "$JS.API.STREAM.DELETE.DEXPULSE_EVENTS",
        "$JS.API.STREAM.PURGE.DEXPULSE_EVENTS",
        "$JS.API.STREAM.MSG.DELETE.DEXPULSE_EVENTS",
        "$JS.API.STREAM.CREATE.EVIL",
    ] {
        assert!(
            log.contains(&format!(
                "Publish Violation - User \"edge\", Subject \"{subject}\""
            )),
            "{subject}: {log}"
        );
    }
}

/// An event as the bench source writes it, with another id and a rug warning's look.
fn forged_event(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"schema":"dexpulse.event/v1","event_id":"{id}","phase":"opened","kind":"rug_warning","direction":"bearish","score":100,"chain":"solana","pair_address":"FoRgEd1111","source":"dexscreener","observed_at_ms":1}}"#
    ))
}

/// A forgery published with the ingest's own NATS user but not its signing key: unsigned, with
/// a made-up signature, and a signed event replayed after the duplicate window; and a forged
/// pair state. An edge serves none of them, live or from the stream's past, counts them, and
/// reports not ready; the real events around them go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgery_with_the_ingests_credentials_is_never_served() {
    if !nats_here("a_forgery_with_the_ingests_credentials_is_never_served") {
        return;
    }
    let _heavy = crate::support::heavy().await;
    let nats = Nats::start(store("forgery"));
    // A short duplicate window, so that a replay is not dropped by the server itself.
    let cfg = format!("{INGEST}[cluster]\nduplicate_window_seconds = 1.0\n");
    let (mut ing, i) = ingest_with("ingest-f.toml", &cfg, &nats, None);
    let (mut edge1, e) = edge("edge-f.toml", &nats);
    wait_ready(&i, true);
    wait_ready(&e, true);
    let (mut ws, _) = open(&e).await;
    let sub = subscribe(&mut ws, None).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    let attacker = client_as(&nats, "ingest").await;
    let js = jetstream::new(attacker.clone());
    let victim = js.get_stream("DEXPULSE_EVENTS").await.unwrap();
    // A real, signed event, to be replayed once the duplicate window has passed (the ingest
    // may not have published five yet on a busy machine: waited for, not assumed).
    let mut tries = 0;
    let original = loop {
        match victim.direct_get(5).await {
            Ok(m) => break m,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the ingest published no fifth event in 10 s: {e}"),
        }
    };
    let mut forged_seqs = Vec::new();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "forged-1");
    headers.insert("Dexpulse-Published-At", "1800000000000000");
    headers.insert("Dexpulse-Origin", "whatever 1");
    let ack = js
        .publish_with_headers("dexpulse.events", headers.clone(), forged_event("forged-1"))
        .await
        .unwrap()
        .await
        .unwrap();
    forged_seqs.push(ack.sequence);
    headers.insert("Nats-Msg-Id", "forged-2");
    headers.insert(
        "Dexpulse-Signature",
        format!(
            "v1 {} {}",
            dexpulse::cluster::trust::Verifier::from_file(&keys().join("verify.key"))
                .unwrap()
                .id(),
            base64_64()
        )
        .as_str(),
    );
    let ack = js
        .publish_with_headers("dexpulse.events", headers, forged_event("forged-2"))
        .await
        .unwrap()
        .await
        .unwrap();
    forged_seqs.push(ack.sequence);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut replay = async_nats::HeaderMap::new();
    // The predecessor the ingest named is not signed: a replayer drops it (kept, the server
    // itself would refuse the replay).
    for (name, values) in original.headers.iter() {
        if AsRef::<str>::as_ref(name) == "Nats-Expected-Last-Msg-Id" {
            continue;
        }
        for v in values {
            replay.append(name.as_ref(), v.as_str());
        }
    }
    let ack = js
        .publish_with_headers("dexpulse.events", replay, original.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate, "past the duplicate window");
    forged_seqs.push(ack.sequence);
    // A pair state the ingest never wrote.
    let kv = js.get_key_value("DEXPULSE_PAIRS").await.unwrap();
    let state = r#"{"snapshot":{"key":{"chain":"solana","address":"FoRgEd1111"},"source":"dexscreener","observed_at_ms":1800000000000,"source_ts_ms":null,"dex_id":"raydium","labels":[],"base_token":{"address":"t","symbol":"USDC"},"quote_token":{"address":"q","symbol":"SOL"},"price_usd":{"raw":"123456.789","value":123456.789},"price_change_pct":{"m5":null,"h1":null,"h6":null,"h24":null},"volume_usd":{"m5":null,"h1":null,"h6":null,"h24":null},"txns":{"m5":null,"h1":null,"h6":null,"h24":null},"liquidity_usd":null,"liquidity_base":null,"liquidity_quote":null,"fdv_usd":null,"market_cap_usd":null,"pair_created_at_ms":null},"metrics":{},"open":[]}"#;
    kv.put("solana.FoRgEd1111", Bytes::from(state))
        .await
        .unwrap();

    // The client goes on past every forged seq and never sees one of them.
    let last_forged = *forged_seqs.iter().max().unwrap();
    let mut seen = Vec::new();
    loop {
        let t = next_frame(&mut ws).await;
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "signal" {
            continue;
        }
        let seq = v["seq"].as_u64().unwrap();
        assert!(!forged_seqs.contains(&seq), "a forged seq was served: {t}");
        assert!(!t.contains("forged-") && !t.contains("FoRgEd"), "{t}");
        seen.push(seq);
        if seq > last_forged + 50 {
            break;
        }
    }
    // Every real seq after the first it saw arrived; only the forged ones are gaps.
    let first = seen[0];
    let missing: Vec<u64> = (first..=*seen.last().unwrap())
        .filter(|s| !seen.contains(s))
        .collect();
    let mut expect = forged_seqs.clone();
    expect.retain(|s| *s >= first);
    assert_eq!(missing, expect);

    // Nor from the stream's past (the ring holds 100; these are older by now), nor as a pair.
    let deadline = std::time::Instant::now() + PATIENCE;
    while get_json(&e, "/v1/signals?limit=1")["head_seq"]
        .as_u64()
        .unwrap()
        < last_forged + 200
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = get_json(&e, "/v1/signals?since=0&limit=1000");
    let listed: Vec<u64> = page["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert!(listed.len() > 300, "{page}");
    for s in &forged_seqs {
        assert!(!listed.contains(s), "seq {s} listed");
    }
    assert!(!page.to_string().contains("FoRgEd"));
    assert_eq!(http(&e, "/v1/pairs/solana/FoRgEd1111").0, 404);
    let (status, ready) = http(&e, "/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("forged"), "{ready}");
    let metrics = http(&e, "/metrics").1;
    let count = |reason: &str, what: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("dexpulse_cluster_forged_total")
                    && l.contains(&format!("reason=\"{reason}\""))
                    && l.contains(&format!("what=\"{what}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("unsigned", "event") >= 1.0, "{metrics}");
    assert!(count("bad_signature", "event") >= 1.0, "{metrics}");
    assert!(count("replay", "event") >= 1.0, "{metrics}");
    assert!(count("unsigned", "pair") >= 1.0, "{metrics}");
    let log = std::fs::read_to_string(tmp("edge-f.toml.log")).unwrap();
    assert!(log.contains("refused a message the ingest did not sign"));
    drop(ws);
    assert_eq!(sigterm(&mut ing), Some(0));
    assert_eq!(sigterm(&mut edge1), Some(0));
}

/// 64 bytes of base64 that are no one's signature.
fn base64_64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 64])
}

/// A forged `Dexpulse-Origin` as the stream's last message, naming an early seq of the
/// ingest's own history: restarted on its log, the ingest passes over it (it is not signed)
/// and goes on after the last event it did publish. Every local seq is in the stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_origin_cannot_make_the_ingest_publish_again() {
    if !nats_here("a_forged_origin_cannot_make_the_ingest_publish_again") {
        return;
    }
    let _heavy = crate::support::heavy().await;
    let nats = Nats::start(store("origin"));
    let data = tmp("origin-data");
    let _ = std::fs::remove_dir_all(&data);
    let cfg = format!("{INGEST}[cluster]\nduplicate_window_seconds = 1.0\n");
    let (mut ing, i) = ingest_with("ingest-o.toml", &cfg, &nats, Some(&data));
    wait_ready(&i, true);
    let s = EventStream::connect(&settings(&nats)).await.unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while s.bounds().await.unwrap().1 < 60 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sigterm(&mut ing), Some(0));
    let (_, last) = s.bounds().await.unwrap();
    let (epoch, _) = s.get(last).await.unwrap().unwrap().origin.unwrap();

    let attacker = client_as(&nats, "ingest").await;
    let js = jetstream::new(attacker);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "origin-forgery");
    headers.insert("Dexpulse-Published-At", "1");
    headers.insert("Dexpulse-Origin", format!("{epoch} 10").as_str());
    js.publish_with_headers("dexpulse.events", headers, forged_event("origin-forgery"))
        .await
        .unwrap()
        .await
        .unwrap();
    // Past the duplicate window: what the ingest would publish again would be stored again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let (mut ing, i) = ingest_with("ingest-o2.toml", &cfg, &nats, Some(&data));
    wait_ready(&i, true);
    let target = last + 100;
    let deadline = std::time::Instant::now() + PATIENCE;
    while s.bounds().await.unwrap().1 < target {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sigterm(&mut ing), Some(0));
    let verifier =
        dexpulse::cluster::trust::Verifier::from_file(&keys().join("verify.key")).unwrap();
    let all = s.range(1, s.bounds().await.unwrap().1).await.unwrap();
    let mut origins = Vec::new();
    for m in &all {
        if m.verify("dexpulse.events", &verifier).is_ok() {
            let (e, seq) = m.origin.clone().unwrap();
            assert_eq!(e, epoch);
            origins.push(seq);
        } else {
            assert_eq!(m.event_id, "origin-forgery");
        }
    }
    let expect: Vec<u64> = (1..=origins.len() as u64).collect();
    assert_eq!(origins, expect, "every local seq once, in order");
    // The ingest passed over the forgery and said so.
    let log = std::fs::read_to_string(tmp("ingest-o2.toml.log")).unwrap();
    assert!(
        log.contains("refused a message the ingest did not sign"),
        "{log}"
    );
}

/// A node refuses to start without its key unless `insecure = true`, which it then says.
#[test]
fn a_node_without_its_key_refuses_to_start() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dexpulse"));
        cmd.args(args).env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let cfg = tmp("nokey.toml");
    std::fs::write(&cfg, "[server]\nbind = \"127.0.0.1:0\"\n").unwrap();
    let url = ("DEXPULSE_CLUSTER__URL", "nats://127.0.0.1:1");
    for (role, field) in [
        ("ingest", "cluster.signing_key_file"),
        ("edge", "cluster.verify_key_file"),
    ] {
        let out = run(
            &["serve", "--config", cfg.to_str().unwrap(), "--role", role],
            &[url],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(field), "{err}");
    }
    // A verify key where the signing key belongs.
    let verify = keys().join("verify.key");
    let out = run(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--role",
            "ingest",
        ],
        &[
            url,
            (
                "DEXPULSE_CLUSTER__SIGNING_KEY_FILE",
                verify.to_str().unwrap(),
            ),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("verify key"), "{err}");
    // Insecure starts, and says so.
    let (mut child, addr) = spawn_serve_with(
        "insecure.toml",
        "[server]\nbind = \"127.0.0.1:0\"\n[cluster]\ninsecure = true\n",
        &[("DEXPULSE_CLUSTER__URL", "nats://127.0.0.1:1".into())],
        &["--role", "edge"],
    );
    assert_eq!(http(&addr, "/readyz").0, 503);
    assert_eq!(sigterm(&mut child), Some(0));
    let log = std::fs::read_to_string(tmp("insecure.toml.log")).unwrap();
    assert!(log.contains("cluster.insecure = true"), "{log}");
    // keygen never overwrites.
    let out = run(&["keygen", "--out", keys().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(73));
}

/// A password in the URL is used, and shown nowhere: not in `/readyz`, not in the log, not in
/// a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_works_and_is_never_shown() {
    if !nats_here("a_password_in_the_url_works_and_is_never_shown") {
        return;
    }
    let _heavy = crate::support::heavy().await;
    let nats = Nats::start(store("redact"));
    // The edge's password is right, but nothing has created the stream yet: not ready.
    let (mut edge1, e) = edge("edge-r.toml", &nats);
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = http(&e, "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("does not exist yet"), "{body}");
    // A wrong password: refused, and the reason says so without the password.
    let wrong = format!("nats://edge:Sup3rS3cret-wr0ng@127.0.0.1:{}", nats.port);
    let (mut edge2, e2) = spawn_serve_with(
        "edge-r2.toml",
        EDGE,
        &[
            ("DEXPULSE_CLUSTER__URL", wrong.clone()),
            (
                "DEXPULSE_CLUSTER__VERIFY_KEY_FILE",
                keys().join("verify.key").display().to_string(),
            ),
        ],
        &["--role", "edge"],
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    let body = loop {
        let (status, body) = http(&e2, "/readyz");
        assert_eq!(status, 503);
        if body.contains("authorization") || body.contains("Authorization") {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!body.contains("Sup3rS3cret"), "{body}");
    assert!(!body.contains(EDGE_PASSWORD), "{body}");
    assert_eq!(sigterm(&mut edge1), Some(0));
    assert_eq!(sigterm(&mut edge2), Some(0));
    for log in ["edge-r.toml.log", "edge-r2.toml.log"] {
        let text = std::fs::read_to_string(tmp(log)).unwrap();
        assert!(
            !text.contains("Sup3rS3cret") && !text.contains(EDGE_PASSWORD),
            "{log}: {text}"
        );
    }
    // A configuration error names the field, not the password.
    let cfg = tmp("badurl.toml");
    std::fs::write(&cfg, "[server]\nbind = \"127.0.0.1:0\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dexpulse"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--role", "edge"])
        .env(
            "DEXPULSE_CLUSTER__URL",
            "http://edge:Sup3rS3cret@127.0.0.1:1",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("cluster.url") && !err.contains("Sup3rS3cret"),
        "{err}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, purpose) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// Each way of authenticating that NATS offers a service user (besides the user and password
/// of the tests above): a token (inline, from a file, or in the URL), an NKey seed, and TLS
/// with the server's CA and a client certificate the server requires. A node without them is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_nkeys_and_tls_client_certificates_authenticate() {
    if !nats_here("tokens_nkeys_and_tls_client_certificates_authenticate") {
        return;
    }
    let base = |extra: &str| {
        format!("listen: 127.0.0.1:{{port}}\njetstream {{ store_dir: \"{{store}}\" }}\n{extra}\n")
    };
    let dir = tmp("auth-files");
    std::fs::create_dir_all(&dir).unwrap();
    let ingest = |url: String, f: &dyn Fn(&mut RawSettings)| {
        let mut raw = RawSettings {
            url: Some(url),
            role: Role::Ingest,
            signing_key_file: Some(keys().join("signing.key")),
            ..RawSettings::default()
        };
        f(&mut raw);
        Settings::parse(&raw).unwrap()
    };
    let works = |s: Settings| async move {
        let stream = EventStream::connect(&s).await.map_err(|e| e.to_string())?;
        stream
            .publish("a", 1, (&Epoch::parse("x").unwrap(), 1), payload(1))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };

    // A token.
    let nats = Nats::start_with(
        &base("authorization { token: \"t0ken-for-the-test\" }"),
        store("token"),
    );
    std::fs::write(dir.join("token"), "t0ken-for-the-test\n").unwrap();
    works(ingest(nats.url(), &|r| {
        r.token_file = Some(dir.join("token"))
    }))
    .await
    .unwrap();
    works(ingest(nats.url(), &|r| {
        r.token = Some(Secret::new("t0ken-for-the-test"))
    }))
    .await
    .unwrap();
    works(ingest(
        format!("nats://t0ken-for-the-test@127.0.0.1:{}", nats.port),
        &|_| {},
    ))
    .await
    .unwrap();
    let err = works(ingest(nats.url(), &|_| {})).await.unwrap_err();
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    drop(nats);

    // An NKey.
    let user = nkeys::KeyPair::new_user();
    let nats = Nats::start_with(
        &base(&format!(
            "authorization {{ users: [ {{ nkey: {} }} ] }}",
            user.public_key()
        )),
        store("nkey"),
    );
    std::fs::write(dir.join("user.nk"), user.seed().unwrap()).unwrap();
    works(ingest(nats.url(), &|r| {
        r.nkey_seed_file = Some(dir.join("user.nk"))
    }))
    .await
    .unwrap();
    let other = nkeys::KeyPair::new_user();
    std::fs::write(dir.join("other.nk"), other.seed().unwrap()).unwrap();
    assert!(works(ingest(nats.url(), &|r| {
        r.nkey_seed_file = Some(dir.join("other.nk"))
    }))
    .await
    .is_err());
    drop(nats);

    // TLS, with a client certificate the server requires.
    certificates(&dir);
    let tls = format!(
        "tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server-key.pem\", ca_file: \"{0}/ca.pem\", verify: true }}",
        dir.display()
    );
    let nats = Nats::start_with(&base(&tls), store("tls"));
    let with_tls = |r: &mut RawSettings| {
        r.tls_ca_file = Some(dir.join("ca.pem"));
        r.tls_cert_file = Some(dir.join("client.pem"));
        r.tls_key_file = Some(dir.join("client-key.pem"));
    };
    works(ingest(format!("tls://127.0.0.1:{}", nats.port), &with_tls))
        .await
        .unwrap();
    // Without the client certificate, or without the CA, no connection.
    let no_cert = |r: &mut RawSettings| r.tls_ca_file = Some(dir.join("ca.pem"));
    assert!(
        works(ingest(format!("tls://127.0.0.1:{}", nats.port), &no_cert))
            .await
            .is_err()
    );
    let no_ca = |r: &mut RawSettings| {
        r.tls_cert_file = Some(dir.join("client.pem"));
        r.tls_key_file = Some(dir.join("client-key.pem"));
    };
    assert!(
        works(ingest(format!("tls://127.0.0.1:{}", nats.port), &no_ca))
            .await
            .is_err()
    );
}

/// One way to authenticate at a time; files that cannot be read are named.
#[test]
fn conflicting_or_unreadable_credentials_are_configuration_errors() {
    let parse = |f: &dyn Fn(&mut RawSettings)| {
        let mut raw = RawSettings {
            url: Some("nats://127.0.0.1:4222".into()),
            ..RawSettings::default()
        };
        f(&mut raw);
        Settings::parse(&raw).map(|_| ()).map_err(|e| e.field)
    };
    assert_eq!(
        parse(&|r| {
            r.url = Some("nats://u:p@127.0.0.1:4222".into());
            r.token = Some(Secret::new("t"));
        }),
        Err("token".to_string())
    );
    assert_eq!(
        parse(&|r| r.user = Some("u".into())),
        Err("password".to_string())
    );
    assert_eq!(
        parse(&|r| r.password_file = Some("/nonexistent/pw".into())),
        Err("password_file".to_string())
    );
    assert_eq!(
        parse(&|r| r.credentials = Some("/nonexistent/x.creds".into())),
        Err("credentials".to_string())
    );
    assert_eq!(
        parse(&|r| r.tls_cert_file = Some(keys().join("verify.key"))),
        Err("tls_key_file".to_string())
    );
    let s = Settings::parse(&RawSettings {
        url: Some("nats://dx:pa%40ss@127.0.0.1:4222".into()),
        ..RawSettings::default()
    })
    .unwrap();
    assert_eq!(s.url.as_deref(), Some("nats://127.0.0.1:4222"));
    assert!(!format!("{s:?}").contains("pa@ss"), "{s:?}");
    assert!(matches!(
        s.auth,
        dexpulse::cluster::Auth::UserPassword { ref user, ref password }
            if user == "dx" && password.expose() == "pa@ss"
    ));
}
