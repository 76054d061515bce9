//! The grant ledger and the job queue that executes it: grants and their jobs are written in the transaction
//! that records the plan; workers lease jobs, call Entra with no transaction open, then record the outcome.

use std::time::Duration;

use super::{Store, StoreError, on_pool};

/// A grant a plan asked for, before it is stored.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub id: String,
    pub source: String,
    pub ticket_key: String,
    pub rule: String,
    pub kind: String,
    /// The target as JSON (`GrantTarget`).
    pub target: String,
    pub label: String,
    pub principal_id: String,
    pub requested_duration_secs: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: String,
    pub event_id: String,
    pub source: String,
    pub ticket_key: String,
    pub rule: String,
    pub kind: String,
    pub target: String,
    pub label: String,
    pub principal_id: String,
    pub requested_duration_secs: Option<i64>,
    pub expires_at_ms: Option<i64>,
    /// `pending`, `active`, `failed` or `revoked`.
    pub state: String,
    pub upstream_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A job leased to a worker, with its grant.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: String,
    pub attempts: i64,
    pub grant: GrantRecord,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum JobResult {
    /// The grant holds upstream (or, for a revoke job, is gone).
    Done { grant_state: &'static str, upstream_id: Option<String>, expires_at_ms: Option<i64> },
    /// Try again no earlier than `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Give up: the grant failed; the job stays as a dead letter with the last error.
    Dead { error: String },
}

pub(super) type GrantRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

pub(super) const GRANT_COLUMNS: &str = "id, event_id, source, ticket_key, rule, kind, target, label, principal_id,
    requested_duration_secs, expires_at_ms, state, upstream_id, last_error, created_at_ms, updated_at_ms";

pub(super) fn grant_from(row: GrantRow) -> GrantRecord {
    let (
        id,
        event_id,
        source,
        ticket_key,
        rule,
        kind,
        target,
        label,
        principal_id,
        requested,
        expires,
        state,
        upstream,
        error,
        created,
        updated,
    ) = row;
    GrantRecord {
        id,
        event_id,
        source,
        ticket_key,
        rule,
        kind,
        target,
        label,
        principal_id,
        requested_duration_secs: requested,
        expires_at_ms: expires,
        state,
        upstream_id: upstream,
        last_error: error,
        created_at_ms: created,
        updated_at_ms: updated,
    }
}

// As for events: due jobs first, then abandoned leases, each an index range.
const CLAIM_DUE_JOB: &str = "UPDATE jobs
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND next_attempt_at_ms <= $3
                ORDER BY next_attempt_at_ms LIMIT 1 {lock})
    RETURNING id, grant_id, kind, attempts";

const CLAIM_ABANDONED_JOB: &str = "UPDATE jobs
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id = (SELECT id FROM jobs WHERE state = 'running' AND lease_until_ms < $3
                ORDER BY next_attempt_at_ms LIMIT 1 {lock})
    RETURNING id, grant_id, kind, attempts";

