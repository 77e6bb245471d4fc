//! The dashboard at `/`: the page and its assets come from the binary (the vendored uPlot
//! unchanged, by checksum), with a policy that forbids other origins; and the real page in
//! Debian's chromium through tests/node/dashboard.mjs (playwright-core), against the real
//! binary with a busy simulator: the table fills, events arrive, a filter hides, a dropped
//! connection resumes without a gap, no console errors, a screenshot in the test's output
//! directory. `.ci/run` installs chromium and the pinned playwright-core; where they are
//! absent outside CI the browser test says so on stderr, and under CI it fails.

use sha2::{Digest, Sha256};

use crate::server::*;

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_binary() {
    let r = start(test_config()).await;
    let (status, head, body) = http_request(&r, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(body.contains("/assets/app.js") && body.contains("/assets/uPlot.iife.min.js"));
    for (path, ct) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/uPlot.iife.min.js", "text/javascript"),
        ("/assets/uPlot.min.css", "text/css"),
        ("/assets/uPlot.LICENSE", "text/plain"),
    ] {
        let (status, head, body) = http_request(&r, "GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {ct}")),
            "{path}: {head}"
        );
        assert!(!body.is_empty());
    }
    // Nothing in the page names another origin.
    for path in ["/", "/assets/app.js", "/assets/app.css"] {
        let body = http_get(&r, path, &[]).await.1;
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
    let (status, _, body) = http_request(&r, "GET", "/assets/nope.js", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    r.shutdown().await.unwrap();
}

#[test]
fn the_vendored_files_are_the_published_ones() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/server/dashboard/vendor/");
    let notes = std::fs::read_to_string(format!("{dir}VENDORED.md")).unwrap();
    for file in ["uPlot.iife.min.js", "uPlot.min.css"] {
        let sum = hex::encode(Sha256::digest(
            std::fs::read(format!("{dir}{file}")).unwrap(),
        ));
        let row = notes
            .lines()
            .find(|l| l.starts_with(&format!("| `{file}`")))
            .unwrap_or_else(|| panic!("{file} not in VENDORED.md"));
        assert!(
            row.contains(&sum),
            "{file}: {sum} is not the noted checksum: {row}"
        );
    }
}

#[test]
fn the_dashboard_works_in_a_browser() {
    use crate::support::{requires, Component};
    if !requires(
        "the_dashboard_works_in_a_browser",
        &[Component::Chromium, Component::NodeModules],
    ) {
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let _heavy = crate::support::heavy_blocking();
    // The demo's simulator, busier: copies of the scripted scenarios every 6 s; behind a key,
    // which the page takes from `?token=`.
    let cfg =
        "[server]\nbind = \"127.0.0.1:0\"\n[source]\nkind = \"simulator\"\n[source.simulator]\n\
        scenarios = [\"all\"]\nseed = 7\nnoise_pairs = 20\nlead_minutes = 91.2\nwaves = 98\n\
        wave_every_minutes = 0.1\nfirst_wave_minutes = -5.0\nhours = 24.0\n\
        [[auth.keys]]\nkey = \"dashboard-test-key\"\nmax_connections = 10\n";
    let (mut server, addr) = crate::cli::spawn_serve_with("dashboard.toml", cfg, &[], &[]);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let shot = out.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let run = std::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(format!("http://{addr}"))
        .arg(&shot)
        .arg("dashboard-test-key")
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed");
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["rows"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(v["resume"]["after"]["gaps"], 0, "{v}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
    eprintln!("dashboard: {v}; screenshot {}", shot.display());
    assert_eq!(crate::cli::sigterm(&mut server), Some(0));
}
