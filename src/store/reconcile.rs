//! What reconciliation reads of the ledger (the grants that concern one group's membership), the runs it records,
//! and the lock that lets one replica at a time run it.

use std::time::SystemTime;

use super::{AppendAudit, Store, StoreError, on_pool};
use crate::audit::AuditEntry;
use crate::domain::{GrantTarget, PimAccess};
use crate::inbound::unix_millis;

/// The advisory lock key held by the replica that is reconciling (the migration lock is 7342016331).
const RECONCILE_LOCK: i64 = 7_342_016_333;

/// Runs kept in `reconcile_runs`: six weeks of hourly runs. Older ones are deleted as new ones are recorded.
pub const RECONCILE_RUNS_KEPT: i64 = 1_000;

/// One ledger grant that concerns a group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerGrant {
    pub grant_id: String,
    /// Lower-cased.
    pub principal_id: String,
    pub rule: String,
    /// `group_member`, or `pim_group` for a PIM member assignment, which Entra also shows as a direct member.
    pub kind: String,
    /// `pending`, `active`, `failed` or `revoked`.
    pub state: String,
    pub expires_at_ms: Option<i64>,
    /// A revoke job exists for the grant: its membership is being, or was, taken away.
    pub revoking: bool,
}

/// A recorded reconciliation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRun {
    pub id: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// `schedule` (the periodic job) or `cli`.
    pub started_by: String,
    pub dry_run: bool,
    /// Drift found, of every kind.
    pub drift: i64,
    /// Targets that could not be read and actions that failed.
    pub errors: i64,
    /// The report, as JSON.
    pub report: String,
}

/// A recorded run without its report, as the list of runs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRunSummary {
    pub id: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub started_by: String,
    pub dry_run: bool,
    pub drift: i64,
    pub errors: i64,
}

/// Deletes the runs that started before the `$1`-th latest (counting from 0); nothing while there are fewer.
const PRUNE_RUNS: &str = "DELETE FROM reconcile_runs WHERE started_at_ms <
    (SELECT started_at_ms FROM reconcile_runs ORDER BY started_at_ms DESC LIMIT 1 OFFSET $1)";

type LedgerRow = (String, String, String, String, String, String, Option<i64>, bool);
type RunRow = (String, i64, i64, String, bool, i64, i64, String);

const RUN_COLUMNS: &str = "id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors, report";

fn run_from((id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors, report): RunRow) -> ReconcileRun {
    ReconcileRun { id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors, report }
}

/// Whether a stored target names `group_id`'s membership: a `group_member` grant, or a PIM member assignment.
fn concerns(target: &GrantTarget, group_id: &str) -> bool {
    match target {
        GrantTarget::GroupMember { group_id: g } | GrantTarget::PimGroup { group_id: g, access: PimAccess::Member } => {
            g.trim().eq_ignore_ascii_case(group_id)
        }
        _ => false,
    }
}

