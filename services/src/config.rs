//! Configuration: what an operator sets. Read from an optional TOML file (`--config` or
//! `APQ_CONFIG`), then overridden by `APQ_*` environment variables. Live state never lives here.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid value for {var}: {reason}")]
    Env { var: String, reason: String },
}

/// Everything any component may need; each component reads only its own sections.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Broker address and naming shared by all components.
    pub amqp: AmqpSettings,
    /// Database address (data writer and REST API).
    pub database: DatabaseSettings,
    /// Per-component tuning.
    pub algorithm_a: ConsumerSettings,
    pub algorithm_b: ConsumerSettings,
    pub data_writer: DataWriterSettings,
    pub rest_api: RestApiSettings,
    pub sensor: SensorSettings,
    /// Optional health endpoint for the queue consumers (k8s probes); the API serves its own.
    pub health: HealthSettings,
    /// Identifies this process in `processed_by` and logs; defaults to `<component>-<pid>`.
    pub instance_id: Option<String>,
    /// Fault injection shared by every component (all off in production).
    pub faults: FaultSettings,
}

/// Switches that bring back known defects, so the harness can prove its chaos scenarios notice
/// them. Each is off by default and logged loudly when on. Never in production.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Random output ids per processing attempt (and no per-source backstop index): a
    /// redelivered input becomes a second Feature A/B and a second row.
    pub random_output_ids: bool,
    /// Algorithm A and B ack their input as soon as the output is published, before its
    /// publisher confirm arrives, and whatever the confirm says (a nack loses the chunk).
    pub ack_before_confirm: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Prefix for every exchange and queue name, so isolated copies can share one broker.
    pub namespace: String,
    /// Largest message body a consumer accepts before dead-lettering it.
    pub max_message_bytes: usize,
    /// Reconnect backoff bounds when the broker goes away (full jitter below the current bound;
    /// back to the minimum after a healthy session).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// AMQP heartbeat in seconds: a silent connection is declared dead after two missed beats.
    pub heartbeat_secs: u16,
    /// Fault injection: reconnect backoff that never resets after a healthy session and has no
    /// jitter (every outage waits longer; all components reconnect in the same instant).
    pub fault_backoff_no_reset: bool,
    /// Fault injection: no heartbeat requested (the server's 60 s applies): a silent broker link
    /// goes unnoticed for about two minutes.
    pub fault_no_heartbeat: bool,
    /// Fault injection: cut `x-dlq-detail` at byte 1000 even inside a multi-byte character
    /// (a panic on hostile UTF-8), so the harness can prove its fuzzer notices. Never in production.
    pub fault_byte_truncate_detail: bool,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace: String::new(),
            max_message_bytes: 4 * 1024 * 1024,
            reconnect_min_ms: 100,
            reconnect_max_ms: 2_000,
            heartbeat_secs: 10,
            fault_backoff_no_reset: false,
            fault_no_heartbeat: false,
            fault_byte_truncate_detail: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// libpq-style URL, e.g. `postgres://postgres@127.0.0.1:5432/audio_pipeline`.
    pub url: String,
    /// Connections in the API's pool.
    pub pool_size: usize,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: "postgres://postgres@127.0.0.1:5432/audio_pipeline".into(), pool_size: 8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Unacked deliveries the broker may push to this instance (bounded work in flight).
    pub prefetch: u16,
    /// Test hook for fault-injection runs: drop (ack without publishing) every Nth message.
    /// 0 disables it. Exists so the harness can prove it notices a lossy stage.
    pub fault_drop_every: u64,
    /// Test hook (Algorithm B only): hold each message this many ms before publishing its
    /// output, so the harness can prove its latency waterfall names the slow stage. 0 = off.
    pub fault_delay_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self { prefetch: 32, fault_drop_every: 0, fault_delay_ms: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataWriterSettings {
    /// Rows per INSERT transaction at most.
    pub batch_size: usize,
    /// Longest a partial batch waits for more rows before it is flushed; 0 (the default) writes
    /// as soon as no further delivery is waiting (group commit: batches grow with the load).
    pub flush_interval_ms: u64,
    /// Database connections writing at once: a batch's INSERT and commit overlap the previous
    /// one's (acks stay in order). 1 = one batch at a time.
    pub connections: usize,
    /// Unacked deliveries in flight; must exceed batch_size for batches to fill.
    pub prefetch: u16,
    /// Fault injection: write without `ON CONFLICT DO NOTHING` and drop the UNIQUE index,
    /// so the harness can prove it notices duplicated rows. Never set in production.
    pub fault_ignore_unique: bool,
    /// Fault injection: trust the input (no schema check, only a typed decode) and requeue a
    /// batch the database refuses, forever: one bad row stops all writes. Never in production.
    pub fault_retry_rejected: bool,
    /// Fault injection: accept `processed_by` beyond its 128-character bound. Never in production.
    pub fault_unbounded_processed_by: bool,
    /// Longest one batch's INSERT (and COMMIT) may take before the writer gives up on the
    /// connection, requeues the batch and reconnects; also the server-side `statement_timeout`.
    pub write_timeout_ms: u64,
    /// Longest a database connect may take (a silent network otherwise hangs it forever).
    pub connect_timeout_ms: u64,
    /// TCP keepalive idle time on the database connection (dead peers are noticed without traffic).
    pub keepalive_idle_ms: u64,
    /// Longest a graceful shutdown waits for the final flush and acks before exiting anyway
    /// (unacked deliveries are then redelivered, and the UNIQUE key absorbs the copies).
    pub shutdown_timeout_ms: u64,
    /// Fault injection: no write/connect timeouts, no keepalive, unbounded shutdown: a silent
    /// database link hangs the writer forever. Never in production.
    pub fault_no_deadlines: bool,
    /// Fault injection: ack a batch's deliveries before its INSERT commits (a crash between the
    /// two loses the batch). Never in production.
    pub fault_ack_before_commit: bool,
}

impl Default for DataWriterSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            flush_interval_ms: 0,
            connections: 2,
            prefetch: 400,
            fault_ignore_unique: false,
            fault_retry_rejected: false,
            fault_unbounded_processed_by: false,
            write_timeout_ms: 5_000,
            connect_timeout_ms: 1_500,
            keepalive_idle_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            fault_no_deadlines: false,
            fault_ack_before_commit: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestApiSettings {
    /// Listen address; port 0 picks a free port (printed when ready).
    pub bind: String,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Sustained requests per second per token.
    pub rate_limit_per_sec: f64,
    /// Burst size per token.
    pub rate_limit_burst: u32,
    /// Page size of the historical query when `limit` is absent.
    pub default_limit: u32,
    /// Largest `limit` accepted.
    pub max_limit: u32,
    /// Fault injection: accept any request without checking the token. Never set in production.
    pub fault_skip_auth: bool,
    /// A connection must deliver a complete request head within this many milliseconds of being
    /// accepted or of its previous response, else it is closed (slow-header clients, idle
    /// keep-alive connections).
    pub header_timeout_ms: u64,
    /// Failed authentications one client IP may make per `auth_failure_window_ms` before its
    /// `/v1` requests are answered 429 (burst; the allowance refills evenly over the window).
    pub auth_failure_limit: u32,
    /// The window of `auth_failure_limit`, in milliseconds.
    pub auth_failure_window_ms: u64,
    /// Upper bound on the JSON of one history page: a page stops before the row that would
    /// exceed it (at least one row is always served) and `next_cursor` continues from there.
    pub max_page_bytes: usize,
    /// Fault injection: no cache refill from the database after a (re)connect and no database
    /// fallback on a cache miss: "latest" goes stale after a broker gap. Never in production.
    pub fault_no_cache_refill: bool,
}

impl Default for RestApiSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            // None: the API refuses to start without tokens (`pipeline live` supplies `dev-token`).
            tokens: Vec::new(),
            rate_limit_per_sec: 200.0,
            rate_limit_burst: 400,
            default_limit: 100,
            max_limit: 1000,
            fault_skip_auth: false,
            header_timeout_ms: 10_000,
            auth_failure_limit: 30,
            auth_failure_window_ms: 60_000,
            max_page_bytes: 1024 * 1024,
            fault_no_cache_refill: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Address for `/healthz` + `/readyz` of queue consumers; unset means no endpoint.
    pub bind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorSettings {
    pub sensor_id: String,
    /// `sine`, `noise`, `silence`, `clipped-sine` or `wav`.
    pub signal: String,
    pub frequency_hz: f64,
    pub amplitude: f64,
    pub sample_rate: u32,
    pub chunk_ms: u32,
    /// Chunks per second to publish; 0 means as fast as confirms allow.
    pub rate_per_sec: f64,
    /// Stop after this many chunks (0 = unbounded, until duration or Ctrl-C).
    pub count: u64,
    /// Stop after this many seconds (0 = unbounded).
    pub duration_secs: f64,
    /// WAV file for `signal = "wav"`.
    pub wav_path: Option<String>,
}

impl Default for SensorSettings {
    fn default() -> Self {
        Self {
            sensor_id: "sensor-1".into(),
            signal: "sine".into(),
            frequency_hz: 440.0,
            amplitude: 0.5,
            sample_rate: 16_000,
            chunk_ms: 100,
            rate_per_sec: 10.0,
            count: 0,
            duration_secs: 0.0,
            wav_path: None,
        }
    }
}

impl Settings {
    /// File (if any) then environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = path.map(Path::to_path_buf).or_else(|| std::env::var_os("APQ_CONFIG").map(Into::into));
        let mut settings = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p.display().to_string(), source })?
            }
            None => Settings::default(),
        };
        settings.apply_env(|k| std::env::var(k).ok())?;
        Ok(settings)
    }

    /// Overrides from `APQ_*` variables; `get` is injectable so tests need not touch the process env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &str, v: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env { var: var.into(), reason: e.to_string() })
        }
        macro_rules! set {
            ($var:literal, $field:expr) => {
                if let Some(v) = get($var) {
                    $field = parse($var, v)?;
                }
            };
        }
        macro_rules! set_str {
            ($var:literal, $field:expr) => {
                if let Some(v) = get($var) {
                    $field = v;
                }
            };
        }
        set_str!("APQ_AMQP_URL", self.amqp.url);
        set_str!("APQ_NAMESPACE", self.amqp.namespace);
        set!("APQ_MAX_MESSAGE_BYTES", self.amqp.max_message_bytes);
        set_str!("APQ_DATABASE_URL", self.database.url);
        set!("APQ_DB_POOL_SIZE", self.database.pool_size);
        if let Some(v) = get("APQ_INSTANCE_ID") {
            self.instance_id = Some(v);
        }
        if let Some(v) = get("APQ_HEALTH_BIND") {
            self.health.bind = Some(v);
        }
        set!("APQ_ALGORITHM_A_PREFETCH", self.algorithm_a.prefetch);
        set!("APQ_ALGORITHM_A_FAULT_DROP_EVERY", self.algorithm_a.fault_drop_every);
        set!("APQ_ALGORITHM_B_PREFETCH", self.algorithm_b.prefetch);
        set!("APQ_ALGORITHM_B_FAULT_DROP_EVERY", self.algorithm_b.fault_drop_every);
        set!("APQ_ALGORITHM_B_FAULT_DELAY_MS", self.algorithm_b.fault_delay_ms);
        set!("APQ_WRITER_BATCH_SIZE", self.data_writer.batch_size);
        set!("APQ_WRITER_FLUSH_INTERVAL_MS", self.data_writer.flush_interval_ms);
        set!("APQ_WRITER_CONNECTIONS", self.data_writer.connections);
        set!("APQ_WRITER_PREFETCH", self.data_writer.prefetch);
        set!("APQ_WRITER_FAULT_IGNORE_UNIQUE", self.data_writer.fault_ignore_unique);
        set!("APQ_WRITER_FAULT_RETRY_REJECTED", self.data_writer.fault_retry_rejected);
        set!("APQ_WRITER_FAULT_UNBOUNDED_PROCESSED_BY", self.data_writer.fault_unbounded_processed_by);
        set!("APQ_FAULT_BYTE_TRUNCATE_DETAIL", self.amqp.fault_byte_truncate_detail);
        set!("APQ_RECONNECT_MIN_MS", self.amqp.reconnect_min_ms);
        set!("APQ_RECONNECT_MAX_MS", self.amqp.reconnect_max_ms);
        set!("APQ_HEARTBEAT_SECS", self.amqp.heartbeat_secs);
        set!("APQ_FAULT_RANDOM_OUTPUT_IDS", self.faults.random_output_ids);
        set!("APQ_FAULT_ACK_BEFORE_CONFIRM", self.faults.ack_before_confirm);
        set!("APQ_FAULT_BACKOFF_NO_RESET", self.amqp.fault_backoff_no_reset);
        set!("APQ_FAULT_NO_HEARTBEAT", self.amqp.fault_no_heartbeat);
        set!("APQ_WRITER_WRITE_TIMEOUT_MS", self.data_writer.write_timeout_ms);
        set!("APQ_WRITER_CONNECT_TIMEOUT_MS", self.data_writer.connect_timeout_ms);
        set!("APQ_WRITER_KEEPALIVE_IDLE_MS", self.data_writer.keepalive_idle_ms);
        set!("APQ_WRITER_SHUTDOWN_TIMEOUT_MS", self.data_writer.shutdown_timeout_ms);
        set!("APQ_WRITER_FAULT_NO_DEADLINES", self.data_writer.fault_no_deadlines);
        set!("APQ_WRITER_FAULT_ACK_BEFORE_COMMIT", self.data_writer.fault_ack_before_commit);
        set!("APQ_API_FAULT_NO_CACHE_REFILL", self.rest_api.fault_no_cache_refill);
        set_str!("APQ_API_BIND", self.rest_api.bind);
        if let Some(v) = get("APQ_API_TOKENS") {
            self.rest_api.tokens = v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
        }
        set!("APQ_API_RATE_LIMIT_PER_SEC", self.rest_api.rate_limit_per_sec);
        set!("APQ_API_RATE_LIMIT_BURST", self.rest_api.rate_limit_burst);
        set!("APQ_API_DEFAULT_LIMIT", self.rest_api.default_limit);
        set!("APQ_API_MAX_LIMIT", self.rest_api.max_limit);
        set!("APQ_API_FAULT_SKIP_AUTH", self.rest_api.fault_skip_auth);
        set!("APQ_API_HEADER_TIMEOUT_MS", self.rest_api.header_timeout_ms);
        set!("APQ_API_AUTH_FAILURE_LIMIT", self.rest_api.auth_failure_limit);
        set!("APQ_API_AUTH_FAILURE_WINDOW_MS", self.rest_api.auth_failure_window_ms);
        set!("APQ_API_MAX_PAGE_BYTES", self.rest_api.max_page_bytes);
        set_str!("APQ_SENSOR_ID", self.sensor.sensor_id);
        set_str!("APQ_SENSOR_SIGNAL", self.sensor.signal);
        set!("APQ_SENSOR_FREQUENCY_HZ", self.sensor.frequency_hz);
        set!("APQ_SENSOR_AMPLITUDE", self.sensor.amplitude);
        set!("APQ_SENSOR_SAMPLE_RATE", self.sensor.sample_rate);
        set!("APQ_SENSOR_CHUNK_MS", self.sensor.chunk_ms);
        set!("APQ_SENSOR_RATE_PER_SEC", self.sensor.rate_per_sec);
        set!("APQ_SENSOR_COUNT", self.sensor.count);
        set!("APQ_SENSOR_DURATION_SECS", self.sensor.duration_secs);
        if let Some(v) = get("APQ_SENSOR_WAV_PATH") {
            self.sensor.wav_path = Some(v);
        }
        self.validate()
    }

    /// Rejects settings that cannot work, with the name of the offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |var: &str, reason: &str| Err(ConfigError::Env { var: var.into(), reason: reason.into() });
        if self.data_writer.batch_size == 0 {
            return bad("data_writer.batch_size", "must be at least 1");
        }
        if self.data_writer.connections == 0 {
            return bad("data_writer.connections", "must be at least 1");
        }
        if self.rest_api.rate_limit_per_sec <= 0.0 || !self.rest_api.rate_limit_per_sec.is_finite() {
            return bad("rest_api.rate_limit_per_sec", "must be a positive number");
        }
        if self.rest_api.default_limit == 0 || self.rest_api.default_limit > self.rest_api.max_limit {
            return bad("rest_api.default_limit", "must be between 1 and rest_api.max_limit");
        }
        if self.rest_api.header_timeout_ms == 0 {
            return bad("rest_api.header_timeout_ms", "must be at least 1");
        }
        if self.rest_api.auth_failure_limit == 0 || self.rest_api.auth_failure_window_ms == 0 {
            return bad("rest_api.auth_failure_limit", "the limit and its window must be at least 1");
        }
        if self.rest_api.max_page_bytes == 0 {
            return bad("rest_api.max_page_bytes", "must be at least 1");
        }
        if self.amqp.reconnect_min_ms == 0 || self.amqp.reconnect_min_ms > self.amqp.reconnect_max_ms {
            return bad("amqp.reconnect_min_ms", "must be between 1 and amqp.reconnect_max_ms");
        }
        let dw = &self.data_writer;
        if dw.write_timeout_ms == 0 || dw.connect_timeout_ms == 0 || dw.keepalive_idle_ms == 0 {
            return bad("data_writer.write_timeout_ms", "the write, connect and keepalive times must be at least 1 ms");
        }
        Ok(())
    }

    /// The instance id, defaulting to `<component>-<pid>`.
    pub fn instance_id(&self, component: &str) -> String {
        self.instance_id.clone().unwrap_or_else(|| format!("{component}-{}", std::process::id()))
    }
}

