//! An independent model of the history endpoint (issue #12): which stored rows `GET /v1/features`
//! must return for a sensor, type and `[from, to)` window, in `(captured_at, message_id)` order,
//! and a page-by-page check of what the API served against it. Plus a generator of mixed
//! histories: several sensors and both types sharing `captured_at` values, so page boundaries
//! fall inside runs of equal timestamps where a keyset condition is easiest to get wrong.

use crate::sql::FeatureRow;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Rows for every sensor of `sensors` and both types, `per` rows each: each (sensor, type) walks
/// the same grid `start + j·step`, putting 1–3 rows on a grid point (random, reproducible from
/// `seed`) and sometimes skipping one, so most timestamps are shared within and across sensors
/// and types.
pub fn mixed_rows(
    sensors: &[String],
    per: usize,
    start: DateTime<Utc>,
    step: chrono::Duration,
    seed: u64,
) -> Vec<FeatureRow> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for sensor in sensors {
        for t in ["A", "B"] {
            let (mut j, mut made) = (0i32, 0usize);
            while made < per {
                if rng.random_bool(0.15) {
                    j += 1; // a grid point this sensor and type leaves empty
                }
                let group = rng.random_range(1..=3usize).min(per - made);
                for _ in 0..group {
                    rows.push(FeatureRow {
                        message_id: Uuid::from_u128(rng.random()),
                        feature_type: t.to_string(),
                        sensor_id: sensor.clone(),
                        source_message_id: Uuid::from_u128(rng.random()),
                        sequence: made as i64,
                        captured_at: start + step * j,
                        processed_by: "qa-seed".into(),
                        features: serde_json::json!({ "index": made, "grid": j }),
                        written_at: Utc::now(),
                    });
                    made += 1;
                }
                j += 1;
            }
        }
    }
    rows
}

/// A history request's filters, as the model applies them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub sensor_id: String,
    /// `A`, `B` or None (both).
    pub feature_type: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn admits(&self, r: &FeatureRow) -> bool {
        r.sensor_id == self.sensor_id
            && self.feature_type.as_deref().is_none_or(|t| r.feature_type == t)
            && self.from.is_none_or(|f| r.captured_at >= f)
            && self.to.is_none_or(|t| r.captured_at < t)
    }
}

/// The rows a history request must return, in the contract's order.
pub fn expected<'a>(rows: &'a [FeatureRow], filter: &Filter) -> Vec<&'a FeatureRow> {
    let mut out: Vec<&FeatureRow> = rows.iter().filter(|r| filter.admits(r)).collect();
    out.sort_by_key(|r| (r.captured_at, r.message_id));
    out
}

