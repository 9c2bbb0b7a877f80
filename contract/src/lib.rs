//! The contract of the audio pipeline: what every implementation and the QA harness share, and
//! nothing else. The reference services (`services/`), the harness (`harness/`, `steps/`) and the
//! load runner (`load/`) all depend on this crate; the harness never depends on `services`.
//!
//! Layout:
//! - [`messages`]: the versioned message types, their JSON Schemas (embedded from
//!   `fixtures/contracts/`), header names, dead-letter reason codes and validation.
//! - [`topology`]: queue and exchange names for a namespace, and their declarations.
//! - [`amqp`]: the AMQP conventions (message properties, publish with confirms).
//! - [`sql`]: the `features` table as migrations.
//! - [`OPENAPI`]: the REST API's OpenAPI document.
//!
//! The rules behind these types (formulas, thresholds, precedence, API check order) are written
//! in `fixtures/contracts/README.md`; the process protocol the harness uses to start an
//! implementation is `fixtures/contracts/adapter.md`.

pub mod amqp;
pub mod messages;
pub mod sql;
pub mod topology;

pub use messages::*;

/// The REST API's OpenAPI 3.1 document; an implementation serves it at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../fixtures/contracts/openapi.json");

/// The contract's version (see the change log in `fixtures/contracts/README.md`).
pub const VERSION: &str = "1.4";