/// One `APQ_*` variable for `pipeline <component> --help`: who reads it, its default, what it does.
pub struct EnvVar {
    /// The variable.
    pub name: &'static str,
    /// Subcommands that read it (`*` = every one that talks to the broker).
    pub used_by: &'static [&'static str],
    /// Its default, rendered from `Settings::default()`.
    pub default: fn(&Settings) -> String,
    /// One line on what it does.
    pub meaning: &'static str,
}

const BROKER: &[&str] = &["sensor", "algorithm-a", "algorithm-b", "data-writer", "rest-api", "live", "purge"];
const CONSUMERS: &[&str] = &["algorithm-a", "algorithm-b", "data-writer", "rest-api", "live"];
const DB: &[&str] = &["data-writer", "rest-api", "migrate", "live", "purge"];
const WRITER: &[&str] = &["data-writer", "live"];
const API: &[&str] = &["rest-api", "live"];
const SENSOR: &[&str] = &["sensor", "live"];

macro_rules! var {
    ($name:literal, $used:expr, $default:expr, $meaning:literal) => {
        EnvVar { name: $name, used_by: $used, default: $default, meaning: $meaning }
    };
}

/// Every variable `apply_env` reads (a test keeps the two in step), plus the few read elsewhere.
pub const ENV_VARS: &[EnvVar] = &[
    var!("APQ_CONFIG", BROKER, |_| "unset".into(), "TOML file with the same settings; variables override it"),
    var!("APQ_LOG_FORMAT", BROKER, |_| "json".into(), "`text` for human-readable logs on stderr"),
    var!("APQ_AMQP_URL", BROKER, |s| s.amqp.url.clone(), "broker URL"),
    var!("APQ_NAMESPACE", BROKER, |s| s.amqp.namespace.clone(), "prefix of every queue and exchange name"),
    var!(
        "APQ_MAX_MESSAGE_BYTES",
        CONSUMERS,
        |s| s.amqp.max_message_bytes.to_string(),
        "larger bodies are dead-lettered"
    ),
    var!(
        "APQ_RECONNECT_MIN_MS",
        BROKER,
        |s| s.amqp.reconnect_min_ms.to_string(),
        "reconnect backoff, first bound (full jitter)"
    ),
    var!("APQ_RECONNECT_MAX_MS", BROKER, |s| s.amqp.reconnect_max_ms.to_string(), "reconnect backoff, largest bound"),
    var!("APQ_HEARTBEAT_SECS", BROKER, |s| s.amqp.heartbeat_secs.to_string(), "AMQP heartbeat requested"),
    var!("APQ_INSTANCE_ID", BROKER, |_| "<component>-<pid>".into(), "id in processed_by and logs"),
    var!(
        "APQ_HEALTH_BIND",
        &["algorithm-a", "algorithm-b", "data-writer"],
        |_| "unset".into(),
        "address of /healthz, /readyz, /metrics"
    ),
    var!("APQ_DATABASE_URL", DB, |s| s.database.url.clone(), "PostgreSQL URL"),
    var!("APQ_DB_POOL_SIZE", API, |s| s.database.pool_size.to_string(), "the API's database connections"),
    var!("APQ_DB_WRITER_ROLE", &["migrate"], |_| "unset".into(), "role created with INSERT on features"),
    var!("APQ_DB_WRITER_PASSWORD", &["migrate"], |_| "unset".into(), "its password"),
    var!("APQ_DB_READER_ROLE", &["migrate"], |_| "unset".into(), "role created with SELECT on features"),
    var!("APQ_DB_READER_PASSWORD", &["migrate"], |_| "unset".into(), "its password"),
    var!(
        "APQ_ALGORITHM_A_PREFETCH",
        &["algorithm-a", "live"],
        |s| s.algorithm_a.prefetch.to_string(),
        "unacked deliveries per instance"
    ),
    var!(
        "APQ_ALGORITHM_B_PREFETCH",
        &["algorithm-b", "live"],
        |s| s.algorithm_b.prefetch.to_string(),
        "unacked deliveries per instance"
    ),
    var!("APQ_WRITER_BATCH_SIZE", WRITER, |s| s.data_writer.batch_size.to_string(), "rows per INSERT at most"),
    var!(
        "APQ_WRITER_FLUSH_INTERVAL_MS",
        WRITER,
        |s| s.data_writer.flush_interval_ms.to_string(),
        "longest wait of a partial batch (0: group commit)"
    ),
    var!(
        "APQ_WRITER_CONNECTIONS",
        WRITER,
        |s| s.data_writer.connections.to_string(),
        "batches written at once, one connection each (acks stay in order)"
    ),
    var!("APQ_WRITER_PREFETCH", WRITER, |s| s.data_writer.prefetch.to_string(), "unacked deliveries per writer queue"),
    var!(
        "APQ_WRITER_WRITE_TIMEOUT_MS",
        WRITER,
        |s| s.data_writer.write_timeout_ms.to_string(),
        "bound on one batch write; statement_timeout"
    ),
    var!(
        "APQ_WRITER_CONNECT_TIMEOUT_MS",
        WRITER,
        |s| s.data_writer.connect_timeout_ms.to_string(),
        "bound on a database connect"
    ),
    var!(
        "APQ_WRITER_KEEPALIVE_IDLE_MS",
        WRITER,
        |s| s.data_writer.keepalive_idle_ms.to_string(),
        "TCP keepalive idle time to the database"
    ),
    var!(
        "APQ_WRITER_SHUTDOWN_TIMEOUT_MS",
        &["algorithm-a", "algorithm-b", "data-writer"],
        |s| s.data_writer.shutdown_timeout_ms.to_string(),
        "longest a graceful shutdown waits"
    ),
    var!("APQ_API_BIND", API, |s| s.rest_api.bind.clone(), "listen address (port 0: any, announced)"),
    var!(
        "APQ_API_TOKENS",
        API,
        |_| "none: refuses to start (live: dev-token)".into(),
        "accepted bearer tokens, comma-separated"
    ),
    var!(
        "APQ_API_RATE_LIMIT_PER_SEC",
        API,
        |s| s.rest_api.rate_limit_per_sec.to_string(),
        "sustained requests per second per token"
    ),
    var!("APQ_API_RATE_LIMIT_BURST", API, |s| s.rest_api.rate_limit_burst.to_string(), "burst per token"),
    var!("APQ_API_DEFAULT_LIMIT", API, |s| s.rest_api.default_limit.to_string(), "history page size without limit="),
    var!("APQ_API_MAX_LIMIT", API, |s| s.rest_api.max_limit.to_string(), "largest limit="),
    var!(
        "APQ_API_HEADER_TIMEOUT_MS",
        API,
        |s| s.rest_api.header_timeout_ms.to_string(),
        "a request head must arrive within this"
    ),
    var!(
        "APQ_API_AUTH_FAILURE_LIMIT",
        API,
        |s| s.rest_api.auth_failure_limit.to_string(),
        "failed authentications per client address per window"
    ),
    var!("APQ_API_AUTH_FAILURE_WINDOW_MS", API, |s| s.rest_api.auth_failure_window_ms.to_string(), "that window"),
    var!("APQ_API_MAX_PAGE_BYTES", API, |s| s.rest_api.max_page_bytes.to_string(), "byte budget of one history page"),
    var!("APQ_SENSOR_ID", SENSOR, |s| s.sensor.sensor_id.clone(), "the chunks' sensor_id"),
    var!("APQ_SENSOR_SIGNAL", SENSOR, |s| s.sensor.signal.clone(), "sine, noise, silence, clipped-sine or wav"),
    var!("APQ_SENSOR_FREQUENCY_HZ", SENSOR, |s| s.sensor.frequency_hz.to_string(), "tone frequency"),
    var!("APQ_SENSOR_AMPLITUDE", SENSOR, |s| s.sensor.amplitude.to_string(), "amplitude (gain for clipped-sine)"),
    var!("APQ_SENSOR_SAMPLE_RATE", SENSOR, |s| s.sensor.sample_rate.to_string(), "sample rate of synthetic signals"),
    var!("APQ_SENSOR_CHUNK_MS", SENSOR, |s| s.sensor.chunk_ms.to_string(), "chunk length"),
    var!(
        "APQ_SENSOR_RATE_PER_SEC",
        SENSOR,
        |s| s.sensor.rate_per_sec.to_string(),
        "chunks per second (0: as fast as confirms allow)"
    ),
    var!("APQ_SENSOR_COUNT", SENSOR, |s| s.sensor.count.to_string(), "stop after this many chunks (0: never)"),
    var!(
        "APQ_SENSOR_DURATION_SECS",
        SENSOR,
        |s| s.sensor.duration_secs.to_string(),
        "stop after this many seconds (0: never)"
    ),
    var!("APQ_SENSOR_WAV_PATH", SENSOR, |_| "unset".into(), "WAV file for signal = wav (looped)"),
    var!(
        "APQ_ALGORITHM_A_FAULT_DROP_EVERY",
        &["algorithm-a", "live"],
        |_| "0 (off)".into(),
        "FAULT: ack every Nth chunk without publishing"
    ),
    var!("APQ_ALGORITHM_B_FAULT_DROP_EVERY", &["algorithm-b", "live"], |_| "0 (off)".into(), "FAULT: as for A"),
    var!(
        "APQ_ALGORITHM_B_FAULT_DELAY_MS",
        &["algorithm-b", "live"],
        |_| "0 (off)".into(),
        "FAULT: hold each message this long before publishing (a slow stage)"
    ),
    var!(
        "APQ_WRITER_FAULT_IGNORE_UNIQUE",
        &["data-writer", "migrate", "live"],
        |_| "false".into(),
        "FAULT: no idempotency keys"
    ),
    var!(
        "APQ_WRITER_FAULT_RETRY_REJECTED",
        WRITER,
        |_| "false".into(),
        "FAULT: trust input, requeue refused batches forever"
    ),
    var!("APQ_WRITER_FAULT_UNBOUNDED_PROCESSED_BY", WRITER, |_| "false".into(), "FAULT: processed_by beyond its bound"),
    var!("APQ_WRITER_FAULT_NO_DEADLINES", WRITER, |_| "false".into(), "FAULT: no write/connect timeouts, no keepalive"),
    var!("APQ_WRITER_FAULT_ACK_BEFORE_COMMIT", WRITER, |_| "false".into(), "FAULT: ack a batch before it commits"),
    var!(
        "APQ_FAULT_BYTE_TRUNCATE_DETAIL",
        CONSUMERS,
        |_| "false".into(),
        "FAULT: cut dead-letter details inside a character"
    ),
    var!(
        "APQ_FAULT_RANDOM_OUTPUT_IDS",
        &["algorithm-a", "algorithm-b", "migrate", "live"],
        |_| "false".into(),
        "FAULT: random output ids, no per-source backstop"
    ),
    var!(
        "APQ_FAULT_ACK_BEFORE_CONFIRM",
        &["algorithm-a", "algorithm-b", "live"],
        |_| "false".into(),
        "FAULT: ack the input before the output's confirm"
    ),
    var!("APQ_FAULT_BACKOFF_NO_RESET", BROKER, |_| "false".into(), "FAULT: backoff without jitter, never reset"),
    var!("APQ_FAULT_NO_HEARTBEAT", BROKER, |_| "false".into(), "FAULT: no heartbeat requested"),
    var!("APQ_API_FAULT_SKIP_AUTH", API, |_| "false".into(), "FAULT: no token check"),
    var!("APQ_API_FAULT_NO_CACHE_REFILL", API, |_| "false".into(), "FAULT: no cache refill, no database fallback"),
];

