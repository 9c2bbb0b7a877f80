//! `load scale`: how REST load scales with local worker processes on one box. For each worker
//! count (default 1, 2, 4) it runs the same users (split over the workers) against the same
//! API twice: closed loop (as fast as answered: the generator's ceiling) and paced at `--rate`
//! (the CO-corrected p99 at a fixed offered load), merges each run exactly and prints achieved
//! rate, merged p99 and the generator's CPU per request.

use crate::cli::{LoadOpts, ScaleArgs};
use crate::dist::{self, LocalRun};
use crate::localapi::{LocalApi, LocalApiSpec};
use crate::rest::Mix;
use crate::runner;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row of the scaling table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleRow {
    /// Worker processes.
    pub workers: usize,
    /// Target requests/s (0 = closed loop).
    pub target: u64,
    /// Answers/s achieved (sum over workers).
    pub achieved_per_sec: f64,
    /// Merged p99, ms.
    pub p99_ms: f64,
    /// Merged CO-corrected p99, ms.
    pub p99_corrected_ms: f64,
    /// Generator CPU per answer (all workers), µs.
    pub cpu_us_per_request: f64,
    /// Answers.
    pub answers: u64,
}

/// Runs the benchmark and prints the table (Markdown).
pub async fn run(opts: &LoadOpts, args: &ScaleArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the load binary for the workers")?;
    let out = opts.report_dir.join(format!("scale-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
    std::fs::create_dir_all(&out)?;
    let sensors = 4;
    let (api, url, tokens) = match &args.api_url {
        Some(u) => (None, u.clone(), dist::tokens(opts.token.as_deref())?.join(",")),
        None => {
            let spec = LocalApiSpec {
                services_bin: runner::services_bin(opts.services_bin.as_deref())?,
                amqp_url: opts.amqp_url.clone(),
                admin_db_url: opts.database_url.clone(),
                sensors,
                tokens: 8,
                unlimited: true,
                log: out.join("pipeline-live.log"),
            };
            let api = LocalApi::start(&spec).await?;
            let (u, t) = (api.url.clone(), api.tokens.clone());
            (Some(api), u, t)
        }
    };
    let result = measure(opts, args, &exe, &out, &url, &tokens, sensors).await;
    if let Some(api) = api {
        api.stop().await;
    }
    let rows = result?;
    let table = table(&rows, args);
    std::fs::write(out.join("scale.json"), serde_json::to_vec_pretty(&rows)?)?;
    println!("\n{table}");
    println!("scale: wrote {}", out.join("scale.json").display());
    Ok(())
}

async fn measure(
    opts: &LoadOpts,
    args: &ScaleArgs,
    exe: &std::path::Path,
    out: &std::path::Path,
    url: &str,
    tokens: &str,
    sensors: usize,
) -> anyhow::Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    let rates: Vec<u64> = if args.rate > 0 { vec![0, args.rate] } else { vec![0] };
    for &rate in &rates {
        for &workers in &args.workers {
            eprintln!(
                "scale: {workers} worker(s), {} users, {}",
                args.users,
                if rate == 0 { "closed loop".to_string() } else { format!("{rate} requests/s") }
            );
            let run = LocalRun {
                exe: exe.to_path_buf(),
                admin_db_url: opts.database_url.clone(),
                api_url: url.to_string(),
                tokens: tokens.to_string(),
                workers,
                users: args.users,
                rate,
                window_secs: args.secs,
                mix: Mix::Latest,
                sensors: Some(sensors),
                dir: out.join(format!("w{workers}-r{rate}")),
                keep_samples: false,
                extra_args: BTreeMap::new(),
            };
            let o = dist::run_local(&run).await?;
            let m = o.merged.with_context(|| format!("{workers} worker(s) at rate {rate}"))?;
            rows.push(ScaleRow {
                workers,
                target: rate,
                achieved_per_sec: m.achieved_per_sec,
                p99_ms: m.p99_ms(false).unwrap_or(f64::NAN),
                p99_corrected_ms: m.p99_ms(true).unwrap_or(f64::NAN),
                cpu_us_per_request: m.cpu_secs * 1e6 / m.answers().max(1) as f64,
                answers: m.answers(),
            });
        }
    }
    Ok(rows)
}

/// The Markdown table.
pub fn table(rows: &[ScaleRow], args: &ScaleArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} cores; {} users (split over the workers), GET latest of 4 sensors, {} s per run\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.users,
        args.secs
    );
    s.push_str("| workers | offered | achieved req/s | merged p99 ms | merged p99 CO-corrected ms | generator CPU µs/request |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            r.workers,
            if r.target == 0 { "closed loop".to_string() } else { format!("{}/s", r.target) },
            r.achieved_per_sec,
            r.p99_ms,
            r.p99_corrected_ms,
            r.cpu_us_per_request
        );
    }
    s
}
