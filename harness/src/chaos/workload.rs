//! The chaos workload: the sensor's part, played by the harness so it can record the truth.
//! Publishes `count` chunks at a pace, each persistent and publisher-confirmed; a publish that
//! fails or whose confirm does not come is republished (same `message_id`, a fresh connection)
//! until it is confirmed. Every confirmed id is recorded with its times: what the checker holds
//! the pipeline to.

use crate::signal::Signal;
use chrono::{DateTime, Utc};
use contract::amqp::{confirm_channel, json_properties, publish_confirmed};
use contract::topology::Names;
use contract::{AudioChunk, Encoding, MessageKind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// How long a publish waits for its confirm before the workload gives up on the connection and
/// republishes (a memory alarm blocks publishers for its whole length: longer than any alarm).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// One chunk the broker confirmed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Confirmed {
    /// The chunk's `message_id` (the pipeline's idempotency key).
    pub id: Uuid,
    /// Its sequence number.
    pub sequence: u64,
    /// When it was first published.
    pub first_sent: DateTime<Utc>,
    /// When the broker confirmed it.
    pub confirmed: DateTime<Utc>,
    /// Publications it took (more than 1: a failed or unconfirmed attempt was repeated).
    pub attempts: u32,
}

/// What the workload recorded; shared with the task while it runs.
#[derive(Debug, Default, serde::Serialize)]
pub struct Record {
    /// Every confirmed chunk, in sequence order.
    pub confirmed: Vec<Confirmed>,
    /// Publications that failed or went unconfirmed, with why.
    pub failures: Vec<String>,
    /// Set when the workload stopped early, and why.
    pub aborted: Option<String>,
}

/// A running workload.
pub struct Workload {
    /// The shared record.
    record: Arc<Mutex<Record>>,
    /// The publishing task.
    task: tokio::task::JoinHandle<()>,
    /// The sensor id it publishes as.
    pub sensor_id: String,
    /// Chunks it will publish.
    pub count: u64,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sensor id of every chunk.
    pub sensor_id: String,
    /// Chunks to publish.
    pub count: u64,
    /// Chunks per second (0 = as fast as confirms come).
    pub rate_per_sec: f64,
    /// Chunk length.
    pub chunk_ms: u32,
    /// Publishers in parallel, each with its own connection, taking every n-th sequence (more
    /// than one only unpaced, to build a backlog; confirms then arrive out of sequence order).
    pub publishers: usize,
}

impl Workload {
    /// Starts publishing `plan` to `names`' work queue through `amqp_url`.
    pub fn start(amqp_url: String, names: Names, plan: Plan) -> Workload {
        let record = Arc::new(Mutex::new(Record::default()));
        let (sensor_id, count) = (plan.sensor_id.clone(), plan.count);
        let task = tokio::spawn(run(amqp_url, names, plan, record.clone()));
        Workload { record, task, sensor_id, count }
    }

    /// Chunks confirmed so far.
    pub fn confirmed(&self) -> Vec<Confirmed> {
        self.record.lock().expect("record lock").confirmed.clone()
    }

    /// Waits until every chunk is confirmed (or `limit` passes) and returns the record.
    pub async fn finish(self, limit: Duration) -> anyhow::Result<Record> {
        let Workload { record, mut task, count, .. } = self;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            let r = record.lock().expect("record lock");
            anyhow::bail!(
                "the workload did not get {count} chunks confirmed within {limit:?}: {} confirmed; last failures: {:?}",
                r.confirmed.len(),
                r.failures.iter().rev().take(3).collect::<Vec<_>>()
            );
        }
        let r = std::mem::take(&mut *record.lock().expect("record lock"));
        if let Some(why) = &r.aborted {
            anyhow::bail!("the workload stopped: {why}");
        }
        Ok(r)
    }
}

async fn run(amqp_url: String, names: Names, plan: Plan, record: Arc<Mutex<Record>>) {
    let t0 = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is representable");
    let n = plan.publishers.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..n {
        let (url, names, plan, record) = (amqp_url.clone(), names.clone(), plan.clone(), record.clone());
        tasks.spawn(publish_every(url, names, plan, record, t0, first as u64, n as u64));
    }
    while tasks.join_next().await.is_some() {}
    record.lock().expect("record lock").confirmed.sort_by_key(|c| c.sequence);
}

