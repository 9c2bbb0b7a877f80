//! `load spec`: the SLA scenarios written in Gherkin (`features/sla/*.feature`, tag `@load`),
//! run with cucumber-rs against the API (`--api-url`/`QA_API_URL`, else a private reference API
//! this run starts) and private pipelines. Steps are thin: `When` steps call the load library
//! (one share in process, K local worker processes merged exactly, or a paced pipeline run);
//! `Then` steps turn one observation into a gate of the usual report. Scenarios run one at a
//! time (they measure), a breached gate fails its step.
//!
//! Exit: 0 every scenario passed; 99 every failure is a breached gate (named); 1 anything else
//! (an undefined step, a parse error, an unreachable API, a failed worker, nothing selected).
//! Reports as the gate runner's: `reports/load/<UTC>/{sla-summary.json,junit.xml,index.html}`,
//! plus cucumber's own `cucumber-junit.xml`.

use anyhow::{Context as _, bail};
use cucumber::event::ScenarioFinished;
use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::tag::Ext as _;
use cucumber::{Parameter, World as _, WriterExt as _, given, then, when, writer};
use futures::FutureExt as _;
use load::cli::{LoadOpts, SpecArgs};
use load::dist::{self, LocalRun, RestMeasurement, RestPlan};
use load::localapi::{LocalApi, LocalApiSpec};
use load::pipeline::{self, PacedMeasurement, PacedRun};
use load::report::RunReport;
use load::rest::Mix;
use load::runner;
use load::sla::{GateResult, Op, Sla, Threshold, Unit, Verdict};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Scenarios that passed.
static PASSED: AtomicUsize = AtomicUsize::new(0);
/// Scenarios that failed on a breached gate.
static BREACHED: AtomicUsize = AtomicUsize::new(0);
/// Scenarios that failed for any other reason (harness errors).
static BROKEN: AtomicUsize = AtomicUsize::new(0);
/// The run's context, set once before cucumber starts.
static CTX: OnceLock<Arc<Ctx>> = OnceLock::new();

/// Where the API under test is.
#[derive(Debug)]
struct ApiTarget {
    /// Base URL.
    url: String,
    /// Tokens, comma-separated.
    tokens: String,
    /// Sensors the private API streams; `None` for a given API (its sensors are discovered).
    local_sensors: Option<usize>,
}

/// Everything the steps share during one `load spec` run.
#[derive(Debug)]
struct Ctx {
    /// The runner's options (infrastructure, tokens, report folder).
    opts: LoadOpts,
    /// The spec options.
    args: SpecArgs,
    /// This run's report folder.
    out: PathBuf,
    /// `sla.toml`: the workload sizes the specs do not state (phase timeouts, publishers).
    sla: Sla,
    /// The API, resolved at the first REST step.
    api: tokio::sync::OnceCell<ApiTarget>,
    /// The private API, if this run started one (stopped at the end).
    local_api: Mutex<Option<LocalApi>>,
    /// Gates, latencies and throughput of every scenario.
    report: Mutex<RunReport>,
}

fn ctx() -> Arc<Ctx> {
    CTX.get().cloned().expect("the spec context is set before any step runs")
}

impl Ctx {
    async fn api(&self) -> anyhow::Result<&ApiTarget> {
        self.api
            .get_or_try_init(|| async {
                if let Some(url) = &self.args.api_url {
                    let tokens = dist::tokens(self.opts.token.as_deref())?.join(",");
                    return Ok(ApiTarget { url: url.clone(), tokens, local_sensors: None });
                }
                let spec = LocalApiSpec {
                    services_bin: runner::services_bin(self.opts.services_bin.as_deref())?,
                    amqp_url: self.opts.amqp_url.clone(),
                    admin_db_url: self.opts.database_url.clone(),
                    sensors: self.args.local_sensors,
                    tokens: 8,
                    unlimited: false,
                    log: self.out.join("sut-logs/pipeline-live.log"),
                };
                eprintln!("[spec] no --api-url: starting a private reference API with {} sensors", spec.sensors);
                let api = LocalApi::start(&spec).await?;
                let target =
                    ApiTarget { url: api.url.clone(), tokens: api.tokens.clone(), local_sensors: Some(spec.sensors) };
                eprintln!("[spec] private API at {}", target.url);
                *self.local_api.lock().unwrap_or_else(PoisonError::into_inner) = Some(api);
                anyhow::Ok(target)
            })
            .await
    }

