//! Hostile clients and hostile upstreams (docs/protocol.md, "Limits"; docs/sources.md): each
//! attack that was found against the server, reproduced with real sockets on 127.0.0.1, and
//! what must hold instead: bounded filter state with a bystander still served, half-sent
//! requests closed and unable to hold shutdown, a compressed bomb refused without the memory
//! growing, readiness failing in a 429 or 403 storm, a resume that never hides a loss, a stalled
//! client that reads late still told what it missed, and every close code as a client sees it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;
use crate::upstream::{Fault, Upstream};

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

/// `n` connections that each sent half a request's headers.
async fn half_sent(r: &dexpulse::app::Running, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    held
}

/// 31 connections × 32 subscribes of 2,650-pair filters took the old server from 18 MiB to
/// 2.5 GiB. Now a list over `max_filter_list` and a session over `max_filter_entries` are
/// refused with the limit named, identical sets share one channel, the hub holds a bounded
/// number of entries, a bystander is served throughout, and everything is freed when the
/// attackers leave, whether or not anything is published.
#[tokio::test]
async fn big_filters_are_bounded_shared_and_freed_and_a_bystander_is_served() {
    let r = start(test_config()).await;
    let mut bystander = connect(&r).await;
    next_json(&mut bystander).await;
    ask(&mut bystander, r#"{"op":"subscribe","channel":"signals"}"#).await;
    let filter = |c: usize, k: usize, n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!("\"solana:C{c}K{k}P{i}\"")).collect();
        format!(
            r#"{{"op":"subscribe","channel":"signals","filter":{{"pairs":[{}]}}}}"#,
            pairs.join(",")
        )
    };
    let (mut accepted, mut refused) = (0, 0);
    let mut attackers = Vec::new();
    for c in 0..8 {
        let mut ws = connect(&r).await;
        next_json(&mut ws).await;
        let too_long = ask(&mut ws, &filter(c, 99, 1_001)).await;
        assert_eq!(too_long["code"], "bad_request");
        assert!(
            too_long["message"]
                .as_str()
                .unwrap()
                .contains("at most 1000"),
            "{too_long}"
        );
        for k in 0..32 {
            let a = ask(&mut ws, &filter(c, k, 1_000)).await;
            if a["type"] == "subscribed" {
                accepted += 1;
            } else {
                assert_eq!(a["code"], "bad_request", "{a}");
                assert!(a["message"]
                    .as_str()
                    .unwrap()
                    .contains("session.max_filter_entries"));
                refused += 1;
            }
        }
        attackers.push(ws);
    }
    // 1,001 entries a filter (its 1,000 pairs and itself): four fit in 4,096, a fifth does not.
    assert_eq!((accepted, refused), (8 * 4, 8 * 28));
    assert!(r.hub().fanout().filter_entries() <= 8 * 4096 + 1);
    r.hub().publish(&plain(3));
    let got = [
        next_json(&mut bystander).await,
        next_json(&mut bystander).await,
        next_json(&mut bystander).await,
    ];
    assert_eq!(seqs(&got), [1, 2, 3]);
    // Two sessions with the same filters in another order share one channel.
    let mut a = connect(&r).await;
    let mut b = connect(&r).await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let before = r.hub().fanout().channels();
    ask(
        &mut a,
        r#"{"op":"subscribe","channel":"signals","filter":{"chains":["x","y"]}}"#,
    )
    .await;
    ask(
        &mut b,
        r#"{"op":"subscribe","channel":"signals","filter":{"chains":["y","x","x"]}}"#,
    )
    .await;
    assert_eq!(r.hub().fanout().channels(), before + 1);
    drop(attackers);
    drop((a, b));
    eventually("the attackers' channels are freed", || {
        r.hub().fanout().channels() == 1
    })
    .await;
    assert_eq!(r.hub().fanout().filter_entries(), 1);
    r.shutdown().await.unwrap();
}

