//! One gated run: picks the gates, runs the REST and/or pipeline groups, compares with the
//! previous run and writes every report into `reports/load/<UTC timestamp>/`.

use crate::cli::{Cli, Suite};
use crate::cpu::CpuMeter;
use crate::report::{self, LatencyReport, RunReport, Throughput};
use crate::rest::{self, RestState};
use crate::sla::{GateResult, Op, Sla, Threshold, Unit, Verdict};
use crate::trend;
use crate::{attack, pipeline};
use anyhow::{Context as _, bail};
use goose::metrics::GooseMetrics;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// `load/sla.toml` as it was when this binary was built, for machines without a checkout.
const EMBEDDED_SLA: &str = include_str!("../sla.toml");

/// Default goose run time when none is given: goose would otherwise run until stopped.
const DEFAULT_RUN_TIME: &str = "30s";

/// The checkout, found at run time from the working directory or `QA_ROOT`, for default paths.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    harness::paths::project_root()
}

/// Reads and resolves `sla.toml`.
pub fn load_sla(cli: &Cli) -> anyhow::Result<Sla> {
    load_sla_opts(&cli.opts)
}

/// Reads and resolves `sla.toml` as the runner's options say (profile, workload, overrides).
pub fn load_sla_opts(opts: &crate::cli::LoadOpts) -> anyhow::Result<Sla> {
    let path = match opts.sla_file.clone() {
        Some(p) => p,
        None => match workspace_root().map(|r| r.join("load/sla.toml")) {
            Ok(p) if p.is_file() => p,
            // A container image holds the binary and the specs, not load/: use the copy this
            // binary was built with (same file, same version).
            _ => {
                eprintln!("load: no load/sla.toml in a checkout here; using the copy built into this binary");
                return Sla::parse(EMBEDDED_SLA, opts.sla, &opts.workload, &opts.set)
                    .context("in the built-in sla.toml");
            }
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Sla::parse(&text, opts.sla, &opts.workload, &opts.set).with_context(|| format!("in {}", path.display()))
}

/// The `pipeline` binary: as given, else next to this executable, else release, else debug.
pub fn services_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("pipeline"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| workspace_root().ok().map(|r| r.join("target")));
    if let Some(target) = target {
        candidates.push(target.join("release").join("pipeline"));
        candidates.push(target.join("debug").join("pipeline"));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "no `pipeline` binary found next to `load` or in target/{release,debug}: build it with \
         `cargo build --release -p services` or pass --services-bin",
    )
}

/// Runs the selected gates and writes the reports; `Ok` carries the report (its `failed` decides
/// the exit code), `Err` is a harness error.
pub async fn run(cli: Cli) -> anyhow::Result<RunReport> {
    let sla = load_sla(&cli)?;
    let suites: Vec<Suite> = if cli.opts.gates.is_empty() {
        if cli.goose.host.is_some() { vec![Suite::Rest] } else { vec![Suite::Pipeline] }
    } else {
        cli.opts.gates.clone()
    };
    let started = chrono::Utc::now();
    let out = cli.opts.report_dir.join(started.format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cpu = CpuMeter::start();
    let mut report = RunReport {
        run_id: format!("{:08x}", rand::random::<u32>()),
        started_at: started.to_rfc3339(),
        command: std::env::args().collect(),
        host: cli.goose.host.clone(),
        sla_profile: sla.profile.to_string(),
        workload: sla.workload_name.clone(),
        machine_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..RunReport::default()
    };
    eprintln!(
        "load: gates {:?}, SLA profile {}, workload {}, reports in {}",
        suites,
        sla.profile,
        sla.workload_name,
        out.display()
    );
    if suites.contains(&Suite::Rest) {
        rest_gates(&cli, &sla, &out, &mut report).await?;
    }
    if suites.contains(&Suite::Pipeline) {
        let infra = pipeline::Infra {
            amqp_url: cli.opts.amqp_url.clone(),
            admin_db_url: cli.opts.database_url.clone(),
            services_bin: services_bin(cli.opts.services_bin.as_deref())?,
        };
        pipeline::run_gates(&infra, &sla, &out, &mut report).await?;
    }
    // Every goose report of the run (REST and pipeline phases), for the HTML page's links.
    let mut goose_files: Vec<String> = std::fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("goose-")))
        .map(|p| p.display().to_string())
        .collect();
    goose_files.sort();
    for f in goose_files {
        if !report.goose_reports.contains(&f) {
            report.goose_reports.push(f);
        }
    }
    report.load_generator_cpu = cpu.usage();
    report.finished_at = chrono::Utc::now().to_rfc3339();
    report.recount();
    if let Some((path, prev)) =
        trend::previous_summary(&cli.opts.report_dir, &out, &report.workload, &report.sla_profile)
    {
        report.trend = trend::deltas(&prev.gates, &report.gates);
        report.trend_warning = trend::shape_warning(&prev.command, &report.command);
        report.previous_run = Some(format!("{} ({})", path.display(), prev.started_at));
    }
    let files = report::write_all(&out, &report)?;
    println!("\n{}", report::console_table(&report));
    let regressions: Vec<&str> = report.trend.iter().filter(|d| d.regression).map(|d| d.gate.as_str()).collect();
    if !regressions.is_empty() {
        println!("load: regressions against the previous run: {}", regressions.join(", "));
    }
    for f in files {
        println!("load: wrote {}", f.display());
    }
    println!(
        "load: {} gates passed, {} failed, {} skipped (load generator CPU {:.2} cores)",
        report.passed, report.failed, report.skipped, report.load_generator_cpu.cores
    );
    if report.failed > 0 {
        println!("load: SLA BREACHED: {}", report.failed_gates().join(", "));
    }
    Ok(report)
}

