//! Shared by the integration tests: a scratch PostgreSQL database and a broker namespace that are
//! unique per test and removed afterwards (also when the test panics), and message builders.

#![allow(dead_code)]

use chrono::{DateTime, Duration, Utc};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use services::config::Settings;
use services::contract::{EventClass, EventFeatures, FeatureA, FeatureB, SignalFeatures};
use services::topology::Names;
use tokio_postgres::NoTls;
use uuid::Uuid;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A scratch database plus a broker namespace; dropped (database and every queue/exchange of the
/// namespace) by [`Scratch::cleanup`], or by `Drop` if the test panicked first.
pub struct Scratch {
    /// `apq_test_<uuid>`: hex only, so it is safe to splice into CREATE/DROP DATABASE.
    pub db_name: String,
    /// `apq-test-<uuid>`.
    pub namespace: String,
    /// The broker the components use (the shared one unless a test points it elsewhere).
    pub amqp_url: String,
    /// Set once cleaned up, so `Drop` does nothing.
    cleaned: bool,
}

impl Scratch {
    pub async fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("apq_test_{id}");
        let admin = admin().await;
        // Identifiers cannot be bound as parameters; the name is hex digits and a fixed prefix.
        admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await.unwrap();
        Scratch { db_name, namespace: format!("apq-test-{id}"), amqp_url: AMQP_URL.into(), cleaned: false }
    }

    pub fn db_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.db_name)
    }

    pub fn names(&self) -> Names {
        Names::new(&self.namespace)
    }

    /// Settings pointing at this scratch database and namespace, with quick reconnects.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.amqp.url = self.amqp_url.clone();
        s.amqp.namespace = self.namespace.clone();
        s.amqp.reconnect_min_ms = 50;
        s.amqp.reconnect_max_ms = 500;
        s.database.url = self.db_url();
        s.database.pool_size = 4;
        s
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.db_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    pub async fn cleanup(mut self) {
        self.cleaned = true;
        drop_everything(self.db_name.clone(), self.namespace.clone(), self.amqp_url.clone()).await;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Dropped during a panic inside a runtime: clean up from a fresh thread and runtime.
        let (db, ns, url) = (self.db_name.clone(), self.namespace.clone(), self.amqp_url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(drop_everything(db, ns, url));
        })
        .join();
    }
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG_ADMIN_URL, NoTls).await.expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

/// Drops the database and the namespace's queues and exchanges on the broker the test used
/// (`amqp_url`: a test on a private node never reaches the shared broker, even to clean up).
async fn drop_everything(db_name: String, namespace: String, amqp_url: String) {
    let connecting = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default());
    // Bounded: a private broker may already be gone.
    if let Ok(Ok(conn)) = tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await {
        let names = Names::new(&namespace);
        for q in names.all_queues() {
            // A fresh channel each time: deleting is idempotent, but a channel error closes it.
            if let Ok(ch) = conn.create_channel().await {
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.ok();
            }
        }
        for x in names.all_exchanges() {
            if let Ok(ch) = conn.create_channel().await {
                ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await.ok();
            }
        }
        conn.close(200, "cleanup".into()).await.ok();
    }
    let admin = admin().await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await.unwrap();
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn feature_a(sensor: &str, sequence: u64, captured_at: DateTime<Utc>) -> FeatureA {
    FeatureA {
        schema_version: 1,
        feature_type: "A".into(),
        message_id: Uuid::new_v4(),
        source_message_id: Uuid::new_v4(),
        sensor_id: sensor.into(),
        sequence,
        captured_at,
        processed_at: captured_at + Duration::milliseconds(5),
        processed_by: "algorithm-a-test".into(),
        sample_rate: 16_000,
        channels: 1,
        features: SignalFeatures {
            rms: 0.1,
            peak: 1.0 / 3.0,
            rms_dbfs: -20.000000000000004,
            zero_crossing_rate: 1e-7,
            spectral_centroid_hz: 12345.678901234567,
            dominant_frequency_hz: 440.0,
            spectral_flatness: 0.0,
            clipping_ratio: 0.0,
            duration_ms: 100.0,
            sample_count: 1600,
        },
    }
}

pub fn feature_b(sensor: &str, sequence: u64, captured_at: DateTime<Utc>) -> FeatureB {
    FeatureB {
        schema_version: 1,
        feature_type: "B".into(),
        message_id: Uuid::new_v4(),
        feature_a_message_id: Uuid::new_v4(),
        source_message_id: Uuid::new_v4(),
        sensor_id: sensor.into(),
        sequence,
        captured_at,
        processed_at: captured_at + Duration::milliseconds(9),
        processed_by: "algorithm-b-test".into(),
        features: EventFeatures {
            event_class: EventClass::Tone,
            confidence: 0.875,
            loudness_dbfs: -6.020599913279624,
            dominant_frequency_hz: 440.0,
        },
    }
}

/// A confirm-mode channel on a fresh connection.
pub async fn channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await.unwrap();
    let ch = services::amqp::confirm_channel(&conn).await.unwrap();
    (conn, ch)
}

/// Publishes `body` to `exchange` and waits for the confirm.
pub async fn publish(ch: &lapin::Channel, exchange: &str, body: &[u8]) {
    let props = lapin::BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
    services::amqp::publish_confirmed(ch, exchange, "", body, props).await.unwrap();
}

/// Polls `f` every 20 ms until it returns Some, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The lines a child writes to `stream` (its piped stdout or stderr), read on a thread of their
/// own so a test can wait for one with a deadline (`recv_timeout`).
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
