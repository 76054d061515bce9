//! `POST /webhooks/{source}`: size limit, source, signature over the raw bytes, parse, durable store, answer.

use std::time::{Instant, SystemTime};

use actix_web::http::header;
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::field::Empty;

use super::AppState;
use super::error::ApiError;
use crate::domain::EventId;
use crate::inbound::schemes::RawRequest;
use crate::inbound::{PayloadError, Source};
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
    let result = handle(&request, payload, source.as_deref(), &state).await;
    let outcome = match &result {
        Ok(Inserted::Accepted(_)) => "accepted",
        Ok(Inserted::Duplicate(_)) => "duplicate",
        Err(e) => e.code(),
    };
    state.metrics.record_request(label, outcome, started.elapsed());
    let (event_id, status) = match result? {
        Inserted::Accepted(id) => (id, "accepted"),
        Inserted::Duplicate(id) => (id, "duplicate"),
    };
    tracing::Span::current().record("event_id", tracing::field::display(event_id));
    tracing::info!(status, "webhook stored");
    Ok(HttpResponse::Accepted().json(Accepted { event_id, status }))
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    source: Option<&Source>,
    state: &AppState,
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

    let now = SystemTime::now();
    let raw = RawRequest {
        method: request.method().as_str(),
        path: request.path(),
        query: request.query_string(),
        headers: request.headers(),
        body: &body,
    };
    let verified = source.verify(raw, now).map_err(|rejection| {
        state.metrics.record_verification_failure(source.name(), rejection.reason());
        tracing::warn!(reason = rejection.reason(), peer = ?request.peer_addr(), "webhook signature refused");
        ApiError::Unauthenticated
    })?;
    tracing::Span::current().record("scheme", verified.scheme().as_str());
    let event = verified.parse(now).map_err(|e| {
        tracing::warn!(error = %e, "verified webhook with an unusable body");
        match e {
            PayloadError::BadDeliveryId => ApiError::InvalidDeliveryId,
            other => ApiError::MalformedPayload(other.to_string()),
        }
    })?;
    state.intake.submit(event).await.map_err(|_| ApiError::StoreUnavailable)
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
