//! The World: per-scenario state (namespace, private pipeline, what was published, the last HTTP
//! response and SQL rows) over the run-wide [`Env`]. Steps call its typed helpers, which call the
//! harness; no step builds SQL, URLs or AMQP frames itself.

use anyhow::Context;
use chrono::{DateTime, Utc};
use contract::{AudioChunk, Encoding};
use harness::amqp::{Captured, Source};
use harness::api::{ApiClient, ExchangeRecord, Response};
use harness::env::{Env, Pipeline};
use harness::ledger::{Ledger, Published};
use harness::namespace::ScenarioNamespace;
use harness::signal::Signal;
use harness::sql::FeatureRow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The run-wide environment, set once by the runner before any scenario starts.
pub static ENV: OnceLock<Arc<Env>> = OnceLock::new();

/// How a chunk is shaped when a step does not say.
#[derive(Debug, Clone, Copy)]
pub struct ChunkShape {
    pub sample_rate: u32,
    pub chunk_ms: u32,
    pub channels: u16,
    pub encoding: Encoding,
}

impl Default for ChunkShape {
    fn default() -> Self {
        Self { sample_rate: 16_000, chunk_ms: 100, channels: 1, encoding: Encoding::PcmF32le }
    }
}

#[derive(cucumber::World)]
#[world(init = Self::new)]
pub struct World {
    /// The run: shared pipeline, database, config.
    pub env: Arc<Env>,
    /// This scenario's sensor-id prefix (set by the before hook).
    pub ns: ScenarioNamespace,
    /// Scenario name, for reports.
    pub scenario: String,
    /// A pipeline of this scenario's own (SUT-control scenarios), torn down after it.
    pub private: Option<Pipeline>,
    /// Lineage of what this scenario published.
    pub ledger: Arc<Ledger>,
    /// Next sequence number per sensor id.
    pub sequences: BTreeMap<String, u64>,
    /// Valid chunks this scenario published, in order.
    pub published: Vec<AudioChunk>,
    /// AMQP message ids of the raw (possibly broken) messages, by sensor id.
    pub raw_ids: BTreeMap<String, Vec<String>>,
    /// This scenario's own record of its last HTTP exchange (for its failure bundle only).
    pub http: ExchangeRecord,
    /// The last HTTP response and every response of a burst.
    pub response: Option<Response>,
    pub responses: Vec<Response>,
    /// Rows seeded directly into the table (API tests) and the last rows read.
    pub seeded: Vec<FeatureRow>,
    pub last_rows: Vec<FeatureRow>,
    /// When the scenario's time axis starts (captured_at of its first chunk).
    pub t0: DateTime<Utc>,
    /// Hostile-input campaign of this scenario (steps/fuzz.rs).
    pub fuzz: crate::steps::fuzz::FuzzState,
    /// Chaos experiment of this scenario (steps/chaos.rs); its processes die with it.
    pub chaos: crate::steps::chaos::ChaosState,
    /// Randomly generated chunks (issue #12), by chunk message id: what was generated and from
    /// which seed, for the property steps' band checks and failure messages.
    pub generated: BTreeMap<uuid::Uuid, Generated>,
    /// Sensor runs, work-queue taps and fault proxies of this scenario (steps/sensor.rs, the
    /// readiness steps); dropped with it.
    pub sensor: crate::steps::sensor::SensorState,
}

/// One generated chunk: its kind, seed and index in the series, and the generator's record.
#[derive(Debug, Clone)]
pub struct Generated {
    pub kind: harness::signal::ChunkKind,
    pub seed: u64,
    pub index: usize,
    pub chunk: harness::signal::GeneratedChunk,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("scenario", &self.scenario)
            .field("namespace", &self.ns.prefix)
            .field("private_pipeline", &self.private.as_ref().map(|p| p.names.namespace.clone()))
            .field("sequences", &self.sequences)
            .field(
                "published",
                &self.published.iter().map(|c| (c.sensor_id.as_str(), c.sequence, c.message_id)).collect::<Vec<_>>(),
            )
            .field("raw_ids", &self.raw_ids)
            .field(
                "response",
                &self.response.as_ref().map(|r| (r.status, r.body.chars().take(500).collect::<String>())),
            )
            .field("seeded_rows", &self.seeded.len())
            .field("last_rows", &self.last_rows.len())
            .finish()
    }
}

impl World {
    async fn new() -> anyhow::Result<Self> {
        let env = ENV.get().context("the runner did not initialise the environment")?.clone();
        Ok(World {
            ns: ScenarioNamespace::new(&env.run_id, "unnamed"),
            env,
            scenario: String::new(),
            private: None,
            ledger: Arc::new(Ledger::default()),
            sequences: BTreeMap::new(),
            published: Vec::new(),
            raw_ids: BTreeMap::new(),
            http: ExchangeRecord::default(),
            response: None,
            responses: Vec::new(),
            seeded: Vec::new(),
            last_rows: Vec::new(),
            // The scenario's audio was "captured" from ten minutes ago on, so written_at always
            // follows captured_at; microsecond precision because that is what PostgreSQL keeps.
            t0: DateTime::from_timestamp_micros((Utc::now() - chrono::Duration::minutes(10)).timestamp_micros())
                .expect("now is representable"),
            fuzz: Default::default(),
            chaos: Default::default(),
            generated: BTreeMap::new(),
            sensor: Default::default(),
        })
    }

    /// The pipeline this scenario talks to: its private one, else the shared one.
    pub fn pipeline(&self) -> &Pipeline {
        self.private.as_ref().unwrap_or(&self.env.shared)
    }