    /// A REST run of `users` over `workers` (1: in this process; more: local worker processes).
    async fn rest(&self, label: &str, load: RestLoad) -> anyhow::Result<RestMeasurement> {
        let api = self.api().await?;
        if let Some(have) = api.local_sensors
            && load.sensors > have
        {
            bail!("the spec reads {} sensors; the private API streams {have} (raise --local-sensors)", load.sensors);
        }
        let dir = self.out.join(slug(label));
        let m = if load.workers <= 1 {
            let plan = RestPlan {
                api_url: api.url.clone(),
                tokens: dist::tokens(Some(&api.tokens))?,
                sensors: Some(load.sensors),
                mix: load.mix,
                share: dist::share(load.users, load.rate, None, 0, 1)?,
                window_secs: load.secs,
                report_dir: dir,
                keep_samples: false,
            };
            dist::measure_in_process(&plan).await?
        } else {
            let run = LocalRun {
                exe: std::env::current_exe().context("finding the load binary for the workers")?,
                admin_db_url: self.opts.database_url.clone(),
                api_url: api.url.clone(),
                tokens: api.tokens.clone(),
                workers: load.workers,
                users: load.users,
                rate: load.rate,
                window_secs: load.secs,
                mix: load.mix,
                sensors: Some(load.sensors),
                dir,
                keep_samples: false,
                extra_args: BTreeMap::new(),
            };
            let o = dist::run_local(&run).await?;
            o.merged.with_context(|| format!("worker exit codes {:?}", o.exit_codes))?
        };
        m.add_to(&mut self.report.lock().unwrap_or_else(PoisonError::into_inner), label);
        Ok(m)
    }

    /// A paced run through a private pipeline.
    async fn pipeline(&self, label: &str, run: PacedRun) -> anyhow::Result<PacedMeasurement> {
        let infra = pipeline::Infra {
            amqp_url: self.opts.amqp_url.clone(),
            admin_db_url: self.opts.database_url.clone(),
            services_bin: runner::services_bin(self.opts.services_bin.as_deref())?,
        };
        let dir = self.out.join(slug(label));
        std::fs::create_dir_all(&dir)?;
        let m = pipeline::paced_run(&infra, &self.sla, &dir, run).await?;
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in &m.report.latencies {
            report.latencies.insert(format!("{label}: {k}"), v.clone());
        }
        for t in &m.report.throughput {
            let mut t = t.clone();
            t.name = format!("{label}: {}", t.name);
            report.throughput.push(t);
        }
        report.reconciliation.extend(m.report.reconciliation.iter().cloned());
        Ok(m)
    }
}

/// A REST load as a spec states it.
#[derive(Debug, Clone, Copy)]
struct RestLoad {
    /// Users of the run.
    users: usize,
    /// Sensors read (`sensor-1 … N`, each must have data).
    sensors: usize,
    /// Seconds.
    secs: u64,
    /// Requests/s (0 = closed loop).
    rate: u64,
    /// Worker processes.
    workers: usize,
    /// Scenarios.
    mix: Mix,
}

/// A file-name-safe form of a scenario name.
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

// ------------------------------------------------------------------------------------------------
// Typed parameters

/// A time span as written in a spec: `30 s`, `5 ms`, `250 µs`, `2 min`.
#[derive(Debug, Clone, Copy, PartialEq, Parameter)]
#[param(name = "span", regex = r"\d+(?:\.\d+)? ?(?:µs|us|ms|s|min)")]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.replace(' ', "");
        let at = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| format!("{s:?} has no unit"))?;
        let (num, unit) = t.split_at(at);
        let n: f64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let secs = match unit {
            "µs" | "us" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "min" => n * 60.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        Ok(Span(Duration::from_secs_f64(secs)))
    }
}

impl Span {
    fn ms(self) -> f64 {
        self.0.as_secs_f64() * 1000.0
    }
    /// Whole seconds of a load window (at least 1).
    fn window_secs(self) -> u64 {
        self.0.as_secs().max(1)
    }
}

/// A percentage as written in a spec: `0.1 %`, `1%`.
#[derive(Debug, Clone, Copy, PartialEq, Parameter)]
#[param(name = "percent", regex = r"\d+(?:\.\d+)? ?%")]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim_end_matches('%').trim().parse().map(Percent).map_err(|e| format!("{s:?}: {e}"))
    }
}

