//! Distributed REST load (issue #14): N workers, each a share of the users and of the rate,
//! running the same window from a coordinated start; each stores its raw results (HdrHistogram
//! V2, counters, goose's JSON) in a results database ([`crate::results_db`]); the merge adds the
//! histograms, so merged percentiles are exactly those of one histogram fed every sample.
//!
//! - Shares: worker *i* of *n* gets `total / n` users, plus one when `i < total % n` (the same
//!   for the rate and, as a fraction, the ramp), so the shares add up to the totals exactly.
//! - Coordinated start: every worker registers, discovers the API and marks itself ready; when
//!   all *n* are ready, the start is `max(ready_at) + lead`, computed from the database (the same
//!   value for everyone) and recorded once; a worker that finds the start already passed, or a
//!   peer failed, does not start (no accidental skew). `--start-at` fixes the time instead.
//! - Merge: every index `0 … n-1` must have reported `ok`; a failed, missing or silent worker
//!   fails the merge with its index and reason (exit 1), never a partial result.
//! - The same code path serves one in-process run (`load spec`): it is a run of one share whose
//!   single result goes through [`merge`].

use crate::cli::{LoadOpts, MergeArgs, WorkerArgs, parse_secs};
use crate::cpu::CpuMeter;
use crate::report::{self, LatencyReport, RunReport, Throughput, WorkerBreakdown};
use crate::rest::{self, Mix, Recorder, RestState, Target};
use crate::results_db::{Measured, ResultsDb, RunSpec, WorkerRow};
use crate::sla::{GateResult, Sla, Threshold};
use crate::stats::{Latency, histogram};
use crate::{attack, runner};
use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One worker's share of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Completion index, `0 … workers-1`.
    pub index: usize,
    /// Workers in the run.
    pub workers: usize,
    /// Its users.
    pub users: usize,
    /// Its requests/s (0 = closed loop).
    pub rate: u64,
    /// Its users started per second.
    pub increase_rate: f64,
    /// Users of the workers before it (token rotation continues where they stop).
    pub user_offset: usize,
}

/// `total / n`, plus one for the first `total % n` indexes.
fn part(total: u64, index: usize, workers: usize) -> u64 {
    let n = workers as u64;
    total / n + u64::from((index as u64) < total % n)
}

/// Worker `index`'s share of `users`, `rate` (0 = closed loop) and `increase_rate` (users/s,
/// default: all users within a second).
pub fn share(
    users: usize,
    rate: u64,
    increase_rate: Option<f64>,
    index: usize,
    workers: usize,
) -> anyhow::Result<Share> {
    if workers == 0 || index >= workers {
        bail!("worker index {index} is outside 0 … {} (workers: {workers})", workers.saturating_sub(1));
    }
    if users < workers {
        bail!("{users} users cannot be shared by {workers} workers: each needs at least one");
    }
    if rate > 0 && rate < workers as u64 {
        bail!("{rate} requests/s cannot be shared by {workers} workers: each needs at least 1/s");
    }
    let my_users = part(users as u64, index, workers) as usize;
    let user_offset = (0..index).map(|i| part(users as u64, i, workers) as usize).sum();
    let total_increase = increase_rate.unwrap_or(users as f64);
    Ok(Share {
        index,
        workers,
        users: my_users,
        rate: if rate == 0 { 0 } else { part(rate, index, workers) },
        increase_rate: total_increase * my_users as f64 / users as f64,
        user_offset,
    })
}

/// Everything one share's goose run needs.
#[derive(Debug, Clone)]
pub struct RestPlan {
    /// API base URL.
    pub api_url: String,
    /// Bearer tokens (users take them in turn).
    pub tokens: Vec<String>,
    /// Read `sensor-1 … sensor-N`, each required to have data; `None`: whichever of 1 … 8 have.
    pub sensors: Option<usize>,
    /// The scenarios.
    pub mix: Mix,
    /// This worker's share.
    pub share: Share,
    /// The measured window in seconds.
    pub window_secs: u64,
    /// Where goose writes its reports.
    pub report_dir: PathBuf,
    /// Keep every OK latency (for the exactness test).
    pub keep_samples: bool,
}

/// Tokens from a comma-separated list.
pub fn tokens(list: Option<&str>) -> anyhow::Result<Vec<String>> {
    let t: Vec<String> =
        list.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    if t.is_empty() {
        bail!("no API token: set QA_API_TOKEN or pass --token (comma-separated for several)");
    }
    Ok(t)
}

