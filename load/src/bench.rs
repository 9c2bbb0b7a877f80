//! `load bench`: figures, not gates, measured in one run on this machine, printed as ratios:
//! 1. goose vs wrk vs Locust on one REST endpoint with the same connections;
//! 2. the pipeline's end-to-end chunks/s at 0 loss vs the raw broker's single-queue
//!    publish+consume rate for the same message size, hop-normalized;
//! 3. DataWriter rows/s vs a raw multi-row INSERT into the same table;
//! 4. the REST `latest` endpoint's p99 at 50% of its max rate;
//! 5. the harness tap's latency: how long after a bare consumer of the same fanout gets a message
//!    the tap has it (captured, validated, visible to waiters), p99.
//!
//! The REST figures run against a private `pipeline live` (own namespace, own database, rate
//! limit lifted); the pipeline figures against a private pipeline like the gates'.

use crate::cli::{BenchArgs, LoadOpts};
use crate::stats::Latency;
use crate::{attack, pipeline, runner};
use anyhow::{Context as _, bail};
use contract::topology::Names;
use contract::{AudioChunk, Encoding};
use futures::StreamExt as _;
use goose::metrics::GooseMetrics;
use goose::prelude::*;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Critical-path broker hops of one chunk: audio_stream → A, features_a → B, features_b → writer.
pub const PIPELINE_HOPS: f64 = 3.0;

/// A private `pipeline live`; killed (and its namespace and database removed) on [`Live::stop`].
struct Live {
    /// The child process.
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    url: String,
    /// Token it accepts.
    token: String,
    /// Its broker names.
    names: Names,
    /// Its database.
    db_name: String,
    /// What a second API process needs to join it (broker, database, namespace, tokens).
    env: Vec<(String, String)>,
}

