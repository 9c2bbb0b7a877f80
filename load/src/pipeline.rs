//! Pipeline gates, which need process control: the reference services run as real processes of
//! the `pipeline` binary in a per-run broker namespace (`load-<run>`) and a per-run database
//! (`apq_load_<run>`), both removed at the end, like `harness::env`'s local profile.
//!
//! Phases, in order (each reuses what the previous one started):
//! 1. drain: chunks queued first, then one Algorithm A drains them (msgs/s);
//! 2. competing consumers: 2, then 3 Algorithm A instances; every chunk once (lost/duplicated);
//! 3. DataWriter: Feature A messages queued twice each, then the writer drains them (rows/s, and
//!    the duplicate deliveries must add no row);
//! 4. burst: the full pipeline takes a burst of chunks as fast as confirms allow (0 lost; its
//!    end-to-end chunks/s is the pipeline's throughput);
//! 5. paced: chunks at half the burst throughput; per-hop latency publish → Feature A →
//!    Feature B → DB rows → API visible, observed by the tap, a DB poller and an API poller.

use crate::publish::{self, Plan, Sent};
use crate::reconcile::{StageReconciliation, reconcile};
use crate::report::{LatencyReport, RunReport, Throughput};
use crate::sla::{GateResult, Sla};
use crate::stats::Latency;
use anyhow::{Context as _, bail};
use contract::topology::Names;
use contract::{AudioChunk, Encoding, MessageKind};
use futures::StreamExt as _;
use harness::amqp::{Publisher, RawMessage, Source, Tap};
use harness::api::ApiClient;
use harness::sql::Db;
use harness::sut::{Component, Processes};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Most chunks/s one paced publisher (sensor) sends: 50 ms chunks.
const SENSOR_RATE: f64 = 20.0;
/// How often the paced phase polls for new rows.
const DB_POLL_EVERY: Duration = Duration::from_millis(2);
/// Rows per statement of the raw-INSERT baseline: the reference writer's default batch size
/// (`APQ_WRITER_BATCH_SIZE`), so the baseline and the writer write the same batches.
const RAW_INSERT_BATCH: usize = 100;

/// How the pipeline gates reach the infrastructure.
#[derive(Debug, Clone)]
pub struct Infra {
    /// Broker URL.
    pub amqp_url: String,
    /// PostgreSQL URL with rights to create databases (its database name is replaced).
    pub admin_db_url: String,
    /// The `pipeline` binary.
    pub services_bin: PathBuf,
}

/// Everything one run started; [`Env::teardown`] removes it.
struct Env {
    /// Per-run id.
    run_id: String,
    /// Broker names of the run's namespace.
    names: Names,
    /// The run's broker connection (publishers' channels).
    conn: Arc<lapin::Connection>,
    /// Push-based capture of both fanouts.
    tap: Tap,
    /// The service processes.
    procs: Processes,
    /// The run's database.
    db: Db,
    /// Its name (dropped at the end).
    db_name: String,
    /// Where it lives.
    infra: Infra,
    /// Where reports go.
    out: PathBuf,
    /// CPU of the idle pipeline (set before the burst), taken off the phases' per-chunk figures.
    idle_cpu: Mutex<Option<crate::proc_cpu::Breakdown>>,
}

