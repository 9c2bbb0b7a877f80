//! `load`: goose load runner and SLA gates for the audio pipeline (issues #4 and #14), as a
//! library so the binary, the Gherkin SLA specs and the integration tests share one code path.
//!
//! - [`runner`]: the gate runner (`load --gates rest,pipeline`), thresholds from `sla.toml`;
//! - [`dist`]: one worker's share of a REST run, the merge of every worker's results (exact
//!   percentiles by histogram addition) and local multi-process runs;
//! - [`results_db`]: where workers store their raw results (PostgreSQL);
//! - [`localapi`]: a private reference API (`pipeline live`) for runs without `--host`;
//! - [`scale`]: the scaling figure (1, 2, 4 local workers against one API);
//! - [`waterfall`]: where the paced run's sensor→DB latency went, hop by hop;
//! - [`proc_cpu`]: where its CPU went, process by process, per chunk.
//!
//! The Gherkin step definitions live in the binary (`src/spec/`), so cucumber's step registry
//! is linked for sure.

pub mod attack;
pub mod bench;
pub mod cli;
pub mod cpu;
pub mod dist;
pub mod localapi;
pub mod pipeline;
pub mod plots;
pub mod proc_cpu;
pub mod progress;
pub mod publish;
pub mod reconcile;
pub mod report;
pub mod rest;
pub mod results_db;
pub mod runner;
pub mod scale;
pub mod sla;
pub mod stats;
pub mod trend;
pub mod waterfall;

/// Exit code of a breached SLA (the nightly job tells it apart from a crash).
pub const EXIT_SLA_BREACHED: u8 = 99;
