//! The API documents kept true: docs/api/asyncapi.json (AsyncAPI 3, `/v1/ws`) and
//! docs/api/openapi.json (OpenAPI 3.1, the HTTP routes) are served as written; the real
//! server's frames and responses, recorded here over loopback, validate against their schemas
//! (the `jsonschema` crate), and what the server refuses does not; the two documents share
//! their data schemas unchanged; and both pass their ecosystems' validators
//! (tests/node/apidocs.mjs: @asyncapi/parser, @seriousme/openapi-schema-validator), which
//! also reject a broken copy. `.ci/run` installs those; under CI their absence fails.

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::server::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn doc(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/docs/api/{name}")).unwrap())
        .unwrap()
}

/// A validator for one component schema of a document (its `$ref`s resolve in the document).
fn schema(document: &Value, component: &str) -> jsonschema::Validator {
    let mut root = document.clone();
    assert!(
        root["components"]["schemas"].get(component).is_some(),
        "no schema {component}"
    );
    root["$ref"] = Value::from(format!("#/components/schemas/{component}"));
    jsonschema::validator_for(&root).unwrap()
}

fn check(v: &jsonschema::Validator, what: &str, instance: &Value) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{instance}");
}

/// Which AsyncAPI schema a server message is, by its type.
fn server_schema(kind: &str) -> &'static str {
    match kind {
        "welcome" => "Welcome",
        "subscribed" => "Subscribed",
        "unsubscribed" => "Unsubscribed",
        "pong" => "Pong",
        "signal" => "SignalMessage",
        "pair" => "PairMessage",
        "lagged" => "Lagged",
        "error" => "ErrorMessage",
        other => panic!("a server message the document does not name: {other}"),
    }
}

fn golden_events() -> Vec<dexpulse::model::SignalEvent> {
    std::fs::read_to_string(format!("{ROOT}/tests/fixtures/golden/events-seed11.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_documents_are_served_as_written_and_share_their_schemas() {
    let r = start(test_config()).await;
    for name in ["asyncapi.json", "openapi.json"] {
        let (status, head, body) = http_request(&r, "GET", &format!("/v1/{name}"), &[]).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), doc(name));
    }
    r.shutdown().await.unwrap();
    let (a, o) = (doc("asyncapi.json"), doc("openapi.json"));
    for s in [
        "Kind",
        "Direction",
        "Source",
        "Token",
        "Windows",
        "TxnWindows",
        "Event",
        "Pair",
        "Error",
        "SignalMessage",
    ] {
        assert_eq!(
            a["components"]["schemas"][s], o["components"]["schemas"][s],
            "{s} differs between the documents"
        );
    }
    // Every close code and error code of the protocol is in the AsyncAPI document.
    let text = a.to_string();
    for c in dexpulse::protocol::CloseCode::ALL {
        assert!(
            text.contains(&format!("\"{}\"", c.code())),
            "close code {}",
            c.code()
        );
    }
    let codes = &a["components"]["schemas"]["ErrorMessage"]["properties"]["code"]["enum"];
    for c in [
        "invalid_json",
        "bad_request",
        "unknown_op",
        "unknown_channel",
        "unknown_subscription",
        "too_many_subscriptions",
        "server_busy",
    ] {
        assert!(codes.as_array().unwrap().contains(&Value::from(c)), "{c}");
    }
}