/// Prints a progress line with the time since `t0`.
fn progress(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[load {:>6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

impl Env {
    async fn start(infra: &Infra, out: &Path) -> anyhow::Result<Env> {
        let run_id = format!("{:08x}", rand::random::<u32>());
        let namespace = format!("load-{run_id}");
        let db_name = format!("apq_load_{run_id}");
        harness::sql::create_database(&infra.admin_db_url, &db_name).await?;
        let db_url = harness::env::with_database(&infra.admin_db_url, &db_name)?;
        let db = Db::connect(&db_url).await?;
        let names = Names::new(&namespace);
        let conn = Arc::new(harness::amqp::connect(&infra.amqp_url, "load").await?);
        let token = format!("load-{run_id}");
        let env = vec![
            ("APQ_AMQP_URL".to_string(), infra.amqp_url.clone()),
            ("APQ_DATABASE_URL".to_string(), db_url),
            ("APQ_NAMESPACE".to_string(), namespace.clone()),
            ("APQ_API_TOKENS".to_string(), token.clone()),
            ("APQ_API_BIND".to_string(), "127.0.0.1:0".to_string()),
            // The API's own limiter is tested by the REST gates; here it would only hide latency.
            ("APQ_API_RATE_LIMIT_PER_SEC".to_string(), "1000000".to_string()),
            ("APQ_API_RATE_LIMIT_BURST".to_string(), "1000000".to_string()),
        ];
        // Fault switches and tuning for the services, as in the behaviour suite (`QA_SUT_ENV`).
        let mut env = env;
        env.extend(harness::env::sut_env_overrides()?);
        let procs =
            Processes::new(vec![infra.services_bin.display().to_string()], env, out.join("sut-logs"), &namespace)?;
        // The tap declares the fanouts, so it must exist before anything is published.
        let tap = Tap::start(&infra.amqp_url, &names, harness::amqp::Topology::Owned).await?;
        Ok(Env {
            run_id,
            names,
            conn,
            tap,
            procs,
            db,
            db_name,
            infra: infra.clone(),
            out: out.to_path_buf(),
            idle_cpu: Mutex::new(None),
        })
    }

    async fn teardown(self) {
        self.procs.stop_all().await;
        harness::amqp::delete_namespace(&self.conn, &self.names).await;
        // Close our own session first: dropping the database ends it anyway, noisily.
        drop(self.db);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(e) = harness::sql::drop_database(&self.infra.admin_db_url, &self.db_name).await {
            eprintln!("load: warning: could not drop run database {}: {e:#}", self.db_name);
        }
    }

    /// CPU so far of the run's processes, the shared servers and this process.
    fn cpu(&self) -> crate::proc_cpu::Snapshot {
        crate::proc_cpu::snapshot(&self.procs.pids(), &self.names.namespace)
    }

    fn prefix(&self, phase: &str) -> String {
        format!("{}.{phase}", self.run_id)
    }

    async fn publish(
        &self,
        label: &str,
        total: u64,
        users: usize,
        rate: Option<f64>,
        report: bool,
    ) -> anyhow::Result<publish::Outcome> {
        let plan = Plan { label: label.into(), sensor_prefix: self.prefix(label), total, users, rate };
        let path = self.out.join(format!("goose-pipeline-{label}"));
        let out = publish::run(self.conn.clone(), self.names.clone(), plan, report.then_some(path.as_path())).await?;
        if out.failures > 0 {
            bail!("{} of {total} publishes in phase {label} failed (broker refused or connection lost)", out.failures);
        }
        Ok(out)
    }

    /// Feature messages on the tap from sensors of `prefix`.
    fn tap_count(&self, source: Source, prefix: &str) -> usize {
        self.tap.count(|m| m.source == source && m.sensor_id().is_some_and(|s| s.starts_with(prefix)))
    }

    /// `source_message_id`s of tap messages from `source` and sensors of `prefix`, with arrival.
    fn tap_sources(&self, source: Source, prefix: &str) -> Vec<(Uuid, Instant, Option<String>)> {
        self.tap
            .matching(|m| m.source == source && m.sensor_id().is_some_and(|s| s.starts_with(prefix)))
            .into_iter()
            .filter_map(|m| {
                let id = m.str_field("/source_message_id")?.parse().ok()?;
                Some((id, m.arrived, m.str_field("/processed_by").map(str::to_string)))
            })
            .collect()
    }

    /// Rows per (source id, type) for sensors of `prefix`.
    async fn db_sources(&self, prefix: &str) -> anyhow::Result<Vec<(Uuid, String)>> {
        self.db.sources_for_sensor_prefix(prefix).await
    }

    /// Rows/s the writer committed for sensors of `prefix`, from the server's `written_at` (one
    /// value per batch transaction): rows of every batch but the last over first → last batch.
    /// Independent of polling and of the writer's start-up time. `None` with a single batch.
    async fn db_commit_rate(&self, prefix: &str) -> anyhow::Result<Option<f64>> {
        Ok(writer_rate(&self.db.batches_for_sensor_prefix(prefix).await?))
    }

    async fn db_count(&self, prefix: &str) -> anyhow::Result<i64> {
        self.db.count_for_sensor_prefix(prefix).await
    }
}

/// Waits until `done()` returns at least `want`, printing progress every few seconds. Returns
/// the time it was reached, or `None` on timeout.
async fn wait_for<F, Fut>(
    t0: Instant,
    what: &str,
    want: u64,
    timeout: Duration,
    poll: Duration,
    mut done: F,
) -> anyhow::Result<Option<Instant>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let start = Instant::now();
    let mut last_print = Instant::now();
    // A progress bar on a terminal; indicatif hides it elsewhere (CI logs), where a plain line
    // every 3 s says the same.
    let bar = indicatif::ProgressBar::new(want).with_message(what.to_owned());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>28} {bar:30} {pos}/{len} ({per_sec}, {elapsed} of at most {prefix})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{:.0}s", timeout.as_secs_f64()));
    loop {
        let n = done().await?;
        bar.set_position(n.min(want));
        if n >= want {
            bar.finish_and_clear();
            return Ok(Some(Instant::now()));
        }
        if start.elapsed() >= timeout {
            bar.abandon();
            progress(t0, format!("{what}: timed out at {n}/{want} after {:.0}s", timeout.as_secs_f64()));
            return Ok(None);
        }
        if bar.is_hidden() && last_print.elapsed() >= Duration::from_secs(3) {
            progress(t0, format!("{what}: {n}/{want}"));
            last_print = Instant::now();
        }
        tokio::time::sleep(poll).await;
    }
}

/// Runs every pipeline phase, appending gates, latencies, throughput and reconciliation.
pub async fn run_gates(infra: &Infra, sla: &Sla, out: &Path, report: &mut RunReport) -> anyhow::Result<()> {
    let t0 = Instant::now();
    progress(t0, format!("pipeline gates: starting services from {}", infra.services_bin.display()));
    let env = Env::start(infra, out).await?;
    progress(t0, format!("namespace load-{}, database {}", env.run_id, env.db_name));
    let result = phases(&env, sla, report, t0).await;
    progress(t0, "pipeline gates: stopping services, removing the namespace and database");
    let logs = env.procs.log_dir().to_path_buf();
    env.teardown().await;
    result?;
    sut_log_gate(&logs, sla, report)
}

/// A paced run through a private pipeline, as a Gherkin SLA spec asks for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacedRun {
    /// Chunks/s the sensors publish.
    pub rate: f64,
    /// Seconds of publishing.
    pub secs: f64,
    /// Goose users publishing (one channel and one sensor each).
    pub publishers: usize,
    /// Algorithm A instances.
    pub algorithm_a: usize,
}

/// What a paced run observed, for the spec's `Then` steps (each judges one figure).
#[derive(Debug, Clone, Default)]
pub struct PacedMeasurement {
    /// Chunks/s the publishers achieved (confirmed).
    pub publish_rate: f64,
    /// Chunks published.
    pub published: u64,
    /// p99 publish → both DB rows visible, from intended send times (CO-corrected), ms.
    pub sensor_to_db_p99_ms: Option<f64>,
    /// Chunks lost at any stage (fanouts, DB rows).
    pub lost: u64,
    /// Duplicated DB rows.
    pub duplicated_rows: u64,
    /// Warnings and errors the services logged.
    pub log_problems: Vec<String>,
    /// Latencies, throughput and reconciliation, for the run report.
    pub report: RunReport,
}

