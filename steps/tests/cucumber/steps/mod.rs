//! Step definitions, one file per domain. Steps are thin: parse, call a World/harness helper,
//! assert with a message that shows expected vs actual.

pub mod api;
pub mod audio;
pub mod chaos;
pub mod database;
pub mod exchanges;
pub mod fuzz;
pub mod hooks;
pub mod pipeline;
pub mod sensor;
pub mod sut;
