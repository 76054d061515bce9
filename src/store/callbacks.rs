//! The ticket-callback outbox: callbacks are written in the transaction that records the outcome they report;
//! callbackers lease them, post to the ticketing system with no transaction open, then record the result.
//! The same lease, retry and dead-letter machinery as grant jobs.

use std::time::Duration;

use sqlx::Row;

use serde_json::json;

use super::{AppendAudit, Store, StoreError, WORK_CALLBACKS, notify_replicas, on_pool};
use crate::audit::{AuditEntry, AuditKind};

/// A callback to enqueue. Build it with `crate::callbacks` (which renders the message from the templates and
/// derives the id), not by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCallback {
    /// Derived from source, ticket, kind and outcome (`crate::callbacks::callback_id`): the same outcome enqueued
    /// twice is one callback.
    pub id: String,
    pub event_id: String,
    pub grant_id: Option<String>,
    pub source: String,
    /// `jira` or `servicenow`.
    pub system: String,
    pub ticket_key: String,
    /// Jira issue id or ServiceNow sys_id.
    pub ticket_id: String,
    /// ServiceNow table; `None` for Jira.
    pub ticket_table: Option<String>,
    pub kind: String,
    pub message: String,
    /// `internal` or `public`.
    pub visibility: String,
    /// Jira transition name to make after the comment.
    pub transition: Option<String>,
    /// ServiceNow state value to set with the note.
    pub ticket_state: Option<String>,
}

/// A callback as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRecord {
    pub id: String,
    pub event_id: String,
    pub grant_id: Option<String>,
    pub source: String,
    pub system: String,
    pub ticket_key: String,
    pub ticket_id: String,
    pub ticket_table: Option<String>,
    pub kind: String,
    pub message: String,
    pub visibility: String,
    pub transition: Option<String>,
    pub ticket_state: Option<String>,
    /// `queued`, `running`, `done` or `dead`.
    pub state: String,
    /// How many times it has been claimed, the current claim included.
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at_ms: Option<i64>,
    /// The Jira comment id, or the ServiceNow sys_id that was updated.
    pub remote_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A callback leased to a callbacker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedCallback {
    pub callback: CallbackRecord,
}

impl ClaimedCallback {
    pub fn id(&self) -> &str {
        &self.callback.id
    }

    /// How many times it has been claimed, this time included: above 1, an earlier attempt may have posted.
    pub fn attempts(&self) -> i64 {
        self.callback.attempts
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    /// Posted (or found already posted by an earlier attempt).
    Delivered { remote_id: Option<String> },
    /// Try again no earlier than `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Give up: the callback stays as a dead letter with the reason.
    Dead { error: String },
}

const COLUMNS: &str = "id, event_id, grant_id, source, system, ticket_key, ticket_id, ticket_table, kind, message,
    visibility, transition, ticket_state, state, attempts, next_attempt_at_ms, lease_owner, lease_until_ms,
    last_error, delivered_at_ms, remote_id, created_at_ms, updated_at_ms";

const INSERT: &str = "INSERT INTO callbacks (id, event_id, grant_id, source, system, ticket_key, ticket_id,
        ticket_table, kind, message, visibility, transition, ticket_state, state, next_attempt_at_ms,
        created_at_ms, updated_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'queued', $14, $14, $14)
    ON CONFLICT (id) DO NOTHING";

// As for jobs: due callbacks first, then abandoned leases, each an index range.
const CLAIM_DUE: &str = "UPDATE callbacks
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id = (SELECT id FROM callbacks WHERE state = 'queued' AND next_attempt_at_ms <= $3
                ORDER BY next_attempt_at_ms LIMIT 1 {lock})
    RETURNING {columns}";

const CLAIM_ABANDONED: &str = "UPDATE callbacks
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id = (SELECT id FROM callbacks WHERE state = 'running' AND lease_until_ms < $3
                ORDER BY next_attempt_at_ms LIMIT 1 {lock})
    RETURNING {columns}";

/// Enqueues `callbacks` inside a transaction the caller holds, so that they are written with the outcome they
/// report, and on PostgreSQL tells the other replicas (delivered at commit). Works in both arms of `on_pool!`:
/// `enqueue_callbacks(self, &mut tx, &callbacks, now_ms)`. Returns how many were new; one whose id is already
/// stored is left as it is.
pub(crate) async fn enqueue_callbacks<DB: sqlx::Database>(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, DB>,
    callbacks: &[NewCallback],
    now_ms: i64,
) -> Result<u64, StoreError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut added = 0;
    for c in callbacks {
        let done = sqlx::query::<DB>(INSERT)
            .bind(c.id.as_str())
            .bind(c.event_id.as_str())
            .bind(c.grant_id.as_deref())
            .bind(c.source.as_str())
            .bind(c.system.as_str())
            .bind(c.ticket_key.as_str())
            .bind(c.ticket_id.as_str())
            .bind(c.ticket_table.as_deref())
            .bind(c.kind.as_str())
            .bind(c.message.as_str())
            .bind(c.visibility.as_str())
            .bind(c.transition.as_deref())
            .bind(c.ticket_state.as_deref())
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        added += done.rows();
    }
    if added > 0 {
        notify_replicas(store, tx, WORK_CALLBACKS).await?;
    }
    Ok(added)
}

