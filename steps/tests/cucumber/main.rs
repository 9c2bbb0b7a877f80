//! The behaviour-suite runner: `cargo test --test cucumber [-- cucumber args]`.
//!
//! Starts (local profile) or connects to (external profile) the system under test, runs
//! `features/` concurrently, writes console + JUnit + Cucumber JSON + failure bundles + lineage to
//! `reports/`, then prints `N passed, N failed` for the scenarios and tears everything down.
//! Undefined or skipped steps fail the run. In the external profile, scenarios tagged
//! `@needs-sut-control` are filtered out with a printed reason.

mod params;
mod steps;
mod world;

use cucumber::event::ScenarioFinished;
use cucumber::{World as _, WriterExt as _, writer};
use futures::FutureExt as _;
use harness::config::Config;
use harness::env::Env;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use world::{ENV, World};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static FILTERED: AtomicUsize = AtomicUsize::new(0);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("steps/ lives in the workspace").to_path_buf()
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let root = workspace_root();
    let mut config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("harness configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if config.report_dir.is_relative() {
        config.report_dir = root.join(&config.report_dir);
    }
    config.services_bin.get_or_insert_with(|| PathBuf::from(env!("CARGO_BIN_EXE_sut-pipeline")));
    let report_dir = config.report_dir.clone();
    let cucumber_dir = report_dir.join("cucumber");
    // Bundles and lineage of an earlier run would be mistaken for this run's.
    for stale in ["failures", "lineage", "sut-logs"] {
        let _ = std::fs::remove_dir_all(report_dir.join(stale));
    }
    std::fs::create_dir_all(&cucumber_dir).expect("create reports/cucumber");

    let profile = config.profile;
    eprintln!("harness: profile {profile:?}; starting the environment …");
    let env = match Env::start(config).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("harness: could not start the environment: {e:#}");
            write_summary(&cucumber_dir, 0, 1, 0, started);
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "harness: run {} ready in {:.1}s (namespace {:?})",
        env.run_id,
        started.elapsed().as_secs_f64(),
        env.shared.names.namespace
    );
    ENV.set(env.clone()).ok().expect("environment set once");
    let external = !env.is_local();

    let junit = std::fs::File::create(cucumber_dir.join("junit.xml")).expect("create junit.xml");
    let json = std::fs::File::create(cucumber_dir.join("cucumber.json")).expect("create cucumber.json");
    let concurrency = std::env::var("QA_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(8);

    let writer = World::cucumber()
        .max_concurrent_scenarios(concurrency)
        .before(|_feature, _rule, scenario, world| {
            async move {
                world.scenario = scenario.name.clone();
                world.ns = harness::namespace::ScenarioNamespace::new(&world.env.run_id, &scenario.name);
            }
            .boxed_local()
        })
        .after(|feature, _rule, scenario, finished, world| {
            async move { steps::hooks::after_scenario(feature, scenario, finished, world).await }.boxed_local()
        })
        .with_writer(
            writer::Basic::stdout()
                .summarized()
                .tee::<World, _>(writer::JUnit::for_tee(junit, 0))
                .tee::<World, _>(writer::Json::for_tee(json))
                .normalized(),
        )
        .fail_on_skipped()
        .filter_run(root.join("features"), move |feature, _rule, scenario| {
            let needs_control = feature.tags.iter().chain(scenario.tags.iter()).any(|t| t == "needs-sut-control");
            if external && needs_control {
                FILTERED.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            true
        })
        .await;

    use cucumber::writer::Stats as _;
    let parse_errors = writer.parsing_errors();
    env.shutdown().await;
    if FILTERED.load(Ordering::SeqCst) > 0 {
        println!(
            "skipped {} scenario(s) tagged @needs-sut-control: the external profile cannot start, kill or scale the deployment's processes",
            FILTERED.load(Ordering::SeqCst)
        );
    }
    match harness::report::write_convergence(&report_dir) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("could not write the convergence log: {e:#}"),
    }
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst) + parse_errors;
    write_summary(&cucumber_dir, passed, failed, FILTERED.load(Ordering::SeqCst), started);
    println!("reports: {}", cucumber_dir.display());
    println!("behaviour suite wall time: {:.1}s", started.elapsed().as_secs_f64());
    println!("scenarios: {passed} passed, {failed} failed");
    if writer.execution_has_failed() || failed > 0 || passed == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Records a finished scenario for the summary.
pub fn count(finished: &ScenarioFinished, extra_failure: bool) {
    if matches!(finished, ScenarioFinished::StepPassed) && !extra_failure {
        PASSED.fetch_add(1, Ordering::SeqCst);
    } else {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
}

fn write_summary(dir: &std::path::Path, passed: usize, failed: usize, filtered: usize, started: std::time::Instant) {
    let summary = serde_json::json!({
        "passed": passed, "failed": failed, "filtered_needs_sut_control": filtered,
        "wall_time_secs": started.elapsed().as_secs_f64(),
    });
    let _ = std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&summary).unwrap_or_default());
}
