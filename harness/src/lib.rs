//! The harness: everything needed to test the audio pipeline as a black box reached by URLs.
//! It knows nothing of cucumber or goose; `steps/` and `load/` build on it.
//!
//! Layout:
//! - [`config`]: what the user sets (TOML profile + `QA_*` env); [`env`]: the live state of a run
//!   (connections, pipelines, processes).
//! - [`amqp`]: connect, publish, tap, delete — one file per verb.
//! - [`sql`]: the SUT's table, read by contract; per-run databases.
//! - [`history`]: an independent model of what a history request must return, page by page.
//! - [`api`]: typed REST client recording the last exchange; [`http_raw`]: raw HTTP/1.1 over TCP
//!   (malformed, trickled or idle requests) with deadlines.
//! - [`eventually`]: the one retry primitive, with diagnostics and a convergence log.
//! - [`json_match`]: exact/subset/tolerance matching and contract validation.
//! - [`namespace`]: per-scenario sensor-id prefixes; [`sut`]: process control (local profile)
//!   through the SUT adapter protocol; [`paths`]: run-time locations and per-run report folders.
//! - [`signal`]: test signals and the harness's own reference features (an independent oracle).
//! - [`faults`]: a TCP fault proxy per link and private RabbitMQ/PostgreSQL nodes to crash (#11).
//!
//! The harness depends on the `contract` crate only, never on the reference services.
//! - [`chaos`]: pipelines on private servers behind fault proxies, a recording workload and the
//!   ledger-invariant checker; [`faults`]: the proxies and private servers themselves.
//! - [`ledger`]: lineage and reconciliation; [`report`]: failure bundles and run reports.
//! - [`sensor`]: the SUT's sensor run through the adapter, and a tap that takes its chunks off a
//!   private work queue with every AMQP property (issue #12).

pub mod amqp;
pub mod api;
pub mod chaos;
pub mod config;
pub mod env;
pub mod eventually;
pub mod faults;
pub mod fuzz;
pub mod history;
pub mod http_raw;
pub mod json_match;
pub mod ledger;
pub mod namespace;
pub mod paths;
pub mod report;
pub mod sensor;
pub mod signal;
pub mod sql;
pub mod sut;
