//! How stored rows look in admin API answers. JSON kept as text in the store is returned as JSON.

use serde::Serialize;
use serde_json::Value;

use crate::store::{DeadLetter, EventRecord, EventSummary, GrantRecord, JobRecord, StoredDecision};

/// Stored JSON (a target, a decision, request metadata) as JSON; text that does not parse is returned as a string.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[derive(Serialize)]
pub struct DecisionSummary {
    outcome: String,
    code: Option<String>,
    ticket_key: Option<String>,
    decided_at_ms: i64,
}

#[derive(Serialize)]
pub struct EventListItem {
    id: String,
    source: String,
    delivery_id: Option<String>,
    scheme: String,
    received_at_ms: i64,
    state: String,
    attempts: i64,
    decision: Option<DecisionSummary>,
}

impl From<EventSummary> for EventListItem {
    fn from(e: EventSummary) -> Self {
        let decision = match (e.outcome, e.decided_at_ms) {
            (Some(outcome), Some(decided_at_ms)) => {
                Some(DecisionSummary { outcome, code: e.code, ticket_key: e.ticket_key, decided_at_ms })
            }
            _ => None,
        };
        EventListItem {
            id: e.id,
            source: e.source,
            delivery_id: e.delivery_id,
            scheme: e.scheme,
            received_at_ms: e.received_at_ms,
            state: e.state,
            attempts: e.attempts,
            decision,
        }
    }
}

#[derive(Serialize)]
pub struct EventView {
    id: String,
    source: String,
    delivery_id: Option<String>,
    scheme: String,
    received_at_ms: i64,
    state: String,
    attempts: i64,
    next_attempt_at_ms: i64,
    body_sha256: String,
    meta: Value,
    /// Only with `include=body`, for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

impl EventView {
    pub fn new(e: EventRecord, body: Option<String>) -> Self {
        EventView {
            id: e.id,
            source: e.source,
            delivery_id: e.delivery_id,
            scheme: e.scheme,
            received_at_ms: e.received_at_ms,
            state: e.state,
            attempts: e.attempts,
            next_attempt_at_ms: e.next_attempt_at_ms,
            body_sha256: e.body_sha256,
            meta: json(&e.meta),
            body,
        }
    }
}

#[derive(Serialize)]
pub struct DecisionView {
    outcome: String,
    code: Option<String>,
    ticket_key: Option<String>,
    decided_at_ms: i64,
    /// The whole decision as the workers recorded it: `{"ticket", "decision"}`, as `/v1/plan` answers.
    detail: Value,
}

impl From<StoredDecision> for DecisionView {
    fn from(d: StoredDecision) -> Self {
        DecisionView {
            outcome: d.outcome,
            code: d.code,
            ticket_key: d.ticket_key,
            decided_at_ms: d.decided_at_ms,
            detail: json(&d.detail),
        }
    }
}

#[derive(Serialize)]
pub struct GrantView {
    id: String,
    event_id: String,
    source: String,
    ticket_key: String,
    rule: String,
    kind: String,
    target: Value,
    label: String,
    principal_id: String,
    requested_duration_secs: Option<i64>,
    expires_at_ms: Option<i64>,
    state: String,
    upstream_id: Option<String>,
    last_error: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    ended_reason: Option<String>,
    ended_by: Option<String>,
    ended_at_ms: Option<i64>,
}

impl From<GrantRecord> for GrantView {
    fn from(g: GrantRecord) -> Self {
        GrantView {
            target: json(&g.target),
            id: g.id,
            event_id: g.event_id,
            source: g.source,
            ticket_key: g.ticket_key,
            rule: g.rule,
            kind: g.kind,
            label: g.label,
            principal_id: g.principal_id,
            requested_duration_secs: g.requested_duration_secs,
            expires_at_ms: g.expires_at_ms,
            state: g.state,
            upstream_id: g.upstream_id,
            last_error: g.last_error,
            created_at_ms: g.created_at_ms,
            updated_at_ms: g.updated_at_ms,
            ended_reason: g.ended_reason,
            ended_by: g.ended_by,
            ended_at_ms: g.ended_at_ms,
        }
    }
}

#[derive(Serialize)]
pub struct JobView {
    id: String,
    kind: String,
    state: String,
    attempts: i64,
    next_attempt_at_ms: i64,
    last_error: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            state: j.state,
            attempts: j.attempts,
            next_attempt_at_ms: j.next_attempt_at_ms,
            last_error: j.last_error,
            created_at_ms: j.created_at_ms,
            updated_at_ms: j.updated_at_ms,
        }
    }
}

/// A grant with the jobs that carry it out.
#[derive(Serialize)]
pub struct GrantWithJobs {
    grant: GrantView,
    jobs: Vec<JobView>,
}

impl GrantWithJobs {
    /// Each grant with its own jobs, in the order given.
    pub fn group(grants: Vec<GrantRecord>, jobs: Vec<JobRecord>) -> Vec<GrantWithJobs> {
        let mut jobs = jobs;
        grants
            .into_iter()
            .map(|grant| {
                let (own, rest): (Vec<JobRecord>, Vec<JobRecord>) =
                    jobs.drain(..).partition(|j| j.grant_id == grant.id);
                jobs = rest;
                GrantWithJobs { grant: grant.into(), jobs: own.into_iter().map(JobView::from).collect() }
            })
            .collect()
    }
}

#[derive(Serialize)]
pub struct DeadLetterView {
    job: JobView,
    grant: GrantView,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView { job: d.job.into(), grant: d.grant.into() }
    }
}