/// Starts a private pipeline (A × `algorithm_a`, B, writer, API), publishes at `run.rate` for
/// `run.secs`, observes every hop, tears everything down and returns the observations. The
/// gates it judges against `sla` (for timeouts and the pipeline's own report) are returned in
/// `report`, the spec judges its own.
pub async fn paced_run(infra: &Infra, sla: &Sla, out: &Path, run: PacedRun) -> anyhow::Result<PacedMeasurement> {
    let t0 = Instant::now();
    let mut sla = sla.clone();
    sla.workload.latency_secs = run.secs;
    let timeout = Duration::from_secs_f64(sla.workload.phase_timeout_secs);
    progress(t0, format!("paced run: starting services from {}", infra.services_bin.display()));
    let env = Env::start(infra, out).await?;
    let mut report = RunReport::default();
    let result = async {
        env.procs.start(Component::DataWriter, 1, &[]).await?;
        env.procs.start(Component::AlgorithmA, run.algorithm_a.max(1), &[]).await?;
        env.procs.start(Component::AlgorithmB, 1, &[]).await?;
        env.procs.start(Component::RestApi, 1, &[]).await?;
        let port = env.procs.http_port(Component::RestApi).context("the REST API announced no port")?;
        let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(format!("load-{}", env.run_id)))?;
        paced_phase(&env, &api, &sla, &mut report, t0, timeout, run.publishers.max(1), run.rate).await?;
        // Duplicated rows of the paced chunks (the paced phase reconciles losses).
        let prefix = env.prefix("paced");
        let rows = env.db_sources(&prefix).await?;
        let mut seen = std::collections::HashSet::new();
        anyhow::Ok(rows.iter().filter(|r| !seen.insert((r.0, r.1.clone()))).count() as u64)
    }
    .await;
    let logs = env.procs.log_dir().to_path_buf();
    env.teardown().await;
    let duplicated_rows = result?;
    let problems = harness::sut::logged_problems(&logs)?;
    let gate = |name: &str| report.gates.iter().find(|g| g.name == name).and_then(|g| g.observed);
    let paced = report.throughput.iter().find(|t| t.name == "paced publish");
    Ok(PacedMeasurement {
        publish_rate: paced.map(|t| t.achieved_per_sec).unwrap_or(0.0),
        published: paced.map(|t| t.count).unwrap_or(0),
        sensor_to_db_p99_ms: gate("sensor_to_db_p99"),
        lost: gate("paced_lost").map(|v| v as u64).unwrap_or(u64::MAX),
        duplicated_rows,
        log_problems: problems
            .iter()
            .map(|p| format!("{}: {}", p.file, p.line.chars().take(200).collect::<String>()))
            .collect(),
        report,
    })
}

/// Every warning or error the services logged during the run (reconnects, dead letters, failed
/// acks): the pipeline may recover from them without losing a chunk, and they still mean
/// something went wrong.
fn sut_log_gate(logs: &Path, sla: &Sla, report: &mut RunReport) -> anyhow::Result<()> {
    let problems = harness::sut::logged_problems(logs)?;
    let mut detail = format!("warnings and errors in the services' logs ({})", logs.display());
    for p in problems.iter().take(3) {
        detail.push_str(&format!("; {}: {}", p.file, p.line.chars().take(200).collect::<String>()));
    }
    push(
        report,
        GateResult::judge(
            "sut_log_problems",
            "sut_log_problems",
            sla.get("sut_log_problems")?,
            Some(problems.len() as f64),
            detail,
        ),
    );
    Ok(())
}

async fn phases(env: &Env, sla: &Sla, report: &mut RunReport, t0: Instant) -> anyhow::Result<()> {
    let wl = &sla.workload;
    let timeout = Duration::from_secs_f64(wl.phase_timeout_secs);
    let users = wl.publishers.max(1);

    // 1. Drain rate of one Algorithm A.
    let started = Instant::now();
    let prefix = env.prefix("drain");
    progress(t0, format!("drain: queueing {} chunks, then one Algorithm A drains them", wl.drain_chunks));
    env.publish("drain", wl.drain_chunks, users, None, false).await?;
    env.procs.start(Component::AlgorithmA, 1, &[]).await?;
    let reached = wait_for(t0, "drain: Feature A", wl.drain_chunks, timeout, Duration::from_millis(100), || async {
        Ok(env.tap_count(Source::FeatureA, &prefix) as u64)
    })
    .await?;
    let arrivals: Vec<Instant> = env.tap_sources(Source::FeatureA, &prefix).into_iter().map(|a| a.1).collect();
    let rate = match (arrivals.iter().min(), arrivals.iter().max()) {
        (Some(a), Some(b)) if arrivals.len() > 1 && b > a => {
            Some((arrivals.len() - 1) as f64 / (*b - *a).as_secs_f64())
        }
        _ => None,
    };
    let th = sla.get("algorithm_a_drain_rate")?;
    let detail = format!(
        "1 instance drained {}/{} queued chunks{}",
        arrivals.len(),
        wl.drain_chunks,
        if reached.is_none() { " (timed out)" } else { "" }
    );
    push(
        report,
        GateResult::judge("algorithm_a_drain_rate", "algorithm_a_drain_rate", th, rate, detail)
            .took(started.elapsed().as_secs_f64()),
    );
    if let Some(r) = rate {
        report.throughput.push(Throughput {
            name: "Algorithm A drain (1 instance)".into(),
            offered_per_sec: None,
            achieved_per_sec: r,
            count: arrivals.len() as u64,
            secs: arrivals.len() as f64 / r,
        });
    }

    // 2. Competing consumers.
    for instances in [2usize, 3] {
        let started = Instant::now();
        let label = format!("cc{instances}");
        let prefix = env.prefix(&label);
        env.procs.scale(Component::AlgorithmA, instances, &[]).await?;
        progress(t0, format!("competing consumers: {instances} Algorithm A instances, {} chunks", wl.competing_chunks));
        let sent = env.publish(&label, wl.competing_chunks, users, None, false).await?;
        wait_for(
            t0,
            &format!("{label}: Feature A"),
            wl.competing_chunks,
            timeout,
            Duration::from_millis(100),
            || async { Ok(env.tap_count(Source::FeatureA, &prefix) as u64) },
        )
        .await?;
        // Duplicates arrive late if at all: give redeliveries a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = env.tap_sources(Source::FeatureA, &prefix);
        let mut by_instance: BTreeMap<String, u64> = BTreeMap::new();
        for (_, _, p) in &seen {
            *by_instance.entry(p.clone().unwrap_or_default()).or_default() += 1;
        }
        let ids: Vec<Uuid> = sent.sent.iter().map(|s| s.id).collect();
        let rec = reconcile(&format!("feature_a, {instances} competing instances"), &ids, seen.iter().map(|s| s.0));
        let th = sla.get("competing_lost_duplicated")?;
        let idle = instances.saturating_sub(by_instance.len());
        let detail = format!(
            "{} chunks: lost {}, duplicated {}; per instance {:?}{}",
            ids.len(),
            rec.lost_count,
            rec.duplicated_count,
            by_instance.values().collect::<Vec<_>>(),
            if idle > 0 { format!("; {idle} instance(s) got nothing") } else { String::new() }
        );
        let observed = (rec.lost_count + rec.duplicated_count) as f64;
        push(
            report,
            GateResult::judge(
                &format!("competing_consumers_{instances}"),
                "competing_lost_duplicated",
                th,
                Some(observed),
                detail,
            )
            .took(started.elapsed().as_secs_f64()),
        );
        report.notes.insert(format!("competing_consumers_{instances}_per_instance"), json!(by_instance));
        report.reconciliation.push(rec);
    }

    // 3. DataWriter throughput and idempotency.
    writer_phase(env, sla, report, t0, timeout).await?;

    // 4. Burst through the full pipeline.
    env.procs.scale(Component::AlgorithmA, 2, &[]).await?;
    env.procs.start(Component::AlgorithmB, 1, &[]).await?;
    env.procs.start(Component::RestApi, 1, &[]).await?;
    let api = {
        let port = env.procs.http_port(Component::RestApi).context("the REST API announced no port")?;
        ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(format!("load-{}", env.run_id)))?
    };
    measure_idle_cpu(env, report, 2.0).await;
    let burst_rate = burst_phase(env, sla, report, t0, timeout, users).await?;

    // 5. Paced run: per-hop latency at half load.
    let rate = if wl.latency_rate > 0.0 { wl.latency_rate } else { (burst_rate.unwrap_or(20.0) / 2.0).max(1.0) };
    paced_phase(env, &api, sla, report, t0, timeout, users, rate).await?;
    Ok(())
}