/// Finds the sensors and ids the users read; with `plan.sensors = Some(n)` every one of
/// `sensor-1 … sensor-n` must have data.
pub async fn discover(plan: &RestPlan) -> anyhow::Result<Target> {
    let wanted: Option<Vec<String>> = plan.sensors.map(|n| (1..=n).map(|i| format!("sensor-{i}")).collect());
    // Discovery reads with the first token: start where this worker's users do, so K workers do
    // not all spend one token's rate-limit budget at once.
    let mut rotated = plan.tokens.clone();
    rotated.rotate_left(plan.share.user_offset % plan.tokens.len().max(1));
    let mut target = rest::discover(&plan.api_url, &rotated, wanted.as_deref()).await?;
    target.tokens = plan.tokens.clone();
    if let Some(w) = &wanted
        && target.sensors.len() < w.len()
    {
        let missing: Vec<&String> = w.iter().filter(|s| !target.sensors.contains(s)).take(5).collect();
        bail!(
            "only {} of {} sensors have data at {} (missing e.g. {missing:?})",
            target.sensors.len(),
            w.len(),
            plan.api_url
        );
    }
    Ok(target)
}

/// What one share's run produced.
#[derive(Debug)]
pub struct ShareRun {
    /// The results as stored for the merge.
    pub measured: Measured,
    /// Every OK latency in µs (empty unless `keep_samples`).
    pub samples: Vec<u64>,
}

/// V2 serialization of a histogram.
pub fn encode(h: &Histogram<u64>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    V2Serializer::new().serialize(h, &mut out).map_err(|e| anyhow::anyhow!("serializing a histogram: {e:?}"))?;
    Ok(out)
}

/// A histogram from its V2 serialization.
pub fn decode(bytes: &[u8]) -> anyhow::Result<Histogram<u64>> {
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("deserializing a histogram: {e:?}"))
}

/// Runs one share against `target` now and returns its results.
pub async fn run_share(plan: &RestPlan, target: Target) -> anyhow::Result<ShareRun> {
    let s = plan.share;
    let interval = if s.rate > 0 { Duration::from_secs_f64(s.users as f64 / s.rate as f64) } else { Duration::ZERO };
    // Paced users send on schedules of their own (not goose's --throttle-requests, which hands
    // out tokens in bursts and would count the wait for one as latency).
    let pace = (s.rate > 0).then_some((interval, s.users));
    let state = RestState::paced(target, Recorder::paced(interval, plan.keep_samples), s.user_offset, pace);
    std::fs::create_dir_all(&plan.report_dir).with_context(|| format!("creating {}", plan.report_dir.display()))?;
    let json_report = plan.report_dir.join(format!("goose-worker-{}.json", s.index));
    let args: Vec<String> = vec![
        "--host".into(),
        plan.api_url.clone(),
        "--users".into(),
        s.users.to_string(),
        "--increase-rate".into(),
        format!("{}", s.increase_rate.max(0.001)),
        "--run-time".into(),
        format!("{}s", plan.window_secs.max(1)),
        "--quiet".into(),
        "--no-print-metrics".into(),
        "--report-file".into(),
        json_report.display().to_string(),
        "--report-file".into(),
        plan.report_dir.join(format!("goose-worker-{}.html", s.index)).display().to_string(),
    ];
    let config = attack::config_from(&args)?;
    let cpu = CpuMeter::start();
    let started_at = Utc::now();
    let metrics = attack::run(config, rest::scenarios_of(&state, plan.mix)?).await?;
    let finished_at = Utc::now();
    let rec = &state.recorder;
    let all = rec.all();
    let (requests, _) = attack::totals(&metrics);
    let answered = rec.total();
    let secs = rec.span().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let goose_json = std::fs::read_to_string(&json_report).ok().and_then(|t| serde_json::from_str(&t).ok());
    let statuses = serde_json::to_value(rec.statuses())?;
    let measured = Measured {
        started_at: Some(started_at),
        finished_at: Some(finished_at),
        secs,
        ok: rec.ok.load(Ordering::Relaxed),
        errors: rec.errors.load(Ordering::Relaxed),
        rate_limited: rec.rate_limited.load(Ordering::Relaxed),
        requests: requests.max(answered),
        statuses,
        raw_hdr: encode(all.raw_histogram())?,
        corrected_hdr: encode(&all.corrected_histogram())?,
        interval_us: interval.as_micros() as u64,
        cpu_secs: {
            let u = cpu.usage();
            u.user_secs + u.system_secs
        },
        goose_json,
    };
    Ok(ShareRun { measured, samples: rec.samples() })
}

