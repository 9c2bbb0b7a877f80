//! The one retry primitive for every asynchronous check (AMQP, SQL, HTTP).
//!
//! `eventually` polls a probe with capped exponential backoff until it reports `Done` or the
//! deadline passes; `never` polls for a whole window and fails as soon as something shows up.
//! Probe errors are observations, not failures: a service restarting refuses connections for a
//! while, and that is normal. Wrap an error with [`fatal`] to stop retrying at once.
//! Every `eventually` call is recorded in a process-wide log so reports can show time-to-converge
//! (flakiness data).

use anyhow::anyhow;
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long and how often to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
    /// Pause after the first failed attempt.
    pub initial: Duration,
    /// Upper bound for a single pause.
    pub max: Duration,
    /// Growth of the pause after each failed attempt.
    pub factor: f64,
    /// Copied into the [`ConvergenceRecord`], e.g. the scenario name, so a report can attribute
    /// the record; `None` leaves it unattributed.
    pub scope: Option<String>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            deadline: Duration::from_secs(10),
            initial: Duration::from_millis(10),
            max: Duration::from_millis(500),
            factor: 2.0,
            scope: None,
        }
    }
}

impl Backoff {
    /// The default schedule with another deadline.
    pub fn with_deadline(deadline: Duration) -> Self {
        Backoff { deadline, ..Backoff::default() }
    }

    /// The same schedule, attributed to `scope` in the convergence log.
    pub fn scoped(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The pause after `failures` failed attempts (1-based), capped at `max`.
    fn pause(&self, failures: u32) -> Duration {
        let exp = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp);
        // `min` before converting: a huge exponent yields inf, which Duration would reject.
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()).max(0.0))
    }
}

/// What one probe attempt saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Check<T> {
    /// The condition holds; polling stops with this value.
    Done(T),
    /// Not yet; `observed` describes what was seen instead (shown on timeout).
    NotYet {
        /// Human description of the current state, e.g. `2 rows` or `status 503`.
        observed: String,
    },
}

impl<T> Check<T> {
    /// Shorthand for `Check::NotYet { observed }`.
    pub fn not_yet(observed: impl Into<String>) -> Self {
        Check::NotYet { observed: observed.into() }
    }
}

/// A successful wait.
#[derive(Debug, Clone, PartialEq)]
pub struct Converged<T> {
    /// What the final probe returned.
    pub value: T,
    /// Probe calls made, including the successful one.
    pub attempts: u32,
    /// Time from the first attempt to success.
    pub elapsed: Duration,
}

/// Marks a probe error as not retryable: `eventually` and `never` fail at once with it.
#[derive(Debug)]
pub struct Fatal(pub anyhow::Error);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// Wraps `err` so that the retry loop stops instead of treating it as an observation.
pub fn fatal(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Fatal(err.into()))
}

fn is_fatal(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Fatal>())
}

/// One finished wait (`eventually` or a tap wait), for flakiness reporting.
///
/// `scope` is what the caller knew (the scenario's namespace); `scenario` and `step` are filled in
/// by the runner after the run (`attribute`), from the scope and the step that was running when
/// the wait started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConvergenceRecord {
    /// The `what` of the call.
    pub what: String,
    /// `Backoff::scope` of the call (the scenario's namespace, or `None`).
    pub scope: Option<String>,
    /// The scenario the wait belongs to (`feature file: scenario name`), once attributed.
    pub scenario: Option<String>,
    /// The step that was running when the wait started (`Then …`), once attributed.
    pub step: Option<String>,
    /// When the wait started (milliseconds since the Unix epoch).
    pub started_at_ms: u64,
    /// Probe calls made.
    pub attempts: u32,
    /// Time from the first attempt to success or giving up, in milliseconds.
    pub elapsed_ms: u64,
    /// Whether the condition was met.
    pub ok: bool,
}

static LOG: Mutex<Vec<ConvergenceRecord>> = Mutex::new(Vec::new());

