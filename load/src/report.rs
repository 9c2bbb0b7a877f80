//! The run's report model and its writers: `sla-summary.json`, `junit.xml` (one test case per
//! gate), `index.html` (pass/fail table, latency plots, trend) and the console table.

use crate::cpu::CpuUsage;
use crate::reconcile::StageReconciliation;
use crate::sla::{GateResult, Verdict, fmt_num, tally};
use crate::stats::{Latency, LatencySummary, SeriesPoint};
use crate::trend::Delta;
use anyhow::Context as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Throughput of one phase: what was offered (target rate) and what was achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// The phase, e.g. `rest (goose)` or `burst publish`.
    pub name: String,
    /// Target rate per second; `None` for closed-loop phases (as fast as answered).
    pub offered_per_sec: Option<f64>,
    /// Achieved rate per second.
    pub achieved_per_sec: f64,
    /// Operations counted.
    pub count: u64,
    /// Seconds measured.
    pub secs: f64,
}

/// One worker of a distributed run, for the per-worker breakdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerBreakdown {
    /// Completion index.
    pub index: usize,
    /// Host (pod) name.
    pub host: String,
    /// Its users.
    pub users: usize,
    /// Its share of the target rate (0 = closed loop).
    pub rate_share: u64,
    /// Answers/s it achieved.
    pub achieved_per_sec: f64,
    /// Valid answers.
    pub ok: u64,
    /// Errors.
    pub errors: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Its own median, ms.
    pub p50_ms: f64,
    /// Its own p99, ms (for spotting a slow worker; the gates use the merged histogram).
    pub p99_ms: f64,
    /// Its own CO-corrected p99, ms.
    pub p99_corrected_ms: f64,
    /// CPU seconds its process used.
    pub cpu_secs: f64,
    /// Seconds from its first to its last answer.
    pub secs: f64,
    /// When its goose run started (RFC 3339).
    pub started_at: Option<String>,
}

/// The per-worker table printed after a merge.
pub fn workers_table(workers: &[WorkerBreakdown]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<40} {:>5} {:>6} {:>10} {:>10} {:>8} {:>7} {:>8} {:>9} {:>13} {:>8}",
        "worker",
        "users",
        "rate",
        "achieved/s",
        "ok",
        "errors",
        "rate-limited (429)",
        "p50 ms",
        "p99 ms",
        "p99 CO ms",
        "cpu s"
    );
    for w in workers {
        let _ = writeln!(
            s,
            "{:<40} {:>5} {:>6} {:>10.1} {:>10} {:>8} {:>7} {:>8.3} {:>9.3} {:>13.3} {:>8.2}",
            format!("{} {}", w.index, w.host),
            w.users,
            w.rate_share,
            w.achieved_per_sec,
            w.ok,
            w.errors,
            w.rate_limited,
            w.p50_ms,
            w.p99_ms,
            w.p99_corrected_ms,
            w.cpu_secs
        );
    }
    s
}

/// One latency measurement: percentiles plus what the plots need.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Raw and CO-corrected percentiles.
    #[serde(flatten)]
    pub summary: LatencySummary,
    /// Per-second p50/p99/max.
    pub series: Vec<SeriesPoint>,
    /// (upper edge ms, count) buckets; not serialized (plots only).
    #[serde(skip)]
    pub distribution: Vec<(f64, u64)>,
}

impl LatencyReport {
    /// Snapshot of a recorder.
    pub fn of(l: &Latency) -> Self {
        LatencyReport { summary: l.summary(), series: l.series(), distribution: l.distribution() }
    }
}

