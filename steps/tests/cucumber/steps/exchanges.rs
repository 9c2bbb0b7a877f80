//! What appears on the fanout exchanges and DLQs (captured by the taps).

use crate::params::{DurationParam, FeatureTypeParam};
use crate::world::World;
use anyhow::{Context, bail, ensure};
use cucumber::then;
use harness::amqp::Source;
use harness::json_match::NumSpec;

#[then(expr = "exactly {int} Feature {type} message(s) arrive(s) for sensor {string}")]
async fn exactly_n(w: &mut World, n: usize, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    w.exactly_features(t.source(), &sensor, n).await.map(|_| ())
}

#[then(expr = "Feature {type} for sensor {string} reports {word} of {string}")]
async fn feature_value(
    w: &mut World,
    t: FeatureTypeParam,
    sensor: String,
    field: String,
    spec: String,
) -> anyhow::Result<()> {
    let spec: NumSpec = spec.parse()?;
    let msgs = w.wait_features(t.source(), &sensor, 1).await?;
    let pointer = format!("/features/{field}");
    for m in &msgs {
        let actual = m.field(&pointer).and_then(|v| v.as_f64());
        match actual {
            Some(a) if spec.accepts(a) => {}
            Some(a) => bail!("Feature {} {field}: expected {spec}, got {a}\n  message: {}", t.letter(), m.summary()),
            None => bail!("Feature {} has no numeric {pointer}\n  message: {}", t.letter(), m.summary()),
        }
    }
    Ok(())
}

/// Names a chunk in property failures: its place in the generated series and how to reproduce it.
fn chunk_label(w: &World, c: &contract::AudioChunk) -> String {
    match w.generated.get(&c.message_id) {
        Some(g) => format!(
            "chunk #{} of {:?} (seed {}, seq {}): {}",
            g.index,
            g.kind.phrase(),
            g.seed,
            c.sequence,
            g.chunk.description
        ),
        None => format!("chunk seq {} ({} Hz, {} channel(s))", c.sequence, c.sample_rate, c.channels),
    }
}

/// The Feature A of every chunk this scenario published for `sensor`, paired with its chunk.
async fn features_by_chunk(
    w: &World,
    sensor: &str,
) -> anyhow::Result<Vec<(contract::AudioChunk, harness::amqp::Captured)>> {
    let chunks: Vec<contract::AudioChunk> = w.chunks_of(sensor).into_iter().cloned().collect();
    ensure!(!chunks.is_empty(), "no chunk was published for sensor {sensor:?}");
    let msgs = w.wait_features(Source::FeatureA, sensor, chunks.len()).await?;
    chunks
        .into_iter()
        .map(|c| {
            let id = c.message_id.to_string();
            let m = msgs
                .iter()
                .find(|m| m.str_field("/source_message_id") == Some(id.as_str()))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("stage: Algorithm A — no Feature A for chunk {id}"))?;
            Ok((c, m))
        })
        .collect()
}

/// Every Feature A against the harness's own DSP (`harness::signal::reference_features`, a plain
/// DFT written from the contract), field by field, at the contract table's tolerances.
#[then(
    expr = "every Feature A for sensor {string} matches the harness's reference features within the contract's tolerances"
)]
async fn matches_reference(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let pairs = features_by_chunk(w, &sensor).await?;
    let mut bad = Vec::new();
    for (c, m) in &pairs {
        let samples = c.decode_samples().map_err(|e| anyhow::anyhow!("decoding our own chunk: {e}"))?;
        let want = harness::signal::reference_features(&samples, c.channels, c.sample_rate);
        let got = m.field("/features").cloned().unwrap_or_default();
        let diffs = harness::signal::compare_with_reference(&got, &want);
        if !diffs.is_empty() {
            bad.push(format!("{}\n      {}", chunk_label(w, c), diffs.join("\n      ")));
        }
    }
    ensure!(
        bad.is_empty(),
        "stage: Algorithm A (Feature A) — {} of {} chunks differ from the harness's reference features \
         (tolerances: fixtures/contracts/README.md, Defined fields):\n    {}",
        bad.len(),
        pairs.len(),
        bad.join("\n    ")
    );
    Ok(())
}

