//! The outcome of a decision: a plan of grants, a refusal with a reason, or an event that is not a decision.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What access a grant gives. Every target comes from the policy file, never from a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrantTarget {
    /// Entra group membership through Microsoft Graph.
    GroupMember { group_id: String },
    /// PIM for Groups: a time-bound member or owner assignment.
    PimGroup { group_id: String, access: PimAccess },
    /// PIM for Entra directory roles.
    PimRole { role_definition_id: String, directory_scope_id: String },
    /// Azure RBAC role assignment at a scope.
    AzureRbac { scope: String, role_definition_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PimAccess {
    Member,
    Owner,
}

impl GrantTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            GrantTarget::GroupMember { .. } => "group_member",
            GrantTarget::PimGroup { .. } => "pim_group",
            GrantTarget::PimRole { .. } => "pim_role",
            GrantTarget::AzureRbac { .. } => "azure_rbac",
        }
    }
}

impl PlannedGrant {
    /// The grant's identity: the same ticket, rule, target and principal always give the same id, so a replayed
    /// event or a duplicate job cannot ask for a second grant.
    pub fn grant_id(&self, source: &str, ticket_key: &str, principal_id: &str) -> String {
        let target = serde_json::to_string(&self.target).unwrap_or_default();
        let name = format!("{source}\n{ticket_key}\n{}\n{target}\n{principal_id}", self.rule);
        uuid::Uuid::new_v5(&GRANT_NAMESPACE, name.as_bytes()).to_string()
    }
}

/// Namespace of grant ids (UUIDv5); fixed forever, or ids change across versions.
const GRANT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1f_3c2e_9b4d_4e7a_8f10_2c5b_7d9e_0a13);

/// Who receives access, resolved to an Entra object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub object_id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedGrant {
    pub rule: String,
    pub target: GrantTarget,
    /// The name the policy gives the target, for people reading the plan.
    pub label: String,
    /// `None`: permanent until revoked.
    #[serde(with = "super::ticket::opt_secs", rename = "duration_secs")]
    pub duration: Option<Duration>,
    /// Why this grant is in the plan, and any adjustment made (e.g. a duration capped to the rule's maximum).
    pub reasons: Vec<String>,
}

/// How the approval was confirmed with the ticketing system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Confirmation {
    /// Read back from the ticketing system and found to agree with the webhook.
    Confirmed { detail: String },
    /// Confirmation is off for this source, or no API credentials are configured: the webhook alone was trusted.
    NotConfigured,
    /// Offline planning (`grantbridge plan` without `--confirm`): not attempted.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub ticket_key: String,
    pub principal: Option<Principal>,
    pub grants: Vec<PlannedGrant>,
    /// Recorded and posted, not executed.
    pub dry_run: bool,
    pub confirmation: Confirmation,
    /// `first_match` or `all_matches`, and which rules matched.
    pub mode: String,
    pub matched_rules: Vec<String>,
    pub notes: Vec<String>,
}

/// Why no grant follows. The code is stable (dashboards, ticket templates); the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    NoMatchingRule,
    NotApproved,
    ConfirmationFailed,
    ConfirmationUnavailable,
    NotEnoughApprovals,
    SelfApproval,
    ApproverNotAuthorized,
    JustificationMissing,
    RequestedForMissing,
    PrincipalNotFound,
    InvalidFieldValue,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NoMatchingRule => "no_matching_rule",
            RefusalCode::NotApproved => "not_approved",
            RefusalCode::ConfirmationFailed => "confirmation_failed",
            RefusalCode::ConfirmationUnavailable => "confirmation_unavailable",
            RefusalCode::NotEnoughApprovals => "not_enough_approvals",
            RefusalCode::SelfApproval => "self_approval",
            RefusalCode::ApproverNotAuthorized => "approver_not_authorized",
            RefusalCode::JustificationMissing => "justification_missing",
            RefusalCode::RequestedForMissing => "requested_for_missing",
            RefusalCode::PrincipalNotFound => "principal_not_found",
            RefusalCode::InvalidFieldValue => "invalid_field_value",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    /// The rule whose requirement failed, when one did.
    pub rule: Option<String>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into(), rule: None }
    }

    pub fn in_rule(mut self, rule: &str) -> Self {
        self.rule = Some(rule.to_string());
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// What grantbridge decided about one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    Plan(Plan),
    Refused(Refusal),
    /// Not an access decision (a comment, an unrelated status change): recorded with the reason.
    Ignored {
        reason: String,
    },
}

impl Decision {
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Plan(_) => "plan",
            Decision::Refused(_) => "refused",
            Decision::Ignored { .. } => "ignored",
        }
    }
}
