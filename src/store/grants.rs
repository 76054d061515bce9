//! The grant ledger and the job queue that executes it: grants and their jobs are written in the transaction
//! that records the plan; workers lease jobs, call Entra with no transaction open, then record the outcome.

use std::time::Duration;

use serde_json::{Value, json};

use super::callbacks::enqueue_callbacks;
use super::{AppendAudit, NewCallback, Store, StoreError, on_pool};
use crate::audit::{AuditEntry, AuditKind};

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
    /// Jobs with the same key can be executed by one upstream call (see [`batch_key`]).
    pub batch_key: Option<String>,
}

/// Grant jobs that one upstream write can serve together: additions to one group, up to 20 per PATCH.
pub fn batch_key(kind: &str, target: &crate::domain::GrantTarget) -> Option<String> {
    match target {
        crate::domain::GrantTarget::GroupMember { group_id } if kind == "group_member" => {
            Some(format!("group_member:{}", group_id.trim().to_ascii_lowercase()))
        }
        _ => None,
    }
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
    /// Jobs with the same key can be executed by one upstream call.
    pub batch_key: Option<String>,
    pub grant: GrantRecord,
}

/// What a finished batch settled, for the ticket to be told.
#[derive(Debug, Clone, Copy)]
pub enum Settled<'a> {
    /// Every grant of the event's plan has been executed: each is now `active` or `failed`.
    Executed { decision_detail: &'a str, grants: &'a [GrantRecord] },
    /// The grant has been revoked upstream.
    Revoked { decision_detail: &'a str, grant: &'a GrantRecord },
}

