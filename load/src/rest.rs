//! REST load against any deployment (`--host` + bearer token): discovery of sensors and ids, the
//! goose scenarios (latest readers, historical-range readers with pagination, by-id lookups and a
//! mixed dashboard user), and the non-goose probes (sequential client, rate-limiter burst).
//!
//! A response counts as OK only when it is 2xx *and* its body has the contract's shape; a 429 is
//! rate limited (counted apart, neither OK nor an error); anything else is an error. Latency
//! percentiles for the gates cover OK responses only, so fast 429s cannot flatter them.

use crate::stats::Latency;
use anyhow::{Context as _, bail};
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use contract::MessageKind;
use futures::StreamExt;
use goose::metrics::GooseRequestMetric;
use goose::prelude::*;
use harness::api::{ApiClient, HistoryQuery};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Metric groups: transaction and request names, and keys of the latency map.
pub const LATEST: &str = "latest";
/// Historical page reads.
pub const HISTORY: &str = "history";
/// Lookups by message id.
pub const BY_ID: &str = "by_id";

/// History readers follow `next_cursor` at most this many pages per range.
const MAX_PAGES: usize = 3;

/// The id pool for by-id lookups is capped at this many ids.
const MAX_IDS: usize = 10_000;

/// Sensors tried when none are given (`pipeline live --sensors N` names them `sensor-1` …).
const DEFAULT_SENSOR_CANDIDATES: usize = 8;

/// What the load needs to know about the deployment before it starts.
#[derive(Debug, Clone)]
pub struct Target {
    /// API base URL.
    pub host: String,
    /// Bearer tokens; user *i* uses token *i mod n*.
    pub tokens: Vec<String>,
    /// Sensors that have data.
    pub sensors: Vec<String>,
    /// Oldest `captured_at` seen (random windows start after it).
    pub earliest: DateTime<Utc>,
    /// Message ids known to exist, for by-id lookups.
    pub ids: Vec<String>,
}

/// How one response is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a valid body.
    Ok,
    /// 429.
    RateLimited,
    /// Anything else, with a short label (`status 503`, `invalid body: …`, `transport`).
    Error(String),
}

/// Counters and latencies shared by every goose user.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Latencies of OK responses per metric group.
    latency: Mutex<BTreeMap<&'static str, Latency>>,
    /// Latencies of OK responses, all groups.
    all: Mutex<Latency>,
    /// Responses by status label.
    statuses: Mutex<BTreeMap<String, u64>>,
    /// OK responses.
    pub ok: AtomicU64,
    /// 429 responses.
    pub rate_limited: AtomicU64,
    /// Error responses (including invalid bodies and transport errors).
    pub errors: AtomicU64,
    /// Interval between one user's sends (paced runs): latencies are then also measured from each
    /// request's intended send time (no correction needed); zero for closed-loop runs (corrected
    /// after the fact at the mean).
    interval: Duration,
    /// Every OK latency in µs as recorded, when asked for (the merge-exactness test rebuilds one
    /// histogram from all workers' samples); `None` keeps memory flat in long runs.
    samples: Option<Mutex<Vec<u64>>>,
    /// First and last answer counted (any outcome): the span the achieved rate is measured over.
    window: Mutex<Option<(Instant, Instant)>>,
}

impl Recorder {
    /// A recorder for users each sending every `interval` (zero: closed loop); `keep_samples`
    /// also keeps every OK latency ([`Recorder::samples`]).
    pub fn paced(interval: Duration, keep_samples: bool) -> Self {
        let latency = || if interval.is_zero() { Latency::new() } else { Latency::intended(interval) };
        Recorder {
            all: Mutex::new(latency()),
            interval,
            samples: keep_samples.then(|| Mutex::new(Vec::new())),
            ..Recorder::default()
        }
    }

    fn new_latency(&self) -> Latency {
        if self.interval.is_zero() { Latency::new() } else { Latency::intended(self.interval) }
    }