fn at_most(value: f64, unit: Unit) -> Threshold {
    Threshold { op: Op::Le, value, unit }
}

fn at_least(value: f64, unit: Unit) -> Threshold {
    Threshold { op: Op::Ge, value, unit }
}

// ------------------------------------------------------------------------------------------------
// World and steps

/// One scenario's state.
#[derive(Debug, Default, cucumber::World)]
pub struct SlaWorld {
    /// The scenario's name: gate, latency and report-folder names start with it.
    scenario: String,
    /// The scenario's last REST run (merged when it had several workers).
    rest: Option<RestMeasurement>,
    /// The scenario's last pipeline run.
    pipeline: Option<PacedMeasurement>,
    /// A gate of this scenario was breached (a failed scenario without one is a harness error).
    breached: bool,
}

impl SlaWorld {
    fn rest(&self) -> anyhow::Result<&RestMeasurement> {
        self.rest.as_ref().context("no REST load ran in this scenario before this step")
    }

    fn pipeline(&self) -> anyhow::Result<&PacedMeasurement> {
        self.pipeline.as_ref().context("no pipeline run in this scenario before this step")
    }

    /// Records a gate in the run's report; a breach fails the step.
    fn gate(&mut self, mut g: GateResult) -> anyhow::Result<()> {
        g.name = format!("{}: {}", self.scenario, g.name);
        eprintln!(
            "[gate] {:<5} {} observed {} vs {}  {}",
            match g.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "SKIP",
            },
            g.name,
            g.observed_text(),
            g.threshold,
            g.detail
        );
        let failed = g.verdict == Verdict::Fail;
        let msg = format!("SLA breached: {}: observed {} vs {} ({})", g.name, g.observed_text(), g.threshold, g.detail);
        ctx().report.lock().unwrap_or_else(PoisonError::into_inner).gates.push(g);
        if failed {
            self.breached = true;
            bail!(msg);
        }
        Ok(())
    }
}

async fn rest_load(w: &mut SlaWorld, load: RestLoad) -> anyhow::Result<()> {
    w.rest = Some(ctx().rest(&w.scenario, load).await?);
    Ok(())
}

#[given(expr = "{int} users read the latest features of {int} sensors for {span} at {int} requests\\/s")]
#[when(expr = "{int} users read the latest features of {int} sensors for {span} at {int} requests\\/s")]
async fn latest_readers(w: &mut SlaWorld, users: usize, sensors: usize, span: Span, rate: u64) -> anyhow::Result<()> {
    rest_load(w, RestLoad { users, sensors, secs: span.window_secs(), rate, workers: 1, mix: Mix::Latest }).await
}

#[given(
    expr = "{int} users read the latest features of {int} sensors for {span} at {int} requests\\/s from {int} local workers"
)]
#[when(
    expr = "{int} users read the latest features of {int} sensors for {span} at {int} requests\\/s from {int} local workers"
)]
async fn latest_readers_distributed(
    w: &mut SlaWorld,
    users: usize,
    sensors: usize,
    span: Span,
    rate: u64,
    workers: usize,
) -> anyhow::Result<()> {
    rest_load(w, RestLoad { users, sensors, secs: span.window_secs(), rate, workers, mix: Mix::Latest }).await
}

#[given(expr = "{int} users run the mixed REST workload on {int} sensors for {span} at {int} requests\\/s")]
#[when(expr = "{int} users run the mixed REST workload on {int} sensors for {span} at {int} requests\\/s")]
async fn mixed_users(w: &mut SlaWorld, users: usize, sensors: usize, span: Span, rate: u64) -> anyhow::Result<()> {
    rest_load(w, RestLoad { users, sensors, secs: span.window_secs(), rate, workers: 1, mix: Mix::Mixed }).await
}

#[then(expr = "the p99 latency is at most {span} corrected for coordinated omission")]
async fn p99_corrected(w: &mut SlaWorld, limit: Span) -> anyhow::Result<()> {
    let g = w.rest()?.p99_gate("p99 (CO-corrected)", at_most(limit.ms(), Unit::Ms), true);
    w.gate(g)
}

#[then(expr = "the p99 latency is at most {span}")]
async fn p99_raw(w: &mut SlaWorld, limit: Span) -> anyhow::Result<()> {
    let g = w.rest()?.p99_gate("p99", at_most(limit.ms(), Unit::Ms), false);
    w.gate(g)
}