/// goose's `--run-time` (`30`, `30s`, `5m`, `1h30m`) in seconds.
fn run_time_secs(s: &str) -> Option<u64> {
    let (mut total, mut n) = (0u64, String::new());
    for c in s.trim().chars() {
        match c {
            '0'..='9' => n.push(c),
            'h' | 'm' | 's' => {
                let v: u64 = n.parse().ok()?;
                total += v * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                n.clear();
            }
            _ => return None,
        }
    }
    if !n.is_empty() {
        total += n.parse::<u64>().ok()?;
    }
    (total > 0).then_some(total)
}

fn push(report: &mut RunReport, gate: GateResult) {
    eprintln!(
        "[gate] {:<28} {:<5} observed {} vs {}  {}",
        gate.name,
        match gate.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "SKIP",
        },
        gate.observed_text(),
        gate.threshold,
        gate.detail
    );
    report.gates.push(gate);
}

/// REST gates: the goose run (concurrent), a sequential client, and the rate-limiter burst.
async fn rest_gates(cli: &Cli, sla: &Sla, out: &Path, report: &mut RunReport) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let host = cli.goose.host.clone().context("the REST gates need --host URL (the API to load)")?;
    let tokens: Vec<String> = cli
        .opts
        .token
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        bail!("no API token: set QA_API_TOKEN or pass --token (comma-separated for several)");
    }
    eprintln!("[load] REST: discovering sensors and ids at {host}");
    let sensors = (!cli.opts.sensors.is_empty()).then_some(cli.opts.sensors.as_slice());
    let target = rest::discover(&host, &tokens, sensors).await?;
    eprintln!(
        "[load] REST: sensors {}, {} ids, history since {}",
        target.sensors.join(", "),
        target.ids.len(),
        target.earliest
    );

    // Concurrent: the goose run with the user's options.
    let mut config = cli.goose.clone();
    attack::harden(&mut config);
    // `test_plan` is private in goose; its serialized form says whether one was given.
    let has_test_plan = serde_json::to_value(&config).map(|v| !v["test_plan"].is_null()).unwrap_or(false);
    if config.run_time.is_none() && config.iterations.is_none() && !has_test_plan {
        eprintln!("[load] REST: no --run-time given; using {DEFAULT_RUN_TIME}");
        config.run_time = Some(DEFAULT_RUN_TIME.into());
    }
    if config.report_file.is_empty() {
        for ext in ["html", "json", "md"] {
            config.report_file.push(out.join(format!("goose-rest.{ext}")).display().to_string());
        }
    }
    report.goose_reports.extend(config.report_file.iter().cloned());
    let state = RestState::new(target.clone());
    let started = Instant::now();
    eprintln!("[load] REST: goose run (concurrent users) starting");
    let bar =
        config.run_time.as_deref().and_then(run_time_secs).map(|secs| crate::progress::timed("REST: goose run", secs));
    let metrics = attack::run(config, rest::scenarios(&state)?).await?;
    drop(bar);
    let secs = started.elapsed().as_secs_f64();
    record_goose_run(report, &state, &metrics, secs);
    let rec = &state.recorder;
    let all = rec.all();
    let th = sla.get("rest_p99")?;
    let p99 = (all.count() > 0).then(|| all.summary().raw.p99_ms);
    push(
        report,
        GateResult::judge(
            "rest_p99_concurrent",
            "rest_p99",
            th,
            p99,
            format!(
                "raw p99 of {} valid 2xx answers from {} goose users ({} rate limited, {} errors)",
                all.count(),
                metrics.maximum_users,
                rec.rate_limited.load(Ordering::Relaxed),
                rec.errors.load(Ordering::Relaxed)
            ),
        )
        .took(secs),
    );
    let total = rec.total();
    let err_rate = (total > 0).then(|| rec.errors.load(Ordering::Relaxed) as f64 / total as f64 * 100.0);
    let th = sla.get("rest_error_rate")?;
    let gate = GateResult::judge(
        "rest_error_rate",
        "rest_error_rate",
        th,
        err_rate,
        format!(
            "{} errors (non-2xx but 429, invalid bodies, transport) of {total} answers",
            rec.errors.load(Ordering::Relaxed)
        ),
    )
    .took(secs);
    report.error_budget_used_pct = gate.budget_used_pct;
    push(report, gate);
    // A run that is mostly 429 measured the rate limiter, not the API: say so in the verdict.
    let limited = rec.rate_limited.load(Ordering::Relaxed);
    let limited_pct = (total > 0).then(|| limited as f64 / total as f64 * 100.0);
    push(
        report,
        GateResult::judge(
            "rest_rate_limited",
            "rest_rate_limited",
            sla.get("rest_rate_limited")?,
            limited_pct,
            if limited == 0 {
                format!("0 of {total} answers were 429 (rate limited)")
            } else {
                format!(
                    "{limited} of {total} answers were 429 (rate limited by the API's per-token limit; more tokens with --token a,b,…, a lower rate or a lifted limit measure the API itself)"
                )
            },
        )
        .took(secs),
    );
    for t in &metrics.thresholds {
        push(report, goose_threshold_gate(t).took(secs));
    }

    // Sequential: one client, one request at a time.
    let n = sla.workload.rest_sequential_requests;
    eprintln!("[load {:>6.1}s] REST: sequential probe, {n} requests", t0.elapsed().as_secs_f64());
    rest::wait_for_quota(&target).await;
    let started = Instant::now();
    let seq = rest::sequential_probe(&target, n).await?;
    let seq_all = seq.all();
    report.latencies.insert("rest: sequential client".into(), LatencyReport::of(&seq_all));
    push(
        report,
        GateResult::judge(
            "rest_p99_sequential",
            "rest_p99",
            sla.get("rest_p99")?,
            (seq_all.count() > 0).then(|| seq_all.summary().raw.p99_ms),
            format!(
                "{} valid of {n} sequential requests ({} rate limited, {} errors)",
                seq_all.count(),
                seq.rate_limited.load(Ordering::Relaxed),
                seq.errors.load(Ordering::Relaxed)
            ),
        )
        .took(started.elapsed().as_secs_f64()),
    );

    // Rate limiter: one token, a concurrent burst.
    let n = sla.workload.rest_limiter_requests;
    eprintln!("[load {:>6.1}s] REST: rate-limiter burst, {n} requests with one token", t0.elapsed().as_secs_f64());
    rest::wait_for_quota(&target).await;
    let started = Instant::now();
    let probe = rest::limiter_probe(&target, n, 32).await?;
    let secs = started.elapsed().as_secs_f64();
    report.latencies.insert("rest: rate-limiter burst (200 and 429)".into(), LatencyReport::of(&probe.latency));
    let bad: u64 = probe.bad.values().sum();
    let th = sla.get("rest_rate_limiter_bad")?;
    let detail = format!("{} ok, {} well-formed 429, bad: {:?}", probe.ok, probe.well_formed_429, probe.bad);
    let gate = if probe.well_formed_429 == 0 && bad == 0 {
        GateResult::skipped(
            "rest_rate_limiter",
            "rest_rate_limiter_bad",
            th,
            format!("the limiter did not engage within {n} requests: {detail}"),
        )
    } else {
        GateResult::judge("rest_rate_limiter", "rest_rate_limiter_bad", th, Some(bad as f64), detail)
    };
    push(report, gate.took(secs));
    push(
        report,
        GateResult::judge(
            "rest_p99_rate_limited",
            "rest_p99",
            sla.get("rest_p99")?,
            (probe.latency.count() > 0).then(|| probe.latency.summary().raw.p99_ms),
            format!("raw p99 of every answer (200 and 429) in a burst of {n}, 32 at a time"),
        )
        .took(secs),
    );
    Ok(())
}

