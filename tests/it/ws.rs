//! WebSocket protocol v1 with real clients over loopback: welcome, subscribe and filters,
//! identical bytes for every subscriber, resume inside and outside the retained window, slow
//! consumers, bad input, auth and limits, heartbeats, shutdown.

use dexpulse::model::{Direction, Kind};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn welcome_subscribe_and_receive() {
    let r = start(test_config()).await;
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["protocol"], 1);
    assert_eq!(w["epoch"], r.hub().epoch().as_str());
    assert_eq!(w["head_seq"], 0);
    assert_eq!(w["heartbeat_s"], 25.0);
    assert!(w["server"].as_str().unwrap().starts_with("dexpulse/"));
    // A session joins the hub's signal channel with its first subscription, not before: until
    // then no event wakes it.
    assert_eq!(r.hub().fanout().subscriptions(), 0);
    let a = ask(&mut ws, r#"{"op":"subscribe","id":1,"channel":"signals"}"#).await;
    assert_eq!(r.hub().fanout().subscriptions(), 1);
    assert_eq!(
        (
            a["type"].as_str(),
            a["id"].as_u64(),
            a["subscription"].as_str()
        ),
        (Some("subscribed"), Some(1), Some("s1"))
    );
    r.hub().publish(&plain(3));
    let got = [
        next_json(&mut ws).await,
        next_json(&mut ws).await,
        next_json(&mut ws).await,
    ];
    assert_eq!(seqs(&got), [1, 2, 3]);
    for m in &got {
        assert_eq!(m["type"], "signal");
        assert!(m["published_at_us"].as_i64().unwrap() > 1_700_000_000_000_000);
        assert_eq!(m["event"]["schema"], "dexpulse.event/v1");
    }
    assert_eq!(
        ask(&mut ws, r#"{"op":"ping","id":"x"}"#).await,
        serde_json::json!({"type":"pong","id":"x"})
    );
    let u = ask(
        &mut ws,
        r#"{"op":"unsubscribe","id":9,"subscription":"s1"}"#,
    )
    .await;
    assert_eq!(u["type"], "unsubscribed");
    assert_eq!(
        r.hub().fanout().subscriptions(),
        0,
        "the last one out leaves the channel"
    );
    r.hub().publish(&plain(1));
    // Unsubscribed: the next message is the pong, not the event.
    assert_eq!(ask(&mut ws, r#"{"op":"ping"}"#).await["type"], "pong");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn filters_select_by_chain_pair_kind_direction_and_score() {
    // With a hub channel per filter set, and with one only (every other set then shares the
    // channel of every event, and the sessions filter for themselves): the same answers.
    for (max_filter_sets, channels) in [(1024, 5), (1, 1)] {
        let mut cfg = test_config();
        cfg.hub.max_filter_sets = max_filter_sets;
        filters_select(cfg, channels).await;
    }
}

async fn filters_select(cfg: dexpulse::app::settings::RawConfig, channels: usize) {
    let r = start(cfg).await;
    let shapes = [
        ("solana", Kind::VolumeSurge, Direction::Bullish, 70),
        ("solana", Kind::VolumeSurge, Direction::Bullish, 50),
        ("solana", Kind::MomentumUp, Direction::Bullish, 80),
        ("base", Kind::VolumeSurge, Direction::Bullish, 90),
        ("solana", Kind::VolumeSurge, Direction::Bearish, 90),
        ("solana", Kind::VolumeSurge, Direction::Bullish, 60),
    ];
    let evs = events(shapes.len(), |i, e| {
        let (c, k, d, s) = shapes[i];
        set(e, c, k, d, s);
    });
    let cases: [(&str, Vec<u64>); 5] = [
        (r#"{}"#, vec![1, 2, 3, 4, 5, 6]),
        (
            r#"{"chains":["solana"],"kinds":["volume_surge"],"directions":["bullish"],"min_score":60}"#,
            vec![1, 6],
        ),
        (r#"{"chains":["base"]}"#, vec![4]),
        (r#"{"pairs":["solana:p2","base:p3"]}"#, vec![3, 4]),
        (
            r#"{"directions":["bearish"],"kinds":["momentum_up","volume_surge"]}"#,
            vec![5],
        ),
    ];
    let mut clients = Vec::new();
    for (filter, _) in &cases {
        let mut ws = connect(&r).await;
        next_json(&mut ws).await;
        let a = ask(
            &mut ws,
            &format!(r#"{{"op":"subscribe","id":1,"channel":"signals","filter":{filter}}}"#),
        )
        .await;
        assert_eq!(a["type"], "subscribed", "{filter}: {a}");
        clients.push(ws);
    }
    assert_eq!(r.hub().fanout().channels(), channels);
    r.hub().publish(&evs);
    for ((filter, want), ws) in cases.iter().zip(clients.iter_mut()) {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next_json(ws).await);
        }
        assert_eq!(&seqs(&got), want, "{filter}");
        // Nothing else arrived: the next message is the pong.
        assert_eq!(
            ask(ws, r#"{"op":"ping"}"#).await["type"],
            "pong",
            "{filter}"
        );
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_subscribers_get_identical_bytes_and_overlapping_subscriptions_get_each_event_once() {
    let r = start(test_config()).await;
    let mut a = connect(&r).await;
    let mut b = connect(&r).await;
    next_text(&mut a).await;
    next_text(&mut b).await;
    ask(&mut a, r#"{"op":"subscribe","channel":"signals"}"#).await;
    ask(
        &mut b,
        r#"{"op":"subscribe","channel":"signals","filter":{"chains":["sim"]}}"#,
    )
    .await;
    ask(
        &mut b,
        r#"{"op":"subscribe","channel":"signals","filter":{"kinds":["rug_warning"]}}"#,
    )
    .await;
    r.hub().publish(&plain(4));
    for _ in 0..4 {
        assert_eq!(next_text(&mut a).await, next_text(&mut b).await);
    }
    assert_eq!(
        ask(&mut b, r#"{"op":"ping"}"#).await["type"],
        "pong",
        "each event once"
    );
    r.shutdown().await.unwrap();
}

/// Sends a request while events flow: collects the signals that arrive before its reply.
async fn request(ws: &mut Ws, text: &str, got: &mut Vec<Value>) -> Value {
    send(ws, text).await;
    loop {
        let m = next_json(ws).await;
        if m["type"] == "signal" {
            got.push(m);
        } else {
            return m;
        }
    }
}

/// Subscribes to one chain's signals while events flow; the answer's `head_seq`.
async fn subscribe_chain(ws: &mut Ws, chain: &str, got: &mut Vec<Value>) -> u64 {
    let op =
        format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"chains":["{chain}"]}}}}"#);
    let a = request(ws, &op, got).await;
    assert_eq!(a["type"], "subscribed", "{a}");
    a["head_seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_subscriptions_while_events_flow_loses_and_repeats_nothing() {
    // Each session's filter set has its own hub channel, so every subscribe and unsubscribe
    // moves the session from one channel to another while frames are being published.
    let mut cfg = test_config();
    cfg.hub.retain_events = 100_000;
    cfg.hub.retain_max_events = 100_000;
    // Room for everything: this test is about the switches, not about slow consumers.
    cfg.hub.topic_capacity = 8192;
    cfg.session.queue_max_bytes = 64 << 20;
    let r = start(cfg).await;
    let chains = ["solana", "base", "eth"];
    let batches: Vec<_> = (0..300)
        .map(|b| {
            events(10, |i, e| {
                let c = chains[(b * 10 + i) % 3];
                set(e, c, Kind::VolumeSurge, Direction::Bullish, 70)
            })
        })
        .collect();
    let chain_of = |seq: u64| chains[((seq - 1) % 3) as usize];
    let mut ws = connect(&r).await;
    let epoch = next_json(&mut ws).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let mut got = Vec::new();
    let head_a = subscribe_chain(&mut ws, "solana", &mut got).await;

    let hub = r.hub().clone();
    let publisher = tokio::spawn(async move {
        for batch in &batches {
            hub.publish(batch);
            tokio::task::yield_now().await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let head_b = subscribe_chain(&mut ws, "base", &mut got).await;
    let u = request(
        &mut ws,
        r#"{"op":"unsubscribe","subscription":"s1"}"#,
        &mut got,
    )
    .await;
    assert_eq!(u["type"], "unsubscribed");
    // Solana events published after this point must not come: the ping is answered after the
    // unsubscribe took effect.
    let p = request(&mut ws, r#"{"op":"ping"}"#, &mut got).await;
    assert_eq!(p["type"], "pong");
    let after_unsub = r.hub().head_seq();
    let resume = head_a + 1;
    let c = request(&mut ws, &format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"chains":["eth"]}},"resume_from":{{"epoch":"{epoch}","seq":{resume}}}}}"#), &mut got).await;
    assert_eq!(c["recovered"], true, "{c}");
    publisher.await.unwrap();
    let last = r.hub().head_seq();
    assert_eq!(last, 3000);
    // The last base and eth events: read until both have come.
    let want_end = |got: &Vec<Value>| {
        let max = |ch: &str| {
            got.iter()
                .filter(|m| m["event"]["chain"] == ch)
                .map(|m| m["seq"].as_u64().unwrap())
                .max()
                .unwrap_or(0)
        };
        max("base") >= 2999 && max("eth") >= 3000
    };
    while !want_end(&got) {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "signal", "{m}");
        got.push(m);
    }
    for m in &got {
        assert_eq!(m["event"]["chain"], chain_of(m["seq"].as_u64().unwrap()));
    }
    // Each subscription's stream (one chain each here) is in order; a resumed one replays the
    // past after the live frames the others already had, so the connection's seqs are not.
    for ch in chains {
        let s: Vec<u64> = got
            .iter()
            .filter(|m| m["event"]["chain"] == ch)
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{ch}: in order, each once"
        );
    }
    let mut seen = seqs(&got);
    seen.sort_unstable();
    let n = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), n, "each event once");
    let has = |s: u64| seen.binary_search(&s).is_ok();
    for s in 1..=last {
        let wanted = match chain_of(s) {
            // Subscribed from head_a until the unsubscribe (which the switch kept whole).
            "solana" => s > head_a && s <= head_b,
            "base" => s > head_b,
            // Resumed from `resume`: everything after it.
            _ => s > resume,
        };
        if wanted {
            assert!(has(s), "seq {s} ({}) missing", chain_of(s));
        }
        if chain_of(s) == "solana" && s > after_unsub {
            assert!(!has(s), "seq {s} came after its subscription ended");
        }
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn resume_inside_the_window_is_exact_then_live() {
    let r = start(test_config()).await;
    r.hub().publish(&plain(5));
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    assert_eq!(w["head_seq"], 5);
    let epoch = w["epoch"].as_str().unwrap().to_string();
    // Published after the welcome and before the subscribe: it must come once, in order.
    r.hub().publish(&plain(1));
    let a = ask(&mut ws, &format!(r#"{{"op":"subscribe","id":7,"channel":"signals","resume_from":{{"epoch":"{epoch}","seq":2}}}}"#)).await;
    assert_eq!(
        (a["type"].as_str(), a["recovered"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{a}"
    );
    r.hub().publish(&plain(2));
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next_json(&mut ws).await);
    }
    assert_eq!(seqs(&got), [3, 4, 5, 6, 7, 8], "no gap, no duplicate");
    assert_eq!(ask(&mut ws, r#"{"op":"ping"}"#).await["type"], "pong");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn resume_outside_the_window_or_epoch_says_not_recovered() {
    let cfg = retaining(3);
    let r = start(cfg).await;
    r.hub().publish(&plain(10));
    let mut ws = connect(&r).await;
    let epoch = next_json(&mut ws).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let a = ask(&mut ws, &format!(r#"{{"op":"subscribe","channel":"signals","resume_from":{{"epoch":"{epoch}","seq":2}}}}"#)).await;
    assert_eq!(
        (a["recovered"].as_bool(), a["oldest_seq"].as_u64()),
        (Some(false), Some(8)),
        "{a}"
    );
    let a = ask(
        &mut ws,
        r#"{"op":"subscribe","channel":"signals","resume_from":{"epoch":"another-life","seq":9}}"#,
    )
    .await;
    assert_eq!(a["recovered"], false, "{a}");
    // Live continues, once.
    r.hub().publish(&plain(1));
    assert_eq!(next_json(&mut ws).await["seq"], 11);
    assert_eq!(ask(&mut ws, r#"{"op":"ping"}"#).await["type"], "pong");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_stays_up() {
    let r = start(test_config()).await;
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    for (msg, code) in [
        ("{oops", "invalid_json"),
        ("[1,2]", "bad_request"),
        ("42", "bad_request"),
        (r#"{"op":"fly"}"#, "unknown_op"),
        (
            r#"{"op":"subscribe","channel":"trades"}"#,
            "unknown_channel",
        ),
        (
            r#"{"op":"subscribe","channel":"signals","filter":{"min_score":"high"}}"#,
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","channel":"signals","filter":{"chian":["solana"]}}"#,
            "bad_request",
        ),
        (
            r#"{"op":"unsubscribe","id":3,"subscription":"s99"}"#,
            "unknown_subscription",
        ),
    ] {
        let e = ask(&mut ws, msg).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{msg}: {e}"
        );
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let e = ask(
        &mut ws,
        r#"{"op":"subscribe","id":5,"channel":"signals","filter":{"chian":["solana"]}}"#,
    )
    .await;
    assert_eq!(e["id"], 5);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `chian`"),
        "{e}"
    );
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_request");
    assert_eq!(
        ask(&mut ws, r#"{"op":"ping","id":1}"#).await["type"],
        "pong",
        "still up"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009_and_a_flood_with_1008() {
    let mut cfg = test_config();
    cfg.session.max_message_bytes = 1024;
    cfg.session.inbound_burst = 5.0;
    cfg.session.inbound_per_second = 0.5;
    let r = start(cfg).await;
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    send(
        &mut ws,
        &format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(4000)),
    )
    .await;
    let (close, _) = until_close(&mut ws).await;
    assert_eq!(close.map(|c| c.0), Some(1009));

    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    for _ in 0..20 {
        if ws
            .send(Message::Text(r#"{"op":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (close, texts) = until_close(&mut ws).await;
    assert_eq!(close.map(|c| c.0), Some(1008));
    assert_eq!(texts.len(), 5, "the burst was answered: {texts:?}");
    // The server is fine.
    let mut ws = connect(&r).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    r.shutdown().await.unwrap();
}

/// A client that goes on sending after the server closed it (a flood, or more after an
/// oversized message): the server finishes the closing handshake, reading on until the
/// client's close (or draining the socket when the frame stream is out of step), so that the
/// client's sends never meet a connection reset and it reads the close code (a client library
/// that sees the reset first reports 1006, abnormal closure, instead).
#[tokio::test]
async fn a_client_that_keeps_sending_gets_its_close_code_and_no_reset() {
    let mut cfg = test_config();
    cfg.session.max_message_bytes = 1024;
    cfg.session.inbound_burst = 5.0;
    cfg.session.inbound_per_second = 0.5;
    let r = start(cfg).await;
    for (first, code) in [
        (r#"{"op":"ping"}"#.to_string(), 1008),
        (
            format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(60_000)),
            1009,
        ),
    ] {
        let mut ws = connect(&r).await;
        let mut sent = 0;
        let mut failed = None;
        for m in std::iter::once(first)
            .chain((0..3_000).map(|_| format!(r#"{{"op":"ping","pad":"{}"}}"#, "y".repeat(900))))
        {
            match ws.send(Message::Text(m.into())).await {
                Ok(()) => sent += 1,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        assert!(
            failed.as_deref().is_none_or(|e| !e.contains("reset")),
            "the server reset the connection after {sent} sends: {failed:?}"
        );
        let (close, _) = until_close(&mut ws).await;
        assert_eq!(close.map(|c| c.0), Some(code), "after {sent} sends");
        // Then the connection ends cleanly.
        let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        assert!(
            !matches!(&end, Some(Err(e)) if e.to_string().contains("reset")),
            "{end:?}"
        );
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_reads_gets_lagged_then_4008_while_others_get_everything() {
    let mut cfg = test_config();
    cfg.session.queue_max_messages = 64;
    cfg.session.queue_max_bytes = 64 * 1024;
    cfg.session.stall_close_seconds = 0.3;
    let r = start(cfg).await;

    // The slow client: a small receive buffer, subscribes, then never reads.
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

    let mut good = connect(&r).await;
    next_json(&mut good).await;
    ask(&mut good, r#"{"op":"subscribe","channel":"signals"}"#).await;

    // Publish in batches that fit the queue; the good client reads each whole before the next.
    let batch = plain(20);
    let mut published = 0u64;
    while metric(&r, "dexpulse_session_closes_total{code=\"4008\"}") < 1.0 {
        assert!(published < 200_000, "the slow client was never closed");
        r.hub().publish(&batch);
        published += batch.len() as u64;
        for _ in 0..batch.len() {
            let m = next_json(&mut good).await;
            assert_eq!(m["type"], "signal");
        }
    }
    assert_eq!(r.hub().head_seq(), published);
    assert!(metric(&r, "dexpulse_queue_drops_total") > 0.0);
    // Closed after its queue had been full for `stall_close_seconds`, not sooner.
    assert_eq!(metric(&r, "dexpulse_stall_to_close_seconds_count"), 1.0);
    assert!(metric(&r, "dexpulse_stall_to_close_seconds_sum") >= 0.3);
    // Everything the good client got is every seq, in order.
    r.hub().publish(&plain(1));
    assert_eq!(next_json(&mut good).await["seq"], published + 1);

    // The slow client now reads what was buffered: then `lagged`, then close 4008.
    let (close, texts) = until_close(&mut slow).await;
    assert_eq!(close, Some((4008, "slow consumer".to_string())));
    let last: Value = serde_json::from_str(texts.last().unwrap()).unwrap();
    assert_eq!(last["type"], "lagged", "{last}");
    crate::apidocs::check_server_message(&last);
    assert_eq!(last["subscription"], "s1");
    assert!(last["missed_from"].as_u64().unwrap() <= last["missed_to"].as_u64().unwrap());
    assert!(last["missed_to"].as_u64().unwrap() <= published);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_heartbeat() {
    let mut cfg = test_config();
    cfg.session.heartbeat_seconds = 0.1;
    let r = start(cfg).await;
    let mut silent = connect(&r).await;
    // A client that reads answers pings automatically and stays.
    let mut alive = connect(&r).await;
    next_json(&mut alive).await;
    let keep = tokio::spawn(async move {
        // Reading answers the server's pings (tungstenite replies with pongs as it reads).
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(800);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, alive.next()).await {}
        alive
    });
    eventually("the silent client is closed", || {
        metric(&r, "dexpulse_session_closes_total{code=\"4000\"}") >= 1.0
    })
    .await;
    let (close, _) = until_close(&mut silent).await;
    assert_eq!(close.map(|c| c.0), Some(4000));
    let mut alive = keep.await.unwrap();
    assert_eq!(
        ask(&mut alive, r#"{"op":"ping"}"#).await["type"],
        "pong",
        "the reading client stays"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_sends_close_frames() {
    let r = start(test_config()).await;
    let mut a = connect(&r).await;
    let mut b = connect(&r).await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let token = r.shutdown_token();
    let waiter = tokio::spawn(r.wait());
    token.cancel();
    for ws in [&mut a, &mut b] {
        let (close, _) = until_close(ws).await;
        assert_eq!(close, Some((1001, "server shutting down".to_string())));
    }
    waiter.await.unwrap().unwrap();
}

#[tokio::test]
async fn api_keys_401_429_and_max_connections_503() {
    let mut cfg = test_config();
    cfg.auth.keys = vec![dexpulse::server::auth::RawKey {
        key: "k-123456789".into(),
        max_connections: 1,
    }];
    cfg.server.max_connections = 2;
    let r = start(cfg).await;
    let status = |res: Result<_, tokio_tungstenite::tungstenite::Error>| match res {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(url(&r, "/v1/ws"))
                .await
                .map(|_| ())
        ),
        401
    );
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(url(&r, "/v1/ws?token=wrong-key-0"))
                .await
                .map(|_| ())
        ),
        401
    );
    let (first, _) = tokio_tungstenite::connect_async(url(&r, "/v1/ws?token=k-123456789"))
        .await
        .unwrap();
    let bearer = || {
        let mut req = url(&r, "/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", "Bearer k-123456789".parse().unwrap());
        req
    };
    assert_eq!(
        status(tokio_tungstenite::connect_async(bearer()).await.map(|_| ())),
        429,
        "one connection per key"
    );
    drop(first);
    eventually("the first connection is gone", || {
        r.state.limits.total() == 0
    })
    .await;
    let (second, _) = tokio_tungstenite::connect_async(bearer()).await.unwrap();
    assert_eq!(
        metric(&r, "dexpulse_rejected_upgrades_total{status=\"401\"}"),
        2.0
    );
    drop(second);
    r.shutdown().await.unwrap();

    // max_connections over all clients.
    let mut cfg = test_config();
    cfg.server.max_connections = 1;
    let r = start(cfg).await;
    let _one = connect(&r).await;
    let res = tokio_tungstenite::connect_async(url(&r, "/v1/ws"))
        .await
        .map(|_| ());
    assert_eq!(status(res), 503);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_pairs_channel_streams_pair_states() {
    let r = start(test_config()).await;
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    let a = ask(
        &mut ws,
        r#"{"op":"subscribe","channel":"pairs","filter":{"pairs":["sim:simexample00"]}}"#,
    )
    .await;
    assert_eq!(a["channel"], "pairs");
    let snap = dexpulse::source::simulator::example_snapshot();
    let mut engine = dexpulse::signal::Engine::new(dexpulse::signal::Params::default());
    engine.observe(&snap);
    let (s, m, _) = engine.pair_view(&snap.key).unwrap();
    let mut other = s.clone();
    other.key.address = "elsewhere".into();
    r.hub().pairs().update(&other, m, Default::default());
    r.hub()
        .pairs()
        .update(s, m, [Kind::VolumeSurge].into_iter().collect());
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "pair");
    assert_eq!(m["pair"]["pair_address"], "simexample00");
    assert_eq!(m["pair"]["price_usd"], "0.00012345");
    assert_eq!(
        m["pair"]["open_signals"],
        serde_json::json!(["volume_surge"])
    );
    assert_eq!(
        ask(&mut ws, r#"{"op":"ping"}"#).await["type"],
        "pong",
        "the other pair was filtered out"
    );
    r.shutdown().await.unwrap();
}

/// A `pairs` subscription starts with the current state of every pair its filter matches, in
/// pair order, right after `subscribed`; then changes. 600 pairs of about 800 bytes are more
/// than a small outbox holds at once: they come as it drains, none lost.
#[tokio::test]
async fn a_pairs_subscription_starts_with_every_matching_state() {
    let mut cfg = test_config();
    cfg.session.queue_max_bytes = 64 * 1024;
    let r = start(cfg).await;
    let mut snap = dexpulse::source::simulator::example_snapshot();
    for i in 0..600 {
        snap.key = dexpulse::model::PairKey::new(
            if i % 3 == 0 { "base" } else { "solana" },
            format!("p{i:04}"),
        );
        r.hub()
            .pairs()
            .update(&snap, Default::default(), Default::default());
    }
    let mut ws = connect(&r).await;
    next_json(&mut ws).await;
    ws.send(Message::text(
        r#"{"op":"subscribe","channel":"pairs","filter":{"chains":["solana"]}}"#,
    ))
    .await
    .unwrap();
    let sub = next_json(&mut ws).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let mut got = Vec::new();
    while got.len() < 400 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "pair", "{m}");
        assert_eq!(m["pair"]["chain"], "solana", "{m}");
        got.push(m["pair"]["pair_address"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = (0..600)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("p{i:04}"))
        .collect();
    assert_eq!(got, want, "every matching pair once, in order");
    // Then changes only.
    snap.key = dexpulse::model::PairKey::new("solana", "p0001");
    snap.price_usd = dexpulse::model::Price::parse("7.5");
    r.hub()
        .pairs()
        .update(&snap, Default::default(), Default::default());
    let m = next_json(&mut ws).await;
    assert_eq!(
        (&m["pair"]["pair_address"], &m["pair"]["price_usd"]),
        (&"p0001".into(), &"7.5".into())
    );
    r.shutdown().await.unwrap();
}

/// A session that fell behind once and caught up is not a slow consumer later: the stall timer
/// stops when its queue drains, not when the next frame comes (a filtered client after a large
/// resume is the likely case), and a resume larger than its queue arrives whole, in order.
#[tokio::test]
async fn a_session_that_caught_up_is_not_closed_as_a_slow_consumer_when_quiet() {
    let mut cfg = test_config();
    cfg.hub.retain_events = 10_000;
    cfg.session.queue_max_messages = 64;
    cfg.session.stall_close_seconds = 0.3;
    let r = start(cfg).await;
    let evs = events(2_000, |i, e| {
        set(
            e,
            if i % 2 == 0 { "sim" } else { "base" },
            Kind::RugWarning,
            Direction::Bearish,
            90,
        )
    });
    r.hub().publish(&evs);
    let mut ws = connect(&r).await;
    let w = next_json(&mut ws).await;
    let epoch = w["epoch"].as_str().unwrap().to_string();
    let a = ask(
        &mut ws,
        &format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"chains":["sim"]}},"resume_from":{{"epoch":"{epoch}","seq":0}}}}"#),
    )
    .await;
    assert_eq!(a["recovered"], true);
    for i in 0..1_000u64 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["seq"], 2 * i + 1, "{m}");
    }
    // Now only frames it does not want, for longer than the stall time.
    let quiet = events(50, |_, e| {
        set(e, "base", Kind::RugWarning, Direction::Bearish, 90)
    });
    for _ in 0..6 {
        r.hub().publish(&quiet);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ask(&mut ws, r#"{"op":"ping"}"#).await["type"], "pong");
    assert_eq!(
        metric(&r, "dexpulse_session_closes_total{code=\"4008\"}"),
        0.0
    );
    assert_eq!(metric(&r, "dexpulse_lagged_notices_total"), 0.0);
    r.shutdown().await.unwrap();
}
