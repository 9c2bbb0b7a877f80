//! The data writer against real PostgreSQL and RabbitMQ: migrations, idempotent batch inserts,
//! JSONB fidelity, keyset pagination, and the consumer end to end (DLQ, duplicates, and recovery
//! after its database connection is killed). Each test uses its own scratch database/namespace.

mod common;

use common::{Scratch, channel, eventually, feature_a, feature_b, publish, t};
use lapin::options::BasicGetOptions;
use services::contract::{AnyFeature, FeatureType};
use services::db::{self, HistoryQuery};
use services::runtime::Health;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn migrated(scratch: &Scratch) -> tokio_postgres::Client {
    let mut c = scratch.client().await;
    db::migrate(&mut c).await.unwrap();
    c
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM features", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let scratch = Scratch::new().await;
    let (mut a, mut b) = (scratch.client().await, scratch.client().await);
    let (ra, rb) = tokio::join!(db::migrate(&mut a), db::migrate(&mut b));
    let mut applied = [ra.unwrap(), rb.unwrap()].concat();
    applied.sort();
    assert_eq!(applied, vec![1, 2, 3], "exactly one of the two applied each version");
    assert!(db::migrate(&mut a).await.unwrap().is_empty());
    let versions: Vec<i32> =
        a.query("SELECT version FROM schema_migrations", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let idx: i64 = a
        .query_one("SELECT count(*) FROM pg_indexes WHERE indexname = 'features_history_idx'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 1);
    drop((a, b));
    scratch.cleanup().await;
}

#[tokio::test]
async fn insert_batch_is_idempotent_and_jsonb_round_trips() {
    let scratch = Scratch::new().await;
    let mut c = migrated(&scratch).await;
    let a = AnyFeature::A(feature_a("s-1", 1, t("2024-01-01T00:00:00.123456789Z")));
    let b = AnyFeature::B(feature_b("s-1", 1, t("2024-01-01T00:00:00Z")));
    // The same message twice in one statement, then again in a later transaction.
    let tx = c.transaction().await.unwrap();
    assert_eq!(db::insert_batch(&tx, &[a.clone(), b.clone(), a.clone()], false).await.unwrap(), 2);
    tx.commit().await.unwrap();
    assert_eq!(db::insert_batch(&c, std::slice::from_ref(&a), false).await.unwrap(), 0);
    assert_eq!(count(&c).await, 2);

    for f in [&a, &b] {
        let row = db::get_by_id(&c, f.message_id()).await.unwrap().unwrap();
        assert_eq!(row.features, f.features_json(), "JSONB changed the features object");
        assert_eq!(serde_json::to_string(&row.features).unwrap(), serde_json::to_string(&f.features_json()).unwrap());
        assert_eq!(row.feature_type, f.feature_type().as_str());
        assert_eq!((row.sensor_id.as_str(), row.sequence), (f.sensor_id(), f.sequence() as i64));
        assert_eq!(row.source_message_id, f.source_message_id());
        assert_eq!(row.processed_by, f.processed_by());
    }
    // TIMESTAMPTZ keeps microseconds; the binary protocol truncates the nanoseconds.
    let row = db::get_by_id(&c, a.message_id()).await.unwrap().unwrap();
    assert_eq!(db::format_micros(&row.captured_at), "2024-01-01T00:00:00.123456Z");
    let latest = db::latest(&c, "s-1", FeatureType::B).await.unwrap().unwrap();
    assert_eq!(latest.message_id, b.message_id());
    assert!(db::get_by_id(&c, Uuid::new_v4()).await.unwrap().is_none());
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn fault_hook_drops_the_constraint_and_restoring_reports_duplicates() {
    let scratch = Scratch::new().await;
    let c = migrated(&scratch).await;
    let a = AnyFeature::A(feature_a("s-1", 1, t("2024-01-01T00:00:00Z")));
    db::set_idempotency(&c, db::Idempotency::NONE).await.unwrap();
    assert_eq!(db::insert_batch(&c, std::slice::from_ref(&a), true).await.unwrap(), 1);
    assert_eq!(db::insert_batch(&c, std::slice::from_ref(&a), true).await.unwrap(), 1);
    assert_eq!(db::count_by_id(&c, a.message_id()).await.unwrap(), 2);
    let err = db::set_idempotency(&c, db::Idempotency::FULL).await.unwrap_err();
    assert!(err.to_string().contains("UNIQUE(message_id)"), "{err}");
    c.execute("DELETE FROM features WHERE id = (SELECT max(id) FROM features)", &[]).await.unwrap();
    db::set_idempotency(&c, db::Idempotency::FULL).await.unwrap();
    assert_eq!(db::insert_batch(&c, std::slice::from_ref(&a), false).await.unwrap(), 0);
    // UNIQUE(message_id) itself is back, not only the (source, type) backstop: the same message id
    // on another chunk is refused too.
    let other_chunk =
        services::contract::FeatureA { message_id: a.message_id(), ..feature_a("s-1", 2, t("2024-01-01T00:00:01Z")) };
    assert_eq!(
        db::insert_batch(&c, &[AnyFeature::A(other_chunk)], false).await.unwrap(),
        0,
        "UNIQUE(message_id) restored"
    );
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn one_row_per_source_chunk_and_type_even_with_a_new_message_id() {
    let scratch = Scratch::new().await;
    let c = migrated(&scratch).await;
    let first = feature_a("s-1", 1, t("2024-01-01T00:00:00Z"));
    // A second attempt at the same chunk by an implementation with random output ids.
    let again = services::contract::FeatureA { message_id: Uuid::new_v4(), ..first.clone() };
    assert_eq!(db::insert_batch(&c, &[AnyFeature::A(first.clone())], false).await.unwrap(), 1);
    assert_eq!(db::insert_batch(&c, &[AnyFeature::A(again.clone())], false).await.unwrap(), 0, "the backstop");
    assert_eq!(count(&c).await, 1);
    // Without the backstop (the random-ids fault) the copy becomes a second row.
    db::set_idempotency(&c, db::Idempotency { message_id: true, source_backstop: false }).await.unwrap();
    assert_eq!(db::insert_batch(&c, &[AnyFeature::A(again)], false).await.unwrap(), 1);
    let err = db::set_idempotency(&c, db::Idempotency::FULL).await.unwrap_err();
    assert!(err.to_string().contains("source_message_id"), "{err}");
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn the_newest_stored_message_per_sensor_and_type_is_served_from_the_database() {
    let scratch = Scratch::new().await;
    let c = migrated(&scratch).await;
    let old = feature_a("s-1", 1, t("2024-01-01T00:00:00Z"));
    let new = feature_a("s-1", 2, t("2024-01-01T00:00:01Z"));
    let other = feature_b("s-2", 7, t("2024-01-01T00:00:00Z"));
    let rows = [AnyFeature::A(new.clone()), AnyFeature::A(old), AnyFeature::B(other.clone())];
    db::insert_batch(&c, &rows, false).await.unwrap();
    let latest = db::latest_message(&c, "s-1", FeatureType::A).await.unwrap().unwrap();
    assert_eq!(latest, serde_json::to_value(&new).unwrap(), "the whole message, as published");
    assert!(db::latest_message(&c, "s-1", FeatureType::B).await.unwrap().is_none());
    let mut all = db::latest_messages(&c).await.unwrap();
    all.sort_by_key(|m| m["sensor_id"].as_str().unwrap().to_string());
    assert_eq!(all, vec![serde_json::to_value(&new).unwrap(), serde_json::to_value(&other).unwrap()]);
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn keyset_pages_have_no_gaps_or_repeats() {
    let scratch = Scratch::new().await;
    let c = migrated(&scratch).await;
    // 250 rows over 50 distinct instants (5 per instant, so message_id breaks the ties), both
    // types, plus another sensor's rows that must never show up.
    let base = t("2024-06-01T00:00:00Z");
    let mut rows = Vec::new();
    for i in 0..250u64 {
        let at = base + chrono::Duration::milliseconds((i / 5) as i64 * 100);
        rows.push(if i % 2 == 0 {
            AnyFeature::A(feature_a("s-p", i, at))
        } else {
            AnyFeature::B(feature_b("s-p", i, at))
        });
    }
    rows.push(AnyFeature::A(feature_a("s-other", 0, base)));
    db::insert_batch(&c, &rows, false).await.unwrap();
    let mut expected: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> =
        rows.iter().filter(|r| r.sensor_id() == "s-p").map(|r| (r.captured_at(), r.message_id())).collect();
    expected.sort();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q = HistoryQuery { sensor_id: "s-p".into(), feature_type: None, from: None, to: None, after, limit: 100 };
        let page = db::history(&c, &q).await.unwrap();
        assert!(page.len() <= 100);
        seen.extend(page.iter().map(|r| (r.captured_at, r.message_id)));
        match page.last() {
            Some(last) if page.len() == 100 => after = Some((last.captured_at, last.message_id)),
            _ => break,
        }
    }
    assert_eq!(seen, expected);
    let only_a = HistoryQuery {
        sensor_id: "s-p".into(),
        feature_type: Some(FeatureType::A),
        from: None,
        to: None,
        after: None,
        limit: 1000,
    };
    let page = db::history(&c, &only_a).await.unwrap();
    assert_eq!(page.len(), 125);
    assert!(page.iter().all(|r| r.feature_type == "A"));
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn from_is_inclusive_and_to_exclusive_in_any_time_zone() {
    let scratch = Scratch::new().await;
    let c = migrated(&scratch).await;
    let times = ["2024-01-01T00:00:00Z", "2024-01-01T00:00:05Z", "2024-01-01T00:00:10Z"];
    let rows: Vec<AnyFeature> =
        times.iter().enumerate().map(|(i, at)| AnyFeature::A(feature_a("tz", i as u64, t(at)))).collect();
    db::insert_batch(&c, &rows, false).await.unwrap();
    // Same instants written with +02:00 and -05:00 offsets.
    let q = HistoryQuery {
        sensor_id: "tz".into(),
        feature_type: Some(FeatureType::A),
        from: Some(t("2024-01-01T02:00:00+02:00")),
        to: Some(t("2023-12-31T19:00:10-05:00")),
        after: None,
        limit: 10,
    };
    let got: Vec<u64> = db::history(&c, &q).await.unwrap().iter().map(|r| r.sequence as u64).collect();
    assert_eq!(got, vec![0, 1]);
    let empty = HistoryQuery { to: q.from, ..q.clone() };
    assert!(db::history(&c, &empty).await.unwrap().is_empty());
    drop(c);
    scratch.cleanup().await;
}

/// Starts a writer and waits until it consumes.
async fn start_writer(
    settings: services::config::Settings,
) -> (tokio::task::JoinHandle<()>, CancellationToken, Health) {
    let (health, stop) = (Health::default(), CancellationToken::new());
    let task = tokio::spawn(services::data_writer::run(settings, health.clone(), stop.clone()));
    let h = health.clone();
    eventually(10, "the writer to consume", || {
        let ready = h.is_ready();
        async move { ready.then_some(()) }
    })
    .await;
    (task, stop, health)
}

async fn wait_for_rows(c: &tokio_postgres::Client, n: i64) {
    eventually(10, &format!("{n} rows"), || async move { (count(c).await == n).then_some(()) }).await;
}

#[tokio::test]
async fn writer_stores_batches_dead_letters_garbage_and_survives_a_db_disconnect() {
    let scratch = Scratch::new().await;
    let names = scratch.names();
    let mut settings = scratch.settings();
    settings.data_writer.batch_size = 10;
    settings.data_writer.flush_interval_ms = 20;
    settings.instance_id = Some("writer-test".into());
    let (task, stop, _health) = start_writer(settings).await;
    let c = scratch.client().await;
    let (_conn, ch) = channel().await;

    let mut a_msgs = Vec::new();
    for i in 0..25 {
        let f = feature_a("w-1", i, t("2024-02-01T00:00:00Z") + chrono::Duration::seconds(i as i64));
        publish(&ch, &names.features_a(), &serde_json::to_vec(&f).unwrap()).await;
        a_msgs.push(f);
    }
    for i in 0..5 {
        let f = feature_b("w-1", i, t("2024-02-01T00:00:00Z"));
        publish(&ch, &names.features_b(), &serde_json::to_vec(&f).unwrap()).await;
    }
    // A redelivered/duplicated message and two bad ones.
    publish(&ch, &names.features_a(), &serde_json::to_vec(&a_msgs[3]).unwrap()).await;
    publish(&ch, &names.features_a(), b"{not json").await;
    let mut wrong = serde_json::to_value(&a_msgs[0]).unwrap();
    wrong["features"]["zero_crossing_rate"] = serde_json::json!(2.0);
    publish(&ch, &names.features_a(), &serde_json::to_vec(&wrong).unwrap()).await;

    wait_for_rows(&c, 30).await;
    assert_eq!(db::count_by_id(&c, a_msgs[3].message_id).await.unwrap(), 1);
    let mut reasons = dead_letter_reasons(&ch, &names.writer_queue_a(), 2).await;
    reasons.sort();
    assert_eq!(reasons, vec!["invalid_json", "schema_violation"]);

    // Kill the writer's database session: the next flush fails, the batch is requeued, the writer
    // reconnects and nothing is lost.
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap();
    for i in 100..110 {
        let f = feature_a("w-1", i, t("2024-02-02T00:00:00Z"));
        publish(&ch, &names.features_a(), &serde_json::to_vec(&f).unwrap()).await;
    }
    wait_for_rows(&c, 40).await;
    // Nothing left unacked or unconsumed.
    let q = ch
        .queue_declare(
            names.writer_queue_a().as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("writer stops on shutdown").unwrap();
    drop(c);
    scratch.cleanup().await;
}

#[tokio::test]
async fn fault_ignore_unique_writes_duplicates() {
    let scratch = Scratch::new().await;
    let names = scratch.names();
    let mut settings = scratch.settings();
    settings.data_writer.fault_ignore_unique = true;
    let (task, stop, _health) = start_writer(settings).await;
    let c = scratch.client().await;
    let (_conn, ch) = channel().await;
    let f = feature_b("dup", 1, t("2024-03-01T00:00:00Z"));
    let body = serde_json::to_vec(&f).unwrap();
    publish(&ch, &names.features_b(), &body).await;
    publish(&ch, &names.features_b(), &body).await;
    wait_for_rows(&c, 2).await;
    assert_eq!(db::count_by_id(&c, f.message_id).await.unwrap(), 2);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    drop(c);
    scratch.cleanup().await;
}

/// What the writer dead-lettered from `queue`, as reasons, waiting up to 10 s for `n` of them.
async fn dead_letter_reasons(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<String> {
    let dlq = services::topology::Names::dlq_of(queue);
    let mut reasons = Vec::new();
    for _ in 0..n {
        let got = eventually(10, "a dead letter", || {
            let (ch, dlq) = (ch.clone(), dlq.clone());
            async move { ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() }
        })
        .await;
        reasons.push(services::amqp::header_str(&got.delivery.properties, "x-dlq-reason").unwrap());
    }
    reasons
}

// A batch waits for its linger unless it fills: with a 30 s linger one row stays unwritten, and
// three rows in a batch of three are in the database within seconds.
#[tokio::test]
async fn a_full_batch_is_written_before_its_linger_ends() {
    let scratch = Scratch::new().await;
    let names = scratch.names();
    let mut settings = scratch.settings();
    settings.data_writer.batch_size = 3;
    settings.data_writer.flush_interval_ms = 30_000;
    let (task, stop, _health) = start_writer(settings).await;
    let c = scratch.client().await;
    let (_conn, ch) = channel().await;
    let row = |i: u64| feature_a("full-batch", i, t("2024-03-01T00:00:00Z") + chrono::Duration::seconds(i as i64));
    publish(&ch, &names.features_a(), &serde_json::to_vec(&row(0)).unwrap()).await;
    // The lone row lingers (a lower bound: 1 s of the 30 s linger), unwritten.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&c).await, 0, "a row of an unfilled batch was written before its linger ended");
    for i in 1..3 {
        publish(&ch, &names.features_a(), &serde_json::to_vec(&row(i)).unwrap()).await;
    }
    wait_for_rows(&c, 3).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("writer stops on shutdown").unwrap();
    drop(c);
    scratch.cleanup().await;
}

// A row the database refuses is dead-lettered once as `rejected_by_database`; the rows batched
// with it are written, and the writer keeps going. The contract already keeps out what the stock
// schema would refuse, so the refusal comes from a constraint stricter than the contract, as a
// DBA might add (class 23, an integrity violation).
#[tokio::test]
async fn a_row_the_database_refuses_is_dead_lettered_and_its_batch_written() {
    let scratch = Scratch::new().await;
    let names = scratch.names();
    let mut settings = scratch.settings();
    settings.data_writer.batch_size = 10;
    settings.data_writer.flush_interval_ms = 200;
    let (task, stop, _health) = start_writer(settings).await;
    let c = scratch.client().await;
    c.batch_execute("ALTER TABLE features ADD CONSTRAINT test_refuses_sequence_9 CHECK (sequence <> 9)").await.unwrap();
    let (_conn, ch) = channel().await;
    let at = t("2024-03-02T00:00:00Z");
    for f in [feature_a("refused", 1, at), feature_a("refused", 9, at), feature_a("refused", 2, at)] {
        publish(&ch, &names.features_a(), &serde_json::to_vec(&f).unwrap()).await;
    }
    wait_for_rows(&c, 2).await;
    assert_eq!(dead_letter_reasons(&ch, &names.writer_queue_a(), 1).await, vec!["rejected_by_database"]);
    // Still consuming: a later row is written too.
    publish(&ch, &names.features_a(), &serde_json::to_vec(&feature_a("refused", 3, at)).unwrap()).await;
    wait_for_rows(&c, 3).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("writer stops on shutdown").unwrap();
    drop(c);
    scratch.cleanup().await;
}
