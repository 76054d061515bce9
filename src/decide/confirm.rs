//! Confirmation: the webhook is a hint, not proof. Before any grant, the ticket is read back from the ticketing
//! system and must agree: approved for real, for the same person, for the same request.

use serde_json::{Value, json};

use super::Transient;
use crate::domain::{Approval, ApprovalDecision, PersonRef, Refusal, RefusalCode, TicketEvent};
use crate::inbound::normalize::{Normalized, TicketMapping, normalize};
use crate::itsm::{ItsmApi, JiraClient, ServiceNowClient};
use crate::upstream::UpstreamError;

/// What the ticketing system confirmed.
pub struct Confirmed {
    pub approvals: Vec<Approval>,
    pub detail: String,
}

pub enum Outcome {
    Confirmed(Confirmed),
    Refused(Refusal),
}

const CLOSED_STATES: [&str; 3] = ["3", "4", "7"];

pub async fn confirm(api: &ItsmApi, mapping: &TicketMapping, ticket: &TicketEvent) -> Result<Outcome, Transient> {
    match api {
        ItsmApi::Jira(client) => confirm_jira(client, mapping, ticket).await,
        ItsmApi::ServiceNow(client) => confirm_servicenow(client, mapping, ticket).await,
    }
}

async fn confirm_jira(
    client: &JiraClient,
    mapping: &TicketMapping,
    ticket: &TicketEvent,
) -> Result<Outcome, Transient> {
    let key = &ticket.ticket_key;
    let approvals = match client.approvals(key).await {
        Ok(a) => a,
        Err(e) => return unreachable_or_refused(e, "Jira", "the JSM approvals"),
    };
    if approvals.is_empty() {
        return Ok(refuse(RefusalCode::NotApproved, format!("Jira shows no approval step on {key}")));
    }
    if let Some(a) = approvals.iter().find(|a| a.final_decision != ApprovalDecision::Approved) {
        let state = match a.final_decision {
            ApprovalDecision::Rejected => "declined",
            _ => "still pending",
        };
        return Ok(refuse(
            RefusalCode::NotApproved,
            format!("Jira says the approval `{}` of {key} is {state}", a.name),
        ));
    }
    let issue = match client.issue(key).await {
        Ok(Some(issue)) => issue,
        Ok(None) => return Ok(refuse(RefusalCode::ConfirmationFailed, format!("Jira has no issue {key}"))),
        Err(e) => return unreachable_or_refused(e, "Jira", "the issue"),
    };
    // Read the issue with the same field mapping as the webhook, so that both are compared like for like.
    let synthetic = json!({
        "webhookEvent": "jira:issue_updated",
        "issue": issue,
        "changelog": {"items": [{"field": "status", "toString": issue.pointer("/fields/status/name").cloned().unwrap_or(Value::Null)}]},
    });
    let read_back = match normalize(&ticket.source, mapping, &synthetic.to_string(), None, 0) {
        Normalized::Ticket(t) => t,
        Normalized::Ignored(reason) => {
            return Ok(refuse(
                RefusalCode::ConfirmationFailed,
                format!("Jira's copy of {key} could not be read: {reason}"),
            ));
        }
    };
    if let Some(refusal) = compare(ticket, &read_back.requested_for, &read_back.request_type, "Jira") {
        return Ok(Outcome::Refused(refusal));
    }
    let approvals: Vec<Approval> = approvals.iter().flat_map(|a| a.approvals()).collect();
    let names: Vec<String> = approvals.iter().filter_map(|a| display(&a.approver)).collect();
    Ok(Outcome::Confirmed(Confirmed {
        detail: format!("Jira Service Management shows {key} approved by {}", names.join(", ")),
        approvals,
    }))
}