#[tokio::test]
async fn real_frames_validate_against_the_asyncapi_document() {
    let a = doc("asyncapi.json");
    let r = start(test_config()).await;
    let events = golden_events();
    r.hub().publish(&events);
    let mut engine = dexpulse::signal::Engine::new(dexpulse::signal::Params::default());
    let snap = dexpulse::source::simulator::example_snapshot();
    engine.observe(&snap);
    let (s, m, open) = engine.pair_view(&snap.key).unwrap();
    r.hub().pairs().update(s, m, open);

    let mut ws = connect(&r).await;
    let mut got: Vec<Value> = vec![next_json(&mut ws).await];
    let ops = [
        r#"{"op":"subscribe","id":1,"channel":"signals","resume_from":{"epoch":"EPOCH","seq":0}}"#,
        r#"{"op":"subscribe","id":"p","channel":"pairs","filter":{"chains":["sim"]}}"#,
        r#"{"op":"ping","id":3}"#,
        r#"{"op":"unsubscribe","id":4,"subscription":"s2"}"#,
    ];
    let epoch = got[0]["epoch"].as_str().unwrap().to_string();
    for op in ops {
        let op = op.replace("EPOCH", &epoch);
        let v: Value = serde_json::from_str(&op).unwrap();
        let name = match v["op"].as_str().unwrap() {
            "subscribe" => "Subscribe",
            "unsubscribe" => "Unsubscribe",
            _ => "Ping",
        };
        check(&schema(&a, name), &op, &v);
        ws.send(Message::text(op)).await.unwrap();
    }
    // What the server refuses is outside the document too.
    let refused = [
        (
            r#"{"op":"subscribe","channel":"signals","filter":{"chian":["x"]}}"#,
            "Subscribe",
        ),
        (r#"{"op":"subscribe","channel":"candles"}"#, "Subscribe"),
        (r#"{"op":"unsubscribe","id":5,"subscription":"s9"}"#, ""),
        (r#"{"op":"launch"}"#, "Ping"),
        ("not json", ""),
    ];
    for (op, name) in refused {
        if !name.is_empty() {
            let v: Value = serde_json::from_str(op).unwrap();
            assert!(!schema(&a, name).is_valid(&v), "{op} fits {name}");
        }
        ws.send(Message::text(op)).await.unwrap();
    }
    // welcome, subscribed ×2, the 23 signals, a pair, pong, unsubscribed, five errors.
    let want = 1 + 2 + events.len() + 1 + 1 + 1 + refused.len();
    while got.len() < want {
        got.push(next_json(&mut ws).await);
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &got {
        let kind = m["type"].as_str().unwrap();
        seen.insert(kind.to_string());
        check(&schema(&a, server_schema(kind)), kind, m);
    }
    let errors: Vec<&str> = got
        .iter()
        .filter(|m| m["type"] == "error")
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), refused.len(), "{errors:?}");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [
            "error",
            "pair",
            "pong",
            "signal",
            "subscribed",
            "unsubscribed",
            "welcome"
        ],
        "every server message but lagged (ws.rs checks that one) was recorded"
    );
    r.shutdown().await.unwrap();
}

/// A server message checked against the AsyncAPI document, for tests elsewhere that record
/// one this module cannot make cheaply (`lagged`, in ws.rs's slow-consumer test).
pub fn check_server_message(m: &Value) {
    let a = doc("asyncapi.json");
    check(
        &schema(&a, server_schema(m["type"].as_str().unwrap())),
        "server message",
        m,
    );
}

#[tokio::test]
async fn real_responses_validate_against_the_openapi_document() {
    let o = doc("openapi.json");
    let mut cfg = test_config();
    // A sink whose receiver is not there: its status has an error to show.
    cfg.sinks = vec![dexpulse::sinks::RawSink {
        name: "dc".into(),
        kind: "discord".into(),
        url: Some("http://127.0.0.1:9/api/webhooks/1/x".into()),
        retry_min_seconds: Some(0.01),
        ..Default::default()
    }];
    let r = start(cfg).await;
    let sinks = |want: &'static str| {
        let r = &r;
        async move {
            for _ in 0..1000 {
                let (_, _, body) = http_request(r, "GET", "/v1/sinks", &[]).await;
                if body.contains(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the sink never showed {want}");
        }
    };
    sinks("\"state\":\"idle\"").await;
    r.hub().publish(&golden_events());
    // Its receiver is not there: the status has an error to show.
    sinks("\"last_error\":\"cannot connect").await;
    let mut engine = dexpulse::signal::Engine::new(dexpulse::signal::Params::default());
    let snap = dexpulse::source::simulator::example_snapshot();
    engine.observe(&snap);
    let (s, m, open) = engine.pair_view(&snap.key).unwrap();
    r.hub().pairs().update(s, m, open);
    let detail = format!("/v1/pairs/{}/{}", snap.key.chain, snap.key.address);
    for (path, status, component) in [
        ("/v1/signals", 200, "SignalPage"),
        ("/v1/signals?latest=5&kind=rug_warning", 200, "SignalPage"),
        ("/v1/signals?before=10&limit=3", 200, "SignalPage"),
        ("/v1/pairs", 200, "PairList"),
        (
            "/v1/pairs?sort=liquidity&open=false&limit=1",
            200,
            "PairList",
        ),
        (detail.as_str(), 200, "PairDetail"),
        ("/v1/sinks", 200, "SinkList"),
        ("/readyz", 503, "Readiness"),
        ("/v1/signals?sinse=1", 400, "Error"),
        ("/v1/pairs?sort=hype", 400, "Error"),
        ("/v1/pairs/sim/nothing", 404, "Error"),
        ("/nowhere", 404, "Error"),
    ] {
        let (got, _, body) = http_request(&r, "GET", path, &[]).await;
        assert_eq!(got, status, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        check(&schema(&o, component), path, &v);
        // The route is in the document with this status.
        let route = if path.starts_with("/v1/pairs/") {
            "/v1/pairs/{chain}/{address}"
        } else {
            path.split('?').next().unwrap()
        };
        if route != "/nowhere" {
            assert!(
                o["paths"][route]["get"]["responses"][status.to_string()].is_object(),
                "{route} {status} is not in the document"
            );
        }
    }
    let (got, _, body) = http_request(&r, "POST", "/v1/pairs", &[]).await;
    assert_eq!(got, 405);
    check(
        &schema(&o, "Error"),
        "405",
        &serde_json::from_str(&body).unwrap(),
    );
    r.shutdown().await.unwrap();
}

/// What the validators need, or why they cannot run.
fn validate(
    dir: &std::path::Path,
    asyncapi: &std::path::Path,
    openapi: &std::path::Path,
) -> (bool, String) {
    let out = std::process::Command::new("node")
        .arg(dir.join("apidocs.mjs"))
        .arg(asyncapi)
        .arg(openapi)
        .output()
        .expect("node is needed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_documents_pass_their_validators() {
    use crate::support::{requires, Component};
    if !requires(
        "the_documents_pass_their_validators",
        &[Component::NodeModules],
    ) {
        return;
    }
    let dir = std::path::Path::new(ROOT).join("tests/node");
    let api = std::path::Path::new(ROOT).join("docs/api");
    let (ok, said) = validate(&dir, &api.join("asyncapi.json"), &api.join("openapi.json"));
    assert!(ok, "{said}");
    let v: Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(v["openapi"]["valid"], true, "{v}");
    assert!(
        v["asyncapi"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["severity"] != 0),
        "{v}"
    );
    // A broken copy of each is refused: the validators do look.
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("apidocs");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut a = doc("asyncapi.json");
    a["operations"]["send_ping"]["action"] = Value::from("shout");
    let mut o = doc("openapi.json");
    o["paths"]["/readyz"]["get"]["responses"] = Value::from("none");
    std::fs::write(tmp.join("a.json"), a.to_string()).unwrap();
    std::fs::write(tmp.join("o.json"), o.to_string()).unwrap();
    let good_a = api.join("asyncapi.json");
    let good_o = api.join("openapi.json");
    let (ok, said) = validate(&dir, &tmp.join("a.json"), &good_o);
    assert!(!ok, "a broken AsyncAPI document passed: {said}");
    let (ok, said) = validate(&dir, &good_a, &tmp.join("o.json"));
    assert!(!ok, "a broken OpenAPI document passed: {said}");
}