/// Records a finished wait that took `elapsed` and ended now: the shorthand for waits other than
/// `eventually` (the tap's).
pub fn record_wait(what: &str, scope: Option<&str>, elapsed: Duration, attempts: u32, ok: bool) {
    record(ConvergenceRecord {
        what: what.to_owned(),
        scope: scope.map(str::to_owned),
        scenario: None,
        step: None,
        started_at_ms: unix_ms(std::time::SystemTime::now()).saturating_sub(elapsed_ms(elapsed)),
        attempts,
        elapsed_ms: elapsed_ms(elapsed),
        ok,
    });
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(elapsed_ms).unwrap_or(0)
}

fn elapsed_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Fills in `scenario` and `step` of every record: `scenario_of(scope)` names the scenario of a
/// namespace, `step_at(scenario, started_at_ms)` the step that was running then. A record without
/// a scope is attributed by time alone when exactly one scenario had a step running at its start
/// (`running_at(started_at_ms)` lists them); otherwise it stays unattributed.
pub fn attribute(
    records: &mut [ConvergenceRecord],
    scenario_of: impl Fn(&str) -> Option<String>,
    step_at: impl Fn(&str, u64) -> Option<String>,
    running_at: impl Fn(u64) -> Vec<String>,
) {
    for r in records.iter_mut() {
        let scenario = match &r.scope {
            Some(scope) => scenario_of(scope),
            None => match running_at(r.started_at_ms).as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            },
        };
        if let Some(scenario) = scenario {
            r.step = step_at(&scenario, r.started_at_ms);
            r.scenario = Some(scenario);
        }
    }
}

/// Appends to the process-wide convergence log.
pub fn record(rec: ConvergenceRecord) {
    // A panic elsewhere while holding the lock must not hide the remaining records.
    LOG.lock().unwrap_or_else(PoisonError::into_inner).push(rec);
}

/// A copy of everything recorded so far, in completion order.
pub fn convergence_log() -> Vec<ConvergenceRecord> {
    LOG.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Polls `probe` until it returns `Check::Done`, a [`fatal`] error, or `backoff.deadline` passes.
///
/// At least one attempt is always made, and one final attempt happens at the deadline. An attempt
/// that is still running at the deadline is abandoned (after a grace of `backoff.max`), so a hung
/// connection cannot stretch the wait. On timeout the error reads:
///
/// ```text
/// timed out after 10.0s (42 attempts) waiting for <what>
///   expected: <expected>
///   last seen: <last observation or error>
/// ```
pub async fn eventually<T, F, Fut>(
    what: &str,
    expected: &str,
    backoff: &Backoff,
    mut probe: F,
) -> anyhow::Result<Converged<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let start = Instant::now();
    let started_at_ms = unix_ms(std::time::SystemTime::now());
    let mut attempts: u32 = 0;
    let finish = |attempts: u32, ok: bool| {
        record(ConvergenceRecord {
            what: what.to_owned(),
            scope: backoff.scope.clone(),
            scenario: None,
            step: None,
            started_at_ms,
            attempts,
            elapsed_ms: elapsed_ms(start.elapsed()),
            ok,
        });
    };
    let last_seen = loop {
        attempts += 1;
        let remaining = backoff.deadline.saturating_sub(start.elapsed());
        let seen = match tokio::time::timeout(remaining.max(backoff.max), probe()).await {
            Ok(Ok(Check::Done(value))) => {
                finish(attempts, true);
                return Ok(Converged { value, attempts, elapsed: start.elapsed() });
            }
            Ok(Ok(Check::NotYet { observed })) => observed,
            Ok(Err(err)) if is_fatal(&err) => {
                finish(attempts, false);
                return Err(err.context(format!("giving up on {what} after {attempts} attempts")));
            }
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => format!("probe did not finish within {:.1}s", remaining.max(backoff.max).as_secs_f64()),
        };
        let elapsed = start.elapsed();
        if elapsed >= backoff.deadline {
            break seen;
        }
        // Never sleep past the deadline: the last attempt should happen right at it.
        tokio::time::sleep(backoff.pause(attempts).min(backoff.deadline - elapsed)).await; // the backoff pause between probes
    };
    finish(attempts, false);
    Err(anyhow!(
        "timed out after {:.1}s ({attempts} attempts) waiting for {what}\n  expected: {expected}\n  last seen: {last_seen}",
        start.elapsed().as_secs_f64()
    ))
}