impl Store {
    /// Every grant, in any state, whose target is membership of `group_id` (`group_member`, and `pim_group` member
    /// assignments), oldest first. The stored target JSON is parsed and its group id compared in lower case, so
    /// neither key order nor spacing nor case in the JSON matters; a row whose target cannot be read fails the call,
    /// because a ledger read in part must not be acted upon.
    pub async fn grants_for_group(&self, group_id: &str) -> Result<Vec<LedgerGrant>, StoreError> {
        let group_id = group_id.trim().to_ascii_lowercase();
        // A revocation asked for (withdrawal, operator) or under way counts as revoking; the revoke job every
        // time-bound grant carries for its expiry does not, until it runs.
        // A cheap filter that every matching row passes; the parsed comparison below decides.
        let pattern = format!("%{group_id}%");
        let rows: Vec<LedgerRow> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(
                "SELECT g.id, g.principal_id, g.rule, g.kind, g.target, g.state, g.expires_at_ms,
                        EXISTS (SELECT 1 FROM jobs j WHERE j.grant_id = g.id AND j.kind = 'revoke'
                                AND NOT (j.state = 'queued' AND j.reason = 'expired'))
                 FROM grants g
                 WHERE g.kind IN ('group_member', 'pim_group') AND LOWER(g.target) LIKE $1
                 ORDER BY g.created_at_ms, g.id",
            )
            .bind(&pattern)
            .fetch_all(pool)
            .await?
        });
        let mut grants = Vec::with_capacity(rows.len());
        for (grant_id, principal_id, rule, kind, target, state, expires_at_ms, revoking) in rows {
            let parsed: GrantTarget = serde_json::from_str(&target)
                .map_err(|e| StoreError::Corrupt(format!("grant {grant_id} has a target that cannot be read: {e}")))?;
            if parsed.kind() != kind {
                return Err(StoreError::Corrupt(format!(
                    "grant {grant_id} is of kind {kind} but its target is of kind {}",
                    parsed.kind()
                )));
            }
            if concerns(&parsed, &group_id) {
                grants.push(LedgerGrant {
                    grant_id,
                    principal_id: principal_id.trim().to_ascii_lowercase(),
                    rule,
                    kind,
                    state,
                    expires_at_ms,
                    revoking,
                });
            }
        }
        Ok(grants)
    }

    /// Records a run, and forgets the runs beyond the latest [`RECONCILE_RUNS_KEPT`], in one transaction.
    pub async fn insert_reconcile_run(&self, run: &ReconcileRun) -> Result<(), StoreError> {
        self.record_reconcile_run(run, &[]).await
    }

    /// Records a run with its audit entries (appended last), and forgets the runs beyond the latest
    /// [`RECONCILE_RUNS_KEPT`], in one transaction: the run and its entries are stored together or not at all.
    pub async fn record_reconcile_run(&self, run: &ReconcileRun, audit: &[AuditEntry]) -> Result<(), StoreError> {
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                sqlx::query(
                    "INSERT INTO reconcile_runs (id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors,
                     report)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&run.id)
                .bind(run.started_at_ms)
                .bind(run.finished_at_ms)
                .bind(&run.started_by)
                .bind(run.dry_run)
                .bind(run.drift)
                .bind(run.errors)
                .bind(&run.report)
                .execute(&mut *tx)
                .await?;
                sqlx::query(PRUNE_RUNS).bind(RECONCILE_RUNS_KEPT - 1).execute(&mut *tx).await?;
                tx.append_audit(unix_millis(SystemTime::now()), audit).await?;
                tx.commit().await?;
                Ok(())
            }
        )
    }

    /// Forgets every run but the latest `keep` (at least one is kept).
    pub async fn prune_reconcile_runs(&self, keep: i64) -> Result<(), StoreError> {
        on_pool!(
            self,
            write | pool,
            _begin | {
                sqlx::query(PRUNE_RUNS).bind(keep.max(1) - 1).execute(pool).await?;
                Ok(())
            }
        )
    }

    /// The run that started last, whoever started it.
    pub async fn latest_reconcile_run(&self) -> Result<Option<ReconcileRun>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs ORDER BY started_at_ms DESC, id DESC LIMIT 1");
        let row: Option<RunRow> =
            on_pool!(self, |pool, _begin| sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_optional(pool).await?);
        Ok(row.map(run_from))
    }

    pub async fn reconcile_run(&self, id: &str) -> Result<Option<ReconcileRun>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE id = $1");
        let row: Option<RunRow> = on_pool!(self, |pool, _begin| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
        });
        Ok(row.map(run_from))
    }

    /// When the latest run started by `started_by` (`schedule` or `cli`) started.
    pub async fn last_reconcile_started_at(&self, started_by: &str) -> Result<Option<i64>, StoreError> {
        on_pool!(self, |pool, _begin| {
            Ok(sqlx::query_scalar("SELECT MAX(started_at_ms) FROM reconcile_runs WHERE started_by = $1")
                .bind(started_by)
                .fetch_one(pool)
                .await?)
        })
    }

    /// Takes the reconciliation lock, unless another replica holds it (`None`). On PostgreSQL it is a session-level
    /// advisory lock on a connection of its own, closed on release (or when dropped), which ends the session and
    /// so the lock, even if the process dies. On SQLite, which serves one process, there is nothing to take.
    pub async fn try_lock_reconcile(&self) -> Result<Option<ReconcileLock>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Some(ReconcileLock { held: None })),
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                // Never handed back to the pool with the lock still held.
                conn.close_on_drop();
                let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RECONCILE_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                if taken {
                    Ok(Some(ReconcileLock { held: Some(conn) }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}

/// The reconciliation lock, held until released or dropped.
pub struct ReconcileLock {
    held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl ReconcileLock {
    /// Releases the lock: the connection that holds it is closed, which ends its session.
    pub async fn release(self) {
        if let Some(conn) = self.held
            && let Err(e) = conn.close().await
        {
            tracing::debug!(error = %e, "closing the reconciliation lock's connection failed; the server ends it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_concerned_by_its_memberships_and_pim_member_assignments_only() {
        let g = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90";
        let upper = GrantTarget::GroupMember { group_id: g.to_ascii_uppercase() };
        assert!(concerns(&upper, g));
        assert!(concerns(&GrantTarget::PimGroup { group_id: g.into(), access: PimAccess::Member }, g));
        assert!(!concerns(&GrantTarget::PimGroup { group_id: g.into(), access: PimAccess::Owner }, g));
        assert!(!concerns(&GrantTarget::GroupMember { group_id: "5a1c2e3f-7b8d-4e9f-a0b1-c2d3e4f5a6b7".into() }, g));
        let rbac = GrantTarget::AzureRbac { scope: format!("/subscriptions/{g}"), role_definition_id: g.into() };
        assert!(!concerns(&rbac, g));
    }
}