/// Latencies, throughput and status counts of the goose run into the report.
fn record_goose_run(report: &mut RunReport, state: &RestState, metrics: &GooseMetrics, secs: f64) {
    let rec = &state.recorder;
    for (group, l) in rec.latencies() {
        report.latencies.insert(format!("rest: {group}"), LatencyReport::of(&l));
    }
    report.latencies.insert("rest: all (goose users)".into(), LatencyReport::of(&rec.all()));
    let (requests, goose_secs) = attack::totals(metrics);
    let measured = if goose_secs > 0.0 { goose_secs } else { secs };
    report.throughput.push(Throughput {
        name: format!("REST goose run ({} users)", metrics.maximum_users),
        offered_per_sec: None,
        achieved_per_sec: requests as f64 / measured.max(1e-9),
        count: requests,
        secs: measured,
    });
    for (status, n) in rec.statuses() {
        *report.responses_by_status.entry(status).or_default() += n;
    }
    report.rate_limited += rec.rate_limited.load(Ordering::Relaxed);
    report.errors += rec.errors.load(Ordering::Relaxed);
}

/// A goose `--threshold` result as a gate; goose's rule text is kept as the name.
fn goose_threshold_gate(t: &goose::threshold::ThresholdResult) -> GateResult {
    let threshold = parse_goose_rule(&t.rule).unwrap_or(Threshold { op: Op::Le, value: f64::NAN, unit: Unit::Count });
    let mut g = GateResult::judge(
        &format!("goose --threshold {}", t.rule),
        "--threshold",
        threshold,
        t.value,
        format!("goose observed {}", t.observed),
    );
    // Goose's own judgement wins (it knows its metric's semantics).
    g.verdict = if t.passed { Verdict::Pass } else { Verdict::Fail };
    g
}

