//! Data writer: consumes its own durable queues on both feature fanouts, validates every message,
//! and writes them to PostgreSQL in batches (one multi-row INSERT per transaction). Deliveries are
//! acked only after COMMIT, and the INSERT skips known `message_id`s, so a crash or a redelivery
//! never loses or duplicates a row. Bad messages go to the queue's DLQ with a reason.

use crate::amqp::{DeadLetters, dead_letter};
use crate::config::Settings;
use crate::contract::{self, AnyFeature, FeatureA, FeatureB, FeatureType, Rejection};
use crate::runtime::{Health, ServiceError, SessionEnd, announce_ready, supervise};
use crate::topology::{self, Names};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "data-writer";

/// A batch commit slower than this is logged as a warning: rows are late by at least as much.
/// Loaded shared machines see 100 ms now and then; a second means something is wrong.
const SLOW_COMMIT_MS: u64 = 1_000;

/// Valid messages waiting for the next flush, with the deliveries to ack once they are committed.
#[derive(Debug, Default)]
struct Batch {
    /// Decoded messages, in arrival order.
    rows: Vec<AnyFeature>,
    /// The deliveries that carried them (same order), with the queue (feature type) each came from.
    deliveries: Vec<(FeatureType, Delivery)>,
    /// When each delivery arrived (same order): the rows' `received_at`, so the load runner can
    /// tell batch wait from queueing before the writer.
    received: Vec<chrono::DateTime<chrono::Utc>>,
    /// When the first message of this batch arrived; the flush deadline counts from here.
    started: Option<Instant>,
}

impl Batch {
    fn push(&mut self, row: AnyFeature, delivery: Delivery, received: chrono::DateTime<chrono::Utc>) {
        self.started.get_or_insert_with(Instant::now);
        self.received.push(received);
        self.deliveries.push((row.feature_type(), delivery));
        self.rows.push(row);
    }
    /// The last delivery from each queue: acking it with `multiple` settles the whole batch,
    /// because each queue has its own channel and its deliveries arrive in tag order.
    fn last_per_queue(&self) -> impl Iterator<Item = &Delivery> {
        [FeatureType::A, FeatureType::B]
            .into_iter()
            .filter_map(|t| self.deliveries.iter().rev().find(|(ft, _)| *ft == t).map(|(_, d)| d))
    }
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Validates one delivery as the feature type of the queue it came from (every contract check).
pub fn decode(
    feature_type: FeatureType,
    body: &[u8],
    envelope: &contract::Envelope<'_>,
    max_bytes: usize,
    faults: &Faults,
) -> Result<AnyFeature, Rejection> {
    let now = chrono::Utc::now();
    let checked = match feature_type {
        FeatureType::A => contract::decode_delivery::<FeatureA>(body, envelope, max_bytes, now).map(AnyFeature::A),
        FeatureType::B => contract::decode_delivery::<FeatureB>(body, envelope, max_bytes, now).map(AnyFeature::B),
    };
    let feature = match checked {
        Ok(f) => f,
        // The faults: trust the input (typed decode only) instead of the contract's checks.
        Err(Rejection::SchemaViolation { ref path, .. })
            if faults.unbounded_processed_by && path == "/processed_by" =>
        {
            untrusted(feature_type, body)?
        }
        Err(_) if faults.retry_rejected => untrusted(feature_type, body)?,
        Err(rejection) => return Err(rejection),
    };
    // The schema allows any non-negative integer; the column is a BIGINT.
    if let Err(e) = crate::db::sequence_to_db(feature.sequence()) {
        return Err(Rejection::SchemaViolation { path: "/sequence".into(), detail: e.to_string() });
    }
    Ok(feature)
}

/// The writer's fault-injection switches (all off in production).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// `data_writer.fault_retry_rejected`: no contract checks, and a refused batch is requeued forever.
    pub retry_rejected: bool,
    /// `data_writer.fault_unbounded_processed_by`: `processed_by` accepted beyond its bound.
    pub unbounded_processed_by: bool,
}

/// A typed decode without the contract's checks (fault injection only).
fn untrusted(feature_type: FeatureType, body: &[u8]) -> Result<AnyFeature, Rejection> {
    let bad = |e: serde_json::Error| Rejection::InvalidJson(e.to_string());
    Ok(match feature_type {
        FeatureType::A => AnyFeature::A(serde_json::from_slice(body).map_err(bad)?),
        FeatureType::B => AnyFeature::B(serde_json::from_slice(body).map_err(bad)?),
    })
}

