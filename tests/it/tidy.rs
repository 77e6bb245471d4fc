//! The architecture's invariants as tests that read the source (ARCHITECTURE.md, "Invariants"):
//! the module graph is the DAG drawn there, and what each module never does (speak HTTP, speak
//! WebSocket, read the wall clock, touch files) it does not do. The core crate's dependencies
//! already keep tokio, sockets and HTTP out of it; these tests keep the layers inside each crate
//! in order. Test modules (`#[cfg(test)]` to the end of a file) are not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Each module and the modules it may import, bottom up. `*` is anything.
const CORE: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("settings", &[]),
    ("signal", &["model", "settings"]),
    ("source", &["model", "settings"]),
    // The chain follower: pools' logs into snapshots; the tape's lines and `Input`.
    ("chain", &["model", "settings", "source"]),
    ("schedule", &["model", "settings"]),
    ("protocol", &["model", "settings"]),
    // What the alert sinks send: frames read as chat messages, signatures, answers judged.
    ("sink", &["model", "settings"]),
    (
        "replay",
        &["model", "settings", "signal", "source", "chain"],
    ),
    // Reads what replay hands it; the tests build snapshots with the simulator.
    ("evaluate", &["model", "signal", "source"]),
    // Test-only: the fuzzing harness reaches every parser.
    ("fuzz", &["*"]),
];

