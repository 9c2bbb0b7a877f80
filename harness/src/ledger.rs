//! Lineage and reconciliation: for every chunk a scenario published, when Feature A, Feature B,
//! the database rows and API visibility were first seen (per-hop latency), and which published ids
//! are missing or duplicated at each stage.

use crate::amqp::{Captured, Source, Tap};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use uuid::Uuid;

/// A chunk the scenario published.
#[derive(Debug, Clone)]
pub struct Published {
    pub message_id: Uuid,
    pub sensor_id: String,
    pub sequence: u64,
    /// When the broker confirmed it.
    pub at: Instant,
}

/// First-seen times observed by steps that poll (DB, API), per source message id.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Published chunks in order.
    published: Mutex<Vec<Published>>,
    /// source message id → first time its rows (A and B) were both seen in the database.
    db_seen: Mutex<BTreeMap<Uuid, Instant>>,
    /// source message id → first time the API served a feature derived from it.
    api_seen: Mutex<BTreeMap<Uuid, Instant>>,
}

/// One chunk's path through the pipeline, in milliseconds since it was published.
#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    pub message_id: Uuid,
    pub sensor_id: String,
    pub sequence: u64,
    pub feature_a_ms: Option<f64>,
    pub feature_b_ms: Option<f64>,
    pub db_rows_ms: Option<f64>,
    pub api_ms: Option<f64>,
    pub feature_a_count: usize,
    pub feature_b_count: usize,
}

/// Which published ids went missing or were duplicated at each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    pub published: usize,
    pub missing_feature_a: Vec<Uuid>,
    pub duplicated_feature_a: Vec<Uuid>,
    pub missing_feature_b: Vec<Uuid>,
    pub duplicated_feature_b: Vec<Uuid>,
}

impl Reconciliation {
    pub fn is_clean(&self) -> bool {
        self.missing_feature_a.is_empty()
            && self.duplicated_feature_a.is_empty()
            && self.missing_feature_b.is_empty()
            && self.duplicated_feature_b.is_empty()
    }
}

impl std::fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Vec<Uuid>| {
            let mut s: Vec<String> = v.iter().take(10).map(|u| u.to_string()).collect();
            if v.len() > 10 {
                s.push(format!("… {} more", v.len() - 10));
            }
            format!("{} [{}]", v.len(), s.join(", "))
        };
        write!(
            f,
            "published {}; Feature A missing {}, duplicated {}; Feature B missing {}, duplicated {}",
            self.published,
            show(&self.missing_feature_a),
            show(&self.duplicated_feature_a),
            show(&self.missing_feature_b),
            show(&self.duplicated_feature_b)
        )
    }
}

fn source_id(m: &Captured) -> Option<Uuid> {
    m.str_field("/source_message_id").and_then(|s| s.parse().ok())
}

impl Ledger {
    pub fn record_published(&self, p: Published) {
        self.published.lock().expect("ledger lock").push(p);
    }
    pub fn published(&self) -> Vec<Published> {
        self.published.lock().expect("ledger lock").clone()
    }
    pub fn record_db_seen(&self, source: Uuid) {
        self.db_seen.lock().expect("ledger lock").entry(source).or_insert_with(Instant::now);
    }
    pub fn record_api_seen(&self, source: Uuid) {
        self.api_seen.lock().expect("ledger lock").entry(source).or_insert_with(Instant::now);
    }

    /// Counts Feature A/B per published id on the tap.
    pub fn reconcile(&self, tap: &Tap) -> Reconciliation {
        let published = self.published();
        let ids: BTreeMap<Uuid, ()> = published.iter().map(|p| (p.message_id, ())).collect();
        let mut a: BTreeMap<Uuid, usize> = BTreeMap::new();
        let mut b: BTreeMap<Uuid, usize> = BTreeMap::new();
        for m in tap.matching(|m| matches!(m.source, Source::FeatureA | Source::FeatureB)) {
            if let Some(id) = source_id(&m).filter(|id| ids.contains_key(id)) {
                let map = if m.source == Source::FeatureA { &mut a } else { &mut b };
                *map.entry(id).or_default() += 1;
            }
        }
        let mut r = Reconciliation { published: published.len(), ..Default::default() };
        for p in &published {
            match a.get(&p.message_id).copied().unwrap_or(0) {
                0 => r.missing_feature_a.push(p.message_id),
                1 => {}
                _ => r.duplicated_feature_a.push(p.message_id),
            }
            match b.get(&p.message_id).copied().unwrap_or(0) {
                0 => r.missing_feature_b.push(p.message_id),
                1 => {}
                _ => r.duplicated_feature_b.push(p.message_id),
            }
        }
        r
    }

    /// Per-chunk lineage with per-hop first-seen times.
    pub fn lineage(&self, tap: &Tap) -> Vec<Lineage> {
        let captured = tap.matching(|m| matches!(m.source, Source::FeatureA | Source::FeatureB));
        let db = self.db_seen.lock().expect("ledger lock");
        let api = self.api_seen.lock().expect("ledger lock");
        self.published()
            .into_iter()
            .map(|p| {
                let mine: Vec<&Captured> = captured.iter().filter(|m| source_id(m) == Some(p.message_id)).collect();
                let first = |src: Source| {
                    mine.iter().filter(|m| m.source == src).map(|m| m.arrived).min().map(|t| ms_since(p.at, t))
                };
                let count = |src: Source| mine.iter().filter(|m| m.source == src).count();
                Lineage {
                    message_id: p.message_id,
                    sensor_id: p.sensor_id.clone(),
                    sequence: p.sequence,
                    feature_a_ms: first(Source::FeatureA),
                    feature_b_ms: first(Source::FeatureB),
                    db_rows_ms: db.get(&p.message_id).map(|t| ms_since(p.at, *t)),
                    api_ms: api.get(&p.message_id).map(|t| ms_since(p.at, *t)),
                    feature_a_count: count(Source::FeatureA),
                    feature_b_count: count(Source::FeatureB),
                }
            })
            .collect()
    }
}

fn ms_since(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}