impl Live {
    async fn start(opts: &LoadOpts, bin: &Path) -> anyhow::Result<Live> {
        let id = format!("{:08x}", rand::random::<u32>());
        let (namespace, db_name, token) = (format!("bench-{id}"), format!("apq_bench_{id}"), format!("bench-{id}"));
        let db_url = harness::env::with_database(&opts.database_url, &db_name)?;
        let env: Vec<(String, String)> = [
            ("APQ_AMQP_URL", opts.amqp_url.as_str()),
            ("APQ_DATABASE_URL", db_url.as_str()),
            ("APQ_NAMESPACE", namespace.as_str()),
            ("APQ_API_TOKENS", token.as_str()),
            ("APQ_API_RATE_LIMIT_PER_SEC", "1000000000"),
            ("APQ_API_RATE_LIMIT_BURST", "1000000000"),
            ("RUST_LOG", "error"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (child, url) = crate::localapi::spawn_live(bin, 1, &env, None).await?;
        let live = Live { child, url, token, names: Names::new(&namespace), db_name, env };
        // The sensor publishes 10 chunks/s; wait until the API serves one.
        let api = harness::api::ApiClient::new(&live.url, Some(live.token.clone()))?;
        for _ in 0..200 {
            if api.latest("sensor-1", "A").await.is_ok_and(|r| r.status == 200) {
                return Ok(live);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("pipeline live at {} served no latest Feature A within 20 s", live.url)
    }

    /// Stops the pipeline processes but keeps the namespace and database (for (4), which measures
    /// an API alone). Calling it again does nothing.
    async fn stop_pipeline(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    async fn stop(mut self, opts: &LoadOpts) {
        self.stop_pipeline().await;
        if let Ok(conn) = harness::amqp::connect(&opts.amqp_url, "load-bench-cleanup").await {
            harness::amqp::delete_namespace(&conn, &self.names).await;
        }
        let _ = harness::sql::drop_database(&opts.database_url, &self.db_name).await;
    }
}

/// One HTTP tool's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct HttpFigure {
    /// Requests per second.
    rps: f64,
    /// p99 latency in ms, when the tool reports it.
    p99_ms: Option<f64>,
}

/// Runs the benchmarks and prints the figures.
pub async fn run(opts: &LoadOpts, args: &BenchArgs) -> anyhow::Result<()> {
    let want = |n: u8| args.only.is_empty() || args.only.contains(&n);
    let secs = if args.quick { args.secs.min(5) } else { args.secs };
    let bin = runner::services_bin(opts.services_bin.as_deref())?;
    if !bin.to_string_lossy().contains("release") {
        eprintln!("bench: warning: {} is not a release build; figures will be low", bin.display());
    }
    let out = opts.report_dir.join(format!("bench-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
    std::fs::create_dir_all(&out)?;
    let mut results = serde_json::Map::new();
    let mut lines = Vec::new();

    if want(1) || want(4) {
        let mut live = Live::start(opts, &bin).await?;
        let outcome =
            http_benches(opts, args, secs, &mut live, &out, want(1), want(4), &bin, &mut results, &mut lines).await;
        live.stop(opts).await;
        outcome?;
    }
    if want(2) || want(3) {
        let (chunks, features) = if args.quick { (1500, 1000) } else { (5000, 3000) };
        let infra = pipeline::Infra {
            amqp_url: opts.amqp_url.clone(),
            admin_db_url: opts.database_url.clone(),
            services_bin: bin.clone(),
        };
        let p = pipeline::bench(&infra, &out, chunks, features, 8).await?;
        results.insert("pipeline".into(), serde_json::to_value(&p)?);
        if want(2) {
            eprintln!("bench: raw broker, single queue, {chunks} messages of {} bytes", p.chunk_bytes);
            let raw = raw_broker(opts, chunks, p.chunk_bytes, 8).await?;
            let ceiling = raw / PIPELINE_HOPS;
            results.insert("raw_broker_msgs_per_sec".into(), json!(raw));
            let line = match p.e2e_chunks_per_sec {
                Some(e2e) => format!(
                    "(2) pipeline end-to-end {e2e:.0} chunks/s at 0 loss ({chunks} chunks) vs raw broker single-queue publish+consume {raw:.0} msgs/s ({} B, 8 confirm-per-message publishers, 1 consumer) / {PIPELINE_HOPS} hops = {ceiling:.0}/s → ratio {:.2} (expected ≥ 0.6)",
                    p.chunk_bytes,
                    e2e / ceiling
                ),
                None => {
                    format!("(2) pipeline lost {} chunks: no 0-loss throughput (raw broker {raw:.0} msgs/s)", p.lost)
                }
            };
            lines.push(line);
        }
        if want(3) {
            let line = match p.writer_rows_per_sec {
                Some(w) => format!(
                    "(3) DataWriter {w:.0} rows/s vs raw multi-row INSERT … ON CONFLICT DO NOTHING, batches of {}, {:.0} rows/s → ratio {:.2}",
                    p.raw_insert_batch,
                    p.raw_insert_rows_per_sec,
                    w / p.raw_insert_rows_per_sec
                ),
                None => "(3) DataWriter did not finish".into(),
            };
            lines.push(line);
        }
    }
    if want(5) {
        let n = if args.quick { 1000 } else { 4000 };
        let t = tap_latency(opts, n, 500.0).await?;
        let line = format!(
            "(5) tap latency (tap has it − a bare consumer of the same fanout got it), {n} Feature A messages at 500/s: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (goal p99 ≤ 5 ms); the bare consumer's publish → delivery p99 {:.3} ms",
            t.p50_ms, t.p99_ms, t.p999_ms, t.max_ms, t.bare_p99_ms
        );
        results.insert("tap_latency".into(), serde_json::to_value(&t)?);
        lines.push(line);
    }
    let path = out.join("bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!(
        "\nbench: {} cores, {} (command: load bench{})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        chrono::Utc::now().to_rfc3339(),
        if args.quick { " --quick" } else { "" }
    );
    for l in &lines {
        println!("bench: {l}");
    }
    println!("bench: wrote {}", path.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn http_benches(
    opts: &LoadOpts,
    args: &BenchArgs,
    secs: u64,
    live: &mut Live,
    out: &Path,
    tools: bool,
    half: bool,
    bin: &Path,
    results: &mut serde_json::Map<String, serde_json::Value>,
    lines: &mut Vec<String>,
) -> anyhow::Result<()> {
    let _ = opts;
    let path = "/v1/sensors/sensor-1/features/latest?type=A";
    let url = format!("{}{path}", live.url);
    let c = args.connections;
    eprintln!("bench: goose, {c} users, {secs} s, GET {url}");
    let bar = crate::progress::timed("bench: goose", secs);
    let (goose_fig, _) = goose_http(&live.url, &live.token, path, c, secs, None, out).await?;
    drop(bar);
    results.insert("goose".into(), serde_json::to_value(&goose_fig)?);
    if tools {
        eprintln!("bench: wrk, {c} connections, {secs} s");
        let bar = crate::progress::timed("bench: wrk", secs);
        let wrk = wrk(&args.wrk, &url, &live.token, c, secs).await;
        drop(bar);
        eprintln!("bench: Locust (HttpUser), {c} users, {secs} s");
        let bar = crate::progress::timed("bench: Locust", secs);
        let locust = locust(&args.locust, &live.url, path, &live.token, c, secs, out).await;
        drop(bar);
        let fmt = |r: &anyhow::Result<HttpFigure>| match r {
            Ok(f) => format!("{:.0} rps", f.rps),
            Err(e) => format!("unavailable ({e:#})"),
        };
        let mut line = format!(
            "(1) GET latest, {c} connections, {secs} s: goose {:.0} rps, wrk {}, Locust {}",
            goose_fig.rps,
            fmt(&wrk),
            fmt(&locust)
        );
        if let Ok(w) = &wrk {
            line.push_str(&format!(" → goose/wrk {:.2} (expected ≥ 0.35)", goose_fig.rps / w.rps));
            results.insert("wrk".into(), serde_json::to_value(w)?);
        }
        if let Ok(l) = &locust {
            line.push_str(&format!(", goose/Locust {:.2} (expected ≥ 3)", goose_fig.rps / l.rps));
            results.insert("locust".into(), serde_json::to_value(l)?);
        }
        lines.push(line);
    }
    if half {
        if let Err(missing) = pinned_prerequisites(args) {
            // One core, no taskset or no oha: goose on the shared cores, paced evenly.
            eprintln!("bench: (4) on separate cores unavailable ({missing}); goose on shared cores instead");
            let target = (goose_fig.rps / 2.0).max(1.0);
            eprintln!("bench: goose at 50% of max: {target:.0} rps, {secs} s");
            let bar = crate::progress::timed("bench: goose at 50% of max", secs);
            let (fig, lat) = goose_http(&live.url, &live.token, path, c, secs, Some(target), out).await?;
            drop(bar);
            let s = lat.summary();
            results.insert(
                "latest_half_load".into(),
                json!({"target_rps": target, "achieved_rps": fig.rps, "latency": s, "generator": "goose, shared cores"}),
            );
            lines.push(format!(
                "(4) REST latest p99 at 50% of max, goose sharing the cores with the API ({target:.0} of {:.0} rps, achieved {:.0}): raw {:.2} ms, CO-corrected {:.2} ms (p50 {:.2} ms; expected p99 ≤ 5 ms)",
                goose_fig.rps, fig.rps, s.raw.p99_ms, s.corrected.p99_ms, s.raw.p50_ms
            ));
        } else {
            let (figures, line) = pinned_half_load(args, secs, live, bin, out).await?;
            results.insert("latest_half_load".into(), figures);
            lines.push(line);
        }
    }
    Ok(())
}

/// What (4) on separate cores needs: CPUs 0 and 1, `taskset`, wrk and oha.
fn pinned_prerequisites(args: &BenchArgs) -> Result<(), String> {
    // SAFETY: sched_getaffinity fills the zeroed set we own, for this process (pid 0).
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
            && libc::CPU_ISSET(0, &set)
            && libc::CPU_ISSET(1, &set)
    };
    if !allowed {
        return Err("CPUs 0 and 1 are not both available to this process".into());
    }
    let runs = |bin: &str, arg: &str| {
        std::process::Command::new(bin).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    };
    for (bin, arg) in [("taskset", "--version"), (args.wrk.as_str(), "--version"), (args.oha.as_str(), "--version")] {
        if !runs(bin, arg) {
            return Err(format!("{bin} is not installed"));
        }
    }
    Ok(())
}

/// (4) the way an API's latency is measured: the generator never shares a core with it. A second
/// API process joins `live` (same namespace and database, so its cache fills from the same
/// fanouts), pinned to CPU 0 with one runtime worker; wrk pinned to CPU 1 finds its max rate,
/// then oha pinned to CPU 1 sends half of that open-loop, evenly spaced, with latency counted
/// from each request's intended send time (`--latency-correction`, coordinated omission).
async fn pinned_half_load(
    args: &BenchArgs,
    secs: u64,
    live: &mut Live,
    bin: &Path,
    out: &Path,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut api = tokio::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .arg("rest-api")
        .envs(live.env.iter().cloned())
        .env("APQ_API_BIND", "127.0.0.1:0")
        .env("APQ_INSTANCE_ID", "rest-api-pinned")
        .env("TOKIO_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(out.join("rest-api-pinned.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the pinned API (taskset, util-linux)")?;
    let mut stdout = BufReader::new(api.stdout.take().context("stdout is piped")?).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await? {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(p) = v["http_port"].as_u64()
            {
                return Ok::<_, std::io::Error>(Some(p));
            }
        }
        Ok(None)
    })
    .await
    .context("the pinned API did not announce a port within 30 s")??
    .context("the pinned API exited before announcing a port")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = harness::api::ApiClient::new(&base, Some(live.token.clone()))?;
    let mut ready = false;
    for _ in 0..100 {
        if client.latest("sensor-1", "A").await.is_ok_and(|r| r.status == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!("the pinned API at {base} served no latest Feature A within 10 s");
    }
    // The API serves `latest` from memory; the pipeline's own processes would only wake up on
    // either core and preempt the API or the generator (p99 from intended send times measured
    // 5–9 ms with them running, 1.6–3 ms without).
    live.stop_pipeline().await;
    let url = format!("{base}/v1/sensors/sensor-1/features/latest?type=A");
    let c = args.connections;
    eprintln!("bench: (4) API pinned to CPU 0; wrk pinned to CPU 1 for its max rate, {c} connections, {secs} s");
    let bar = crate::progress::timed("bench: (4) wrk max rate", secs);
    let max = wrk_on(&["taskset", "-c", "1", args.wrk.as_str()], 1, &url, &live.token, c, secs).await?;
    drop(bar);
    let rate = (max.rps / 2.0).round();
    eprintln!("bench: (4) oha pinned to CPU 1, {rate:.0} rps open-loop (50% of {:.0}), {secs} s", max.rps);
    let bar = crate::progress::timed("bench: (4) oha, two runs", 2 * secs);
    let corrected = oha(&args.oha, &url, &live.token, c, secs, rate, true).await?;
    let raw = oha(&args.oha, &url, &live.token, c, secs, rate, false).await?;
    drop(bar);
    let figures = json!({
        "generator": "oha, API and generator on separate cores",
        "max_rps_wrk": max.rps,
        "target_rps": rate,
        "corrected": corrected,
        "raw": raw,
    });
    let busy = |f: &OhaFigure| f.generator_core_busy.map_or("?".to_string(), |b| format!("{:.0} %", b * 100.0));
    let mut line = format!(
        "(4) REST latest p99 at 50% of max, API alone on CPU 0, generator on CPU 1: {rate:.0} of {:.0} rps (wrk), achieved {:.0}: per-request p99 {:.2} ms (generator core {}), from intended send times p99 {:.2} ms (p50 {:.2}, p99.9 {:.2}; generator core {}) (expected p99 ≤ 5 ms)",
        max.rps,
        corrected.rps,
        raw.p99_ms,
        busy(&raw),
        corrected.p99_ms,
        corrected.p50_ms,
        corrected.p999_ms,
        busy(&corrected)
    );
    if corrected.generator_core_busy.is_some_and(|b| b >= GENERATOR_SATURATED) {
        line.push_str(
            " — the generator's core was saturated, so the schedule's delays are the generator's; \
             per-request latency (which also includes them) is the API's upper bound",
        );
    }
    Ok((figures, line))
}

/// Above this share of its core busy, a generator falls behind its own schedule.
const GENERATOR_SATURATED: f64 = 0.9;

/// One oha run's figures, in ms.
#[derive(Debug, Clone, serde::Serialize)]
struct OhaFigure {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Share of the generator's core (CPU 1) that was busy: near 1, the generator, not the API,
    /// set the schedule's delays, and latency from intended send times measures the generator.
    generator_core_busy: Option<f64>,
}

/// oha pinned to CPU 1 at `rate` requests/s for `secs`, JSON output parsed.
async fn oha(
    bin: &str,
    url: &str,
    token: &str,
    c: usize,
    secs: u64,
    rate: f64,
    correct: bool,
) -> anyhow::Result<OhaFigure> {
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", "1", bin, "--no-tui", "--output-format", "json", "-z", &format!("{secs}s"), "-c", &c.to_string()])
        .args(["-q", &format!("{rate:.0}"), "-H", &format!("Authorization: Bearer {token}")]);
    if correct {
        cmd.arg("--latency-correction");
    }
    let stat = || std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let before = stat();
    let out = cmd.arg(url).output().await.with_context(|| format!("running {bin} (cargo install oha)"))?;
    let generator_core_busy = crate::cpu::core_busy(&before, &stat(), 1);
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing oha's JSON")?;
    let codes = &v["statusCodeDistribution"];
    if codes.as_object().is_some_and(|m| m.keys().any(|k| k != "200")) {
        bail!("oha saw answers other than 200: {codes}");
    }
    let ms = |p: &serde_json::Value| p.as_f64().map(|s| s * 1e3).context("a latency missing from oha's JSON");
    let p = &v["latencyPercentiles"];
    Ok(OhaFigure {
        rps: v["summary"]["requestsPerSec"].as_f64().context("no requestsPerSec in oha's JSON")?,
        p50_ms: ms(&p["p50"])?,
        p99_ms: ms(&p["p99"])?,
        p999_ms: ms(&p["p99.9"])?,
        max_ms: ms(&v["summary"]["slowest"])?,
        generator_core_busy,
    })
}

/// goose users hammering one GET; with `rate`, paced open-loop at that many requests/s.
///
/// Pacing is our own, not goose's `--throttle-requests`: that releases tokens in 10 ms bursts
/// (270 at once at 27k rps), so every user fires together and the measured tail is the burst's
/// queue, not the API's. Here user `u` sends its k-th request at slot `k·users + u` of an even
/// schedule, and latency also counts from that intended time (coordinated omission).
async fn goose_http(
    host: &str,
    token: &str,
    path: &'static str,
    users: usize,
    secs: u64,
    rate: Option<f64>,
    out: &Path,
) -> anyhow::Result<(HttpFigure, Latency)> {
    let latency = Arc::new(Mutex::new(match rate {
        Some(r) => Latency::intended(Duration::from_secs_f64(1.0 / r)),
        None => Latency::new(),
    }));
    let t0: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let f: TransactionFunction = {
        let (latency, auth) = (latency.clone(), format!("Bearer {token}"));
        Arc::new(move |user| {
            let (latency, auth, t0) = (latency.clone(), auth.clone(), t0.clone());
            Box::pin(async move {
                let intended = match rate {
                    Some(rate) => {
                        let (n, u, k) =
                            (users as u64, (user.weighted_users_index % users) as u64, user.get_iterations() as u64);
                        // goose launches users at `users × 10`/s: the schedule starts once all
                        // run, or the last ones would begin up to 100 ms behind it.
                        let start = *t0.get_or_init(|| Instant::now() + Duration::from_millis(100));
                        let due = start + Duration::from_secs_f64((k * n + u) as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        Some(due)
                    }
                    None => None,
                };
                let rb = user.get_request_builder(&GooseMethod::Get, path)?.header("authorization", auth);
                let req = GooseRequest::builder().set_request_builder(rb).name("latest").build();
                let started = Instant::now();
                let goose = user.request(req).await?;
                if let Ok(resp) = goose.response {
                    let ok = resp.status().as_u16() == 200;
                    let _ = resp.bytes().await;
                    if ok {
                        let now = Instant::now();
                        let mut l = latency.lock().unwrap_or_else(PoisonError::into_inner);
                        match intended {
                            Some(due) => l.record_pair(now - started, now.saturating_duration_since(due), now),
                            None => l.record_at(now - started, now),
                        }
                    }
                }
                Ok(())
            })
        })
    };
    let mut a: Vec<String> = [
        "--host",
        host,
        "--users",
        &users.to_string(),
        "--increase-rate",
        &(users * 10).to_string(),
        "--run-time",
        &format!("{secs}s"),
        "--quiet",
        "--no-print-metrics",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let label = if rate.is_some() { "half" } else { "max" };
    a.extend(["--report-file".to_string(), out.join(format!("goose-bench-{label}.html")).display().to_string()]);
    let config = attack::config_from(&a)?;
    let scenario = Scenario::new("BenchLatest").register_transaction(Transaction::new(f).set_name("latest"));
    let started = Instant::now();
    let m: GooseMetrics = attack::run(config, vec![scenario]).await?;
    let (n, goose_secs) = attack::totals(&m);
    let secs_measured = if goose_secs > 0.0 { goose_secs } else { started.elapsed().as_secs_f64() };
    let l = latency.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok((HttpFigure { rps: n as f64 / secs_measured, p99_ms: Some(l.summary().raw.p99_ms) }, l))
}

/// wrk with 2 threads (one per core) and `c` connections.
async fn wrk(bin: &str, url: &str, token: &str, c: usize, secs: u64) -> anyhow::Result<HttpFigure> {
    wrk_on(&[bin], 2, url, token, c, secs).await
}

/// wrk run through `command` (the binary last, e.g. behind `taskset -c 1`) with `threads`.
async fn wrk_on(
    command: &[&str],
    threads: usize,
    url: &str,
    token: &str,
    c: usize,
    secs: u64,
) -> anyhow::Result<HttpFigure> {
    let (program, args) = command.split_first().context("empty wrk command")?;
    let bin = command.last().copied().unwrap_or("wrk");
    let out = tokio::process::Command::new(program)
        .args(args)
        .args([
            &format!("-t{threads}"),
            &format!("-c{c}"),
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output()
        .await
        .with_context(|| format!("running {bin} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx answers: {text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    let p99_ms = text.lines().find_map(|l| l.trim().strip_prefix("99%")).and_then(|v| parse_wrk_time(v.trim()));
    Ok(HttpFigure { rps, p99_ms })
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn parse_wrk_time(v: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * factor)
}

/// Locust headless, `HttpUser` without wait time, `c` users.
async fn locust(
    bin: &str,
    host: &str,
    path: &str,
    token: &str,
    c: usize,
    secs: u64,
    out: &Path,
) -> anyhow::Result<HttpFigure> {
    let file = out.join("locustfile.py");
    std::fs::write(
        &file,
        format!(
            "from locust import HttpUser, task\n\nclass Latest(HttpUser):\n    @task\n    def latest(self):\n        self.client.get({path:?}, headers={{'Authorization': 'Bearer {token}'}}, name='latest')\n"
        ),
    )?;
    let csv: PathBuf = out.join("locust");
    let status = tokio::process::Command::new(bin)
        .args([
            "-f",
            &file.display().to_string(),
            "--headless",
            "-u",
            &c.to_string(),
            "-r",
            &(c * 10).to_string(),
            "-t",
            &format!("{secs}s"),
        ])
        .args(["--host", host, "--csv", &csv.display().to_string(), "--only-summary", "--loglevel", "ERROR"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {bin} (scripts/bench.sh installs Locust into target/locust-venv)"))?;
    let stats = std::fs::read_to_string(out.join("locust_stats.csv"))
        .with_context(|| format!("Locust wrote no stats (exit {status})"))?;
    let mut lines = stats.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let row: Vec<&str> =
        lines.find(|l| l.contains("Aggregated")).context("no Aggregated row in Locust stats")?.split(',').collect();
    let rps = col("Requests/s").and_then(|i| row.get(i)?.parse().ok()).context("no Requests/s in Locust stats")?;
    let p99_ms = col("99%").and_then(|i| row.get(i)?.parse().ok());
    Ok(HttpFigure { rps, p99_ms })
}

/// The tap's latency figures (ms).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TapLatency {
    /// Messages measured.
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Publish → the bare consumer's delivery, p99 (the broker's own part, for scale).
    pub bare_p99_ms: f64,
}

/// Method: a private namespace; a harness [`harness::amqp::Tap`] and a bare lapin consumer
/// (own connection, no-ack, records the instant each delivery arrives, nothing else) both bound
/// to the same `features_a` fanout; contract-valid Feature A messages published paced at `rate`.
/// The broker delivers both copies at the same moment, so per message (tap's `arrived` − bare
/// arrival) is what the tap adds: its connection's reader, the JSON parse and schema validation,
/// the store and the wake-up. Both run in this process, on one monotonic clock.
async fn tap_latency(opts: &LoadOpts, n: usize, rate: f64) -> anyhow::Result<TapLatency> {
    use harness::amqp::{Source, Tap, Topology};
    let names = Names::new(&format!("bench-tap-{:08x}", rand::random::<u32>()));
    eprintln!("bench: tap latency, {n} messages at {rate:.0}/s on {}", names.features_a());
    let tap = Tap::start(&opts.amqp_url, &names, Topology::Owned).await?;
    let conn = harness::amqp::connect(&opts.amqp_url, "load-bench-bare").await?;
    let ch = conn.create_channel().await?;
    let own = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let q = ch.queue_declare("".into(), own, FieldTable::default()).await?.name().to_string();
    ch.queue_bind(
        q.as_str().into(),
        names.features_a().as_str().into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = ch.basic_consume(q.as_str().into(), "".into(), no_ack, FieldTable::default()).await?;
    let bare = tokio::spawn(async move {
        let mut got = std::collections::HashMap::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let at = Instant::now();
                    if let Some(id) = d.properties.message_id() {
                        got.insert(id.to_string(), at);
                    }
                }
                _ => break,
            }
        }
        got
    });
    let pch = contract::amqp::confirm_channel(&conn).await?;
    let samples = vec![0.25f32; 1600];
    let chunk = AudioChunk::from_samples("bench-tap", 0, chrono::Utc::now(), 16_000, 1, Encoding::PcmF32le, &samples);
    let mut feature = harness::signal::feature_a_for(&chunk, "bench", chrono::Utc::now())?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut published = std::collections::HashMap::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        feature.message_id = uuid::Uuid::new_v4();
        feature.sequence = i as u64;
        let body = serde_json::to_vec(&feature)?;
        let id = feature.message_id.to_string();
        let props = contract::amqp::json_properties(&id, "feature_a/v1", "bench-tap");
        published.insert(id.clone(), Instant::now());
        // Confirms are awaited once at the end: the schedule must not wait for the broker.
        let to = names.features_a();
        pch.basic_publish(to.as_str().into(), "".into(), Default::default(), &body, props).await?;
    }
    pch.wait_for_confirms().await?;
    let bare = bare.await?;
    // Every message the bare consumer saw must reach the tap too (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    let captured = loop {
        let c = tap.matching(|m| m.source == Source::FeatureA);
        if c.len() >= bare.len() || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut deltas, mut bare_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for c in &captured {
        let Some(id) = c.amqp_message_id.as_deref() else { continue };
        if let Some(b) = bare.get(id) {
            // Signed: either copy may be delivered first.
            let d = c.arrived.saturating_duration_since(*b).as_secs_f64()
                - b.saturating_duration_since(c.arrived).as_secs_f64();
            deltas.push(d * 1e3);
            if let Some(p) = published.get(id) {
                bare_lat.push(b.saturating_duration_since(*p).as_secs_f64() * 1e3);
            }
        }
    }
    harness::amqp::delete_namespace(&conn, &names).await;
    conn.close(200, "bench done".into()).await.ok();
    if deltas.len() < n {
        bail!("tap latency: only {} of {n} messages reached both the tap and the bare consumer", deltas.len());
    }
    let s = crate::waterfall::stats("tap", "tap", &deltas, &vec![false; deltas.len()]);
    let b = crate::waterfall::stats("bare", "bare", &bare_lat, &vec![false; bare_lat.len()]);
    Ok(TapLatency {
        count: deltas.len(),
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        p999_ms: s.p999_ms,
        max_ms: s.max_ms,
        bare_p99_ms: b.p99_ms,
    })
}

/// Single-queue publish (persistent, confirm per message, `publishers` channels) + consume (one
/// consumer, prefetch 32, ack per message) of `n` messages of `bytes` bytes; msgs/s.
async fn raw_broker(opts: &LoadOpts, n: u64, bytes: usize, publishers: usize) -> anyhow::Result<f64> {
    let conn = harness::amqp::connect(&opts.amqp_url, "load-bench-raw").await?;
    let queue = format!("bench-raw-{:08x}", rand::random::<u32>());
    let ch = conn.create_channel().await?;
    contract::topology::durable_queue(&ch, &queue).await?;
    ch.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let samples = vec![0.25f32; 1600];
    let chunk = AudioChunk::from_samples("bench", 0, chrono::Utc::now(), 16_000, 1, Encoding::PcmF32le, &samples);
    let mut body = serde_json::to_vec(&chunk)?;
    body.resize(bytes.max(1), b' ');
    let body = Arc::new(body);
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            match consumer.next().await {
                Some(Ok(d)) => {
                    d.ack(BasicAckOptions::default()).await?;
                    got += 1;
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => break,
            }
        }
        Ok::<_, anyhow::Error>((got, Instant::now()))
    });
    let per = n.div_ceil(publishers as u64);
    let mut tasks = Vec::new();
    for p in 0..publishers as u64 {
        let (conn_ch, body, queue) = (contract::amqp::confirm_channel(&conn).await?, body.clone(), queue.clone());
        let count = per.min(n.saturating_sub(p * per));
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let props = contract::amqp::json_properties(&format!("{p}-{i}"), "audio_chunk/v1", "bench");
                contract::amqp::publish_confirmed(&conn_ch, "", &queue, &body, props).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (got, last) =
        tokio::time::timeout(Duration::from_secs(120), consume).await.context("raw consumer timed out")???;
    let _ = ch.queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default()).await;
    if got < n {
        bail!("raw broker benchmark consumed {got} of {n}");
    }
    Ok(n as f64 / (last - started).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("1.23ms", Some(1.23))]
    #[case("850.00us", Some(0.85))]
    #[case("1.02s", Some(1020.0))]
    #[case("fast", None)]
    fn wrk_times(#[case] v: &str, #[case] ms: Option<f64>) {
        let got = parse_wrk_time(v);
        assert_eq!(got.map(|g| (g * 1000.0).round()), ms.map(|m| (m * 1000.0).round()));
    }
}
