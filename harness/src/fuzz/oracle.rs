//! The oracle of hostile input: publish a batch, then a canary, and check five things.
//! (a) every input is processed into contract-valid output or dead-lettered with a reason,
//!     exactly once per consumer and publication;
//! (b) the canary reaches Feature A, Feature B, both rows and the API: the pipeline flows;
//! (c) no process exited, panicked, or logged a warning or error outside the dead-letter path;
//! (d) nothing stored or served for the inputs and the canary breaks the contract;
//! (e) every process's peak memory (VmHWM) stays under a bound.
//! A failed batch is bisected on fresh pipelines down to one input, whose mutations are then
//! shrunk, and the failure names the seed, the minimal input, the stage and a command that
//! reproduces it.

use super::{Channel, HostileInput, Operators, Rendered};
use crate::amqp::{Captured, Source};
use crate::env::Pipeline;
use crate::eventually::Check;
use crate::sql::{Db, FeatureRow};
use anyhow::Context as _;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use uuid::Uuid;

mod checks;
pub use checks::row_violations;
use checks::{account, log_offsets, new_problems, stored_and_served, vm_hwm_kib};

/// Header carrying the input's token (`<seed>-<channel>-<index>`); consumers keep headers on
/// dead letters, so every dead letter names its input even when its body is garbage.
pub const TOKEN_HEADER: &str = "x-qa-fuzz";

/// How a campaign runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inputs per batch (each followed by a canary).
    pub batch: usize,
    /// How long the canary and the accounting may take per batch.
    pub deadline: Duration,
    /// Peak resident memory allowed per process.
    pub max_vm_hwm_kib: u64,
    /// Whether processes and logs can be inspected (local profile).
    pub local: bool,
}

/// What happened to one input (for the counts per channel and outcome).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Outcome {
    Processed,
    DeadLettered(String),
}

/// Totals of one campaign.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Inputs checked.
    pub inputs: usize,
    /// Batches (and canaries) run.
    pub batches: usize,
    /// Per channel, per outcome (`processed` or `dead-lettered:<reason>`).
    pub outcomes: BTreeMap<String, BTreeMap<String, usize>>,
    /// Peak VmHWM seen per process (KiB).
    pub vm_hwm_kib: BTreeMap<String, u64>,
    /// Wall time of the campaign.
    pub seconds: f64,
}

/// A check that failed, with what is needed to understand and replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which component or step of the pipeline broke.
    pub stage: String,
    /// What was expected and what was seen.
    pub message: String,
    /// How far the canary got.
    pub canary: String,
    /// Log lines of the services that matter.
    pub logs: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage: {}\n  {}\n  canary: {}", self.stage, self.message, self.canary)?;
        if !self.logs.is_empty() {
            write!(f, "\n  service log lines:\n    {}", self.logs.join("\n    "))?;
        }
        Ok(())
    }
}

/// One published input, as the accounting needs it.
struct Published {
    input: HostileInput,
    token: String,
    /// The base message's id: any output of this input carries it.
    base_id: Uuid,
    /// How many times it was published (duplicate operators publish twice).
    publications: usize,
}

/// Runs `inputs` against `pipeline` in batches. On the first failing batch, with `fresh` (the
/// local profile can start pipelines) the batch is bisected and shrunk on fresh pipelines, and
/// the error describes the minimal input; without it, the whole batch is reported. Returns the
/// last fresh pipeline started for bisection, if any (the caller tears it down, and `pipeline`),
/// and the report or the failure.
pub async fn campaign(
    pipeline: &Pipeline,
    fresh: Option<&mut (dyn FnMut() -> BoxedPipeline + Send)>,
    db: &Db,
    inputs: &[HostileInput],
    trial: &Trial<'_>,
    reproduce: &dyn Fn(&[HostileInput]) -> String,
) -> (Option<Pipeline>, anyhow::Result<Report>) {
    let started = Instant::now();
    let mut report = Report::default();
    for (n, batch) in inputs.chunks(trial.settings.batch.max(1)).enumerate() {
        let Err(failure) =
            check_batch(pipeline, db, batch, trial.seed, trial.prefix, n, trial.settings, &mut report).await
        else {
            continue;
        };
        let list = |b: &[HostileInput]| {
            b.iter()
                .map(|i| format!("{} #{}: {}", i.channel.name(), i.index, i.describe()))
                .collect::<Vec<_>>()
                .join("\n    ")
        };
        let Some(fresh) = fresh else {
            let e = anyhow::anyhow!(
                "hostile input broke the pipeline (seed {}; not bisected: the external profile cannot restart it)\n  {failure}\n  batch:\n    {}\n  reproduce: {}",
                trial.seed,
                list(batch),
                reproduce(batch)
            );
            return (None, Err(e));
        };
        pipeline.teardown().await;
        let (p, minimal, failure) = minimise(fresh, db, batch.to_vec(), failure, trial).await;
        let e = anyhow::anyhow!(
            "hostile input broke the pipeline (seed {})\n  {failure}\n  minimal input:\n    {}\n  reproduce: {}",
            trial.seed,
            list(&minimal),
            reproduce(&minimal)
        );
        return (p, Err(e));
    }
    report.seconds = started.elapsed().as_secs_f64();
    (None, Ok(report))
}