/// Relations between a Feature A's own fields (rms_dbfs = 20·log10 rms, peak ≥ rms, ranges,
/// duration = frames/rate, dominant frequency and, where meaningful, centroid within the band of
/// the generated tones); needs no reference DSP.
#[then(expr = "every Feature A for sensor {string} is consistent in itself")]
async fn self_consistent(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let pairs = features_by_chunk(w, &sensor).await?;
    let mut bad = Vec::new();
    for (c, m) in &pairs {
        let frames = (c.decode_samples().map(|s| s.len()).unwrap_or(0) / c.channels.max(1) as usize) as u64;
        let (band, centroid) =
            w.generated.get(&c.message_id).map_or((None, false), |g| (g.chunk.band, g.chunk.centroid_in_band));
        let got = m.field("/features").cloned().unwrap_or_default();
        let problems = harness::signal::consistency_problems(&got, c.sample_rate, frames, band, centroid);
        if !problems.is_empty() {
            bad.push(format!("{}\n      {}", chunk_label(w, c), problems.join("\n      ")));
        }
    }
    ensure!(
        bad.is_empty(),
        "stage: Algorithm A (Feature A) — {} of {} Feature A messages contradict themselves:\n    {}",
        bad.len(),
        pairs.len(),
        bad.join("\n    ")
    );
    Ok(())
}

/// Every Feature B against the contract's Algorithm B table applied to its own Feature A: class,
/// confidence (clamped), loudness and dominant frequency copied, lineage to the Feature A.
#[then(expr = "every Feature B for sensor {string} follows the contract's rules from its Feature A")]
async fn b_follows_rules(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let pairs = features_by_chunk(w, &sensor).await?;
    let bs = w.wait_features(Source::FeatureB, &sensor, pairs.len()).await?;
    let mut bad = Vec::new();
    for (c, a) in &pairs {
        let a_id = a.str_field("/message_id").unwrap_or_default();
        let Some(b) = bs.iter().find(|b| b.str_field("/feature_a_message_id") == Some(a_id)) else {
            bad.push(format!("{}: no Feature B points at Feature A {a_id}", chunk_label(w, c)));
            continue;
        };
        let problems = rule_problems(a, b)?;
        if !problems.is_empty() {
            bad.push(format!("{} (Feature A {a_id}): {}", chunk_label(w, c), problems.join("; ")));
        }
    }
    ensure!(
        bad.is_empty(),
        "stage: Algorithm B (Feature B) — {} of {} Feature B messages break the contract's rules:\n    {}",
        bad.len(),
        pairs.len(),
        bad.join("\n    ")
    );
    Ok(())
}

/// How Feature B `b` breaks the contract's rules for Feature A `a`: class and confidence by the
/// Algorithm B table (`harness::signal::reference_classification`), the copied fields, the lineage
/// and the message id derived from the Feature A's (contract 1.3).
fn rule_problems(a: &harness::amqp::Captured, b: &harness::amqp::Captured) -> anyhow::Result<Vec<String>> {
    let a_id = a.str_field("/message_id").unwrap_or_default();
    let fa = a.field("/features").cloned().unwrap_or_default();
    let (class, confidence) =
        harness::signal::reference_classification(&fa).context("the Feature A lacks rms_dbfs/clipping/flatness")?;
    let got_class = b.str_field("/features/event_class").unwrap_or("<missing>");
    let got_conf = b.field("/features/confidence").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut problems = Vec::new();
    if got_class != class {
        problems.push(format!("event_class {got_class:?}, expected {class:?}"));
    }
    if (got_conf - confidence).abs() > 1e-9 {
        problems.push(format!("confidence {got_conf}, expected {confidence}"));
    }
    for (bf, af) in [("loudness_dbfs", "rms_dbfs"), ("dominant_frequency_hz", "dominant_frequency_hz")] {
        let (x, y) = (b.field(&format!("/features/{bf}")), fa.get(af));
        // Copied means the same number: -60 and -60.0 are one JSON value to any decoder.
        let same = x == y || x.and_then(|x| x.as_f64()).is_some_and(|x| y.and_then(|y| y.as_f64()) == Some(x));
        if !same {
            problems.push(format!("{bf} {x:?} is not the Feature A's {af} {y:?}"));
        }
    }
    for field in ["/source_message_id", "/sensor_id", "/sequence", "/captured_at"] {
        if b.field(field) != a.field(field) {
            problems.push(format!("{field} {:?} differs from the Feature A's {:?}", b.field(field), a.field(field)));
        }
    }
    if b.str_field("/feature_a_message_id") != Some(a_id) {
        problems.push(format!(
            "feature_a_message_id {:?} is not the Feature A's {a_id}",
            b.str_field("/feature_a_message_id")
        ));
    }
    let derived = a_id.parse().map(|id| contract::derived_message_id(id, contract::FeatureType::B).to_string());
    if b.str_field("/message_id") != derived.as_deref().ok() {
        problems.push(format!(
            "message_id {:?} is not the one derived from the Feature A's id ({:?}): a redelivered Feature A would become a second Feature B",
            b.str_field("/message_id"),
            derived.ok()
        ));
    }
    Ok(problems)
}