#[then(expr = "at most {percent} of answers are errors")]
async fn error_rate(w: &mut SlaWorld, limit: Percent) -> anyhow::Result<()> {
    let g = w.rest()?.error_gate("error rate", at_most(limit.0, Unit::Percent));
    w.gate(g)
}

#[then(expr = "at most {percent} of answers are rate-limited")]
#[then(expr = "at most {percent} are rate-limited")]
async fn rate_limited(w: &mut SlaWorld, limit: Percent) -> anyhow::Result<()> {
    let g = w.rest()?.rate_limited_gate("rate-limited", at_most(limit.0, Unit::Percent));
    w.gate(g)
}

#[then(expr = "the achieved rate is at least {percent} of the target")]
async fn achieved_rate(w: &mut SlaWorld, limit: Percent) -> anyhow::Result<()> {
    let g = w.rest()?.achieved_gate("achieved rate", at_least(limit.0, Unit::Percent));
    w.gate(g)
}

#[given(expr = "sensors publish chunks at {int} chunks\\/s for {span} through the pipeline")]
#[when(expr = "sensors publish chunks at {int} chunks\\/s for {span} through the pipeline")]
async fn paced_publish(w: &mut SlaWorld, rate: u32, span: Span) -> anyhow::Result<()> {
    let c = ctx();
    let run = PacedRun {
        rate: f64::from(rate),
        secs: span.0.as_secs_f64(),
        publishers: c.sla.workload.publishers,
        algorithm_a: 2,
    };
    w.pipeline = Some(c.pipeline(&w.scenario, run).await?);
    Ok(())
}

#[then(expr = "the publish rate is at least {int} chunks\\/s")]
async fn publish_rate(w: &mut SlaWorld, limit: u32) -> anyhow::Result<()> {
    let m = w.pipeline()?;
    let g = GateResult::judge(
        "publish rate",
        "publish_rate",
        at_least(f64::from(limit), Unit::PerSec),
        Some(m.publish_rate),
        format!("{} chunks published with confirms", m.published),
    );
    w.gate(g)
}

#[then(expr = "the sensor-to-database p99 is at most {span} corrected for coordinated omission")]
async fn sensor_to_db(w: &mut SlaWorld, limit: Span) -> anyhow::Result<()> {
    let m = w.pipeline()?;
    let g = GateResult::judge(
        "sensor-to-database p99 (CO-corrected)",
        "sensor_to_db_p99",
        at_most(limit.ms(), Unit::Ms),
        m.sensor_to_db_p99_ms,
        format!("publish → both rows visible, from each chunk's intended send time, {} chunks", m.published),
    );
    w.gate(g)
}

#[then(expr = "no chunk is lost")]
async fn none_lost(w: &mut SlaWorld) -> anyhow::Result<()> {
    let m = w.pipeline()?;
    let g = GateResult::judge(
        "chunks lost",
        "burst_lost",
        Threshold { op: Op::Eq, value: 0.0, unit: Unit::Count },
        Some(m.lost as f64),
        format!("{} chunks reconciled at every stage (Feature A, Feature B, both DB rows)", m.published),
    );
    w.gate(g)
}

#[then(expr = "no row is duplicated")]
async fn none_duplicated(w: &mut SlaWorld) -> anyhow::Result<()> {
    let m = w.pipeline()?;
    let g = GateResult::judge(
        "duplicated rows",
        "burst_duplicated_rows",
        Threshold { op: Op::Eq, value: 0.0, unit: Unit::Count },
        Some(m.duplicated_rows as f64),
        format!("DB rows per (chunk, feature type) beyond the first, {} chunks", m.published),
    );
    w.gate(g)
}

#[then(expr = "the services log no warning or error")]
async fn quiet_logs(w: &mut SlaWorld) -> anyhow::Result<()> {
    let m = w.pipeline()?;
    let g = GateResult::judge(
        "services' warnings and errors",
        "sut_log_problems",
        Threshold { op: Op::Eq, value: 0.0, unit: Unit::Count },
        Some(m.log_problems.len() as f64),
        m.log_problems.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
    );
    w.gate(g)
}

// ------------------------------------------------------------------------------------------------
// Runner

