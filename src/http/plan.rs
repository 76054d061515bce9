//! `POST /v1/plan`: what a ticket payload would cause, without storing or executing anything. Like every
//! admin route it needs a token with the read role: the answer shows the policy and the people it names.

use std::time::SystemTime;

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::AppState;
use super::admin::{Authorized, Read};
use super::error::ApiError;
use super::webhooks::read_body;
use crate::decide::decide_offline;
use crate::inbound::unix_millis;

const PLAN_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    source: String,
    payload: serde_json::Map<String, serde_json::Value>,
    /// Confirm the approval with the ticketing system and look people up in Entra, as a worker would.
    #[serde(default)]
    confirm: bool,
}

#[tracing::instrument(name = "plan", skip_all)]
pub async fn plan(
    _: Authorized<Read>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, PLAN_BODY_LIMIT).await?;
    let parsed: PlanRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedPayload(format!("expected {{\"source\", \"payload\", \"confirm\"}}: {e}")))?;
    let source = state.work.sources.get(&parsed.source).ok_or(ApiError::UnknownSource)?;
    let payload = serde_json::Value::Object(parsed.payload).to_string();
    let now = unix_millis(SystemTime::now());
    let decided = if parsed.confirm {
        state.work.decider.decide(source, &payload, None, now).await.map_err(|e| {
            tracing::warn!(error = %e, "plan: an upstream is unreachable");
            ApiError::UpstreamUnavailable
        })?
    } else {
        decide_offline(&state.work.decider.policy, source, &payload, now)
    };
    Ok(HttpResponse::Ok().json(decided))
}
