//! The ledger invariant, applied per stage (Jepsen's total-queue checker): every confirmed chunk
//! has exactly one Feature A row and one Feature B row, or exactly one dead-letter entry with a
//! reason; no row for an id nobody confirmed; no work left in the queues; every component alive;
//! the API's latest equal to the database's newest. Pure: it judges what was observed and knows
//! nothing of how the workload ran or which fault was applied.

use super::workload::Confirmed;
use crate::sql::FeatureRow;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;
use uuid::Uuid;

/// What the pipeline did, as observed after the drain.
#[derive(Debug, Default)]
pub struct Observed {
    /// Rows of the workload's sensor.
    pub rows: Vec<FeatureRow>,
    /// Distinct Feature A message ids the tap saw per source chunk.
    pub feature_a_ids: BTreeMap<Uuid, BTreeSet<String>>,
    /// Distinct Feature B message ids the tap saw per source chunk.
    pub feature_b_ids: BTreeMap<Uuid, BTreeSet<String>>,
    /// When the tap saw each publication of a source chunk's Feature A (every copy).
    pub feature_a_seen: BTreeMap<Uuid, Vec<DateTime<Utc>>>,
    /// When the tap saw each publication of a source chunk's Feature B (every copy).
    pub feature_b_seen: BTreeMap<Uuid, Vec<DateTime<Utc>>>,
    /// Dead letters of the workload's sensor: (chunk id if readable, reason, DLQ).
    pub dead_letters: Vec<(Option<Uuid>, Option<String>, String)>,
    /// Work queues with anything ready or unacked: (queue, ready, unacked).
    pub leftovers: Vec<(String, u64, u64)>,
    /// Per feature type: (type, API's latest message id, database's newest message id).
    pub latest: Vec<(String, Option<Uuid>, Option<Uuid>)>,
    /// Processes that exited without being told to: (id, how).
    pub exited: Vec<(String, String)>,
}

/// What the scenario requires beyond the invariant.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// Chunks published deliberately broken: each must be dead-lettered exactly once.
    pub poison: Vec<Uuid>,
    /// When the last fault ended (the recovery clock's start).
    pub fault_end: Option<DateTime<Utc>>,
    /// Longest a confirmed chunk may wait for its last row.
    pub max_wait: Option<Duration>,
    /// Windows in which the broker refused (nacked) publishes of a feature type.
    pub refusals: Vec<Refusal>,
}

/// A window in which the broker refused every publish of Feature `feature` to its consumers'
/// queues: a copy published only inside it reached none of them, so a stage that acked its input
/// for such a publish (instead of publishing again) lost the chunk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// "A" or "B".
    pub feature: String,
    /// When the refusal was asked for.
    pub from: DateTime<Utc>,
    /// When it was over (cleared and off every queue).
    pub to: DateTime<Utc>,
}

impl Refusal {
    /// Whether every sighting in `seen` (non-empty) falls inside this window.
    fn covers(&self, seen: &[DateTime<Utc>]) -> bool {
        !seen.is_empty() && seen.iter().all(|t| *t >= self.from && *t <= self.to)
    }

    /// The finding for a chunk whose every Feature publication was refused.
    fn finding(&self, stage: &str, seen: &[DateTime<Utc>]) -> String {
        format!(
            "stage {stage}: acked its input although the broker refused (nacked) its Feature {} — published {} time(s), \
             only while publishes to its fanout were refused ({} to {}), never again",
            self.feature,
            seen.len(),
            self.from.format("%H:%M:%S%.3f"),
            self.to.format("%H:%M:%S%.3f")
        )
    }
}

