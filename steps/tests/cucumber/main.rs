//! The behaviour-suite runner: `cargo test --test cucumber [-- cucumber args]`.
//!
//! Starts (local profile) or connects to (external profile) the system under test, runs
//! `features/` concurrently, writes console + JUnit + Cucumber JSON + an HTML report + failure
//! bundles + lineage to `reports/runs/<run id>/` (and points `reports/latest` at it), then prints
//! `N passed, N failed` for the scenarios and tears everything down. A start that fails still
//! writes JUnit, Cucumber JSON and the HTML report with the error as a failure, and says what
//! failed, where, why and what to try. `--input <file or glob>` is taken relative to the
//! checkout. Undefined or skipped steps fail the run. In the external profile, scenarios tagged
//! `@needs-sut-control` (no adapter there) and, unless `QA_EXTERNAL_WRITES_DB` is set,
//! `@writes-db` are filtered out with a printed reason. In any profile `@nightly` scenarios (the
//! long chaos experiments) run only with `QA_NIGHTLY=1` or when named with `--name` (`--tags
//! @chaos` alone is the CI subset), and `@chaos @serial` ones are skipped, saying why, where no
//! private RabbitMQ node or PostgreSQL cluster can start.
//!
//! Every location is found at run time (`harness::paths`): the checkout from the working
//! directory or `QA_ROOT`, the features from `QA_FEATURES`, the reports from `QA_REPORT_DIR`.

mod params;
mod recorder;
mod steps;
mod world;

