//! Privileged Identity Management through Microsoft Graph v1.0: time-bound active assignments to a group (member
//! or owner) or a directory role, each carrying the ticket in `ticketInfo`. Entra ends them itself at expiry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::call::{Caller, json_body, object_id, rfc3339_utc};
use super::{GrantOutcome, GrantRequest, ProviderError, has_status, upstream_code, upstream_message};
use crate::domain::{GrantTarget, PimAccess};
use crate::entra::{GRAPH_RESOURCE, TokenProvider};
use crate::upstream::{RetryPolicy, UpstreamError};

const UPSTREAM: &str = "graph-pim";
const GROUP_REQUESTS: &str = "/identityGovernance/privilegedAccess/group/assignmentScheduleRequests";
const ROLE_REQUESTS: &str = "/roleManagement/directory/roleAssignmentScheduleRequests";
const GROUP_INSTANCES: &str = "/identityGovernance/privilegedAccess/group/assignmentScheduleInstances";
const ROLE_INSTANCES: &str = "/roleManagement/directory/roleAssignmentScheduleInstances";

/// PIM's answer (HTTP 400) to an assignment that is already in place, for groups and roles alike:
/// `{"code":"RoleAssignmentExists","message":"The Role assignment already exists."}`.
const EXISTS: &str = "RoleAssignmentExists";
/// PIM's answer (400, some paths 404) to removing an assignment that is not there.
const DOES_NOT_EXIST: &str = "RoleAssignmentDoesNotExist";

/// PIM assignment requests with an app-only Graph token.
#[derive(Debug, Clone)]
pub struct Pim {
    /// Shared limits (calls in flight, Graph's write budget) are set on it by [`super::Providers`].
    pub(super) caller: Caller,
    base_url: String,
}

#[derive(Clone, Copy)]
enum Action {
    Assign,
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Assign => "adminAssign",
            Action::Remove => "adminRemove",
        }
    }
}

