//! Events waiting for a decision: leased to one worker at a time, decided outside any transaction, and
//! recorded together with the event's new state.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::callbacks::enqueue_callbacks;
use super::grants::{GRANT_COLUMNS, GrantRow, grant_from};
use super::{
    AppendAudit, NewCallback, NewGrant, Store, StoreError, WORK_EVENTS, WORK_JOBS, notify_replicas, on_pool,
    parse_event_id,
};
use crate::audit::{AuditEntry, AuditKind, SERVICE_ACTOR};
use crate::domain::EventId;
use crate::inbound::unix_millis;

/// An event leased to a worker for deciding.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub id: EventId,
    pub source: String,
    pub body: String,
    pub delivery_id: Option<String>,
    pub received_at_ms: i64,
    /// How many times it has been claimed, this time included.
    pub attempts: i64,
}

/// A decision as stored: its outcome and code for queries, the whole decision as JSON for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub outcome: String,
    pub code: Option<String>,
    pub ticket_key: Option<String>,
    pub detail: String,
    pub decided_at_ms: i64,
}

type ClaimRow = (String, String, String, Option<String>, i64, i64);
type DecisionRow = (String, Option<String>, Option<String>, String, i64);

// Two claims, each an index range: waiting events first, then abandoned leases. One statement with an OR
// makes both SQLite and PostgreSQL sort the whole backlog on every claim. Several replicas claim concurrently:
// SKIP LOCKED (PostgreSQL) lets each take different events without waiting.
const CLAIM_WAITING: &str = "UPDATE events
    SET state = 'deciding', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1
    WHERE id IN (SELECT id FROM events WHERE state = 'received' AND next_attempt_at_ms <= $3
                 ORDER BY received_at_ms LIMIT $4 {lock})
    RETURNING id, source, body, delivery_id, received_at_ms, attempts";

const CLAIM_ABANDONED: &str = "UPDATE events
    SET state = 'deciding', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1
    WHERE id IN (SELECT id FROM events WHERE state = 'deciding' AND lease_until_ms < $3
                 ORDER BY received_at_ms LIMIT $4 {lock})
    RETURNING id, source, body, delivery_id, received_at_ms, attempts";

/// A decision to record: for which event, the event's new state, the decision, the grants it asks for, and what
/// to post to the ticket now (a refusal, a dry run's plan; a plan to execute is reported when its grants are done).
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub event: EventId,
    pub state: &'static str,
    pub decision: StoredDecision,
    pub grants: Vec<NewGrant>,
    pub callbacks: Vec<NewCallback>,
    /// The event withdrew the ticket's request: its grants from these rules end.
    pub withdraw: Option<Withdrawal>,
}

/// A ticket cancelled, rejected or reopened (per rule `withdraw_on`): the grants it caused end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub source: String,
    pub ticket_key: String,
    /// The ticket action, e.g. `cancelled`.
    pub action: String,
    /// The rules that count this action as a withdrawal.
    pub rules: Vec<String>,
}