/// Prints where a phase's CPU went and keeps it in the report (`notes.cpu_per_chunk_<phase>`),
/// net of the idle pipeline's use when that was measured.
fn cpu_note(env: &Env, report: &mut RunReport, phase: &str, b: crate::proc_cpu::Breakdown) {
    let idle = env.idle_cpu.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let b = match idle {
        Some(idle) => b.net_of(&idle),
        None => b,
    };
    eprint!("{}", b.render(phase));
    report.notes.insert(format!("cpu_per_chunk_{phase}"), json!(b));
}

/// The idle pipeline's CPU (every component up, nothing flowing) over `secs`: the baseline the
/// phases' net per-chunk figures take off (`notes.cpu_idle`).
async fn measure_idle_cpu(env: &Env, report: &mut RunReport, secs: f64) {
    let before = env.cpu();
    // Measuring idle use needs idle time: nothing else to wait for.
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let idle = before.until(&env.cpu(), 0);
    eprint!("{}", idle.render("idle pipeline (cores are what matters here)"));
    report.notes.insert("cpu_idle".into(), json!(idle));
    *env.idle_cpu.lock().unwrap_or_else(PoisonError::into_inner) = Some(idle);
}

fn push(report: &mut RunReport, gate: GateResult) {
    eprintln!(
        "[gate] {:<28} {:<5} observed {} vs {}  {}",
        gate.name,
        match gate.verdict {
            crate::sla::Verdict::Pass => "PASS",
            crate::sla::Verdict::Fail => "FAIL",
            crate::sla::Verdict::Skipped => "SKIP",
        },
        gate.observed_text(),
        gate.threshold,
        gate.detail
    );
    report.gates.push(gate);
}

async fn writer_phase(
    env: &Env,
    sla: &Sla,
    report: &mut RunReport,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = sla.workload.writer_features;
    let prefix = env.prefix("writer");
    progress(t0, format!("data writer: {n} Feature A messages queued twice each, then one writer drains them"));
    // Start once so the schema and the writer's queues exist, then stop it to queue the input.
    env.procs.start(Component::DataWriter, 1, &[]).await?;
    env.procs.stop(Component::DataWriter, None).await?;
    let publisher = Publisher::new(&env.conn, env.names.clone(), harness::amqp::Topology::Owned).await?;
    let samples = harness::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    let mut messages = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let sensor = format!("{prefix}.s{}", seq % 4);
        let chunk = AudioChunk::from_samples(&sensor, seq, chrono::Utc::now(), 16_000, 1, Encoding::PcmF32le, &samples);
        let feature = harness::signal::feature_a_for(&chunk, "load-writer-phase", chrono::Utc::now())?;
        let body = contract::check_outgoing(MessageKind::FeatureA, &feature)
            .map_err(|e| anyhow::anyhow!("a generated Feature A breaks the contract: {e}"))?;
        messages.push(RawMessage {
            body,
            message_id: Some(feature.message_id.to_string()),
            sensor_id: Some(sensor),
            content_type: None,
            content_encoding: None,
            headers: vec![(contract::HEADER_SCHEMA.into(), MessageKind::FeatureA.schema_header().into())],
        });
    }
    let exchange = env.names.features_a();
    // Every message twice: the second delivery must not add a row.
    for round in 0..2 {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(messages.iter())
            .map(|m| publisher.raw_to(&exchange, "", m))
            .buffer_unordered(32)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e.context(format!("queueing Feature A messages (round {})", round + 1)));
        }
    }
    let ready = Instant::now();
    env.procs.start(Component::DataWriter, 1, &[]).await?;
    let done = wait_for(t0, "data writer: rows", n, timeout, Duration::from_millis(20), || async {
        Ok(env.db_count(&prefix).await? as u64)
    })
    .await?;
    let rows_per_sec = match env.db_commit_rate(&prefix).await? {
        Some(r) if done.is_some() => Some(r),
        // A single batch: fall back to the wall time since the writer was started.
        _ => done.map(|d| n as f64 / (d - ready).as_secs_f64()),
    };
    // Let any late duplicate land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = env.db_count(&prefix).await?;
    let th = sla.get("writer_rows_per_sec")?;
    push(
        report,
        GateResult::judge(
            "writer_rows_per_sec",
            "writer_rows_per_sec",
            th,
            rows_per_sec,
            format!(
                "{n} unique rows from {} deliveries (each message twice); rate from the batches' written_at",
                2 * n
            ),
        )
        .took(started.elapsed().as_secs_f64()),
    );
    let dup = (count - n as i64).max(0) as f64;
    let th = sla.get("writer_duplicate_rows")?;
    push(
        report,
        GateResult::judge(
            "writer_idempotency",
            "writer_duplicate_rows",
            th,
            Some(dup),
            format!("{count} rows for {n} unique messages delivered twice each"),
        )
        .took(started.elapsed().as_secs_f64()),
    );
    if let Some(r) = rows_per_sec {
        report.throughput.push(Throughput {
            name: "DataWriter rows".into(),
            offered_per_sec: None,
            achieved_per_sec: r,
            count: n,
            secs: n as f64 / r,
        });
    }
    Ok(())
}

/// Reconciles a phase's chunks at every stage (tap A, tap B, DB A, DB B).
async fn reconcile_all(
    env: &Env,
    label: &str,
    ids: &[Uuid],
    prefix: &str,
) -> anyhow::Result<Vec<StageReconciliation<Uuid>>> {
    let a = env.tap_sources(Source::FeatureA, prefix);
    let b = env.tap_sources(Source::FeatureB, prefix);
    let rows = env.db_sources(prefix).await?;
    Ok(vec![
        reconcile(&format!("{label}: feature_a (fanout)"), ids, a.iter().map(|x| x.0)),
        reconcile(&format!("{label}: feature_b (fanout)"), ids, b.iter().map(|x| x.0)),
        reconcile(&format!("{label}: db rows A"), ids, rows.iter().filter(|r| r.1 == "A").map(|r| r.0)),
        reconcile(&format!("{label}: db rows B"), ids, rows.iter().filter(|r| r.1 == "B").map(|r| r.0)),
    ])
}

