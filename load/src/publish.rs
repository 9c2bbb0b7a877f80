//! Goose users that publish audio chunks through lapin with publisher confirms (one
//! `harness::amqp::Publisher`, so one channel, per user), as fast as confirms allow or paced to a
//! target rate. Each publish is a goose custom request (`AMQP publish audio_chunk`), and every
//! confirmed chunk is kept with its intended, actual and confirm times for the observer.

use crate::attack;
use crate::stats::Latency;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use contract::topology::Names;
use contract::{AudioChunk, Encoding};
use goose::prelude::*;
use harness::amqp::Publisher;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Sample rate of generated chunks.
const SAMPLE_RATE: u32 = 16_000;
/// Chunk length: 100 ms, like the reference sensor.
const CHUNK_MS: u32 = 100;
/// Name of the custom request in goose's metrics.
pub const REQUEST_NAME: &str = "publish audio_chunk";

/// One confirmed chunk.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The chunk's message id (its lineage key).
    pub id: Uuid,
    /// When the schedule wanted it sent (equal to `sent` when unpaced).
    pub intended: Instant,
    /// When publishing started.
    pub sent: Instant,
    /// When the broker confirmed it.
    pub confirmed: Instant,
}

/// What a publishing run should do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Short label used in sensor ids and report names (`burst`, `paced`, …).
    pub label: String,
    /// Sensor-id prefix; user *u* publishes as `<prefix>.u<u>`.
    pub sensor_prefix: String,
    /// Chunks to publish in total.
    pub total: u64,
    /// Goose users (channels).
    pub users: usize,
    /// Target chunks/s over all users; `None` = as fast as confirms allow.
    pub rate: Option<f64>,
}

/// State shared by the publishing users.
struct Shared {
    /// The plan.
    plan: Plan,
    /// The run's broker connection (each user opens its own channel on it).
    conn: Arc<lapin::Connection>,
    /// Where the pipeline's queues are.
    names: Names,
    /// Chunks not yet claimed by a user.
    remaining: AtomicU64,
    /// Schedule origin (first publish of any user).
    t0: OnceLock<Instant>,
    /// Wall-clock origin of `captured_at`.
    wall0: DateTime<Utc>,
    /// One chunk's samples, reused (the message ids differ; the DSP work is the same).
    samples: Vec<f32>,
    /// Confirmed chunks.
    sent: Mutex<Vec<Sent>>,
    /// Publish → confirm latency.
    confirm: Mutex<Latency>,
    /// Failed publishes.
    failures: AtomicU64,
}

/// What a publishing run did.
#[derive(Debug)]
pub struct Outcome {
    /// Confirmed chunks in confirm order.
    pub sent: Vec<Sent>,
    /// Publish → confirm latency.
    pub confirm: Latency,
    /// Publishes that failed (not confirmed).
    pub failures: u64,
    /// First publish to last confirm, seconds.
    pub secs: f64,
}

impl Outcome {
    /// Achieved publish rate.
    pub fn rate(&self) -> f64 {
        self.sent.len() as f64 / self.secs.max(1e-9)
    }
}