/// Runs the specs; `Ok(false)` = a gate was breached (exit 99), `Err` = harness error (exit 1).
pub async fn run(opts: &LoadOpts, args: &SpecArgs) -> anyhow::Result<bool> {
    let root = harness::paths::project_root()?;
    let path = args.path.clone().unwrap_or_else(|| root.join("features/sla"));
    if !path.exists() {
        bail!("no specs at {}", path.display());
    }
    let tags: TagOperation =
        args.tags.parse().map_err(|e| anyhow::anyhow!("--tags {:?} is not a tag expression: {e}", args.tags))?;
    let sla = runner::load_sla_opts(opts)?;
    let started = chrono::Utc::now();
    let out = opts.report_dir.join(started.format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let report = RunReport {
        run_id: format!("{:08x}", rand::random::<u32>()),
        started_at: started.to_rfc3339(),
        command: std::env::args().collect(),
        host: args.api_url.clone(),
        sla_profile: "spec".into(),
        workload: format!("spec {}", args.tags),
        machine_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..RunReport::default()
    };
    let c = Arc::new(Ctx {
        opts: opts.clone(),
        args: args.clone(),
        out: out.clone(),
        sla,
        api: tokio::sync::OnceCell::new(),
        local_api: Mutex::new(None),
        report: Mutex::new(report),
    });
    CTX.set(c.clone()).map_err(|_| anyhow::anyhow!("load spec runs once per process"))?;
    eprintln!("load spec: {} (tags {}), reports in {}", path.display(), args.tags, out.display());
    let cpu = load::cpu::CpuMeter::start();
    let junit = std::fs::File::create(out.join("cucumber-junit.xml"))?;
    let writer = SlaWorld::cucumber()
        // Scenarios measure: one at a time.
        .max_concurrent_scenarios(1)
        .before(|_feature, _rule, scenario, world| {
            async move {
                world.scenario = scenario.name.clone();
            }
            .boxed_local()
        })
        .after(|_feature, _rule, _scenario, finished, world| {
            let breached = world.as_ref().is_some_and(|w| w.breached);
            async move {
                let counter = match finished {
                    ScenarioFinished::StepPassed => &PASSED,
                    ScenarioFinished::StepFailed(..) if breached => &BREACHED,
                    _ => &BROKEN,
                };
                counter.fetch_add(1, Ordering::SeqCst);
            }
            .boxed_local()
        })
        .with_writer(
            writer::Basic::stdout().summarized().tee::<SlaWorld, _>(writer::JUnit::for_tee(junit, 0)).normalized(),
        )
        .fail_on_skipped()
        .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default())
        .filter_run(path.clone(), move |feature, rule, scenario| {
            let all = feature
                .tags
                .iter()
                .chain(rule.map(|r| r.tags.iter()).into_iter().flatten())
                .chain(scenario.tags.iter());
            tags.eval(all)
        })
        .await;
    use cucumber::writer::Stats as _;
    let parse_errors = writer.parsing_errors();
    let local = c.local_api.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(api) = local {
        api.stop().await;
    }
    let mut report = std::mem::take(&mut *c.report.lock().unwrap_or_else(PoisonError::into_inner));
    report.load_generator_cpu = cpu.usage();
    dist::finish_report(&out, &mut report)?;
    let (passed, breached, broken) =
        (PASSED.load(Ordering::SeqCst), BREACHED.load(Ordering::SeqCst), BROKEN.load(Ordering::SeqCst));
    println!(
        "load spec: scenarios: {passed} passed, {breached} breached an SLA, {broken} failed otherwise; {parse_errors} parse errors"
    );
    if broken > 0 || parse_errors > 0 {
        bail!("{broken} scenario(s) failed for a reason other than an SLA (see above), {parse_errors} parse error(s)");
    }
    if passed + breached == 0 {
        bail!("no scenario in {} matches --tags {}", path.display(), args.tags);
    }
    Ok(breached == 0 && report.failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("30 s", 30_000.0)]
    #[case("5 ms", 5.0)]
    #[case("250µs", 0.25)]
    #[case("2 min", 120_000.0)]
    fn spans(#[case] text: &str, #[case] ms: f64) {
        assert!((text.parse::<Span>().unwrap().ms() - ms).abs() < 1e-9);
    }

    #[test]
    fn percents_and_slugs() {
        assert_eq!("0.1 %".parse::<Percent>().unwrap(), Percent(0.1));
        assert_eq!("1%".parse::<Percent>().unwrap(), Percent(1.0));
        assert_eq!(slug("Latest readers at 500 requests/s"), "latest-readers-at-500-requests-s");
    }
}