impl Store {
    /// Leases the oldest event that is waiting (or whose previous lease expired) to `owner`.
    pub async fn claim_event(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Option<ClaimedEvent>, StoreError> {
        Ok(self.claim_events(owner, now_ms, lease, 1).await?.into_iter().next())
    }

    /// Leases up to `max` of the oldest waiting events to `owner` in one statement, oldest first; when none is
    /// waiting, up to `max` whose previous lease expired.
    pub async fn claim_events(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let max = i64::try_from(max.max(1)).unwrap_or(1);
        let mut rows: Vec<ClaimRow> = Vec::new();
        for template in [CLAIM_WAITING, CLAIM_ABANDONED] {
            let sql = sqlx::AssertSqlSafe(template.replace("{lock}", self.row_lock()));
            rows = on_pool!(
                self,
                background | pool,
                _begin | sqlx::query_as(sql).bind(owner).bind(until).bind(now_ms).bind(max).fetch_all(pool).await?
            );
            if !rows.is_empty() {
                break;
            }
        }
        // RETURNING gives no order; deciding goes oldest first.
        rows.sort_by(|a, b| (a.4, &a.0).cmp(&(b.4, &b.0)));
        rows.into_iter()
            .map(|(id, source, body, delivery_id, received_at_ms, attempts)| {
                Ok(ClaimedEvent { id: parse_event_id(&id)?, source, body, delivery_id, received_at_ms, attempts })
            })
            .collect()
    }

    /// Records the decision, the event's final state and the grants the plan asks for with their jobs, in one
    /// transaction, if `owner` still holds the lease. Returns false when the lease was lost (another worker took
    /// the event over): the caller's decision is then discarded. A grant that already exists (same ticket, rule,
    /// target and principal) is not asked for again.
    pub async fn record_decision(
        &self,
        event: EventId,
        owner: &str,
        state: &'static str,
        decision: &StoredDecision,
        grants: &[NewGrant],
    ) -> Result<bool, StoreError> {
        let record = DecisionRecord {
            event,
            state,
            decision: decision.clone(),
            grants: grants.to_vec(),
            callbacks: Vec::new(),
            withdraw: None,
        };
        let kept = self.record_decisions(std::slice::from_ref(&record), owner).await?;
        Ok(kept.first().copied().unwrap_or(false))
    }

    /// [`Store::record_decision`] for several events in one transaction: one commit for a whole batch. For each
    /// record, whether it was kept (false: the lease was lost and that decision is discarded).
    pub async fn record_decisions(&self, records: &[DecisionRecord], owner: &str) -> Result<Vec<bool>, StoreError> {
        let withdrawable = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE source = $1 AND ticket_key = $2 AND state IN
             ('pending', 'active')"
        );
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let mut kept = Vec::with_capacity(records.len());
                let mut queued_jobs = false;
                let mut audit = Vec::with_capacity(records.len());
                for record in records {
                    let event_id = record.event.to_string();
                    let decision = &record.decision;
                    let source: Option<String> = sqlx::query_scalar(
                        "UPDATE events SET state = $1, lease_owner = NULL, lease_until_ms = NULL
                         WHERE id = $2 AND lease_owner = $3 AND state = 'deciding'
                         RETURNING source",
                    )
                    .bind(record.state)
                    .bind(&event_id)
                    .bind(owner)
                    .fetch_optional(&mut *tx)
                    .await?;
                    kept.push(source.is_some());
                    let Some(source) = source else { continue };
                    audit.push(decision_entry(record, &source));
                    let now = decision.decided_at_ms;
                    // --- lifecycle: withdrawal ends the ticket's grants, shown on the decision ---
                    let mut detail = decision.detail.clone();
                    if let Some(w) = &record.withdraw {
                        let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(withdrawable.clone()))
                            .bind(&w.source)
                            .bind(&w.ticket_key)
                            .fetch_all(&mut *tx)
                            .await?;
                        let reason = format!("withdrawn: {}", w.action);
                        let mut withdrawn = Vec::new();
                        for g in rows.into_iter().map(grant_from).filter(|g| w.rules.contains(&g.rule)) {
                            // Not executed yet: the grant job is cancelled and nothing is asked of Entra.
                            let cancelled = sqlx::query(
                                "UPDATE jobs SET state = 'cancelled', last_error = $1, updated_at_ms = $2
                             WHERE grant_id = $3 AND kind = 'grant' AND state = 'queued'",
                            )
                            .bind(&reason)
                            .bind(now)
                            .bind(&g.id)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            let how = if cancelled == 1 && g.state == "pending" {
                                sqlx::query(
                                    "UPDATE grants SET state = 'revoked', ended_reason = $1, ended_by = $2,
                                 ended_at_ms = $3, updated_at_ms = $3 WHERE id = $4",
                                )
                                .bind(&reason)
                                .bind(SERVICE_ACTOR)
                                .bind(now)
                                .bind(&g.id)
                                .execute(&mut *tx)
                                .await?;
                                audit.push(
                                    AuditEntry::service(AuditKind::Revoked)
                                        .source(g.source.clone())
                                        .ticket(g.ticket_key.clone())
                                        .event(g.event_id.clone())
                                        .grant(g.id.clone())
                                        .detail(serde_json::json!({
                                            "reason": reason, "ended_by": SERVICE_ACTOR, "removed_upstream": false,
                                            "cancelled_before_execution": true,
                                        })),
                                );
                                "cancelled before it was executed"
                            } else {
                                // Executed or executing: a revocation due now (one waiting for the expiry is
                                // brought forward; one already due keeps its reason).
                                sqlx::query(
                                    "INSERT INTO jobs (id, grant_id, kind, state, next_attempt_at_ms, created_at_ms,
                                 updated_at_ms, reason, requested_by)
                                 VALUES ($1, $2, 'revoke', 'queued', $3, $3, $3, $4, $5)
                                 ON CONFLICT (grant_id, kind) DO UPDATE SET
                                 next_attempt_at_ms = excluded.next_attempt_at_ms, reason = excluded.reason,
                                 requested_by = excluded.requested_by, updated_at_ms = excluded.updated_at_ms
                                 WHERE jobs.state = 'queued' AND jobs.next_attempt_at_ms > excluded.next_attempt_at_ms",
                                )
                                .bind(uuid::Uuid::now_v7().to_string())
                                .bind(&g.id)
                                .bind(now)
                                .bind(&reason)
                                .bind(SERVICE_ACTOR)
                                .execute(&mut *tx)
                                .await?;
                                queued_jobs = true;
                                "revocation queued"
                            };
                            withdrawn.push(serde_json::json!({
                                "grant_id": g.id, "label": g.label, "rule": g.rule, "outcome": how,
                            }));
                        }
                        if let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(&detail) {
                            fields.insert(
                                "withdrawn".to_string(),
                                serde_json::json!({ "action": w.action, "grants": withdrawn }),
                            );
                            detail = serde_json::Value::Object(fields).to_string();
                        }
                    }
                    // --- end lifecycle ---
                    // An event decided again (replayed by an operator) replaces its decision.
                    sqlx::query(
                        "INSERT INTO decisions (event_id, outcome, code, ticket_key, detail, decided_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (event_id) DO UPDATE SET outcome = excluded.outcome, code = excluded.code,
                             ticket_key = excluded.ticket_key, detail = excluded.detail,
                             decided_at_ms = excluded.decided_at_ms",
                    )
                    .bind(&event_id)
                    .bind(&decision.outcome)
                    .bind(&decision.code)
                    .bind(&decision.ticket_key)
                    .bind(&detail)
                    .bind(decision.decided_at_ms)
                    .execute(&mut *tx)
                    .await?;
                    for g in &record.grants {
                        sqlx::query(
                            "INSERT INTO grants (id, event_id, source, ticket_key, rule, kind, target, label,
                             principal_id, requested_duration_secs, state, created_at_ms,
                             updated_at_ms, notify_before_secs)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $11, $12)
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(&g.id)
                        .bind(&event_id)
                        .bind(&g.source)
                        .bind(&g.ticket_key)
                        .bind(&g.rule)
                        .bind(&g.kind)
                        .bind(&g.target)
                        .bind(&g.label)
                        .bind(&g.principal_id)
                        .bind(g.requested_duration_secs)
                        .bind(now)
                        .bind(g.notify_before_secs)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO jobs (id, grant_id, kind, state, next_attempt_at_ms, created_at_ms,
                             updated_at_ms, batch_key)
                             VALUES ($1, $2, 'grant', 'queued', $3, $3, $3, $4)
                             ON CONFLICT (grant_id, kind) DO NOTHING",
                        )
                        .bind(uuid::Uuid::now_v7().to_string())
                        .bind(&g.id)
                        .bind(now)
                        .bind(&g.batch_key)
                        .execute(&mut *tx)
                        .await?;
                        queued_jobs = true;
                    }
                }
                for (record, kept) in records.iter().zip(&kept) {
                    if *kept && !record.callbacks.is_empty() {
                        enqueue_callbacks(self, &mut tx, &record.callbacks, record.decision.decided_at_ms).await?;
                    }
                }
                if queued_jobs {
                    notify_replicas(self, &mut tx, WORK_JOBS).await?;
                }
                tx.append_audit(unix_millis(SystemTime::now()), &audit).await?;
                tx.commit().await?;
                Ok(kept)
            }
        )
    }

    /// Gives the event back to the queue, to be retried no earlier than `retry_at_ms`.
    pub async fn release_event(&self, event: EventId, owner: &str, retry_at_ms: i64) -> Result<(), StoreError> {
        on_pool!(
            self,
            background | pool,
            _begin | {
                sqlx::query(
                    "UPDATE events SET state = 'received', lease_owner = NULL, lease_until_ms = NULL,
                     next_attempt_at_ms = $1
                     WHERE id = $2 AND lease_owner = $3",
                )
                .bind(retry_at_ms)
                .bind(event.to_string())
                .bind(owner)
                .execute(pool)
                .await?;
                Ok(())
            }
        )
    }

    pub async fn decision(&self, event: EventId) -> Result<Option<StoredDecision>, StoreError> {
        let row: Option<DecisionRow> = on_pool!(self, |pool, _begin| {
            sqlx::query_as("SELECT outcome, code, ticket_key, detail, decided_at_ms FROM decisions WHERE event_id = $1")
                .bind(event.to_string())
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(outcome, code, ticket_key, detail, decided_at_ms)| StoredDecision {
            outcome,
            code,
            ticket_key,
            detail,
            decided_at_ms,
        }))
    }
}

