//! `POST /v1/plan`: what a ticket payload would cause, without storing or executing anything.
//!
//! Until the authenticated admin API exists it answers loopback peers only, so an operator can use it from
//! the host (or `kubectl port-forward`) but nobody on the network can probe the policy.

use std::time::SystemTime;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::AppState;
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
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !request.peer_addr().is_some_and(|peer| peer.ip().is_loopback()) {
        return Err(ApiError::Forbidden);
    }
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