/// `p99<500ms for GET /x` → `< 500ms`, in the units goose reports values in (ms, %, rps).
fn parse_goose_rule(rule: &str) -> Option<Threshold> {
    let body = rule.split(" for ").next()?;
    let at = body.find(['<', '>'])?;
    let (metric, cond) = body.split_at(at);
    let mut th: Threshold = cond.parse().ok()?;
    // Goose reads a bare time as milliseconds; error rates are percentages; rps is a rate.
    if th.unit == Unit::Count {
        th.unit = match metric.trim() {
            "error-rate" => Unit::Percent,
            "rps" => Unit::PerSec,
            _ => Unit::Ms,
        };
    }
    Some(th)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("p99<500ms", Op::Lt, 500.0, Unit::Ms)]
    #[case("p95<=2s for GET /x", Op::Le, 2000.0, Unit::Ms)]
    #[case("avg<300", Op::Lt, 300.0, Unit::Ms)]
    #[case("error-rate<1%", Op::Lt, 1.0, Unit::Percent)]
    #[case("error-rate<1", Op::Lt, 1.0, Unit::Percent)]
    #[case("rps>=200", Op::Ge, 200.0, Unit::PerSec)]
    fn goose_rules_map_to_thresholds(#[case] rule: &str, #[case] op: Op, #[case] value: f64, #[case] unit: Unit) {
        let t = parse_goose_rule(rule).unwrap();
        assert_eq!((t.op, t.value, t.unit), (op, value, unit));
    }

    #[test]
    fn goose_verdict_wins() {
        let r = goose::threshold::ThresholdResult {
            rule: "p99<1ms".into(),
            observed: "3ms".into(),
            value: Some(3.0),
            passed: false,
            aborted: false,
        };
        let g = goose_threshold_gate(&r);
        assert_eq!((g.verdict, g.name.as_str()), (Verdict::Fail, "goose --threshold p99<1ms"));
    }
}

#[cfg(test)]
mod run_time_tests {
    #[test]
    fn goose_run_times_in_seconds() {
        assert_eq!(super::run_time_secs("30"), Some(30));
        assert_eq!(super::run_time_secs("20s"), Some(20));
        assert_eq!(super::run_time_secs("1h30m"), Some(5400));
        assert_eq!(super::run_time_secs("soon"), None);
    }
}