/// The audit entry of a recorded decision: its outcome and code and, for a plan, the grants it asks for (never
/// the refusal's sentence or anything else the ticket said).
fn decision_entry(record: &DecisionRecord, source: &str) -> AuditEntry {
    let decision = &record.decision;
    let kind = if decision.outcome == "refused" { AuditKind::Refused } else { AuditKind::Decided };
    let grants: Vec<Value> = record
        .grants
        .iter()
        .map(|g| {
            let mut grant = json!({
                "id": g.id,
                "kind": g.kind,
                "rule": g.rule,
                "target": serde_json::from_str::<Value>(&g.target).unwrap_or_else(|_| Value::String(g.target.clone())),
                "principal_id": g.principal_id,
            });
            if let Some(secs) = g.requested_duration_secs {
                grant["duration_secs"] = json!(secs);
            }
            grant
        })
        .collect();
    let mut detail = json!({ "outcome": decision.outcome, "state": record.state, "grants": grants });
    if let Some(code) = &decision.code {
        detail["code"] = json!(code);
    }
    let dry_run = serde_json::from_str::<Value>(&decision.detail).ok().and_then(|d| d["decision"]["dry_run"].as_bool());
    if let Some(dry_run) = dry_run {
        detail["dry_run"] = json!(dry_run);
    }
    let entry = AuditEntry::service(kind).at(decision.decided_at_ms).source(source).event(record.event).detail(detail);
    match &decision.ticket_key {
        Some(ticket) => entry.ticket(ticket.as_str()),
        None => entry,
    }
}

