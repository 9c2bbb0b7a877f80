//! Reports a person reads after a run: a failure bundle per failed scenario (captured messages,
//! last SQL rows, last HTTP exchange, the World), and lineage/reconciliation per scenario.

use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything worth keeping about a failed scenario.
#[derive(Debug, Serialize)]
pub struct FailureBundle<'a> {
    pub scenario: &'a str,
    pub feature: &'a str,
    /// The scenario's namespace (sensor-id prefix), kept for inspection.
    pub namespace: &'a str,
    pub error: &'a str,
    pub captured_messages: serde_json::Value,
    pub last_sql_rows: serde_json::Value,
    pub last_http_exchange: serde_json::Value,
    pub lineage: serde_json::Value,
    /// `Debug` of the World.
    pub world: String,
}

/// Writes `<dir>/failures/<namespace>/bundle.json` (+ `world.txt`) and returns the directory.
pub fn write_failure_bundle(dir: &Path, bundle: &FailureBundle<'_>) -> anyhow::Result<PathBuf> {
    let out = dir.join("failures").join(bundle.namespace);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bundle.json"), serde_json::to_vec_pretty(bundle)?)?;
    std::fs::write(out.join("world.txt"), &bundle.world)?;
    Ok(out)
}

/// Writes `<dir>/lineage/<namespace>.json` with per-chunk lineage and the reconciliation.
pub fn write_lineage(dir: &Path, namespace: &str, value: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let out = dir.join("lineage");
    std::fs::create_dir_all(&out)?;
    let path = out.join(format!("{namespace}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Writes the convergence log (time-to-converge of every wait) as JSON and returns a summary line.
pub fn write_convergence(dir: &Path) -> anyhow::Result<String> {
    let log = crate::eventually::convergence_log();
    let rows: Vec<serde_json::Value> = log
        .iter()
        .map(|r| serde_json::json!({ "what": r.what, "scope": r.scope, "attempts": r.attempts, "elapsed_ms": r.elapsed_ms, "ok": r.ok }))
        .collect();
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("convergence.json"), serde_json::to_vec_pretty(&rows)?)?;
    let mut ms: Vec<u64> = log.iter().filter(|r| r.ok).map(|r| r.elapsed_ms).collect();
    ms.sort_unstable();
    let pct = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    Ok(format!(
        "waits: {} ({} timed out); time to converge p50 {} ms, p95 {} ms, max {} ms",
        log.len(),
        log.iter().filter(|r| !r.ok).count(),
        pct(0.5),
        pct(0.95),
        ms.last().copied().unwrap_or(0)
    ))
}
