//! Reports a person reads after a run: a failure bundle per failed scenario (JSON: the failed
//! step, the scenario's own last HTTP request and response, captured messages, last SQL rows, a
//! World summary), lineage/reconciliation per scenario, the convergence log, and the run's
//! JUnit, HTML and start-up error reports ([`run`], [`junit`], [`html`], [`startup`]).

pub mod html;
pub mod junit;
pub mod run;
pub mod startup;

use crate::api::Exchange;
use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Everything worth keeping about a failed scenario, written as `bundle.json`.
#[derive(Debug, Serialize)]
pub struct FailureBundle {
    /// The feature's name and its file, relative to the checkout.
    pub feature: String,
    pub feature_file: String,
    pub scenario: String,
    /// Line of the scenario in its feature file.
    pub scenario_line: usize,
    /// The scenario's namespace (sensor-id prefix), kept for inspection.
    pub namespace: String,
    /// The step that failed (`Then …`), filled in by the runner once it knows.
    pub failed_step: Option<String>,
    pub error: String,
    /// This scenario's last HTTP exchange (`request`, `response`), or null when it made none.
    pub http: Value,
    /// Every message the tap captured for this scenario's namespace.
    pub captured_messages: Value,
    /// The last rows this scenario read from the database.
    pub sql_rows: Value,
    pub lineage: Value,
    /// A summary of the World (what was published, the last response, counts).
    pub world: Value,
}

/// An HTTP exchange as JSON: `request` (method, URL, headers with credentials masked),
/// `response` (status, headers, body parsed as JSON when it is JSON), `error`, `elapsed_ms`.
pub fn exchange_json(ex: &Exchange) -> Value {
    let body: Value = serde_json::from_str(&ex.body).unwrap_or_else(|_| Value::String(ex.body.clone()));
    json!({
        "request": {
            "method": ex.method,
            "url": ex.url,
            "headers": ex.request_headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        },
        "response": ex.status.map(|status| json!({
            "status": status,
            "headers": ex.response_headers,
            "body": body,
        })),
        "error": ex.error,
        "elapsed_ms": ex.elapsed.as_secs_f64() * 1000.0,
    })
}

/// Writes `<dir>/failures/<namespace>/bundle.json` and returns the directory.
pub fn write_failure_bundle(dir: &Path, bundle: &FailureBundle) -> anyhow::Result<PathBuf> {
    let out = dir.join("failures").join(&bundle.namespace);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bundle.json"), serde_json::to_vec_pretty(bundle)?)?;
    Ok(out)
}

/// Sets `failed_step` of the bundle in `bundle_dir` (the runner learns it after the hook ran).
pub fn set_failed_step(bundle_dir: &Path, step: &str) -> anyhow::Result<()> {
    let path = bundle_dir.join("bundle.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    v["failed_step"] = Value::String(step.to_owned());
    std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// Writes `<dir>/lineage/<namespace>.json` with per-chunk lineage and the reconciliation.
pub fn write_lineage(dir: &Path, namespace: &str, value: &Value) -> anyhow::Result<PathBuf> {
    let out = dir.join("lineage");
    std::fs::create_dir_all(&out)?;
    let path = out.join(format!("{namespace}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Per-hop times of a lineage (`chunks` as written by the ledger), each labelled with what it
/// measures: `(label, chunks seen, p50 ms, max ms)`.
pub fn hop_summary(chunks: &Value) -> Vec<(String, usize, f64, f64)> {
    let hops = [
        ("feature_a_ms", "published → Feature A seen by the tap"),
        ("feature_b_ms", "published → Feature B seen by the tap"),
        ("db_rows_ms", "published → rows found in PostgreSQL"),
        ("api_ms", "published → served by the REST API"),
    ];
    let list = chunks.as_array().cloned().unwrap_or_default();
    hops.iter()
        .filter_map(|(key, label)| {
            let mut ms: Vec<f64> = list.iter().filter_map(|c| c[key].as_f64()).collect();
            if ms.is_empty() {
                return None;
            }
            ms.sort_by(f64::total_cmp);
            Some(((*label).to_owned(), ms.len(), ms[ms.len() / 2], ms[ms.len() - 1]))
        })
        .collect()
}

/// Writes the convergence log (time-to-converge of every wait, each with its scenario and step
/// once [`crate::eventually::attribute`]d) as JSON and returns a summary line.
pub fn write_convergence(dir: &Path, log: &[crate::eventually::ConvergenceRecord]) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("convergence.json"), serde_json::to_vec_pretty(log)?)?;
    let mut ms: Vec<u64> = log.iter().filter(|r| r.ok).map(|r| r.elapsed_ms).collect();
    ms.sort_unstable();
    let pct = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let unattributed = log.iter().filter(|r| r.scenario.is_none()).count();
    Ok(format!(
        "waits: {} ({} timed out, {} without a scenario); time to converge p50 {} ms, p95 {} ms, max {} ms",
        log.len(),
        log.iter().filter(|r| !r.ok).count(),
        unattributed,
        pct(0.5),
        pct(0.95),
        ms.last().copied().unwrap_or(0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_exchange_is_structured_json_with_the_body_parsed() {
        let ex = Exchange {
            method: "GET".into(),
            url: "http://127.0.0.1:1/v1/features".into(),
            request_headers: vec![("authorization".into(), "Bearer ***".into())],
            status: Some(200),
            response_headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: r#"{"items":[],"next_cursor":null}"#.into(),
            error: None,
            elapsed: Duration::from_millis(3),
        };
        let v = exchange_json(&ex);
        assert_eq!(v["request"]["method"], "GET");
        assert_eq!(v["request"]["headers"]["authorization"], "Bearer ***");
        assert_eq!(v["response"]["status"], 200);
        assert_eq!(v["response"]["body"]["next_cursor"], Value::Null);
    }

    #[test]
    fn hops_are_labelled_and_summarised() {
        let chunks = json!([{"feature_a_ms": 3.0, "feature_b_ms": 5.0, "db_rows_ms": null}, {"feature_a_ms": 7.0}]);
        let hops = hop_summary(&chunks);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].0, "published → Feature A seen by the tap");
        assert_eq!((hops[0].1, hops[0].3), (2, 7.0));
    }
}
