//! What the DataWriter persisted, read from the SUT's table by contract; and seeding history.

use crate::params::{DurationParam, FeatureTypeParam};
use crate::world::World;
use anyhow::{Context, ensure};
use cucumber::{given, then};
use harness::amqp::Source;
use harness::eventually::{Check, eventually};
use harness::sql::FeatureRow;

#[then(expr = "the database eventually holds {int} Feature {type} row(s) for sensor {string}")]
async fn rows_eventually(w: &mut World, n: usize, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let db = w.env.db.clone();
    let letter = t.letter();
    let rows =
        eventually(&format!("{n} Feature {letter} rows for {sensor:?}"), &format!("{n} rows"), &w.backoff(), || {
            let (db, sensor_id) = (db.clone(), sensor_id.clone());
            async move {
                let rows: Vec<FeatureRow> =
                    db.rows_for_sensor(&sensor_id).await?.into_iter().filter(|r| r.feature_type == letter).collect();
                Ok(if rows.len() == n {
                    Check::Done(rows)
                } else {
                    Check::NotYet { observed: format!("{} rows", rows.len()) }
                })
            }
        })
        .await?
        .value;
    for r in &rows {
        w.ledger.record_db_seen(r.source_message_id);
    }
    // Rows must not keep coming after the expected count (duplicates would).
    let extra =
        harness::eventually::never(&format!("more than {n} Feature {letter} rows for {sensor:?}"), w.settle(), || {
            let (db, sensor_id) = (db.clone(), sensor_id.clone());
            async move {
                let count =
                    db.rows_for_sensor(&sensor_id).await?.into_iter().filter(|r| r.feature_type == letter).count();
                Ok(if count > n { Some(format!("{count} rows")) } else { None })
            }
        })
        .await;
    w.last_rows = rows;
    extra.map(|_| ())
}

#[then(expr = "the stored Feature {type} rows for sensor {string} equal the published messages exactly")]
async fn rows_equal_messages(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let n = w.chunks_of(&sensor).len();
    let msgs = w.wait_features(t.source(), &sensor, n).await?;
    let rows = w.env.db.rows_for_sensor(&w.sensor(&sensor)).await?;
    w.last_rows = rows.clone();
    for m in &msgs {
        let id: uuid::Uuid = m.str_field("/message_id").context("message without message_id")?.parse()?;
        let row = rows.iter().find(|r| r.message_id == id).with_context(|| format!("no row for message {id}"))?;
        let json = m.json.as_ref().expect("feature messages are JSON");
        ensure!(row.feature_type == t.letter(), "feature_type: expected {}, got {}", t.letter(), row.feature_type);
        ensure!(
            Some(&row.features) == json.get("features"),
            "features JSONB differs from the message:\n  expected {}\n  stored   {}",
            json["features"],
            row.features
        );
        ensure!(json["source_message_id"] == row.source_message_id.to_string(), "source_message_id differs");
        ensure!(
            json["sequence"].as_i64() == Some(row.sequence),
            "sequence differs: {} vs {}",
            json["sequence"],
            row.sequence
        );
        ensure!(json["processed_by"] == row.processed_by.as_str(), "processed_by differs");
        let captured = chrono::DateTime::parse_from_rfc3339(json["captured_at"].as_str().unwrap_or(""))?
            .with_timezone(&chrono::Utc);
        ensure!(captured == row.captured_at, "captured_at: message {captured}, row {}", row.captured_at);
        ensure!(
            row.written_at >= row.captured_at,
            "written_at {} precedes captured_at {}",
            row.written_at,
            row.captured_at
        );
    }
    Ok(())
}

