//! Durable storage: SQLite (embedded default) or PostgreSQL (several replicas), chosen by the database URL.
//!
//! Both backends run the same SQL where the dialects agree (sqlx's SQLite driver accepts `$N` placeholders),
//! so behaviour cannot drift between them; `on_pool!` expands one body for each.

mod audit;
mod callbacks;
mod decisions;
mod grants;
mod lifecycle;
mod migrations;
mod queries;
mod reconcile;

use std::collections::HashSet;
use std::str::FromStr;
use std::time::SystemTime;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::audit::AuditEntry;
use crate::config::DatabaseSettings;
use crate::domain::{EventId, IncomingEvent};
use crate::inbound::unix_millis;

pub(crate) use audit::AppendAudit;
pub use audit::PAGE as AUDIT_PAGE;
pub use callbacks::{CallbackRecord, CallbackResult, ClaimedCallback, NewCallback};
pub use decisions::{ClaimedEvent, DecisionRecord, ReplayBy, Replayed, StoredDecision, Withdrawal};
pub use grants::{ClaimedJob, GrantRecord, JobResult, Leased, NewGrant, Settled, batch_key};
pub use lifecycle::{OperatorRevoke, REASON_EXPIRED, SharedAccess, ended_state};
pub use queries::{AuditFilter, AuditPage};
pub use queries::{DeadLetter, EventFilter, EventRecord, EventSummary, GrantFilter, JobRecord, Page, PageKey};
pub use reconcile::{LedgerGrant, RECONCILE_RUNS_KEPT, ReconcileLock, ReconcileRun, ReconcileRunSummary};

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgPool),
}

/// An SQLite database has one writer at a time. Writers of this process queue here, in order, instead of
/// meeting in SQLite's busy handler, which sleeps up to 100 ms between tries: the intake's group commit then
/// waits for at most the few writes queued before it.
///
/// Work that can be redone (claiming, recording decisions and job outcomes) is committed on a second pool with
/// `synchronous=NORMAL`: no fsync of its own. Power loss can undo such a commit, and the work is then done again,
/// idempotently. Intake commits stay `FULL`, and their fsync of the shared WAL also makes durable every earlier
/// background commit.
#[derive(Clone)]
pub struct SqliteStore {
    pub pool: SqlitePool,
    background: SqlitePool,
    gate: std::sync::Arc<WriteGate>,
}

/// SQLite has one writer; the process's writers queue here for it. A write someone is waiting on (intake's commit
/// before its 202s, an operator's action) goes before background work (claims, decisions, job outcomes) that finds
/// one waiting: a burst of webhooks is acknowledged first and decided right after. Background work steps aside
/// for at most [`BACKGROUND_YIELD`] per write, so that it is never starved.
#[derive(Default)]
pub(crate) struct WriteGate {
    lock: tokio::sync::Mutex<()>,
    foreground_waiting: std::sync::atomic::AtomicUsize,
}

/// The longest background work steps aside for waiting foreground writes before it writes anyway.
const BACKGROUND_YIELD: std::time::Duration = std::time::Duration::from_millis(100);