/// One publisher: sequences `first`, `first + step`, … of the plan.
async fn publish_every(
    amqp_url: String,
    names: Names,
    plan: Plan,
    record: Arc<Mutex<Record>>,
    t0: DateTime<Utc>,
    first: u64,
    step: u64,
) {
    let started = tokio::time::Instant::now();
    let period = (plan.rate_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate_per_sec));
    let signal = Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 };
    let frames = (16_000 * plan.chunk_ms / 1000) as usize;
    let mut channel: Option<(lapin::Connection, lapin::Channel)> = None;
    for seq in (first..plan.count).step_by(step as usize) {
        if let Some(p) = period {
            tokio::time::sleep_until(started + p * seq as u32).await;
        }
        let samples = signal.render(16_000, 1, seq * frames as u64, frames);
        let captured_at = t0 + chrono::Duration::milliseconds((seq * plan.chunk_ms as u64) as i64);
        let chunk =
            AudioChunk::from_samples(&plan.sensor_id, seq, captured_at, 16_000, 1, Encoding::PcmF32le, &samples);
        let body = match serde_json::to_vec(&chunk) {
            Ok(b) => b,
            Err(e) => {
                record.lock().expect("record lock").aborted = Some(format!("cannot encode chunk {seq}: {e}"));
                return;
            }
        };
        let first_sent = Utc::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let outcome = async {
                if channel.is_none() {
                    // A connect into a silent link would hang: bounded like the confirm.
                    let conn =
                        tokio::time::timeout(CONFIRM_TIMEOUT, crate::amqp::connect(&amqp_url, "qa-chaos-workload"))
                            .await
                            .map_err(|_| anyhow::anyhow!("no connection within {CONFIRM_TIMEOUT:?}"))??;
                    let ch = confirm_channel(&conn).await?;
                    channel = Some((conn, ch));
                }
                let (_, ch) = channel.as_ref().expect("connected above");
                let props = json_properties(
                    &chunk.message_id.to_string(),
                    MessageKind::AudioChunk.schema_header(),
                    &chunk.sensor_id,
                );
                let queue = names.audio_stream();
                let publish = publish_confirmed(ch, "", &queue, &body, props);
                match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
                    Ok(r) => r.map_err(anyhow::Error::from),
                    Err(_) => Err(anyhow::anyhow!("no confirm within {CONFIRM_TIMEOUT:?}")),
                }
            }
            .await;
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    record.lock().expect("record lock").failures.push(format!("chunk {seq} attempt {attempts}: {e:#}"));
                    channel = None;
                    // Not a wait for a condition: a pause between reconnect attempts so a broker
                    // that is down is not hammered.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        record.lock().expect("record lock").confirmed.push(Confirmed {
            id: chunk.message_id,
            sequence: seq,
            first_sent,
            confirmed: Utc::now(),
            attempts,
        });
    }
    if let Some((conn, ch)) = channel {
        ch.close(200, "done".into()).await.ok();
        conn.close(200, "done".into()).await.ok();
    }
}

/// Publishes one broken chunk (not JSON) with `id` as its AMQP `message_id` and the sensor's
/// header into the work queue, confirmed: it must be dead-lettered once while the stream flows.
pub async fn publish_poison(amqp_url: &str, names: &Names, sensor_id: &str, id: Uuid) -> anyhow::Result<Confirmed> {
    let conn = crate::amqp::connect(amqp_url, "qa-chaos-poison").await?;
    let ch = confirm_channel(&conn).await?;
    let props = json_properties(&id.to_string(), MessageKind::AudioChunk.schema_header(), sensor_id);
    let first_sent = Utc::now();
    publish_confirmed(&ch, "", &names.audio_stream(), b"{\"this is\": not a chunk", props).await?;
    let confirmed = Utc::now();
    conn.close(200, "done".into()).await.ok();
    Ok(Confirmed { id, sequence: u64::MAX, first_sent, confirmed, attempts: 1 })
}
