//! Chaos (`@chaos`, issue #11): a pipeline on the run's private broker and database with every
//! link behind a fault proxy, a workload that records what the broker confirmed, faults applied
//! mid-stream, and the ledger invariant checked at the end. Steps stay thin: the pipeline, the
//! workload, the drain and the checker live in `harness::chaos`.

use crate::params::{ComponentParam, DurationParam};
use crate::world::World;
use anyhow::{Context, bail, ensure};
use cucumber::{Parameter, given, then, when};
use harness::chaos::checker::{self, Expect, Verdict};
use harness::chaos::workload::{Confirmed, Plan, Workload};
use harness::chaos::{ChaosPipeline, Link, Rig, ServerFault, observe};
use harness::faults::LinkFault;
use harness::sut::Component;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A link of the chaos pipeline by name (`algorithm-a-1`, `writer-db`, `publisher`, …).
#[derive(Debug, Clone, Copy, Parameter)]
#[param(name = "link", regex = "algorithm-a-1|algorithm-a-2|algorithm-b|writer-db|api-db|writer|api|publisher")]
pub struct LinkParam(pub Link);

impl FromStr for LinkParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(LinkParam)
    }
}

/// A feature fanout of the chaos pipeline by its base name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "fanout", regex = "features_a|features_b")]
pub struct FanoutParam(pub contract::FeatureType);

impl FromStr for FanoutParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "features_a" => Ok(FanoutParam(contract::FeatureType::A)),
            "features_b" => Ok(FanoutParam(contract::FeatureType::B)),
            other => Err(format!("unknown fanout {other:?}; expected features_a or features_b")),
        }
    }
}

/// This scenario's chaos experiment.
#[derive(Default)]
pub struct ChaosState {
    /// The run's private servers (shared by chaos scenarios; they run one at a time).
    rig: Option<Arc<Rig>>,
    /// The scenario's pipeline on them (its processes die with it).
    pipeline: Option<ChaosPipeline>,
    /// The running workload.
    workload: Option<Workload>,
    /// What the workload had confirmed when it finished (set by the step that waited for it).
    confirmed: Option<Vec<Confirmed>>,
    /// Its sensor id.
    sensor: String,
    /// Poison chunks published into the stream (each must be dead-lettered once).
    poison: Vec<Confirmed>,
    /// Faults still running in the background (a table lock), awaited before the check.
    background: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The check's result, for the steps that follow it.
    verdict: Option<Verdict>,
    /// When the memory alarm was raised and cleared.
    alarm: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
    /// The ledger step's report (faults, verdict, metrics of every process), for the failure bundle.
    report: Option<serde_json::Value>,
}

impl ChaosState {
    /// What a failure bundle shows of the experiment: the faults applied so far and, once the
    /// ledger was checked, its verdict and each process's metrics.
    pub fn bundle_json(&self) -> serde_json::Value {
        let Some(p) = &self.pipeline else { return serde_json::Value::Null };
        serde_json::json!({
            "namespace": p.names.namespace,
            "sensor": self.sensor,
            "faults": *p.faults.lock().expect("faults lock"),
            "ledger": self.report,
        })
    }

    fn pipeline(&self) -> anyhow::Result<&ChaosPipeline> {
        self.pipeline.as_ref().context("no chaos pipeline: start the scenario with `Given a chaos pipeline`")
    }
    fn rig(&self) -> anyhow::Result<&Arc<Rig>> {
        self.rig.as_ref().context("no chaos pipeline: start the scenario with `Given a chaos pipeline`")
    }
}

/// The delay before a fault: lets the stream get going so that the fault lands mid-stream (the
/// point of the experiment), not before the first chunk.
async fn lead_in(d: DurationParam) {
    tokio::time::sleep(d.0).await;
}

#[given("a chaos pipeline")]
async fn chaos_pipeline(w: &mut World) -> anyhow::Result<()> {
    if let Some(why) = harness::chaos::unavailable() {
        bail!("chaos scenarios need a private RabbitMQ node and PostgreSQL cluster, which cannot start here: {why}");
    }
    let slug = format!("{:04x}", rand::random::<u16>());
    let (rig, p) = w.env.chaos_pipeline(&slug).await?;
    w.chaos.rig = Some(rig);
    w.chaos.pipeline = Some(p);
    Ok(())
}