impl WriteGate {
    pub(crate) async fn foreground(&self) -> tokio::sync::MutexGuard<'_, ()> {
        use std::sync::atomic::Ordering;
        self.foreground_waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock.lock().await;
        self.foreground_waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    pub(crate) async fn background(&self) -> tokio::sync::MutexGuard<'_, ()> {
        use std::sync::atomic::Ordering;
        let until = tokio::time::Instant::now() + BACKGROUND_YIELD;
        loop {
            let guard = self.lock.lock().await;
            if self.foreground_waiting.load(Ordering::SeqCst) == 0 || tokio::time::Instant::now() >= until {
                return guard;
            }
            // Released, the lock goes to the writer queued first. A foreground writer counted but not queued yet
            // would find it free again at once: wait a moment (a busy loop here would hold the thread it runs on).
            drop(guard);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database cannot be reached or written")]
    Unavailable(#[from] sqlx::Error),
    #[error("the database holds schema version {found}, newer than this binary knows ({known}); upgrade grantbridge")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the database holds a row this version cannot read: {0}")]
    Corrupt(String),
}

/// What happened to one event handed to `insert_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Accepted(EventId),
    /// Already stored under this id: same source and delivery id, or same body when the id is absent or unsigned.
    Duplicate(EventId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub source: String,
    pub dedup_key: String,
    pub delivery_id: Option<String>,
    pub scheme: String,
    pub body_sha256: String,
    pub body: String,
    pub meta: String,
    pub received_at_ms: i64,
    pub state: String,
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$begin` to its write-transaction statement.
/// The `write` form first takes the SQLite write gate, for anything that writes; `background` does too, for
/// work that can be redone, on the connections that do not fsync, giving way to waiting `write`s ([`WriteGate`]).
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $begin:ident| $body:expr) => {
        on_pool!(@run $store, pool, none, $pool, $begin, $body)
    };
    ($store:expr, background |$pool:ident, $begin:ident| $body:expr) => {
        on_pool!(@run $store, background, background, $pool, $begin, $body)
    };
    ($store:expr, write |$pool:ident, $begin:ident| $body:expr) => {
        on_pool!(@run $store, pool, foreground, $pool, $begin, $body)
    };
    (@gate $sqlite:ident, none) => { None::<tokio::sync::MutexGuard<'_, ()>> };
    (@gate $sqlite:ident, $turn:ident) => { Some($sqlite.gate.$turn().await) };
    (@run $store:expr, $sqlite_pool:ident, $turn:ident, $pool:ident, $begin:ident, $body:expr) => {
        match $store {
            Store::Sqlite(sqlite) => {
                let _writer = on_pool!(@gate sqlite, $turn);
                let $pool = &sqlite.$sqlite_pool;
                // IMMEDIATE takes the write lock up front, so busy_timeout applies instead of a failed upgrade.
                let $begin = "BEGIN IMMEDIATE";
                $body
            }
            Store::Postgres($pool) => {
                let $begin = "BEGIN";
                $body
            }
        }
    };
}

impl Store {
    pub async fn connect(db: &DatabaseSettings) -> Result<Store, StoreError> {
        if db.url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(&db.url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before we acknowledge, even across power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(db.busy_timeout)
                .foreign_keys(true);
            let acquire = db.busy_timeout.max(std::time::Duration::from_secs(1));
            let pool = SqlitePoolOptions::new()
                .max_connections(db.max_connections)
                .acquire_timeout(acquire)
                .connect_with(options.clone())
                .await?;
            let background = SqlitePoolOptions::new()
                .max_connections(2)
                .acquire_timeout(acquire)
                .connect_with(options.synchronous(SqliteSynchronous::Normal))
                .await?;
            Ok(Store::Sqlite(SqliteStore { pool, background, gate: Default::default() }))
        } else {
            let mut options = PgConnectOptions::from_str(&db.url)?.application_name("grantbridge");
            if let Some(password) = &db.password {
                options = options.password(password.expose());
            }
            let pool = PgPoolOptions::new()
                .max_connections(db.max_connections)
                .acquire_timeout(db.busy_timeout.max(std::time::Duration::from_secs(1)))
                .connect_with(options)
                .await?;
            Ok(Store::Postgres(pool))
        }
    }

    /// Rows per INSERT. SQLite runs in-process, so fewer statements is less work for the single writer.
    /// PostgreSQL plans every distinct statement text, and a batch's size would make a new one each time;
    /// one row per statement keeps a single prepared statement.
    fn insert_chunk(&self) -> usize {
        match self {
            Store::Sqlite(_) => INSERT_CHUNK,
            Store::Postgres(_) => 1,
        }
    }

    /// What a claim's subquery adds so that concurrent claimers on PostgreSQL skip each other's rows.
    fn row_lock(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "",
            Store::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Applies the migrations this database has not seen yet; returns their versions.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let list = match self {
            Store::Sqlite(_) => migrations::SQLITE,
            Store::Postgres(_) => migrations::POSTGRES,
        };
        let known = list.last().map_or(0, |m| m.version);
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                if let Store::Postgres(_) = self {
                    // Replicas starting together: one migrates, the others wait and then find nothing to do.
                    sqlx::query("SELECT pg_advisory_xact_lock(7342016331)").execute(&mut *tx).await?;
                }
                sqlx::raw_sql(migrations::CREATE_TABLE).execute(&mut *tx).await?;
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations").fetch_one(&mut *tx).await?;
                let current = current.unwrap_or(0);
                if current > known {
                    return Err(StoreError::SchemaTooNew { found: current, known });
                }
                // Every migration not recorded, in order: one numbered below the newest applied (merged later)
                // is applied too, not skipped.
                let recorded: Vec<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await?;
                let mut applied = Vec::new();
                for m in list.iter().filter(|m| !recorded.contains(&m.version)) {
                    sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)")
                        .bind(m.version)
                        .bind(m.name)
                        .bind(unix_millis(SystemTime::now()))
                        .execute(&mut *tx)
                        .await?;
                    applied.push(m.version);
                }
                tx.commit().await?;
                Ok(applied)
            }
        )
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool, _begin| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// Stores a batch of events in one transaction (one commit, one fsync), de-duplicating each on
    /// (source, dedup_key), with a `received` or `duplicate` audit entry for each. Either every event of the
    /// batch is durable or none is.
    pub async fn insert_events(&self, events: &[&IncomingEvent]) -> Result<Vec<Inserted>, StoreError> {
        self.insert_events_audited(events, &[]).await
    }

    /// `insert_events`, also appending `also` (steps with no transaction of their own, such as refused
    /// deliveries) to the audit trail in the same transaction.
    pub async fn insert_events_audited(
        &self,
        events: &[&IncomingEvent],
        also: &[AuditEntry],
    ) -> Result<Vec<Inserted>, StoreError> {
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let mut inserted: HashSet<String> = HashSet::with_capacity(events.len());
                let anonymous = matches!(self, Store::Sqlite(_));
                // One statement per chunk: the per-statement cost, not the rows, is what limits the single writer.
                for chunk in events.chunks(self.insert_chunk()) {
                    let mut query =
                        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(insert_events_sql(chunk.len(), anonymous)));
                    for e in chunk {
                        query = query
                            .bind(e.id.to_string())
                            .bind(&e.source)
                            .bind(&e.dedup_key)
                            .bind(&e.replay_key)
                            .bind(&e.delivery_id)
                            .bind(e.scheme)
                            .bind(&e.body_sha256)
                            .bind(&e.body)
                            .bind(&e.meta)
                            .bind(e.received_at_ms);
                    }
                    inserted.extend(query.fetch_all(&mut *tx).await?);
                }
                let mut outcomes = Vec::with_capacity(events.len());
                for e in events {
                    if inserted.contains(&e.id.to_string()) {
                        outcomes.push(Inserted::Accepted(e.id));
                        continue;
                    }
                    // Refused by a unique key: stored before, or earlier in this very batch.
                    let existing: String = sqlx::query_scalar(
                        "SELECT id FROM events WHERE source = $1 AND (dedup_key = $2 OR replay_key = $3)
                     ORDER BY received_at_ms LIMIT 1",
                    )
                    .bind(&e.source)
                    .bind(&e.dedup_key)
                    .bind(&e.replay_key)
                    .fetch_one(&mut *tx)
                    .await?;
                    outcomes.push(Inserted::Duplicate(parse_event_id(&existing)?));
                }
                if outcomes.iter().any(|o| matches!(o, Inserted::Accepted(_))) {
                    notify_replicas(self, &mut tx, WORK_EVENTS).await?;
                }
                let mut entries = audit::intake_entries(events, &outcomes);
                entries.extend_from_slice(also);
                tx.append_audit(unix_millis(SystemTime::now()), &entries).await?;
                tx.commit().await?;
                Ok(outcomes)
            }
        )
    }

    pub async fn event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        type Row = (String, String, String, Option<String>, String, String, String, String, i64, String);
        let row: Option<Row> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT id, source, dedup_key, delivery_id, scheme, body_sha256, body, meta, received_at_ms, state
                 FROM events WHERE id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(id, source, dedup_key, delivery_id, scheme, body_sha256, body, meta, received_at_ms, state)| {
            StoredEvent { id, source, dedup_key, delivery_id, scheme, body_sha256, body, meta, received_at_ms, state }
        }))
    }

    pub async fn count_events(&self) -> Result<i64, StoreError> {
        on_pool!(self, |pool, _begin| {
            Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events").fetch_one(pool).await?)
        })
    }

    pub async fn close(&self) {
        if let Store::Sqlite(sqlite) = self {
            sqlite.background.close().await;
        }
        on_pool!(self, |pool, _begin| pool.close().await)
    }
}

/// Rows per SQLite INSERT statement: 10 parameters each, well under SQLite's limit of 32,766.
const INSERT_CHUNK: usize = 500;

/// `anonymous`: `?` parameters, for SQLite, which looks each numbered parameter's name up in a list, so that
/// binding a 500-row statement's `$N` costs time quadratic in their number. PostgreSQL needs `$N`.
fn insert_events_sql(rows: usize, anonymous: bool) -> String {
    let mut sql = String::from(
        "INSERT INTO events
             (id, source, dedup_key, replay_key, delivery_id, scheme, body_sha256, body, meta, received_at_ms)
         VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        if anonymous {
            sql.push_str("(?,?,?,?,?,?,?,?,?,?)");
            continue;
        }
        let p = row * 10;
        sql.push_str(&format!(
            "(${},${},${},${},${},${},${},${},${},${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9,
            p + 10
        ));
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id");
    sql
}

/// The PostgreSQL channel on which replicas tell each other about new work.
pub const WORK_CHANNEL: &str = "grantbridge_work";
/// Payload: new events to decide.
pub const WORK_EVENTS: &str = "events";
/// Payload: new grant jobs to execute.
pub const WORK_JOBS: &str = "jobs";
/// Payload: new ticket callbacks to deliver.
pub const WORK_CALLBACKS: &str = "callbacks";

/// On PostgreSQL, tells every replica's listener that there is work (delivered when the transaction commits);
/// SQLite has one process, whose workers the in-process notifier wakes.
pub(crate) async fn notify_replicas<DB: sqlx::Database>(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, DB>,
    what: &'static str,
) -> Result<(), StoreError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    if let Store::Postgres(_) = store {
        sqlx::query("SELECT pg_notify($1, $2)").bind(WORK_CHANNEL).bind(what).execute(&mut **tx).await?;
    }
    Ok(())
}

pub(crate) fn parse_event_id(s: &str) -> Result<EventId, StoreError> {
    EventId::parse(s).ok_or_else(|| StoreError::Corrupt(format!("event id `{s}` is not a UUID")))
}

pub(crate) use on_pool;

#[cfg(test)]
mod write_gate_tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::WriteGate;

    #[tokio::test]
    async fn a_waiting_foreground_write_goes_before_background_work_queued_ahead_of_it() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = gate.foreground().await;
        let background = tokio::spawn({
            let (gate, order) = (gate.clone(), order.clone());
            async move {
                let _turn = gate.background().await;
                order.lock().unwrap().push("background");
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await; // the background task queues first
        let foreground = tokio::spawn({
            let (gate, order) = (gate.clone(), order.clone());
            async move {
                let _turn = gate.foreground().await;
                order.lock().unwrap().push("foreground");
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        foreground.await.unwrap();
        background.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["foreground", "background"]);
    }

    #[tokio::test]
    async fn background_work_is_not_starved_by_a_foreground_writer_that_keeps_waiting() {
        let gate = Arc::new(WriteGate::default());
        // A foreground writer counted as waiting that never takes its turn.
        gate.foreground_waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let took = tokio::time::timeout(Duration::from_secs(2), gate.background()).await;
        assert!(took.is_ok(), "background work writes after at most the yield window");
    }
}