/// Everything a run produced, written as `sla-summary.json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    /// Short random id of the run (namespaces, database names).
    pub run_id: String,
    /// RFC 3339 start time (UTC).
    pub started_at: String,
    /// RFC 3339 end time (UTC).
    pub finished_at: String,
    /// The command line.
    pub command: Vec<String>,
    /// The REST target, when REST gates ran.
    pub host: Option<String>,
    /// `floor` or `target`.
    pub sla_profile: String,
    /// Workload name from `sla.toml`.
    pub workload: String,
    /// Cores of this machine.
    pub machine_cores: usize,
    /// Gate results in run order.
    pub gates: Vec<GateResult>,
    /// Gates passed / failed / skipped.
    pub passed: usize,
    /// Gates that failed.
    pub failed: usize,
    /// Gates that did not apply.
    pub skipped: usize,
    /// Latency measurements by name.
    pub latencies: BTreeMap<String, LatencyReport>,
    /// Throughput per phase, achieved vs offered.
    pub throughput: Vec<Throughput>,
    /// REST responses by status ("200", "404", "transport", "invalid body", …); 429 is here too.
    pub responses_by_status: BTreeMap<String, u64>,
    /// Requests answered 429 (rate limited; not errors).
    pub rate_limited: u64,
    /// Requests counted as errors (not 2xx-and-valid, not 429).
    pub errors: u64,
    /// Error budget used, percent of the `rest_error_rate` allowance.
    pub error_budget_used_pct: Option<f64>,
    /// Reconciliation per pipeline stage.
    pub reconciliation: Vec<StageReconciliation<Uuid>>,
    /// Load generator CPU over the whole run.
    pub load_generator_cpu: CpuUsage,
    /// Goose report files written.
    pub goose_reports: Vec<String>,
    /// Free-form figures (instance distribution, sizes, …).
    pub notes: BTreeMap<String, serde_json::Value>,
    /// The previous run's summary compared with.
    pub previous_run: Option<String>,
    /// Deltas against it.
    pub trend: Vec<Delta>,
    /// Why the trend may mislead (the previous run had another load shape), shown in the page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend_warning: Option<String>,
    /// Per-worker breakdown of distributed runs (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerBreakdown>,
    /// The paced run's per-hop latency waterfall (pipeline gates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waterfall: Option<crate::waterfall::Waterfall>,
}

impl RunReport {
    /// Recounts passed/failed/skipped from the gates.
    pub fn recount(&mut self) {
        let (p, f) = tally(&self.gates);
        self.passed = p;
        self.failed = f;
        self.skipped = self.gates.iter().filter(|g| g.verdict == Verdict::Skipped).count();
    }

    /// Names of the failed gates.
    pub fn failed_gates(&self) -> Vec<&str> {
        self.gates.iter().filter(|g| g.verdict == Verdict::Fail).map(|g| g.name.as_str()).collect()
    }
}

/// `args` with secrets masked: the value of `--token`/`--results-url` (and `--x=value` forms),
/// and any password in a URL (`scheme://user:***@host`).
pub fn mask_args(args: &[String]) -> Vec<String> {
    const SECRET: [&str; 2] = ["--token", "--results-url"];
    let mut out = Vec::with_capacity(args.len());
    let mut next_secret = false;
    for a in args {
        if next_secret {
            out.push("***".to_owned());
            next_secret = false;
        } else if SECRET.contains(&a.as_str()) {
            out.push(a.clone());
            next_secret = true;
        } else if let Some((flag, _)) = a.split_once('=').filter(|(f, _)| SECRET.contains(f)) {
            out.push(format!("{flag}=***"));
        } else {
            out.push(redact_url(a));
        }
    }
    out
}

/// A URL's password replaced by `***` (`scheme://user:***@host…`); other text unchanged.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(at)) if at > i && s[i + 3..at].contains(':') && !s[i + 3..at].contains('/') => {
            let user = s[i + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &s[..i + 3], &s[at..])
        }
        _ => s.to_owned(),
    }
}

/// The share of answers that were rate limited (429), in percent, when there were answers.
pub fn rate_limited_pct(r: &RunReport) -> Option<f64> {
    let total: u64 = r.responses_by_status.values().sum();
    (total > 0).then(|| r.rate_limited as f64 / total as f64 * 100.0)
}

/// A loud line when most answers were 429: latency and error figures then describe the rate
/// limiter, not the API.
pub fn rate_limited_banner(r: &RunReport) -> Option<String> {
    let pct = rate_limited_pct(r)?;
    (pct > 50.0).then(|| {
        format!(
            "MOSTLY RATE-LIMITED: {pct:.0}% of {} REST answers were 429; the figures describe the rate limiter, not the API (use more tokens, a lower rate, or lift the limit)",
            r.responses_by_status.values().sum::<u64>()
        )
    })
}