#[when(expr = "{int} chunks stream from sensor {string} at {int} per second")]
async fn stream(w: &mut World, count: u64, sensor: String, rate: u32) -> anyhow::Result<()> {
    start_workload(w, count, sensor, rate as f64, 100)
}

#[when(expr = "{int} chunks of {int} ms stream from sensor {string} as fast as the broker confirms them")]
async fn burst(w: &mut World, count: u64, chunk_ms: u32, sensor: String) -> anyhow::Result<()> {
    start_workload(w, count, sensor, 0.0, chunk_ms)
}

fn start_workload(w: &mut World, count: u64, sensor: String, rate: f64, chunk_ms: u32) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let p = w.chaos.pipeline()?;
    // As fast as possible: eight publishers in parallel, so a backlog can form.
    let publishers = if rate > 0.0 { 1 } else { 8 };
    let plan = Plan { sensor_id: sensor_id.clone(), count, rate_per_sec: rate, chunk_ms, publishers };
    w.chaos.workload = Some(Workload::start(p.publisher_url.clone(), p.names.clone(), plan));
    w.chaos.sensor = sensor_id;
    Ok(())
}

/// After the lead-in, `fault` on the rig's servers for `hold`, recorded on the pipeline.
async fn server_fault(
    w: &World,
    after: DurationParam,
    fault: ServerFault,
    hold: Duration,
) -> anyhow::Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    lead_in(after).await;
    let (p, rig) = (w.chaos.pipeline()?, w.chaos.rig()?);
    p.server_fault(rig, fault, hold).await
}

#[when(expr = "after {duration} the broker refuses every publish to {fanout} for {duration}")]
async fn refuse_publishes(
    w: &mut World,
    after: DurationParam,
    fanout: FanoutParam,
    hold: DurationParam,
) -> anyhow::Result<()> {
    lead_in(after).await;
    let (p, rig) = (w.chaos.pipeline()?, w.chaos.rig()?);
    let exchange = match fanout.0 {
        contract::FeatureType::A => p.names.features_a(),
        contract::FeatureType::B => p.names.features_b(),
    };
    let refusing = p.refuse_publishes(rig, &exchange).await?;
    // The refusal's length is the experiment: outputs published meanwhile are all nacked.
    tokio::time::sleep(hold.0).await;
    p.lift_refusal(rig, refusing).await
}

#[when(
    expr = "after {duration} the writer is killed with SIGKILL while its INSERT waits for a lock on the features table, and replaced"
)]
async fn writer_killed_before_commit(w: &mut World, after: DurationParam) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let i = p.fault_started("data-writer: SIGKILL while its INSERT waits (features table locked against writes)");
    let lock = p.hold_write_lock().await?;
    let held = async {
        // The writer receives a batch, sends its INSERT and waits for the lock: inside the window
        // between receiving and COMMIT, seen from the database itself.
        let started = std::time::Instant::now();
        let waiting = loop {
            let pids = p.writer_inserts_waiting().await?;
            if !pids.is_empty() {
                break pids;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "stage DataWriter: no INSERT of the writer waited on the locked features table within 10 s"
            );
            // Polling pg_stat_activity, which pushes nothing.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ensure!(p.procs.kill(Component::DataWriter, Some(1)).await? == 1, "no running data-writer to kill");
        // The dead process's sessions end with it, as a lost host's would: the server must not
        // finish their INSERT once the lock goes.
        p.terminate_sessions(&waiting).await?;
        println!("      the writer was killed while {} INSERT(s) of it waited for COMMIT", waiting.len());
        anyhow::Ok(())
    }
    .await;
    lock.release().await?;
    held?;
    p.start_instance(Component::DataWriter, Link::WriterBroker).await?;
    p.fault_ended(i);
    Ok(())
}

#[when(expr = "after {duration} the broker application is stopped for {duration}")]
async fn broker_stop_app(w: &mut World, after: DurationParam, hold: DurationParam) -> anyhow::Result<()> {
    server_fault(w, after, ServerFault::BrokerStopApp, hold.0).await.map(drop)
}