/// Boundary cases of the Algorithm B table: the one Feature B of `sensor`, its class exact and
/// its confidence within the tolerance string.
#[then(expr = "the Feature B for sensor {string} is {word} with confidence {string}")]
async fn class_and_confidence(w: &mut World, sensor: String, class: String, spec: String) -> anyhow::Result<()> {
    let spec: NumSpec = spec.parse()?;
    let msgs = w.exactly_features(Source::FeatureB, &sensor, 1).await?;
    let m = msgs.first().context("no Feature B")?;
    let got = m.str_field("/features/event_class").unwrap_or("<missing>");
    let conf = m.field("/features/confidence").and_then(|v| v.as_f64());
    ensure!(
        got == class && conf.is_some_and(|c| spec.accepts(c)),
        "stage: Algorithm B — expected {class} with confidence {spec}, got {got} with confidence {conf:?}\n  message: {}",
        m.summary()
    );
    Ok(())
}

/// The Feature B of a Feature A the scenario published itself (no chunk behind it).
#[then(expr = "the Feature B for sensor {string} follows the contract's rules from the Feature A published for it")]
async fn b_follows_rules_of_published(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let a = w.exactly_features(Source::FeatureA, &sensor, 1).await?;
    let b = w.exactly_features(Source::FeatureB, &sensor, 1).await?;
    let problems = rule_problems(&a[0], &b[0])?;
    ensure!(
        problems.is_empty(),
        "stage: Algorithm B (Feature B) — breaks the contract's rules for Feature A {}: {}\n  message: {}",
        a[0].str_field("/message_id").unwrap_or_default(),
        problems.join("; "),
        b[0].summary()
    );
    Ok(())
}

#[then(expr = "Feature B for sensor {string} classifies the audio as {word} with confidence at least {float}")]
async fn classified(w: &mut World, sensor: String, class: String, min: f64) -> anyhow::Result<()> {
    let msgs = w.wait_features(Source::FeatureB, &sensor, w.chunks_of(&sensor).len().max(1)).await?;
    for m in &msgs {
        let got = m.str_field("/features/event_class").unwrap_or("<missing>");
        let conf = m.field("/features/confidence").and_then(|v| v.as_f64()).unwrap_or(-1.0);
        ensure!(
            got == class,
            "expected event_class {class:?}, got {got:?} (confidence {conf})\n  message: {}",
            m.summary()
        );
        ensure!(
            conf >= min && conf <= 1.0,
            "expected confidence in [{min}, 1], got {conf}\n  message: {}",
            m.summary()
        );
    }
    Ok(())
}

#[then(expr = "every Feature {type} for sensor {string} names the instance that processed it")]
async fn processed_by(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let n = w.chunks_of(&sensor).len().max(1);
    for m in w.wait_features(t.source(), &sensor, n).await? {
        let by = m.str_field("/processed_by").unwrap_or("");
        ensure!(!by.is_empty(), "processed_by is empty in {}", m.summary());
    }
    Ok(())
}