/// The checker's findings. Empty lists everywhere = the invariant holds.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    /// Confirmed chunks with a missing row and no dead letter: (id, sequence, the stage that lost it).
    pub lost: Vec<(Uuid, u64, String)>,
    /// Chunks stored or produced more than once: (id, sequence, what).
    pub duplicated: Vec<(Uuid, u64, String)>,
    /// Rows whose source chunk nobody confirmed.
    pub unexpected: Vec<Uuid>,
    /// Confirmed valid chunks that were dead-lettered anyway: (id, reason).
    pub wrongly_dead_lettered: Vec<(Uuid, String)>,
    /// Poison chunks not dead-lettered exactly once with a reason.
    pub poison: Vec<String>,
    /// Work left in queues after the drain.
    pub leftovers: Vec<String>,
    /// Latest disagreements between the API and the database.
    pub stale_latest: Vec<String>,
    /// Processes that died.
    pub dead_components: Vec<String>,
    /// Chunks that waited longer than allowed for their rows: (id, sequence, seconds).
    pub slow: Vec<(Uuid, u64, f64)>,
    /// Fault end → first row written after it.
    pub recovery: Option<Duration>,
    /// Confirmed chunks checked.
    pub checked: usize,
    /// Largest wait of a confirmed chunk for its last row, in seconds.
    pub max_wait_secs: f64,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.wrongly_dead_lettered.is_empty()
            && self.poison.is_empty()
            && self.leftovers.is_empty()
            && self.stale_latest.is_empty()
            && self.dead_components.is_empty()
            && self.slow.is_empty()
    }

    /// The findings, each line naming the stage and the ids (at most 10 ids per finding).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ids = |v: Vec<String>| {
            let n = v.len();
            let mut s: Vec<String> = v.into_iter().take(10).collect();
            if n > 10 {
                s.push(format!("… {} more", n - 10));
            }
            s.join("\n      ")
        };
        let mut section = |title: String, lines: Vec<String>| {
            if !lines.is_empty() {
                let _ = writeln!(out, "  {title}:\n      {}", ids(lines));
            }
        };
        section(
            format!("LOST ({}): confirmed, never stored nor dead-lettered", self.lost.len()),
            self.lost.iter().map(|(id, s, stage)| format!("chunk {id} (sequence {s}): {stage}")).collect(),
        );
        section(
            format!("DUPLICATED ({})", self.duplicated.len()),
            self.duplicated.iter().map(|(id, s, what)| format!("chunk {id} (sequence {s}): {what}")).collect(),
        );
        section(
            format!("UNEXPECTED ({}): rows of chunks nobody confirmed (stage DataWriter)", self.unexpected.len()),
            self.unexpected.iter().map(|id| format!("source chunk {id}")).collect(),
        );
        section(
            format!("WRONGLY DEAD-LETTERED ({})", self.wrongly_dead_lettered.len()),
            self.wrongly_dead_lettered.iter().map(|(id, r)| format!("chunk {id}: {r}")).collect(),
        );
        section("POISON".into(), self.poison.clone());
        section("NOT DRAINED".into(), self.leftovers.clone());
        section("STALE LATEST (stage REST API)".into(), self.stale_latest.clone());
        section("DEAD COMPONENTS".into(), self.dead_components.clone());
        section(
            format!("TOO SLOW ({})", self.slow.len()),
            self.slow
                .iter()
                .map(|(id, s, w)| format!("chunk {id} (sequence {s}) waited {w:.1} s for its rows"))
                .collect(),
        );
        out
    }
}

