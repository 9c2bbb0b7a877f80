//! The `features` table, as ordered migrations. Implementations may create it their own way, but
//! its columns, constraints and the idempotency keys (`message_id` UNIQUE, and from 1.3 one row per
//! `(source_message_id, feature_type)`) are the contract.

/// One schema migration: applied once, in `version` order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Monotonic version recorded in `schema_migrations`.
    pub version: i32,
    /// The file it comes from (for logs).
    pub name: &'static str,
    /// The SQL, run in one transaction.
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_features.sql", sql: include_str!("../../fixtures/sql/0001_features.sql") },
    Migration {
        version: 2,
        name: "0002_exactly_once.sql",
        sql: include_str!("../../fixtures/sql/0002_exactly_once.sql"),
    },
    Migration { version: 3, name: "0003_timing.sql", sql: include_str!("../../fixtures/sql/0003_timing.sql") },
];

/// The backstop index of contract 1.3: one row per (source chunk, feature type).
pub const SOURCE_TYPE_INDEX: &str = "features_source_type_key";

/// The table every implementation writes features to and the API reads from.
pub const FEATURES_TABLE: &str = "features";