#[then(expr = "each Feature {type} for sensor {string} carries the lineage of its chunk")]
async fn lineage_fields(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let chunks: Vec<_> = w.chunks_of(&sensor).into_iter().cloned().collect();
    let msgs = w.wait_features(t.source(), &sensor, chunks.len()).await?;
    for c in &chunks {
        let id = c.message_id.to_string();
        let m = msgs
            .iter()
            .find(|m| m.str_field("/source_message_id") == Some(id.as_str()))
            .ok_or_else(|| anyhow::anyhow!("no Feature {} with source_message_id {id}", t.letter()))?;
        ensure!(
            m.field("/sequence").and_then(|v| v.as_u64()) == Some(c.sequence),
            "sequence differs: chunk {} vs {}",
            c.sequence,
            m.summary()
        );
        let captured = m.str_field("/captured_at").and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        ensure!(
            captured.map(|d| d.with_timezone(&chrono::Utc)) == Some(c.captured_at),
            "captured_at differs: chunk {} vs {}",
            c.captured_at,
            m.summary()
        );
    }
    Ok(())
}

#[then(expr = "Feature B's feature_a_message_id for sensor {string} points at its Feature A")]
async fn b_points_at_a(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let a = w.wait_features(Source::FeatureA, &sensor, 1).await?;
    let b = w.wait_features(Source::FeatureB, &sensor, 1).await?;
    for mb in &b {
        let target = mb.str_field("/feature_a_message_id");
        ensure!(
            a.iter().any(|ma| ma.str_field("/message_id") == target),
            "Feature B {} points at {target:?}, which is no Feature A seen for this sensor",
            mb.summary()
        );
    }
    Ok(())
}

#[then(expr = "the chunk from sensor {string} is dead-lettered to {string} with reason {string}")]
async fn dead_lettered(w: &mut World, sensor: String, dlq: String, reason: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let ids = w.raw_ids.get(&sensor_id).cloned().unwrap_or_default();
    ensure!(!ids.is_empty(), "no broken message was published for sensor {sensor:?}");
    let names = w.pipeline().names.clone();
    let dlq_name = if names.namespace.is_empty() { dlq.clone() } else { format!("{}.{dlq}", names.namespace) };
    let ns = w.ns.clone();
    let found = w
        .pipeline()
        .tap
        .scoped(&w.ns.prefix)
        .wait_for(
            &format!("the broken message in {dlq}"),
            1,
            w.deadline(),
            move |m| m.sensor_id().is_some_and(|s| ns.owns(s)),
            |m| {
                m.source == Source::Dlq(dlq_name.clone())
                    && m.amqp_message_id.as_ref().is_some_and(|id| ids.contains(id))
            },
        )
        .await?;
    let m = &found[0];
    let got = m.headers.get(contract::HEADER_DLQ_REASON).map(String::as_str).unwrap_or("<no reason header>");
    ensure!(
        got == reason,
        "expected DLQ reason {reason:?}, got {got:?}; detail: {:?}",
        m.headers.get(contract::HEADER_DLQ_DETAIL)
    );
    ensure!(
        m.headers.get(contract::HEADER_DLQ_DETAIL).is_some_and(|d| !d.is_empty()),
        "the dead letter has no human-readable detail header"
    );
    Ok(())
}

#[then(expr = "no Feature {type} arrives for the broken message(s) of sensor {string} within {duration}")]
async fn nothing_for_broken(
    w: &mut World,
    t: FeatureTypeParam,
    sensor: String,
    window: DurationParam,
) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let source = t.source();
    w.pipeline()
        .tap
        .none_within(&format!("Feature {} for the broken chunk", t.letter()), window.0, |m| {
            m.source == source && m.sensor_id() == Some(sensor_id.as_str())
        })
        .await
}

#[then(expr = "nothing from sensor {string} is dead-lettered within {duration}")]
async fn nothing_dead_lettered(w: &mut World, sensor: String, window: DurationParam) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    w.pipeline()
        .tap
        .none_within("dead letters", window.0, |m| {
            matches!(m.source, Source::Dlq(_)) && m.sensor_id() == Some(sensor_id.as_str())
        })
        .await
}

#[then("every message captured in this scenario matches its contract schema")]
async fn all_valid(w: &mut World) -> anyhow::Result<()> {
    let v = w.contract_violations();
    ensure!(v.is_empty(), "contract violations:\n  {}", v.join("\n  "));
    let seen =
        w.pipeline().tap.matching(|m| w.in_scope(m) && matches!(m.source, Source::FeatureA | Source::FeatureB)).len();
    ensure!(seen > 0, "no feature messages were captured for this scenario, so nothing was checked");
    Ok(())
}
