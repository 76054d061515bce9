//! Azure RBAC role assignments through Azure Resource Manager: PUT with a deterministic assignment name, so a retried
//! grant finds its own earlier write; DELETE of the same name to revoke.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::call::{Caller, json_body, object_id};
use super::{GrantOutcome, GrantRequest, ProviderError, upstream_code};
use crate::domain::GrantTarget;
use crate::entra::{ARM_RESOURCE, TokenProvider};
use crate::upstream::{RetryPolicy, UpstreamError};

pub const DEFAULT_ARM_URL: &str = "https://management.azure.com";
pub const ARM_API_VERSION: &str = "2022-04-01";

const UPSTREAM: &str = "arm";

/// ARM's answer (HTTP 409) when the same principal already holds the same role at the same scope under another name.
const EXISTS: &str = "RoleAssignmentExists";

/// The UUIDv5 namespace of grantbridge's role assignment names. Never change it: assignments made before the change
/// would no longer be found by retries and revocations.
pub const ROLE_ASSIGNMENT_NAMESPACE: Uuid = Uuid::from_u128(0x3830_9b83_e6c7_4d03_a94b_744b_372c_5be3);

/// The role assignment name grantbridge uses for `principal_id` holding `role_definition_id` at `scope`:
/// UUIDv5 in [`ROLE_ASSIGNMENT_NAMESPACE`] of `"{scope}|{role_definition_id}|{principal_id}"`, each part trimmed,
/// without a trailing `/`, and lower-cased (ARM compares scopes and GUIDs case-insensitively).
pub fn role_assignment_name(scope: &str, role_definition_id: &str, principal_id: &str) -> Uuid {
    let part = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    let name = format!("{}|{}|{}", part(scope), part(role_definition_id), part(principal_id));
    Uuid::new_v5(&ROLE_ASSIGNMENT_NAMESPACE, name.as_bytes())
}

/// Role assignments with an app-only ARM token.
#[derive(Debug, Clone)]
pub struct AzureRbac {
    /// Shared limits (calls in flight, Graph's write budget) are set on it by [`super::Providers`].
    pub(super) caller: Caller,
    base_url: String,
}

/// One assignment, resolved and checked.
struct Assignment {
    /// `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`: the ARM id, and the URL path.
    id: String,
    role_definition_id: String,
    principal_id: String,
}