/// Writes `sla-summary.json`, `junit.xml` and `index.html` into `dir`; returns their paths.
/// Secrets in the command line and URLs are masked in all three.
pub fn write_all(dir: &Path, report: &RunReport) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut masked = report.clone();
    masked.command = mask_args(&report.command);
    masked.host = report.host.as_deref().map(redact_url);
    let report = &masked;
    let summary = dir.join("sla-summary.json");
    std::fs::write(&summary, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", summary.display()))?;
    let junit = dir.join("junit.xml");
    std::fs::write(&junit, junit_xml(report)).with_context(|| format!("writing {}", junit.display()))?;
    let html = dir.join("index.html");
    std::fs::write(&html, html_page(report)?).with_context(|| format!("writing {}", html.display()))?;
    Ok(vec![summary, junit, html])
}

/// XML-escapes text for attributes and bodies.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML (quick-junit): one test case per gate, each with its own time; the suite's and the
/// report's time is the run's wall time (gates overlap, so their times are never summed).
/// Failures carry observed vs threshold.
pub fn junit_xml(r: &RunReport) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let wall = match (
        chrono::DateTime::parse_from_rfc3339(&r.started_at),
        chrono::DateTime::parse_from_rfc3339(&r.finished_at),
    ) {
        (Ok(a), Ok(b)) => (b - a).to_std().ok(),
        _ => None,
    };
    let wall = wall.unwrap_or_else(|| {
        // No times (tests): the longest gate is the best lower bound.
        Duration::from_secs_f64(r.gates.iter().map(|g| g.elapsed_secs).fold(0.0, f64::max))
    });
    let mut report = Report::new("load");
    report.set_time(wall);
    let mut suite = TestSuite::new(format!("sla.{}", r.sla_profile));
    suite.set_time(wall);
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.started_at) {
        suite.set_timestamp(t);
    }
    for g in &r.gates {
        let msg = format!("{}: observed {} vs {} ({})", g.name, g.observed_text(), g.threshold, g.key);
        let status = match g.verdict {
            Verdict::Pass => TestCaseStatus::success(),
            Verdict::Fail => {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(msg.clone()).set_type("SlaBreach").set_description(g.detail.clone());
                st
            }
            Verdict::Skipped => {
                let mut st = TestCaseStatus::skipped();
                st.set_message(g.detail.clone());
                st
            }
        };
        let mut case = TestCase::new(g.name.clone(), status);
        case.set_classname(format!("sla.{}", r.sla_profile));
        case.set_time(Duration::from_secs_f64(g.elapsed_secs.max(0.0)));
        if g.verdict == Verdict::Pass {
            case.set_system_out(format!("{msg}; {}", g.detail));
        }
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    report.to_string().unwrap_or_else(|e| format!("<!-- junit serialization failed: {e} -->"))
}

