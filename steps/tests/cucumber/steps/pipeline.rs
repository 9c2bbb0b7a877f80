//! End-to-end properties: exactly-once processing, load balancing, lineage through every stage.

use crate::world::World;
use anyhow::{Context, ensure};
use cucumber::then;
use harness::amqp::Source;
use harness::eventually::{Check, eventually};
use harness::sut::Component;
use std::collections::BTreeMap;

#[then(expr = "every chunk from sensor {string} yields exactly one Feature A and one Feature B")]
async fn exactly_once(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let n = w.chunks_of(&sensor).len();
    w.exactly_features(Source::FeatureA, &sensor, n).await?;
    w.exactly_features(Source::FeatureB, &sensor, n).await?;
    let r = w.ledger.reconcile(&w.pipeline().tap);
    ensure!(r.is_clean(), "reconciliation of published chunks: {r}");
    Ok(())
}

#[then(expr = "every chunk from sensor {string} is processed, none lost")]
async fn at_least_once(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let n = w.chunks_of(&sensor).len();
    let tap = w.pipeline().tap.clone();
    let ledger = w.ledger.clone();
    let mut backoff = w.backoff();
    backoff.deadline *= 2;
    // Redelivery may add duplicates (at-least-once); what must not happen is a lost chunk.
    eventually(
        &format!("a Feature A for each of the {n} chunks of {sensor:?}"),
        "no chunk missing at Algorithm A",
        &backoff,
        || {
            let r = ledger.reconcile(&tap);
            async move {
                Ok(if r.missing_feature_a.is_empty() && r.missing_feature_b.is_empty() {
                    Check::Done(())
                } else {
                    Check::NotYet { observed: r.to_string() }
                })
            }
        },
    )
    .await
    .map(|_| ())
}

#[then(expr = "the chunks of sensor {string} were shared among all {int} Algorithm A instances")]
async fn shared_among(w: &mut World, sensor: String, n: usize) -> anyhow::Result<()> {
    let running = w.pipeline().procs()?.instances(Component::AlgorithmA);
    let chunks = w.chunks_of(&sensor).len();
    let msgs = w.wait_features(Source::FeatureA, &sensor, chunks).await?;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for m in &msgs {
        *per.entry(m.str_field("/processed_by").unwrap_or("<none>").to_string()).or_default() += 1;
    }
    ensure!(
        per.len() == n,
        "expected work spread over {n} instances, saw {} ({per:?}); running: {running:?}",
        per.len()
    );
    for id in &running {
        ensure!(per.contains_key(id), "instance {id} processed nothing; distribution {per:?}");
    }
    Ok(())
}

#[then(expr = "the Feature B messages of sensor {string} were produced by {int} Algorithm B instances")]
async fn b_instances(w: &mut World, sensor: String, n: usize) -> anyhow::Result<()> {
    let chunks = w.chunks_of(&sensor).len();
    let msgs = w.wait_features(Source::FeatureB, &sensor, chunks).await?;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for m in &msgs {
        *per.entry(m.str_field("/processed_by").unwrap_or("<none>").to_string()).or_default() += 1;
    }
    ensure!(per.len() == n, "expected {n} Algorithm B instances to share the work, saw {per:?}");
    Ok(())
}

#[then(expr = "the lineage of every chunk from sensor {string} is complete")]
async fn lineage_complete(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let lineage = w.ledger.lineage(&w.pipeline().tap);
    let mine: Vec<_> = lineage.iter().filter(|l| l.sensor_id == sensor_id).collect();
    ensure!(!mine.is_empty(), "no chunks were published for {sensor:?}");
    for l in mine {
        let stage = if l.feature_a_ms.is_none() {
            Some("Feature A (Algorithm A)")
        } else if l.feature_b_ms.is_none() {
            Some("Feature B (Algorithm B)")
        } else if l.db_rows_ms.is_none() {
            Some("database rows (DataWriter)")
        } else if l.api_ms.is_none() {
            Some("API visibility (REST API)")
        } else {
            None
        };
        ensure!(
            stage.is_none(),
            "chunk {} (seq {}) never reached {}",
            l.message_id,
            l.sequence,
            stage.context("checked")?
        );
    }
    Ok(())
}
