//! Regression test (issue #13): a failure bundle holds only its own scenario's evidence.
//!
//! Runs the behaviour-suite binary on `tests/fixtures/bundle_scope.feature`, whose scenarios run
//! at the same time and all fail on purpose: one calls the API and fails at once, one makes no
//! HTTP call and fails two seconds later, one misspells a step. Before the fix, the second one's
//! bundle showed the first one's request (the API client's "last exchange" was shared by every
//! scenario). Also checks what a failed run prints and writes: bundles as JSON with the failed
//! step, printed after the scenario's steps; "did you mean" for the misspelt step; JUnit names
//! relative to the checkout with the feature as classname; every convergence record with its
//! scenario and step; the HTML report.
//!
//! Needs the broker and the database (`scripts/infra.sh up`), like the behaviour suite, and the
//! suite's binary built (`cargo test --workspace` builds it first; `scripts/test-all.sh` does).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// The newest `cucumber-<hash>` test binary beside this one.
fn cucumber_binary() -> PathBuf {
    let deps = std::env::current_exe().expect("own path").parent().expect("deps dir").to_path_buf();
    std::fs::read_dir(&deps)
        .expect("deps dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("cucumber-") && p.extension().is_none()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!("no cucumber-* binary in {}: run `cargo test --workspace --no-run` first", deps.display())
        })
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).expect("JSON")
}

#[test]
fn each_failure_bundle_holds_only_its_own_scenarios_evidence() {
    let reports = std::env::temp_dir().join(format!("apq-bundle-scope-{}", std::process::id()));
    let out = Command::new(cucumber_binary())
        .current_dir(root())
        .env("QA_FEATURES", "steps/tests/fixtures/bundle_scope.feature")
        .env("QA_REPORT_DIR", &reports)
        .env("QA_CONCURRENCY", "4")
        .env("QA_DEADLINE_MS", "10000")
        .output()
        .expect("run the behaviour suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    assert!(!out.status.success(), "every fixture scenario fails on purpose:\n{all}");
    assert!(stdout.contains("scenarios: 0 passed, 3 failed"), "{all}");
    let run = std::fs::canonicalize(reports.join("latest")).expect("reports/latest");

    // Bundles: JSON, each with its own evidence.
    let bundles: Vec<Value> = std::fs::read_dir(run.join("failures"))
        .expect("failures/")
        .map(|e| read_json(&e.unwrap().path().join("bundle.json")))
        .collect();
    let bundle = |name: &str| -> &Value {
        bundles
            .iter()
            .find(|b| b["scenario"].as_str().is_some_and(|s| s.starts_with(name)))
            .unwrap_or_else(|| panic!("no bundle for {name}: {all}"))
    };
    let caller = bundle("calls the API");
    assert!(caller["http"]["request"]["url"].as_str().unwrap_or_default().ends_with("/healthz"), "{caller:#}");
    assert_eq!(caller["http"]["response"]["status"], 200, "{caller:#}");
    assert_eq!(caller["failed_step"], "Then the response status is 599");
    let quiet = bundle("makes no HTTP call");
    assert_eq!(quiet["http"], Value::Null, "a scenario without HTTP calls got another's exchange:\n{quiet:#}");
    assert_eq!(quiet["failed_step"], "And the response status is 200");
    assert_eq!(quiet["feature_file"], "steps/tests/fixtures/bundle_scope.feature");
    assert!(quiet["world"]["published"].as_array().is_some_and(|p| p.len() == 1), "{quiet:#}");
    assert!(quiet["captured_messages"].as_array().is_some_and(|m| !m.is_empty()), "{quiet:#}");
    assert!(bundles.iter().all(|b| b.get("world").is_some_and(Value::is_object)), "World summaries are JSON");

    // Printed after the scenario's own steps.
    let step_line =
        stdout.find("nothing from sensor \"quiet\" is dead-lettered").expect("the scenario's steps are printed");
    let bundle_line =
        stdout.find("failure bundle of \"makes no HTTP call").unwrap_or_else(|| panic!("bundle path printed: {all}"));
    assert!(bundle_line > step_line, "the bundle path comes after the scenario's steps:\n{stdout}");

    // Did you mean.
    assert!(stdout.contains("no step definition matches `Then the respons status is 200`"), "{all}");
    let hint = stdout.find("did you mean:").expect("hint");
    assert!(stdout[hint..].contains("Then the response status is {int}"), "{all}");

    // JUnit: names relative to the checkout, the feature as classname, no absolute path.
    let junit = std::fs::read_to_string(run.join("cucumber/junit.xml")).expect("junit.xml");
    assert!(
        junit.contains(r#"name="steps/tests/fixtures/bundle_scope.feature: calls the API and fails at once""#),
        "{junit}"
    );
    assert!(junit.contains(r#"classname="Failure evidence stays with its scenario""#), "{junit}");
    assert!(!junit.contains(&root().display().to_string()), "absolute checkout path in junit.xml:\n{junit}");
    assert!(junit.contains("Then the response status is {int}"), "the hint is in the failure text too:\n{junit}");

    // Every wait of the run is attributed to its scenario and step.
    let convergence = read_json(&run.join("convergence.json"));
    let records = convergence.as_array().expect("array");
    assert!(!records.is_empty(), "the quiet scenario waits for its Feature A");
    for r in records {
        assert!(r["scenario"].is_string() && r["step"].is_string(), "unattributed wait: {r}");
    }
    assert!(
        records.iter().any(|r| r["step"] == "Then exactly 1 Feature A message arrives for sensor \"quiet\""),
        "{convergence:#}"
    );

    // The HTML report lists them.
    let html = std::fs::read_to_string(run.join("report.html")).expect("report.html");
    assert!(html.contains("makes no HTTP call") && html.contains("bundle.json"), "report.html");
    let _ = std::fs::remove_dir_all(&reports);
}