/// Judges `observed` against the confirmed chunks and the expectations.
pub fn check(confirmed: &[Confirmed], expect: &Expect, observed: &Observed) -> Verdict {
    let mut v = Verdict { checked: confirmed.len(), ..Verdict::default() };
    let mut rows: BTreeMap<(Uuid, &str), Vec<&FeatureRow>> = BTreeMap::new();
    for r in &observed.rows {
        rows.entry((r.source_message_id, r.feature_type.as_str())).or_default().push(r);
    }
    let mut letters: BTreeMap<Uuid, Vec<(Option<String>, &str)>> = BTreeMap::new();
    for (id, reason, queue) in &observed.dead_letters {
        if let Some(id) = id {
            letters.entry(*id).or_default().push((reason.clone(), queue.as_str()));
        }
    }
    let poison: BTreeSet<Uuid> = expect.poison.iter().copied().collect();
    let known: BTreeSet<Uuid> = confirmed.iter().map(|c| c.id).collect();
    for c in confirmed {
        let (a, b) = (rows.get(&(c.id, "A")), rows.get(&(c.id, "B")));
        let (na, nb) = (a.map_or(0, Vec::len), b.map_or(0, Vec::len));
        let dl = letters.get(&c.id).map_or(0, Vec::len);
        if poison.contains(&c.id) {
            match letters.get(&c.id).map(Vec::as_slice) {
                Some([(Some(reason), _)]) if !reason.is_empty() && na == 0 => {}
                other => v.poison.push(format!(
                    "chunk {} (sequence {}): expected exactly one dead letter with a reason and no rows; got {:?}, rows A {na}",
                    c.id, c.sequence, other
                )),
            }
            continue;
        }
        if dl > 0 {
            let reasons: Vec<String> =
                letters[&c.id].iter().map(|(r, q)| format!("{} in {q}", r.as_deref().unwrap_or("no reason"))).collect();
            v.wrongly_dead_lettered.push((c.id, reasons.join(", ")));
        }
        if (na == 0 || nb == 0) && dl == 0 {
            let saw_a = observed.feature_a_ids.contains_key(&c.id);
            let saw_b = observed.feature_b_ids.contains_key(&c.id);
            fn refused<'a>(
                refusals: &'a [Refusal],
                kind: &str,
                seen: Option<&'a Vec<DateTime<Utc>>>,
            ) -> Option<(&'a Refusal, &'a [DateTime<Utc>])> {
                let seen = seen.map(Vec::as_slice).unwrap_or_default();
                refusals.iter().find(|r| r.feature == kind && r.covers(seen)).map(|r| (r, seen))
            }
            let refused = |kind, seen| refused(&expect.refusals, kind, seen);
            let refused_a = (na == 0).then(|| refused("A", observed.feature_a_seen.get(&c.id))).flatten();
            let refused_b = (nb == 0).then(|| refused("B", observed.feature_b_seen.get(&c.id))).flatten();
            let stage = match (saw_a, saw_b, na, nb) {
                (false, _, _, _) => "stage Algorithm A: no Feature A was ever published for it".to_string(),
                _ if refused_a.is_some() => {
                    refused_a.map(|(r, seen)| r.finding("Algorithm A", seen)).unwrap_or_default()
                }
                _ if refused_b.is_some() => {
                    refused_b.map(|(r, seen)| r.finding("Algorithm B", seen)).unwrap_or_default()
                }
                (true, false, _, _) => "stage Algorithm B: Feature A published, no Feature B".to_string(),
                _ => format!("stage DataWriter: Feature A and B published, rows A {na} and B {nb}"),
            };
            v.lost.push((c.id, c.sequence, stage));
        }
        if na > 1 || nb > 1 {
            v.duplicated.push((
                c.id,
                c.sequence,
                format!("stage DataWriter: rows A {na} and B {nb} (one each expected)"),
            ));
        }
        for (kind, ids) in [("A", observed.feature_a_ids.get(&c.id)), ("B", observed.feature_b_ids.get(&c.id))] {
            if let Some(ids) = ids.filter(|ids| ids.len() > 1) {
                let stage = if kind == "A" { "Algorithm A" } else { "Algorithm B" };
                v.duplicated.push((
                    c.id,
                    c.sequence,
                    format!("stage {stage}: {} different Feature {kind} message ids for one chunk: {ids:?}", ids.len()),
                ));
            }
        }
        let last = a.into_iter().chain(b).flatten().map(|r| r.written_at).max();
        if let Some(last) = last {
            let wait = (last - c.confirmed).num_milliseconds().max(0) as f64 / 1000.0;
            v.max_wait_secs = v.max_wait_secs.max(wait);
            if expect.max_wait.is_some_and(|m| wait > m.as_secs_f64()) {
                v.slow.push((c.id, c.sequence, wait));
            }
        }
    }
    let mut unexpected: BTreeSet<Uuid> = BTreeSet::new();
    for r in &observed.rows {
        if !known.contains(&r.source_message_id) {
            unexpected.insert(r.source_message_id);
        }
    }
    v.unexpected = unexpected.into_iter().collect();
    v.leftovers = observed
        .leftovers
        .iter()
        .map(|(q, ready, unacked)| format!("{q}: {ready} ready, {unacked} unacked after the drain"))
        .collect();
    for (t, api, db) in &observed.latest {
        if api != db {
            v.stale_latest.push(format!(
                "Feature {t}: the API's latest is {} but the database's newest is {}",
                api.map_or("none (404)".into(), |i| i.to_string()),
                db.map_or("none".into(), |i| i.to_string())
            ));
        }
    }
    v.dead_components = observed.exited.iter().map(|(id, how)| format!("{id} {how}")).collect();
    if let Some(end) = expect.fault_end {
        v.recovery = observed
            .rows
            .iter()
            .filter(|r| r.written_at > end)
            .map(|r| r.written_at)
            .min()
            .map(|first| (first - end).to_std().unwrap_or_default());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: Uuid, t: &str, written_at: DateTime<Utc>) -> FeatureRow {
        FeatureRow {
            message_id: Uuid::new_v4(),
            feature_type: t.into(),
            sensor_id: "s".into(),
            source_message_id: source,
            sequence: 0,
            captured_at: written_at,
            processed_by: "x".into(),
            features: serde_json::json!({}),
            written_at,
        }
    }

    fn sent(id: Uuid, sequence: u64, at: DateTime<Utc>) -> Confirmed {
        Confirmed { id, sequence, first_sent: at, confirmed: at, attempts: 1 }
    }

    #[test]
    fn names_lost_duplicated_and_unexpected_ids_with_their_stage() {
        let t = Utc::now();
        let (ok, lost_a, lost_w, dup, foreign) =
            (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let confirmed = [sent(ok, 0, t), sent(lost_a, 1, t), sent(lost_w, 2, t), sent(dup, 3, t)];
        let mut observed = Observed {
            rows: vec![row(ok, "A", t), row(ok, "B", t), row(dup, "A", t), row(dup, "A", t), row(dup, "B", t)],
            ..Observed::default()
        };
        observed.rows.push(row(foreign, "A", t));
        for id in [ok, lost_w, dup] {
            observed.feature_a_ids.entry(id).or_default().insert(format!("a-{id}"));
            observed.feature_b_ids.entry(id).or_default().insert(format!("b-{id}"));
        }
        observed.feature_a_ids.entry(dup).or_default().insert("another".into());
        let v = check(&confirmed, &Expect::default(), &observed);
        assert!(!v.holds());
        assert_eq!(v.lost.iter().map(|l| l.0).collect::<Vec<_>>(), vec![lost_a, lost_w]);
        assert!(v.lost[0].2.contains("Algorithm A") && v.lost[1].2.contains("DataWriter"), "{:?}", v.lost);
        assert_eq!(v.duplicated.len(), 2, "{:?}", v.duplicated);
        assert!(v.duplicated.iter().all(|d| d.0 == dup));
        assert_eq!(v.unexpected, vec![foreign]);
        let text = v.render();
        assert!(text.contains(&lost_a.to_string()) && text.contains("DUPLICATED (2)"), "{text}");
    }

    #[test]
    fn a_clean_run_holds_and_reports_its_recovery_time() {
        let t = Utc::now();
        let id = Uuid::new_v4();
        let end = t - chrono::Duration::milliseconds(1500);
        let observed = Observed { rows: vec![row(id, "A", t), row(id, "B", t)], ..Observed::default() };
        let v = check(&[sent(id, 0, t)], &Expect { fault_end: Some(end), ..Expect::default() }, &observed);
        assert!(v.holds(), "{}", v.render());
        assert_eq!(v.recovery, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn a_chunk_waiting_longer_than_allowed_is_named_with_its_wait() {
        let t = Utc::now();
        let (quick, slow) = (Uuid::new_v4(), Uuid::new_v4());
        let late = t + chrono::Duration::seconds(20);
        let observed = Observed {
            rows: vec![row(quick, "A", t), row(quick, "B", t), row(slow, "A", t), row(slow, "B", late)],
            ..Observed::default()
        };
        let expect = Expect { max_wait: Some(Duration::from_secs(15)), ..Expect::default() };
        let v = check(&[sent(quick, 0, t), sent(slow, 1, t)], &expect, &observed);
        assert_eq!(v.slow.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), vec![(slow, 1)]);
        assert!((v.max_wait_secs - 20.0).abs() < 0.01, "{}", v.max_wait_secs);
        assert!(!v.holds() && v.render().contains("waited 20.0 s"), "{}", v.render());
    }

    #[test]
    fn a_chunk_whose_only_output_was_refused_is_lost_by_the_stage_that_acked_it() {
        let t = Utc::now();
        let s = |ms: i64| t + chrono::Duration::milliseconds(ms);
        let (lost_a, lost_b, retried) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let refusals = vec![
            Refusal { feature: "A".into(), from: s(0), to: s(1000) },
            Refusal { feature: "B".into(), from: s(2000), to: s(3000) },
        ];
        let mut observed = Observed {
            rows: vec![row(lost_b, "A", s(2500)), row(retried, "A", s(1200)), row(retried, "B", s(1200))],
            ..Observed::default()
        };
        for (id, a, b) in [(lost_a, vec![s(500)], vec![]), (lost_b, vec![s(1500)], vec![s(2500)])] {
            observed.feature_a_ids.entry(id).or_default().insert(format!("a-{id}"));
            observed.feature_a_seen.insert(id, a);
            if !b.is_empty() {
                observed.feature_b_ids.entry(id).or_default().insert(format!("b-{id}"));
                observed.feature_b_seen.insert(id, b);
            }
        }
        // Refused, then published again after the window: stored, not lost.
        observed.feature_a_seen.insert(retried, vec![s(500), s(1100)]);
        let confirmed = [sent(lost_a, 0, t), sent(lost_b, 1, t), sent(retried, 2, t)];
        let v = check(&confirmed, &Expect { refusals, ..Expect::default() }, &observed);
        assert_eq!(v.lost.iter().map(|l| l.0).collect::<Vec<_>>(), vec![lost_a, lost_b], "{}", v.render());
        assert!(
            v.lost[0].2.starts_with("stage Algorithm A: acked its input although the broker refused"),
            "{:?}",
            v.lost
        );
        assert!(
            v.lost[1].2.starts_with("stage Algorithm B: acked its input although the broker refused"),
            "{:?}",
            v.lost
        );
    }

    #[test]
    fn poison_must_be_dead_lettered_exactly_once_with_a_reason() {
        let t = Utc::now();
        let p = Uuid::new_v4();
        let twice = Observed {
            dead_letters: vec![
                (Some(p), Some("invalid_json".into()), "q.dlq".into()),
                (Some(p), Some("invalid_json".into()), "q.dlq".into()),
            ],
            ..Observed::default()
        };
        let expect = Expect { poison: vec![p], ..Expect::default() };
        assert_eq!(check(&[sent(p, 0, t)], &expect, &twice).poison.len(), 1);
        let once = Observed {
            dead_letters: vec![(Some(p), Some("invalid_json".into()), "q.dlq".into())],
            ..Observed::default()
        };
        assert!(check(&[sent(p, 0, t)], &expect, &once).holds());
    }
}
