//! The grant ledger and the job queue that executes it: grants and their jobs are written in the transaction
//! that records the plan; workers lease jobs, call Entra with no transaction open, then record the outcome.

use std::time::Duration;

use serde_json::{Value, json};

use super::callbacks::enqueue_callbacks;
use super::lifecycle::REASON_EXPIRED;
use super::{AppendAudit, NewCallback, Store, StoreError, on_pool};
use crate::audit::{AuditEntry, AuditKind, SERVICE_ACTOR};

/// The end of a grant, queued when it becomes active: a revoke (or, for PIM, an expiry check) job due then.
const INSERT_END_JOB: &str = "INSERT INTO jobs (id, grant_id, kind, state, next_attempt_at_ms, created_at_ms,
        updated_at_ms, reason, requested_by)
    VALUES ($1, $2, $3, 'queued', $4, $5, $5, $6, $7)
    ON CONFLICT (grant_id, kind) DO NOTHING";

/// A grant's notice before expiry that has not been posted yet, cancelled when the grant ends.
pub(super) const CANCEL_NOTICE: &str = "UPDATE callbacks SET state = 'cancelled', updated_at_ms = $1
    WHERE grant_id = $2 AND kind = 'expiring' AND state = 'queued'";

/// What `ended_reason` says when the access itself was kept for another grant (see `check_shared_access`).
pub(super) const KEPT_NOTE: &str = "; kept for grant ";

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
    /// The rule's lead time for the notice before expiry, when it asks for one.
    pub notify_before_secs: Option<i64>,
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
    /// `pending`, `active`, `failed`, `revoked` or `expired` (see docs/lifecycle.md).
    pub state: String,
    pub upstream_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Why the grant ended (`expired`, `withdrawn: cancelled`, `operator: ...`), with a note when the access
    /// itself was kept for another grant.
    pub ended_reason: Option<String>,
    /// `grantbridge`, or the operator who revoked it.
    pub ended_by: Option<String>,
    pub ended_at_ms: Option<i64>,
    /// The rule's lead time for the notice before expiry.
    pub notify_before_secs: Option<i64>,
}

/// A job leased to a worker, with its grant.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: String,
    pub attempts: i64,
    /// Jobs with the same key can be executed by one upstream call.
    pub batch_key: Option<String>,
    /// Why an ending job (`revoke`, `expire`) was queued, and by whom.
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub grant: GrantRecord,
}

/// What a finished batch settled, for the ticket to be told.
#[derive(Debug, Clone, Copy)]
pub enum Settled<'a> {
    /// Every grant of the event's plan has been executed: each is now `active` or `failed`.
    Executed { decision_detail: &'a str, grants: &'a [GrantRecord] },
    /// The grant has ended (revoked, withdrawn or expired); `grant.ended_reason` says why.
    Revoked { decision_detail: &'a str, grant: &'a GrantRecord },
    /// The grant is active and ends at `grant.expires_at_ms`: the notice posted ahead of its end.
    Expiring { decision_detail: &'a str, grant: &'a GrantRecord },
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

type HeldJobRow = (String, String, i64, Option<String>, String, Option<String>, Option<String>);

/// A grants row as read from either backend (more columns than sqlx's tuples take).
pub(super) struct GrantRow(pub(super) GrantRecord);

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for GrantRow
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(GrantRow(GrantRecord {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            source: row.try_get("source")?,
            ticket_key: row.try_get("ticket_key")?,
            rule: row.try_get("rule")?,
            kind: row.try_get("kind")?,
            target: row.try_get("target")?,
            label: row.try_get("label")?,
            principal_id: row.try_get("principal_id")?,
            requested_duration_secs: row.try_get("requested_duration_secs")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            state: row.try_get("state")?,
            upstream_id: row.try_get("upstream_id")?,
            last_error: row.try_get("last_error")?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
            ended_reason: row.try_get("ended_reason")?,
            ended_by: row.try_get("ended_by")?,
            ended_at_ms: row.try_get("ended_at_ms")?,
            notify_before_secs: row.try_get("notify_before_secs")?,
        }))
    }
}