#[when(expr = "after {duration} the broker is killed with SIGKILL and restarted")]
async fn broker_kill(w: &mut World, after: DurationParam) -> anyhow::Result<()> {
    server_fault(w, after, ServerFault::BrokerKillRestart, Duration::ZERO).await.map(drop)
}

#[when(expr = "after {duration} the broker closes every client connection")]
async fn broker_close_all(w: &mut World, after: DurationParam) -> anyhow::Result<()> {
    server_fault(w, after, ServerFault::BrokerCloseAll, Duration::ZERO).await.map(drop)
}

#[when(expr = "after {duration} the broker raises a memory alarm for {duration}")]
async fn memory_alarm(w: &mut World, after: DurationParam, hold: DurationParam) -> anyhow::Result<()> {
    w.chaos.alarm = Some(server_fault(w, after, ServerFault::BrokerMemoryAlarm, hold.0).await?);
    Ok(())
}

#[when(expr = "after {duration} one {component} is killed with SIGKILL and replaced")]
async fn kill_component(w: &mut World, after: DurationParam, c: ComponentParam) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let link = match c.0 {
        // `kill` takes the newest instance: Algorithm A's second, on its own link.
        Component::AlgorithmA => Link::AlgorithmA2,
        Component::AlgorithmB => Link::AlgorithmB,
        Component::DataWriter => Link::WriterBroker,
        Component::RestApi => Link::ApiBroker,
    };
    let i = p.fault_started(format!("{}: SIGKILL", c.0.subcommand()));
    ensure!(p.procs.kill(c.0, Some(1)).await? == 1, "no running {} to kill", c.0.subcommand());
    p.start_instance(c.0, link).await?;
    p.fault_ended(i);
    Ok(())
}

/// Waits for the workload (if still running) and returns every chunk it got confirmed.
async fn finish_workload(w: &mut World, limit: Duration) -> anyhow::Result<Vec<Confirmed>> {
    if let Some(workload) = w.chaos.workload.take() {
        let record = workload.finish(limit).await?;
        w.chaos.confirmed = Some(record.confirmed);
    }
    w.chaos.confirmed.clone().context("no workload was started in this scenario")
}

#[when("the REST API is restarted with no new traffic")]
async fn api_restart(w: &mut World) -> anyhow::Result<()> {
    let confirmed = finish_workload(w, Duration::from_secs(120)).await?;
    let sensor = w.chaos.sensor.clone();
    let token = format!("qa-token-{}", w.env.run_id);
    let p = w.chaos.pipeline.as_mut().context("no chaos pipeline")?;
    // Every row is stored before the restart, so "latest" can only come from the database.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let db = p.db().await?;
    while db.rows_for_sensor(&sensor).await?.len() < 2 * confirmed.len() {
        ensure!(std::time::Instant::now() < deadline, "the rows were not all stored within 30 s before the restart");
        // Polling the database, which pushes nothing.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let i = p.fault_started("rest-api: restart");
    p.procs.stop(Component::RestApi, None).await?;
    p.start_instance(Component::RestApi, Link::ApiBroker).await?;
    let port = p.procs.http_port(Component::RestApi).context("the new REST API announced no port")?;
    p.api = harness::api::ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(token))?;
    p.fault_ended(i);
    Ok(())
}

#[when(expr = "after {duration} the {link} link goes silent for {duration}")]
async fn link_silent(w: &mut World, after: DurationParam, link: LinkParam, hold: DurationParam) -> anyhow::Result<()> {
    lead_in(after).await;
    w.chaos.pipeline()?.link_fault(&[link.0], LinkFault::Silent, hold.0).await;
    Ok(())
}

#[when(expr = "after {duration} the {link} link refuses connections for {duration}")]
async fn link_refuses(w: &mut World, after: DurationParam, link: LinkParam, hold: DurationParam) -> anyhow::Result<()> {
    lead_in(after).await;
    w.chaos.pipeline()?.link_fault(&[link.0], LinkFault::Reset, hold.0).await;
    Ok(())
}

#[when(expr = "after {duration} the {link} link has {int} ms of latency for {duration}")]
async fn link_latency(
    w: &mut World,
    after: DurationParam,
    link: LinkParam,
    ms: u64,
    hold: DurationParam,
) -> anyhow::Result<()> {
    lead_in(after).await;
    w.chaos.pipeline()?.link_fault(&[link.0], LinkFault::Latency { ms, jitter_ms: ms / 10 }, hold.0).await;
    Ok(())
}

