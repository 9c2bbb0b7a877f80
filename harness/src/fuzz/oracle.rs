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

async fn follow_canary(p: &Pipeline, db: &Db, c: &Canary, _prefix: &str, deadline: Instant) -> CanaryAt {
    let id = c.id.to_string();
    let left = || deadline.saturating_duration_since(Instant::now());
    let scope = |_: &Captured| false;
    let a = p
        .tap
        .wait_for("the canary's Feature A", 1, left(), scope, |m| {
            m.source == Source::FeatureA && m.str_field("/source_message_id") == Some(id.as_str())
        })
        .await;
    let Ok(a) = a else { return CanaryAt::Published };
    let a_id = a[0].str_field("/message_id").unwrap_or_default().to_string();
    let b = p
        .tap
        .wait_for("the canary's Feature B", 1, left(), scope, |m| {
            m.source == Source::FeatureB && m.str_field("/feature_a_message_id") == Some(a_id.as_str())
        })
        .await;
    if b.is_err() {
        return CanaryAt::FeatureA;
    }
    let backoff = crate::eventually::Backoff::with_deadline(left());
    let rows = crate::eventually::eventually("the canary's rows", "one A and one B row", &backoff, || async {
        let (a, b) = db.count_by_source(c.id).await?;
        Ok(if a == 1 && b == 1 { Check::Done(()) } else { Check::not_yet(format!("rows (A, B) = ({a}, {b})")) })
    })
    .await;
    if rows.is_err() {
        return CanaryAt::FeatureB;
    }
    let Ok(api) = p.api() else { return CanaryAt::Api };
    let backoff = crate::eventually::Backoff::with_deadline(left());
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

/// The consumers of a channel, each with what marks an input as handled by it.
fn dlqs_of(p: &Pipeline, channel: Channel) -> Vec<(&'static str, String)> {
    let n = &p.names;
    use contract::topology::Names;
    match channel {
        Channel::AudioStream => vec![("Algorithm A", n.audio_stream_dlq())],
        Channel::FeaturesA => vec![
            ("Algorithm B", Names::dlq_of(&n.algorithm_b_queue())),
            ("DataWriter", Names::dlq_of(&n.writer_queue_a())),
            ("REST API", n.rest_api_dlq()),
        ],
        Channel::FeaturesB => vec![("DataWriter", Names::dlq_of(&n.writer_queue_b())), ("REST API", n.rest_api_dlq())],
    }
}

/// (a): waits until every input is handled by every consumer, then checks exactly-once.
async fn account(
    p: &Pipeline,
    db: &Db,
    published: &[Published],
    deadline: Instant,
) -> Result<Vec<(HostileInput, Outcome)>, Failure> {
    let fail =
        |stage: &str, message: String| Failure { stage: stage.into(), message, canary: String::new(), logs: vec![] };
    let tokens: HashMap<&str, &Published> = published.iter().map(|x| (x.token.as_str(), x)).collect();
    loop {
        let dead: Vec<Captured> = p.tap.matching(|m| {
            matches!(m.source, Source::Dlq(_))
                && m.headers.get(TOKEN_HEADER).is_some_and(|t| tokens.contains_key(t.as_str()))
        });
        let ids: Vec<Uuid> = published.iter().map(|x| x.base_id).collect();
        let mut rows = db.rows_by_message_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?;
        rows.extend(db.rows_by_source_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for x in published {
            let dl = |dlq: &str| {
                dead.iter()
                    .filter(|m| m.source == Source::Dlq(dlq.into()) && m.headers.get(TOKEN_HEADER) == Some(&x.token))
                    .collect::<Vec<_>>()
            };
            let id = x.base_id.to_string();
            let mut outcome = Outcome::Processed;
            for (consumer, dlq) in dlqs_of(p, x.input.channel) {
                let letters = dl(&dlq);
                if letters.len() > x.publications {
                    return Err(fail(
                        consumer,
                        format!(
                            "input {:?} #{} ({}) was dead-lettered {} times by {consumer} for {} publication(s): a redelivery loop or a double dead letter",
                            x.input.channel,
                            x.input.index,
                            x.input.describe(),
                            letters.len(),
                            x.publications
                        ),
                    ));
                }
                for m in &letters {
                    let reason = m.headers.get(contract::HEADER_DLQ_REASON).cloned().unwrap_or_default();
                    if !contract::Rejection::CODES.contains(&reason.as_str())
                        || m.headers.get(contract::HEADER_DLQ_DETAIL).is_none_or(|d| d.is_empty())
                    {
                        return Err(fail(
                            consumer,
                            format!(
                                "input {:?} #{} was dead-lettered by {consumer} without a contract reason and detail: reason {reason:?}",
                                x.input.channel, x.input.index
                            ),
                        ));
                    }
                    if outcome == Outcome::Processed && consumer != "REST API" {
                        outcome = Outcome::DeadLettered(reason);
                    }
                }
                let processed = match (x.input.channel, consumer) {
                    (Channel::AudioStream, _) => p.tap.count(|m| {
                        m.source == Source::FeatureA && m.str_field("/source_message_id") == Some(id.as_str())
                    }),
                    (Channel::FeaturesA, "Algorithm B") => p.tap.count(|m| {
                        m.source == Source::FeatureB && m.str_field("/feature_a_message_id") == Some(id.as_str())
                    }),
                    (_, "DataWriter") => {
                        let n = rows.iter().filter(|r| r.message_id == x.base_id).count();
                        if n > 1 {
                            return Err(fail(
                                consumer,
                                format!(
                                    "input {:?} #{} has {n} rows: the DataWriter stored a duplicate",
                                    x.input.channel, x.input.index
                                ),
                            ));
                        }
                        // A duplicate publication of a stored message adds no row.
                        if n == 1 { x.publications - letters.len() } else { 0 }
                    }
                    _ => x.publications - letters.len(), // the API cache: only dead letters are visible
                };
                let handled = processed + letters.len();
                if handled > x.publications {
                    return Err(fail(
                        consumer,
                        format!(
                            "input {:?} #{} ({}) was both processed ({processed}) and dead-lettered ({}) by {consumer} for {} publication(s)",
                            x.input.channel,
                            x.input.index,
                            x.input.describe(),
                            letters.len(),
                            x.publications
                        ),
                    ));
                }
                // A processed chunk is done only once its Feature A and B are both stored.
                if x.input.channel == Channel::AudioStream && processed > 0 {
                    let stored = |t: &str| {
                        rows.iter().filter(|r| r.source_message_id == x.base_id && r.feature_type == t).count()
                    };
                    if stored("A") < processed || stored("B") < processed {
                        pending.push(format!(
                            "DataWriter: input audio_stream #{} ({}): {processed} Feature A out, rows A {} and B {}",
                            x.input.index,
                            x.input.describe(),
                            stored("A"),
                            stored("B")
                        ));
                    }
                }
                if handled < x.publications {
                    pending.push(format!(
                        "{consumer}: input {:?} #{} ({}): processed {processed}, dead-lettered {} of {} publication(s)",
                        x.input.channel,
                        x.input.index,
                        x.input.describe(),
                        letters.len(),
                        x.publications
                    ));
                }
            }
            out.push((x.input.clone(), outcome));
        }
        if pending.is_empty() {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            let stage = pending[0].split(':').next().unwrap_or("").to_string();
            return Err(fail(
                &stage,
                format!(
                    "{} input(s) were neither processed nor dead-lettered in time (lost?):\n    {}",
                    pending.len(),
                    pending.iter().take(10).cloned().collect::<Vec<_>>().join("\n    ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll the tap and table again (bounded by `deadline`)
    }
}

/// (d): rows of the inputs and the canary, and what the API serves for them, keep the contract.
async fn stored_and_served(p: &Pipeline, db: &Db, published: &[Published], canary: &Canary) -> Result<(), Failure> {
    let fail =
        |stage: &str, message: String| Failure { stage: stage.into(), message, canary: String::new(), logs: vec![] };
    // Only this batch's rows (by id): earlier batches and trials share the prefix and the table.
    let mut ids: Vec<Uuid> = published.iter().map(|x| x.base_id).collect();
    let mut rows = db.rows_by_message_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?;
    ids.push(canary.id);
    rows.extend(db.rows_by_source_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?);
    for row in &rows {
        let problems = row_violations(&row.to_json());
        if !problems.is_empty() {
            return Err(fail(
                "DataWriter (stored row)",
                format!("row {} breaks the contract: {}", row.message_id, problems.join("; ")),
            ));
        }
    }
    let Ok(api) = p.api() else { return Ok(()) };
    let sample: Vec<&FeatureRow> = rows.iter().take(5).collect();
    for row in sample {
        let r = api.by_id(&row.message_id.to_string()).await.map_err(|e| fail("REST API", format!("{e:#}")))?;
        if r.status != 200 || r.body.len() > 64 * 1024 {
            return Err(fail(
                "REST API",
                format!("GET feature {} answered {} with {} bytes", row.message_id, r.status, r.body.len()),
            ));
        }
        let v = r.json().map_err(|e| fail("REST API", format!("{e:#}")))?;
        let problems = row_violations(&v);
        if !problems.is_empty() {
            return Err(fail(
                "REST API (served row)",
                format!("feature {} as served breaks the contract: {}", row.message_id, problems.join("; ")),
            ));
        }
    }
    for t in ["A", "B"] {
        let r = api.latest(&canary.sensor, t).await.map_err(|e| fail("REST API", format!("{e:#}")))?;
        let kind = if t == "A" { contract::MessageKind::FeatureA } else { contract::MessageKind::FeatureB };
        if let Err(e) =
            r.json().map_err(|e| vec![format!("{e:#}")]).and_then(|v| crate::json_match::validate_contract(kind, &v))
        {
            return Err(fail(
                "REST API (latest)",
                format!("latest Feature {t} of the canary breaks the contract: {}", e.join("; ")),
            ));
        }
    }
    Ok(())
}

/// Contract violations of one row as stored or served (the OpenAPI `FeatureRow` rules that
/// matter for hostile data: identifier patterns, timestamps, and the `features` object of its
/// type).
pub fn row_violations(row: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    };
    for field in ["sensor_id", "processed_by"] {
        match row[field].as_str() {
            Some(s) if ident(s) => {}
            Some(s) => out.push(format!(
                "{field} {:?}… ({} bytes) is not 1–128 characters of [A-Za-z0-9._:-]",
                s.chars().take(40).collect::<String>(),
                s.len()
            )),
            None => out.push(format!("{field} is missing or not a string: {}", row[field])),
        }
    }
    match row["captured_at"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
        Some(t)
            if t.year() >= 2000
                && t.with_timezone(&chrono::Utc)
                    <= chrono::Utc::now() + chrono::Duration::seconds(contract::FUTURE_SLACK_SECS) => {}
        _ => out.push(format!(
            "captured_at {} is outside [2000-01-01, now + {} s]",
            row["captured_at"],
            contract::FUTURE_SLACK_SECS
        )),
    }
    let schema_text = match row["feature_type"].as_str() {
        Some("A") => contract::FEATURE_A_SCHEMA,
        Some("B") => contract::FEATURE_B_SCHEMA,
        other => {
            out.push(format!("feature_type {other:?}"));
            return out;
        }
    };
    let schema: Value = serde_json::from_str(schema_text).expect("embedded schema");
    if let Ok(v) = jsonschema::validator_for(&schema["properties"]["features"]) {
        out.extend(v.iter_errors(&row["features"]).map(|e| format!("features{}: {e}", e.instance_path())));
    }
    out
}

use chrono::Datelike as _;

/// Peak resident set of a process, from `/proc/<pid>/status`.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Byte length of every SUT log file now, so later checks see only new lines.
fn log_offsets(p: &Pipeline) -> HashMap<std::path::PathBuf, u64> {
    let Ok(procs) = p.procs() else { return HashMap::new() };
    std::fs::read_dir(procs.log_dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect()
}

/// Lines logged since `before` that are problems: panics, errors, and warnings other than the
/// dead-letter path's own (`message dead-lettered`, a refused batch written row by row).
fn new_problems(p: &Pipeline, before: &HashMap<std::path::PathBuf, u64>) -> Vec<String> {
    let Ok(procs) = p.procs() else { return vec![] };
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(procs.log_dir()).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let from = before.get(&path).copied().unwrap_or(0) as usize;
        let text = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for line in text.lines() {
            let problem = line.contains("panicked at")
                || ((line.contains(" WARN ") || line.contains(" ERROR "))
                    && !line.contains("message dead-lettered")
                    && !line.contains("writing its rows one by one")
                    // Slowness is the load gates' business, not a hostile input's.
                    && !line.contains("slow batch commit"));
            if problem {
                out.push(format!("{name}: {}", line.chars().take(400).collect::<String>()));
            }
        }
    }
    out.truncate(40);
    out
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
