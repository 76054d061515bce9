//! Grant executors: one client per upstream (Graph groups, PIM, Azure RBAC) behind one request and outcome shape,
//! and [`Providers`], which sends a grant or a revoke to the client its target kind belongs to.
//!
//! Every grant is idempotent: "already there" and "already gone" are successes, so a retried job never fails on the
//! work an earlier attempt did. Which failures are worth retrying is decided by the upstream module's table.

mod azure_rbac;
mod call;
mod graph_groups;
mod pim;

use std::time::Duration;

use reqwest::StatusCode;

pub use azure_rbac::{ARM_API_VERSION, AzureRbac, DEFAULT_ARM_URL, ROLE_ASSIGNMENT_NAMESPACE, role_assignment_name};
pub use graph_groups::{DEFAULT_GROUP_CACHE_TTL, GROUP_SELECT, GraphGroups, MAX_MEMBERS_PER_PATCH, MEMBERS_PAGE_SIZE};
pub use pim::{Pim, iso8601_duration};

use crate::domain::GrantTarget;
use crate::entra::Entra;
use crate::upstream::UpstreamError;

/// One grant (or its revocation) to execute: what, for whom, how long, and the ticket it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub target: GrantTarget,
    /// The Entra object id of the principal who receives the access.
    pub principal_id: String,
    /// `None`: until revoked. PIM needs one; group membership and Azure RBAC are revoked by the lifecycle instead.
    pub duration: Option<Duration>,
    /// E.g. `RITM0010001` or `ITSM-42`; PIM records it as `ticketInfo.ticketNumber`.
    pub ticket_number: String,
    /// E.g. `ServiceNow` or `Jira`; PIM records it as `ticketInfo.ticketSystem`.
    pub ticket_system: String,
    pub justification: String,
}

/// What the upstream now holds. "Already" answers are successes: the access is there (or gone) as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// `upstream_id`: the PIM request id or the Azure role assignment id, when the upstream gave one.
    Granted {
        upstream_id: Option<String>,
        already: bool,
    },
    Revoked {
        already_gone: bool,
    },
}

/// Why a grant or revoke did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The upstream was throttled, down or unreachable through every attempt: run the job again later.
    #[error("temporarily unavailable, try again later: {detail}")]
    Retryable { after: Option<Duration>, detail: String },
    /// The upstream refused in a way that retrying cannot change. `code` is stable: one of ours (`not_found`,
    /// `forbidden`, `duration_required`, `invalid_input`, `invalid_response`, `transport`), else the upstream's
    /// error code (e.g. `Request_BadRequest`, `AADSTS7000215`), else `http_<status>`.
    #[error("{code}: {detail}")]
    Permanent { code: String, detail: String },
    /// The target cannot be changed this way at all (a dynamic or on-premises-synced group): never retried, and
    /// `reason` is written for the ticket.
    #[error("refused: {reason}")]
    Refused { reason: String },
}

impl ProviderError {
    /// A stable machine code: `retryable`, `refused`, or the permanent error's code.
    pub fn code(&self) -> &str {
        match self {
            ProviderError::Retryable { .. } => "retryable",
            ProviderError::Permanent { code, .. } => code,
            ProviderError::Refused { .. } => "refused",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Retryable { .. })
    }

    pub(crate) fn permanent(code: &str, detail: impl Into<String>) -> Self {
        ProviderError::Permanent { code: code.to_owned(), detail: detail.into() }
    }

    pub(crate) fn invalid_input(detail: impl Into<String>) -> Self {
        ProviderError::permanent("invalid_input", detail)
    }
}

impl From<UpstreamError> for ProviderError {
    fn from(error: UpstreamError) -> Self {
        let detail = error.to_string();
        match error {
            // The job is retried no earlier than the upstream asked; without a word from it, on the job's schedule.
            UpstreamError::Exhausted { retry_after, .. } => ProviderError::Retryable { after: retry_after, detail },
            UpstreamError::Permanent { status, code, .. } => {
                let code = code.unwrap_or_else(|| format!("http_{}", status.as_u16()));
                ProviderError::Permanent { code, detail }
            }
            UpstreamError::Transport(_) => ProviderError::permanent("transport", detail),
            UpstreamError::InvalidResponse(_) => ProviderError::permanent("invalid_response", detail),
            UpstreamError::InvalidInput(_) => ProviderError::permanent("invalid_input", detail),
        }
    }
}

/// The three executors, and which one a target kind goes to.
#[derive(Debug, Clone)]
pub struct Providers {
    pub groups: GraphGroups,
    pub pim: Pim,
    pub rbac: AzureRbac,
}

impl Providers {
    pub fn new(groups: GraphGroups, pim: Pim, rbac: AzureRbac) -> Self {
        Providers { groups, pim, rbac }
    }