/// A request that sends half its headers used to stay open forever and hold SIGTERM. Now the
/// header time-out closes it, and shutdown finishes within the grace period however many such
/// requests are open.
#[tokio::test]
async fn half_sent_requests_are_closed_and_cannot_hold_shutdown() {
    let mut cfg = test_config();
    cfg.server.header_read_timeout_seconds = 0.3;
    let r = start(cfg).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("the half-sent request was never closed")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    r.shutdown().await.unwrap();

    // With a long header time-out, shutdown does not wait for it.
    let mut cfg = test_config();
    cfg.server.header_read_timeout_seconds = 600.0;
    cfg.server.shutdown_grace_seconds = 0.5;
    let r = start(cfg).await;
    let _held = half_sent(&r, 20).await;
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    let token = r.shutdown_token();
    let waiter = tokio::spawn(r.wait());
    token.cancel();
    tokio::time::timeout(WAIT, waiter)
        .await
        .expect("shutdown waited for the half-sent requests")
        .unwrap()
        .unwrap();
    let (close, _) = until_close(&mut ws).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
}

/// More connections than `max_open_connections` are closed at accept (counted), and a normal
/// client gets in again as soon as they go.
#[tokio::test]
async fn open_connections_are_capped() {
    let mut cfg = test_config();
    cfg.server.max_connections = 4;
    cfg.server.max_open_connections = 4;
    let r = start(cfg).await;
    let held = half_sent(&r, 4).await;
    eventually("the fifth is shed", || {
        // Each attempt that finds no place is closed at once and counted.
        let _ = std::net::TcpStream::connect(r.addr);
        metric(
            &r,
            "dexpulse_shed_connections_total{reason=\"max_open_connections\"}",
        ) >= 1.0
    })
    .await;
    drop(held);
    let mut ws = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ws.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no place came free");
        if let Ok((c, _)) = tokio_tungstenite::connect_async(url(&r, "/v1/ws")).await {
            ws = Some(c);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(next_json(ws.as_mut().unwrap()).await["type"], "welcome");
    r.shutdown().await.unwrap();
}

/// With every place taken by sockets that send nothing (one address, no per-IP limit), a
/// monitor's request used to be shed until the header time-out freed them. Now the connection
/// idle longest is closed to make room (one that has just come is not: the unit tests).
#[tokio::test]
async fn a_full_server_makes_room_by_closing_the_longest_idle_connection() {
    let mut cfg = test_config();
    cfg.server.max_connections = 4;
    cfg.server.max_open_connections = 4;
    cfg.server.header_read_timeout_seconds = 600.0;
    let r = start(cfg).await;
    let mut held = half_sent(&r, 4).await;
    // Idle for a second: they may now be closed to make room.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The first of the idle ones was closed: it reads the end of the stream.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, held[0].read(&mut buf))
        .await
        .expect("the oldest idle connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(
        metric(
            &r,
            "dexpulse_shed_connections_total{reason=\"evicted_idle\"}"
        ),
        1.0
    );
    r.shutdown().await.unwrap();
}

/// An upstream (or a mirror, or a proxy) that answers with a gzip bomb: the body is cut off at
/// `max_body_bytes` after decompression, counted as a fault with its cause, and the memory does
/// not grow with the bomb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_bomb_from_upstream_is_refused_without_the_memory_growing() {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    let up = Upstream::start().await;
    // 384 MiB of zeros, under half a MiB on the wire; built before measuring.
    let bomb = Fault::Gzip(std::sync::Arc::new(crate::upstream::gzip_zeros(384 << 20)));
    let mut cfg = crate::live::live_config(&up);
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.timeout_seconds = 5.0;
    cfg.source.live.circuit_failures = 100;
    let before = rss_kib();
    up.with(|i| i.faults.extend([bomb.clone(), bomb]));
    let r = start_sourced(cfg).await;
    eventually("both bombs were answered", || {
        metric(
            &r,
            "dexpulse_upstream_requests_total{class=\"dexscreener_pairs\",status=\"error\"}",
        ) >= 2.0
    })
    .await;
    let grew_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grew_mib < 192, "the RSS grew by {grew_mib} MiB");
    eventually("good data after the bombs", || r.hub().pairs().len() >= 2).await;
    r.shutdown().await.unwrap();
}

