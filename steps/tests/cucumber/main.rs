//! The behaviour-suite runner: `cargo test --test cucumber [-- cucumber args]`.
//!
//! Starts (local profile) or connects to (external profile) the system under test, runs
//! `features/` concurrently, writes console + JUnit + Cucumber JSON + failure bundles + lineage to
//! `reports/runs/<run id>/` (and points `reports/latest` at it), then prints `N passed, N failed`
//! for the scenarios and tears everything down. Undefined or skipped steps fail the run. In the
//! external profile, scenarios tagged `@needs-sut-control` (no adapter there) and, unless
//! `QA_EXTERNAL_WRITES_DB` is set, `@writes-db` are filtered out with a printed reason.
//!
//! Every location is found at run time (`harness::paths`): the checkout from the working
//! directory or `QA_ROOT`, the features from `QA_FEATURES`, the reports from `QA_REPORT_DIR`.

mod params;
mod steps;
mod world;

use cucumber::event::ScenarioFinished;
use cucumber::tag::Ext as _;
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
static FILTERED_CONTROL: AtomicUsize = AtomicUsize::new(0);
static FILTERED_WRITES: AtomicUsize = AtomicUsize::new(0);
static FILTERED_FUZZ: AtomicUsize = AtomicUsize::new(0);
static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The checkout being tested (found at run time).
fn workspace_root() -> PathBuf {
    ROOT.get().cloned().expect("the root is resolved before any step runs")
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let (root, mut config) = match harness::paths::project_root().and_then(|r| Ok((r, Config::load()?))) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("harness configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    ROOT.set(root.clone()).expect("root set once");
    let run_id = harness::paths::new_run_id();
    let report_dir = match harness::paths::run_report_dir(&config.report_dir, &run_id) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("harness: cannot write reports: {e:#}");
            return ExitCode::from(2);
        }
    };
    config.report_dir = report_dir.clone();
    let cucumber_dir = report_dir.join("cucumber");
    std::fs::create_dir_all(&cucumber_dir).expect("create the run's cucumber report folder");
    let features = harness::paths::features(&root);
    let writes_db = config.external_writes_db;
    let external_fuzz = harness::config::flag("QA_EXTERNAL_FUZZ");

    let profile = config.profile;
    eprintln!("harness: profile {profile:?}; starting the environment …");
    let env = match Env::start(config, run_id).await {
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

    let cucumber = World::cucumber()
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
        .fail_on_skipped();
    // cucumber drops a run's filter closure when `--tags` or `--name` is given; the exclusions
    // below must hold whatever the command line says, so its filters are applied here, inside.
    let (cucumber, cli_name, cli_tags) = split_cli_filters(cucumber);
    let writer = cucumber
        .filter_run(features, move |feature, rule, scenario| {
            let tagged = |tag: &str| feature.tags.iter().chain(scenario.tags.iter()).any(|t| t == tag);
            let all_tags = || feature.tags.iter().chain(rule.iter().flat_map(|r| &r.tags)).chain(scenario.tags.iter());
            if cli_name.as_ref().is_some_and(|re| !re.is_match(&scenario.name))
                || cli_tags.as_ref().is_some_and(|t| !t.eval(all_tags()))
            {
                return false;
            }
            // @load specs (features/sla/) are SLA runs for the load binary (`load spec`), not
            // behaviour scenarios.
            if tagged("load") {
                return false;
            }
            if external && tagged("needs-sut-control") {
                FILTERED_CONTROL.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            if external && !writes_db && tagged("writes-db") {
                FILTERED_WRITES.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            if external && !external_fuzz && tagged("fuzz") {
                FILTERED_FUZZ.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            true
        })
        .await;

    use cucumber::writer::Stats as _;
    let parse_errors = writer.parsing_errors();
    env.shutdown().await;
    let (filtered_control, filtered_writes) =
        (FILTERED_CONTROL.load(Ordering::SeqCst), FILTERED_WRITES.load(Ordering::SeqCst));
    if filtered_control > 0 {
        println!(
            "skipped {filtered_control} scenario(s) tagged @needs-sut-control: the external profile cannot start, kill or scale the deployment's processes (run them with the local profile and QA_SUT_COMMAND=<your adapter>)"
        );
    }
    let filtered_fuzz = FILTERED_FUZZ.load(Ordering::SeqCst);
    if filtered_fuzz > 0 {
        println!(
            "skipped {filtered_fuzz} scenario(s) tagged @fuzz: hostile input fills the deployment's dead-letter queues (set QA_EXTERNAL_FUZZ=1 to allow it)"
        );
    }
    if let Some(fuzz) = harness::fuzz::oracle::totals() {
        let per_channel: Vec<String> = fuzz["per_channel"]
            .as_object()
            .map(|m| m.iter().map(|(c, o)| format!("{c} {o}")).collect())
            .unwrap_or_default();
        println!(
            "hostile input: {} inputs checked ({:.0}/s per campaign, with the oracle); {}",
            fuzz["inputs"],
            fuzz["inputs_per_second"].as_f64().unwrap_or(0.0),
            per_channel.join("; ")
        );
        let _ = std::fs::write(report_dir.join("fuzz.json"), serde_json::to_vec_pretty(&fuzz).unwrap_or_default());
    }
    if filtered_writes > 0 {
        println!(
            "skipped {filtered_writes} scenario(s) tagged @writes-db: they INSERT seed rows into the deployment's database (set QA_EXTERNAL_WRITES_DB=1 to allow it)"
        );
    }
    match harness::report::write_convergence(&report_dir) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("could not write the convergence log: {e:#}"),
    }
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst) + parse_errors;
    write_summary(&cucumber_dir, passed, failed, filtered_control + filtered_writes + filtered_fuzz, started);
    println!("reports: {}", cucumber_dir.display());
    println!("behaviour suite wall time: {:.1}s", started.elapsed().as_secs_f64());
    println!("scenarios: {passed} passed, {failed} failed");
    if writer.execution_has_failed() || failed > 0 || passed == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Parses cucumber's command line, takes its `--name` and `--tags` filters out (to be applied by
/// the run's own filter, which cucumber would otherwise ignore) and hands the rest back.
#[allow(clippy::type_complexity)]
fn split_cli_filters<W, P, I, R, Wr>(
    cucumber: cucumber::Cucumber<W, P, I, R, Wr, cucumber::cli::Empty>,
) -> (
    cucumber::Cucumber<W, P, I, R, Wr, cucumber::cli::Empty>,
    Option<regex::Regex>,
    Option<cucumber::gherkin::tagexpr::TagOperation>,
)
where
    W: cucumber::World,
    P: cucumber::Parser<I>,
    R: cucumber::Runner<W>,
    Wr: cucumber::Writer<W> + cucumber::writer::Normalized,
{
    let mut cli = cucumber::cli::Opts::<P::Cli, R::Cli, Wr::Cli, cucumber::cli::Empty>::parsed();
    let (name, tags) = (cli.re_filter.take(), cli.tags_filter.take());
    (cucumber.with_cli(cli), name, tags)
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
        "passed": passed, "failed": failed, "filtered": filtered,
        "fuzz": harness::fuzz::oracle::totals(),
        "wall_time_secs": started.elapsed().as_secs_f64(),
    });
    let _ = std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&summary).unwrap_or_default());
}
