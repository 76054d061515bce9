//! Access that ends: the decisions a revocation takes under lock (is the access still needed by another grant?),
//! an operator's revocation, and when an idle executor must look again. See docs/lifecycle.md.

use super::grants::{GRANT_COLUMNS, GrantRow, grant_from};
use super::{AppendAudit, ClaimedJob, GrantRecord, Store, StoreError, on_pool};
use crate::audit::{AuditEntry, AuditKind, SERVICE_ACTOR};

/// `jobs.reason` of the revocation queued at a grant's expiry.
pub const REASON_EXPIRED: &str = "expired";

/// What a revoke job does upstream, decided under the lock of every grant of the same access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedAccess {
    /// No other grant needs the access: remove it upstream.
    Remove,
    /// Another active or pending grant needs the access: this grant has ended in the ledger, the access stays.
    Kept { note: String },
    /// The executor no longer holds the job.
    LeaseLost,
}

/// What an operator's revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRevoke {
    UnknownGrant,
    /// Pending or failed: nothing to take away (yet).
    NotActive(GrantRecord),
    /// A revoke job is now due.
    Queued(GrantRecord),
    /// Already ended, or its revocation is already due or under way: nothing changed.
    Already(GrantRecord),
}

/// Grants of the same access as `$4`, other than it, that still need it; oldest first.
const KEEPERS: &str = "SELECT id, ticket_key FROM grants
    WHERE kind = $1 AND target = $2 AND principal_id = $3 AND id <> $4 AND state IN ('active', 'pending')
    ORDER BY created_at_ms, id";

/// PostgreSQL: the rows of one access locked in id order, so that two revocations of it take turns.
const LOCK_ACCESS: &str = "SELECT id FROM grants WHERE kind = $1 AND target = $2 AND principal_id = $3
    ORDER BY id FOR UPDATE";

/// The state a grant ends in, by the reason its ending job was queued for.
pub fn ended_state(job: &ClaimedJob) -> &'static str {
    if job.kind == "expire" || job.reason.as_deref() == Some(REASON_EXPIRED) { "expired" } else { "revoked" }
}