/// What an operator's replay of an event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Queued to be decided again now. `rearmed`: the event's failed grants whose grant job is queued again.
    Queued {
        rearmed: Vec<String>,
    },
    UnknownEvent,
    /// A worker holds the event's lease: it is being decided at this moment.
    BeingDecided,
}

/// Who asks for a replay, as the admin API authenticated them.
#[derive(Debug, Clone, Copy)]
pub struct ReplayBy<'a> {
    pub actor: &'a str,
    /// How they authenticated (`entra`, `static_token`).
    pub via: &'a str,
}

impl Store {
    /// Puts an event back to be decided (at once, its attempts counted from zero) and re-arms its failed grants:
    /// their dead grant job is queued again with its attempts reset, so that a grant that failed on a
    /// misconfiguration since fixed is tried again. Everything else is left as it is: deciding again replaces
    /// the decision, but a grant that exists keeps its state and job (an active grant is not written upstream
    /// again, a revoked or expired one is never granted again), and a callback already enqueued is not enqueued
    /// again (its id is derived from the outcome). Recorded in the audit trail with who asked, in the same
    /// transaction.
    pub async fn replay_event(&self, event: EventId, by: ReplayBy<'_>, now_ms: i64) -> Result<Replayed, StoreError> {
        let lock = match self {
            Store::Postgres(_) => " FOR UPDATE",
            Store::Sqlite(_) => "",
        };
        let select =
            sqlx::AssertSqlSafe(format!("SELECT state, lease_until_ms, source FROM events WHERE id = $1{lock}"));
        let event_id = event.to_string();
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let row: Option<(String, Option<i64>, String)> =
                    sqlx::query_as(select).bind(&event_id).fetch_optional(&mut *tx).await?;
                let Some((previous, lease_until, source)) = row else {
                    return Ok(Replayed::UnknownEvent);
                };
                if previous == "deciding" && lease_until.is_some_and(|until| until >= now_ms) {
                    return Ok(Replayed::BeingDecided);
                }
                sqlx::query(
                    "UPDATE events SET state = 'received', lease_owner = NULL, lease_until_ms = NULL,
                     next_attempt_at_ms = $1, attempts = 0
                     WHERE id = $2",
                )
                .bind(now_ms)
                .bind(&event_id)
                .execute(&mut *tx)
                .await?;
                let failed: Vec<String> = sqlx::query_scalar(
                    "SELECT g.id FROM grants g JOIN jobs j ON j.grant_id = g.id
                     WHERE g.event_id = $1 AND g.state = 'failed' AND j.kind = 'grant' AND j.state = 'dead'
                     ORDER BY g.id",
                )
                .bind(&event_id)
                .fetch_all(&mut *tx)
                .await?;
                for grant in &failed {
                    sqlx::query(
                        "UPDATE jobs SET state = 'queued', attempts = 0, next_attempt_at_ms = $1, lease_owner = NULL,
                         lease_until_ms = NULL, updated_at_ms = $1
                         WHERE grant_id = $2 AND kind = 'grant' AND state = 'dead'",
                    )
                    .bind(now_ms)
                    .bind(grant)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE grants SET state = 'pending', updated_at_ms = $1 WHERE id = $2 AND state = 'failed'",
                    )
                    .bind(now_ms)
                    .bind(grant)
                    .execute(&mut *tx)
                    .await?;
                }
                let ticket: Option<Option<String>> =
                    sqlx::query_scalar("SELECT ticket_key FROM decisions WHERE event_id = $1")
                        .bind(&event_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                notify_replicas(self, &mut tx, WORK_EVENTS).await?;
                if !failed.is_empty() {
                    notify_replicas(self, &mut tx, WORK_JOBS).await?;
                }
                let mut entry = AuditEntry::operator(AuditKind::OperatorAction, by.actor)
                    .at(now_ms)
                    .source(source)
                    .event(event)
                    .detail(json!({
                        "action": "replay",
                        "via": by.via,
                        "previous_state": previous,
                        "rearmed_grants": failed,
                    }));
                if let Some(ticket) = ticket.flatten() {
                    entry = entry.ticket(ticket);
                }
                tx.append_audit(now_ms, &[entry]).await?;
                tx.commit().await?;
                Ok(Replayed::Queued { rearmed: failed })
            }
        )
    }
}