/// Runs one data writer until `shutdown`.
pub async fn run(settings: Settings, health: Health, shutdown: CancellationToken) {
    let instance = settings.instance_id(COMPONENT);
    let names = Names::new(&settings.amqp.namespace);
    let announced = AtomicBool::new(false);
    let faults = Faults {
        retry_rejected: settings.data_writer.fault_retry_rejected,
        unbounded_processed_by: settings.data_writer.fault_unbounded_processed_by,
    };
    if faults.retry_rejected || faults.unbounded_processed_by {
        tracing::warn!(?faults, "FAULT INJECTION ACTIVE: the data writer trusts its input; never use in production");
    }
    if settings.data_writer.fault_ignore_unique {
        tracing::warn!(
            "FAULT INJECTION ACTIVE: data_writer.fault_ignore_unique drops UNIQUE(message_id) and inserts \
             without ON CONFLICT; redelivered messages WILL produce duplicate rows. Never use in production."
        );
    }
    if settings.data_writer.fault_ack_before_commit {
        tracing::warn!(
            "FAULT INJECTION ACTIVE: data_writer.fault_ack_before_commit acks each batch before its INSERT \
             commits; a crash in between LOSES the batch. Never use in production."
        );
    }
    if settings.data_writer.fault_no_deadlines {
        tracing::warn!(
            "FAULT INJECTION ACTIVE: data_writer.fault_no_deadlines: no write/connect timeouts, no keepalive, \
             unbounded shutdown; a silent database link hangs the writer. Never use in production."
        );
    }
    supervise(COMPONENT, &settings.amqp, &health, &shutdown, |conn| {
        let (settings, names, instance, faults) = (&settings, &names, &instance, faults);
        let (health, shutdown, announced) = (&health, &shutdown, &announced);
        async move {
            let deadlines = Deadlines::of(&settings.data_writer);
            let backoff = crate::amqp::Backoff::for_settings(&settings.amqp);
            // Several connections, so one batch's INSERT and commit overlap the previous one's
            // (the database flushes concurrent commits together); acks still go out in order.
            let mut writers = Vec::new();
            for i in 0..settings.data_writer.connections.max(1) {
                let Some(mut db) =
                    crate::db::connect(&settings.database.url, deadlines.liveness, backoff.clone(), shutdown).await
                else {
                    return Ok(SessionEnd::Shutdown);
                };
                let insert = deadlines
                    .bound("preparing the database", async {
                        if i == 0 {
                            crate::db::migrate(&mut db).await?;
                            crate::db::set_idempotency(&db, crate::db::Idempotency::from_settings(settings)).await?;
                        }
                        crate::db::prepare_insert(&db, settings.data_writer.fault_ignore_unique).await
                    })
                    .await?;
                writers.push(Writer { db, insert });
            }

            // One channel per queue: deliveries on a channel arrive in tag order, so a batch is
            // settled with one multiple-ack per channel.
            let (ch_a, ch_b) = (crate::amqp::confirm_channel(&conn).await?, crate::amqp::confirm_channel(&conn).await?);
            let (queue_a, queue_b) = (names.writer_queue_a(), names.writer_queue_b());
            topology::bound_queue(&ch_a, names, &names.features_a(), &queue_a).await?;
            topology::bound_queue(&ch_b, names, &names.features_b(), &queue_b).await?;
            let (tag_a, tag_b) = (format!("{instance}.a"), format!("{instance}.b"));
            let sinks = Sinks {
                a: (ch_a.clone(), DeadLetters::new(names, &Names::dlq_of(&queue_a), &queue_a, instance)),
                b: (ch_b.clone(), DeadLetters::new(names, &Names::dlq_of(&queue_b), &queue_b, instance)),
                retry_rejected: faults.retry_rejected,
                ack_before_commit: settings.data_writer.fault_ack_before_commit,
            };
            let mut consumers = Vec::new();
            for (ch, queue, tag) in [(&ch_a, &queue_a, &tag_a), (&ch_b, &queue_b, &tag_b)] {
                ch.basic_qos(settings.data_writer.prefetch, BasicQosOptions::default()).await?;
                consumers.push(
                    ch.basic_consume(queue.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
                        .await?,
                );
            }
            let consumer_b = consumers.pop().expect("two consumers").map(|d| (FeatureType::B, d));
            let consumer_a = consumers.pop().expect("two consumers").map(|d| (FeatureType::A, d));
            let mut deliveries = futures::stream::select(consumer_a, consumer_b);
            health.set_ready(true);
            if !announced.swap(true, Ordering::SeqCst) {
                announce_ready(COMPONENT, instance, None);
            }
            tracing::info!(queue_a, queue_b, instance, "consuming");

            let flush_every = Duration::from_millis(settings.data_writer.flush_interval_ms);
            let mut batch = Batch::default();
            // Acks of committed batches, sent in order by their own task while the next batch
            // is read and written.
            let acks = Acks::start();
            let mut flusher = Flusher::new(writers, &sinks, &deadlines, health, acks);
            loop {
                flusher.acks.check()?;
                let deadline = batch.started.map(|t| t + flush_every);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    done = flusher.inflight.next(), if !flusher.inflight.is_empty() => {
                        flusher.finished(done)?;
                    }
                    _ = sleep_until(deadline), if !batch.is_empty() => {
                        flusher.submit(&mut batch).await?;
                    }
                    next = deliveries.next() => {
                        let mut next = Some(next);
                        // Group commit: take what is already waiting (up to a batch) without
                        // waiting for more, so a quiet pipeline writes at once and a busy one batches.
                        while let Some(item) = next.take() {
                            let (feature_type, delivery) = match item {
                                Some((t, d)) => (t, d?),
                                None => return Err(ServiceError::Other("consumer stream ended".into())),
                            };
                            let received = chrono::Utc::now();
                            let ch = if feature_type == FeatureType::A { &ch_a } else { &ch_b };
                            let props = crate::amqp::DeliveryProps::of(&delivery);
                            let max = settings.amqp.max_message_bytes;
                            match crate::amqp::guarded(|| decode(feature_type, &delivery.data, &props.envelope(), max, &faults)) {
                                Ok(row) => batch.push(row, delivery, received),
                                Err(rejection) => {
                                    dead_letter(ch, &delivery, if feature_type == FeatureType::A { &sinks.a.1 } else { &sinks.b.1 }, &rejection).await?;
                                }
                            }
                            if batch.len() < settings.data_writer.batch_size {
                                next = deliveries.next().now_or_never();
                            }
                        }
                        if batch.len() >= settings.data_writer.batch_size || flush_every.is_zero() {
                            flusher.submit(&mut batch).await?;
                        }
                    }
                }
            }
            // Graceful: stop receiving, commit what we hold; anything prefetched but not yet taken
            // is requeued by the broker when the channel closes.
            for (ch, tag) in [(&ch_a, &tag_a), (&ch_b, &tag_b)] {
                ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await.ok();
            }
            let submitted = flusher.submit(&mut batch).await;
            if let Err(e) = submitted.and(flusher.drain().await) {
                tracing::warn!(error = %e, "final flush failed; the batch was requeued");
            }
            if let Err(e) = flusher.into_acks().finish().await {
                tracing::warn!(error = %e, "acks failed at shutdown; the broker redelivers and the UNIQUE key drops the copies");
            }
            health.set_ready(false);
            for ch in [&ch_a, &ch_b] {
                ch.close(200, "shutdown".into()).await.ok();
            }
            conn.close(200, "shutdown".into()).await.ok();
            Ok(SessionEnd::Shutdown)
        }
    })
    .await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The writer's bounds on database work, so a silent link or a locked table ends the session
/// (requeue, reconnect) instead of hanging it. All `None` under `fault_no_deadlines`.
struct Deadlines {
    /// Connect timeout, keepalive and statement timeout of the connection.
    liveness: crate::db::Liveness,
    /// Client-side bound on one database call (the statement timeout cannot fire when the
    /// server never hears of the statement).
    write: Option<Duration>,
}

impl Deadlines {
    fn of(s: &crate::config::DataWriterSettings) -> Self {
        if s.fault_no_deadlines {
            return Deadlines { liveness: crate::db::Liveness::default(), write: None };
        }
        let ms = Duration::from_millis;
        Deadlines {
            liveness: crate::db::Liveness {
                connect_timeout: Some(ms(s.connect_timeout_ms)),
                keepalive_idle: Some(ms(s.keepalive_idle_ms)),
                statement_timeout: Some(ms(s.write_timeout_ms)),
            },
            // A little above the server's own timeout, so a live server answers first with its
            // reason (57014) and only a silent one hits this.
            write: Some(ms(s.write_timeout_ms) + ms(500)),
        }
    }

    async fn bound<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, crate::db::DbError>>,
    ) -> Result<T, crate::db::DbError> {
        match self.write {
            None => work.await,
            Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                Err(crate::db::DbError::Timeout(format!(
                    "{what} took longer than {} ms; the connection is abandoned",
                    limit.as_millis()
                )))
            }),
        }
    }
}

