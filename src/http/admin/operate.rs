//! The audit trail as operators read it (`GET /v1/audit`, `GET /v1/audit/head`), and the operator's replay of
//! an event (`POST /v1/events/{id}/replay`).

use std::time::SystemTime;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::params::{Params, encode_audit_cursor};
use super::views::EventView;
use super::{Authorized, Operate, Read, unreadable};
use crate::audit::AuditRecord;
use crate::domain::EventId;
use crate::http::{ApiError, AppState};
use crate::inbound::unix_millis;
use crate::store::{AuditFilter, ReplayBy, Replayed};

#[derive(Serialize)]
struct AuditList {
    /// Each entry as stored, hashes included: a client can check the chain across pages.
    entries: Vec<AuditRecord>,
    next_cursor: Option<String>,
}

const AUDIT_PARAMS: [&str; 10] =
    ["kind", "actor", "source", "ticket", "event_id", "grant_id", "since", "until", "limit", "cursor"];

/// `GET /v1/audit`: entries in sequence order, oldest first.
#[tracing::instrument(name = "admin_audit", skip_all)]
pub async fn list_audit(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &AUDIT_PARAMS)?;
    let filter = AuditFilter {
        kind: params.word("kind")?,
        actor: params.text("actor"),
        source: params.text("source"),
        ticket: params.text("ticket"),
        event_id: params.text("event_id"),
        grant_id: params.text("grant_id"),
        since_ms: params.time("since")?,
        until_ms: params.time("until")?,
    };
    let (limit, after) = (params.limit()?, params.audit_cursor()?);
    let page = state.store.list_audit(&filter, after, limit).await.map_err(unreadable)?;
    Ok(HttpResponse::Ok()
        .json(AuditList { entries: page.entries, next_cursor: page.next_after_seq.map(encode_audit_cursor) }))
}

#[derive(Serialize)]
struct HeadView {
    seq: i64,
    hash: String,
    /// `SEQ:HASH`, what `grantbridge audit verify --expect-head` takes.
    anchor: String,
}

#[derive(Serialize)]
struct AuditHead {
    /// `null` while the trail is empty.
    head: Option<HeadView>,
}

/// `GET /v1/audit/head`: the last entry, to keep outside the database and check a later chain against.
#[tracing::instrument(name = "admin_audit_head", skip_all)]
pub async fn audit_head(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(request.query_string(), &[])?;
    let head = state.store.audit_head().await.map_err(unreadable)?;
    let head = head.map(|h| HeadView { anchor: h.to_string(), seq: h.seq, hash: h.hash });
    Ok(HttpResponse::Ok().json(AuditHead { head }))
}

#[derive(Serialize)]
struct ReplayAnswer {
    event: EventView,
    /// Failed grants of the event whose grant job was queued again.
    rearmed_grants: Vec<String>,
}

/// `POST /v1/events/{id}/replay`: decide the event again and retry its failed grants; see
/// [`crate::store::Store::replay_event`] for what is and is not done again.
#[tracing::instrument(name = "admin_replay", skip_all, fields(event_id = %path.as_str()))]
pub async fn replay(
    auth: Authorized<Operate>,
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(request.query_string(), &[])?;
    let id = EventId::parse(&path).ok_or(ApiError::UnknownEvent)?;
    let operator = &auth.operator;
    let by = ReplayBy { actor: &operator.id, via: operator.via.as_str() };
    let now = unix_millis(SystemTime::now());
    let replayed = state.store.replay_event(id, by, now).await.map_err(|e| {
        tracing::warn!(error = %e, "replay not recorded");
        ApiError::StoreUnavailable
    })?;
    let rearmed = match replayed {
        Replayed::UnknownEvent => return Err(ApiError::UnknownEvent),
        Replayed::BeingDecided => return Err(ApiError::EventBeingDecided),
        Replayed::Queued { rearmed } => rearmed,
    };
    tracing::info!(operator = %operator.id, rearmed = rearmed.len(), "event replayed");
    let work = &state.work;
    work.wake.notify_one();
    if !rearmed.is_empty() {
        work.jobs_wake.notify_one();
        work.jobs_queued.notify_one();
    }
    let record = state.store.event_record(id).await.map_err(unreadable)?.ok_or(ApiError::UnknownEvent)?;
    Ok(HttpResponse::Accepted().json(ReplayAnswer { event: EventView::new(record, None), rearmed_grants: rearmed }))
}