    /// The executors for the configured tenant: Graph where the directory reads go, ARM at `arm_url`
    /// ([`DEFAULT_ARM_URL`] outside tests), one token cache for both.
    pub fn from_entra(entra: &Entra, arm_url: impl Into<String>) -> Self {
        let graph_url = entra.directory.base_url().to_owned();
        Providers::new(
            GraphGroups::new(entra.http.clone(), graph_url.clone(), entra.tokens.clone()),
            Pim::new(entra.http.clone(), graph_url, entra.tokens.clone()),
            AzureRbac::new(entra.http.clone(), arm_url, entra.tokens.clone()),
        )
    }

    /// At most `graph` calls in flight to Microsoft Graph and `arm` to Azure Resource Manager, whatever the number
    /// of executors.
    pub fn with_concurrency(mut self, graph: usize, arm: usize) -> Self {
        let graph = std::sync::Arc::new(tokio::sync::Semaphore::new(graph.max(1)));
        self.groups.caller.limit = Some(graph.clone());
        self.pim.caller.limit = Some(graph);
        self.rbac.caller.limit = Some(std::sync::Arc::new(tokio::sync::Semaphore::new(arm.max(1))));
        self
    }

    /// Paces Microsoft Graph writes (group membership and PIM requests) to `writes` per `window`, the tenant's
    /// documented write budget for the app, instead of learning it from 429s.
    pub fn with_graph_write_budget(mut self, writes: u32, window: Duration) -> Self {
        let budget = std::sync::Arc::new(crate::upstream::WriteBudget::new(writes, window));
        self.groups.caller.budget = Some(budget.clone());
        self.pim.caller.budget = Some(budget);
        self
    }

    #[tracing::instrument(name = "grant", skip_all, fields(kind = request.target.kind(), ticket = %request.ticket_number, principal = %request.principal_id))]
    pub async fn grant(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        match &request.target {
            GrantTarget::GroupMember { group_id } => self.groups.add(group_id, &request.principal_id).await,
            GrantTarget::PimGroup { group_id, .. } => {
                // PIM for Groups cannot manage dynamic or on-premises-synced groups either; say so before writing.
                self.groups.writable_group(group_id).await?;
                self.pim.grant(request).await
            }
            GrantTarget::PimRole { .. } => self.pim.grant(request).await,
            GrantTarget::AzureRbac { .. } => self.rbac.grant(request).await,
        }
    }

    #[tracing::instrument(name = "revoke", skip_all, fields(kind = request.target.kind(), ticket = %request.ticket_number, principal = %request.principal_id))]
    pub async fn revoke(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        match &request.target {
            GrantTarget::GroupMember { group_id } => self.groups.remove(group_id, &request.principal_id).await,
            GrantTarget::PimGroup { .. } | GrantTarget::PimRole { .. } => self.pim.revoke(request).await,
            GrantTarget::AzureRbac { .. } => self.rbac.revoke(request).await,
        }
    }
}

/// The Graph / ARM error code of a permanent refusal, if it had one.
pub(crate) fn upstream_code(error: &UpstreamError) -> Option<&str> {
    match error {
        UpstreamError::Permanent { code, .. } => code.as_deref(),
        _ => None,
    }
}

pub(crate) fn upstream_message(error: &UpstreamError) -> &str {
    match error {
        UpstreamError::Permanent { message, .. } => message,
        _ => "",
    }
}

pub(crate) fn has_status(error: &UpstreamError, statuses: &[StatusCode]) -> bool {
    error.status().is_some_and(|s| statuses.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_become_provider_errors() {
        let exhausted = UpstreamError::Exhausted { attempts: 3, last: "status 503".into(), retry_after: None };
        let e = ProviderError::from(exhausted);
        assert!(e.is_retryable());
        assert_eq!(e.code(), "retryable");

        let refused = UpstreamError::Permanent {
            status: StatusCode::FORBIDDEN,
            code: Some("Authorization_RequestDenied".into()),
            message: "Insufficient privileges to complete the operation.".into(),
            request_id: Some("r-1".into()),
        };
        let e = ProviderError::from(refused);
        assert_eq!(e.code(), "Authorization_RequestDenied");
        assert!(e.to_string().contains("request-id r-1"), "{e}");

        let bare = UpstreamError::Permanent {
            status: StatusCode::CONFLICT,
            code: None,
            message: "Conflict".into(),
            request_id: None,
        };
        assert_eq!(ProviderError::from(bare).code(), "http_409");
        assert_eq!(ProviderError::from(UpstreamError::Transport("x".into())).code(), "transport");
        assert_eq!(ProviderError::from(UpstreamError::InvalidInput("x".into())).code(), "invalid_input");
        assert_eq!(ProviderError::from(UpstreamError::InvalidResponse("x".into())).code(), "invalid_response");
        assert_eq!(ProviderError::Refused { reason: "dynamic".into() }.code(), "refused");
    }
}