#[then(expr = "the database holds exactly one row per Feature message of sensor {string}")]
async fn one_row_per_message(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let a = w.wait_features(Source::FeatureA, &sensor, 1).await?;
    let b = w.wait_features(Source::FeatureB, &sensor, 1).await?;
    for m in a.iter().chain(b.iter()) {
        let id: uuid::Uuid = m.str_field("/message_id").context("no message_id")?.parse()?;
        let db = w.env.db.clone();
        let rows = eventually(&format!("the row of message {id}"), "1 row", &w.backoff(), || {
            let db = db.clone();
            async move {
                let rows = db.rows_by_message_id(id).await?;
                Ok(if rows.is_empty() { Check::NotYet { observed: "0 rows".into() } } else { Check::Done(rows) })
            }
        })
        .await?
        .value;
        ensure!(
            rows.len() == 1,
            "message {id} has {} rows; expected exactly 1 (the DataWriter stored a duplicate)",
            rows.len()
        );
        // A duplicate insert may land a moment after the first: watch for it.
        harness::eventually::never(&format!("a second row for message {id}"), w.settle(), || {
            let db = db.clone();
            async move {
                let n = db.rows_by_message_id(id).await?.len();
                Ok((n > 1).then(|| format!("{n} rows for message {id} (DataWriter not idempotent)")))
            }
        })
        .await?;
    }
    Ok(())
}

#[given(expr = "{int} stored Feature {type} rows for sensor {string} captured every {duration} from {string}")]
async fn seed_rows(
    w: &mut World,
    n: usize,
    t: FeatureTypeParam,
    sensor: String,
    every: DurationParam,
    start: String,
) -> anyhow::Result<()> {
    ensure!(
        w.env.may_write_db(),
        "this step INSERTs rows into the deployment's database: tag the scenario @writes-db (skipped there unless QA_EXTERNAL_WRITES_DB=1)"
    );
    let start = chrono::DateTime::parse_from_rfc3339(&start)
        .with_context(|| format!("start time {start:?}"))?
        .with_timezone(&chrono::Utc);
    let step = chrono::Duration::from_std(every.0)?;
    let sensor_id = w.sensor(&sensor);
    let rows: Vec<FeatureRow> = (0..n)
        .map(|i| FeatureRow {
            message_id: uuid::Uuid::new_v4(),
            feature_type: t.letter().to_string(),
            sensor_id: sensor_id.clone(),
            source_message_id: uuid::Uuid::new_v4(),
            sequence: i as i64,
            captured_at: start + step * i as i32,
            processed_by: "qa-seed".into(),
            features: serde_json::json!({ "index": i, "nested": { "values": [i, i * 2], "label": format!("row-{i}") } }),
            written_at: chrono::Utc::now(),
        })
        .collect();
    let inserted = w.env.db.insert_rows(&rows).await?;
    ensure!(inserted as usize == n, "seeded {inserted} rows, expected {n}");
    w.seeded.extend(rows);
    Ok(())
}

/// A mixed history (issue #12): every sensor of the comma-separated list and both types, `per`
/// rows each, 1–3 rows per timestamp on a grid shared by all of them (`harness::history`).
#[given(
    expr = "{int} stored Feature A and B rows for each of the sensors {string}, 1 to 3 sharing each captured_at, {duration} apart from {string}, seed {int}"
)]
async fn seed_mixed(
    w: &mut World,
    per: usize,
    sensors: String,
    every: DurationParam,
    start: String,
    seed: u64,
) -> anyhow::Result<()> {
    ensure!(
        w.env.may_write_db(),
        "this step INSERTs rows into the deployment's database: tag the scenario @writes-db (skipped there unless QA_EXTERNAL_WRITES_DB=1)"
    );
    let start = chrono::DateTime::parse_from_rfc3339(&start)
        .with_context(|| format!("start time {start:?}"))?
        .with_timezone(&chrono::Utc);
    let ids: Vec<String> = sensors.split(',').map(|s| w.sensor(s.trim())).collect();
    let rows = harness::history::mixed_rows(&ids, per, start, chrono::Duration::from_std(every.0)?, seed);
    let inserted = w.env.db.insert_rows(&rows).await?;
    ensure!(inserted as usize == rows.len(), "seeded {inserted} rows, expected {}", rows.len());
    w.seeded.extend(rows);
    Ok(())
}
