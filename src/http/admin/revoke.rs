//! `POST /v1/grants/{id}/revoke`: an operator takes an active grant away. The revocation is queued as a job (the
//! same path as expiry and withdrawal, so shared access and the ticket comment behave alike) and the operator's
//! action is audited in the same transaction. Idempotent: a grant already ended or being revoked is left as it is.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::views::GrantView;
use super::{Authorized, Operate, unreadable};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::webhooks::read_body;
use crate::store::OperatorRevoke;

/// The longest reason accepted, in characters: a sentence for the ticket and the audit trail.
pub const MAX_REASON_CHARS: usize = 500;
const BODY_LIMIT: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}

#[derive(Serialize)]
struct RevokeResponse {
    grant: GrantView,
    /// `queued`: the revocation is due now; `unchanged`: already ended or being revoked.
    revocation: &'static str,
}

#[tracing::instrument(name = "admin_revoke", skip_all, fields(grant = %path.as_str()))]
pub(super) async fn revoke(
    auth: Authorized<Operate>,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, BODY_LIMIT).await.map_err(|_| {
        ApiError::InvalidBody(format!("the body must be JSON {{\"reason\": \"...\"}} of at most {BODY_LIMIT} bytes"))
    })?;
    let request: RevokeRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidBody(format!("expected {{\"reason\": \"...\"}}: {e}")))?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::InvalidBody("`reason` must say why the access is revoked".into()));
    }
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(ApiError::InvalidBody(format!("`reason` is one line of at most {MAX_REASON_CHARS} characters")));
    }
    let now = state.work.clock.now_ms();
    let done = state.store.revoke_by_operator(&path, &auth.operator.id, reason, now).await.map_err(unreadable)?;
    match done {
        OperatorRevoke::UnknownGrant => Err(ApiError::UnknownGrant),
        OperatorRevoke::NotActive(grant) => Err(ApiError::GrantNotActive(grant.state)),
        OperatorRevoke::Already(grant) => {
            Ok(HttpResponse::Ok().json(RevokeResponse { grant: grant.into(), revocation: "unchanged" }))
        }
        OperatorRevoke::Queued(grant) => {
            tracing::info!(operator = %auth.operator.id, grant = %grant.id, ticket = %grant.ticket_key, "revocation queued by an operator");
            state.work.jobs_wake.notify_one();
            Ok(HttpResponse::Accepted().json(RevokeResponse { grant: grant.into(), revocation: "queued" }))
        }
    }
}