/// A fresh pipeline, being started.
pub type BoxedPipeline = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Pipeline>> + Send>>;

/// What every trial of a campaign shares.
pub struct Trial<'a> {
    pub seed: u64,
    /// The scenario's sensor prefix.
    pub prefix: &'a str,
    pub settings: &'a Settings,
}

/// Bisects the failing batch to the smallest failing part (one input where possible), then
/// drops mutations of that input while it still fails. Every trial runs on a fresh pipeline.
async fn minimise(
    fresh: &mut (dyn FnMut() -> BoxedPipeline + Send),
    db: &Db,
    mut culprit: Vec<HostileInput>,
    mut failure: Failure,
    trial: &Trial<'_>,
) -> (Option<Pipeline>, Vec<HostileInput>, Failure) {
    let mut last: Option<Pipeline> = None;
    let mut n = 10_000;
    // A trial "reproduces" only when the same stage fails; a trial that could not run at all
    // (the harness could not start a pipeline) ends minimising with what is known so far.
    let stage = failure.stage.clone();
    let same = |r: &anyhow::Result<Option<Failure>>| matches!(r, Ok(Some(f)) if f.stage == stage);
    'bisect: while culprit.len() > 1 {
        let (left, right) = culprit.split_at(culprit.len() / 2);
        for half in [left.to_vec(), right.to_vec()] {
            n += 1;
            let r = attempt(fresh, db, &half, trial, n, &mut last).await;
            if r.is_err() {
                break 'bisect;
            }
            if same(&r) {
                (culprit, failure) = (half, r.ok().flatten().expect("matched Some"));
                continue 'bisect;
            }
        }
        break; // only the combination fails: report the whole part
    }
    if culprit.len() == 1 {
        let mut input = culprit[0].clone();
        let mut i = 0;
        while input.mutations.len() > 1 && i < input.mutations.len() {
            let mut smaller = input.clone();
            smaller.mutations.remove(i);
            n += 1;
            let r = attempt(fresh, db, std::slice::from_ref(&smaller), trial, n, &mut last).await;
            if r.is_err() {
                break;
            }
            if same(&r) {
                (input, failure) = (smaller, r.ok().flatten().expect("matched Some"));
            } else {
                i += 1;
            }
        }
        culprit = vec![input];
    }
    (last, culprit, failure)
}

/// Runs `inputs` on a fresh pipeline (tearing down the previous one): Ok(Some(failure)) if it
/// fails, Ok(None) if it passes, Err if no pipeline could be started.
async fn attempt(
    fresh: &mut (dyn FnMut() -> BoxedPipeline + Send),
    db: &Db,
    inputs: &[HostileInput],
    trial: &Trial<'_>,
    n: usize,
    last: &mut Option<Pipeline>,
) -> anyhow::Result<Option<Failure>> {
    if let Some(p) = last.take() {
        p.teardown().await;
    }
    let p = fresh().await.context("starting a fresh pipeline for bisection")?;
    let mut scratch = Report::default();
    let r = check_batch(&p, db, inputs, trial.seed, trial.prefix, n, trial.settings, &mut scratch).await.err();
    *last = Some(p);
    Ok(r)
}