/// The `--help` section listing the variables `component` reads, with their defaults.
pub fn env_help(component: &str) -> String {
    let defaults = Settings::default();
    let mut out = String::from(
        "Environment (APQ_* variables override the --config file; FAULT = fault injection, never in production):\n",
    );
    for v in ENV_VARS.iter().filter(|v| v.used_by.contains(&component)) {
        let default = (v.default)(&defaults);
        let default = if default.is_empty() { "(empty)".to_string() } else { default };
        out.push_str(&format!("  {:<40} {:<28} {}\n", v.name, default, v.meaning));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    /// The adapter protocol documents every variable the reference reads (an implementation's
    /// authors read that table, not this file).
    #[test]
    fn every_variable_is_in_the_adapter_table() {
        let doc = include_str!("../../fixtures/contracts/adapter.md");
        let missing: Vec<&str> = ENV_VARS.iter().map(|v| v.name).filter(|n| !doc.contains(&format!("`{n}`"))).collect();
        assert!(missing.is_empty(), "not in fixtures/contracts/adapter.md: {missing:?}");
    }

    #[test]
    fn env_overrides_file_values() {
        let mut s: Settings =
            toml::from_str("[amqp]\nnamespace = \"from-file\"\n[rest_api]\ntokens = [\"a\"]").unwrap();
        s.apply_env(env(&[("APQ_NAMESPACE", "run1"), ("APQ_API_TOKENS", "x, y,,z")])).unwrap();
        assert_eq!(s.amqp.namespace, "run1");
        assert_eq!(s.rest_api.tokens, vec!["x", "y", "z"]);
    }

    #[test]
    fn bad_number_names_the_variable() {
        let mut s = Settings::default();
        let err = s.apply_env(env(&[("APQ_WRITER_BATCH_SIZE", "lots")])).unwrap_err();
        assert!(err.to_string().contains("APQ_WRITER_BATCH_SIZE"), "{err}");
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let mut s = Settings::default();
        let err = s.apply_env(env(&[("APQ_WRITER_BATCH_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn every_variable_read_is_in_the_help_table() {
        let source = include_str!("config.rs");
        let code = &source[..source.find("pub const ENV_VARS").expect("the table")];
        let read: std::collections::BTreeSet<&str> =
            code.split('"').filter(|t| t.starts_with("APQ_") && !t.contains(' ')).collect();
        let listed: std::collections::BTreeSet<&str> = ENV_VARS.iter().map(|v| v.name).collect();
        let missing: Vec<&&str> = read.difference(&listed).collect();
        assert!(missing.is_empty(), "read by apply_env but not in ENV_VARS (--help): {missing:?}");
        assert!(env_help("data-writer").contains("APQ_WRITER_WRITE_TIMEOUT_MS"));
        assert!(!env_help("sensor").contains("APQ_API_TOKENS"));
    }

    /// Every rule of `validate` at its edge: the last value it accepts passes, the first it refuses
    /// fails naming the setting (a flipped comparison or a dropped clause shows here).
    #[test]
    fn validate_accepts_each_edge_and_refuses_just_past_it() {
        type Edit = fn(&mut Settings);
        let cases: &[(&str, Edit, Edit)] = &[
            ("data_writer.batch_size", |s| s.data_writer.batch_size = 1, |s| s.data_writer.batch_size = 0),
            ("data_writer.connections", |s| s.data_writer.connections = 1, |s| s.data_writer.connections = 0),
            (
                "rest_api.rate_limit_per_sec",
                |s| s.rest_api.rate_limit_per_sec = f64::MIN_POSITIVE,
                |s| s.rest_api.rate_limit_per_sec = 0.0,
            ),
            (
                "rest_api.rate_limit_per_sec",
                |s| s.rest_api.rate_limit_per_sec = f64::MAX,
                |s| s.rest_api.rate_limit_per_sec = f64::INFINITY,
            ),
            ("rest_api.rate_limit_per_sec", |_| {}, |s| s.rest_api.rate_limit_per_sec = f64::NAN),
            ("rest_api.default_limit", |s| s.rest_api.default_limit = 1, |s| s.rest_api.default_limit = 0),
            (
                "rest_api.default_limit",
                |s| s.rest_api.default_limit = s.rest_api.max_limit,
                |s| s.rest_api.default_limit = s.rest_api.max_limit + 1,
            ),
            ("rest_api.header_timeout_ms", |s| s.rest_api.header_timeout_ms = 1, |s| s.rest_api.header_timeout_ms = 0),
            (
                "rest_api.auth_failure_limit",
                |s| s.rest_api.auth_failure_limit = 1,
                |s| s.rest_api.auth_failure_limit = 0,
            ),
            (
                "rest_api.auth_failure_limit",
                |s| s.rest_api.auth_failure_window_ms = 1,
                |s| s.rest_api.auth_failure_window_ms = 0,
            ),
            ("rest_api.max_page_bytes", |s| s.rest_api.max_page_bytes = 1, |s| s.rest_api.max_page_bytes = 0),
            ("amqp.reconnect_min_ms", |s| s.amqp.reconnect_min_ms = 1, |s| s.amqp.reconnect_min_ms = 0),
            (
                "amqp.reconnect_min_ms",
                |s| s.amqp.reconnect_min_ms = s.amqp.reconnect_max_ms,
                |s| s.amqp.reconnect_min_ms = s.amqp.reconnect_max_ms + 1,
            ),
            (
                "data_writer.write_timeout_ms",
                |s| s.data_writer.write_timeout_ms = 1,
                |s| s.data_writer.write_timeout_ms = 0,
            ),
            (
                "data_writer.write_timeout_ms",
                |s| s.data_writer.connect_timeout_ms = 1,
                |s| s.data_writer.connect_timeout_ms = 0,
            ),
            (
                "data_writer.write_timeout_ms",
                |s| s.data_writer.keepalive_idle_ms = 1,
                |s| s.data_writer.keepalive_idle_ms = 0,
            ),
        ];
        assert!(Settings::default().validate().is_ok(), "the defaults must be valid");
        for (i, (setting, edge, past)) in cases.iter().enumerate() {
            let mut s = Settings::default();
            edge(&mut s);
            assert!(s.validate().is_ok(), "case {i}: the edge of {setting} was refused: {:?}", s.validate());
            let mut s = Settings::default();
            past(&mut s);
            let err = s.validate().expect_err(&format!("case {i}: just past the edge of {setting} was accepted"));
            assert!(err.to_string().contains(setting), "case {i}: {err} does not name {setting}");
        }
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<Settings>("[amqp]\nurll = \"x\"").is_err());
    }
}