/// Where a row the database refuses goes: each queue's channel and dead-letter route.
struct Sinks {
    /// Feature A queue's channel and its DLQ.
    a: (lapin::Channel, DeadLetters),
    /// Feature B queue's channel and its DLQ.
    b: (lapin::Channel, DeadLetters),
    /// Fault injection: requeue a refused batch forever instead of isolating the bad rows.
    retry_rejected: bool,
    /// Fault injection: ack the batch before its INSERT commits.
    ack_before_commit: bool,
}

/// Writes the batch with one statement (its own transaction, one round trip), then starts its
/// acks on `acks` (the loop goes on reading meanwhile; an ack lost to a crash only means a
/// redelivery, which the UNIQUE key absorbs). When the database refuses the data, the rows are
/// written one by one and each refused row is dead-lettered (`rejected_by_database`), so one bad
/// row never blocks the others. On any other database error the deliveries are requeued and the
/// error is returned, so the session restarts (and reconnects).
async fn flush(
    writer: &Writer,
    taken: Batch,
    acks: &mut Settles,
    early: &tokio::sync::mpsc::UnboundedSender<Settle>,
    sinks: &Sinks,
    deadlines: &Deadlines,
    health: &Health,
) -> Result<(), ServiceError> {
    if taken.is_empty() {
        return Ok(());
    }
    if sinks.ack_before_commit {
        // The fault: settled before the database has the rows; a crash now loses them.
        for d in taken.last_per_queue() {
            let _ = early.send(Settle::Ack(d.acker.clone()));
        }
    }
    let started = Instant::now();
    health.work_started();
    let written = deadlines
        .bound("writing a batch", crate::db::insert_prepared(&writer.db, &writer.insert, &taken.rows, &taken.received))
        .await;
    health.work_done();
    crate::metrics::flush(taken.len(), started.elapsed(), written.is_ok());
    match written {
        Ok(inserted) => {
            let took_ms = started.elapsed().as_millis() as u64;
            if took_ms >= SLOW_COMMIT_MS {
                tracing::warn!(batch = taken.len(), inserted, took_ms, "slow batch commit");
            } else {
                tracing::debug!(batch = taken.len(), inserted, took_ms, "batch committed");
            }
            if !sinks.ack_before_commit {
                for d in taken.last_per_queue() {
                    acks.send(Settle::Ack(d.acker.clone()));
                }
            }
            Ok(())
        }
        Err(e) if e.is_refusal() && !sinks.retry_rejected => {
            tracing::warn!(error = %e, batch = taken.len(), "the database refused a batch; writing its rows one by one");
            isolate(&writer.db, &writer.insert, taken, acks, sinks, deadlines).await
        }
        Err(e) => {
            // Behind the acks of earlier batches; the session then restarts, and whatever is
            // still unsettled when the channel closes is requeued by the broker anyway.
            for d in taken.last_per_queue().filter(|_| !sinks.ack_before_commit) {
                acks.send(Settle::Requeue(d.acker.clone()));
            }
            Err(e.into())
        }
    }
}

