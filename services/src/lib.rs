//! Reference implementations of every component of the audio pipeline (the system under test).
//!
//! Layout:
//! - [`config`]: what an operator sets (TOML file + `APQ_*` env), one struct per component.
//! - [`contract`], [`topology`]: re-exported from the `contract` crate (message types, schemas,
//!   names), which the harness shares; nothing of this crate is visible to the harness.
//! - [`amqp`]: connecting with backoff, publishing with confirms, dead-lettering with a reason;
//!   [`output`]: a consumer's output published until confirmed (nacks retried), then its input acked.
//! - [`dsp`]: PCM decoding, feature extraction (rustfft) and signal generators.
//! - [`sensor`], [`algorithm_a`], [`algorithm_b`], [`data_writer`], [`rest_api`]: the components.
//! - [`db`]: schema migrations and the SQL the data writer and the API share.
//! - [`runtime`]: shutdown signals, readiness announcements, the health endpoint and the
//!   reconnect supervisor; [`metrics`]: the Prometheus metrics every component exposes.
//! - [`cli`]: the `pipeline` binary's subcommands (one OS process per component instance).

pub mod algorithm_a;
pub mod algorithm_b;
pub mod amqp;
pub mod cli;
pub mod config;
/// The shared contract crate's message types, under the name the components use.
pub use ::contract::messages as contract;
pub mod data_writer;
pub mod db;
pub mod dsp;
pub mod metrics;
pub mod output;
pub mod rest_api;
pub mod runtime;
pub mod sensor;
pub mod telemetry;
pub use ::contract::topology;