impl Store {
    /// Decides, before any upstream call, whether revoking `job`'s grant may remove the access upstream: not while
    /// another active or pending grant of the same (kind, target, principal) needs it. When one does, the grant
    /// ends in the ledger now, with a note naming the grant that keeps the access, in the same transaction that
    /// looked; the caller then finishes the job without calling upstream.
    pub async fn check_shared_access(
        &self,
        job: &ClaimedJob,
        owner: &str,
        now_ms: i64,
    ) -> Result<SharedAccess, StoreError> {
        let g = &job.grant;
        let lock = matches!(self, Store::Postgres(_));
        let state = ended_state(job);
        let reason = job.reason.clone().unwrap_or_else(|| REASON_EXPIRED.to_string());
        let by = job.requested_by.clone().unwrap_or_else(|| SERVICE_ACTOR.to_string());
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let held: Option<String> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 AND lease_owner = $2 AND state = 'running'")
                        .bind(&job.id)
                        .bind(owner)
                        .fetch_optional(&mut *tx)
                        .await?;
                if held.is_none() {
                    return Ok(SharedAccess::LeaseLost);
                }
                if lock {
                    sqlx::query(LOCK_ACCESS)
                        .bind(&g.kind)
                        .bind(&g.target)
                        .bind(&g.principal_id)
                        .fetch_all(&mut *tx)
                        .await?;
                }
                let keepers: Vec<(String, String)> = sqlx::query_as(KEEPERS)
                    .bind(&g.kind)
                    .bind(&g.target)
                    .bind(&g.principal_id)
                    .bind(&g.id)
                    .fetch_all(&mut *tx)
                    .await?;
                let Some((keeper, ticket)) = keepers.into_iter().next() else {
                    tx.commit().await?;
                    return Ok(SharedAccess::Remove);
                };
                let note = format!("kept for grant {keeper} of ticket {ticket}");
                sqlx::query(
                    "UPDATE grants SET state = $1, ended_reason = $2, ended_by = $3, ended_at_ms = $4,
                     updated_at_ms = $4 WHERE id = $5 AND state IN ('active', 'pending')",
                )
                .bind(state)
                .bind(format!("{reason}; {note}"))
                .bind(&by)
                .bind(now_ms)
                .bind(&g.id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(SharedAccess::Kept { note })
            }
        )
    }

    /// An operator's revocation of grant `id`: queues its revoke job due now with reason `operator: <reason>`
    /// and `actor` as who ended it, and records the operator's action in the audit trail, in one transaction.
    /// Idempotent: a grant already ended or being revoked is returned as it is.
    pub async fn revoke_by_operator(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<OperatorRevoke, StoreError> {
        let select = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1{}",
            if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" }
        );
        let job_reason = format!("operator: {reason}");
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let row: Option<GrantRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(select)).bind(id).fetch_optional(&mut *tx).await?;
                let Some(grant) = row.map(grant_from) else { return Ok(OperatorRevoke::UnknownGrant) };
                match grant.state.as_str() {
                    "active" => {}
                    "revoked" | "expired" => return Ok(OperatorRevoke::Already(grant)),
                    _ => return Ok(OperatorRevoke::NotActive(grant)),
                }
                // A revocation already due, running or done stays as it is; one waiting for the expiry is brought
                // forward.
                let existing: Option<(String, i64)> = sqlx::query_as(
                    "SELECT state, next_attempt_at_ms FROM jobs WHERE grant_id = $1 AND kind = 'revoke'",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                // A revocation that gave up (dead) may be asked for again.
                if let Some((state, at)) = &existing
                    && (matches!(state.as_str(), "running" | "done") || (state == "queued" && *at <= now_ms))
                {
                    return Ok(OperatorRevoke::Already(grant));
                }
                sqlx::query(
                    "INSERT INTO jobs (id, grant_id, kind, state, next_attempt_at_ms, created_at_ms, updated_at_ms,
                     reason, requested_by)
                     VALUES ($1, $2, 'revoke', 'queued', $3, $3, $3, $4, $5)
                     ON CONFLICT (grant_id, kind) DO UPDATE SET state = 'queued', attempts = 0,
                     next_attempt_at_ms = excluded.next_attempt_at_ms, reason = excluded.reason,
                     requested_by = excluded.requested_by, updated_at_ms = excluded.updated_at_ms
                     WHERE jobs.state IN ('queued', 'dead', 'cancelled')",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(id)
                .bind(now_ms)
                .bind(&job_reason)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
                let entry = AuditEntry::operator(AuditKind::OperatorAction, actor)
                    .source(grant.source.clone())
                    .ticket(grant.ticket_key.clone())
                    .event(grant.event_id.clone())
                    .grant(grant.id.clone())
                    .detail(serde_json::json!({ "action": "revoke", "reason": reason }));
                tx.append_audit(now_ms, std::slice::from_ref(&entry)).await?;
                tx.commit().await?;
                Ok(OperatorRevoke::Queued(grant))
            }
        )
    }

    /// When the job queue next has something to do: the earliest retry or scheduled end of a queued job, or the
    /// earliest lease to run out. `None` when there is no job at all.
    pub async fn next_job_due_ms(&self) -> Result<Option<i64>, StoreError> {
        on_pool!(self, |pool, _begin| {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(t) FROM (
                     SELECT MIN(next_attempt_at_ms) AS t FROM jobs WHERE state = 'queued'
                     UNION ALL
                     SELECT MIN(lease_until_ms) AS t FROM jobs WHERE state = 'running'
                 ) AS due",
            )
            .fetch_one(pool)
            .await?;
            Ok(due)
        })
    }
}