/// Writes a refused batch row by row: a written row is acked, a refused one dead-lettered, and
/// at the first error of another kind everything not yet settled is requeued.
async fn isolate(
    db: &tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    taken: Batch,
    acks: &mut Settles,
    sinks: &Sinks,
    deadlines: &Deadlines,
) -> Result<(), ServiceError> {
    let mut pending = taken.rows.into_iter().zip(taken.deliveries).zip(taken.received);
    while let Some(((row, (feature_type, delivery)), received)) = pending.next() {
        match deadlines
            .bound("writing one row", crate::db::insert_prepared(db, insert, std::slice::from_ref(&row), &[received]))
            .await
        {
            Ok(_) => acks.send(Settle::AckOne(delivery.acker.clone())),
            Err(e) if e.is_refusal() => {
                let (ch, route) = if feature_type == FeatureType::A { &sinks.a } else { &sinks.b };
                crate::amqp::copy_to_dead_letter(ch, &delivery, route, &Rejection::RejectedByDatabase(e.to_string()))
                    .await?;
                acks.send(Settle::AckOne(delivery.acker.clone()));
            }
            Err(e) => {
                acks.send(Settle::RequeueOne(delivery.acker.clone()));
                for ((_, (_, d)), _) in pending {
                    acks.send(Settle::RequeueOne(d.acker.clone()));
                }
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// One database connection of the writer with its prepared INSERT.
struct Writer {
    /// The connection (its driver runs on a task of its own).
    db: tokio_postgres::Client,
    /// The INSERT, prepared on this connection.
    insert: tokio_postgres::Statement,
}

/// What one flush wants settled, in order; applied once every earlier flush's are.
#[derive(Default)]
struct Settles(Vec<Settle>);

impl Settles {
    fn send(&mut self, settle: Settle) {
        self.0.push(settle);
    }
}

/// A flush in flight: gives its connection back with its settlements and outcome.
type InFlight<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Writer, Settles, Result<(), ServiceError>)> + Send + 'a>>;

/// Runs up to one flush per connection at once. Flushes finish in any order but are settled
/// in submission order ([`futures::stream::FuturesOrdered`]): a later batch's multiple-ack never
/// goes out before an earlier batch is committed.
struct Flusher<'a> {
    /// Connections not writing now.
    idle: Vec<Writer>,
    /// Flushes in submission order.
    inflight: futures::stream::FuturesOrdered<InFlight<'a>>,
    /// Where refused rows go.
    sinks: &'a Sinks,
    /// Bounds on each write.
    deadlines: &'a Deadlines,
    /// Stall detection (work started / done).
    health: &'a Health,
    /// The ordered ack sender.
    acks: Acks,
    /// Its queue, for the ack-before-commit fault (settles before the flush has finished).
    early: tokio::sync::mpsc::UnboundedSender<Settle>,
}

impl<'a> Flusher<'a> {
    fn new(writers: Vec<Writer>, sinks: &'a Sinks, deadlines: &'a Deadlines, health: &'a Health, acks: Acks) -> Self {
        let inflight = futures::stream::FuturesOrdered::new();
        let early = acks.queue.clone();
        Flusher { idle: writers, inflight, sinks, deadlines, health, acks, early }
    }

    /// Starts writing `batch` (taken) on an idle connection, first waiting for the oldest
    /// flush when all are busy.
    async fn submit(&mut self, batch: &mut Batch) -> Result<(), ServiceError> {
        if batch.is_empty() {
            return Ok(());
        }
        while self.idle.is_empty() {
            let done = self.inflight.next().await;
            self.finished(done)?;
        }
        let writer = self.idle.pop().expect("an idle connection");
        let taken = std::mem::take(batch);
        let (sinks, deadlines, health, early) = (self.sinks, self.deadlines, self.health, self.early.clone());
        self.inflight.push_back(Box::pin(async move {
            let mut settles = Settles::default();
            let result = flush(&writer, taken, &mut settles, &early, sinks, deadlines, health).await;
            (writer, settles, result)
        }));
        Ok(())
    }

    /// Settles a finished flush (in order) and takes its connection back; its error ends the
    /// session (whatever is still unsettled is requeued when the channels close).
    fn finished(&mut self, done: Option<(Writer, Settles, Result<(), ServiceError>)>) -> Result<(), ServiceError> {
        let Some((writer, settles, result)) = done else { return Ok(()) };
        for s in settles.0 {
            self.acks.send(s);
        }
        result?;
        self.idle.push(writer);
        Ok(())
    }

    /// The ack sender alone (the fault's queue clone dropped, so it can finish).
    fn into_acks(self) -> Acks {
        self.acks
    }

    /// Waits for every flush in flight.
    async fn drain(&mut self) -> Result<(), ServiceError> {
        while !self.inflight.is_empty() {
            let done = self.inflight.next().await;
            self.finished(done)?;
        }
        Ok(())
    }
}

/// How to settle deliveries: a batch with one `multiple` settlement up to the delivery named, or
/// one delivery of a refused batch on its own.
enum Settle {
    /// Committed: remove them from the queue.
    Ack(lapin::Acker),
    /// Not written: give them back to the queue.
    Requeue(lapin::Acker),
    /// One row written (or dead-lettered) on its own, after its batch was refused.
    AckOne(lapin::Acker),
    /// One row of a refused batch not yet written: back to the queue.
    RequeueOne(lapin::Acker),
}

/// Sends multiple-acks (and requeues) in the order they were queued, on a task of their own.
/// Order matters: acking tag 500 and then tag 400 with `multiple` names an unknown tag and closes
/// the channel; a requeue overtaking an earlier batch's ack would redeliver committed rows.
struct Acks {
    /// Settlements of batches, in flush order.
    queue: tokio::sync::mpsc::UnboundedSender<Settle>,
    /// The task draining `queue`; it ends at the first failed ack.
    task: tokio::task::JoinHandle<Result<(), lapin::Error>>,
}

impl Acks {
    fn start() -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<Settle>();
        let task = tokio::spawn(async move {
            while let Some(settle) = rx.recv().await {
                match settle {
                    Settle::Ack(acker) => acker.ack(BasicAckOptions { multiple: true }).await.map(drop)?,
                    Settle::Requeue(acker) => {
                        acker.nack(BasicNackOptions { multiple: true, requeue: true }).await.map(drop)?
                    }
                    Settle::AckOne(acker) => acker.ack(BasicAckOptions { multiple: false }).await.map(drop)?,
                    Settle::RequeueOne(acker) => {
                        acker.nack(BasicNackOptions { multiple: false, requeue: true }).await.map(drop)?
                    }
                }
            }
            Ok(())
        });
        Acks { queue, task }
    }

    fn send(&self, settle: Settle) {
        // Only fails once the task has ended, which `check` reports.
        let _ = self.queue.send(settle);
    }

    /// The failure of an earlier ack, if any: the channel is gone and the session must restart.
    fn check(&mut self) -> Result<(), ServiceError> {
        if !self.task.is_finished() {
            return Ok(());
        }
        // Finished while we still hold the sender: only an error ends it; the session restarts
        // (dropping `self`), so the handle is never polled again.
        match (&mut self.task).now_or_never() {
            None => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Ok(Ok(()))) => Err(ServiceError::Other("ack task ended unexpectedly".into())),
            Some(Err(e)) => Err(ServiceError::Other(format!("ack task failed: {e}"))),
        }
    }

    /// Sends what is queued and waits for it.
    async fn finish(self) -> Result<(), ServiceError> {
        drop(self.queue);
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ServiceError::Other(format!("ack task failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn feature_b_json() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1, "feature_type": "B",
            "message_id": uuid::Uuid::new_v4(), "feature_a_message_id": uuid::Uuid::new_v4(),
            "source_message_id": uuid::Uuid::new_v4(), "sensor_id": "s-1", "sequence": 3,
            "captured_at": "2024-01-01T00:00:00Z", "processed_at": "2024-01-01T00:00:01Z",
            "processed_by": "algorithm-b-1",
            "features": {"event_class": "tone", "confidence": 0.9, "loudness_dbfs": -6.0, "dominant_frequency_hz": 440.0}
        })
    }

    #[test]
    fn a_valid_feature_b_decodes() {
        let body = serde_json::to_vec(&feature_b_json()).unwrap();
        let f = decode(FeatureType::B, &body, &Default::default(), 1 << 20, &Faults::default()).unwrap();
        assert_eq!(f.feature_type(), FeatureType::B);
        assert_eq!(f.sequence(), 3);
    }

    #[rstest]
    #[case::wrong_queue(FeatureType::A, serde_json::Value::Null, "schema_violation")]
    #[case::bigint_overflow(FeatureType::B, serde_json::json!(u64::MAX), "schema_violation")]
    #[case::negative_sequence(FeatureType::B, serde_json::json!(-1), "schema_violation")]
    fn bad_messages_are_rejected_with_a_reason(
        #[case] queue_type: FeatureType,
        #[case] sequence: serde_json::Value,
        #[case] code: &str,
    ) {
        let mut v = feature_b_json();
        if !sequence.is_null() {
            v["sequence"] = sequence;
        }
        let err =
            decode(queue_type, &serde_json::to_vec(&v).unwrap(), &Default::default(), 1 << 20, &Faults::default())
                .unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }

    #[test]
    fn oversized_bodies_are_rejected() {
        let body = serde_json::to_vec(&feature_b_json()).unwrap();
        assert_eq!(
            decode(FeatureType::B, &body, &Default::default(), 10, &Faults::default()).unwrap_err().code(),
            "oversized_payload"
        );
    }
}