impl AzureRbac {
    /// `base_url` is [`DEFAULT_ARM_URL`] (or a fake's URL); the token is always for the ARM resource.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, tokens: Arc<TokenProvider>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        AzureRbac { caller: Caller::new(http, tokens, ARM_RESOURCE, UPSTREAM, "x-ms-client-request-id"), base_url }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.caller.policy = policy;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Creates the assignment. `upstream_id` is its ARM id. The same role held under another name (given by hand,
    /// or by another tool) is `Granted { already }` with no id: that assignment is not ours, and a revoke leaves it.
    pub async fn grant(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        let assignment = assignment(request)?;
        let url = self.url(&assignment);
        let body = json!({ "properties": {
            "roleDefinitionId": assignment.role_definition_id,
            "principalId": assignment.principal_id,
            // Stated, so ARM need not look the principal up (and does not fail on a user created moments ago).
            "principalType": "User",
        }});
        match self.caller.send("put_role_assignment", is_exists, |http| http.put(&url).json(&body)).await {
            Ok(response) => {
                let created = json_body(response).await;
                let id = created.as_ref().and_then(|v| v.get("id")).and_then(Value::as_str).map(str::to_owned);
                Ok(GrantOutcome::Granted { upstream_id: Some(id.unwrap_or(assignment.id)), already: false })
            }
            Err(e) if is_exists(&e) => Ok(GrantOutcome::Granted { upstream_id: None, already: true }),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the assignment grantbridge made: ARM answers 200 with the deleted assignment, or 204 when there is
    /// none (`Revoked { already_gone }`).
    pub async fn revoke(&self, request: &GrantRequest) -> Result<GrantOutcome, ProviderError> {
        let assignment = assignment(request)?;
        let url = self.url(&assignment);
        let response = self.caller.send("delete_role_assignment", |_| false, |http| http.delete(&url)).await?;
        let already_gone = response.status() == StatusCode::NO_CONTENT;
        Ok(GrantOutcome::Revoked { already_gone })
    }

    fn url(&self, assignment: &Assignment) -> String {
        format!("{}{}?api-version={ARM_API_VERSION}", self.base_url, assignment.id)
    }
}

fn assignment(request: &GrantRequest) -> Result<Assignment, ProviderError> {
    let GrantTarget::AzureRbac { scope, role_definition_id } = &request.target else {
        return Err(ProviderError::invalid_input(format!(
            "Azure RBAC does not grant {} targets",
            request.target.kind()
        )));
    };
    let scope = checked_scope(scope)?;
    let role = object_id("role definition id", role_definition_id)?;
    let principal_id = object_id("principal id", &request.principal_id)?;
    let name = role_assignment_name(scope, &role, &principal_id);
    Ok(Assignment {
        id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        role_definition_id: role_definition_path(scope, &role),
        principal_id,
    })
}

/// The role definition's ARM id. Under a subscription it is given at the subscription, as the portal and the Azure
/// CLI send it (valid for built-in roles and for custom roles assignable there); at a management group, at that
/// management group.
fn role_definition_path(scope: &str, role: &str) -> String {
    let mut segments = scope.split('/').skip(1);
    let root = match (segments.next(), segments.next()) {
        (Some(subs), Some(sub)) if subs.eq_ignore_ascii_case("subscriptions") => format!("/subscriptions/{sub}"),
        _ => scope.to_owned(),
    };
    format!("{root}/providers/Microsoft.Authorization/roleDefinitions/{role}")
}

/// The policy validates scopes; this keeps anything that could change the meaning of the URL out all the same.
fn checked_scope(scope: &str) -> Result<&str, ProviderError> {
    let scope = scope.trim().trim_end_matches('/');
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '(' | ')');
    let well_formed = scope.starts_with('/')
        && scope.len() > 1
        && scope.chars().all(allowed)
        && scope.split('/').skip(1).all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if well_formed {
        Ok(scope)
    } else {
        Err(ProviderError::invalid_input(format!("`{scope}` is not an Azure scope this bridge accepts")))
    }
}

fn is_exists(error: &UpstreamError) -> bool {
    error.status() == Some(StatusCode::CONFLICT) && upstream_code(error) == Some(EXISTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const ROLE: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const USER: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";

    #[test]
    fn names_are_stable_and_ignore_case_and_trailing_slashes() {
        let scope = format!("/subscriptions/{SUB}/resourceGroups/rg1");
        let a = role_assignment_name(&scope, ROLE, USER);
        assert_eq!(a.get_version_num(), 5);
        assert_eq!(a, role_assignment_name(&format!("{}/", scope.to_uppercase()), &ROLE.to_uppercase(), USER));
        assert_ne!(a, role_assignment_name(&scope, ROLE, "5d3b5d43-8c3b-4b7e-9a3d-1f0b1c2d3e4f"));
        assert_ne!(a, role_assignment_name(&format!("/subscriptions/{SUB}"), ROLE, USER));
    }

    #[test]
    fn role_definitions_are_named_at_the_subscription_or_management_group() {
        assert_eq!(
            role_definition_path(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), ROLE),
            format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ROLE}")
        );
        assert_eq!(
            role_definition_path("/providers/Microsoft.Management/managementGroups/mg1", ROLE),
            format!(
                "/providers/Microsoft.Management/managementGroups/mg1/providers/Microsoft.Authorization/roleDefinitions/{ROLE}"
            )
        );
    }

    #[test]
    fn scopes_that_could_bend_the_url_are_refused() {
        assert!(checked_scope(&format!("/subscriptions/{SUB}/resourceGroups/rg(1).x")).is_ok());
        for bad in
            ["", "/", "subscriptions/x", "/subscriptions/x/../y", "/subscriptions/x?a=1", "/a//b", "/a b", "/a#b"]
        {
            assert!(checked_scope(bad).is_err(), "{bad}");
        }
    }
}
