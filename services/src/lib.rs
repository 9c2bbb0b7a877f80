//! Reference implementations of every component of the audio pipeline (the system under test).
//!
//! Layout:
//! - [`config`]: what an operator sets (TOML file + `APQ_*` env), one struct per component.
//! - [`contract`]: the versioned message types and their JSON-Schema validation (the schemas live in
//!   `fixtures/contracts/` and are embedded here, so producers and consumers share one source).
//! - [`topology`]: exchange/queue names (with an optional namespace prefix) and their declarations.
//! - [`amqp`]: connecting with backoff, publishing with confirms, dead-lettering with a reason.
//! - [`dsp`]: PCM decoding, feature extraction (rustfft) and signal generators.
//! - [`sensor`], [`algorithm_a`], [`algorithm_b`], [`data_writer`], [`rest_api`]: the components.
//! - [`db`]: schema migrations and the SQL the data writer and the API share.
//! - [`runtime`]: shutdown signals, readiness announcements and the health endpoint.
//! - [`cli`]: the `pipeline` binary's subcommands (one OS process per component instance).

pub mod algorithm_a;
pub mod algorithm_b;
pub mod amqp;
pub mod cli;
pub mod config;
pub mod contract;
pub mod data_writer;
pub mod db;
pub mod dsp;
pub mod rest_api;
pub mod runtime;
pub mod sensor;
pub mod telemetry;
pub mod topology;