/// The audit entry of a delivery attempt that ended: `callback_delivered`, or `callback_failed` when it gave up
/// (with the stable code its error starts with). None for a retry. The message posted is not recorded.
fn callback_entry(claimed: &ClaimedCallback, result: &CallbackResult, now_ms: i64) -> Option<AuditEntry> {
    let c = &claimed.callback;
    let mut detail = json!({
        "callback_id": c.id,
        "callback_kind": c.kind,
        "system": c.system,
        "visibility": c.visibility,
        "attempts": c.attempts,
    });
    let kind = match result {
        CallbackResult::Retry { .. } => return None,
        CallbackResult::Delivered { remote_id } => {
            if let Some(remote) = remote_id {
                detail["remote_id"] = json!(remote);
            }
            AuditKind::CallbackDelivered
        }
        CallbackResult::Dead { error } => {
            detail["code"] = json!(super::grants::error_code(error));
            AuditKind::CallbackFailed
        }
    };
    let entry = AuditEntry::service(kind)
        .at(now_ms)
        .source(c.source.as_str())
        .ticket(c.ticket_key.as_str())
        .event(&c.event_id)
        .detail(detail);
    Some(match &c.grant_id {
        Some(grant) => entry.grant(grant.as_str()),
        None => entry,
    })
}

/// What both backends' query results say, for code generic over the backend.
pub(crate) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

fn record_from<'r, R: Row>(row: &'r R) -> Result<CallbackRecord, sqlx::Error>
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(CallbackRecord {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        grant_id: row.try_get("grant_id")?,
        source: row.try_get("source")?,
        system: row.try_get("system")?,
        ticket_key: row.try_get("ticket_key")?,
        ticket_id: row.try_get("ticket_id")?,
        ticket_table: row.try_get("ticket_table")?,
        kind: row.try_get("kind")?,
        message: row.try_get("message")?,
        visibility: row.try_get("visibility")?,
        transition: row.try_get("transition")?,
        ticket_state: row.try_get("ticket_state")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        last_error: row.try_get("last_error")?,
        delivered_at_ms: row.try_get("delivered_at_ms")?,
        remote_id: row.try_get("remote_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

impl Store {
    /// Enqueues callbacks on their own, in one transaction; prefer `enqueue_callbacks` inside the transaction that
    /// records the outcome. Returns how many were new.
    pub async fn enqueue_callbacks(&self, callbacks: &[NewCallback], now_ms: i64) -> Result<u64, StoreError> {
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let added = enqueue_callbacks(self, &mut tx, callbacks, now_ms).await?;
                tx.commit().await?;
                Ok(added)
            }
        )
    }

    /// Leases the next due callback to `owner` (or one whose lease ran out).
    pub async fn claim_callback(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Option<ClaimedCallback>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        for template in [CLAIM_DUE, CLAIM_ABANDONED] {
            let sql = template.replace("{lock}", self.row_lock()).replace("{columns}", COLUMNS);
            let claimed = on_pool!(
                self,
                background | pool,
                _begin | {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(owner)
                        .bind(until)
                        .bind(now_ms)
                        .fetch_optional(pool)
                        .await?;
                    row.as_ref().map(record_from).transpose()?
                }
            );
            if let Some(callback) = claimed {
                return Ok(Some(ClaimedCallback { callback }));
            }
        }
        Ok(None)
    }

    /// Records how a delivery attempt ended, if `owner` still holds the lease; false when the lease was lost.
    pub async fn finish_callback(
        &self,
        claimed: &ClaimedCallback,
        owner: &str,
        result: &CallbackResult,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (state, next_at, error, delivered_at, remote_id) = match result {
            CallbackResult::Delivered { remote_id } => ("done", now_ms, None, Some(now_ms), remote_id.as_deref()),
            CallbackResult::Retry { at_ms, error } => ("queued", *at_ms, Some(error.as_str()), None, None),
            CallbackResult::Dead { error } => ("dead", now_ms, Some(error.as_str()), None, None),
        };
        let entry = callback_entry(claimed, result, now_ms);
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let done = sqlx::query(
                    "UPDATE callbacks SET state = $1, next_attempt_at_ms = $2, last_error = $3,
                     delivered_at_ms = COALESCE($4, delivered_at_ms), remote_id = COALESCE($5, remote_id),
                     lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $6
                 WHERE id = $7 AND lease_owner = $8 AND state = 'running'",
                )
                .bind(state)
                .bind(next_at)
                .bind(error)
                .bind(delivered_at)
                .bind(remote_id)
                .bind(now_ms)
                .bind(claimed.id())
                .bind(owner)
                .execute(&mut *tx)
                .await?;
                let kept = done.rows_affected() == 1;
                if kept && let Some(entry) = &entry {
                    tx.append_audit(now_ms, std::slice::from_ref(entry)).await?;
                }
                tx.commit().await?;
                Ok(kept)
            }
        )
    }

    pub async fn callback(&self, id: &str) -> Result<Option<CallbackRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM callbacks WHERE id = $1");
        on_pool!(self, |pool, _begin| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
            Ok(row.as_ref().map(record_from).transpose()?)
        })
    }

    /// Every callback of a ticket, oldest first.
    pub async fn callbacks_for_ticket(
        &self,
        source: &str,
        ticket_key: &str,
    ) -> Result<Vec<CallbackRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM callbacks WHERE source = $1 AND ticket_key = $2 ORDER BY created_at_ms, id");
        on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(source).bind(ticket_key).fetch_all(pool).await?;
            Ok(rows.iter().map(record_from).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Callbacks that gave up, newest first, with the reason: what an operator must look at.
    pub async fn dead_callbacks(&self, limit: i64) -> Result<Vec<CallbackRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM callbacks WHERE state = 'dead' ORDER BY updated_at_ms DESC, id LIMIT $1");
        on_pool!(self, |pool, _begin| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await?;
            Ok(rows.iter().map(record_from).collect::<Result<Vec<_>, _>>()?)
        })
    }
}