/// One page as served: its row objects and `next_cursor`.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// Checks every page against the model: page `i` must be exactly the model's rows
/// `i·limit … (i+1)·limit` (so no row missing, none repeated, none foreign, order kept), and
/// `next_cursor` must be set exactly when rows are left. `universe` is every row the scenario
/// seeded, to say whose a foreign row is. Returns the first problem, described.
pub fn check_pages(universe: &[FeatureRow], filter: &Filter, limit: usize, pages: &[Page]) -> Result<usize, String> {
    let want = expected(universe, filter);
    let describe = |v: &Value| -> String {
        let id = v["message_id"].as_str().unwrap_or("?");
        let known = universe.iter().find(|r| r.message_id.to_string() == id);
        let sensor = v["sensor_id"].as_str().unwrap_or("?");
        let whose = match known {
            _ if sensor != filter.sensor_id => format!("FOREIGN: sensor {sensor} (another sensor's row)"),
            Some(r) if !filter.admits(r) => {
                format!("FOREIGN: outside the filter (type {}, captured_at {})", r.feature_type, r.captured_at)
            }
            Some(_) => "expected row".into(),
            None => "a row the scenario never stored".into(),
        };
        format!("{id} [{} {} {}] {whose}", v["sensor_id"], v["feature_type"], v["captured_at"])
    };
    let mut seen = BTreeSet::new();
    for (i, page) in pages.iter().enumerate() {
        let lo = (i * limit).min(want.len());
        let hi = ((i + 1) * limit).min(want.len());
        let expect: Vec<String> = want[lo..hi].iter().map(|r| r.message_id.to_string()).collect();
        let got: Vec<String> = page.items.iter().map(|v| v["message_id"].as_str().unwrap_or("?").to_string()).collect();
        for v in &page.items {
            let id = v["message_id"].as_str().unwrap_or("?").to_string();
            if !seen.insert(id) {
                return Err(format!("page {} repeats a row served before: {}", i + 1, describe(v)));
            }
            let foreign = universe.iter().find(|r| r.message_id.to_string() == v["message_id"].as_str().unwrap_or(""));
            if foreign.is_none_or(|r| !filter.admits(r)) {
                return Err(format!("page {} holds a row that does not match the request: {}", i + 1, describe(v)));
            }
        }
        if got != expect {
            let missing: Vec<&String> = expect.iter().filter(|id| !got.contains(id)).collect();
            return Err(format!(
                "page {} (limit {limit}) differs from the model's rows {}…{} of {}: missing {missing:?}\n  expected {expect:?}\n  got      {got:?}",
                i + 1,
                lo + 1,
                hi,
                want.len()
            ));
        }
        let more = hi < want.len();
        if more != page.next_cursor.is_some() {
            return Err(format!(
                "page {}: next_cursor is {:?}, but {} of the model's {} rows are left",
                i + 1,
                page.next_cursor,
                want.len() - hi,
                want.len()
            ));
        }
    }
    let served: usize = pages.iter().map(|p| p.items.len()).sum();
    if served != want.len() {
        return Err(format!("{served} rows served in {} page(s), the model selects {}", pages.len(), want.len()));
    }
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rows() -> Vec<FeatureRow> {
        let sensors = vec!["s1".to_string(), "s2".to_string()];
        mixed_rows(&sensors, 10, at("2026-01-01T00:00:00Z"), chrono::Duration::seconds(1), 3)
    }

    fn pages_of(rows: &[&FeatureRow], limit: usize) -> Vec<Page> {
        let chunks: Vec<_> = rows.chunks(limit).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| Page {
                items: c.iter().map(|r| r.to_json()).collect(),
                next_cursor: (i + 1 < chunks.len()).then(|| "c".to_string()),
            })
            .collect()
    }

    #[test]
    fn mixed_rows_share_timestamps_across_sensors_and_types() {
        let r = rows();
        assert_eq!(r.len(), 40);
        let shared =
            r.iter().filter(|a| r.iter().any(|b| b.sensor_id != a.sensor_id && b.captured_at == a.captured_at)).count();
        assert!(shared > 20, "{shared}");
        assert!(r.iter().any(|a| r.iter().any(|b| a.message_id != b.message_id
            && a.sensor_id == b.sensor_id
            && a.feature_type == b.feature_type
            && a.captured_at == b.captured_at)));
    }

    #[test]
    fn the_model_accepts_correct_paging_and_names_each_defect() {
        let r = rows();
        let f = Filter {
            sensor_id: "s1".into(),
            feature_type: Some("A".into()),
            from: Some(at("2026-01-01T00:00:01Z")),
            to: None,
        };
        let want = expected(&r, &f);
        assert!(want.iter().all(|x| x.sensor_id == "s1" && x.feature_type == "A"));
        let good = pages_of(&want, 3);
        assert_eq!(check_pages(&r, &f, 3, &good), Ok(want.len()));
        // A foreign row (another sensor's) on page 2.
        let mut leak = good.clone();
        let other = r.iter().find(|x| x.sensor_id == "s2").unwrap();
        leak[1].items.push(other.to_json());
        assert!(check_pages(&r, &f, 3, &leak).unwrap_err().contains("another sensor's row"));
        // A repeated row.
        let mut rep = good.clone();
        let first = rep[0].items[2].clone();
        rep[1].items[0] = first;
        assert!(check_pages(&r, &f, 3, &rep).unwrap_err().contains("repeats"));
        // A missing row, and a cursor at the end.
        let mut short = good.clone();
        short[1].items.pop();
        assert!(check_pages(&r, &f, 3, &short).unwrap_err().contains("missing"));
        let mut endless = good.clone();
        endless.last_mut().unwrap().next_cursor = Some("x".into());
        assert!(check_pages(&r, &f, 3, &endless).unwrap_err().contains("next_cursor"));
    }
}
