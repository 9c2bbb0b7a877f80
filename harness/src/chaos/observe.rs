//! Gathering what a chaos pipeline did, for the [`super::checker`]: waits (to a deadline) for the
//! pipeline to settle every confirmed chunk and drain its queues, then reads rows, taps, queue
//! depths, the API's latest and the processes' fate. Waiting and judging stay apart: this module
//! never decides whether the invariant holds.

use super::checker::Observed;
use super::workload::{Confirmed, Plan, Workload};
use super::{ChaosPipeline, Rig};
use crate::amqp::Source;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often the drain polls the database and the broker.
const POLL: Duration = Duration::from_millis(250);

/// Waits until every confirmed chunk has both rows or a dead letter and the work queues are empty
/// (or `deadline` passes: the checker then reports what is missing), then observes.
pub async fn drain_and_observe(
    p: &ChaosPipeline,
    rig: &Rig,
    sensor_id: &str,
    confirmed: &[Confirmed],
    deadline: Duration,
) -> anyhow::Result<Observed> {
    let started = Instant::now();
    let ids: BTreeSet<Uuid> = confirmed.iter().map(|c| c.id).collect();
    let mut db = p.db().await?;
    loop {
        let rows = match db.rows_for_sensor(sensor_id).await {
            Ok(rows) => rows,
            // The session died with a database restart: a new one, and look again.
            Err(_) => {
                db = p.db().await?;
                continue;
            }
        };
        let letters = dead_letters(p, sensor_id);
        let settled = ids
            .iter()
            .filter(|id| {
                let has = |t: &str| rows.iter().any(|r| r.source_message_id == **id && r.feature_type == t);
                (has("A") && has("B")) || letters.iter().any(|(l, _, _)| l.as_ref() == Some(*id))
            })
            .count();
        // A broker that cannot be asked is not an empty one: keep draining until the deadline.
        let leftovers =
            leftovers(p, rig).await.unwrap_or_else(|e| vec![(format!("(cannot list queues: {e:#})"), 0, 0)]);
        if (settled == ids.len() && leftovers.is_empty()) || started.elapsed() >= deadline {
            break;
        }
        // Polling a database and a broker that push nothing to us: the interval bounds the cost.
        tokio::time::sleep(POLL).await;
    }
    // Rows that a duplicate would add land right after the originals: one more look later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = db.rows_for_sensor(sensor_id).await?;
    let mut observed = Observed { rows, dead_letters: dead_letters(p, sensor_id), ..Observed::default() };
    for m in p.tap.matching(|m| m.sensor_id() == Some(sensor_id)) {
        let (Some(src), Some(id)) = (m.str_field("/source_message_id"), m.str_field("/message_id")) else { continue };
        let Ok(src) = src.parse::<Uuid>() else { continue };
        let (ids, seen) = match m.source {
            Source::FeatureA => (&mut observed.feature_a_ids, &mut observed.feature_a_seen),
            Source::FeatureB => (&mut observed.feature_b_ids, &mut observed.feature_b_seen),
            Source::Dlq(_) => continue,
        };
        ids.entry(src).or_default().insert(id.to_string());
        seen.entry(src).or_default().push(m.arrived_at);
    }
    observed.leftovers = leftovers(p, rig).await?;
    observed.latest = latest(p, &db, sensor_id).await?;
    observed.exited = p.procs.exited();
    Ok(observed)
}

/// Dead letters of the sensor: (chunk id, reason, DLQ).
fn dead_letters(p: &ChaosPipeline, sensor_id: &str) -> Vec<(Option<Uuid>, Option<String>, String)> {
    p.tap
        .matching(|m| matches!(m.source, Source::Dlq(_)) && m.sensor_id() == Some(sensor_id))
        .into_iter()
        .map(|m| {
            let id = m
                .str_field("/source_message_id")
                .or_else(|| m.str_field("/message_id"))
                .or(m.amqp_message_id.as_deref())
                .and_then(|s| s.parse().ok());
            let queue = match &m.source {
                Source::Dlq(q) => q.clone(),
                _ => String::new(),
            };
            (id, m.headers.get(contract::HEADER_DLQ_REASON).cloned(), queue)
        })
        .collect()
}

/// The pipeline's work queues holding anything: (queue, ready, unacked).
async fn leftovers(p: &ChaosPipeline, rig: &Rig) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let n = &p.names;
    let work = [n.audio_stream(), n.algorithm_b_queue(), n.writer_queue_a(), n.writer_queue_b()];
    let depths = rig.rabbit.lock().await.list_queues().await?;
    Ok(depths
        .into_iter()
        .filter(|d| work.contains(&d.name) && (d.ready > 0 || d.unacked > 0))
        .map(|d| (d.name, d.ready, d.unacked))
        .collect())
}

/// Per type: the API's latest message id against the database's newest row. The API's cache
/// follows the broker, so a disagreement is retried for up to 3 s before it is reported.
async fn latest(
    p: &ChaosPipeline,
    db: &crate::sql::Db,
    sensor_id: &str,
) -> anyhow::Result<Vec<(String, Option<Uuid>, Option<Uuid>)>> {
    let mut out = Vec::new();
    for t in ["A", "B"] {
        let started = Instant::now();
        loop {
            let db = db.newest_row(sensor_id, t).await?.map(|r| r.message_id);
            let res = p.api.latest(sensor_id, t).await?;
            let api = if res.status == 200 {
                res.json()?.get("message_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok())
            } else {
                None
            };
            if api == db || started.elapsed() > Duration::from_secs(3) {
                out.push((t.to_string(), api, db));
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(out)
}

/// Publishes one chunk from `canary_sensor` and waits for both its rows: every stage still takes
/// new traffic. Returns how long it took.
pub async fn canary(p: &ChaosPipeline, canary_sensor: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let plan = Plan { sensor_id: canary_sensor.into(), count: 1, rate_per_sec: 0.0, chunk_ms: 100, publishers: 1 };
    let record = Workload::start(p.amqp_url.clone(), p.names.clone(), plan).finish(limit).await?;
    let id = record.confirmed.first().map(|c| c.id).ok_or_else(|| anyhow::anyhow!("the canary was not confirmed"))?;
    let db = p.db().await?;
    loop {
        let rows = db.rows_for_sensor(canary_sensor).await?;
        let types: BTreeSet<&str> =
            rows.iter().filter(|r| r.source_message_id == id).map(|r| r.feature_type.as_str()).collect();
        if types.len() == 2 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "a canary chunk published after the fault has no {} row after {limit:?}: some stage stopped taking new traffic",
                if types.contains("A") { "Feature B" } else { "Feature A" }
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
