//! The behaviour run's HTML report, opened in headless Chromium (Debian's `chromium`): the page
//! renders offline, its script runs (filters by status from the URL), and it links to the
//! failure bundle and lineage. Writes a screenshot (`QA_SCREENSHOT_DIR`, else the temp folder).
//!
//! Needs `chromium` (`apt-get install -y chromium`; `scripts/test-all.sh` installs it). Without
//! it the test fails and says so; `QA_NO_BROWSER=1` skips it explicitly.

use harness::report::run::{FeatureReport, Hop, RunReport, ScenarioReport, Status, StepReport};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    })
}

fn run() -> RunReport {
    let step = |kw: &str, text: &str, status, error: Option<&str>| StepReport {
        keyword: kw.into(),
        text: text.into(),
        line: 5,
        status,
        started_at_ms: 1_000,
        finished_at_ms: 1_042,
        error: error.map(String::from),
        ..Default::default()
    };
    RunReport {
        run_id: "c0ffee42".into(),
        profile: "local".into(),
        started_at: "2026-12-04T12:00:00Z".into(),
        wall_secs: 3.5,
        features: vec![FeatureReport {
            name: "Algorithm A".into(),
            file: "features/algorithm_a.feature".into(),
            tags: vec!["component".into()],
            scenarios: vec![
                ScenarioReport {
                    name: "A 440 Hz sine is reported as 440 Hz".into(),
                    line: 8,
                    tags: vec!["component".into(), "smoke".into()],
                    status: Status::Passed,
                    duration_ms: 1_250,
                    steps: vec![
                        step(
                            "When ",
                            "sensor \"mic\" publishes 5 chunks of 440 Hz sine at amplitude 0.5",
                            Status::Passed,
                            None,
                        ),
                        step("Then ", "exactly 5 Feature A messages arrive for sensor \"mic\"", Status::Passed, None),
                    ],
                    namespace: Some("c0ffee42-a-440-hz-1a2b".into()),
                    lineage: Some("lineage/c0ffee42-a-440-hz-1a2b.json".into()),
                    hops: vec![Hop {
                        label: "published → Feature A seen by the tap".into(),
                        chunks: 5,
                        p50_ms: 12.5,
                        max_ms: 30.1,
                    }],
                    ..Default::default()
                },
                ScenarioReport {
                    name: "Silence has no dominant frequency".into(),
                    line: 20,
                    tags: vec!["component".into()],
                    status: Status::Failed,
                    duration_ms: 2_100,
                    steps: vec![
                        step("When ", "sensor \"quiet\" publishes 1 chunk of silence", Status::Passed, None),
                        step(
                            "Then ",
                            "Feature A for sensor \"quiet\" reports rms of \"0 ± 0.001\"",
                            Status::Failed,
                            Some("rms: expected 0 ± 0.001, got 0.25"),
                        ),
                    ],
                    error: Some("rms: expected 0 ± 0.001, got 0.25".into()),
                    namespace: Some("c0ffee42-silence-3c4d".into()),
                    bundle: Some("failures/c0ffee42-silence-3c4d".into()),
                    ..Default::default()
                },
            ],
        }],
        ..Default::default()
    }
}

#[test]
fn the_html_report_renders_and_filters_in_headless_chromium() {
    if std::env::var_os("QA_NO_BROWSER").is_some() {
        eprintln!("skipped: QA_NO_BROWSER is set");
        return;
    }
    let browser =
        chromium().expect("no chromium on PATH: `apt-get install -y chromium` (or set QA_NO_BROWSER=1 to skip)");
    let dir = std::env::temp_dir().join(format!("apq-html-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("failures/c0ffee42-silence-3c4d")).unwrap();
    std::fs::write(dir.join("failures/c0ffee42-silence-3c4d/bundle.json"), "{}").unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, harness::report::html::render(&run()).unwrap()).unwrap();
    let profile = dir.join("chromium-profile");
    let base = |extra: &[String]| {
        let mut c = Command::new(&browser);
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.display()))
            // Offline: any network request would fail (the page must not need one).
            .arg("--proxy-server=127.0.0.1:9")
            .args(extra);
        c
    };

    // The DOM after the page's script ran, filtered to failed scenarios through the URL.
    let url = format!("file://{}?status=failed", page.display());
    let out = base(&["--dump-dom".into(), url]).output().expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("1 of 2 shown"), "the filter script ran: {dom}");
    assert!(dom.contains("class=\"scenario hidden\""), "the passed scenario is hidden: {dom}");
    assert!(dom.contains("1 passed") && dom.contains("1 failed"), "{dom}");
    assert!(dom.contains("rms: expected 0 ± 0.001, got 0.25"), "the failure message: {dom}");
    assert!(dom.contains("failures/c0ffee42-silence-3c4d/bundle.json"), "the bundle link: {dom}");
    assert!(dom.contains("lineage/c0ffee42-a-440-hz-1a2b.json"), "the lineage link: {dom}");
    assert!(dom.contains("published → Feature A seen by the tap"), "per-hop times labelled: {dom}");
    assert!(dom.contains("@smoke"), "tags: {dom}");

    // A screenshot of the unfiltered page.
    let shots = std::env::var_os("QA_SCREENSHOT_DIR").map(PathBuf::from).unwrap_or_else(|| dir.clone());
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("html-report-example.png");
    let out = base(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,900".into(),
        format!("file://{}", page.display()),
    ])
    .output()
    .expect("run chromium");
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
    std::fs::remove_dir_all(&profile).ok();
}