impl Pim {
    /// `base_url` is the Graph v1.0 URL (or a fake's); the token is always for the Graph resource.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, tokens: Arc<TokenProvider>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Pim { caller: Caller::new(http, tokens, GRAPH_RESOURCE, UPSTREAM, "client-request-id"), base_url }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.caller.policy = policy;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// An active assignment for `request.duration` from now (`adminAssign`). `upstream_id` is the id of the
    /// schedule request Graph created. Already assigned: `Granted { already }`; the existing assignment keeps its
    /// own end time.
    pub async fn grant(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        let Some(duration) = request.duration else {
            return Err(ProviderError::permanent(
                "duration_required",
                "a PIM assignment needs a duration, and the grant has none",
            ));
        };
        let duration = iso8601_duration(duration).ok_or_else(|| {
            ProviderError::permanent("duration_required", "a PIM assignment needs a duration of at least one second")
        })?;
        let (path, mut body) = self.request_body(request, Action::Assign)?;
        if let Some(fields) = body.as_object_mut() {
            let schedule = json!({
                "startDateTime": rfc3339_utc(SystemTime::now()),
                "expiration": { "type": "afterDuration", "duration": duration },
            });
            fields.insert("scheduleInfo".to_owned(), schedule);
        }
        match self.post(path, &body).await {
            Ok(created) => {
                let id = created.as_ref().and_then(|v| v.get("id")).and_then(Value::as_str).map(str::to_owned);
                let status = created.as_ref().and_then(|v| v.get("status")).and_then(Value::as_str);
                tracing::info!(request_id = id, status, "PIM assignment requested");
                Ok(GrantOutcome::Granted { upstream_id: id, already: false })
            }
            Err(e) if is_exists(&e) => Ok(GrantOutcome::Granted { upstream_id: None, already: true }),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the active assignment (`adminRemove`). Not assigned: `Revoked { already_gone }`.
    pub async fn revoke(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        let (path, body) = self.request_body(request, Action::Remove)?;
        match self.post(path, &body).await {
            Ok(_) => Ok(GrantOutcome::Revoked { already_gone: false }),
            Err(e) if is_missing(&e) => Ok(GrantOutcome::Revoked { already_gone: true }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the assignment is still in place: PIM's active schedule instances for this principal and target
    /// (`assignmentScheduleInstances`, filtered). Entra ends an assignment at its expiry by itself; this is how
    /// the ledger checks that it did.
    pub async fn is_assigned(&self, request: &GrantRequest) -> Result<bool, ProviderError> {
        let principal = object_id("principal id", &request.principal_id)?;
        let (path, filter) = match &request.target {
            GrantTarget::PimGroup { group_id, access } => (
                GROUP_INSTANCES,
                format!(
                    "groupId eq '{}' and principalId eq '{principal}' and accessId eq '{}'",
                    object_id("group id", group_id)?,
                    match access {
                        PimAccess::Member => "member",
                        PimAccess::Owner => "owner",
                    }
                ),
            ),
            GrantTarget::PimRole { role_definition_id, directory_scope_id } => (
                ROLE_INSTANCES,
                format!(
                    "principalId eq '{principal}' and roleDefinitionId eq '{}' and directoryScopeId eq '{}'",
                    object_id("role definition id", role_definition_id)?,
                    directory_scope_id.replace('\'', "''")
                ),
            ),
            other => return Err(ProviderError::invalid_input(format!("PIM does not grant {} targets", other.kind()))),
        };
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base_url), &[("$filter", filter)])
            .map_err(|e| ProviderError::invalid_input(format!("cannot build the PIM instances URL: {e}")))?;
        let response = self.caller.send("pim_instances", |_| false, |http| http.get(url.clone())).await?;
        let body = json_body(response).await.ok_or_else(|| {
            ProviderError::permanent("invalid_response", "PIM answered the instances query with no JSON")
        })?;
        Ok(body.get("value").and_then(Value::as_array).is_some_and(|v| !v.is_empty()))
    }

    fn request_body(&self, request: &GrantRequest, action: Action) -> Result<(&'static str, Value), ProviderError> {
        let principal_id = object_id("principal id", &request.principal_id)?;
        let justification = if request.justification.trim().is_empty() {
            format!("grantbridge: {} {}", request.ticket_system, request.ticket_number)
        } else {
            request.justification.clone()
        };
        let ticket_info = json!({ "ticketNumber": request.ticket_number, "ticketSystem": request.ticket_system });
        match &request.target {
            GrantTarget::PimGroup { group_id, access } => Ok((
                GROUP_REQUESTS,
                json!({
                    "accessId": match access { PimAccess::Member => "member", PimAccess::Owner => "owner" },
                    "principalId": principal_id,
                    "groupId": object_id("group id", group_id)?,
                    "action": action.as_str(),
                    "justification": justification,
                    "ticketInfo": ticket_info,
                }),
            )),
            GrantTarget::PimRole { role_definition_id, directory_scope_id } => Ok((
                ROLE_REQUESTS,
                json!({
                    "action": action.as_str(),
                    "principalId": principal_id,
                    "roleDefinitionId": object_id("role definition id", role_definition_id)?,
                    "directoryScopeId": directory_scope_id,
                    "justification": justification,
                    "ticketInfo": ticket_info,
                }),
            )),
            other => Err(ProviderError::invalid_input(format!("PIM does not grant {} targets", other.kind()))),
        }
    }

    async fn post(&self, path: &'static str, body: &Value) -> Result<Option<Value>, UpstreamError> {
        let url = format!("{}{path}", self.base_url);
        let expected = |e: &UpstreamError| is_exists(e) || is_missing(e);
        let response = self.caller.write("pim_request", expected, |http| http.post(&url).json(body)).await?;
        Ok(json_body(response).await)
    }
}

fn is_exists(error: &UpstreamError) -> bool {
    error.status() == Some(StatusCode::BAD_REQUEST)
        && (upstream_code(error) == Some(EXISTS) || {
            let message = upstream_message(error).to_ascii_lowercase();
            message.contains("assignment already exists")
        })
}

fn is_missing(error: &UpstreamError) -> bool {
    has_status(error, &[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND])
        && (upstream_code(error) == Some(DOES_NOT_EXIST) || {
            let message = upstream_message(error).to_ascii_lowercase();
            message.contains("assignment does not exist")
        })
}

/// An ISO 8601 duration in hours, minutes and seconds (`PT8H`, `PT1H30M`, `PT45S`); days are given as hours
/// (`PT48H`), which Graph accepts. `None` for less than a second.
pub fn iso8601_duration(duration: Duration) -> Option<String> {
    let secs = duration.as_secs();
    if secs == 0 {
        return None;
    }
    let mut text = String::from("PT");
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if hours > 0 {
        text.push_str(&format!("{hours}H"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}M"));
    }
    if seconds > 0 {
        text.push_str(&format!("{seconds}S"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            (8 * 3600, Some("PT8H")),
            (90 * 60, Some("PT1H30M")),
            (45, Some("PT45S")),
            (3600 + 1, Some("PT1H1S")),
            (2 * 86_400, Some("PT48H")),
            (0, None),
        ];
        for (secs, want) in table {
            assert_eq!(iso8601_duration(Duration::from_secs(secs)).as_deref(), want, "{secs}");
        }
        assert_eq!(iso8601_duration(Duration::from_millis(999)), None);
    }

    #[test]
    fn exists_and_missing_answers() {
        let e = |status: u16, code: &str, message: &str| UpstreamError::Permanent {
            status: StatusCode::from_u16(status).unwrap(),
            code: Some(code.into()),
            message: message.into(),
            request_id: None,
        };
        assert!(is_exists(&e(400, "RoleAssignmentExists", "The Role assignment already exists.")));
        assert!(is_exists(&e(400, "BadRequest", "The role assignment already exists.")));
        assert!(!is_exists(&e(400, "InvalidRoleAssignmentRequest", "The role assignment request is invalid.")));
        assert!(!is_exists(&e(409, "RoleAssignmentExists", "x")));
        assert!(is_missing(&e(400, "RoleAssignmentDoesNotExist", "The Role assignment does not exist.")));
        assert!(is_missing(&e(404, "RoleAssignmentDoesNotExist", "x")));
        assert!(!is_missing(&e(404, "Request_ResourceNotFound", "Resource not found")));
    }
}