#[when(
    expr = "after {duration} the {link} link delays its replies by {int} ms for {duration}, then drops its connections"
)]
async fn delayed_then_reset(
    w: &mut World,
    after: DurationParam,
    link: LinkParam,
    ms: u64,
    hold: DurationParam,
) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let links: Vec<Link> = if link.0 == Link::AlgorithmA1 {
        // Both Algorithm A instances: every chunk in flight is caught between its output's
        // publish and the confirm that would let it be acked.
        vec![Link::AlgorithmA1, Link::AlgorithmA2]
    } else {
        vec![link.0]
    };
    let names: Vec<&str> = links.iter().map(|l| l.name()).collect();
    let i = p.fault_started(format!("{}: replies delayed {ms} ms, then connections reset", names.join("+")));
    for l in &links {
        p.proxy(*l).set(LinkFault::DelayServerToClient { ms });
    }
    // Holding the delay fills the window between publish and confirm with work.
    tokio::time::sleep(hold.0).await;
    for l in &links {
        p.proxy(*l).reset_connections();
        p.proxy(*l).clear();
    }
    p.fault_ended(i);
    Ok(())
}

#[when(expr = "after {duration} every component's broker connection is reset every {duration} for {duration}")]
async fn reset_storm(
    w: &mut World,
    after: DurationParam,
    every: DurationParam,
    hold: DurationParam,
) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let i = p.fault_started(format!("every component's broker link: reset every {:?} for {:?}", every.0, hold.0));
    let end = tokio::time::Instant::now() + hold.0;
    while tokio::time::Instant::now() < end {
        for l in Link::broker_links().filter(|l| *l != Link::Publisher) {
            p.proxy(l).reset_connections();
        }
        // The storm's rhythm is the experiment.
        tokio::time::sleep(every.0.min(end.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
    p.fault_ended(i);
    Ok(())
}

#[when(expr = "after {duration} the database is stopped for {duration}")]
async fn db_stopped(w: &mut World, after: DurationParam, hold: DurationParam) -> anyhow::Result<()> {
    server_fault(w, after, ServerFault::DatabaseStop, hold.0).await.map(drop)
}

#[when(expr = "after {duration} the database restarts fast")]
async fn db_restart(w: &mut World, after: DurationParam) -> anyhow::Result<()> {
    server_fault(w, after, ServerFault::DatabaseRestart, Duration::ZERO).await.map(drop)
}

#[when(expr = "after {duration} the features table is locked for {duration}")]
async fn table_locked(w: &mut World, after: DurationParam, hold: DurationParam) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let i = p.fault_started("database: features table locked (ACCESS EXCLUSIVE)");
    let lock = p.hold_table_lock().await?;
    let hold = hold.0;
    let ended = p.fault_end_handle(i);
    w.chaos.background.push(tokio::spawn(async move {
        // Holding the lock is the experiment; steps meanwhile probe the API.
        tokio::time::sleep(hold).await;
        let released = lock.release().await;
        ended.end();
        released
    }));
    Ok(())
}

#[then(expr = "the API answers a history request for sensor {string} with 503 and a problem body within {duration}")]
async fn api_503(w: &mut World, sensor: String, within: DurationParam) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let p = w.chaos.pipeline()?;
    let started = std::time::Instant::now();
    let q = harness::api::HistoryQuery { sensor_id: Some(sensor_id), ..Default::default() };
    let res = tokio::time::timeout(within.0 + Duration::from_secs(5), p.api.history(&q))
        .await
        .with_context(|| format!("the API did not answer at all within {:?} while the table was locked", within.0))??;
    let took = started.elapsed();
    ensure!(
        res.status == 503,
        "stage REST API: expected 503 while the features table is locked, got {} {}",
        res.status,
        res.body
    );
    let body = res.json()?;
    ensure!(
        res.header("content-type").is_some_and(|c| c.starts_with("application/problem+json"))
            && body.get("status").and_then(|s| s.as_u64()) == Some(503),
        "stage REST API: the 503 is not a problem body: {body}"
    );
    ensure!(took <= within.0, "stage REST API: the 503 took {took:?}, more than {:?}", within.0);
    Ok(())
}