/// Publishes one batch and a canary, then applies every check; on the first violation returns
/// the failure. Counts go into `report`.
#[allow(clippy::too_many_arguments)]
async fn check_batch(
    p: &Pipeline,
    db: &Db,
    batch: &[HostileInput],
    seed: u64,
    prefix: &str,
    n: usize,
    settings: &Settings,
    report: &mut Report,
) -> Result<(), Failure> {
    let harness_err = |e: anyhow::Error| Failure {
        stage: "harness".into(),
        message: format!("{e:#}"),
        canary: String::new(),
        logs: vec![],
    };
    let logs_before = log_offsets(p);
    let mut published = Vec::with_capacity(batch.len());
    for input in batch {
        let sensor = format!("{prefix}.f{}", input.index);
        let base = super::base_message(input.channel, &sensor, input.index as u64).map_err(harness_err)?;
        let base_id: Uuid = base["message_id"].as_str().and_then(|s| s.parse().ok()).expect("the base has an id");
        let token = format!("{seed}-{}-{}", input.channel.name(), input.index);
        let renders = super::render(input, &base, prefix).map_err(harness_err)?;
        for r in &renders {
            publish(p, input.channel, r, &token).await.map_err(harness_err)?;
        }
        published.push(Published { input: input.clone(), token, base_id, publications: renders.len() });
    }
    // (b) the canary: a valid chunk after the batch must come out everywhere.
    let canary = canary(p, prefix, n).await.map_err(harness_err)?;
    let deadline = Instant::now() + settings.deadline;
    let position = follow_canary(p, db, &canary, prefix, deadline).await;
    if position != CanaryAt::Api {
        return Err(Failure {
            stage: position.stuck_stage().into(),
            message: format!(
                "the canary chunk published after {} hostile input(s) did not get through within {:.0?}",
                batch.len(),
                settings.deadline
            ),
            canary: position.describe(),
            logs: new_problems(p, &logs_before),
        });
    }
    // (a) accounting, per consumer and publication.
    let accounted = account(p, db, &published, deadline).await.map_err(|mut f| {
        f.canary = position.describe();
        f.logs = new_problems(p, &logs_before);
        f
    })?;
    // (c) processes and logs.
    if settings.local {
        let procs = p.procs().map_err(harness_err)?;
        let exited = procs.exited();
        let problems = new_problems(p, &logs_before);
        if !exited.is_empty() || !problems.is_empty() {
            let stage = exited
                .first()
                .map(|(id, _)| id.clone())
                .or_else(|| problems.first().map(|l| l.split(':').next().unwrap_or("").to_string()))
                .unwrap_or_default();
            return Err(Failure {
                stage: format!("service process {stage}"),
                message: format!(
                    "a process exited ({exited:?}) or logged a problem outside the dead-letter path ({} line(s))",
                    problems.len()
                ),
                canary: position.describe(),
                logs: problems,
            });
        }
        // (e) memory.
        for (id, pid) in procs.pids() {
            if let Some(kib) = vm_hwm_kib(pid) {
                let peak = report.vm_hwm_kib.entry(id.clone()).or_default();
                *peak = (*peak).max(kib);
                if kib > settings.max_vm_hwm_kib {
                    return Err(Failure {
                        stage: format!("service process {id}"),
                        message: format!("peak memory {kib} KiB exceeds the bound of {} KiB", settings.max_vm_hwm_kib),
                        canary: position.describe(),
                        logs: vec![],
                    });
                }
            }
        }
    }
    // (d) what is stored and served.
    stored_and_served(p, db, &published, &canary).await?;
    for (input, outcome) in accounted {
        let key = match outcome {
            Outcome::Processed => "processed".to_string(),
            Outcome::DeadLettered(r) => format!("dead-lettered:{r}"),
        };
        *report.outcomes.entry(input.channel.name().into()).or_default().entry(key).or_default() += 1;
    }
    report.inputs += batch.len();
    report.batches += 1;
    Ok(())
}

async fn publish(p: &Pipeline, channel: Channel, r: &Rendered, token: &str) -> anyhow::Result<()> {
    let mut headers = FieldTable::default();
    headers.insert(TOKEN_HEADER.into(), AMQPValue::LongString(token.into()));
    headers.insert(contract::HEADER_SENSOR_ID.into(), AMQPValue::LongString(r.sensor_id.as_str().into()));
    if let Some(s) = &r.schema_header {
        headers.insert(contract::HEADER_SCHEMA.into(), AMQPValue::LongString(s.as_str().into()));
    }
    let mut props = BasicProperties::default().with_delivery_mode(contract::amqp::PERSISTENT).with_headers(headers);
    if let Some(ct) = &r.content_type {
        props = props.with_content_type(ct.as_str().into());
    }
    if let Some(ce) = &r.content_encoding {
        props = props.with_content_encoding(ce.as_str().into());
    }
    if let Some(id) = &r.message_id {
        props = props.with_message_id(id.as_str().into());
    }
    let names = &p.names;
    let (exchange, key) = match channel {
        Channel::AudioStream => (String::new(), names.audio_stream()),
        Channel::FeaturesA => (names.features_a(), String::new()),
        Channel::FeaturesB => (names.features_b(), String::new()),
    };
    p.publisher.exact(&exchange, &key, &r.body, props).await
}

/// The canary chunk of batch `n`.
struct Canary {
    id: Uuid,
    sensor: String,
}

async fn canary(p: &Pipeline, prefix: &str, n: usize) -> anyhow::Result<Canary> {
    let sensor = format!("{prefix}.canary");
    let samples = super::base_samples();
    let chunk = contract::AudioChunk::from_samples(
        &sensor,
        n as u64,
        chrono::Utc::now(),
        16_000,
        1,
        contract::Encoding::PcmF32le,
        &samples,
    );
    p.publisher.chunk(&chunk).await?;
    Ok(Canary { id: chunk.message_id, sensor })
}

/// How far the canary got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CanaryAt {
    Published,
    FeatureA,
    FeatureB,
    Rows,
    Api,
}