/// The merged (or single) measurement of a REST run.
#[derive(Debug, Clone)]
pub struct RestMeasurement {
    /// Every worker's OK latencies, added (µs).
    pub raw: Histogram<u64>,
    /// Every worker's CO-corrected latencies, added (µs).
    pub corrected: Histogram<u64>,
    /// Valid 2xx answers.
    pub ok: u64,
    /// Errors.
    pub errors: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Answers by status label.
    pub statuses: BTreeMap<String, u64>,
    /// Sum of the workers' achieved answers/s (they run the same window side by side).
    pub achieved_per_sec: f64,
    /// The run's target requests/s (0 = closed loop).
    pub target_per_sec: u64,
    /// Users of the run.
    pub users: usize,
    /// Expected interval of one user's sends (CO correction), µs; 0 = closed loop.
    pub interval_us: u64,
    /// CPU seconds every worker process used.
    pub cpu_secs: f64,
    /// Per worker.
    pub workers: Vec<WorkerBreakdown>,
}

/// Merges every worker's results of `run`: fails (naming each) when a worker is missing, still
/// running, failed, or stored an unreadable histogram; otherwise adds the histograms.
pub fn merge(run: &RunSpec, rows: &[WorkerRow]) -> anyhow::Result<RestMeasurement> {
    let mut problems = Vec::new();
    for i in 0..run.workers {
        match rows.iter().find(|r| r.index == i) {
            None => problems.push(format!("worker {i} never registered (no pod ran index {i}, or it died first)")),
            Some(r) if r.status == "failed" => problems.push(format!(
                "worker {i} ({}) failed: {}",
                r.host,
                r.error.as_deref().unwrap_or("no reason recorded")
            )),
            Some(r) if r.status != "ok" => problems.push(format!(
                "worker {i} ({}) never stored results (status {}): crashed or still running",
                r.host, r.status
            )),
            Some(_) => {}
        }
    }
    for r in rows.iter().filter(|r| r.index >= run.workers) {
        problems.push(format!("worker {} reported, but the run has only {} workers", r.index, run.workers));
    }
    let (mut raw, mut corrected) = (histogram(), histogram());
    let mut m = RestMeasurement {
        raw: histogram(),
        corrected: histogram(),
        ok: 0,
        errors: 0,
        rate_limited: 0,
        statuses: BTreeMap::new(),
        achieved_per_sec: 0.0,
        target_per_sec: run.total_rate,
        users: run.total_users,
        interval_us: 0,
        cpu_secs: 0.0,
        workers: Vec::new(),
    };
    for r in rows.iter().filter(|r| r.status == "ok" && r.index < run.workers) {
        let w = &r.measured;
        let (h_raw, h_cor) = match (decode(&w.raw_hdr), decode(&w.corrected_hdr)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(format!("worker {}: unreadable histogram: {e:#}", r.index));
                continue;
            }
        };
        if let Err(e) = raw.add(&h_raw).and_then(|()| corrected.add(&h_cor)) {
            problems.push(format!("worker {}: histogram does not add: {e:?}", r.index));
            continue;
        }
        m.ok += w.ok;
        m.errors += w.errors;
        m.rate_limited += w.rate_limited;
        if let Some(map) = w.statuses.as_object() {
            for (k, v) in map {
                *m.statuses.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        let answers = w.ok + w.errors + w.rate_limited;
        let achieved = if w.secs > 0.0 { answers as f64 / w.secs } else { 0.0 };
        m.achieved_per_sec += achieved;
        m.interval_us = m.interval_us.max(w.interval_us);
        m.cpu_secs += w.cpu_secs;
        let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        m.workers.push(WorkerBreakdown {
            index: r.index,
            host: r.host.clone(),
            users: r.users,
            rate_share: r.rate,
            achieved_per_sec: achieved,
            ok: w.ok,
            errors: w.errors,
            rate_limited: w.rate_limited,
            p50_ms: ms(&h_raw, 0.5),
            p99_ms: ms(&h_raw, 0.99),
            p99_corrected_ms: ms(&h_cor, 0.99),
            cpu_secs: w.cpu_secs,
            secs: w.secs,
            started_at: w.started_at.map(|t| t.to_rfc3339()),
        });
    }
    if !problems.is_empty() {
        bail!(
            "merge of run {} failed: {} of {} workers did not deliver usable results:\n  {}",
            run.run_id,
            run.workers - m.workers.len().min(run.workers),
            run.workers,
            problems.join("\n  ")
        );
    }
    let shares: u64 = m.workers.iter().map(|w| w.rate_share).sum();
    if run.total_rate > 0 && shares != run.total_rate {
        bail!("merge of run {}: the workers' rate shares add up to {shares}/s, not {}/s", run.run_id, run.total_rate);
    }
    let users: usize = m.workers.iter().map(|w| w.users).sum();
    if users != run.total_users {
        bail!("merge of run {}: the workers' users add up to {users}, not {}", run.run_id, run.total_users);
    }
    m.raw = raw;
    m.corrected = corrected;
    Ok(m)
}

/// Milliseconds at quantile `q` of `h`; `None` when empty.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

impl RestMeasurement {
    /// All answers (OK, errors, 429).
    pub fn answers(&self) -> u64 {
        self.ok + self.errors + self.rate_limited
    }

    /// p99 in ms of the raw or the CO-corrected latencies.
    pub fn p99_ms(&self, corrected: bool) -> Option<f64> {
        quantile_ms(if corrected { &self.corrected } else { &self.raw }, 0.99)
    }

    /// The p99 gate.
    pub fn p99_gate(&self, name: &str, threshold: Threshold, corrected: bool) -> GateResult {
        let how = if corrected {
            if self.interval_us > 0 {
                format!("measured from each request's intended send time (users paced every {} µs)", self.interval_us)
            } else {
                "corrected for coordinated omission at the mean latency (closed loop)".to_string()
            }
        } else {
            "as measured".to_string()
        };
        GateResult::judge(
            name,
            "rest_p99",
            threshold,
            self.p99_ms(corrected),
            format!(
                "p99 of {} valid answers from {} users on {} worker(s), {how}",
                self.ok,
                self.users,
                self.workers.len()
            ),
        )
    }

    /// The error-rate gate: errors of all answers, percent.
    pub fn error_gate(&self, name: &str, threshold: Threshold) -> GateResult {
        let n = self.answers();
        GateResult::judge(
            name,
            "rest_error_rate",
            threshold,
            (n > 0).then(|| self.errors as f64 / n as f64 * 100.0),
            format!("{} errors (non-2xx but 429, invalid bodies, transport) of {n} answers", self.errors),
        )
    }

    /// The rate-limited gate: 429s of all answers, percent.
    pub fn rate_limited_gate(&self, name: &str, threshold: Threshold) -> GateResult {
        let n = self.answers();
        GateResult::judge(
            name,
            "rest_rate_limited",
            threshold,
            (n > 0).then(|| self.rate_limited as f64 / n as f64 * 100.0),
            format!("{} answered 429 of {n} answers", self.rate_limited),
        )
    }

    /// The achieved-rate gate: achieved answers/s as a percent of the target (paced runs).
    pub fn achieved_gate(&self, name: &str, threshold: Threshold) -> GateResult {
        let detail = format!(
            "{:.1} answers/s achieved of {}/s targeted ({})",
            self.achieved_per_sec,
            self.target_per_sec,
            self.workers
                .iter()
                .map(|w| format!("worker {} {:.1}/s", w.index, w.achieved_per_sec))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.target_per_sec == 0 {
            return GateResult::skipped(name, "rest_rate_achieved", threshold, "closed-loop run: no target rate");
        }
        GateResult::judge(
            name,
            "rest_rate_achieved",
            threshold,
            Some(self.achieved_per_sec / self.target_per_sec as f64 * 100.0),
            detail,
        )
    }

    /// Adds the measurement's latencies, throughput, statuses and per-worker table to `report`.
    pub fn add_to(&self, report: &mut RunReport, label: &str) {
        let method = if self.interval_us > 0 {
            "measured from each request's intended send time (paced users), then histograms added"
        } else {
            "record_correct at each worker's mean latency (closed loop), then histograms added"
        };
        let l = Latency::from_histograms(
            self.raw.clone(),
            self.corrected.clone(),
            Duration::from_micros(self.interval_us),
            method,
        );
        report
            .latencies
            .insert(format!("{label}: all answers, {} worker(s)", self.workers.len()), LatencyReport::of(&l));
        report.throughput.push(Throughput {
            name: format!("{label} ({} users, {} worker(s))", self.users, self.workers.len()),
            offered_per_sec: (self.target_per_sec > 0).then_some(self.target_per_sec as f64),
            achieved_per_sec: self.achieved_per_sec,
            count: self.answers(),
            secs: self.workers.iter().map(|w| w.secs).fold(0.0, f64::max),
        });
        for (k, v) in &self.statuses {
            *report.responses_by_status.entry(k.clone()).or_default() += v;
        }
        report.rate_limited += self.rate_limited;
        report.errors += self.errors;
        report.workers.extend(self.workers.iter().cloned().map(|mut w| {
            w.host = format!("{label}: {}", w.host);
            w
        }));
    }
}

/// One share run in this process (a run of one worker), merged like a distributed run: the spec
/// steps judge single and distributed runs through the same [`merge`].
pub async fn measure_in_process(plan: &RestPlan) -> anyhow::Result<RestMeasurement> {
    let target = discover(plan).await?;
    let out = run_share(plan, target).await?;
    let run = RunSpec {
        run_id: "in-process".into(),
        workers: 1,
        total_users: plan.share.users,
        total_rate: plan.share.rate,
        window_secs: plan.window_secs,
        mix: format!("{:?}", plan.mix).to_lowercase(),
    };
    let row = WorkerRow {
        index: 0,
        status: "ok".into(),
        error: None,
        host: host_name(),
        users: plan.share.users,
        rate: plan.share.rate,
        measured: out.measured,
    };
    merge(&run, &[row])
}

/// This machine's (or pod's) name, for the per-worker table.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Waits until every worker is ready and returns the common start; fails when a peer failed,
/// when not all are ready in time, or when the start has already passed.
async fn coordinated_start(db: &ResultsDb, run: &RunSpec, args: &WorkerArgs) -> anyhow::Result<DateTime<Utc>> {
    let start = if let Some(at) = &args.start_at {
        let given: DateTime<Utc> = DateTime::parse_from_rfc3339(at)
            .with_context(|| format!("--start-at {at:?} is not RFC 3339"))?
            .with_timezone(&Utc);
        let stored = db.set_start(&run.run_id, given).await?;
        if stored != given {
            bail!("run {} already starts at {stored}, not at --start-at {given}", run.run_id);
        }
        stored
    } else {
        let deadline = Instant::now() + Duration::from_secs_f64(args.barrier_timeout);
        loop {
            let rows = db.readiness(&run.run_id).await?;
            if let Some(r) = rows.iter().find(|r| r.status == "failed") {
                bail!(
                    "worker {} failed before the start ({}); worker {} does not start",
                    r.index,
                    r.error.as_deref().unwrap_or("no reason"),
                    args.index
                );
            }
            let ready: Vec<&crate::results_db::Readiness> = rows.iter().filter(|r| r.ready_at.is_some()).collect();
            if ready.len() >= run.workers {
                let last = ready.iter().filter_map(|r| r.ready_at).max().context("no ready time")?;
                let lead = chrono::Duration::milliseconds((args.start_lead * 1000.0) as i64);
                break db.set_start(&run.run_id, last + lead).await?;
            }
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (0..run.workers).filter(|i| !ready.iter().any(|r| r.index == *i)).collect();
                bail!(
                    "not every worker got ready within {:.0} s: workers {missing:?} are missing or not ready",
                    args.barrier_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let now = Utc::now();
    if now > start + chrono::Duration::seconds(1) {
        bail!(
            "worker {} reached the coordinated start {start} {} late: it would skew the window",
            args.index,
            now - start
        );
    }
    Ok(start)
}

/// `load worker`: registers, discovers, waits for the coordinated start, runs its share, stores
/// the results (or the failure), and with `--merge` (index 0) merges the run. `Ok(false)` = the
/// merged gates failed.
pub async fn worker_main(opts: &LoadOpts, args: &WorkerArgs) -> anyhow::Result<bool> {
    let window_secs = parse_secs(&args.window)?;
    let sh = share(args.users, args.rate, args.increase_rate, args.index, args.workers)?;
    let run = RunSpec {
        run_id: args.run.clone(),
        workers: args.workers,
        total_users: args.users,
        total_rate: args.rate,
        window_secs,
        mix: format!("{:?}", args.mix).to_lowercase(),
    };
    let db = ResultsDb::open(&args.results_url, true).await?;
    db.open_run(&run).await?;
    let host = host_name();
    db.register(&run.run_id, sh.index, &host, sh.users, sh.rate).await?;
    eprintln!(
        "[worker {}/{}] run {}: {} users, {} requests/s, window {window_secs} s, on {host}",
        sh.index, sh.workers, run.run_id, sh.users, sh.rate
    );
    let outcome = async {
        let plan = RestPlan {
            api_url: args.api_url.clone().context("no API: pass --api-url (or goose's --host) or set QA_API_URL")?,
            tokens: tokens(opts.token.as_deref())?,
            sensors: args.sensors,
            mix: args.mix,
            share: sh,
            window_secs,
            report_dir: opts.report_dir.join(format!("worker-{}-{}", run.run_id, sh.index)),
            keep_samples: args.dump_samples.is_some(),
        };
        let target = discover(&plan).await?;
        db.set_ready(&run.run_id, sh.index).await?;
        let start = coordinated_start(&db, &run, args).await?;
        eprintln!("[worker {}] starting at {start}", sh.index);
        if let Ok(wait) = (start - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        let out = run_share(&plan, target).await?;
        if let Some(path) = &args.dump_samples {
            let text: String = out.samples.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        db.store_ok(&run.run_id, sh.index, &out.measured).await?;
        eprintln!(
            "[worker {}] stored: {} ok, {} errors, {} rate limited in {:.1} s",
            sh.index, out.measured.ok, out.measured.errors, out.measured.rate_limited, out.measured.secs
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let text = format!("{e:#}");
        if let Err(e2) = db.store_failed(&run.run_id, sh.index, &text).await {
            eprintln!("[worker {}] could not record the failure either: {e2:#}", sh.index);
        }
        return Err(e.context(format!("worker {} of run {}", sh.index, run.run_id)));
    }
    if args.merge && sh.index == 0 {
        let report = merge_run(opts, &db, &run.run_id, Duration::from_secs_f64(args.merge_wait)).await?;
        return Ok(report.failed == 0);
    }
    Ok(true)
}

/// `load merge`.
pub async fn merge_main(opts: &LoadOpts, args: &MergeArgs) -> anyhow::Result<bool> {
    let db = ResultsDb::open(&args.results_url, false).await?;
    let report = merge_run(opts, &db, &args.run, Duration::from_secs_f64(args.wait)).await?;
    Ok(report.failed == 0)
}

/// Reads a run's results (waiting up to `wait` for workers still running), merges them (an
/// error names every worker that failed or is missing), applies the `sla.toml` REST gates and
/// writes the reports plus the merged histograms (`merged-raw.hdr`, `merged-corrected.hdr`).
pub async fn merge_run(opts: &LoadOpts, db: &ResultsDb, run_id: &str, wait: Duration) -> anyhow::Result<RunReport> {
    let run = db.run(run_id).await?.with_context(|| format!("no run {run_id:?} in the results database"))?;
    let deadline = Instant::now() + wait;
    let rows = loop {
        let rows = db.results(run_id).await?;
        let settled = rows.len() >= run.workers && rows.iter().all(|r| r.status == "ok" || r.status == "failed");
        if settled || Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for r in &rows {
        eprintln!(
            "[merge] worker {} on {}: {}{}",
            r.index,
            r.host,
            r.status,
            r.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    let m = merge(&run, &rows)?;
    let sla = runner::load_sla_opts(opts)?;
    let started = Utc::now();
    let out = opts.report_dir.join(format!("{}-merge-{run_id}", started.format("%Y%m%dT%H%M%SZ")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = RunReport {
        run_id: run_id.to_string(),
        started_at: started.to_rfc3339(),
        command: std::env::args().collect(),
        sla_profile: sla.profile.to_string(),
        workload: format!("distributed {} workers", run.workers),
        machine_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..RunReport::default()
    };
    apply_rest_gates(&m, &sla, &mut report)?;
    m.add_to(&mut report, "rest (merged)");
    std::fs::write(out.join("merged-raw.hdr"), encode(&m.raw)?)?;
    std::fs::write(out.join("merged-corrected.hdr"), encode(&m.corrected)?)?;
    finish_report(&out, &mut report)?;
    Ok(report)
}

/// The `sla.toml` REST gates on a (merged) measurement.
pub fn apply_rest_gates(m: &RestMeasurement, sla: &Sla, report: &mut RunReport) -> anyhow::Result<()> {
    report.gates.push(m.p99_gate("rest_p99_merged", sla.get("rest_p99")?, false));
    let g = m.error_gate("rest_error_rate", sla.get("rest_error_rate")?);
    report.error_budget_used_pct = g.budget_used_pct;
    report.gates.push(g);
    report.gates.push(m.rate_limited_gate("rest_rate_limited", sla.get("rest_rate_limited")?));
    if m.target_per_sec > 0 {
        report.gates.push(m.achieved_gate("rest_rate_achieved", sla.get("rest_rate_achieved")?));
    }
    Ok(())
}

/// Recounts, compares with the previous run, writes the reports and prints the verdict.
pub fn finish_report(out: &Path, report: &mut RunReport) -> anyhow::Result<()> {
    report.finished_at = Utc::now().to_rfc3339();
    report.recount();
    if let Some(parent) = out.parent()
        && let Some((path, prev)) = crate::trend::previous_summary(parent, out, &report.workload, &report.sla_profile)
    {
        report.trend = crate::trend::deltas(&prev.gates, &report.gates);
        report.trend_warning = crate::trend::shape_warning(&prev.command, &report.command);
        report.previous_run = Some(format!("{} ({})", path.display(), prev.started_at));
    }
    let files = report::write_all(out, report)?;
    println!("\n{}", report::console_table(report));
    if !report.workers.is_empty() {
        println!("{}", report::workers_table(&report.workers));
    }
    for f in files {
        println!("load: wrote {}", f.display());
    }
    println!("load: {} gates passed, {} failed, {} skipped", report.passed, report.failed, report.skipped);
    if report.failed > 0 {
        println!("load: SLA BREACHED: {}", report.failed_gates().join(", "));
    }
    Ok(())
}

/// A run of K local worker processes against one API, results in a database of its own.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// The `load` binary the workers run.
    pub exe: PathBuf,
    /// PostgreSQL admin URL; the run's results database is created on it and dropped after.
    pub admin_db_url: String,
    /// The API.
    pub api_url: String,
    /// Tokens (comma-separated).
    pub tokens: String,
    /// Worker processes.
    pub workers: usize,
    /// Users of the whole run.
    pub users: usize,
    /// Requests/s of the whole run (0 = closed loop).
    pub rate: u64,
    /// Window in seconds.
    pub window_secs: u64,
    /// The REST mix.
    pub mix: Mix,
    /// Sensors required (`sensor-1 … N`).
    pub sensors: Option<usize>,
    /// Where worker logs, goose reports and sample files go.
    pub dir: PathBuf,
    /// Ask every worker for its raw samples.
    pub keep_samples: bool,
    /// Extra arguments per worker index (e.g. a wrong `--api-url` to make one fail).
    pub extra_args: BTreeMap<usize, Vec<String>>,
}

/// What a local run produced.
#[derive(Debug)]
pub struct LocalOutcome {
    /// The run id.
    pub run_id: String,
    /// The merge, or its error (a failed worker is named there).
    pub merged: anyhow::Result<RestMeasurement>,
    /// Each worker's raw samples, by index (when asked for and written).
    pub samples: BTreeMap<usize, Vec<u64>>,
    /// Each worker's exit code.
    pub exit_codes: BTreeMap<usize, Option<i32>>,
}

/// Starts K `load worker` processes (same window, coordinated start), waits for them, merges
/// their results and drops the results database.
pub async fn run_local(run: &LocalRun) -> anyhow::Result<LocalOutcome> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let db_name = format!("apq_load_res_{run_id}");
    let url = crate::results_db::create_database(&run.admin_db_url, &db_name).await?;
    let outcome = run_local_in(run, &run_id, &url).await;
    if let Err(e) = crate::results_db::drop_database(&run.admin_db_url, &db_name).await {
        eprintln!("load: warning: could not drop results database {db_name}: {e:#}");
    }
    outcome
}

async fn run_local_in(run: &LocalRun, run_id: &str, url: &str) -> anyhow::Result<LocalOutcome> {
    std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
    let mut children = Vec::new();
    for i in 0..run.workers {
        let log = std::fs::File::create(run.dir.join(format!("worker-{i}.log")))?;
        let mut cmd = tokio::process::Command::new(&run.exe);
        cmd.arg("--token")
            .arg(&run.tokens)
            .arg("--report-dir")
            .arg(&run.dir)
            .args(["worker", "--run", run_id, "--index", &i.to_string(), "--workers", &run.workers.to_string()])
            .args(["--total-users", &run.users.to_string()])
            .args(["--total-rate", &run.rate.to_string(), "--window", &format!("{}s", run.window_secs)])
            .args(["--mix", if run.mix == Mix::Latest { "latest" } else { "mixed" }])
            .args(["--results-url", url, "--start-lead", "2", "--barrier-timeout", "60"]);
        if let Some(n) = run.sensors {
            cmd.args(["--read-sensors", &n.to_string()]);
        }
        if run.keep_samples {
            cmd.arg("--dump-samples").arg(run.dir.join(format!("samples-{i}.txt")));
        }
        let extra = run.extra_args.get(&i).cloned().unwrap_or_default();
        if !extra.iter().any(|a| a == "--api-url") {
            cmd.args(["--api-url", &run.api_url]);
        }
        cmd.args(extra);
        cmd.env_remove("JOB_COMPLETION_INDEX")
            .env_remove("LOAD_RUN_ID")
            .env("LOAD_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        children.push((i, cmd.spawn().with_context(|| format!("starting worker {i} ({})", run.exe.display()))?));
    }
    let limit = Duration::from_secs(run.window_secs + 150);
    let mut exit_codes = BTreeMap::new();
    for (i, mut child) in children {
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => s?.code(),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        };
        exit_codes.insert(i, status);
    }
    let db = ResultsDb::open(url, false).await?;
    let spec = db.run(run_id).await?.context("no worker recorded the run")?;
    let merged = merge(&spec, &db.results(run_id).await?);
    let mut samples = BTreeMap::new();
    if run.keep_samples {
        for i in 0..run.workers {
            if let Ok(text) = std::fs::read_to_string(run.dir.join(format!("samples-{i}.txt"))) {
                samples.insert(i, text.lines().filter_map(|l| l.trim().parse().ok()).collect());
            }
        }
    }
    Ok(LocalOutcome { run_id: run_id.to_string(), merged, samples, exit_codes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(20, 500, 3)]
    #[case(7, 7, 7)]
    #[case(50, 1001, 4)]
    #[case(4, 0, 1)]
    fn shares_add_up_exactly(#[case] users: usize, #[case] rate: u64, #[case] workers: usize) {
        let shares: Vec<Share> = (0..workers).map(|i| share(users, rate, None, i, workers).unwrap()).collect();
        assert_eq!(shares.iter().map(|s| s.users).sum::<usize>(), users);
        assert_eq!(shares.iter().map(|s| s.rate).sum::<u64>(), rate);
        let inc: f64 = shares.iter().map(|s| s.increase_rate).sum();
        assert!((inc - users as f64).abs() < 1e-9, "{inc}");
        // floor/ceil: no two shares differ by more than one.
        let (lo, hi) = (shares.iter().map(|s| s.users).min().unwrap(), shares.iter().map(|s| s.users).max().unwrap());
        assert!(hi - lo <= 1);
        // Offsets continue the token rotation where the previous worker stopped.
        for w in shares.windows(2) {
            assert_eq!(w[1].user_offset, w[0].user_offset + w[0].users);
        }
    }

    #[rstest]
    #[case(3, 0, 4)]
    #[case(8, 3, 4)]
    fn impossible_shares_are_refused(#[case] users: usize, #[case] rate: u64, #[case] workers: usize) {
        assert!(share(users, rate, None, 0, workers).is_err());
        assert!(share(8, 0, None, 4, 4).is_err(), "index out of range");
    }

    fn row(index: usize, status: &str, values: &[u64], rate: u64) -> WorkerRow {
        let mut h = histogram();
        for v in values {
            h.saturating_record(*v);
        }
        WorkerRow {
            index,
            status: status.into(),
            error: (status == "failed").then(|| "the API refused the token (401)".to_string()),
            host: format!("pod-{index}"),
            users: 2,
            rate,
            measured: Measured {
                secs: 1.0,
                ok: values.len() as u64,
                raw_hdr: encode(&h).unwrap(),
                corrected_hdr: encode(&h).unwrap(),
                ..Measured::default()
            },
        }
    }

    fn spec(workers: usize) -> RunSpec {
        RunSpec {
            run_id: "r".into(),
            workers,
            total_users: 2 * workers,
            total_rate: 10 * workers as u64,
            window_secs: 1,
            mix: "latest".into(),
        }
    }

    #[test]
    fn merged_histogram_equals_one_fed_every_sample() {
        let samples: Vec<Vec<u64>> = vec![
            (1..=1000).map(|i| i * 7).collect(),
            (1..=500).map(|i| 50_000 + i * 13).collect(),
            vec![1, 2, 3, 3_600_000_000],
        ];
        let rows: Vec<WorkerRow> = samples.iter().enumerate().map(|(i, s)| row(i, "ok", s, 10)).collect();
        let m = merge(&spec(3), &rows).unwrap();
        let mut one = histogram();
        for v in samples.iter().flatten() {
            one.saturating_record(*v);
        }
        assert!(m.raw == one, "merged histogram differs from the one fed every sample");
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(m.raw.value_at_quantile(q), one.value_at_quantile(q), "quantile {q}");
        }
        assert_eq!((m.raw.len(), m.ok), (1504, 1504));
        // Round trip through the V2 format is lossless.
        assert!(decode(&encode(&m.raw).unwrap()).unwrap() == one);
    }

    #[rstest]
    #[case(vec![("ok", 0), ("failed", 1)], "worker 1 (pod-1) failed: the API refused the token")]
    #[case(vec![("ok", 0)], "worker 1 never registered")]
    #[case(vec![("ok", 0), ("ready", 1)], "worker 1 (pod-1) never stored results")]
    fn a_missing_or_failed_worker_fails_the_merge_by_name(#[case] rows: Vec<(&str, usize)>, #[case] msg: &str) {
        let rows: Vec<WorkerRow> = rows.iter().map(|(s, i)| row(*i, s, &[1000], 10)).collect();
        let err = merge(&spec(2), &rows).unwrap_err();
        assert!(format!("{err:#}").contains(msg), "{err:#}");
    }
}