    pub fn pipeline_mut(&mut self) -> anyhow::Result<&mut Pipeline> {
        self.private.as_mut().context("this step needs a private pipeline (add `Given a private pipeline`)")
    }

    /// The pipeline's API client, recording its exchanges in this scenario's own record (so a
    /// failure bundle never shows a concurrent scenario's request).
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        Ok(self.pipeline().api()?.recording_into(&self.http))
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.env.config.deadline_ms)
    }

    pub fn backoff(&self) -> harness::eventually::Backoff {
        self.env.config.backoff().scoped(self.ns.prefix.clone())
    }

    /// How long "exactly N" waits for an extra message after the Nth arrived.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(std::env::var("QA_SETTLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(400))
    }

    /// The full sensor id for a name used in a step.
    pub fn sensor(&self, name: &str) -> String {
        self.ns.sensor(name)
    }

    /// Publishes `n` chunks of `signal` for sensor `name`, phase-continuous, and records them.
    pub async fn publish_signal(
        &mut self,
        name: &str,
        signal: Signal,
        n: usize,
        shape: ChunkShape,
    ) -> anyhow::Result<Vec<AudioChunk>> {
        let sensor = self.sensor(name);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = *self.sequences.entry(sensor.clone()).or_insert(0);
            let frames = (shape.sample_rate as u64 * shape.chunk_ms as u64 / 1000).max(1) as usize;
            let samples = signal.render(shape.sample_rate, shape.channels, seq * frames as u64, frames);
            let captured_at = self.t0 + chrono::Duration::milliseconds((seq * shape.chunk_ms as u64) as i64);
            let chunk = AudioChunk::from_samples(
                &sensor,
                seq,
                captured_at,
                shape.sample_rate,
                shape.channels,
                shape.encoding,
                &samples,
            );
            self.publish_chunk(chunk.clone()).await?;
            out.push(chunk);
        }
        Ok(out)
    }

    /// Publishes one prepared chunk and records it in the ledger.
    pub async fn publish_chunk(&mut self, chunk: AudioChunk) -> anyhow::Result<()> {
        self.pipeline().publisher.chunk(&chunk).await?;
        self.ledger.record_published(Published {
            message_id: chunk.message_id,
            sensor_id: chunk.sensor_id.clone(),
            sequence: chunk.sequence,
            at: Instant::now(),
        });
        *self.sequences.entry(chunk.sensor_id.clone()).or_insert(0) = chunk.sequence + 1;
        self.published.push(chunk);
        Ok(())
    }

    /// Chunks this scenario published for a sensor name.
    pub fn chunks_of(&self, name: &str) -> Vec<&AudioChunk> {
        let sensor = self.sensor(name);
        self.published.iter().filter(|c| c.sensor_id == sensor).collect()
    }

    /// Is this captured message one of this scenario's?
    pub fn in_scope(&self, m: &Captured) -> bool {
        m.sensor_id().is_some_and(|s| self.ns.owns(s))
    }

    /// Waits for at least `n` messages from `source` for sensor `name`.
    pub async fn wait_features(&self, source: Source, name: &str, n: usize) -> anyhow::Result<Vec<Captured>> {
        let sensor = self.sensor(name);
        let ns = self.ns.clone();
        let what = format!("{n} {source:?} message(s) for sensor {name:?}");
        self.pipeline()
            .tap
            .scoped(&self.ns.prefix)
            .wait_for(
                &what,
                n,
                self.deadline(),
                move |m| m.sensor_id().is_some_and(|s| ns.owns(s)),
                |m| m.source == source && m.sensor_id() == Some(sensor.as_str()),
            )
            .await
    }

    /// Waits for exactly `n` messages: `n` arrive, then no further one within the settle window.
    pub async fn exactly_features(&self, source: Source, name: &str, n: usize) -> anyhow::Result<Vec<Captured>> {
        let got = self.wait_features(source.clone(), name, n).await?;
        let sensor = self.sensor(name);
        let seen: Vec<String> = got.iter().filter_map(|m| m.str_field("/message_id").map(String::from)).collect();
        self.pipeline()
            .tap
            .none_within(&format!("more than {n} {source:?} message(s) for sensor {name:?}"), self.settle(), |m| {
                m.source == source
                    && m.sensor_id() == Some(sensor.as_str())
                    && !m.str_field("/message_id").is_some_and(|id| seen.iter().any(|s| s == id))
            })
            .await?;
        Ok(got)
    }

    /// Schema violations among this scenario's captured messages.
    pub fn contract_violations(&self) -> Vec<String> {
        self.pipeline()
            .tap
            .matching(|m| self.in_scope(m) && !m.schema_errors.is_empty() && !self.deliberately_broken(m))
            .iter()
            .map(|m| format!("{}: {}", m.summary(), m.schema_errors.join("; ")))
            .collect()
    }

    /// Messages a step broke on purpose are not contract violations of the SUT: raw messages a
    /// step published, and hostile inputs (they carry the fuzzer's token header).
    pub fn deliberately_broken(&self, m: &Captured) -> bool {
        if m.headers.contains_key(harness::fuzz::oracle::TOKEN_HEADER) {
            return true;
        }
        let ids = || self.raw_ids.values().flatten();
        let amqp = m.amqp_message_id.as_deref();
        let body = m.str_field("/message_id");
        ids().any(|id| Some(id.as_str()) == amqp || Some(id.as_str()) == body)
    }

    /// Remembers a response as the last one.
    pub fn set_response(&mut self, r: Response) {
        self.response = Some(r);
    }

    pub fn response(&self) -> anyhow::Result<&Response> {
        self.response.as_ref().context("no HTTP request was made in this scenario yet")
    }
}