    /// Time from the first to the last answer counted.
    pub fn span(&self) -> Option<Duration> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner).map(|(a, b)| b.duration_since(a))
    }

    /// Every OK latency in µs, as recorded (empty unless asked for by [`Recorder::paced`]).
    pub fn samples(&self) -> Vec<u64> {
        self.samples.as_ref().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone()).unwrap_or_default()
    }

    /// Counts one response of `group` that took `took`.
    pub fn count(&self, group: &'static str, status: Option<u16>, outcome: &Outcome, took: Duration) {
        self.count_paced(group, status, outcome, took, None);
    }

    /// Counts one response; `from_intended` is the time since the request's intended send time
    /// (paced users), which the corrected histogram records instead of a correction.
    pub fn count_paced(
        &self,
        group: &'static str,
        status: Option<u16>,
        outcome: &Outcome,
        took: Duration,
        from_intended: Option<Duration>,
    ) {
        let label = match (status, outcome) {
            (_, Outcome::Error(e)) if e.starts_with("invalid body") => "200 invalid body".to_string(),
            (Some(s), _) => s.to_string(),
            (None, _) => "transport".to_string(),
        };
        *self.statuses.lock().unwrap_or_else(PoisonError::into_inner).entry(label).or_default() += 1;
        {
            let now = Instant::now();
            let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            *w = Some(w.map_or((now, now), |(first, _)| (first, now)));
        }
        match outcome {
            Outcome::Ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                self.latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(group)
                    .or_insert_with(|| self.new_latency())
                    .record_paced(took, from_intended, now);
                self.all.lock().unwrap_or_else(PoisonError::into_inner).record_paced(took, from_intended, now);
                if let Some(samples) = &self.samples {
                    samples.lock().unwrap_or_else(PoisonError::into_inner).push(crate::stats::to_us(took));
                }
            }
            Outcome::RateLimited => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Error(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Snapshot of the per-group latencies.
    pub fn latencies(&self) -> BTreeMap<&'static str, Latency> {
        self.latency.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Snapshot of the all-groups latency.
    pub fn all(&self) -> Latency {
        self.all.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Snapshot of responses by status label.
    pub fn statuses(&self) -> BTreeMap<String, u64> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// All responses counted.
    pub fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.rate_limited.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }
}

/// State shared by the REST scenarios' transactions.
#[derive(Debug)]
pub struct RestState {
    /// Sensors, tokens, time range.
    pub target: Target,
    /// Ids for by-id lookups (grows with what history readers see, up to [`MAX_IDS`]).
    ids: RwLock<Vec<String>>,
    /// What the users observed.
    pub recorder: Recorder,
    /// Users of this process come after this many users of other workers: user *i* takes token
    /// *(offset + i) mod n*, so a distributed run spreads tokens as one process would.
    token_offset: usize,
    /// Paced runs: (interval between one user's requests, users of this process). Each user
    /// sends on a schedule of its own, staggered by `interval / users` from the previous user.
    pace: Option<(Duration, usize)>,
    /// Paced runs: each user's next intended send time.
    slots: Mutex<std::collections::HashMap<usize, Instant>>,
}

impl RestState {
    /// Shared state for one goose run.
    pub fn new(target: Target) -> Arc<Self> {
        Self::with_recorder(target, Recorder::default(), 0)
    }

    /// Shared state with a given recorder and token offset (a worker's share of a larger run).
    pub fn with_recorder(target: Target, recorder: Recorder, token_offset: usize) -> Arc<Self> {
        Self::paced(target, recorder, token_offset, None)
    }

    /// Shared state for paced users: `pace` = (interval of one user, users of this process).
    pub fn paced(
        target: Target,
        recorder: Recorder,
        token_offset: usize,
        pace: Option<(Duration, usize)>,
    ) -> Arc<Self> {
        let ids = RwLock::new(target.ids.clone());
        Arc::new(RestState { target, ids, recorder, token_offset, pace, slots: Mutex::default() })
    }

    /// Paced runs: the user's next intended send time (its first one staggered by its index),
    /// advanced by one interval. A user behind schedule gets a slot in the past: it sends at once
    /// and the latency from that slot shows the delay (no coordinated omission).
    fn next_slot(&self, user: usize) -> Option<Instant> {
        let (interval, users) = self.pace?;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots
            .entry(user)
            .or_insert_with(|| Instant::now() + interval.mul_f64((user % users.max(1)) as f64 / users.max(1) as f64));
        let this = *slot;
        *slot = this + interval;
        Some(this)
    }

    fn token_for(&self, user: &GooseUser) -> &str {
        let t = &self.target.tokens;
        &t[(self.token_offset + user.weighted_users_index) % t.len()]
    }

    fn random_sensor(&self) -> String {
        self.target.sensors.choose(&mut rand::rng()).cloned().unwrap_or_default()
    }

    fn remember_ids(&self, ids: impl IntoIterator<Item = String>) {
        let mut pool = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if pool.len() >= MAX_IDS {
                break;
            }
            pool.push(id);
        }
    }

    fn random_id(&self) -> Option<String> {
        self.ids.read().unwrap_or_else(PoisonError::into_inner).choose(&mut rand::rng()).cloned()
    }
}