/// A data outage made of 429s, or of 403s, is not ready, with the reason.
#[tokio::test]
async fn readiness_fails_in_a_429_or_403_storm() {
    for (status, want) in [
        (429, "refuses every request (HTTP 429 (rate limited))"),
        (403, "circuit open (HTTP 403)"),
    ] {
        let up = Upstream::start().await;
        let mut cfg = crate::live::live_config(&up);
        cfg.source.live.gecko_pools.clear();
        cfg.source.live.circuit_failures = 3;
        cfg.source.live.backoff_base_seconds = 0.01;
        cfg.source.live.backoff_max_seconds = 0.05;
        let r = start_sourced(cfg).await;
        eventually("data first", || r.hub().pairs().len() >= 2).await;
        let (status_ok, _) = http_get(&r, "/readyz", &[]).await;
        assert_eq!(status_ok, 200);
        up.with(|i| i.always = Some(status));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, body) = http_get(&r, "/readyz", &[]).await;
            let reason = serde_json::from_str::<Value>(&body).unwrap()["reason"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if code == 503 && reason.contains(want) {
                assert!(reason.contains("dexscreener_pairs"), "{reason}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{status}: still {code} {reason}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.shutdown().await.unwrap();
    }
}

/// A resume of more than the session's queue, while the history keeps rolling past what the
/// client has read: `recovered` is true only if every event was retained when asked, and then
/// every seq is either delivered, in order, or inside a `lagged` notice; nothing is lost
/// silently.
#[tokio::test]
async fn a_resume_larger_than_the_queue_loses_nothing_it_does_not_report() {
    let mut cfg = retaining(600);
    cfg.session.queue_max_messages = 32;
    let r = start(cfg).await;
    r.hub().publish(&plain(500));
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let a = ask(
        &mut ws,
        &format!(r#"{{"op":"subscribe","channel":"signals","resume_from":{{"epoch":"{epoch}","seq":0}}}}"#),
    )
    .await;
    assert_eq!(a["recovered"], true);
    // The client reads slowly while 2,000 more are published: the oldest fall out of the history.
    let mut msgs = Vec::new();
    for round in 0..40 {
        r.hub().publish(&plain(50));
        for _ in 0..(if round < 39 { 10 } else { 0 }) {
            msgs.push(next_json(&mut ws).await);
        }
    }
    let head = r.hub().head_seq();
    assert_eq!(head, 2_500);
    while seqs(&msgs).last().copied() != Some(head) {
        msgs.push(next_json(&mut ws).await);
    }
    let mut covered = vec![false; head as usize + 1];
    let mut last = 0;
    for m in &msgs {
        if let Some(seq) = m["seq"].as_u64() {
            assert!(seq > last, "out of order: {seq} after {last}");
            last = seq;
            covered[seq as usize] = true;
        } else if m["type"] == "lagged" {
            for s in m["missed_from"].as_u64().unwrap()..=m["missed_to"].as_u64().unwrap() {
                covered[s as usize] = true;
            }
        }
    }
    let lost: Vec<usize> = (1..=head as usize).filter(|s| !covered[*s]).collect();
    assert!(
        lost.is_empty(),
        "lost without a word: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        msgs.iter().any(|m| m["type"] == "lagged"),
        "the history did roll past the client"
    );
    r.shutdown().await.unwrap();
}

/// A client that stops reading is closed as a slow consumer; when it starts reading again (even
/// after the shutdown grace period) it finds the `lagged` notice covering everything it missed,
/// then the close frame.
#[tokio::test]
async fn a_stalled_client_that_reads_late_still_gets_its_notice_and_close() {
    let mut cfg = test_config();
    cfg.server.shutdown_grace_seconds = 1.0;
    cfg.session.queue_max_messages = 64;
    cfg.session.stall_close_seconds = 0.3;
    let r = start(cfg).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(r.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        url(&r, "/v1/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    next_json(&mut slow).await;
    ask(&mut slow, r#"{"op":"subscribe","channel":"signals"}"#).await;
    while metric(&r, "dexpulse_session_closes_total{code=\"4008\"}") < 1.0 {
        r.hub().publish(&plain(50));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let head = r.hub().head_seq();
    let (close, texts) = until_close(&mut slow).await;
    assert_eq!(close, Some((4008, "slow consumer".to_string())));
    let msgs: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let last = msgs.last().unwrap();
    assert_eq!(last["type"], "lagged");
    let delivered = seqs(&msgs);
    assert_eq!(
        last["missed_from"].as_u64().unwrap(),
        delivered.last().copied().unwrap_or(0) + 1,
        "the notice starts right after the last delivered seq"
    );
    let to = last["missed_to"].as_u64().unwrap();
    assert!(
        to <= head && to >= last["missed_from"].as_u64().unwrap(),
        "{last}"
    );
    r.shutdown().await.unwrap();
}

/// The WebSocket protocol's rules as a client library sees them: invalid UTF-8 is 1007, a
/// protocol violation (a 126-byte ping) 1002; a client that answers no ping is closed with
/// 4000 however much else it sends.
#[tokio::test]
async fn protocol_violations_get_their_close_codes() {
    let mut cfg = test_config();
    cfg.session.heartbeat_seconds = 0.2;
    let r = start(cfg).await;
    for (frame, code) in [
        (
            Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true),
            1007,
        ),
        (Frame::ping(vec![0u8; 126]), 1002),
    ] {
        let mut ws = connect(&r).await;
        next_json(&mut ws).await;
        ws.send(Message::Frame(frame)).await.unwrap();
        let (close, _) = until_close(&mut ws).await;
        assert_eq!(close.map(|c| c.0), Some(code));
    }
    // Never reads (so never answers a ping), sends a ping op every 100 ms.
    let ws = connect(&r).await;
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for _ in 0..200 {
            if tx
                .send(Message::Text(r#"{"op":"ping"}"#.into()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eventually("closed for not answering pings", || {
        metric(&r, "dexpulse_session_closes_total{code=\"4000\"}") >= 1.0
    })
    .await;
    let close = loop {
        match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close, Some(4000));
    sender.abort();
    r.shutdown().await.unwrap();
}

/// Control frames count towards the inbound rate: 20,000 pings are not 20,000 pongs, they are
/// a flood, closed with 1008 after the burst, as a flood of text messages is.
#[tokio::test]
async fn a_flood_of_pings_is_closed_like_any_flood() {
    let r = start(test_config()).await;
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for _ in 0..20_000 {
            if tx.send(Message::Ping(vec![1].into())).await.is_err() {
                break;
            }
        }
    });
    let mut pongs = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close, Some(1008));
    // The burst (40 by default), answered before the close: not thousands.
    assert!(pongs <= 100, "{pongs} pongs");
    sender.abort();
    r.shutdown().await.unwrap();
}

/// The handshake is checked: a bad key is a 400, a browser page of another origin a 403 (unless
/// listed), an address that keeps presenting wrong API keys is throttled (429), and `bearer` in
/// lowercase is a bearer.
#[tokio::test]
async fn handshakes_origins_and_wrong_keys() {
    let mut cfg = test_config();
    cfg.auth.keys = vec![dexpulse::server::auth::RawKey {
        key: "the-right-key".into(),
        max_connections: 10,
    }];
    cfg.auth.failed_keys_per_ip_per_minute = 5.0;
    cfg.server.allowed_origins = vec!["https://dash.example".into()];
    let r = start(cfg).await;
    let addr = r.addr;
    let raw = |key: &str, extra: &str| {
        format!(
            "GET /v1/ws?token=the-right-key HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
        )
    };
    let status_of = |req: String| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(status_of(raw("not-base64!", "")).await, "400");
    assert_eq!(status_of(raw("c2hvcnQ=", "")).await, "400");
    assert_eq!(status_of(raw("dGhlIHNhbXBsZSBub25jZQ==", "")).await, "101");
    assert_eq!(
        status_of(raw(
            "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin: https://evil.example\r\n"
        ))
        .await,
        "403"
    );
    assert_eq!(
        status_of(raw(
            "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin: https://dash.example\r\n"
        ))
        .await,
        "101"
    );
    let ws_with = |auth: &str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url(
                &r, "/v1/ws",
            ))
            .unwrap();
        req.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        req
    };
    assert!(
        tokio_tungstenite::connect_async(ws_with("bearer the-right-key"))
            .await
            .is_ok()
    );
    let mut statuses = Vec::new();
    for _ in 0..7 {
        match tokio_tungstenite::connect_async(ws_with("Bearer wrong-guess-1")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                statuses.push(resp.status().as_u16())
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    assert!(metric(&r, "dexpulse_rejected_upgrades_total{status=\"429\"}") >= 2.0);
    r.shutdown().await.unwrap();
}

/// Clients behind one address (a proxy, a NAT, the load balancer in front of edges): one of
/// them keeps presenting wrong keys, and every other with the right key still gets in, every
/// time, while the guesser gets 429.
#[tokio::test]
async fn wrong_keys_from_a_shared_address_never_lock_out_a_right_key() {
    let mut cfg = test_config();
    cfg.auth.keys = vec![dexpulse::server::auth::RawKey {
        key: "the-right-key".into(),
        max_connections: 1_000,
    }];
    cfg.auth.failed_keys_per_ip_per_minute = 10.0;
    let r = start(cfg).await;
    let ws_with = |auth: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url(&r, "/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        req
    };
    let (mut wrong, mut right, mut throttled) = (0, 0, 0);
    for i in 0..60 {
        // Two guesses for every honest connection: the address is over its budget from the
        // sixth round on.
        for g in 0..2 {
            match tokio_tungstenite::connect_async(ws_with(&format!("Bearer guess-{i}-{g}"))).await
            {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    match resp.status().as_u16() {
                        401 => wrong += 1,
                        429 => throttled += 1,
                        s => panic!("{s}"),
                    }
                }
                other => panic!("a wrong key got in: {:?}", other.map(|_| ())),
            }
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_with("Bearer the-right-key"))
            .await
            .unwrap_or_else(|e| panic!("round {i}: the right key was refused: {e}"));
        right += 1;
        ws.close(None).await.unwrap();
    }
    assert_eq!(right, 60);
    assert!(throttled >= 100, "{wrong} 401, {throttled} 429");
    r.shutdown().await.unwrap();
}

/// A hostile DexScreener (or a mirror set by the base-URL variables): the pair asked for has a
/// symbol with a zero-width space, a right-to-left override and a megabyte of letters, a DEX
/// id and labels as large; every answer also carries unrequested pairs with megabyte symbols
/// and an address that is a script. With `discovery = false`: nothing unasked is adopted, the
/// strings kept are short and visibly marked, and the server's memory does not grow with them.
#[tokio::test]
async fn a_hostile_upstream_cannot_make_us_hold_large_or_deceptive_strings() {
    const PAIR: &str = "BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9";
    let up = Upstream::start().await;
    // Within the body limit (8 MiB): about 4 MiB an answer.
    let mb = "W".repeat(1 << 20);
    let big = "V".repeat(100_000);
    up.with(|i| {
        let mut p = i.pairs[PAIR].front().unwrap().clone();
        p["baseToken"]["symbol"] = Value::from(format!("\u{202e}US\u{200b}DC{mb}"));
        p["dexId"] = Value::from(big.clone());
        p["labels"] = Value::from(vec!["L".repeat(10_000); 50]);
        i.pairs
            .insert(PAIR.into(), std::collections::VecDeque::from([p.clone()]));
        for n in 0..20 {
            let mut x = p.clone();
            x["pairAddress"] = Value::from(format!("Unasked{n:04}"));
            x["baseToken"]["symbol"] = Value::from(big.clone());
            x["dexId"] = Value::from("raydium");
            x["labels"] = Value::from(Vec::<String>::new());
            i.extra.push(x);
        }
        let mut script = p.clone();
        script["pairAddress"] = Value::from("javascript:alert(7)");
        i.extra.push(script);
    });
    let mut cfg = crate::live::live_config(&up);
    cfg.source.live.pairs = vec![format!("solana:{PAIR}")];
    cfg.source.live.gecko_pools.clear();
    cfg.source.live.discovery = false;
    let r = start_sourced(cfg).await;
    eventually("the pair polled 10 times", || {
        up.with(|i| i.pair_refreshes) >= 10
    })
    .await;
    let (status, body) = http_get(&r, "/v1/pairs", &[]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let pairs = v["pairs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        1,
        "only the pair asked for: {}",
        &body[..body.len().min(500)]
    );
    let p = &pairs[0];
    assert_eq!(p["pair_address"], PAIR);
    let symbol = p["base_token"]["symbol"].as_str().unwrap();
    assert!(symbol.starts_with("\u{FFFD}US\u{FFFD}DC"), "{symbol}");
    assert_eq!(symbol.chars().count(), 32);
    assert!(symbol.ends_with('…'));
    assert!(p["dex_id"].as_str().unwrap().chars().count() <= 32);
    assert!(
        body.len() < 8_000,
        "the whole answer is small: {} bytes",
        body.len()
    );
    assert!(!body.contains("Unasked") && !body.contains("javascript"));
    assert!(p["labels"].as_array().is_none_or(|l| l.len() <= 8), "{p}");
    assert!(metric(&r, "dexpulse_upstream_unrequested_pairs_total") >= 20.0);
    r.shutdown().await.unwrap();
}

/// Bytes as a client sends them, and the server's first answer: up to its close, the end of
/// its body (`content-length`) or, for a 101, its head.
async fn raw_exchange(r: &dexpulse::app::Running, request: &[u8]) -> String {
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    // A server may answer and close before it has read everything: that is not an error here.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let complete = |buf: &[u8]| {
        let text = String::from_utf8_lossy(buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        if head.starts_with("HTTP/1.1 101") {
            return true;
        }
        head.to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .is_some_and(|n| body.len() >= n)
    };
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 65536];
        while !complete(&buf) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status_and_json(answer: &str) -> (u16, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Every error is JSON, including the ones hyper answers before any route (a request line it
/// cannot parse, a URI or headers over its limits) and a path segment that is not UTF-8; every
/// response says `Referrer-Policy: no-referrer`.
#[tokio::test]
async fn every_error_body_is_json() {
    let r = start(test_config()).await;
    let host = r.addr.to_string();
    for (request, status, code) in [
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            format!(
                "GET /{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1_500_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /v1/pairs/sim/%ff%fe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            400,
            "bad_request",
        ),
        (
            format!(
                "GET /v1/pairs?since=%ff HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            400,
            "bad_request",
        ),
    ] {
        let answer = raw_exchange(&r, &request).await;
        let (got, body) = status_and_json(&answer);
        assert_eq!(got, status, "{answer}");
        assert_eq!(body["error"]["code"], code, "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("referrer-policy: no-referrer"),
            "{answer}"
        );
    }
    for path in ["/", "/assets/app.js", "/v1/pairs", "/nope"] {
        let (_, head, _) = http_request(&r, "GET", path, &[]).await;
        assert!(
            head.contains("referrer-policy: no-referrer"),
            "{path}: {head}"
        );
    }
    r.shutdown().await.unwrap();
}

/// DNS rebinding: a page on `evil.example` whose name now resolves to this server sends
/// `Host: evil.example` (and an `Origin` to match), so it is refused on every route, the
/// WebSocket upgrade included; this machine's own names and IP literals are served.
#[tokio::test]
async fn a_rebound_name_is_refused_on_every_request() {
    let r = start(test_config()).await;
    let port = r.addr.port();
    let upgrade = |host: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let evil = format!("evil.example:{port}");
    let answer = raw_exchange(&r, upgrade(&evil).as_bytes()).await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(status, 421, "{answer}");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    for path in ["/v1/pairs", "/", "/v1/signals", "/metrics"] {
        let answer = raw_exchange(
            &r,
            format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_and_json(&answer).0, 421, "{path}: {answer}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let answer = raw_exchange(&r, upgrade(&host).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{host}: {answer}");
    }
    // A listed name is served.
    let mut cfg = test_config();
    cfg.server.allowed_hosts = vec!["stream.example".into()];
    let listed = start(cfg).await;
    let answer = raw_exchange(
        &listed,
        b"GET /v1/pairs HTTP/1.1\r\nHost: stream.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    listed.shutdown().await.unwrap();
    r.shutdown().await.unwrap();
}