/// Asserts that nothing matching appears within `window`.
///
/// `probe` returns `Some(description)` when it sees something it should not; `never` then fails at
/// once with that description. Probe errors in between are tolerated (as in `eventually`), but the
/// final probe at the end of the window must succeed, otherwise nothing was verified and the call
/// fails. Returns the number of probes made.
pub async fn never<F, Fut>(what: &str, window: Duration, mut probe: F) -> anyhow::Result<u32>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    // Fast first polls catch an early violation quickly; the cap keeps the probe load modest.
    let schedule = Backoff { deadline: window, max: Duration::from_millis(250), ..Backoff::default() };
    let start = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let outcome = probe().await;
        let elapsed = start.elapsed();
        match outcome {
            Ok(Some(seen)) => {
                return Err(anyhow!(
                    "expected no {what} within {:.1}s, but after {:.1}s ({attempts} attempts) saw one\n  seen: {seen}",
                    window.as_secs_f64(),
                    elapsed.as_secs_f64()
                ));
            }
            Ok(None) if elapsed >= window => return Ok(attempts),
            Err(err) if is_fatal(&err) => {
                return Err(err.context(format!("checking that no {what} appears")));
            }
            Err(err) if elapsed >= window => {
                return Err(err.context(format!(
                    "could not verify that no {what} appeared within {:.1}s: the final probe failed",
                    window.as_secs_f64()
                )));
            }
            Ok(None) | Err(_) => {}
        }
        tokio::time::sleep(schedule.pause(attempts).min(window - elapsed)).await; // the pause between probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_grows_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.pause(1), Duration::from_millis(10));
        assert_eq!(b.pause(2), Duration::from_millis(20));
        assert_eq!(b.pause(6), Duration::from_millis(320));
        assert_eq!(b.pause(7), Duration::from_millis(500));
        assert_eq!(b.pause(u32::MAX), Duration::from_millis(500));
    }

    fn rec(scope: Option<&str>, at: u64) -> ConvergenceRecord {
        ConvergenceRecord {
            what: "w".into(),
            scope: scope.map(String::from),
            scenario: None,
            step: None,
            started_at_ms: at,
            attempts: 1,
            elapsed_ms: 1,
            ok: true,
        }
    }

    #[test]
    fn records_are_attributed_by_scope_then_by_time() {
        let mut log = vec![rec(Some("ns-a"), 10), rec(None, 20), rec(None, 30), rec(Some("ns-unknown"), 5)];
        attribute(
            &mut log,
            |scope| (scope == "ns-a").then(|| "a.feature: A".to_string()),
            |scenario, at| Some(format!("{scenario} step@{at}")),
            |at| if at < 25 { vec!["b.feature: B".into()] } else { vec!["a.feature: A".into(), "b.feature: B".into()] },
        );
        assert_eq!(log[0].scenario.as_deref(), Some("a.feature: A"));
        assert_eq!(log[0].step.as_deref(), Some("a.feature: A step@10"));
        assert_eq!(log[1].scenario.as_deref(), Some("b.feature: B"), "one scenario running: attributed by time");
        assert_eq!(log[2].scenario, None, "two scenarios running: ambiguous, left unattributed");
        assert_eq!(log[3].scenario, None);
    }

    #[tokio::test]
    async fn fatal_error_stops_at_once() {
        let mut calls = 0;
        let err = eventually::<(), _, _>("fatal", "-", &Backoff::default(), || {
            calls += 1;
            async { Err(fatal(anyhow!("schema violation"))) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(format!("{err:#}").contains("schema violation"), "{err:#}");
    }
}