use cucumber::event::ScenarioFinished;
use cucumber::tag::Ext as _;
use cucumber::{World as _, WriterExt as _, writer};
use futures::FutureExt as _;
use harness::config::Config;
use harness::env::Env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use world::{ENV, World};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static FILTERED_CONTROL: AtomicUsize = AtomicUsize::new(0);
static FILTERED_WRITES: AtomicUsize = AtomicUsize::new(0);
static FILTERED_FUZZ: AtomicUsize = AtomicUsize::new(0);
static FILTERED_NIGHTLY: AtomicUsize = AtomicUsize::new(0);
static FILTERED_CHAOS: AtomicUsize = AtomicUsize::new(0);
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
    // @nightly scenarios (the long chaos experiments) run in the nightly job, or when named.
    let nightly = harness::config::flag("QA_NIGHTLY");
    // @chaos needs a private RabbitMQ node and PostgreSQL cluster: where they cannot start, say why.
    let chaos_unavailable = harness::chaos::unavailable();
    let chaos_blocked = chaos_unavailable.is_some();

    let profile = config.profile;
    let endpoints = harness::report::startup::Endpoints {
        amqp_url: config.amqp_url.clone(),
        database_url: config.database_url.clone(),
        api_url: config.api_url.clone(),
    };
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut run = harness::report::run::RunReport {
        run_id: run_id.clone(),
        profile: format!("{profile:?}").to_lowercase(),
        started_at,
        ..Default::default()
    };
    eprintln!("harness: profile {profile:?}; starting the environment …");
    let env = match Env::start(config, run_id).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            // Env::start removes what it created before it fails; what is left to do is to say
            // why, and to leave reports that say so (CI would otherwise publish an older run's).
            let line = harness::report::startup::explain(&e, &endpoints);
            eprintln!("harness: the test environment did not start:\n  {line}");
            run.error = Some(line.clone());
            run.wall_secs = started.elapsed().as_secs_f64();
            let _ = std::fs::write(
                cucumber_dir.join("cucumber.json"),
                serde_json::to_vec_pretty(&harness::report::startup::cucumber_json(&line)).unwrap_or_default(),
            );
            write_run_reports(&report_dir, &cucumber_dir, &run);
            write_summary(&cucumber_dir, 0, 1, 0, started);
            println!("scenarios: 0 passed, 1 failed (the environment did not start)");
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

    let json = std::fs::File::create(cucumber_dir.join("cucumber.json")).expect("create cucumber.json");
    let (recorder, recorded) = recorder::Recorder::new(&root, &report_dir);
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
                .tee::<World, _>(writer::Json::for_tee(json))
                // JUnit is rendered from the recorder's record at the end (quick-junit), with
                // checkout-relative names and real times.
                .tee::<World, _>(recorder.discard_stats_writes().discard_arbitrary_writes())
                .normalized(),
        )
        .fail_on_skipped();
    // cucumber drops a run's filter closure when `--tags` or `--name` is given; the exclusions
    // below must hold whatever the command line says, so its filters are applied here, inside.
    let (cucumber, cli_name, cli_tags, cli_input) = split_cli_filters(cucumber, &root);
    // `--input` names a feature file or folder relative to the checkout (cargo runs this binary
    // in steps/, where cucumber's own `--input features/x.feature` would match nothing).
    let features = cli_input.unwrap_or(features);
    eprintln!("harness: features from {}", features.display());
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
            if tagged("nightly") && !nightly && cli_name.is_none() {
                FILTERED_NIGHTLY.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            if !external && tagged("chaos") && tagged("serial") && chaos_blocked {
                FILTERED_CHAOS.fetch_add(1, Ordering::SeqCst);
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
    let (filtered_nightly, filtered_chaos) =
        (FILTERED_NIGHTLY.load(Ordering::SeqCst), FILTERED_CHAOS.load(Ordering::SeqCst));
    let chaos_why = format!(
        "tagged @chaos: no private RabbitMQ node / PostgreSQL cluster can start here ({})",
        chaos_unavailable.as_deref().unwrap_or("")
    );
    if filtered_nightly > 0 {
        println!(
            "skipped {filtered_nightly} scenario(s) tagged @nightly (QA_NIGHTLY=1 runs them, or name one with --name)"
        );
    }
    if filtered_chaos > 0 {
        println!("skipped {filtered_chaos} scenario(s) {chaos_why}");
    }
    if filtered_writes > 0 {
        println!(
            "skipped {filtered_writes} scenario(s) tagged @writes-db: they INSERT seed rows into the deployment's database (set QA_EXTERNAL_WRITES_DB=1 to allow it)"
        );
    }
    run.features = std::mem::take(&mut *recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    run.wall_secs = started.elapsed().as_secs_f64();
    for (n, why) in [
        (filtered_control, "tagged @needs-sut-control (the external profile cannot control processes)"),
        (filtered_writes, "tagged @writes-db (set QA_EXTERNAL_WRITES_DB=1 to allow it)"),
        (filtered_fuzz, "tagged @fuzz (set QA_EXTERNAL_FUZZ=1 to allow it)"),
        (filtered_nightly, "tagged @nightly (QA_NIGHTLY=1 runs them)"),
        (filtered_chaos, chaos_why.as_str()),
    ] {
        if n > 0 {
            run.filtered.push(format!("{n} scenario(s) skipped: {why}"));
        }
    }
    let mut log = harness::eventually::convergence_log();
    attribute_waits(&mut log, &run);
    match harness::report::write_convergence(&report_dir, &log) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("could not write the convergence log: {e:#}"),
    }
    write_run_reports(&report_dir, &cucumber_dir, &run);
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst) + parse_errors;
    let filtered = filtered_control + filtered_writes + filtered_fuzz + filtered_nightly + filtered_chaos;
    write_summary(&cucumber_dir, passed, failed, filtered, started);
    println!("reports: {}", cucumber_dir.display());
    println!("HTML report: {}", report_dir.join("report.html").display());
    println!("behaviour suite wall time: {:.1}s", started.elapsed().as_secs_f64());
    if passed + failed == 0 {
        println!();
        println!("!! 0 scenarios matched: nothing was tested. Check --input (a feature file or glob, relative to the");
        println!("!! checkout, e.g. `-- --input features/rest_api.feature`), QA_FEATURES, --tags and --name.");
        println!();
    }
    println!("scenarios: {passed} passed, {failed} failed");
    if writer.execution_has_failed() || failed > 0 || passed == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Gives every convergence record its scenario (from its namespace, else from being the only
/// scenario running when it started) and the step that was running then.
fn attribute_waits(log: &mut [harness::eventually::ConvergenceRecord], run: &harness::report::run::RunReport) {
    let scenarios: Vec<_> = run.scenarios().map(|(f, s)| (s.qualified(f), s)).collect();
    harness::eventually::attribute(
        log,
        |scope| scenarios.iter().find(|(_, s)| s.namespace.as_deref() == Some(scope)).map(|(l, _)| l.clone()),
        |label, at| scenarios.iter().find(|(l, _)| l == label).and_then(|(_, s)| s.step_at(at)),
        |at| {
            scenarios
                .iter()
                .filter(|(_, s)| s.started_at_ms <= at && at <= s.started_at_ms + s.duration_ms)
                .map(|(l, _)| l.clone())
                .collect()
        },
    );
}

/// `junit.xml` (quick-junit), `report.html` and `run.json` of a run, started or not.
fn write_run_reports(report_dir: &Path, cucumber_dir: &Path, run: &harness::report::run::RunReport) {
    match harness::report::junit::render(run, "behaviour suite") {
        Ok(xml) => {
            let _ = std::fs::write(cucumber_dir.join("junit.xml"), xml);
        }
        Err(e) => eprintln!("could not render junit.xml: {e:#}"),
    }
    match harness::report::html::render(run) {
        Ok(html) => {
            let _ = std::fs::write(report_dir.join("report.html"), html);
        }
        Err(e) => eprintln!("could not render report.html: {e:#}"),
    }
    let _ = std::fs::write(report_dir.join("run.json"), serde_json::to_vec_pretty(run).unwrap_or_default());
}

/// Parses cucumber's command line, takes its `--name` and `--tags` filters out (to be applied by
/// the run's own filter, which cucumber would otherwise ignore) and hands the rest back, with the
/// `--input` feature file or folder if one was given ([`take_input`]).
#[allow(clippy::type_complexity)]
fn split_cli_filters<W, P, I, R, Wr>(
    cucumber: cucumber::Cucumber<W, P, I, R, Wr, cucumber::cli::Empty>,
    root: &Path,
) -> (
    cucumber::Cucumber<W, P, I, R, Wr, cucumber::cli::Empty>,
    Option<regex::Regex>,
    Option<cucumber::gherkin::tagexpr::TagOperation>,
    Option<PathBuf>,
)
where
    W: cucumber::World,
    P: cucumber::Parser<I>,
    R: cucumber::Runner<W>,
    Wr: cucumber::Writer<W> + cucumber::writer::Normalized,
{
    use cucumber::cli::Parser as _;
    let (args, input) = take_input(std::env::args().collect(), root);
    let mut cli = cucumber::cli::Opts::<P::Cli, R::Cli, Wr::Cli, cucumber::cli::Empty>::parse_from(args);
    let (name, tags) = (cli.re_filter.take(), cli.tags_filter.take());
    (cucumber.with_cli(cli), name, tags, input)
}

/// Takes `--input X` / `-i X` / `--input=X` out of the arguments when X (relative to the
/// checkout, or absolute) is a feature file or a folder, and returns it as the features to run;
/// anything else (a glob) stays for cucumber, made relative to the checkout.
fn take_input(args: Vec<String>, root: &Path) -> (Vec<String>, Option<PathBuf>) {
    let rooted = |v: &str| if Path::new(v).is_relative() { root.join(v) } else { PathBuf::from(v) };
    let mut out = Vec::with_capacity(args.len());
    let mut input = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let value = if a == "--input" || a == "-i" {
            it.next()
        } else if let Some(v) = a.strip_prefix("--input=") {
            Some(v.to_owned())
        } else {
            out.push(a);
            continue;
        };
        let Some(v) = value else { continue };
        let path = rooted(&v);
        if path.exists() {
            input = Some(path);
        } else {
            out.push(format!("--input={}", path.display()));
        }
    }
    (out, input)
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