/// Returns the pipeline's end-to-end chunks/s.
async fn burst_phase(
    env: &Env,
    sla: &Sla,
    report: &mut RunReport,
    t0: Instant,
    timeout: Duration,
    users: usize,
) -> anyhow::Result<Option<f64>> {
    let started = Instant::now();
    let n = sla.workload.burst_chunks;
    let prefix = env.prefix("burst");
    progress(t0, format!("burst: {n} chunks as fast as confirms allow through the whole pipeline"));
    let cpu0 = env.cpu();
    let sent = env.publish("burst", n, users, None, true).await?;
    report.throughput.push(Throughput {
        name: "burst publish (confirmed)".into(),
        offered_per_sec: None,
        achieved_per_sec: sent.rate(),
        count: sent.sent.len() as u64,
        secs: sent.secs,
    });
    report.latencies.insert("burst: publish → confirm".into(), LatencyReport::of(&sent.confirm));
    let first = sent.sent.iter().map(|s| s.sent).min().unwrap_or_else(Instant::now);
    let done = wait_for(t0, "burst: DB rows (A+B)", 2 * n, timeout, Duration::from_millis(100), || async {
        Ok(env.db_count(&prefix).await? as u64)
    })
    .await?;
    cpu_note(env, report, "burst", cpu0.until(&env.cpu(), n));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<Uuid> = sent.sent.iter().map(|s| s.id).collect();
    let recs = reconcile_all(env, "burst", &ids, &prefix).await?;
    let lost: usize = recs.iter().map(|r| r.lost_count).sum();
    let dup_rows: usize = recs.iter().filter(|r| r.stage.contains("db rows")).map(|r| r.duplicated_count).sum();
    let throughput = done.map(|d| n as f64 / (d - first).as_secs_f64());
    let secs = started.elapsed().as_secs_f64();
    push(
        report,
        GateResult::judge(
            "burst_lost",
            "burst_lost",
            sla.get("burst_lost")?,
            Some(lost as f64),
            format!(
                "{n} chunks; lost per stage (A, B, rows A, rows B): {:?}",
                recs.iter().map(|r| r.lost_count).collect::<Vec<_>>()
            ),
        )
        .took(secs),
    );
    push(
        report,
        GateResult::judge(
            "burst_duplicated_rows",
            "burst_duplicated_rows",
            sla.get("burst_duplicated_rows")?,
            Some(dup_rows as f64),
            format!("{n} chunks; duplicated DB rows A+B"),
        )
        .took(secs),
    );
    let detail = format!(
        "{n} chunks from first publish to the last DB row (publish alone: {:.0}/s){}",
        sent.rate(),
        if lost > 0 { "; NOT at 0 loss" } else { "" }
    );
    let observed = if lost > 0 { Some(0.0) } else { throughput };
    push(
        report,
        GateResult::judge(
            "pipeline_throughput",
            "pipeline_throughput",
            sla.get("pipeline_throughput")?,
            observed,
            detail,
        )
        .took(secs),
    );
    if let Some(t) = throughput {
        report.throughput.push(Throughput {
            name: "pipeline end-to-end (burst)".into(),
            offered_per_sec: None,
            achieved_per_sec: t,
            count: n,
            secs: n as f64 / t,
        });
    }
    report.reconciliation.extend(recs);
    Ok(if lost > 0 { None } else { throughput })
}

/// First-seen times of rows and API answers, filled by the pollers.
#[derive(Debug, Default)]
struct Seen {
    /// (source id, type) → first time the DB poller saw the row.
    rows: HashMap<(Uuid, char), Instant>,
    /// source id → first time the API's latest Feature B named it.
    api: HashMap<Uuid, Instant>,
    /// (source id, type) → the row's `written_at` (the database clock at its transaction's start).
    written: HashMap<(Uuid, char), chrono::DateTime<chrono::Utc>>,
    /// (source id, type) → the row's `received_at` and `inserted_at` (contract 1.4; None when the
    /// writer does not record them).
    timing: HashMap<(Uuid, char), (Option<Wall>, Option<Wall>)>,
}

/// A database or component wall-clock time.
type Wall = chrono::DateTime<chrono::Utc>;

