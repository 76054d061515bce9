//! Jira Cloud / Jira Service Management: `jira:issue_updated` with a status change in `changelog.items`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Header, TicketMappingConfig, str_at, text};
use crate::domain::{Approval, ApprovalDecision, PersonRef, TicketAction, TicketEvent};
use crate::inbound::SourceKind;
use crate::policy::parse_duration;

const APPROVED: &[&str] = &["Approved"];
const REJECTED: &[&str] = &["Declined", "Rejected"];
const CANCELLED: &[&str] = &["Canceled", "Cancelled", "Withdrawn"];
const CLOSED: &[&str] = &["Closed", "Done", "Resolved"];
const REOPENED: &[&str] = &["Reopened"];

pub(super) fn normalize(header: &Header<'_>, map: &TicketMappingConfig, body: &Value) -> Result<TicketEvent, String> {
    let event = str_at(body, "/webhookEvent").unwrap_or("(none)");
    if event != "jira:issue_updated" {
        return Err(format!("webhookEvent `{event}` is not an access decision"));
    }
    let issue = body.get("issue").ok_or("the event has no issue")?;
    let key = str_at(issue, "/key").ok_or("the issue has no key")?;
    let id = text(issue.get("id").unwrap_or(&Value::Null)).ok_or("the issue has no id")?;
    let Some(status) = status_change(body) else {
        return Err("no status change in the changelog".to_string());
    };
    let action = action_for(map, &status);
    let fields = issue.get("fields").unwrap_or(&Value::Null);
    let field = |id: &Option<String>| id.as_ref().and_then(|id| fields.get(id.as_str()));

    let request_type = field(&map.request_type_field).and_then(request_type_name);
    let reporter = fields.get("reporter").and_then(person);
    let requested_for = match field(&map.requested_for_field) {
        Some(Value::Array(users)) => users.first().and_then(person),
        Some(user) => person(user),
        None => reporter.clone(),
    };
    let mut approvals = field(&map.approvals_field).map(jsm_approvals).unwrap_or_default();
    if approvals.is_empty()
        && action == TicketAction::Approved
        && let Some(actor) = body.get("user").and_then(person)
    {
        // Without the approvals field, the webhook's actor made the approving transition; the approval is
        // confirmed with the JSM approvals API before anything is granted.
        approvals.push(Approval { approver: actor, decision: ApprovalDecision::Approved });
    }
    let mut mapped = BTreeMap::new();
    for (name, field_id) in &map.fields {
        if let Some(value) = fields.get(field_id.as_str()).and_then(text) {
            mapped.insert(name.clone(), value);
        }
    }
    let requested_duration = field(&map.duration_field).and_then(text).and_then(|t| parse_duration(&t).ok());
    Ok(TicketEvent {
        source: header.source.to_string(),
        system: SourceKind::Jira,
        ticket_key: key.to_string(),
        ticket_id: id,
        table: None,
        url: browse_url(map, issue, key),
        action,
        requested_for,
        requested_by: reporter,
        approvals,
        request_type,
        fields: mapped,
        justification: field(&map.justification_field).and_then(text),
        requested_duration,
        delivery_id: header.delivery_id.map(str::to_string),
        occurred_at_ms: body.get("timestamp").and_then(Value::as_i64).unwrap_or(header.received_at_ms),
    })
}

/// The new status name of the last status item in the changelog.
fn status_change(body: &Value) -> Option<String> {
    body.pointer("/changelog/items")?
        .as_array()?
        .iter()
        .rev()
        .find(|item| item.get("field").and_then(Value::as_str).is_some_and(|f| f.eq_ignore_ascii_case("status")))
        .and_then(|item| str_at(item, "/toString"))
        .map(str::to_string)
}

fn action_for(map: &TicketMappingConfig, status: &str) -> TicketAction {
    let is = |configured: &Option<Vec<String>>, defaults: &[&str]| match configured {
        Some(list) => list.iter().any(|s| s.eq_ignore_ascii_case(status)),
        None => defaults.iter().any(|s| s.eq_ignore_ascii_case(status)),
    };
    if is(&map.approved_statuses, APPROVED) {
        TicketAction::Approved
    } else if is(&map.rejected_statuses, REJECTED) {
        TicketAction::Rejected
    } else if is(&map.cancelled_statuses, CANCELLED) {
        TicketAction::Cancelled
    } else if is(&map.reopened_statuses, REOPENED) {
        TicketAction::Reopened
    } else if is(&map.closed_statuses, CLOSED) {
        TicketAction::Closed
    } else {
        TicketAction::Other(format!("status changed to {status}"))
    }
}

/// The JSM request type field holds `{"requestType": {"name": ...}, ...}`; a plain string is accepted too.
fn request_type_name(value: &Value) -> Option<String> {
    str_at(value, "/requestType/name").map(str::to_string).or_else(|| value.as_str().map(str::to_string))
}

fn person(value: &Value) -> Option<PersonRef> {
    let p = PersonRef {
        id: str_at(value, "/accountId").map(str::to_string),
        email: str_at(value, "/emailAddress").map(str::to_string),
        name: str_at(value, "/displayName").map(str::to_string),
    };
    (!p.is_empty()).then_some(p)
}

/// The sd-approvals field: `[{"finalDecision": "approved", "approvers": [{"approver": {...}, "approverDecision": ...}]}]`.
fn jsm_approvals(value: &Value) -> Vec<Approval> {
    let mut out = Vec::new();
    for approval in value.as_array().into_iter().flatten() {
        for entry in approval.get("approvers").and_then(Value::as_array).into_iter().flatten() {
            let Some(approver) = entry.get("approver").and_then(person) else { continue };
            let decision = match str_at(entry, "/approverDecision") {
                Some(d) if d.eq_ignore_ascii_case("approved") => ApprovalDecision::Approved,
                Some(d) if d.eq_ignore_ascii_case("declined") || d.eq_ignore_ascii_case("rejected") => {
                    ApprovalDecision::Rejected
                }
                _ => ApprovalDecision::Pending,
            };
            out.push(Approval { approver, decision });
        }
    }
    out
}

fn browse_url(map: &TicketMappingConfig, issue: &Value, key: &str) -> Option<String> {
    let base = match &map.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            // `self` is https://site.atlassian.net/rest/api/2/issue/ID: keep scheme and host.
            let own = str_at(issue, "/self")?;
            let after_scheme = own.find("://")? + 3;
            let host_end = own.get(after_scheme..)?.find('/').map_or(own.len(), |i| i + after_scheme);
            own.get(..host_end)?.to_string()
        }
    };
    Some(format!("{base}/browse/{key}"))
}
