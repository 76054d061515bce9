//! Events waiting for a decision: leased to one worker at a time, decided outside any transaction, and
//! recorded together with the event's new state.

use std::time::Duration;

use super::{NewGrant, Store, StoreError, WORK_JOBS, notify_replicas, on_pool, parse_event_id};
use crate::domain::EventId;

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
// SKIP LOCKED (PostgreSQL) lets each take a different event without waiting.
const CLAIM_WAITING: &str = "UPDATE events
    SET state = 'deciding', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1
    WHERE id = (SELECT id FROM events WHERE state = 'received' AND next_attempt_at_ms <= $3
                ORDER BY received_at_ms LIMIT 1 {lock})
    RETURNING id, source, body, delivery_id, received_at_ms, attempts";

const CLAIM_ABANDONED: &str = "UPDATE events
    SET state = 'deciding', lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1
    WHERE id = (SELECT id FROM events WHERE state = 'deciding' AND lease_until_ms < $3
                ORDER BY received_at_ms LIMIT 1 {lock})
    RETURNING id, source, body, delivery_id, received_at_ms, attempts";

impl Store {
    /// Leases the oldest event that is waiting (or whose previous lease expired) to `owner`.
    pub async fn claim_event(
        &self,
        owner: &str,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Option<ClaimedEvent>, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut row: Option<ClaimRow> = None;
        for template in [CLAIM_WAITING, CLAIM_ABANDONED] {
            let sql = sqlx::AssertSqlSafe(template.replace("{lock}", self.row_lock()));
            row = on_pool!(
                self,
                background | pool,
                _begin | sqlx::query_as(sql).bind(owner).bind(until).bind(now_ms).fetch_optional(pool).await?
            );
            if row.is_some() {
                break;
            }
        }
        row.map(|(id, source, body, delivery_id, received_at_ms, attempts)| {
            Ok(ClaimedEvent { id: parse_event_id(&id)?, source, body, delivery_id, received_at_ms, attempts })
        })
        .transpose()
    }

    /// Records the decision, the event's final state and the grants the plan asks for with their jobs, in one
    /// transaction, if `owner` still holds the lease. Returns false when the lease was lost (another worker took
    /// the event over): the caller's decision is then discarded. A grant that already exists (same ticket, rule,
    /// target and principal) is not asked for again.
    pub async fn record_decision(
        &self,
        event: EventId,
        owner: &str,
        state: &str,
        decision: &StoredDecision,
        grants: &[NewGrant],
    ) -> Result<bool, StoreError> {
        on_pool!(
            self,
            background | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let updated = sqlx::query(
                    "UPDATE events SET state = $1, lease_owner = NULL, lease_until_ms = NULL
                 WHERE id = $2 AND lease_owner = $3 AND state = 'deciding'",
                )
                .bind(state)
                .bind(event.to_string())
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated != 1 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO decisions (event_id, outcome, code, ticket_key, detail, decided_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(event.to_string())
                .bind(&decision.outcome)
                .bind(&decision.code)
                .bind(&decision.ticket_key)
                .bind(&decision.detail)
                .bind(decision.decided_at_ms)
                .execute(&mut *tx)
                .await?;
                let now = decision.decided_at_ms;
                for g in grants {
                    sqlx::query(
                        "INSERT INTO grants (id, event_id, source, ticket_key, rule, kind, target, label, principal_id,
                         requested_duration_secs, state, created_at_ms, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $11)
                     ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&g.id)
                    .bind(event.to_string())
                    .bind(&g.source)
                    .bind(&g.ticket_key)
                    .bind(&g.rule)
                    .bind(&g.kind)
                    .bind(&g.target)
                    .bind(&g.label)
                    .bind(&g.principal_id)
                    .bind(g.requested_duration_secs)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO jobs (id, grant_id, kind, state, next_attempt_at_ms, created_at_ms, updated_at_ms)
                     VALUES ($1, $2, 'grant', 'queued', $3, $3, $3)
                     ON CONFLICT (grant_id, kind) DO NOTHING",
                    )
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&g.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                if !grants.is_empty() {
                    notify_replicas(self, &mut tx, WORK_JOBS).await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        )
    }

    /// Gives the event back to the queue, to be retried no earlier than `retry_at_ms`.
    pub async fn release_event(&self, event: EventId, owner: &str, retry_at_ms: i64) -> Result<(), StoreError> {
        on_pool!(
            self,
            background | pool,
            _begin
                | {
                    sqlx::query(
                "UPDATE events SET state = 'received', lease_owner = NULL, lease_until_ms = NULL, next_attempt_at_ms = $1
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