async fn confirm_servicenow(
    client: &ServiceNowClient,
    mapping: &TicketMapping,
    ticket: &TicketEvent,
) -> Result<Outcome, Transient> {
    let table = ticket.table.as_deref().unwrap_or("sc_req_item");
    // The receiver is read from where the webhook took it: the item's `requested_for`, or the catalog variable
    // the mapping names (`variables.<name>`, its stored value: a sys_user sys_id). The catalog item is compared
    // by name (`cat_item.name`), as the business rule sends its display value.
    let receiver = match mapping.requested_for_field() {
        Some(variable) => format!("variables.{variable}"),
        None => "requested_for".to_string(),
    };
    let fields = ["number", "approval", "state", receiver.as_str(), "cat_item.name"];
    let record = match client.record(table, &ticket.ticket_id, &fields).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let msg = format!("ServiceNow has no {table} record {} ({})", ticket.ticket_id, ticket.ticket_key);
            return Ok(refuse(RefusalCode::ConfirmationFailed, msg));
        }
        Err(e) => return unreachable_or_refused(e, "ServiceNow", "the record"),
    };
    let text = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let key = &ticket.ticket_key;
    if text("number") != *key {
        return Ok(refuse(
            RefusalCode::ConfirmationFailed,
            format!("ServiceNow's record is {}, not {key}", text("number")),
        ));
    }
    if text("approval") != "approved" {
        return Ok(refuse(
            RefusalCode::NotApproved,
            format!("ServiceNow says the approval of {key} is `{}`, not approved", text("approval")),
        ));
    }
    if CLOSED_STATES.contains(&text("state").as_str()) {
        return Ok(refuse(
            RefusalCode::NotApproved,
            format!("{key} is closed in ServiceNow (state {})", text("state")),
        ));
    }
    let requested_for = Some(PersonRef { id: Some(text(&receiver)).filter(|s| !s.is_empty()), ..PersonRef::default() });
    let catalog_item = Some(text("cat_item.name")).filter(|s| !s.is_empty());
    if let Some(refusal) = compare(ticket, &requested_for, &catalog_item, "ServiceNow") {
        return Ok(Outcome::Refused(refusal));
    }
    let approvals = match client.approvals_for(&ticket.ticket_id).await {
        Ok(a) => a,
        Err(e) => return unreachable_or_refused(e, "ServiceNow", "the approval records"),
    };
    Ok(Outcome::Confirmed(Confirmed {
        detail: format!("ServiceNow shows {key} approved ({} approval record(s))", approvals.len()),
        approvals,
    }))
}

/// The webhook and the ticketing system must name the same receiver and, where both say, the same request.
fn compare(
    ticket: &TicketEvent,
    person: &Option<PersonRef>,
    request_type: &Option<String>,
    system: &str,
) -> Option<Refusal> {
    let claimed = ticket.requested_for.as_ref();
    let same = match (claimed, person) {
        (Some(a), Some(b)) => a.same_person(b),
        _ => false,
    };
    if !same {
        let shown = |p: Option<&PersonRef>| p.and_then(display).unwrap_or_else(|| "nobody".into());
        return Some(Refusal::new(
            RefusalCode::ConfirmationFailed,
            format!(
                "the webhook says {} is for {}, but {system} says {}",
                ticket.ticket_key,
                shown(claimed),
                shown(person.as_ref())
            ),
        ));
    }
    if let (Some(a), Some(b)) = (&ticket.request_type, request_type)
        && !a.trim().eq_ignore_ascii_case(b.trim())
    {
        return Some(Refusal::new(
            RefusalCode::ConfirmationFailed,
            format!("the webhook says {} is a `{a}` request, but {system} says `{b}`", ticket.ticket_key),
        ));
    }
    None
}

fn display(p: &PersonRef) -> Option<String> {
    p.name.clone().or_else(|| p.email.clone()).or_else(|| p.id.clone())
}

fn refuse(code: RefusalCode, message: String) -> Outcome {
    Outcome::Refused(Refusal::new(code, message))
}

/// Transient failures are retried later by the worker; anything else (401, 403, 404 on the approvals of an issue
/// that is not a JSM request...) is a refusal that tells the admin what the ticketing system answered.
fn unreachable_or_refused(e: UpstreamError, system: &str, what: &str) -> Result<Outcome, Transient> {
    if e.is_transient() {
        return Err(Transient(format!("{system} did not answer for {what}: {e}")));
    }
    Ok(refuse(RefusalCode::ConfirmationUnavailable, format!("{system} refused to show {what}: {e}")))
}