/// Renders what the ticket is told about what a batch settled.
pub type Report<'a> = &'a (dyn Fn(Settled<'_>) -> Vec<NewCallback> + Sync);

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
    RETURNING batch_key";

const CLAIM_ABANDONED_JOB: &str = "UPDATE jobs
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id = (SELECT id FROM jobs WHERE state = 'running' AND lease_until_ms < $3
                ORDER BY next_attempt_at_ms LIMIT 1 {lock})
    RETURNING batch_key";

/// The rest of a batch: due jobs that the same upstream call can serve.
const CLAIM_BATCH: &str = "UPDATE jobs
    SET state = 'running', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1, updated_at_ms = $3
    WHERE id IN (SELECT id FROM jobs WHERE batch_key = $4 AND state = 'queued' AND next_attempt_at_ms <= $3
                 ORDER BY next_attempt_at_ms LIMIT $5 {lock})";

impl Store {
    /// Leases the next due job to `owner`, with its grant.
    pub async fn claim_job(&self, owner: &str, now_ms: i64, lease: Duration) -> Result<Option<ClaimedJob>, StoreError> {
        Ok(self.claim_jobs(owner, now_ms, lease, 1).await?.into_iter().next())
    }

    /// Leases the next due job to `owner` and, when it can be batched, up to `max - 1` more due jobs of the same
    /// batch, in one transaction. Each claim counts as an attempt of that job. Empty when nothing is due.
    ///
    /// An executor holds one batch at a time: whatever `owner` holds and has not finished is returned with it.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let more = i64::try_from(max.saturating_sub(1)).unwrap_or(0);
        let lock = self.row_lock();
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let mut first: Option<(Option<String>,)> = None;
                for template in [CLAIM_DUE_JOB, CLAIM_ABANDONED_JOB] {
                    let sql = sqlx::AssertSqlSafe(template.replace("{lock}", lock));
                    first = sqlx::query_as(sql).bind(owner).bind(until).bind(now_ms).fetch_optional(&mut *tx).await?;
                    if first.is_some() {
                        break;
                    }
                }
                let Some((batch,)) = first else { return Ok(Vec::new()) };
                if let Some(batch) = batch.filter(|_| more > 0) {
                    let sql = sqlx::AssertSqlSafe(CLAIM_BATCH.replace("{lock}", lock));
                    sqlx::query(sql)
                        .bind(owner)
                        .bind(until)
                        .bind(now_ms)
                        .bind(batch)
                        .bind(more)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }
        )?;
        self.held_jobs(owner).await
    }

    /// Adds up to `max` more due jobs of `batch_key` to what `owner` holds (one transaction), and returns all it
    /// holds: a batch topped up while it waited to be sent.
    pub async fn claim_more(
        &self,
        owner: &str,
        batch_key: &str,
        now_ms: i64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let max = i64::try_from(max).unwrap_or(0);
        if max > 0 {
            let sql = sqlx::AssertSqlSafe(CLAIM_BATCH.replace("{lock}", self.row_lock()));
            on_pool!(
                self,
                background | pool,
                _begin | {
                    sqlx::query(sql)
                        .bind(owner)
                        .bind(until)
                        .bind(now_ms)
                        .bind(batch_key)
                        .bind(max)
                        .execute(pool)
                        .await?;
                }
            );
        }
        self.held_jobs(owner).await
    }

    /// Every job `owner` holds, with its grant, oldest first.
    async fn held_jobs(&self, owner: &str) -> Result<Vec<ClaimedJob>, StoreError> {
        let rows: Vec<(String, String, i64, Option<String>, String)> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT id, kind, attempts, batch_key, grant_id FROM jobs WHERE lease_owner = $1 AND state = 'running'
                 ORDER BY next_attempt_at_ms, id",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?
        });
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let grants: Vec<GrantRow> = on_pool!(self, |pool, _begin| {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {GRANT_COLUMNS} FROM grants
                 WHERE id IN (SELECT grant_id FROM jobs WHERE lease_owner = $1 AND state = 'running')"
            ));
            sqlx::query_as(sql).bind(owner).fetch_all(pool).await?
        });
        let mut grants: std::collections::HashMap<String, GrantRecord> =
            grants.into_iter().map(grant_from).map(|g| (g.id.clone(), g)).collect();
        rows.into_iter()
            .map(|(id, kind, attempts, batch_key, grant_id)| {
                let grant = grants.remove(&grant_id).ok_or_else(|| {
                    StoreError::Corrupt(format!("job {id} names grant {grant_id}, which does not exist"))
                })?;
                Ok(ClaimedJob { id, kind, attempts, batch_key, grant })
            })
            .collect()
    }

    /// Records how a job ended, if `owner` still holds its lease; returns false when the lease was lost.
    pub async fn finish_job(
        &self,
        job: &ClaimedJob,
        owner: &str,
        result: &JobResult,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let kept = self.finish_jobs(&[(job, result.clone())], owner, now_ms).await?;
        Ok(kept.first().copied().unwrap_or(false))
    }

    /// Records how each job of a batch ended, in one transaction; for each, false when its lease was lost.
    pub async fn finish_jobs(
        &self,
        outcomes: &[(&ClaimedJob, JobResult)],
        owner: &str,
        now_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        Ok(self.finish_jobs_reporting(outcomes, owner, now_ms, None).await?.0)
    }

    /// [`Store::finish_jobs`], and in the same transaction the callbacks `report` renders for what is now settled:
    /// each event whose grants have all been executed (active or failed), each grant whose revocation is done.
    /// Returns, with the kept flags, how many callbacks were new. Without `report`, nothing is looked at.
    pub async fn finish_jobs_reporting(
        &self,
        outcomes: &[(&ClaimedJob, JobResult)],
        owner: &str,
        now_ms: i64,
        report: Option<Report<'_>>,
    ) -> Result<(Vec<bool>, u64), StoreError> {
        // On PostgreSQL, two executors finishing an event's last two grants must not both see the other's pending.
        // (SQLite runs one write transaction at a time already.)
        let lock_event = match self {
            Store::Postgres(_) => Some("SELECT id FROM events WHERE id = $1 FOR UPDATE"),
            Store::Sqlite(_) => None,
        };
        let grants_of_event = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE event_id = $1");
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let mut kept = Vec::with_capacity(outcomes.len());
                for (job, result) in outcomes {
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
                    kept.push(updated == 1);
                    if updated != 1 {
                        continue;
                    }
                    let grant_update = match result {
                        JobResult::Done { grant_state, upstream_id, expires_at_ms } => sqlx::query(
                            "UPDATE grants SET state = $1, upstream_id = COALESCE($2, upstream_id), expires_at_ms = $3,
                             last_error = NULL, updated_at_ms = $4
                             WHERE id = $5",
                        )
                        .bind(*grant_state)
                        .bind(upstream_id)
                        .bind(expires_at_ms),
                        JobResult::Retry { error, .. } => {
                            sqlx::query("UPDATE grants SET last_error = $1, updated_at_ms = $2 WHERE id = $3")
                                .bind(error)
                        }
                        JobResult::Dead { error } => sqlx::query(
                            "UPDATE grants SET state = 'failed', last_error = $1, updated_at_ms = $2 WHERE id = $3",
                        )
                        .bind(error),
                    };
                    grant_update.bind(now_ms).bind(&job.grant.id).execute(&mut *tx).await?;
                }
                let finished = |(job, result): &&(&ClaimedJob, JobResult)| {
                    !matches!(result, JobResult::Retry { .. }) && job.kind == "grant"
                };
                let mut events: Vec<&str> = outcomes
                    .iter()
                    .zip(&kept)
                    .filter(|(o, k)| report.is_some() && **k && finished(o))
                    .map(|((job, _), _)| job.grant.event_id.as_str())
                    .collect();
                events.sort_unstable();
                events.dedup();
                let mut callbacks = Vec::new();
                for event_id in events {
                    if let Some(lock_event) = lock_event {
                        sqlx::query(lock_event).bind(event_id).fetch_optional(&mut *tx).await?;
                    }
                    let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(grants_of_event.clone()))
                        .bind(event_id)
                        .fetch_all(&mut *tx)
                        .await?;
                    let grants: Vec<GrantRecord> = rows.into_iter().map(grant_from).collect();
                    if grants.iter().any(|g| g.state == "pending") {
                        continue;
                    }
                    let detail: Option<String> = sqlx::query_scalar("SELECT detail FROM decisions WHERE event_id = $1")
                        .bind(event_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let detail = detail.unwrap_or_default();
                    if let Some(report) = report {
                        callbacks.extend(report(Settled::Executed { decision_detail: &detail, grants: &grants }));
                    }
                }
                for ((job, result), kept) in outcomes.iter().zip(&kept) {
                    let Some(report) = report else { break };
                    if *kept && job.kind == "revoke" && matches!(result, JobResult::Done { .. }) {
                        let detail: Option<String> =
                            sqlx::query_scalar("SELECT detail FROM decisions WHERE event_id = $1")
                                .bind(&job.grant.event_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        let detail = detail.unwrap_or_default();
                        callbacks.extend(report(Settled::Revoked { decision_detail: &detail, grant: &job.grant }));
                    }
                }
                let mut audit: Vec<AuditEntry> = Vec::new();
                // --- Audit of `grant` jobs: `granted` or `failed` once a job is done or dead (not per retry).
                audit.extend(
                    outcomes
                        .iter()
                        .zip(&kept)
                        .filter(|(_, kept)| **kept)
                        .filter_map(|((job, result), _)| grant_job_entry(job, result, now_ms)),
                );
                // --- End of the audit of `grant` jobs.
                let added = enqueue_callbacks(self, &mut tx, &callbacks, now_ms).await?;
                tx.append_audit(now_ms, &audit).await?;
                tx.commit().await?;
                Ok((kept, added))
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

/// The audit entry of a `grant` job that ended: `granted` (the grant holds upstream) or `failed` (given up, with
/// the stable code its error starts with, never the upstream's text). None for other jobs and for retries.
fn grant_job_entry(job: &ClaimedJob, result: &JobResult, now_ms: i64) -> Option<AuditEntry> {
    if job.kind != "grant" {
        return None;
    }
    let grant = &job.grant;
    let mut detail = json!({
        "job_id": job.id,
        "attempts": job.attempts,
        "kind": grant.kind,
        "rule": grant.rule,
        "target": serde_json::from_str::<Value>(&grant.target).unwrap_or_else(|_| Value::String(grant.target.clone())),
        "principal_id": grant.principal_id,
    });
    let kind = match result {
        JobResult::Retry { .. } => return None,
        JobResult::Done { grant_state, upstream_id, expires_at_ms } => {
            detail["state"] = json!(grant_state);
            if let Some(upstream) = upstream_id.as_ref().or(grant.upstream_id.as_ref()) {
                detail["upstream_id"] = json!(upstream);
            }
            if let Some(at) = expires_at_ms {
                detail["expires_at_ms"] = json!(at);
            }
            AuditKind::Granted
        }
        JobResult::Dead { error } => {
            detail["code"] = json!(error_code(error));
            AuditKind::Failed
        }
    };
    Some(
        AuditEntry::service(kind)
            .at(now_ms)
            .source(grant.source.as_str())
            .ticket(grant.ticket_key.as_str())
            .event(&grant.event_id)
            .grant(grant.id.as_str())
            .detail(detail),
    )
}

/// The stable code a job's error starts with (`Authorization_RequestDenied: ...`); `unknown` when it does not
/// start with an identifier.
pub(super) fn error_code(error: &str) -> &str {
    let code = error.split_once(": ").map_or(error, |(code, _)| code).trim();
    let identifier = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if identifier { code } else { "unknown" }
}

/// What a heartbeat extends.
#[derive(Debug, Clone, Copy)]
pub enum Leased<'a> {
    Event(crate::domain::EventId),
    Job(&'a str),
    /// Every job the owner holds: the batch in hand.
    JobsOf(&'a str),
    /// Every event the owner is deciding.
    EventsOf(&'a str),
}

impl Store {
    /// Extends `owner`'s lease while it is still working; false when the lease is no longer its own.
    pub async fn extend_lease(&self, what: Leased<'_>, owner: &str, until_ms: i64) -> Result<bool, StoreError> {
        // `$3` is the row's id, or the owner again for everything the owner holds.
        let (sql, id) = match what {
            Leased::Event(id) => (
                "UPDATE events SET lease_until_ms = $1 WHERE lease_owner = $2 AND id = $3 AND state = 'deciding'",
                id.to_string(),
            ),
            Leased::Job(id) => (
                "UPDATE jobs SET lease_until_ms = $1 WHERE lease_owner = $2 AND id = $3 AND state = 'running'",
                id.to_string(),
            ),
            Leased::EventsOf(holder) => (
                "UPDATE events SET lease_until_ms = $1 WHERE lease_owner = $2 AND lease_owner = $3 AND state = 'deciding'",
                holder.to_string(),
            ),
            Leased::JobsOf(holder) => (
                "UPDATE jobs SET lease_until_ms = $1 WHERE lease_owner = $2 AND lease_owner = $3 AND state = 'running'",
                holder.to_string(),
            ),
        };
        on_pool!(
            self,
            background | pool,
            _begin | {
                let done = sqlx::query(sql).bind(until_ms).bind(owner).bind(&id).execute(pool).await?;
                Ok(done.rows_affected() >= 1)
            }
        )
    }
}