#[when(expr = "after {duration} a poison chunk is published into the stream")]
async fn poison(w: &mut World, after: DurationParam) -> anyhow::Result<()> {
    lead_in(after).await;
    let p = w.chaos.pipeline()?;
    let id = uuid::Uuid::new_v4();
    let confirmed = harness::chaos::workload::publish_poison(&p.amqp_url, &p.names, &w.chaos.sensor, id).await?;
    w.chaos.poison.push(confirmed);
    Ok(())
}

#[then(expr = "the ledger invariant holds within {duration}")]
async fn ledger(w: &mut World, within: DurationParam) -> anyhow::Result<()> {
    check_ledger(w, within.0, None).await
}

#[then(expr = "the ledger invariant holds within {duration}, no chunk waiting more than {duration} for its rows")]
async fn ledger_bounded(w: &mut World, within: DurationParam, max_wait: DurationParam) -> anyhow::Result<()> {
    check_ledger(w, within.0, Some(max_wait.0)).await
}

/// Finishes the workload and any background fault, drains, checks, reports (scenario output and
/// `chaos/<scenario>.json`), then proves every stage takes new traffic with a canary.
async fn check_ledger(w: &mut World, within: Duration, max_wait: Option<Duration>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut confirmed = finish_workload(w, within).await?;
    for task in std::mem::take(&mut w.chaos.background) {
        task.await.context("a background fault panicked")??;
    }
    let poison: Vec<uuid::Uuid> = w.chaos.poison.iter().map(|c| c.id).collect();
    confirmed.extend(w.chaos.poison.iter().cloned());
    let (p, rig) = (w.chaos.pipeline()?, w.chaos.rig()?.clone());
    let remaining = within.saturating_sub(started.elapsed()).max(Duration::from_secs(5));
    let observed = observe::drain_and_observe(p, &rig, &w.chaos.sensor, &confirmed, remaining).await?;
    let refusals = p.refusals.lock().expect("refusals lock").clone();
    let expect = Expect { poison, fault_end: p.last_fault_end(), max_wait, refusals };
    let verdict = checker::check(&confirmed, &expect, &observed);
    let canary = observe::canary(p, &w.sensor("canary"), Duration::from_secs(20)).await;
    let metrics = p.metrics_snapshot().await;
    let recovery = match (expect.fault_end, verdict.recovery) {
        (None, _) => "n/a (no fault)".to_string(),
        (Some(_), None) => "n/a (no row written after the fault ended)".to_string(),
        (Some(_), Some(r)) => format!("{:.2} s", r.as_secs_f64()),
    };
    let faults = p.faults.lock().expect("faults lock").clone();
    let summary = format!(
        "chaos: {} confirmed chunks, {} lost, {} duplicated, {} unexpected; recovery {recovery} after {:?}; max wait {:.1} s",
        verdict.checked,
        verdict.lost.len(),
        verdict.duplicated.len(),
        verdict.unexpected.len(),
        faults.iter().map(|f| f.what.as_str()).collect::<Vec<_>>(),
        verdict.max_wait_secs,
    );
    println!("      {summary}");
    let report = serde_json::json!({
        "scenario": w.scenario,
        "holds": verdict.holds() && canary.is_ok(),
        "summary": summary,
        "recovery_secs": verdict.recovery.map(|r| r.as_secs_f64()),
        "faults": faults,
        "link_history": p.link_history().iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "verdict": verdict,
        "canary": canary.as_ref().map(|d| d.as_secs_f64()).map_err(|e| format!("{e:#}")),
        "metrics": metrics,
    });
    let dir = w.env.report_dir().join("chaos");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name: String =
        w.scenario.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let file = dir.join(format!("{}.json", name.trim_matches('-')));
    std::fs::write(&file, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", file.display()))?;
    w.chaos.report = Some(report);
    let holds = verdict.holds();
    let rendered = verdict.render();
    w.chaos.verdict = Some(verdict);
    ensure!(holds, "the ledger invariant does not hold ({summary}):\n{rendered}  report: {}", file.display());
    canary.context("after the fault")?;
    Ok(())
}

#[then(expr = "the pipeline recovered within {duration} of the fault's end")]
async fn recovered_within(w: &mut World, bound: DurationParam) -> anyhow::Result<()> {
    let v = w.chaos.verdict.as_ref().context("check the ledger invariant first")?;
    let r = v.recovery.context("no row was written after the fault ended")?;
    ensure!(
        r <= bound.0,
        "recovery took {:.2} s after the fault ended; expected at most {:?}",
        r.as_secs_f64(),
        bound.0
    );
    Ok(())
}

#[then("no chunk was confirmed while the broker's memory alarm was raised")]
async fn blocked_during_alarm(w: &mut World) -> anyhow::Result<()> {
    let (raised, cleared) = w.chaos.alarm.context("no memory alarm was raised in this scenario")?;
    let confirmed = w.chaos.confirmed.as_deref().context("check the ledger invariant first")?;
    // A confirm already on its way when the alarm was raised may land just after it.
    let grace = chrono::Duration::milliseconds(500);
    let during: Vec<String> = confirmed
        .iter()
        .filter(|c| c.confirmed > raised + grace && c.confirmed < cleared)
        .map(|c| format!("sequence {} at {}", c.sequence, c.confirmed))
        .collect();
    ensure!(
        during.is_empty(),
        "publishers were not blocked by the memory alarm: {} confirmed during it: {:?}",
        during.len(),
        &during[..during.len().min(5)]
    );
    ensure!(confirmed.iter().any(|c| c.confirmed > cleared), "nothing was confirmed after the alarm cleared");
    Ok(())
}

#[then(
    expr = "with its links slowed by {int} ms, Algorithm A holds at most {int} unacknowledged chunks while a backlog waits"
)]
async fn prefetch_in_force(w: &mut World, slow_ms: u64, limit: u64) -> anyhow::Result<()> {
    let (p, rig) = (w.chaos.pipeline()?, w.chaos.rig()?);
    let queue = p.names.audio_stream();
    // Slow consumers let a backlog form; the broker must still hand each no more than its prefetch.
    let i = p.fault_started(format!("algorithm-a-1+algorithm-a-2: latency {slow_ms} ms (backlog)"));
    for l in [Link::AlgorithmA1, Link::AlgorithmA2] {
        p.proxy(l).set(LinkFault::Latency { ms: slow_ms, jitter_ms: 0 });
    }
    let mut samples = Vec::new();
    let mut violation = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while samples.len() < 5 && std::time::Instant::now() < deadline {
        let depths = rig.rabbit.lock().await.list_queues().await?;
        if let Some(d) = depths.iter().find(|d| d.name == queue)
            && d.ready > 0
        {
            samples.push((d.ready, d.unacked));
            if d.unacked > limit && violation.is_none() {
                violation = Some((d.ready, d.unacked));
            }
        }
        // Sampling the broker's counters, which push nothing.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for l in [Link::AlgorithmA1, Link::AlgorithmA2] {
        p.proxy(l).clear();
    }
    p.fault_ended(i);
    if let Some((ready, unacked)) = violation {
        bail!(
            "stage Algorithm A: {unacked} unacknowledged with {ready} waiting after the reconnect; its prefetch ({limit} in all) is no longer in force"
        );
    }
    ensure!(!samples.is_empty(), "no backlog formed on {queue} within 20 s, so the prefetch could not be observed");
    println!("      backlog samples (ready, unacked): {samples:?}");
    Ok(())
}

#[then(expr = "the peak memory of every process stays under {int} MiB")]
async fn peak_rss(w: &mut World, mib: u64) -> anyhow::Result<()> {
    let p = w.chaos.pipeline()?;
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (id, pid) in p.procs.pids() {
        let Some(kib) = harness::sut::peak_rss_kib(pid) else { continue };
        report.push(format!("{id}: {:.1} MiB", kib as f64 / 1024.0));
        if kib > mib * 1024 {
            over.push(format!("{id}: {:.1} MiB", kib as f64 / 1024.0));
        }
    }
    println!("      peak RSS: {}", report.join(", "));
    ensure!(over.is_empty(), "peak memory above {mib} MiB: {over:?}");
    Ok(())
}
