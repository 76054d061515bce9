//! Schema migrations, one list per backend, embedded in the binary and applied in order, each in a transaction.

pub(super) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(super) const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "events", sql: include_str!("../../migrations/sqlite/0001_events.sql") },
    Migration { version: 2, name: "decisions", sql: include_str!("../../migrations/sqlite/0002_decisions.sql") },
    Migration { version: 3, name: "grants", sql: include_str!("../../migrations/sqlite/0003_grants.sql") },
    Migration { version: 4, name: "audit", sql: include_str!("../../migrations/sqlite/0004_audit.sql") },
    Migration { version: 5, name: "callbacks", sql: include_str!("../../migrations/sqlite/0005_callbacks.sql") },
    Migration { version: 6, name: "job_batches", sql: include_str!("../../migrations/sqlite/0006_job_batches.sql") },
    Migration { version: 8, name: "reconcile", sql: include_str!("../../migrations/sqlite/0008_reconcile.sql") },
    Migration { version: 9, name: "lifecycle", sql: include_str!("../../migrations/sqlite/0009_lifecycle.sql") },
    Migration {
        version: 10,
        name: "admin_indexes",
        sql: include_str!("../../migrations/sqlite/0010_admin_indexes.sql"),
    },
];

pub(super) const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "events", sql: include_str!("../../migrations/postgres/0001_events.sql") },
    Migration { version: 2, name: "decisions", sql: include_str!("../../migrations/postgres/0002_decisions.sql") },
    Migration { version: 3, name: "grants", sql: include_str!("../../migrations/postgres/0003_grants.sql") },
    Migration { version: 4, name: "audit", sql: include_str!("../../migrations/postgres/0004_audit.sql") },
    Migration { version: 5, name: "callbacks", sql: include_str!("../../migrations/postgres/0005_callbacks.sql") },
    Migration { version: 6, name: "job_batches", sql: include_str!("../../migrations/postgres/0006_job_batches.sql") },
    Migration { version: 8, name: "reconcile", sql: include_str!("../../migrations/postgres/0008_reconcile.sql") },
    Migration { version: 9, name: "lifecycle", sql: include_str!("../../migrations/postgres/0009_lifecycle.sql") },
    Migration {
        version: 10,
        name: "admin_indexes",
        sql: include_str!("../../migrations/postgres/0010_admin_indexes.sql"),
    },
];

pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
)";
