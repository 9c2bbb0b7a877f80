//! The oracle's checks of one batch, (a) and (c)–(e): accounting per consumer and publication,
//! what is stored and served, logs and exits, peak memory. (b), the canary, and the batching,
//! bisection and shrinking live in the parent module.

use super::*;
use chrono::Datelike as _;

/// The consumers of a channel, each with what marks an input as handled by it.
pub(super) fn dlqs_of(p: &Pipeline, channel: Channel) -> Vec<(&'static str, String)> {
    let n = &p.names;
    use contract::topology::Names;
    match channel {
        Channel::AudioStream => vec![("Algorithm A", n.audio_stream_dlq())],
        Channel::FeaturesA => vec![
            ("Algorithm B", Names::dlq_of(&n.algorithm_b_queue())),
            ("DataWriter", Names::dlq_of(&n.writer_queue_a())),
            ("REST API", n.rest_api_dlq()),
        ],
        Channel::FeaturesB => vec![("DataWriter", Names::dlq_of(&n.writer_queue_b())), ("REST API", n.rest_api_dlq())],
    }
}

/// (a): waits until every input is handled by every consumer, then checks exactly-once.
pub(super) async fn account(
    p: &Pipeline,
    db: &Db,
    published: &[Published],
    deadline: Instant,
) -> Result<Vec<(HostileInput, Outcome)>, Failure> {
    let fail =
        |stage: &str, message: String| Failure { stage: stage.into(), message, canary: String::new(), logs: vec![] };
    let tokens: HashMap<&str, &Published> = published.iter().map(|x| (x.token.as_str(), x)).collect();
    loop {
        let dead: Vec<Captured> = p.tap.matching(|m| {
            matches!(m.source, Source::Dlq(_))
                && m.headers.get(TOKEN_HEADER).is_some_and(|t| tokens.contains_key(t.as_str()))
        });
        let ids: Vec<Uuid> = published.iter().map(|x| x.base_id).collect();
        let mut rows = db.rows_by_message_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?;
        rows.extend(db.rows_by_source_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for x in published {
            let dl = |dlq: &str| {
                dead.iter()
                    .filter(|m| m.source == Source::Dlq(dlq.into()) && m.headers.get(TOKEN_HEADER) == Some(&x.token))
                    .collect::<Vec<_>>()
            };
            let id = x.base_id.to_string();
            let mut outcome = Outcome::Processed;
            for (consumer, dlq) in dlqs_of(p, x.input.channel) {
                let letters = dl(&dlq);
                if letters.len() > x.publications {
                    return Err(fail(
                        consumer,
                        format!(
                            "input {:?} #{} ({}) was dead-lettered {} times by {consumer} for {} publication(s): a redelivery loop or a double dead letter",
                            x.input.channel,
                            x.input.index,
                            x.input.describe(),
                            letters.len(),
                            x.publications
                        ),
                    ));
                }
                for m in &letters {
                    let reason = m.headers.get(contract::HEADER_DLQ_REASON).cloned().unwrap_or_default();
                    if !contract::Rejection::CODES.contains(&reason.as_str())
                        || m.headers.get(contract::HEADER_DLQ_DETAIL).is_none_or(|d| d.is_empty())
                    {
                        return Err(fail(
                            consumer,
                            format!(
                                "input {:?} #{} was dead-lettered by {consumer} without a contract reason and detail: reason {reason:?}",
                                x.input.channel, x.input.index
                            ),
                        ));
                    }
                    if outcome == Outcome::Processed && consumer != "REST API" {
                        outcome = Outcome::DeadLettered(reason);
                    }
                }
                let processed = match (x.input.channel, consumer) {
                    (Channel::AudioStream, _) => p.tap.count(|m| {
                        m.source == Source::FeatureA && m.str_field("/source_message_id") == Some(id.as_str())
                    }),
                    (Channel::FeaturesA, "Algorithm B") => p.tap.count(|m| {
                        m.source == Source::FeatureB && m.str_field("/feature_a_message_id") == Some(id.as_str())
                    }),
                    (_, "DataWriter") => {
                        let n = rows.iter().filter(|r| r.message_id == x.base_id).count();
                        if n > 1 {
                            return Err(fail(
                                consumer,
                                format!(
                                    "input {:?} #{} has {n} rows: the DataWriter stored a duplicate",
                                    x.input.channel, x.input.index
                                ),
                            ));
                        }
                        // A duplicate publication of a stored message adds no row.
                        if n == 1 { x.publications - letters.len() } else { 0 }
                    }
                    _ => x.publications - letters.len(), // the API cache: only dead letters are visible
                };
                let handled = processed + letters.len();
                if handled > x.publications {
                    return Err(fail(
                        consumer,
                        format!(
                            "input {:?} #{} ({}) was both processed ({processed}) and dead-lettered ({}) by {consumer} for {} publication(s)",
                            x.input.channel,
                            x.input.index,
                            x.input.describe(),
                            letters.len(),
                            x.publications
                        ),
                    ));
                }
                // A processed chunk is done once its Feature A and B are stored, once each
                // however often it was published (contract 1.3: output ids derive from the
                // input's, and one row per source chunk and type).
                if x.input.channel == Channel::AudioStream && processed > 0 {
                    let stored = |t: &str| {
                        rows.iter().filter(|r| r.source_message_id == x.base_id && r.feature_type == t).count()
                    };
                    let (a, b) = (stored("A"), stored("B"));
                    if a > 1 || b > 1 {
                        return Err(fail(
                            consumer,
                            format!(
                                "input audio_stream #{} ({}): rows A {a} and B {b} for one chunk: stored more than once",
                                x.input.index,
                                x.input.describe()
                            ),
                        ));
                    }
                    if a < 1 || b < 1 {
                        pending.push(format!(
                            "DataWriter: input audio_stream #{} ({}): {processed} Feature A out, rows A {a} and B {b}",
                            x.input.index,
                            x.input.describe(),
                        ));
                    }
                }
                if handled < x.publications {
                    pending.push(format!(
                        "{consumer}: input {:?} #{} ({}): processed {processed}, dead-lettered {} of {} publication(s)",
                        x.input.channel,
                        x.input.index,
                        x.input.describe(),
                        letters.len(),
                        x.publications
                    ));
                }
            }
            out.push((x.input.clone(), outcome));
        }
        if pending.is_empty() {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            let stage = pending[0].split(':').next().unwrap_or("").to_string();
            return Err(fail(
                &stage,
                format!(
                    "{} input(s) were neither processed nor dead-lettered in time (lost?):\n    {}",
                    pending.len(),
                    pending.iter().take(10).cloned().collect::<Vec<_>>().join("\n    ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll the tap and table again (bounded by `deadline`)
    }
}

/// (d): rows of the inputs and the canary, and what the API serves for them, keep the contract.
pub(super) async fn stored_and_served(
    p: &Pipeline,
    db: &Db,
    published: &[Published],
    canary: &Canary,
) -> Result<(), Failure> {
    let fail =
        |stage: &str, message: String| Failure { stage: stage.into(), message, canary: String::new(), logs: vec![] };
    // Only this batch's rows (by id): earlier batches and trials share the prefix and the table.
    let mut ids: Vec<Uuid> = published.iter().map(|x| x.base_id).collect();
    let mut rows = db.rows_by_message_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?;
    ids.push(canary.id);
    rows.extend(db.rows_by_source_ids(&ids).await.map_err(|e| fail("harness", format!("{e:#}")))?);
    for row in &rows {
        let problems = row_violations(&row.to_json());
        if !problems.is_empty() {
            return Err(fail(
                "DataWriter (stored row)",
                format!("row {} breaks the contract: {}", row.message_id, problems.join("; ")),
            ));
        }
    }
    let Ok(api) = p.api() else { return Ok(()) };
    let sample: Vec<&FeatureRow> = rows.iter().take(5).collect();
    for row in sample {
        let r = api.by_id(&row.message_id.to_string()).await.map_err(|e| fail("REST API", format!("{e:#}")))?;
        if r.status != 200 || r.body.len() > 64 * 1024 {
            return Err(fail(
                "REST API",
                format!("GET feature {} answered {} with {} bytes", row.message_id, r.status, r.body.len()),
            ));
        }
        let v = r.json().map_err(|e| fail("REST API", format!("{e:#}")))?;
        let problems = row_violations(&v);
        if !problems.is_empty() {
            return Err(fail(
                "REST API (served row)",
                format!("feature {} as served breaks the contract: {}", row.message_id, problems.join("; ")),
            ));
        }
    }
    for t in ["A", "B"] {
        let r = api.latest(&canary.sensor, t).await.map_err(|e| fail("REST API", format!("{e:#}")))?;
        let kind = if t == "A" { contract::MessageKind::FeatureA } else { contract::MessageKind::FeatureB };
        if let Err(e) =
            r.json().map_err(|e| vec![format!("{e:#}")]).and_then(|v| crate::json_match::validate_contract(kind, &v))
        {
            return Err(fail(
                "REST API (latest)",
                format!("latest Feature {t} of the canary breaks the contract: {}", e.join("; ")),
            ));
        }
    }
    Ok(())
}

/// Contract violations of one row as stored or served (the OpenAPI `FeatureRow` rules that
/// matter for hostile data: identifier patterns, timestamps, and the `features` object of its
/// type).
pub fn row_violations(row: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    };
    for field in ["sensor_id", "processed_by"] {
        match row[field].as_str() {
            Some(s) if ident(s) => {}
            Some(s) => out.push(format!(
                "{field} {:?}… ({} bytes) is not 1–128 characters of [A-Za-z0-9._:-]",
                s.chars().take(40).collect::<String>(),
                s.len()
            )),
            None => out.push(format!("{field} is missing or not a string: {}", row[field])),
        }
    }
    match row["captured_at"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
        Some(t)
            if t.year() >= 2000
                && t.with_timezone(&chrono::Utc)
                    <= chrono::Utc::now() + chrono::Duration::seconds(contract::FUTURE_SLACK_SECS) => {}
        _ => out.push(format!(
            "captured_at {} is outside [2000-01-01, now + {} s]",
            row["captured_at"],
            contract::FUTURE_SLACK_SECS
        )),
    }
    let schema_text = match row["feature_type"].as_str() {
        Some("A") => contract::FEATURE_A_SCHEMA,
        Some("B") => contract::FEATURE_B_SCHEMA,
        other => {
            out.push(format!("feature_type {other:?}"));
            return out;
        }
    };
    let schema: Value = serde_json::from_str(schema_text).expect("embedded schema");
    if let Ok(v) = jsonschema::validator_for(&schema["properties"]["features"]) {
        out.extend(v.iter_errors(&row["features"]).map(|e| format!("features{}: {e}", e.instance_path())));
    }
    out
}

/// Peak resident set of a process, from `/proc/<pid>/status`.
pub(super) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    crate::sut::peak_rss_kib(pid)
}

/// Byte length of every SUT log file now, so later checks see only new lines.
pub(super) fn log_offsets(p: &Pipeline) -> HashMap<std::path::PathBuf, u64> {
    let Ok(procs) = p.procs() else { return HashMap::new() };
    std::fs::read_dir(procs.log_dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect()
}

/// Lines logged since `before` that are problems: panics, errors, and warnings other than the
/// dead-letter path's own (`message dead-lettered`, a refused batch written row by row).
pub(super) fn new_problems(p: &Pipeline, before: &HashMap<std::path::PathBuf, u64>) -> Vec<String> {
    let Ok(procs) = p.procs() else { return vec![] };
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(procs.log_dir()).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let from = before.get(&path).copied().unwrap_or(0) as usize;
        let text = String::from_utf8_lossy(&bytes[from.min(bytes.len())..]).into_owned();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for line in text.lines() {
            let problem = line.contains("panicked at")
                || ((line.contains(" WARN ") || line.contains(" ERROR "))
                    && !line.contains("message dead-lettered")
                    && !line.contains("writing its rows one by one")
                    // Slowness is the load gates' business, not a hostile input's.
                    && !line.contains("slow batch commit"));
            if problem {
                out.push(format!("{name}: {}", line.chars().take(400).collect::<String>()));
            }
        }
    }
    out.truncate(40);
    out
}