#[allow(clippy::too_many_arguments)]
async fn paced_phase(
    env: &Env,
    api: &ApiClient,
    sla: &Sla,
    report: &mut RunReport,
    t0: Instant,
    timeout: Duration,
    users: usize,
    rate: f64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let wl = &sla.workload;
    let n = ((rate * wl.latency_secs).round() as u64).max(1);
    let prefix = env.prefix("paced");
    // Each publisher is one sensor waiting for its confirms; a sensor faster than the broker's
    // confirm p99 would measure its own queue (behind schedule), not the pipeline. At most
    // SENSOR_RATE chunks/s each, as sensors with 50 ms chunks.
    let users = users.max((rate / SENSOR_RATE).ceil() as usize);
    progress(
        t0,
        format!("paced: {n} chunks at {rate:.0}/s ({:.0} s) from {users} sensors, per-hop latency", wl.latency_secs),
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut follower = env.db.follow_rows().await?;
    let db_poller = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(rows) = follower.poll().await {
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    for r in rows {
                        s.rows.entry((r.source_message_id, r.feature_type)).or_insert(now);
                        s.written.insert((r.source_message_id, r.feature_type), r.written_at);
                        s.timing.insert((r.source_message_id, r.feature_type), (r.received_at, r.inserted_at));
                    }
                }
                // The poll period bounds how late a row is seen (it only adds to the latency
                // measured); the query is prepared, so each poll is one round trip.
                tokio::time::sleep(DB_POLL_EVERY).await;
            }
        })
    };
    let api_poller = {
        let (api, seen, stop) = (api.clone(), seen.clone(), stop.clone());
        // One sensor polled every 10 ms (100 requests/s): the API hop sampled at 10 ms
        // resolution without the observer loading the box it measures.
        let sensors: Vec<String> = vec![format!("{prefix}.u0")];
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for s in &sensors {
                    if let Ok(r) = api.latest(s, "B").await
                        && r.status == 200
                        && let Ok(v) = r.json()
                        && let Some(src) = v["source_message_id"].as_str().and_then(|x| x.parse::<Uuid>().ok())
                    {
                        seen.lock().unwrap_or_else(PoisonError::into_inner).api.entry(src).or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let cpu0 = env.cpu();
    let sent = env.publish("paced", n, users, Some(rate), true).await?;
    let done = wait_for(t0, "paced: DB rows (A+B)", 2 * n, timeout, Duration::from_millis(100), || async {
        Ok(seen.lock().unwrap_or_else(PoisonError::into_inner).rows.keys().filter(|k| k.1 == 'A' || k.1 == 'B').count()
            as u64)
    })
    .await;
    // With the observers' own cost (row poller, API poller, tap) in it: what the box carried.
    cpu_note(env, report, "paced", cpu0.until(&env.cpu(), n));
    // Keep polling briefly so the last rows' API visibility can be sampled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = db_poller.await;
    let _ = api_poller.await;
    done?;
    report.throughput.push(Throughput {
        name: "paced publish".into(),
        offered_per_sec: Some(rate),
        achieved_per_sec: sent.rate(),
        count: sent.sent.len() as u64,
        secs: sent.secs,
    });
    report.latencies.insert("paced: publish → confirm".into(), LatencyReport::of(&sent.confirm));

    let interval = Duration::from_secs_f64(1.0 / rate);
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    // Scanned once: the tap holds every message of the run.
    let taps = (first_seen(env, Source::FeatureA, &prefix), first_seen(env, Source::FeatureB, &prefix));
    let hops = hop_latencies(&sent.sent, &taps, &seen, interval);
    let csv = env.out.join("paced-samples.csv");
    if let Err(e) = write_samples(&csv, &sent.sent, &taps, &seen) {
        eprintln!("load: warning: could not write {}: {e:#}", csv.display());
    }
    let p99 =
        hops.get("paced: publish → DB rows (A+B)").filter(|l| l.count() > 0).map(|l| l.summary().corrected.p99_ms);
    let db_count = hops.get("paced: publish → DB rows (A+B)").map(Latency::count).unwrap_or(0);
    for (name, l) in &hops {
        report.latencies.insert(name.clone(), LatencyReport::of(l));
    }
    let waterfall = waterfall_of(env, &prefix, &sent.sent, &seen);
    eprint!("{}", waterfall.table());
    let waterfall_gates: Vec<(String, String)> = crate::waterfall::Segment::ALL
        .iter()
        .map(|s| (format!("waterfall_{}_p99", s.key()), s.key().to_string()))
        .filter(|(k, _)| sla.thresholds.contains_key(k))
        .collect();
    for (key, segment) in waterfall_gates {
        let observed = waterfall.segment(&segment).filter(|_| waterfall.complete > 0).map(|s| s.p99_ms);
        let label = waterfall.segment(&segment).map(|s| s.label.clone()).unwrap_or_default();
        push(
            report,
            GateResult::judge(
                &key,
                &key,
                sla.get(&key)?,
                observed,
                format!("p99 of the waterfall segment \"{label}\" over {} paced chunks", waterfall.complete),
            ),
        );
    }
    report.waterfall = Some(waterfall);
    let ids: Vec<Uuid> = sent.sent.iter().map(|s| s.id).collect();
    let recs = reconcile_all(env, "paced", &ids, &prefix).await?;
    let lost: usize = recs.iter().map(|r| r.lost_count).sum();
    let secs = started.elapsed().as_secs_f64();
    push(
        report,
        GateResult::judge(
            "sensor_to_db_p99",
            "sensor_to_db_p99",
            sla.get("sensor_to_db_p99")?,
            p99,
            format!("p99 publish → both rows visible, from intended send times (CO-corrected), {db_count} chunks at {rate:.0}/s (half the burst throughput unless set)"),
        )
        .took(secs),
    );
    push(
        report,
        GateResult::judge(
            "paced_lost",
            "burst_lost",
            sla.get("burst_lost")?,
            Some(lost as f64),
            format!("{n} paced chunks; lost per stage: {:?}", recs.iter().map(|r| r.lost_count).collect::<Vec<_>>()),
        )
        .took(secs),
    );
    report.reconciliation.extend(recs);
    Ok(())
}

/// The paced chunks' waterfall: the harness's own times (monotonic, mapped onto the wall clock
/// once) with the components' timing headers and the rows' timing columns (wall clock, same host).
fn waterfall_of(env: &Env, prefix: &str, sent: &[Sent], seen: &Seen) -> crate::waterfall::Waterfall {
    use crate::waterfall::{ChunkTimes, RowTimes};
    let Some(t0) = sent.iter().map(|s| s.intended).min() else { return crate::waterfall::build(&[], &[]) };
    let (now, wall_now) = (Instant::now(), chrono::Utc::now());
    let wall_t0_us = (wall_now - chrono::Duration::from_std(now - t0).unwrap_or_default()).timestamp_micros();
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let us_ms = |us: i64| (us - wall_t0_us) as f64 / 1e3;
    let wall_ms = |t: chrono::DateTime<chrono::Utc>| us_ms(t.timestamp_micros());
    // source id → (received_us, sent_us) from the first Feature A / B the tap saw for it.
    let headers = |source: Source| {
        let mut m: HashMap<Uuid, (Instant, Option<i64>, Option<i64>)> = HashMap::new();
        for c in tap_captures(env, source, prefix) {
            let Some(id) = c.str_field("/source_message_id").and_then(|x| x.parse::<Uuid>().ok()) else { continue };
            let num = |k: &str| c.headers.get(k).and_then(|v| v.parse::<i64>().ok());
            let entry = (c.arrived, num(contract::HEADER_RECEIVED_US), num(contract::HEADER_SENT_US));
            m.entry(id)
                .and_modify(|e| {
                    if entry.0 < e.0 {
                        *e = entry
                    }
                })
                .or_insert(entry);
        }
        m
    };
    let (a, b) = (headers(Source::FeatureA), headers(Source::FeatureB));
    let row = |id: Uuid, ty: char| {
        let (received, inserted) = seen.timing.get(&(id, ty)).copied().unwrap_or((None, None));
        RowTimes {
            received: received.map(wall_ms),
            written: seen.written.get(&(id, ty)).copied().map(wall_ms),
            inserted: inserted.map(wall_ms),
            seen: seen.rows.get(&(id, ty)).copied().map(ms),
        }
    };
    let chunks: Vec<ChunkTimes> = sent
        .iter()
        .map(|s| {
            let (ah, bh) = (a.get(&s.id), b.get(&s.id));
            ChunkTimes {
                intended: ms(s.intended),
                sent: ms(s.sent),
                a_received: ah.and_then(|h| h.1).map(us_ms),
                a_sent: ah.and_then(|h| h.2).map(us_ms),
                b_received: bh.and_then(|h| h.1).map(us_ms),
                b_sent: bh.and_then(|h| h.2).map(us_ms),
                row_a: row(s.id, 'A'),
                row_b: row(s.id, 'B'),
            }
        })
        .collect();
    let confirm: Vec<f64> = sent.iter().map(|s| ms(s.confirmed) - ms(s.sent)).collect();
    let api: Vec<f64> = sent.iter().filter_map(|s| Some(ms(*seen.api.get(&s.id)?) - us_ms(b.get(&s.id)?.2?))).collect();
    crate::waterfall::build(
        &chunks,
        &[
            ("publish_confirm", "harness publish → broker confirm (not on the path)", confirm),
            ("api_latest", "Feature B sent → API latest shows it (1 sensor, 10 ms poll)", api),
        ],
    )
}

/// The tap's captures of `source` for sensors of `prefix`.
fn tap_captures(env: &Env, source: Source, prefix: &str) -> Vec<harness::amqp::Captured> {
    env.tap.matching(|m| m.source == source && m.sensor_id().is_some_and(|s| s.starts_with(prefix)))
}

/// Per source id, when the tap first saw its Feature A and its Feature B.
type FirstSeen = (HashMap<Uuid, Instant>, HashMap<Uuid, Instant>);

/// Source id → when the tap first saw a feature of `source` derived from it.
fn first_seen(env: &Env, source: Source, prefix: &str) -> HashMap<Uuid, Instant> {
    let mut m: HashMap<Uuid, Instant> = HashMap::new();
    for (id, at, _) in env.tap_sources(source, prefix) {
        m.entry(id).and_modify(|t| *t = (*t).min(at)).or_insert(at);
    }
    m
}

/// One line per paced chunk with each stage's time (ms after the first intended send; empty if
/// never seen), so a tail can be traced to a moment and a stage.
fn write_samples(path: &Path, sent: &[Sent], taps: &FirstSeen, seen: &Seen) -> anyhow::Result<()> {
    use std::io::Write as _;
    let (a, b) = taps;
    let Some(t0) = sent.iter().map(|s| s.intended).min() else { return Ok(()) };
    let ms = |t: Option<Instant>| t.map(|t| format!("{:.3}", t.saturating_duration_since(t0).as_secs_f64() * 1e3));
    // `written_at` is wall-clock time: mapped onto `t0` through the wall clock now (same host).
    let (now, wall_now) = (Instant::now(), chrono::Utc::now());
    let wall_t0 = wall_now - chrono::Duration::from_std(now - t0).unwrap_or_default();
    let wall_ms = |t: Option<&chrono::DateTime<chrono::Utc>>| {
        t.map(|t| format!("{:.3}", (*t - wall_t0).num_microseconds().unwrap_or(0) as f64 / 1e3))
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "source_message_id,intended_ms,sent_ms,confirmed_ms,feature_a_ms,feature_b_ms,row_a_ms,row_b_ms,api_b_ms,row_a_written_ms,row_b_written_ms"
    )?;
    for s in sent {
        let cols = [
            ms(Some(s.intended)),
            ms(Some(s.sent)),
            ms(Some(s.confirmed)),
            ms(a.get(&s.id).copied()),
            ms(b.get(&s.id).copied()),
            ms(seen.rows.get(&(s.id, 'A')).copied()),
            ms(seen.rows.get(&(s.id, 'B')).copied()),
            ms(seen.api.get(&s.id).copied()),
            wall_ms(seen.written.get(&(s.id, 'A'))),
            wall_ms(seen.written.get(&(s.id, 'B'))),
        ];
        writeln!(out, "{},{}", s.id, cols.map(Option::unwrap_or_default).join(","))?;
    }
    out.flush()?;
    Ok(())
}

/// Per-hop latencies of the paced chunks: cumulative from publish, and hop to hop.
fn hop_latencies(sent: &[Sent], taps: &FirstSeen, seen: &Seen, interval: Duration) -> BTreeMap<String, Latency> {
    let (a, b) = taps;
    let names = [
        "paced: publish → feature A",
        "paced: publish → feature B",
        "paced: publish → DB rows (A+B)",
        "paced: publish → API latest B (sampled)",
        "paced: hop feature A → feature B",
        "paced: hop feature B → DB rows",
    ];
    let mut out: BTreeMap<String, Latency> =
        names.iter().map(|n| (n.to_string(), Latency::intended(interval))).collect();
    // (hop name, sent chunk, when seen): recorded after the scan so only one borrow of `out`.
    let mut samples: Vec<(&str, Duration, Duration, Instant)> = Vec::new();
    for s in sent {
        let ta = a.get(&s.id).copied();
        let tb = b.get(&s.id).copied();
        let rows = match (seen.rows.get(&(s.id, 'A')), seen.rows.get(&(s.id, 'B'))) {
            (Some(x), Some(y)) => Some((*x).max(*y)),
            _ => None,
        };
        let from_publish = [(names[0], ta), (names[1], tb), (names[2], rows), (names[3], seen.api.get(&s.id).copied())];
        for (name, at) in from_publish {
            if let Some(at) = at {
                samples.push((
                    name,
                    at.saturating_duration_since(s.sent),
                    at.saturating_duration_since(s.intended),
                    at,
                ));
            }
        }
        // Hop to hop: the delay one stage adds (no schedule involved, so raw both ways).
        for (name, from, to) in [(names[4], ta, tb), (names[5], tb, rows)] {
            if let (Some(f), Some(t)) = (from, to) {
                let d = t.saturating_duration_since(f);
                samples.push((name, d, d, t));
            }
        }
    }
    for (name, raw, from_intended, at) in samples {
        if let Some(l) = out.get_mut(name) {
            l.record_pair(raw, from_intended, at);
        }
    }
    out
}

/// Commit rate from (written_at, rows) per batch in time order: the rows of all batches but the
/// last were committed between the first and the last batch's start.
pub fn writer_rate(batches: &[(chrono::DateTime<chrono::Utc>, i64)]) -> Option<f64> {
    let (first, last) = (batches.first()?, batches.last()?);
    let secs = (last.0 - first.0).num_microseconds()? as f64 / 1e6;
    let rows: i64 = batches[..batches.len() - 1].iter().map(|b| b.1).sum();
    (secs > 0.0).then(|| rows as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_rate_counts_rows_between_batch_starts() {
        let t = |ms: i64| chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap();
        // 100 rows at 0 ms, 100 at 10 ms, 50 at 20 ms: 200 rows in 20 ms.
        assert_eq!(writer_rate(&[(t(0), 100), (t(10), 100), (t(20), 50)]), Some(10_000.0));
        assert_eq!(writer_rate(&[(t(0), 100)]), None);
        assert_eq!(writer_rate(&[]), None);
    }
}

/// Figures for `load bench` (2) and (3), measured on a private pipeline like the gates.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineBench {
    /// End-to-end chunks/s of a burst (first publish → last DB row), `None` when not at 0 loss.
    pub e2e_chunks_per_sec: Option<f64>,
    /// Chunks lost at any stage in that burst.
    pub lost: usize,
    /// Bytes of one chunk message body.
    pub chunk_bytes: usize,
    /// DataWriter rows/s draining queued features (each once).
    pub writer_rows_per_sec: Option<f64>,
    /// Raw multi-row INSERT rows/s into the same table, in the writer's batch size.
    pub raw_insert_rows_per_sec: f64,
    /// Batch size of the raw INSERT (the writer's default `batch_size`).
    pub raw_insert_batch: usize,
}

/// Measures the pipeline's end-to-end throughput for `chunks` and the DataWriter against a raw
/// INSERT for `features` rows.
pub async fn bench(
    infra: &Infra,
    out: &Path,
    chunks: u64,
    features: u64,
    users: usize,
) -> anyhow::Result<PipelineBench> {
    let t0 = Instant::now();
    let env = Env::start(infra, out).await?;
    let result = bench_phases(&env, chunks, features, users, t0).await;
    env.teardown().await;
    result
}

async fn bench_phases(
    env: &Env,
    chunks: u64,
    features: u64,
    users: usize,
    t0: Instant,
) -> anyhow::Result<PipelineBench> {
    let timeout = Duration::from_secs(300);
    let mut b = PipelineBench { raw_insert_batch: RAW_INSERT_BATCH, ..Default::default() };
    // DataWriter alone first: features queued once each, then drained.
    env.procs.start(Component::DataWriter, 1, &[]).await?;
    env.procs.stop(Component::DataWriter, None).await?;
    let prefix = env.prefix("wbench");
    let publisher = Publisher::new(&env.conn, env.names.clone(), harness::amqp::Topology::Owned).await?;
    let samples = harness::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(16_000, 1, 0, 1600);
    let mut rows = Vec::with_capacity(features as usize);
    let mut messages = Vec::with_capacity(features as usize);
    for seq in 0..features {
        let sensor = format!("{prefix}.s{}", seq % 4);
        let chunk = AudioChunk::from_samples(&sensor, seq, chrono::Utc::now(), 16_000, 1, Encoding::PcmF32le, &samples);
        b.chunk_bytes = serde_json::to_vec(&chunk)?.len();
        let f = harness::signal::feature_a_for(&chunk, "load-bench", chrono::Utc::now())?;
        let body = contract::check_outgoing(MessageKind::FeatureA, &f).map_err(|e| anyhow::anyhow!("{e}"))?;
        messages.push(RawMessage {
            body,
            message_id: Some(f.message_id.to_string()),
            sensor_id: Some(sensor.clone()),
            content_type: None,
            content_encoding: None,
            headers: vec![(contract::HEADER_SCHEMA.into(), MessageKind::FeatureA.schema_header().into())],
        });
        rows.push(f);
    }
    let exchange = env.names.features_a();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(messages.iter())
        .map(|m| publisher.raw_to(&exchange, "", m))
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.context("queueing Feature A messages for the writer benchmark"));
    }
    let ready = Instant::now();
    env.procs.start(Component::DataWriter, 1, &[]).await?;
    let done = wait_for(t0, "bench: writer rows", features, timeout, Duration::from_millis(20), || async {
        Ok(env.db_count(&prefix).await? as u64)
    })
    .await?;
    b.writer_rows_per_sec = match env.db_commit_rate(&prefix).await? {
        Some(r) if done.is_some() => Some(r),
        _ => done.map(|d| features as f64 / (d - ready).as_secs_f64()),
    };
    // Raw INSERT of the same rows (new ids) into the same table, batch by batch like the writer:
    // the writer's own statement, prepared once, straight from here.
    let raw: Vec<harness::sql::FeatureRow> = rows
        .iter()
        .map(|f| {
            let mut row = harness::sql::FeatureRow::from_feature(&contract::AnyFeature::A(f.clone()));
            row.message_id = Uuid::new_v4();
            // New lineage too: the table allows one row per (source chunk, type) since 1.3.
            row.source_message_id = Uuid::new_v4();
            row.sensor_id = format!("{}-raw", f.sensor_id);
            row
        })
        .collect();
    let inserter = env.db.row_inserter(harness::sql::Conflicts::Skip).await.context("preparing the raw INSERT")?;
    let started = Instant::now();
    for batch in raw.chunks(b.raw_insert_batch) {
        inserter.insert(batch).await.context("raw multi-row INSERT")?;
    }
    b.raw_insert_rows_per_sec = features as f64 / started.elapsed().as_secs_f64();

    // The whole pipeline: a burst, first publish → last row.
    env.procs.start(Component::AlgorithmA, 2, &[]).await?;
    env.procs.start(Component::AlgorithmB, 1, &[]).await?;
    env.procs.start(Component::RestApi, 1, &[]).await?;
    let prefix = env.prefix("pbench");
    progress(t0, format!("bench: {chunks} chunks through the pipeline"));
    let sent = env.publish("pbench", chunks, users, None, false).await?;
    let first = sent.sent.iter().map(|s| s.sent).min().unwrap_or_else(Instant::now);
    let done = wait_for(t0, "bench: pipeline rows", 2 * chunks, timeout, Duration::from_millis(100), || async {
        Ok(env.db_count(&prefix).await? as u64)
    })
    .await?;
    let ids: Vec<Uuid> = sent.sent.iter().map(|s| s.id).collect();
    b.lost = reconcile_all(env, "bench", &ids, &prefix).await?.iter().map(|r| r.lost_count).sum();
    b.e2e_chunks_per_sec = done.filter(|_| b.lost == 0).map(|d| chunks as f64 / (d - first).as_secs_f64());
    Ok(b)
}
