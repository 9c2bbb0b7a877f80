//! The whole pipeline in one process: sensor → Algorithm A (competing instances) → Algorithm B →
//! data writer → PostgreSQL, plus the REST API (latest cache fed by the broker, history from the
//! database). Every component is a tokio task with its own instance id, all in a unique broker
//! namespace and a scratch database (see `common::Scratch`).

mod common;

use common::{AMQP_URL, Scratch};
use futures::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use reqwest::StatusCode;
use serde_json::Value;
use services::config::{SensorSettings, Settings};
use services::contract::FeatureA;
use services::runtime::{Health, ServiceError};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "pipeline-e2e-token";

/// Longest wait for every component to be consuming (and the API to answer /readyz 200).
const STARTUP: Duration = Duration::from_secs(8);

/// Longest wait for components to finish after the stop token fires.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// Polls `probe` until it returns `Ok`; at `deadline` gives up with its last `Err` (what it saw).
async fn poll<T, F, Fut>(deadline: Instant, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        // Polling interval only; the deadline above bounds the total wait.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// [`poll`], panicking on timeout with what `probe` saw last.
async fn until<T, F, Fut>(deadline: Instant, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(deadline, probe).await.unwrap_or_else(|last| panic!("timed out waiting for {what}; last observed: {last}"))
}

/// Every component except the sensor, running as tasks until [`Pipeline::stop`].
struct Pipeline {
    /// Cancels every component.
    stop: CancellationToken,
    /// Queue consumers (data writer, Algorithm B, Algorithm A instances), by instance id.
    workers: Vec<(String, JoinHandle<()>)>,
    /// The REST API task (taken by [`Pipeline::stop`]).
    api: Option<JoinHandle<Result<(), ServiceError>>>,
    /// `http://127.0.0.1:<port>`.
    base: String,
    http: reqwest::Client,
}

impl Pipeline {
    /// Starts a data writer, one Algorithm B, one Algorithm A per id in `a_ids` (with `a_prefetch`)
    /// and the REST API, and returns once all of them consume, so nothing published later is lost
    /// to a fanout without bindings.
    async fn start(scratch: &Scratch, a_ids: &[&str], a_prefetch: u16) -> Pipeline {
        let stop = CancellationToken::new();
        let settings_for = |id: &str| Settings { instance_id: Some(id.to_string()), ..scratch.settings() };
        let mut plan = vec![("writer-1", "data-writer"), ("b-1", "algorithm-b")];
        plan.extend(a_ids.iter().map(|id| (*id, "algorithm-a")));
        let mut workers = Vec::new();
        let mut healths = Vec::new();
        for (id, component) in plan {
            let (health, token) = (Health::default(), stop.clone());
            let mut settings = settings_for(id);
            settings.algorithm_a.prefetch = a_prefetch;
            let task = match component {
                "data-writer" => tokio::spawn(services::data_writer::run(settings, health.clone(), token)),
                "algorithm-b" => tokio::spawn(services::algorithm_b::run(settings, health.clone(), token)),
                _ => tokio::spawn(services::algorithm_a::run(settings, health.clone(), token)),
            };
            healths.push((id.to_string(), health));
            workers.push((id.to_string(), task));
        }

        let mut s = settings_for("api-1");
        s.rest_api.bind = "127.0.0.1:0".into();
        s.rest_api.tokens = vec![TOKEN.into()];
        let app = services::rest_api::build(s, stop.clone()).await.expect("REST API binds 127.0.0.1:0");
        let base = format!("http://127.0.0.1:{}", app.port());
        let api = tokio::spawn(app.run_until_stopped());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();

        let deadline = Instant::now() + STARTUP;
        until(deadline, "every queue consumer to be ready", || async {
            let waiting: Vec<&str> = healths.iter().filter(|(_, h)| !h.is_ready()).map(|(id, _)| id.as_str()).collect();
            if waiting.is_empty() { Ok(()) } else { Err(format!("not ready yet: {waiting:?}")) }
        })
        .await;
        until(deadline, "GET /readyz to be 200", || async {
            match http.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        Pipeline { stop, workers, api: Some(api), base, http }
    }

    /// GET with the bearer token; a body that is not JSON comes back as a JSON string.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Polls GET until it answers 200, returning the body (or panics with the last answer).
    async fn get_ok(&self, deadline: Instant, path: &str, query: &[(&str, &str)]) -> Value {
        until(deadline, &format!("GET {path} {query:?} to be 200"), || async {
            match self.get(path, query).await {
                (StatusCode::OK, body) => Ok(body),
                (status, body) => Err(format!("{status}: {body}")),
            }
        })
        .await
    }

    /// Cancels everything and checks that each component stopped in time and cleanly.
    async fn stop(mut self) {
        self.stop.cancel();
        let deadline = Instant::now() + SHUTDOWN;
        for (id, task) in std::mem::take(&mut self.workers) {
            tokio::time::timeout_at(deadline, task)
                .await
                .unwrap_or_else(|_| panic!("{id} did not stop within {SHUTDOWN:?}"))
                .unwrap_or_else(|e| panic!("{id} task failed: {e}"));
        }
        let api = self.api.take().expect("API task present until stop");
        let res = tokio::time::timeout_at(deadline, api).await.expect("REST API stops in time");
        res.expect("REST API task did not panic").expect("REST API stopped cleanly");
    }
}

/// When a test fails before [`Pipeline::stop`]: stop every component before `Scratch` (declared
/// earlier, so dropped later) deletes the namespace, or reconnecting consumers would re-declare
/// their queues and leave them on the broker.
impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
        let tasks: Vec<&JoinHandle<()>> = self.workers.iter().map(|(_, t)| t).collect();
        tasks.iter().for_each(|t| t.abort());
        if let Some(api) = &self.api {
            api.abort();
        }
        let give_up = std::time::Instant::now() + SHUTDOWN;
        let all_done = || tasks.iter().all(|t| t.is_finished()) && self.api.as_ref().is_none_or(|t| t.is_finished());
        while !all_done() && std::time::Instant::now() < give_up {
            // Blocking is fine here: the tasks run on the runtime's worker threads, not this one.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Settings for a sensor publishing `count` chunks of a 440 Hz sine as fast as confirms allow.
fn sine_sensor(scratch: &Scratch, sensor_id: &str, count: u64) -> Settings {
    Settings {
        instance_id: Some(format!("{sensor_id}-proc")),
        sensor: SensorSettings {
            sensor_id: sensor_id.into(),
            signal: "sine".into(),
            frequency_hz: 440.0,
            amplitude: 0.5,
            count,
            rate_per_sec: 0.0,
            ..SensorSettings::default()
        },
        ..scratch.settings()
    }
}

/// Runs the sensor to completion and checks that every chunk was confirmed.
async fn publish_chunks(settings: &Settings, stop: &CancellationToken) {
    let run = services::sensor::run(settings, stop.child_token());
    let report = tokio::time::timeout(Duration::from_secs(8), run)
        .await
        .expect("sensor finished within 8 s")
        .expect("sensor ran without error");
    assert_eq!(report.sent, settings.sensor.count, "chunks confirmed by the broker (expected vs actual): {report:?}");
}

/// One stored feature row.
#[derive(Debug, Clone)]
struct Row {
    feature_type: String,
    message_id: Uuid,
    source_message_id: Uuid,
    processed_by: String,
    features: Value,
}

async fn rows(db: &tokio_postgres::Client, sensor_id: &str) -> Vec<Row> {
    let sql = "SELECT feature_type::text, message_id, source_message_id, processed_by, features
               FROM features WHERE sensor_id = $1 ORDER BY feature_type, sequence";
    db.query(sql, &[&sensor_id])
        .await
        .expect("query features")
        .iter()
        .map(|r| Row {
            feature_type: r.get(0),
            message_id: r.get(1),
            source_message_id: r.get(2),
            processed_by: r.get(3),
            features: r.get(4),
        })
        .collect()
}

fn of_type(rows: &[Row], t: &str) -> Vec<Row> {
    rows.iter().filter(|r| r.feature_type == t).cloned().collect()
}

/// Feature rows per type, e.g. {"A": 300, "B": 300}.
async fn counts(db: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    let sql = "SELECT feature_type::text, count(*) FROM features GROUP BY 1";
    db.query(sql, &[]).await.expect("count features").iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sine_flows_from_sensor_to_api() {
    let scratch = Scratch::new().await;
    let pipeline = Pipeline::start(&scratch, &["sine-a-1"], 4).await;
    let sensor_id = "e2e-sine-440";
    publish_chunks(&sine_sensor(&scratch, sensor_id, 1), &pipeline.stop).await;

    let db = scratch.client().await;
    let deadline = Instant::now() + Duration::from_secs(6);
    let stored = until(deadline, "a Feature A and a Feature B row in the database", || async {
        let rows = rows(&db, sensor_id).await;
        let (a, b) = (of_type(&rows, "A").len(), of_type(&rows, "B").len());
        if a >= 1 && b >= 1 { Ok(rows) } else { Err(format!("{a} A rows, {b} B rows")) }
    })
    .await;
    let (a_rows, b_rows) = (of_type(&stored, "A"), of_type(&stored, "B"));
    assert_eq!((a_rows.len(), b_rows.len()), (1, 1), "(A rows, B rows) for one chunk: {stored:#?}");
    let (a, b) = (&a_rows[0], &b_rows[0]);

    let hz = a.features["dominant_frequency_hz"].as_f64().expect("A row has a numeric dominant_frequency_hz");
    assert!((hz - 440.0).abs() <= 2.0, "dominant_frequency_hz: expected 440 ± 2, got {hz} (features {})", a.features);
    assert_eq!(b.features["event_class"], "tone", "event_class of the B row (features {})", b.features);
    assert_eq!(b.source_message_id, a.source_message_id, "B row's source_message_id must equal the A row's");
    assert_eq!(a.processed_by, "sine-a-1", "A row processed_by");
    assert_eq!(b.processed_by, "b-1", "B row processed_by");
    let source = a.source_message_id.to_string();

    // Latest, from the API's broker-fed cache.
    let latest = format!("/v1/sensors/{sensor_id}/features/latest");
    for (t, row) in [("A", a), ("B", b)] {
        let body = pipeline.get_ok(deadline, &latest, &[("type", t)]).await;
        assert_eq!(body["source_message_id"], source.as_str(), "latest?type={t} source_message_id; body {body}");
        assert_eq!(body["message_id"], row.message_id.to_string(), "latest?type={t} message_id; body {body}");
        assert_eq!(body["feature_type"], t, "latest?type={t} feature_type; body {body}");
    }

    // History, from the database: both rows and nothing else.
    let (status, page) = pipeline.get("/v1/features", &[("sensor_id", sensor_id)]).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/features?sensor_id={sensor_id}: {page}");
    let items = page["items"].as_array().unwrap_or_else(|| panic!("history page has no items array: {page}"));
    let got: BTreeSet<(String, String, String)> = items
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("feature_type"), s("message_id"), s("source_message_id"))
        })
        .collect();
    let want: BTreeSet<(String, String, String)> =
        [a, b].iter().map(|r| (r.feature_type.clone(), r.message_id.to_string(), source.clone())).collect();
    assert_eq!(items.len(), 2, "history item count; page {page}");
    assert_eq!(got, want, "history (type, message_id, source_message_id)");

    // By id: the A row.
    let (status, row) = pipeline.get(&format!("/v1/features/{}", a.message_id), &[]).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/features/{}: {row}", a.message_id);
    assert_eq!(row["feature_type"], "A", "by-id feature_type; row {row}");
    assert_eq!(row["message_id"], a.message_id.to_string(), "by-id message_id; row {row}");
    assert_eq!(row["source_message_id"], source.as_str(), "by-id source_message_id; row {row}");
    assert_eq!(row["features"], a.features, "by-id features must be the stored A features");

    // Contract 1.4 timing: each row says when the writer received it and when the INSERT made
    // it, in order (received ≤ statement start ≤ row produced).
    for r in db
        .query(
            "SELECT feature_type::text, received_at, written_at, inserted_at FROM features WHERE sensor_id = $1",
            &[&sensor_id],
        )
        .await
        .unwrap()
    {
        type At = chrono::DateTime<chrono::Utc>;
        let (t, received, written, inserted): (String, Option<At>, At, Option<At>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (received, inserted) = (received.expect("received_at is recorded"), inserted.expect("inserted_at is set"));
        assert!(
            received <= written && written <= inserted,
            "row {t}: received {received}, written {written}, inserted {inserted}"
        );
    }

    // Still exactly one row per type once everything has settled (no late duplicate).
    let settled = rows(&db, sensor_id).await;
    let (na, nb) = (of_type(&settled, "A").len(), of_type(&settled, "B").len());
    assert_eq!((na, nb), (1, 1), "(A rows, B rows) at the end: {settled:#?}");

    pipeline.stop().await;
    scratch.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_algorithm_a_instances_share_300_chunks() {
    const CHUNKS: u64 = 300;
    let a_ids = ["a-1", "a-2", "a-3"];
    let scratch = Scratch::new().await;
    let pipeline = Pipeline::start(&scratch, &a_ids, 1).await;
    let sensor_id = "e2e-share-300";

    // Our own tap on features_a, bound before anything is published.
    let tap_conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await.unwrap();
    let ch = tap_conn.create_channel().await.unwrap();
    let exchange = scratch.names().features_a();
    let qname = services::topology::private_fanout_queue(&ch, &exchange).await.unwrap();
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = ch.basic_consume(qname, "pipeline-e2e-tap".into(), no_ack, FieldTable::default()).await.unwrap();
    let tapped: Arc<Mutex<Vec<Result<FeatureA, String>>>> = Arc::default();
    let sink = tapped.clone();
    let tap = tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            let decoded = match d {
                Ok(d) => serde_json::from_slice::<FeatureA>(&d.data).map_err(|e| format!("undecodable Feature A: {e}")),
                Err(e) => Err(format!("tap consumer error: {e}")),
            };
            sink.lock().unwrap().push(decoded);
        }
    });

    publish_chunks(&sine_sensor(&scratch, sensor_id, CHUNKS), &pipeline.stop).await;

    let db = scratch.client().await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let want = CHUNKS as i64;
    // On timeout, carry on: the assertions below name what is missing or duplicated.
    let settled = poll(deadline, || async {
        let n = tapped.lock().unwrap().len();
        let c = counts(&db).await;
        let (a, b) = (c.get("A").copied().unwrap_or(0), c.get("B").copied().unwrap_or(0));
        if n as i64 >= want && a >= want && b >= want { Ok(()) } else { Err(format!("tapped {n}, rows {c:?}")) }
    })
    .await;
    if let Err(last) = &settled {
        eprintln!("pipeline did not settle within the deadline; last observed: {last}");
    }
    // Not a synchronisation: a duplicate publish would arrive right behind the originals, so give
    // the broker a short quiet window to push any straggler to the tap before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tapped: Vec<Result<FeatureA, String>> = tapped.lock().unwrap().clone();
    tap.abort();
    tap_conn.close(200, "done".into()).await.ok();

    let errors: Vec<&String> = tapped.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "tap errors: {errors:?}");
    let features: Vec<&FeatureA> = tapped.iter().filter_map(|r| r.as_ref().ok()).collect();

    // Each chunk's Feature A exactly once: by source_message_id, and by sequence (which names the
    // missing ones, since the sensor numbers its chunks 0..300).
    let mut by_source: BTreeMap<Uuid, Vec<(u64, &str)>> = BTreeMap::new();
    for f in &features {
        by_source.entry(f.source_message_id).or_default().push((f.sequence, f.processed_by.as_str()));
    }
    let duplicated: BTreeMap<&Uuid, &Vec<(u64, &str)>> = by_source.iter().filter(|(_, v)| v.len() > 1).collect();
    let seen_seqs: BTreeSet<u64> = features.iter().map(|f| f.sequence).collect();
    let missing: Vec<u64> = (0..CHUNKS).filter(|s| !seen_seqs.contains(s)).collect();
    assert!(
        duplicated.is_empty(),
        "source_message_ids published more than once ((sequence, instance)…): {duplicated:#?}"
    );
    assert!(missing.is_empty(), "sequences with no Feature A ({} missing): {missing:?}", missing.len());
    assert_eq!(
        (features.len(), by_source.len()),
        (CHUNKS as usize, CHUNKS as usize),
        "(Feature A messages, distinct source_message_ids)"
    );
    assert!(features.iter().all(|f| f.sensor_id == sensor_id), "a Feature A from another sensor was tapped");

    // Work shared by all three instances.
    let mut per_instance: BTreeMap<&str, usize> = a_ids.iter().map(|id| (*id, 0)).collect();
    for f in &features {
        *per_instance.entry(f.processed_by.as_str()).or_default() += 1;
    }
    let idle: Vec<&str> = a_ids.iter().copied().filter(|id| per_instance[id] == 0).collect();
    assert!(idle.is_empty(), "instances that processed nothing: {idle:?}; messages per instance: {per_instance:?}");
    assert_eq!(per_instance.len(), a_ids.len(), "unexpected processed_by values: {per_instance:?}");

    // The database holds exactly one A and one B row per chunk, for the same chunks.
    let c = counts(&db).await;
    assert_eq!(
        (c.get("A").copied().unwrap_or(0), c.get("B").copied().unwrap_or(0)),
        (want, want),
        "(A rows, B rows) in the database: {c:?}"
    );
    let stored = rows(&db, sensor_id).await;
    let tapped_sources: BTreeSet<Uuid> = by_source.keys().copied().collect();
    for t in ["A", "B"] {
        let sources: BTreeSet<Uuid> = of_type(&stored, t).iter().map(|r| r.source_message_id).collect();
        let not_stored: Vec<&Uuid> = tapped_sources.difference(&sources).collect();
        let unknown: Vec<&Uuid> = sources.difference(&tapped_sources).collect();
        assert!(
            not_stored.is_empty() && unknown.is_empty(),
            "{t} rows vs tapped chunks: {} stored sources, missing {not_stored:?}, unexpected {unknown:?}",
            sources.len()
        );
    }
    eprintln!("Feature A messages per instance: {per_instance:?}");

    pipeline.stop().await;
    scratch.cleanup().await;
}
