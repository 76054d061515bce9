//! `POST /webhooks/{source}`: size limit, source, signature over the raw bytes, parse, durable store, answer.

use std::time::{Instant, SystemTime};

use actix_web::http::header;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::field::Empty;

use super::AppState;
use super::error::ApiError;
use crate::audit::{AuditEntry, AuditKind};
use crate::domain::EventId;
use crate::inbound::schemes::RawRequest;
use crate::inbound::{PayloadError, Source, unix_millis};
use crate::metrics::UNKNOWN_SOURCE;
use crate::store::Inserted;

#[derive(Serialize)]
struct Accepted {
    event_id: EventId,
    status: &'static str,
}

#[tracing::instrument(name = "webhook", skip_all, fields(source = Empty, event_id = Empty, scheme = Empty))]
pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let source = state.sources.get(path.as_str()).cloned();
    let label = source.as_ref().map_or(UNKNOWN_SOURCE, |s| s.name());
    let mut seen = Seen::default();
    let result = handle(&request, payload, source.as_deref(), &state, &mut seen).await;
    let outcome = match &result {
        Ok(Inserted::Accepted(_)) => "accepted",
        Ok(Inserted::Duplicate(_)) => "duplicate",
        Err(e) => e.code(),
    };
    if let (Err(error), Some(source)) = (&result, &source) {
        audit_refusal(&state, &request, source.name(), error, &seen);
    }
    state.metrics.record_request(label, outcome, started.elapsed());
    let (event_id, status) = match result? {
        Inserted::Accepted(id) => (id, "accepted"),
        Inserted::Duplicate(id) => (id, "duplicate"),
    };
    tracing::Span::current().record("event_id", tracing::field::display(event_id));
    tracing::info!(status, "webhook stored");
    Ok(HttpResponse::Accepted().json(Accepted { event_id, status }))
}

/// What the audit entry of a refused delivery may say about it: never the body, only its size and hash.
#[derive(Default)]
struct Seen {
    body_bytes: Option<usize>,
    body_sha256: Option<String>,
    reason: Option<&'static str>,
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    source: Option<&Source>,
    state: &AppState,
    seen: &mut Seen,
) -> Result<Inserted, ApiError> {
    // The size limit comes first: an oversized declared body is refused before anything else is looked at.
    let declared = declared_length(request);
    if declared.is_some_and(|n| n > state.max_body_bytes) {
        return Err(ApiError::PayloadTooLarge { limit: state.max_body_bytes });
    }
    let Some(source) = source else {
        tracing::warn!("webhook for an unknown source");
        return Err(ApiError::UnknownSource);
    };
    tracing::Span::current().record("source", source.name());
    let limit = source.max_body_bytes();
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if !is_json_or_absent(request) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = read_body(payload, limit).await?;
    seen.body_bytes = Some(body.len());

    let now = SystemTime::now();
    let raw = RawRequest {
        method: request.method().as_str(),
        path: request.path(),
        query: request.query_string(),
        headers: request.headers(),
        body: &body,
    };
    let verified = source.verify(raw, now).map_err(|rejection| {
        seen.reason = Some(rejection.reason());
        seen.body_sha256 = Some(hex::encode(Sha256::digest(&body)));
        state.metrics.record_verification_failure(source.name(), rejection.reason());
        tracing::warn!(reason = rejection.reason(), peer = ?request.peer_addr(), "webhook signature refused");
        ApiError::Unauthenticated
    })?;
    tracing::Span::current().record("scheme", verified.scheme().as_str());
    let event = verified.parse(now).map_err(|e| {
        tracing::warn!(error = %e, "verified webhook with an unusable body");
        seen.reason = Some(payload_reason(&e));
        seen.body_sha256 = Some(hex::encode(Sha256::digest(&body)));
        match e {
            PayloadError::BadDeliveryId => ApiError::InvalidDeliveryId,
            other => ApiError::MalformedPayload(other.to_string()),
        }
    })?;
    state.intake.submit(event).await.map_err(|_| ApiError::StoreUnavailable)
}

/// Records a refused delivery for a configured source in the audit trail, without delaying the answer: the
/// entry is offered to the intake writer's audit queue and dropped, counted and logged, when that is full.
/// A store failure is not a refusal of the delivery and is not recorded here.
fn audit_refusal(state: &AppState, request: &HttpRequest, source: &str, error: &ApiError, seen: &Seen) {
    if matches!(error, ApiError::StoreUnavailable) {
        return;
    }
    let mut detail = serde_json::Map::new();
    detail.insert("code".into(), error.code().into());
    if let Some(reason) = seen.reason {
        detail.insert("reason".into(), reason.into());
    }
    if let Some(peer) = request.peer_addr() {
        detail.insert("remote_addr".into(), peer.ip().to_string().into());
    }
    if let Some(bytes) = seen.body_bytes {
        detail.insert("body_bytes".into(), bytes.into());
    }
    if let Some(hash) = &seen.body_sha256 {
        detail.insert("body_sha256".into(), hash.as_str().into());
    }
    let entry = AuditEntry::service(AuditKind::Rejected)
        .at(unix_millis(SystemTime::now()))
        .source(source)
        .detail(detail.into());
    if !state.intake.audit(entry) {
        state.metrics.record_audit_dropped(source, AuditKind::Rejected.as_str());
        tracing::warn!(code = error.code(), "audit queue full: the refused webhook is not in the audit trail");
    }
}

/// A stable label for why a verified body was unusable (the error's text may quote parser details).
fn payload_reason(error: &PayloadError) -> &'static str {
    match error {
        PayloadError::NotUtf8 => "not_utf8",
        PayloadError::NotJson(_) => "not_json",
        PayloadError::NotAnObject => "not_an_object",
        PayloadError::TooDeep => "too_deep",
        PayloadError::BadDeliveryId => "bad_delivery_id",
    }
}

fn declared_length(request: &HttpRequest) -> Option<usize> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Senders that set no Content-Type are accepted (the body must still be JSON); anything else must say JSON.
fn is_json_or_absent(request: &HttpRequest) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else { return true };
    let Ok(value) = value.to_str() else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub(super) async fn read_body(mut payload: web::Payload, limit: usize) -> Result<BytesMut, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::UnreadableBody)?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