/// The HTML page: verdict, gate table, trend, throughput, latency percentiles and plots.
pub fn html_page(r: &RunReport) -> anyhow::Result<String> {
    let mut h = String::new();
    let verdict = if r.failed == 0 { "PASS" } else { "FAIL" };
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>SLA {verdict} – load {}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#eee}}\
         .pass{{background:#d8f5d8}}.fail{{background:#f8d0d0}}.skipped{{background:#eee}}.reg{{color:#b00;font-weight:bold}}\
         .plots{{display:flex;flex-wrap:wrap;gap:1em}}</style></head><body>\n",
        xml(&r.started_at)
    );
    if let Some(banner) = rate_limited_banner(r) {
        let _ = writeln!(h, "<p class=\"fail\" id=\"rate-limited\"><b>{}</b></p>", xml(&banner));
    }
    if let Some(w) = &r.trend_warning {
        let _ = writeln!(h, "<p class=\"skipped\" id=\"trend-warning\"><b>Trend:</b> {}</p>", xml(w));
    }
    let _ = writeln!(
        h,
        "<h1>SLA {verdict}: {} passed, {} failed, {} skipped</h1>\n<p>run <code>{}</code>, {} → {}, profile <b>{}</b>, workload <b>{}</b>, host {}, load generator CPU {:.2} cores ({:.0}% of {} cores)</p>\n<p><code>{}</code></p>",
        r.passed,
        r.failed,
        r.skipped,
        xml(&r.run_id),
        xml(&r.started_at),
        xml(&r.finished_at),
        xml(&r.sla_profile),
        xml(&r.workload),
        xml(r.host.as_deref().unwrap_or("(none)")),
        r.load_generator_cpu.cores,
        r.load_generator_cpu.machine_pct,
        r.machine_cores,
        xml(&r.command.join(" "))
    );
    h.push_str("<h2>Gates</h2>\n<table><tr><th>gate</th><th>verdict</th><th>observed</th><th>threshold</th><th>budget used</th><th>vs previous</th><th>detail</th></tr>\n");
    for g in &r.gates {
        let class = match g.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skipped",
        };
        let delta = r.trend.iter().find(|d| d.gate == g.name);
        let trend = match delta {
            Some(d) => match (d.previous, d.change_pct) {
                (Some(p), Some(pct)) => format!(
                    "{}{} ({:+.1}%){}",
                    fmt_num(p),
                    g.threshold.unit.suffix(),
                    pct,
                    if d.regression { " <span class=\"reg\">REGRESSION</span>" } else { "" }
                ),
                (Some(p), None) => format!(
                    "{}{}",
                    fmt_num(p),
                    if d.regression { " <span class=\"reg\">REGRESSION</span>" } else { "" }
                ),
                _ => "–".into(),
            },
            None => "–".into(),
        };
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{trend}</td><td>{}</td></tr>",
            xml(&g.name),
            class.to_uppercase(),
            xml(&g.observed_text()),
            xml(&g.threshold.to_string()),
            g.budget_used_pct.map(|b| format!("{b:.1}%")).unwrap_or_else(|| "–".into()),
            xml(&g.detail)
        );
    }
    h.push_str("</table>\n");
    if let Some(prev) = &r.previous_run {
        let _ = writeln!(h, "<p>Compared with the previous run: <code>{}</code></p>", xml(prev));
    }
    if !r.throughput.is_empty() {
        h.push_str("<h2>Throughput</h2>\n<table><tr><th>phase</th><th>offered/s</th><th>achieved/s</th><th>count</th><th>seconds</th></tr>\n");
        for t in &r.throughput {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td></tr>",
                xml(&t.name),
                t.offered_per_sec.map(|o| format!("{o:.1}")).unwrap_or_else(|| "closed loop".into()),
                t.achieved_per_sec,
                t.count,
                t.secs
            );
        }
        h.push_str("</table>\n");
    }
    if !r.workers.is_empty() {
        h.push_str("<h2>Workers</h2>\n<p>Gates use the merged histograms (added, not averaged); these are each worker's own figures.</p>\n<table><tr><th>worker</th><th>users</th><th>rate share/s</th><th>achieved/s</th><th>ok</th><th>errors</th><th>rate-limited (429)</th><th>p50 ms</th><th>p99 ms</th><th>p99 CO-corrected ms</th><th>CPU s</th><th>started</th></tr>\n");
        for w in &r.workers {
            let _ = writeln!(
                h,
                "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.2}</td><td>{}</td></tr>",
                w.index,
                xml(&w.host),
                w.users,
                w.rate_share,
                w.achieved_per_sec,
                w.ok,
                w.errors,
                w.rate_limited,
                w.p50_ms,
                w.p99_ms,
                w.p99_corrected_ms,
                w.cpu_secs,
                xml(w.started_at.as_deref().unwrap_or("–"))
            );
        }
        h.push_str("</table>\n");
    }
    if !r.responses_by_status.is_empty() {
        let _ = write!(
            h,
            "<h2>REST responses</h2>\n<p>rate limited (429, not errors): {} ({}); errors: {}; error budget used: {}</p>\n<table><tr><th>status</th><th>count</th></tr>\n",
            r.rate_limited,
            rate_limited_pct(r).map(|p| format!("{p:.1}% of answers")).unwrap_or_else(|| "–".into()),
            r.errors,
            r.error_budget_used_pct.map(|b| format!("{b:.1}%")).unwrap_or_else(|| "–".into())
        );
        for (s, n) in &r.responses_by_status {
            let label = if s == "429" { "429 (rate-limited, not an error)".to_owned() } else { s.clone() };
            let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", xml(&label));
        }
        h.push_str("</table>\n");
    }
    if !r.reconciliation.is_empty() {
        h.push_str("<h2>Reconciliation</h2>\n<table><tr><th>stage</th><th>published</th><th>seen</th><th>lost</th><th>duplicated</th><th>stray</th><th>first lost ids</th></tr>\n");
        for s in &r.reconciliation {
            let ids: Vec<String> = s.lost.iter().take(3).map(|u| u.to_string()).collect();
            let _ = writeln!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if s.is_clean() { "pass" } else { "fail" },
                xml(&s.stage),
                s.published,
                s.seen,
                s.lost_count,
                s.duplicated_count,
                s.stray_count,
                xml(&ids.join(", "))
            );
        }
        h.push_str("</table>\n");
    }
    if !r.latencies.is_empty() {
        h.push_str("<h2>Latency (ms)</h2>\n<table><tr><th>measurement</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>p99 CO-corrected</th><th>p99.9 CO-corrected</th><th>max CO-corrected</th><th>expected interval</th></tr>\n");
        for (name, l) in &r.latencies {
            let (raw, cor) = (&l.summary.raw, &l.summary.corrected);
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                xml(name),
                raw.count,
                raw.p50_ms,
                raw.p90_ms,
                raw.p99_ms,
                raw.p999_ms,
                raw.max_ms,
                cor.p99_ms,
                cor.p999_ms,
                cor.max_ms,
                if l.summary.expected_interval_ms > 0.0 {
                    format!("{:.3}", l.summary.expected_interval_ms)
                } else {
                    "none (closed loop)".into()
                }
            );
        }
        h.push_str("</table>\n<h2>Plots</h2>\n");
        for (name, l) in &r.latencies {
            // No empty plots: a measurement without samples gets none, and one shorter than two
            // seconds no over-time plot (one point is not a line).
            if l.summary.raw.count == 0 || l.distribution.is_empty() {
                continue;
            }
            let limit = latency_limit(r, name);
            let text = limit.map(|(ms, key)| format!("SLA {key}: p99 <= {} ms", fmt_num(ms)));
            let limit = limit.zip(text.as_deref()).map(|((ms, _), t)| (ms, t));
            let _ = writeln!(h, "<h3>{}</h3>\n<div class=\"plots\">", xml(name));
            h.push_str(&crate::plots::histogram_svg(&format!("{name}: distribution"), &l.distribution, limit)?);
            if l.series.len() >= 2 {
                h.push_str(&crate::plots::over_time_svg(&format!("{name}: over time"), &l.series, limit)?);
            } else {
                h.push_str("<p>(under two seconds of samples: no over-time plot)</p>");
            }
            h.push_str("</div>\n");
        }
    }
    if let Some(w) = &r.waterfall {
        h.push_str(&waterfall_html(w));
    }
    h.push_str(&cpu_html(&r.notes));
    if !r.goose_reports.is_empty() {
        h.push_str("<h2>Goose reports</h2>\n<ul>\n");
        for g in &r.goose_reports {
            let name = Path::new(g).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| g.clone());
            let _ = writeln!(h, "<li><a href=\"{}\">{}</a></li>", xml(&name), xml(&name));
        }
        h.push_str("</ul>\n");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(h, "<h2>Notes</h2>\n<pre>{}</pre>", xml(&serde_json::to_string_pretty(&r.notes)?));
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The "CPU per chunk" section: one table per phase the notes hold a breakdown for.
fn cpu_html(notes: &BTreeMap<String, serde_json::Value>) -> String {
    let mut h = String::new();
    let phases = notes.iter().filter_map(|(k, v)| {
        let phase = k.strip_prefix("cpu_per_chunk_")?;
        Some((phase, serde_json::from_value::<crate::proc_cpu::Breakdown>(v.clone()).ok()?))
    });
    for (phase, b) in phases {
        if h.is_empty() {
            h.push_str("<h2>CPU per chunk</h2>\n<p>CPU (user + system) of each process over the phase; the shared broker and database count everything they did meanwhile. \"net\" takes off the idle pipeline's use.</p>\n");
        }
        let busy = b.machine_busy.map(|m| format!("{:.0} %", m * 100.0)).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            h,
            "<h3>{}: {} chunks in {:.1} s, machine {busy} busy</h3>\n<table><tr><th>process</th><th>cpu s</th><th>cores</th><th>µs / chunk</th><th>µs / chunk net</th></tr>",
            xml(phase),
            b.chunks,
            b.wall_secs
        );
        let net = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        for g in &b.groups {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.0}</td><td>{}</td></tr>",
                xml(&g.group),
                g.cpu_secs,
                g.cores,
                g.us_per_chunk,
                net(g.net_us_per_chunk)
            );
        }
        let _ = writeln!(
            h,
            "<tr><th>all</th><td></td><td></td><th>{:.0}</th><th>{}</th></tr>\n</table>",
            b.total_us_per_chunk,
            net(b.total_net_us_per_chunk)
        );
    }
    h
}

