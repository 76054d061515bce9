//! Liveness, readiness and metrics.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the store answers: a replica that cannot store must not receive webhooks.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::NotReady
    })?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "store": state.store.backend() })))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header(ContentType(mime_text_plain_prometheus())).body(state.metrics.render())
}

fn mime_text_plain_prometheus() -> actix_web::mime::Mime {
    "text/plain; version=0.0.4; charset=utf-8".parse().unwrap_or(actix_web::mime::TEXT_PLAIN_UTF_8)
}