pub(super) const GRANT_COLUMNS: &str = "id, event_id, source, ticket_key, rule, kind, target, label, principal_id,
    requested_duration_secs, expires_at_ms, state, upstream_id, last_error, created_at_ms, updated_at_ms,
    ended_reason, ended_by, ended_at_ms, notify_before_secs";

pub(super) fn grant_from(row: GrantRow) -> GrantRecord {
    row.0
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
        let rows: Vec<HeldJobRow> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT id, kind, attempts, batch_key, grant_id, reason, requested_by FROM jobs
                 WHERE lease_owner = $1 AND state = 'running'
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
            .map(|(id, kind, attempts, batch_key, grant_id, reason, requested_by)| {
                let grant = grants.remove(&grant_id).ok_or_else(|| {
                    StoreError::Corrupt(format!("job {id} names grant {grant_id}, which does not exist"))
                })?;
                Ok(ClaimedJob { id, kind, attempts, batch_key, reason, requested_by, grant })
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
        let grant_by_id = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1");
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let mut kept = Vec::with_capacity(outcomes.len());
                let mut notices: Vec<&ClaimedJob> = Vec::new();
                let mut ended: Vec<&ClaimedJob> = Vec::new();
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
                        JobResult::Dead { error } if job.kind == "grant" => sqlx::query(
                            "UPDATE grants SET state = 'failed', last_error = $1, updated_at_ms = $2 WHERE id = $3",
                        )
                        .bind(error),
                        // An ending that gave up leaves the access in place: the grant stays as it is, with the
                        // error, and the job is a dead letter an operator can ask again (lifecycle).
                        JobResult::Dead { error } => {
                            sqlx::query("UPDATE grants SET last_error = $1, updated_at_ms = $2 WHERE id = $3")
                                .bind(error)
                        }
                    };
                    grant_update.bind(now_ms).bind(&job.grant.id).execute(&mut *tx).await?;
                    // --- lifecycle: scheduling the end of a grant, and recording it (kinds revoke / expire) ---
                    if let JobResult::Done { expires_at_ms, .. } = result {
                        if job.kind == "grant" {
                            if let Some(at) = expires_at_ms {
                                // PIM assignments end in Entra by themselves: the ledger only checks and marks them.
                                let end = if job.grant.kind.starts_with("pim_") { "expire" } else { "revoke" };
                                sqlx::query(INSERT_END_JOB)
                                    .bind(uuid::Uuid::now_v7().to_string())
                                    .bind(&job.grant.id)
                                    .bind(end)
                                    .bind(*at)
                                    .bind(now_ms)
                                    .bind(REASON_EXPIRED)
                                    .bind(SERVICE_ACTOR)
                                    .execute(&mut *tx)
                                    .await?;
                                if job.grant.notify_before_secs.is_some() {
                                    notices.push(job);
                                }
                            }
                        } else {
                            sqlx::query(
                                "UPDATE grants SET ended_reason = COALESCE(ended_reason, $1),
                                 ended_by = COALESCE(ended_by, $2), ended_at_ms = COALESCE(ended_at_ms, $3)
                                 WHERE id = $4",
                            )
                            .bind(job.reason.as_deref().unwrap_or(REASON_EXPIRED))
                            .bind(job.requested_by.as_deref().unwrap_or(SERVICE_ACTOR))
                            .bind(now_ms)
                            .bind(&job.grant.id)
                            .execute(&mut *tx)
                            .await?;
                            // The grant has ended: its other end (an expiry after a withdrawal) and its notice go.
                            sqlx::query(
                                "UPDATE jobs SET state = 'cancelled', updated_at_ms = $1
                                 WHERE grant_id = $2 AND id <> $3 AND kind IN ('revoke', 'expire')
                                 AND state = 'queued'",
                            )
                            .bind(now_ms)
                            .bind(&job.grant.id)
                            .bind(&job.id)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(CANCEL_NOTICE).bind(now_ms).bind(&job.grant.id).execute(&mut *tx).await?;
                            ended.push(job);
                        }
                    }
                    // --- end lifecycle ---
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
                // --- lifecycle: ended grants (revoke / expire jobs) told to the ticket and audited ---
                let mut notice_times = Vec::new();
                for job in &ended {
                    let row: Option<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(grant_by_id.clone()))
                        .bind(&job.grant.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(grant) = row.map(grant_from) else { continue };
                    let kept_upstream = grant.ended_reason.as_deref().is_some_and(|r| r.contains(KEPT_NOTE));
                    if !kept_upstream {
                        // Removed upstream: a grant of the same access that became active meanwhile is added again.
                        sqlx::query(
                            "UPDATE jobs SET state = 'queued', next_attempt_at_ms = $1, attempts = 0, updated_at_ms = $1
                             WHERE kind = 'grant' AND state = 'done' AND grant_id IN (SELECT id FROM grants
                               WHERE kind = $2 AND target = $3 AND principal_id = $4 AND id <> $5
                               AND state = 'active')",
                        )
                        .bind(now_ms)
                        .bind(&grant.kind)
                        .bind(&grant.target)
                        .bind(&grant.principal_id)
                        .bind(&grant.id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let kind = if grant.state == "expired" { AuditKind::Expired } else { AuditKind::Revoked };
                    audit.push(
                        AuditEntry::service(kind)
                            .source(grant.source.clone())
                            .ticket(grant.ticket_key.clone())
                            .event(grant.event_id.clone())
                            .grant(grant.id.clone())
                            .detail(serde_json::json!({
                                "reason": grant.ended_reason,
                                "ended_by": grant.ended_by,
                                "removed_upstream": !kept_upstream,
                            })),
                    );
                    if let Some(report) = report {
                        let detail: Option<String> =
                            sqlx::query_scalar("SELECT detail FROM decisions WHERE event_id = $1")
                                .bind(&grant.event_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        let detail = detail.unwrap_or_default();
                        callbacks.extend(report(Settled::Revoked { decision_detail: &detail, grant: &grant }));
                    }
                }
                for job in notices {
                    let Some(report) = report else { break };
                    let row: Option<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(grant_by_id.clone()))
                        .bind(&job.grant.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(grant) = row.map(grant_from) else { continue };
                    let (Some(expires), Some(lead)) = (grant.expires_at_ms, grant.notify_before_secs) else {
                        continue;
                    };
                    let detail: Option<String> = sqlx::query_scalar("SELECT detail FROM decisions WHERE event_id = $1")
                        .bind(&grant.event_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let detail = detail.unwrap_or_default();
                    let at = expires.saturating_sub(lead.saturating_mul(1000)).max(now_ms);
                    for notice in report(Settled::Expiring { decision_detail: &detail, grant: &grant }) {
                        notice_times.push((notice.id.clone(), at));
                        callbacks.push(notice);
                    }
                }
                // --- end lifecycle ---
                let added = enqueue_callbacks(self, &mut tx, &callbacks, now_ms).await?;
                for (id, at) in &notice_times {
                    // A notice waits for its window; one already posted or under way is left alone.
                    sqlx::query(
                        "UPDATE callbacks SET next_attempt_at_ms = $1
                         WHERE id = $2 AND state = 'queued' AND attempts = 0",
                    )
                    .bind(*at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                if !audit.is_empty() {
                    tx.append_audit(now_ms, &audit).await?;
                }
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
    /// A callback being delivered.
    Callback(&'a str),
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
                "UPDATE events SET lease_until_ms = $1 WHERE lease_owner = $2 AND lease_owner = $3
                 AND state = 'deciding'",
                holder.to_string(),
            ),
            Leased::Callback(id) => (
                "UPDATE callbacks SET lease_until_ms = $1 WHERE lease_owner = $2 AND id = $3 AND state = 'running'",
                id.to_string(),
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