const APP: &[(&str, &[&str])] = &[
    ("time", &[]),
    ("metrics", &["model"]),
    ("health", &["time"]),
    // The engine's checkpoint is bytes to the store: `signal` only for its type, `protocol`
    // only for the epoch's.
    ("store", &["settings", "signal", "protocol"]),
    (
        "hub",
        &[
            "time", "metrics", "health", "model", "protocol", "settings", "signal", "store",
        ],
    ),
    // Moves frames between the hub and the stream: the hub's types, none of its decisions;
    // the core's `Backoff` for its retries.
    (
        "cluster",
        &[
            "time", "metrics", "health", "hub", "model", "protocol", "schedule", "settings",
            "signal",
        ],
    ),
    (
        "live",
        &[
            "time", "metrics", "health", "model", "schedule", "settings", "source",
        ],
    ),
    // The chain's JSON-RPC: the follower's calls made, its answers to the engine.
    (
        "evm",
        &[
            "time", "metrics", "health", "model", "schedule", "settings", "source", "chain", "live",
        ],
    ),
    // Alerts: readers of the hub's frames, each with its cursor in the store; the core's
    // `sink` decides what to send and what an answer means.
    (
        "sinks",
        &[
            "time", "metrics", "hub", "model", "protocol", "schedule", "settings", "sink", "store",
        ],
    ),
    (
        "server",
        &[
            "time", "metrics", "health", "hub", "model", "protocol", "schedule", "settings",
            "sinks",
        ],
    ),
    ("app", &["*"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The top-level module a file belongs to (`src/hub/fanout.rs` is `hub`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The paths a piece of code names after one of `prefixes`, nested `use` groups read whole:
/// `use crate::{hub::{Hub, Since}, live}` names `hub::Hub`, `hub::Since` and `live`; a path in
/// code (`crate::live::run()`) names `live::run`.
fn use_paths(code: &str, prefixes: &[&str]) -> BTreeSet<String> {
    fn ident(s: &str) -> &str {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    }
    /// One use tree at the start of `s` under `base`: its paths into `out`; returns the rest.
    fn tree<'a>(s: &'a str, base: &str, out: &mut BTreeSet<String>) -> &'a str {
        let s = s.trim_start();
        if let Some(inner) = s.strip_prefix('{') {
            let mut rest = inner;
            loop {
                rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix('}') {
                    return r;
                }
                if rest.is_empty() {
                    return rest;
                }
                rest = tree(rest, base, out);
                rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                }
            }
        }
        let name = ident(s);
        let rest = &s[name.len()..];
        if name.is_empty() {
            // `*` or anything else: the base itself is named.
            if !base.is_empty() {
                out.insert(base.to_string());
            }
            return rest.get(1..).unwrap_or("");
        }
        let path = if base.is_empty() {
            name.to_string()
        } else {
            format!("{base}::{name}")
        };
        match rest.strip_prefix("::") {
            Some(more) => tree(more, &path, out),
            None => {
                if name != "self" {
                    out.insert(path);
                } else if !base.is_empty() {
                    out.insert(base.to_string());
                }
                rest
            }
        }
    }
    let mut out = BTreeSet::new();
    for prefix in prefixes {
        let pat = format!("{prefix}::");
        let mut rest = code;
        while let Some(i) = rest.find(&pat) {
            let before = rest[..i].chars().last();
            rest = &rest[i + pat.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            tree(rest, "", &mut out);
        }
    }
    out
}

/// The top-level modules a piece of code names after one of `prefixes`.
fn imports(code: &str, prefixes: &[&str]) -> BTreeSet<String> {
    use_paths(code, prefixes)
        .into_iter()
        .filter_map(|p| p.split("::").next().map(str::to_string))
        .collect()
}

fn check_layers(src: &Path, layers: &[(&str, &[&str])], prefixes: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let known: BTreeSet<&str> = CORE.iter().chain(APP).map(|(m, _)| *m).collect();
    let mut problems = Vec::new();
    for f in files {
        let m = module_of(src, &f);
        if m == "lib" || m == "main" || m == "bin" {
            continue;
        }
        let Some((_, allowed)) = layers.iter().find(|(name, _)| *name == m) else {
            problems.push(format!(
                "{}: module `{m}` is not in the layer table",
                f.display()
            ));
            continue;
        };
        if allowed.contains(&"*") {
            continue;
        }
        for used in imports(&code(&f), prefixes) {
            if used != m && known.contains(used.as_str()) && !allowed.contains(&used.as_str()) {
                problems.push(format!(
                    "{} (`{m}`) imports `{used}`; `{m}` may import only {allowed:?}",
                    f.display()
                ));
            }
        }
    }
    problems
}

#[test]
fn the_module_graph_is_the_layered_dag_of_architecture_md() {
    let mut problems = check_layers(&Path::new(ROOT).join("crates/core/src"), CORE, &["crate"]);
    problems.extend(check_layers(
        &Path::new(ROOT).join("src"),
        APP,
        &["crate", "dexpulse_core", "dexpulse"],
    ));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Files under `dir` whose code mentions `what` (as a path or an identifier).
fn mentioning(dir: &Path, what: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files
        .into_iter()
        .filter(|f| {
            code(f).lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//") && l.contains(what)
            })
        })
        .map(|f| {
            f.strip_prefix(ROOT)
                .unwrap_or(&f)
                .display()
                .to_string()
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}

fn only_under(what: &str, allowed: &[&str]) {
    let src = Path::new(ROOT).join("src");
    let core = Path::new(ROOT).join("crates/core/src");
    let mut found = mentioning(&src, what);
    found.extend(mentioning(&core, what));
    let stray: Vec<&String> = found
        .iter()
        .filter(|f| !allowed.iter().any(|a| f.starts_with(a)))
        .collect();
    assert!(
        stray.is_empty(),
        "`{what}` belongs in {allowed:?} only, but: {stray:?}"
    );
}

#[test]
fn what_each_module_never_does() {
    // Only the sources speak HTTP (and JSON-RPC) to upstream; only the sinks post to receivers.
    only_under("reqwest", &["src/live/", "src/evm/", "src/sinks/post.rs"]);
    // Only the server speaks WebSocket and serves HTTP (the tools in src/bin are clients).
    only_under("tokio_tungstenite", &["src/server/", "src/bin/"]);
    only_under("axum", &["src/server/"]);
    only_under("hyper", &["src/server/"]);
    // Only the store touches its files.
    only_under("redb", &["src/store.rs"]);
    only_under("async_nats", &["src/cluster/"]);
    // Only `time` reads the wall clock.
    only_under("SystemTime::now", &["src/time.rs", "src/bin/loadgen.rs"]);
    only_under("Utc::now", &[]);
    // The core touches no file of its own choosing and no clock.
    for banned in ["std::fs", "std::net", "Instant::now", "tokio"] {
        let core = mentioning(&Path::new(ROOT).join("crates/core/src"), banned);
        assert!(core.is_empty(), "the core mentions `{banned}`: {core:?}");
    }
    // The session's state machine sees the hub and the metrics only through its own traits
    // (`HubView`, `Tally`): no concrete hub or metrics type, however the `use` is nested.
    let state = code(&Path::new(ROOT).join("src/server/session/state.rs"));
    for path in use_paths(&state, &["crate", "super"]) {
        assert!(
            path != "hub::Hub" && path != "hub" && !path.starts_with("metrics"),
            "src/server/session/state.rs names `{path}`"
        );
    }
    // Errors are typed per module: no `Result<_, String>` and no error turned into its text
    // to be passed on, outside tests.
    for dir in ["src", "crates/core/src"] {
        let mut files = Vec::new();
        rust_files(&Path::new(ROOT).join(dir), &mut files);
        for f in files {
            let c = code(&f);
            assert!(
                string_errors(&c).is_empty() && !c.contains("map_err(|e| e.to_string())"),
                "{} passes an error on as a String: {:?}",
                f.display(),
                string_errors(&c)
            );
        }
    }
    // The session's state machine and outbox do no I/O and read no clock.
    for file in [
        "src/server/session/state.rs",
        "src/server/session/outbox.rs",
    ] {
        let c = code(&Path::new(ROOT).join(file));
        for banned in ["tokio", "tungstenite", "axum", "Instant", "Clock"] {
            assert!(!c.contains(banned), "{file} mentions `{banned}`");
        }
    }
}

/// Every `Result<T, String>` in `code`, however `T` nests (`Result<Vec<(u8, String)>, E>` is
/// not one).
fn string_errors(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("Result<") {
        let args = &code[i + "Result<".len()..];
        let (mut depth, mut comma, mut end) = (0i32, None, None);
        for (j, ch) in args.char_indices() {
            match ch {
                '<' | '(' | '[' => depth += 1,
                '>' if depth == 0 => {
                    end = Some(j);
                    break;
                }
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => comma = Some(j),
                _ => {}
            }
        }
        if let (Some(c), Some(e)) = (comma, end) {
            if args[c + 1..e].trim() == "String" {
                found.push(format!("Result<{}>", &args[..e]));
            }
        }
    }
    found
}

#[test]
fn every_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    rust_files(&Path::new(ROOT).join("crates/core/src"), &mut files);
    rust_files(&Path::new(ROOT).join("tests/it"), &mut files);
    rust_files(&Path::new(ROOT).join("benches"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "no `//!` header: {missing:?}");
}

#[test]
fn the_checker_sees_a_violation_when_there_is_one() {
    // The error reader finds what it is for and only that.
    assert_eq!(
        string_errors("fn f() -> Result<Vec<(u8, String)>, String> {}\nfn g() -> io::Result<String> {}\nfn h() -> Result<HashMap<String, String>, E> {}"),
        ["Result<Vec<(u8, String)>, String>"]
    );
    // The import reader itself, on code that breaks the rules.
    let bad = "use crate::{hub, server::session};\nfn f() { crate::live::run(); }\n";
    let got = imports(bad, &["crate"]);
    assert_eq!(
        got,
        ["hub", "live", "server"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(imports("my_crate::hub", &["crate"]).is_empty());
    // Nested groups, read whole: the `metrics` after the inner group is seen.
    let nested = "use crate::{hub::{Hub, Since}, metrics::Metrics};\nuse crate::live::*;\n";
    assert_eq!(
        use_paths(nested, &["crate"]),
        ["hub::Hub", "hub::Since", "live", "metrics::Metrics"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        imports(nested, &["crate"]),
        ["hub", "live", "metrics"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