/// Publishes `plan.total` chunks with goose users; `report` (without extension) names the goose
/// HTML/JSON reports to write, if any.
pub async fn run(
    conn: Arc<lapin::Connection>,
    names: Names,
    plan: Plan,
    report: Option<&Path>,
) -> anyhow::Result<Outcome> {
    let users = plan.users.max(1);
    let per_user_interval = plan.rate.map(|r| Duration::from_secs_f64(users as f64 / r.max(1e-6)));
    let shared = Arc::new(Shared {
        remaining: AtomicU64::new(plan.total),
        conn,
        names,
        t0: OnceLock::new(),
        wall0: DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap_or_else(Utc::now),
        samples: harness::signal::Signal::Sine { frequency_hz: 440.0, amplitude: 0.5 }.render(
            SAMPLE_RATE,
            1,
            0,
            (SAMPLE_RATE * CHUNK_MS / 1000) as usize,
        ),
        sent: Mutex::new(Vec::with_capacity(plan.total as usize)),
        confirm: Mutex::new(Latency::with_interval(per_user_interval.unwrap_or(Duration::ZERO))),
        failures: AtomicU64::new(0),
        plan: plan.clone(),
    });
    let on_start = {
        let shared = shared.clone();
        let f: TransactionFunction = Arc::new(move |user| {
            let shared = shared.clone();
            Box::pin(async move {
                let p = Publisher::new(&shared.conn, shared.names.clone(), harness::amqp::Topology::Owned)
                    .await
                    .map_err(|e| Box::new(TransactionError::Custom(format!("opening a publisher: {e:#}"))))?;
                user.set_session_data(p);
                Ok(())
            })
        });
        Transaction::new(f).set_name("open channel").set_on_start()
    };
    let publish = {
        let shared = shared.clone();
        let f: TransactionFunction = Arc::new(move |user| {
            let shared = shared.clone();
            Box::pin(async move { publish_one(user, &shared).await })
        });
        Transaction::new(f).set_name(REQUEST_NAME)
    };
    let iterations = plan.total.div_ceil(users as u64).max(1);
    let mut args: Vec<String> = [
        "--host",
        // Goose needs a host even for custom requests; nothing is sent to it.
        "http://127.0.0.1",
        "--users",
        &users.to_string(),
        "--increase-rate",
        "1000",
        "--iterations",
        &iterations.to_string(),
        "--quiet",
        "--no-print-metrics",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(base) = report {
        for ext in ["html", "json"] {
            args.push("--report-file".into());
            args.push(base.with_extension(ext).display().to_string());
        }
    }
    let config = attack::config_from(&args)?;
    let scenario = Scenario::new(&format!("AmqpPublishers {}", plan.label))
        .register_transaction(on_start)
        .register_transaction(publish);
    attack::run(config, vec![scenario]).await?;
    let mut sent = std::mem::take(&mut *shared.sent.lock().unwrap_or_else(PoisonError::into_inner));
    sent.sort_by_key(|s| s.confirmed);
    let secs = match (sent.iter().map(|s| s.sent).min(), sent.last()) {
        (Some(first), Some(last)) => last.confirmed.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let confirm = shared.confirm.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Outcome { sent, confirm, failures: shared.failures.load(Ordering::Relaxed), secs })
}

/// One iteration: claim a chunk, wait for its slot (paced), publish with confirm, record.
async fn publish_one(user: &mut GooseUser, shared: &Shared) -> TransactionResult {
    // Claim before publishing so the total is exact across users.
    let claimed = shared.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1));
    if claimed.is_err() {
        return Ok(());
    }
    let Some(publisher) = user.get_session_data::<Publisher>().cloned() else {
        return Err(Box::new(TransactionError::Custom("no publisher for this user".into())));
    };
    let users = shared.plan.users.max(1) as u64;
    let u = user.weighted_users_index as u64 % users;
    let k = user.get_iterations() as u64;
    let t0 = *shared.t0.get_or_init(Instant::now);
    let intended = match shared.plan.rate {
        Some(rate) => {
            // User u sends its k-th chunk at slot k·users + u of the global schedule.
            let due = t0 + Duration::from_secs_f64((k * users + u) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            due
        }
        None => Instant::now(),
    };
    let sensor = format!("{}.u{u}", shared.plan.sensor_prefix);
    let captured_at = shared.wall0 + ChronoDuration::milliseconds((k * CHUNK_MS as u64) as i64);
    let chunk = AudioChunk::from_samples(&sensor, k, captured_at, SAMPLE_RATE, 1, Encoding::PcmF32le, &shared.samples);
    let sent = Instant::now();
    let result = publisher.chunk(&chunk).await;
    let confirmed = Instant::now();
    let took = confirmed - sent;
    match &result {
        Ok(()) => {
            shared.confirm.lock().unwrap_or_else(PoisonError::into_inner).record_at(took, confirmed);
            shared.sent.lock().unwrap_or_else(PoisonError::into_inner).push(Sent {
                id: chunk.message_id,
                intended,
                sent,
                confirmed,
            });
        }
        Err(_) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    let err = result.as_ref().err().map(|e| format!("{e:#}"));
    user.record_custom_request_duration("AMQP", REQUEST_NAME, took, result.is_ok(), None, err.as_deref()).await
}