/// The waterfall section: a table of every segment's percentiles and means, and two stacked
/// bars (mean chunk, tail chunk) whose parts are the segments' means, so the widest part is where
/// the time goes.
fn waterfall_html(w: &crate::waterfall::Waterfall) -> String {
    const COLOURS: [&str; 10] =
        ["#bbb", "#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#e15759"];
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<h2 id=\"waterfall\">Latency waterfall (paced run)</h2>\n<p>{} of {} chunks complete; critical path via Feature B for {}; tail = the {} slowest (1 %). Each chunk's segments add up to its end-to-end time; means add up, percentiles do not.</p>",
        w.complete, w.chunks, w.critical_b, w.tail_chunks
    );
    for (title, tail) in [("mean chunk", false), ("tail chunk (slowest 1 %)", true)] {
        let total = if tail { w.end_to_end.tail_mean_ms } else { w.end_to_end.mean_ms };
        let _ = write!(
            h,
            "<p><b>{title}</b>: {total:.2} ms</p><div style=\"display:flex;width:100%;height:24px;border:1px solid #999\">"
        );
        for (i, seg) in w.segments.iter().enumerate() {
            let v = if tail { seg.tail_mean_ms } else { seg.mean_ms };
            if total > 0.0 && v > 0.0 {
                let _ = write!(
                    h,
                    "<div title=\"{}: {v:.2} ms\" style=\"width:{:.2}%;background:{}\"></div>",
                    xml(&seg.label),
                    100.0 * v / total,
                    COLOURS[i % COLOURS.len()]
                );
            }
        }
        h.push_str("</div>\n");
    }
    h.push_str("<table><tr><th></th><th>segment (ms)</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th><th>tail mean</th></tr>\n");
    let row = |h: &mut String, colour: &str, s: &crate::waterfall::SegmentStats| {
        let _ = writeln!(
            h,
            "<tr><td style=\"background:{colour}\"></td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            xml(&s.label),
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            s.mean_ms,
            s.tail_mean_ms
        );
    };
    for (i, s) in w.segments.iter().enumerate() {
        row(&mut h, COLOURS[i % COLOURS.len()], s);
    }
    row(&mut h, "#fff", &w.end_to_end);
    let _ = writeln!(
        h,
        "<tr><td></td><td>residual (end to end − Σ segments)</td><td></td><td></td><td></td><td></td><td></td><td>{:.3}</td><td>{:.3}</td></tr>",
        w.residual_mean_ms, w.residual_tail_ms
    );
    for s in &w.off_path {
        row(&mut h, "#fff", s);
    }
    h.push_str("</table>\n");
    h
}

