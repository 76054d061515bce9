//! A ticket event in one shape, whatever system sent it: what happened to which ticket, for whom, by whom.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::inbound::SourceKind;

/// What the event says happened to the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketAction {
    Approved,
    Rejected,
    Cancelled,
    Closed,
    Reopened,
    /// Anything else (a comment, a field edit, an unmapped status); kept for the record.
    Other(String),
}

impl TicketAction {
    pub fn as_str(&self) -> &str {
        match self {
            TicketAction::Approved => "approved",
            TicketAction::Rejected => "rejected",
            TicketAction::Cancelled => "cancelled",
            TicketAction::Closed => "closed",
            TicketAction::Reopened => "reopened",
            TicketAction::Other(s) => s,
        }
    }
}

/// A person as the ticketing system names them. Which fields are present depends on the system and on
/// the user's privacy settings (Jira often hides e-mail addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PersonRef {
    /// Jira `accountId` or ServiceNow `sys_user.sys_id`.
    pub id: Option<String>,
    pub email: Option<String>,
    /// Jira display name or ServiceNow `user_name`.
    pub name: Option<String>,
}

impl PersonRef {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.email.is_none() && self.name.is_none()
    }

    /// Whether two references certainly denote the same person (same id, or same e-mail ignoring case).
    pub fn same_person(&self, other: &PersonRef) -> bool {
        let same = |a: &Option<String>, b: &Option<String>, fold: bool| match (a, b) {
            (Some(a), Some(b)) if fold => a.eq_ignore_ascii_case(b),
            (Some(a), Some(b)) => a == b,
            _ => false,
        };
        same(&self.id, &other.id, false) || same(&self.email, &other.email, true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approved,
    Rejected,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub approver: PersonRef,
    pub decision: ApprovalDecision,
}

/// One ticket event, normalized. Built from a stored webhook by `normalize`, never from the wire directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketEvent {
    pub source: String,
    pub system: SourceKind,
    /// Jira issue key (`ACCESS-42`) or ServiceNow number (`RITM0010001`).
    pub ticket_key: String,
    /// Jira issue id or ServiceNow `sys_id`.
    pub ticket_id: String,
    /// ServiceNow table (`sc_req_item`); `None` for Jira.
    pub table: Option<String>,
    pub url: Option<String>,
    pub action: TicketAction,
    /// Who receives access.
    pub requested_for: Option<PersonRef>,
    /// Who asked.
    pub requested_by: Option<PersonRef>,
    /// Who decided, as far as the webhook says; confirmed against the ticketing system before any grant.
    pub approvals: Vec<Approval>,
    /// JSM request type name or ServiceNow catalog item name.
    pub request_type: Option<String>,
    /// Ticket fields and catalog variables, as text, by the names the policy uses.
    pub fields: BTreeMap<String, String>,
    pub justification: Option<String>,
    /// A duration the requester asked for, if the ticket carries one.
    #[serde(with = "opt_secs")]
    pub requested_duration: Option<Duration>,
    pub delivery_id: Option<String>,
    pub occurred_at_ms: i64,
}

pub(crate) mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}