impl Store {
    /// Leases the next due job to `owner`, with its grant.
    pub async fn claim_job(&self, owner: &str, now_ms: i64, lease: Duration) -> Result<Option<ClaimedJob>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut claimed: Option<(String, String, String, i64)> = None;
        for template in [CLAIM_DUE_JOB, CLAIM_ABANDONED_JOB] {
            let sql = sqlx::AssertSqlSafe(template.replace("{lock}", self.row_lock()));
            claimed = on_pool!(
                self,
                background | pool,
                _begin | sqlx::query_as(sql).bind(owner).bind(until).bind(now_ms).fetch_optional(pool).await?
            );
            if claimed.is_some() {
                break;
            }
        }
        let Some((id, grant_id, kind, attempts)) = claimed else { return Ok(None) };
        let grant = self
            .grant(&grant_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} names grant {grant_id}, which does not exist")))?;
        Ok(Some(ClaimedJob { id, kind, attempts, grant }))
    }

    /// Records how a job ended, if `owner` still holds its lease; returns false when the lease was lost.
    pub async fn finish_job(
        &self,
        job: &ClaimedJob,
        owner: &str,
        result: &JobResult,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let (job_state, next_at, error) = match result {
                    JobResult::Done { .. } => ("done", now_ms, None),
                    JobResult::Retry { at_ms, error } => ("queued", *at_ms, Some(error.as_str())),
                    JobResult::Dead { error } => ("dead", now_ms, Some(error.as_str())),
                };
                let updated = sqlx::query(
                    "UPDATE jobs SET state = $1, next_attempt_at_ms = $2, last_error = $3, lease_owner = NULL,
                     lease_until_ms = NULL, updated_at_ms = $4
                 WHERE id = $5 AND lease_owner = $6 AND state = 'running'",
                )
                .bind(job_state)
                .bind(next_at)
                .bind(error)
                .bind(now_ms)
                .bind(&job.id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated != 1 {
                    return Ok(false);
                }
                match result {
                    JobResult::Done { grant_state, upstream_id, expires_at_ms } => {
                        sqlx::query(
                            "UPDATE grants SET state = $1, upstream_id = COALESCE($2, upstream_id), expires_at_ms = $3,
                             last_error = NULL, updated_at_ms = $4
                         WHERE id = $5",
                        )
                        .bind(*grant_state)
                        .bind(upstream_id)
                        .bind(expires_at_ms)
                        .bind(now_ms)
                        .bind(&job.grant.id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    JobResult::Retry { error, .. } => {
                        sqlx::query("UPDATE grants SET last_error = $1, updated_at_ms = $2 WHERE id = $3")
                            .bind(error)
                            .bind(now_ms)
                            .bind(&job.grant.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    JobResult::Dead { error } => {
                        sqlx::query(
                            "UPDATE grants SET state = 'failed', last_error = $1, updated_at_ms = $2 WHERE id = $3",
                        )
                        .bind(error)
                        .bind(now_ms)
                        .bind(&job.grant.id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(true)
            }
        )
    }

    pub async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError> {
        let row: Option<GrantRow> = on_pool!(self, |pool, _begin| {
            let sql = sqlx::AssertSqlSafe(format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"));
            sqlx::query_as(sql).bind(id).fetch_optional(pool).await?
        });
        Ok(row.map(grant_from))
    }

    pub async fn grants_for_ticket(&self, source: &str, ticket_key: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let rows: Vec<GrantRow> = on_pool!(self, |pool, _begin| {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE source = $1 AND ticket_key = $2 ORDER BY created_at_ms, id"
            ));
            sqlx::query_as(sql).bind(source).bind(ticket_key).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(grant_from).collect())
    }

    /// Jobs that gave up, newest first: what an operator must look at.
    pub async fn dead_jobs(&self, limit: i64) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        on_pool!(self, |pool, _begin| {
            Ok(sqlx::query_as(
                "SELECT id, grant_id, last_error FROM jobs WHERE state = 'dead' ORDER BY updated_at_ms DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }
}

/// What a heartbeat extends.
#[derive(Debug, Clone, Copy)]
pub enum Leased<'a> {
    Event(crate::domain::EventId),
    Job(&'a str),
}

impl Store {
    /// Extends `owner`'s lease while it is still working; false when the lease is no longer its own.
    pub async fn extend_lease(&self, what: Leased<'_>, owner: &str, until_ms: i64) -> Result<bool, StoreError> {
        let (sql, id) = match what {
            Leased::Event(id) => (
                "UPDATE events SET lease_until_ms = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'deciding'",
                id.to_string(),
            ),
            Leased::Job(id) => (
                "UPDATE jobs SET lease_until_ms = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'running'",
                id.to_string(),
            ),
        };
        on_pool!(
            self,
            background | pool,
            _begin | {
                let done = sqlx::query(sql).bind(until_ms).bind(&id).bind(owner).execute(pool).await?;
                Ok(done.rows_affected() == 1)
            }
        )
    }
}