/// The SLA p99 threshold (ms) that applies to a latency measurement, with its key: REST
/// measurements take `rest_p99`, the pipeline's publish → DB rows take `sensor_to_db_p99`.
fn latency_limit(r: &RunReport, name: &str) -> Option<(f64, &'static str)> {
    let key = if name.starts_with("rest") || name.contains("latest") || name.contains("history") {
        "rest_p99"
    } else if name.contains("DB rows") {
        "sensor_to_db_p99"
    } else {
        return None;
    };
    r.gates.iter().find(|g| g.key == key && g.threshold.unit == crate::sla::Unit::Ms).map(|g| (g.threshold.value, key))
}

/// The console table printed at the end of a run.
pub fn console_table(r: &RunReport) -> String {
    let mut s = String::new();
    if let Some(banner) = rate_limited_banner(r) {
        let _ = writeln!(s, "!! {banner}");
    }
    if let Some(w) = &r.trend_warning {
        let _ = writeln!(s, "!! trend: {w}");
    }
    let width = r.gates.iter().map(|g| g.name.len()).max().unwrap_or(10).max(10);
    let _ = writeln!(s, "{:<width$}  {:<7}  {:>14}  {:<14}  detail", "gate", "verdict", "observed", "threshold");
    for g in &r.gates {
        let verdict = match g.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "SKIP",
        };
        let reg = r.trend.iter().any(|d| d.gate == g.name && d.regression);
        let _ = writeln!(
            s,
            "{:<width$}  {:<7}  {:>14}  {:<14}  {}{}",
            g.name,
            verdict,
            g.observed_text(),
            g.threshold.to_string(),
            if reg { "[REGRESSION vs previous run] " } else { "" },
            g.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::Threshold;

    fn report() -> RunReport {
        let th: Threshold = "<= 5ms".parse().unwrap();
        let mut r = RunReport {
            sla_profile: "floor".into(),
            gates: vec![
                GateResult::judge("ok_gate", "k", th, Some(1.0), "fine"),
                GateResult::judge("bad<gate>", "k", th, Some(9.0), "a & b"),
                GateResult::skipped("skip", "k", th, "not engaged"),
            ],
            ..Default::default()
        };
        let mut l = Latency::new();
        l.record(std::time::Duration::from_millis(3));
        r.latencies.insert("x".into(), LatencyReport::of(&l));
        r.recount();
        r
    }

    #[test]
    fn tokens_are_masked_in_every_file() {
        let mut r = report();
        r.command = ["load", "--host", "http://h:1", "--token", "s3cret", "--results-url=postgres://u:pw@h/db"]
            .map(String::from)
            .to_vec();
        let dir = std::env::temp_dir().join(format!("load-mask-{}", std::process::id()));
        for f in write_all(&dir, &r).unwrap() {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("s3cret") && !text.contains(":pw@"), "{}: {text}", f.display());
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_mostly_rate_limited_run_says_so() {
        let mut r = report();
        r.responses_by_status = [("200".to_string(), 25), ("429".to_string(), 75)].into();
        r.rate_limited = 75;
        assert!(rate_limited_banner(&r).unwrap().contains("75% of 100 REST answers were 429"));
        assert!(html_page(&r).unwrap().contains("MOSTLY RATE-LIMITED"));
        assert!(html_page(&r).unwrap().contains("429 (rate-limited, not an error)"));
        assert!(console_table(&r).starts_with("!! MOSTLY RATE-LIMITED"));
        r.responses_by_status = [("200".to_string(), 95), ("429".to_string(), 5)].into();
        r.rate_limited = 5;
        assert!(rate_limited_banner(&r).is_none());
    }

    #[test]
    fn junit_time_is_the_wall_time_not_the_sum_of_overlapping_gates() {
        let mut r = report();
        r.started_at = "2026-12-04T10:00:00+00:00".into();
        r.finished_at = "2026-12-04T10:00:24+00:00".into();
        for g in &mut r.gates {
            g.elapsed_secs = 15.0;
        }
        let x = junit_xml(&r);
        assert!(
            x.contains(r#"<testsuites name="load" tests="3" skipped="1" failures="1" errors="0" time="24.000""#),
            "{x}"
        );
        assert!(x.contains(r#"time="15.000""#), "{x}");
    }

    #[test]
    fn junit_has_one_case_per_gate_and_escapes() {
        let r = report();
        let x = junit_xml(&r);
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert!(x.contains("failures=\"1\"") && x.contains("skipped=\"1\""), "{x}");
        assert!(x.contains("bad&lt;gate&gt;") && x.contains("a &amp; b"), "{x}");
        assert!(x.contains("<failure message=\"bad&lt;gate&gt;: observed 9 ms vs &lt;= 5 ms"), "{x}");
    }

    #[test]
    fn html_has_the_table_and_plots() {
        let r = report();
        let h = html_page(&r).unwrap();
        assert!(h.contains("SLA FAIL: 1 passed, 1 failed, 1 skipped"));
        assert_eq!(h.matches("<svg").count(), 1, "a histogram; one second of samples gives no over-time plot");
        assert!(h.contains("no over-time plot"));
        assert!(r.failed_gates() == vec!["bad<gate>"]);
        assert!(console_table(&r).contains("FAIL"));
    }

    #[test]
    fn html_has_a_cpu_table_per_phase_from_the_notes() {
        use crate::proc_cpu::{Breakdown, GroupCpu};
        let mut r = report();
        let g = |name: &str, us: f64| GroupCpu {
            group: name.into(),
            cpu_secs: us * 1e-3,
            us_per_chunk: us,
            cores: 0.5,
            net_us_per_chunk: Some(us - 1.0),
        };
        let b = Breakdown {
            chunks: 1000,
            wall_secs: 2.0,
            groups: vec![g("RabbitMQ <shared>", 650.0), g("algorithm-a", 240.0)],
            total_us_per_chunk: 890.0,
            total_net_us_per_chunk: Some(888.0),
            machine_busy: Some(0.95),
        };
        r.notes.insert("cpu_per_chunk_burst".into(), serde_json::json!(b));
        r.notes.insert("cpu_idle".into(), serde_json::json!({"not": "a phase"}));
        let h = html_page(&r).unwrap();
        assert_eq!(h.matches("<h2>CPU per chunk</h2>").count(), 1, "{h}");
        assert!(h.contains("burst: 1000 chunks in 2.0 s, machine 95 % busy"), "{h}");
        assert!(
            h.contains("<td>RabbitMQ &lt;shared&gt;</td><td>0.65</td><td>0.50</td><td>650</td><td>649</td>"),
            "{h}"
        );
        assert!(h.contains("<th>890</th><th>888</th>"), "{h}");
        assert!(!html_page(&report()).unwrap().contains("CPU per chunk"), "no section without breakdowns");
    }

    #[test]
    fn html_has_the_waterfall_with_bars_proportional_to_the_means() {
        use crate::waterfall::{ChunkTimes, RowTimes, build};
        let row = |r: f64, w: f64, i: f64, s: f64| RowTimes {
            received: Some(r),
            written: Some(w),
            inserted: Some(i),
            seen: Some(s),
        };
        let chunk = ChunkTimes {
            intended: 0.0,
            sent: 0.0,
            a_received: Some(1.0),
            a_sent: Some(2.0),
            b_received: Some(3.0),
            b_sent: Some(4.0),
            row_a: row(3.0, 3.0, 3.0, 5.0),
            row_b: row(5.0, 8.0, 9.0, 10.0),
        };
        let mut r = report();
        assert!(!html_page(&r).unwrap().contains("id=\"waterfall\""), "no paced run, no section");
        r.waterfall = Some(build(&[chunk], &[]));
        let h = html_page(&r).unwrap();
        assert!(h.contains("id=\"waterfall\""));
        // Batch wait: 3 of 10 ms.
        assert!(h.contains("DataWriter: batch wait until its INSERT starts: 3.00 ms\" style=\"width:30.00%"), "{h}");
        assert!(h.contains("residual"));
    }
}