/// Finds sensors with data (the given ones, else `sensor-1` … `sensor-8`), the oldest capture
/// time and a pool of ids. Fails with a clear message when the API is unreachable or empty.
pub async fn discover(host: &str, tokens: &[String], sensors: Option<&[String]>) -> anyhow::Result<Target> {
    let api = ApiClient::new(host, tokens.first().cloned())?;
    let health = api.health().await.with_context(|| format!("the API at {host} does not answer /healthz"))?;
    health.expect_status(200).context("GET /healthz")?;
    let candidates: Vec<String> = match sensors {
        Some(s) if !s.is_empty() => s.to_vec(),
        _ => (1..=DEFAULT_SENSOR_CANDIDATES).map(|i| format!("sensor-{i}")).collect(),
    };
    let (mut found, mut ids, mut earliest) = (Vec::new(), Vec::new(), None::<DateTime<Utc>>);
    for sensor in &candidates {
        let resp = api.latest(sensor, "A").await?;
        match resp.status {
            200 => {}
            401 | 403 => {
                bail!("the API refused the token ({}): set QA_API_TOKEN or --token to a valid one", resp.status)
            }
            429 => bail!("the API rate-limited discovery already; wait and retry, or use another token"),
            _ => continue,
        }
        let q = HistoryQuery { sensor_id: Some(sensor.clone()), limit: Some("100".into()), ..HistoryQuery::default() };
        let page = api.history(&q).await?;
        page.expect_status(200).with_context(|| format!("history of {sensor}"))?;
        let body = page.json()?;
        for row in body["items"].as_array().into_iter().flatten() {
            if let Some(id) = row["message_id"].as_str() {
                ids.push(id.to_string());
            }
            if let Some(t) = row["captured_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
                let t = t.with_timezone(&Utc);
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
        found.push(sensor.clone());
    }
    if found.is_empty() {
        bail!(
            "no sensor among {} has a latest Feature A at {host}; start a sensor (e.g. `pipeline live`) or name sensors with --sensors",
            candidates.join(", ")
        );
    }
    if ids.is_empty() {
        bail!("sensors {} have no stored history at {host} yet; wait for the data writer and retry", found.join(", "));
    }
    Ok(Target {
        host: host.to_string(),
        tokens: tokens.to_vec(),
        sensors: found,
        earliest: earliest.unwrap_or_else(Utc::now),
        ids,
    })
}

/// The common first step of every check: a 200 with a JSON body, else the outcome to report
/// (429 is rate-limited, not an error).
fn json_ok(status: u16, body: &str) -> Result<Value, Outcome> {
    match status {
        200 => serde_json::from_str(body).map_err(|_| Outcome::Error("invalid body: not JSON".into())),
        429 => Err(Outcome::RateLimited),
        s => Err(Outcome::Error(format!("status {s}"))),
    }
}

/// Classifies a `latest` response: 200 must be a contract-valid message of the asked type and
/// sensor.
pub fn check_latest(status: u16, body: &str, sensor: &str, feature_type: &str) -> Outcome {
    let v = match json_ok(status, body) {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    let kind = if feature_type == "A" { MessageKind::FeatureA } else { MessageKind::FeatureB };
    if let Err(errors) = harness::json_match::validate_contract(kind, &v) {
        return Outcome::Error(format!("invalid body: {}", errors.first().cloned().unwrap_or_default()));
    }
    if v["sensor_id"] != sensor || v["feature_type"] != feature_type {
        return Outcome::Error(format!(
            "invalid body: sensor/type {}/{} for {sensor}/{feature_type}",
            v["sensor_id"], v["feature_type"]
        ));
    }
    Outcome::Ok
}

/// A stored row's required fields and their types (the OpenAPI `FeatureRow`).
fn check_row(row: &Value) -> Result<(), String> {
    let s = |k: &str| row.get(k).and_then(Value::as_str).ok_or_else(|| format!("row lacks string {k}"));
    for k in ["message_id", "source_message_id"] {
        s(k)?.parse::<uuid::Uuid>().map_err(|_| format!("{k} is not a UUID"))?;
    }
    for k in ["captured_at", "written_at"] {
        DateTime::parse_from_rfc3339(s(k)?).map_err(|_| format!("{k} is not RFC 3339"))?;
    }
    s("sensor_id")?;
    s("processed_by")?;
    if !matches!(s("feature_type")?, "A" | "B") {
        return Err("feature_type is not A or B".into());
    }
    if row.get("sequence").and_then(Value::as_u64).is_none() {
        return Err("sequence is not a non-negative integer".into());
    }
    if !row.get("features").is_some_and(Value::is_object) {
        return Err("features is not an object".into());
    }
    Ok(())
}

/// A parsed history page: its ids and the next cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// `message_id` of every row.
    pub ids: Vec<String>,
    /// `next_cursor`, when not null.
    pub next_cursor: Option<String>,
}

/// Classifies a history page: rows of the right shape, sensor and type, inside `[from, to)`, in
/// `(captured_at, message_id)` order, and a string-or-null cursor.
pub fn check_history(
    status: u16,
    body: &str,
    sensor: &str,
    feature_type: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (Outcome, Page) {
    let v = match json_ok(status, body) {
        Ok(v) => v,
        Err(outcome) => return (outcome, Page::default()),
    };
    let bad = |why: String| (Outcome::Error(format!("invalid body: {why}")), Page::default());
    let Some(items) = v.get("items").and_then(Value::as_array) else {
        return bad("no items array".into());
    };
    let next_cursor = match v.get("next_cursor") {
        Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        _ => return bad("next_cursor is neither a string nor null".into()),
    };
    let mut page = Page { ids: Vec::with_capacity(items.len()), next_cursor };
    let mut last: Option<(DateTime<Utc>, String)> = None;
    for row in items {
        if let Err(e) = check_row(row) {
            return bad(e);
        }
        if row["sensor_id"] != sensor {
            return bad(format!("row of sensor {} in a page for {sensor}", row["sensor_id"]));
        }
        if let Some(t) = feature_type
            && row["feature_type"] != t
        {
            return bad(format!("row of type {} in a page for type {t}", row["feature_type"]));
        }
        let id = row["message_id"].as_str().unwrap_or_default().to_string();
        let at = row["captured_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        if at < from || at >= to {
            return bad(format!("captured_at {at} outside [{from}, {to})"));
        }
        let key = (at, id.clone());
        if last.as_ref().is_some_and(|l| *l > key) {
            return bad("rows out of (captured_at, message_id) order".into());
        }
        last = Some(key);
        page.ids.push(id);
    }
    (Outcome::Ok, page)
}

/// Classifies a by-id response: 200 must be the asked row.
pub fn check_by_id(status: u16, body: &str, id: &str) -> Outcome {
    let v = match json_ok(status, body) {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    if let Err(e) = check_row(&v) {
        return Outcome::Error(format!("invalid body: {e}"));
    }
    if v["message_id"] != id {
        return Outcome::Error(format!("invalid body: message_id {} for {id}", v["message_id"]));
    }
    Outcome::Ok
}

/// One GET through goose (recorded in goose's metrics under `name`), with the bearer token,
/// timed until the body is read. Returns (status, body, elapsed) and goose's request record.
async fn get(
    user: &mut GooseUser,
    state: &RestState,
    path: &str,
    name: &'static str,
) -> Result<(Option<u16>, String, Timing, GooseRequestMetric), Box<TransactionError>> {
    let rb = user
        .get_request_builder(&GooseMethod::Get, path)?
        .header("authorization", format!("Bearer {}", state.token_for(user)));
    let req = GooseRequest::builder().set_request_builder(rb).name(name).build();
    let intended = state.next_slot(user.weighted_users_index);
    if let Some(at) = intended {
        tokio::time::sleep_until(at.into()).await;
    }
    let started = Instant::now();
    let goose = user.request(req).await?;
    let (status, body) = match goose.response {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (Some(status), resp.text().await.unwrap_or_default())
        }
        Err(_) => (None, String::new()),
    };
    let took = started.elapsed();
    Ok((status, body, Timing { took, from_intended: intended.map(|at| at.elapsed()) }, goose.request))
}

/// How long a request took: from its actual send, and (paced users) from its intended send.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// From the actual send until the body was read.
    took: Duration,
    /// From the intended send time until the body was read (paced users only).
    from_intended: Option<Duration>,
}

/// Applies an outcome to goose's record (429 is not a failure; a bad body is) and the recorder.
fn settle(
    user: &mut GooseUser,
    state: &RestState,
    group: &'static str,
    status: Option<u16>,
    outcome: Outcome,
    took: Timing,
    request: &mut GooseRequestMetric,
) -> TransactionResult {
    state.recorder.count_paced(group, status, &outcome, took.took, took.from_intended);
    match outcome {
        Outcome::Ok => Ok(()),
        // Clearing the error first keeps goose from counting the 429 as an error a second time
        // when the success update reaches its metrics.
        Outcome::RateLimited => {
            request.error.clear();
            user.set_success(request)
        }
        // Goose already counts non-2xx statuses and transport errors as failures.
        Outcome::Error(e) if status == Some(200) => user.set_failure(&e, request, None, None),
        Outcome::Error(_) => Ok(()),
    }
}

/// RFC 3339 with `Z` and microseconds: no `+` to encode in a query string.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads the latest Feature A or B of a random sensor.
async fn latest(user: &mut GooseUser, state: &RestState) -> TransactionResult {
    let sensor = state.random_sensor();
    let ty = if rand::random::<bool>() { "A" } else { "B" };
    let path = format!("/v1/sensors/{sensor}/features/latest?type={ty}");
    let (status, body, took, mut request) = get(user, state, &path, LATEST).await?;
    let outcome = match status {
        Some(s) => check_latest(s, &body, &sensor, ty),
        None => Outcome::Error("transport".into()),
    };
    settle(user, state, LATEST, status, outcome, took, &mut request)
}

/// Reads a random window of a random sensor's history, following up to [`MAX_PAGES`] pages.
async fn history(user: &mut GooseUser, state: &RestState) -> TransactionResult {
    let sensor = state.random_sensor();
    let (from, to, ty, limit) = {
        let mut rng = rand::rng();
        let now = Utc::now();
        let span = (now - state.target.earliest).num_milliseconds().max(1000);
        let from = state.target.earliest + ChronoDuration::milliseconds(rng.random_range(0..span));
        let to = from + ChronoDuration::milliseconds(rng.random_range(1_000..600_000));
        let ty = [Some("A"), Some("B"), None][rng.random_range(0..3)];
        (from, to, ty, [10, 50, 100][rng.random_range(0..3)])
    };
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/v1/features?sensor_id={sensor}&from={}&to={}&limit={limit}", ts(from), ts(to));
        if let Some(t) = ty {
            path.push_str(&format!("&type={t}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body, took, mut request) = get(user, state, &path, HISTORY).await?;
        let (outcome, page) = match status {
            Some(s) => check_history(s, &body, &sensor, ty, from, to),
            None => (Outcome::Error("transport".into()), Page::default()),
        };
        let ok = outcome == Outcome::Ok;
        settle(user, state, HISTORY, status, outcome, took, &mut request)?;
        if !ok {
            return Ok(());
        }
        state.remember_ids(page.ids.into_iter().take(5));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(())
}

/// Looks up a known message id.
async fn by_id(user: &mut GooseUser, state: &RestState) -> TransactionResult {
    let Some(id) = state.random_id() else {
        return Ok(());
    };
    let (status, body, took, mut request) = get(user, state, &format!("/v1/features/{id}"), BY_ID).await?;
    let outcome = match status {
        Some(s) => check_by_id(s, &body, &id),
        None => Outcome::Error("transport".into()),
    };
    settle(user, state, BY_ID, status, outcome, took, &mut request)
}

/// A transaction running `f` with the shared state, named for its metric group.
fn tx(
    state: &Arc<RestState>,
    name: &str,
    f: for<'a> fn(&'a mut GooseUser, &'a RestState) -> futures::future::BoxFuture<'a, TransactionResult>,
) -> Transaction {
    let state = state.clone();
    let func: TransactionFunction = Arc::new(move |user| {
        let state = state.clone();
        Box::pin(async move { f(user, &state).await })
    });
    Transaction::new(func).set_name(name)
}

/// Which REST scenarios a run registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Latest readers only (`GET /v1/sensors/{id}/features/latest`).
    Latest,
    /// The weighted mix of [`scenarios`]: latest, history pages, by-id lookups, dashboards.
    Mixed,
}

/// The scenarios of `mix`.
pub fn scenarios_of(state: &Arc<RestState>, mix: Mix) -> anyhow::Result<Vec<Scenario>> {
    match mix {
        Mix::Mixed => scenarios(state),
        Mix::Latest => {
            Ok(vec![scenario!("LatestReaders").register_transaction(tx(state, LATEST, |u, s| Box::pin(latest(u, s))))])
        }
    }
}

/// The weighted REST scenarios (umami-style: `main` only registers them).
pub fn scenarios(state: &Arc<RestState>) -> anyhow::Result<Vec<Scenario>> {
    let latest_tx = || tx(state, LATEST, |u, s| Box::pin(latest(u, s)));
    let history_tx = || tx(state, HISTORY, |u, s| Box::pin(history(u, s)));
    let by_id_tx = || tx(state, BY_ID, |u, s| Box::pin(by_id(u, s)));
    Ok(vec![
        scenario!("LatestReaders").set_weight(6)?.register_transaction(latest_tx()),
        scenario!("HistoryReaders").set_weight(3)?.register_transaction(history_tx()),
        scenario!("ByIdLookups").set_weight(1)?.register_transaction(by_id_tx()),
        scenario!("MixedDashboard")
            .set_weight(2)?
            .register_transaction(latest_tx())
            .register_transaction(history_tx())
            .register_transaction(by_id_tx()),
    ])
}

/// Waits (up to ~10 s) until the token's bucket answers 200 again, so a probe does not start
/// on an empty bucket left by the previous phase.
pub async fn wait_for_quota(target: &Target) {
    let Ok(api) = ApiClient::new(&target.host, target.tokens.first().cloned()) else { return };
    for _ in 0..10 {
        match api.latest(&target.sensors[0], "A").await {
            Ok(r) if r.status == 429 => {
                let secs = r.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(1).clamp(1, 5);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            _ => return,
        }
    }
}

/// A closed-loop client sending `n` requests one after another (alternating latest and a
/// history page), as the original suite's sequential check did.
pub async fn sequential_probe(target: &Target, n: u64) -> anyhow::Result<Recorder> {
    let api = ApiClient::new(&target.host, target.tokens.first().cloned())?;
    let rec = Recorder::default();
    for i in 0..n {
        let sensor = &target.sensors[i as usize % target.sensors.len()];
        let started = Instant::now();
        if i % 2 == 0 {
            let ty = if i % 4 == 0 { "A" } else { "B" };
            let (status, outcome) = match api.latest(sensor, ty).await {
                Ok(r) => (Some(r.status), check_latest(r.status, &r.body, sensor, ty)),
                Err(_) => (None, Outcome::Error("transport".into())),
            };
            rec.count(LATEST, status, &outcome, started.elapsed());
        } else {
            let (from, to) = (target.earliest, Utc::now() + ChronoDuration::seconds(1));
            let q = HistoryQuery {
                sensor_id: Some(sensor.clone()),
                from: Some(ts(from)),
                to: Some(ts(to)),
                limit: Some("50".into()),
                ..HistoryQuery::default()
            };
            let (status, outcome) = match api.history(&q).await {
                Ok(r) => (Some(r.status), check_history(r.status, &r.body, sensor, None, from, to).0),
                Err(_) => (None, Outcome::Error("transport".into())),
            };
            rec.count(HISTORY, status, &outcome, started.elapsed());
        }
    }
    Ok(rec)
}

/// What the rate-limiter burst saw.
#[derive(Debug, Default)]
pub struct LimiterProbe {
    /// Latency of every response (200 and 429 alike: the limiter must answer fast too).
    pub latency: Latency,
    /// 200 responses with a valid body.
    pub ok: u64,
    /// 429 responses with `Retry-After` ≥ 1 and a problem+json body.
    pub well_formed_429: u64,
    /// Anything else (5xx, malformed 429s, invalid bodies, transport errors), by label.
    pub bad: BTreeMap<String, u64>,
}

/// Sends `n` `latest` requests with one token, `concurrency` at a time, to make the per-token
/// limiter engage, and checks every answer.
pub async fn limiter_probe(target: &Target, n: u64, concurrency: usize) -> anyhow::Result<LimiterProbe> {
    let api = ApiClient::new(&target.host, target.tokens.first().cloned())?;
    let sensor = target.sensors[0].clone();
    let results: Vec<(Duration, Result<harness::api::Response, String>)> = futures::stream::iter(0..n)
        .map(|_| {
            let (api, sensor) = (api.clone(), sensor.clone());
            async move {
                let started = Instant::now();
                let r = api.latest(&sensor, "A").await.map_err(|e| format!("{e:#}"));
                (started.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut probe = LimiterProbe::default();
    for (took, r) in results {
        probe.latency.record(took);
        let label = match r {
            Err(_) => Some("transport".to_string()),
            Ok(resp) => match resp.status {
                200 => match check_latest(200, &resp.body, &sensor, "A") {
                    Outcome::Ok => {
                        probe.ok += 1;
                        None
                    }
                    _ => Some("200 invalid body".into()),
                },
                429 => {
                    let retry = resp.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
                    let problem =
                        resp.header("content-type").is_some_and(|c| c.starts_with("application/problem+json"));
                    match (retry, problem) {
                        (Some(r), true) if r >= 1 => {
                            probe.well_formed_429 += 1;
                            None
                        }
                        (None, _) | (Some(0), _) => Some("429 without Retry-After >= 1".into()),
                        _ => Some("429 without problem+json".into()),
                    }
                }
                s => Some(format!("status {s}")),
            },
        };
        if let Some(l) = label {
            *probe.bad.entry(l).or_default() += 1;
        }
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn row(id: &str, at: &str, ty: &str) -> Value {
        json!({
            "message_id": id, "feature_type": ty, "sensor_id": "s1",
            "source_message_id": "6b1f1a3e-52a5-4b4e-9a53-7e7c1d1f7a01", "sequence": 1,
            "captured_at": at, "processed_by": "a-1", "features": {}, "written_at": at
        })
    }

    const ID1: &str = "00000000-0000-4000-8000-000000000001";
    const ID2: &str = "00000000-0000-4000-8000-000000000002";

    fn window() -> (DateTime<Utc>, DateTime<Utc>) {
        ("2024-01-01T00:00:00Z".parse().unwrap(), "2024-01-02T00:00:00Z".parse().unwrap())
    }

    #[rstest]
    #[case(429, "", Outcome::RateLimited)]
    #[case(503, "{}", Outcome::Error("status 503".into()))]
    #[case(404, "{}", Outcome::Error("status 404".into()))]
    fn latest_statuses(#[case] status: u16, #[case] body: &str, #[case] outcome: Outcome) {
        assert_eq!(check_latest(status, body, "s1", "A"), outcome);
    }

    #[test]
    fn a_200_with_a_wrong_body_is_an_error() {
        let o = check_latest(200, "{\"hello\":1}", "s1", "A");
        assert!(matches!(o, Outcome::Error(ref e) if e.starts_with("invalid body")), "{o:?}");
        assert!(matches!(check_latest(200, "<html>", "s1", "A"), Outcome::Error(_)));
    }

    #[test]
    fn history_pages_are_checked_for_shape_scope_and_order() {
        let (from, to) = window();
        let page = json!({"items": [row(ID1, "2024-01-01T01:00:00Z", "A"), row(ID2, "2024-01-01T02:00:00Z", "A")], "next_cursor": "abc"});
        let (o, p) = check_history(200, &page.to_string(), "s1", Some("A"), from, to);
        assert_eq!(o, Outcome::Ok);
        assert_eq!((p.ids.len(), p.next_cursor.as_deref()), (2, Some("abc")));

        let unordered = json!({"items": [row(ID2, "2024-01-01T02:00:00Z", "A"), row(ID1, "2024-01-01T01:00:00Z", "A")], "next_cursor": null});
        assert!(
            matches!(check_history(200, &unordered.to_string(), "s1", None, from, to).0, Outcome::Error(ref e) if e.contains("order"))
        );
        let outside = json!({"items": [row(ID1, "2024-01-03T00:00:00Z", "A")], "next_cursor": null});
        assert!(
            matches!(check_history(200, &outside.to_string(), "s1", None, from, to).0, Outcome::Error(ref e) if e.contains("outside"))
        );
        let wrong_type = json!({"items": [row(ID1, "2024-01-01T01:00:00Z", "B")], "next_cursor": null});
        assert!(matches!(check_history(200, &wrong_type.to_string(), "s1", Some("A"), from, to).0, Outcome::Error(_)));
        let bad_cursor = json!({"items": [], "next_cursor": 5});
        assert!(matches!(check_history(200, &bad_cursor.to_string(), "s1", None, from, to).0, Outcome::Error(_)));
        let mut missing = row(ID1, "2024-01-01T01:00:00Z", "A");
        missing.as_object_mut().unwrap().remove("written_at");
        let page = json!({"items": [missing], "next_cursor": null});
        assert!(matches!(check_history(200, &page.to_string(), "s1", None, from, to).0, Outcome::Error(_)));
        assert_eq!(check_history(429, "", "s1", None, from, to).0, Outcome::RateLimited);
    }

    #[test]
    fn by_id_must_return_the_asked_row() {
        let body = row(ID1, "2024-01-01T01:00:00Z", "A").to_string();
        assert_eq!(check_by_id(200, &body, ID1), Outcome::Ok);
        assert!(matches!(check_by_id(200, &body, ID2), Outcome::Error(_)));
        assert_eq!(check_by_id(429, "", ID1), Outcome::RateLimited);
    }

    #[test]
    fn recorder_counts_429_apart_and_times_only_ok() {
        let r = Recorder::default();
        r.count(LATEST, Some(200), &Outcome::Ok, Duration::from_millis(2));
        r.count(LATEST, Some(429), &Outcome::RateLimited, Duration::from_micros(50));
        r.count(LATEST, Some(200), &Outcome::Error("invalid body: x".into()), Duration::from_millis(1));
        r.count(HISTORY, None, &Outcome::Error("transport".into()), Duration::from_millis(1));
        assert_eq!(
            (r.ok.load(Ordering::Relaxed), r.rate_limited.load(Ordering::Relaxed), r.errors.load(Ordering::Relaxed)),
            (1, 1, 2)
        );
        assert_eq!(r.all().count(), 1);
        let s = r.statuses();
        assert_eq!((s["429"], s["200 invalid body"], s["transport"]), (1, 1, 1));
        assert_eq!(r.total(), 4);
    }
}