impl CanaryAt {
    fn stuck_stage(self) -> &'static str {
        match self {
            CanaryAt::Published => "Algorithm A (audio_stream → features_a)",
            CanaryAt::FeatureA => "Algorithm B (features_a → features_b)",
            CanaryAt::FeatureB => "DataWriter (features → PostgreSQL)",
            CanaryAt::Rows => "REST API (latest from its cache)",
            CanaryAt::Api => "none",
        }
    }
    fn describe(self) -> String {
        let reached = match self {
            CanaryAt::Published => "published only",
            CanaryAt::FeatureA => "Feature A seen, no Feature B",
            CanaryAt::FeatureB => "Feature A and B seen, rows missing",
            CanaryAt::Rows => "both rows stored, the API does not serve it",
            CanaryAt::Api => "all the way (published → A → B → rows → API)",
        };
        format!("{reached} ({self:?})")
    }
}

async fn follow_canary(p: &Pipeline, db: &Db, c: &Canary, prefix: &str, deadline: Instant) -> CanaryAt {
    let id = c.id.to_string();
    let left = || deadline.saturating_duration_since(Instant::now());
    let scope = |_: &Captured| false;
    // The convergence log attributes these waits to the scenario (its namespace).
    let tap = p.tap.scoped(prefix);
    let a = tap
        .wait_for("the canary's Feature A", 1, left(), scope, |m| {
            m.source == Source::FeatureA && m.str_field("/source_message_id") == Some(id.as_str())
        })
        .await;
    let Ok(a) = a else { return CanaryAt::Published };
    let a_id = a[0].str_field("/message_id").unwrap_or_default().to_string();
    let b = tap
        .wait_for("the canary's Feature B", 1, left(), scope, |m| {
            m.source == Source::FeatureB && m.str_field("/feature_a_message_id") == Some(a_id.as_str())
        })
        .await;
    if b.is_err() {
        return CanaryAt::FeatureA;
    }
    let backoff = crate::eventually::Backoff::with_deadline(left()).scoped(prefix);
    let rows = crate::eventually::eventually("the canary's rows", "one A and one B row", &backoff, || async {
        let (a, b) = db.count_by_source(c.id).await?;
        Ok(if a == 1 && b == 1 { Check::Done(()) } else { Check::not_yet(format!("rows (A, B) = ({a}, {b})")) })
    })
    .await;
    if rows.is_err() {
        return CanaryAt::FeatureB;
    }
    let Ok(api) = p.api() else { return CanaryAt::Api };
    let backoff = crate::eventually::Backoff::with_deadline(left()).scoped(prefix);
    let served =
        crate::eventually::eventually("the canary served by the API", "its latest Feature A", &backoff, || async {
            let r = api.latest(&c.sensor, "A").await?;
            if r.status != 200 {
                return Ok(Check::not_yet(format!("status {}", r.status)));
            }
            let v = r.json()?;
            Ok(if v["source_message_id"] == Value::String(id.clone()) {
                Check::Done(())
            } else {
                Check::not_yet(format!("latest is chunk {}", v["source_message_id"]))
            })
        })
        .await;
    if served.is_err() { CanaryAt::Rows } else { CanaryAt::Api }
}

/// The operators, for a step that loads them once.
pub fn operators(root: &std::path::Path) -> anyhow::Result<Operators> {
    Operators::load(root).context("loading the hostile-input operators")
}

/// Every campaign's report, for the run summary: (scenario, seed, report).
static TOTALS: std::sync::Mutex<Vec<(String, u64, Report)>> = std::sync::Mutex::new(Vec::new());

/// Records a finished campaign for the run summary.
pub fn record(scenario: &str, seed: u64, report: &Report) {
    TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((scenario.to_string(), seed, report.clone()));
}

/// Inputs tried per channel and outcome over the whole run, plus each campaign; None if no
/// campaign ran.
pub fn totals() -> Option<Value> {
    let all = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if all.is_empty() {
        return None;
    }
    let mut per_channel: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (_, _, r) in &all {
        for (channel, outcomes) in &r.outcomes {
            for (k, n) in outcomes {
                *per_channel.entry(channel.clone()).or_default().entry(k.clone()).or_default() += n;
            }
        }
    }
    let inputs: usize = all.iter().map(|(_, _, r)| r.inputs).sum();
    let seconds: f64 = all.iter().map(|(_, _, r)| r.seconds).sum();
    Some(serde_json::json!({
        "inputs": inputs,
        "inputs_per_second": if seconds > 0.0 { inputs as f64 / seconds } else { 0.0 },
        "per_channel": per_channel,
        "campaigns": all.iter().map(|(s, seed, r)| serde_json::json!({"scenario": s, "seed": seed, "report": r})).collect::<Vec<_>>(),
    }))
}
