//! ServiceNow: requested items (`sc_req_item`) and approval records (`sysapproval_approver`) as the business
//! rule in `examples/servicenow/` sends them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Header, TicketMappingConfig, str_at, text};
use crate::domain::{Approval, ApprovalDecision, PersonRef, TicketAction, TicketEvent};
use crate::inbound::SourceKind;
use crate::policy::parse_duration;

pub(super) fn normalize(header: &Header<'_>, map: &TicketMappingConfig, body: &Value) -> Result<TicketEvent, String> {
    match str_at(body, "/table").unwrap_or("sc_req_item") {
        "sc_req_item" => requested_item(header, map, body),
        "sysapproval_approver" => approval_record(header, map, body),
        other => Err(format!("records of table `{other}` are not access decisions")),
    }
}

fn requested_item(header: &Header<'_>, map: &TicketMappingConfig, body: &Value) -> Result<TicketEvent, String> {
    let sys_id = str_at(body, "/sys_id").ok_or("the record has no sys_id")?;
    let number = str_at(body, "/number").ok_or("the record has no number")?;
    let approval = str_at(body, "/approval").unwrap_or("");
    let state = body.get("state").and_then(text).unwrap_or_default();
    // A closed item is closed whatever its approval says; an open one is decided by its approval.
    let action = match (state.as_str(), approval) {
        ("3", _) => TicketAction::Closed,
        ("4" | "7", _) => TicketAction::Cancelled,
        (_, "approved") => TicketAction::Approved,
        (_, "rejected") => TicketAction::Rejected,
        (_, other) => TicketAction::Other(format!("approval is `{other}`")),
    };
    let variables = body.get("variables").and_then(Value::as_object);
    let variable = |name: &Option<String>| name.as_ref().and_then(|n| variables?.get(n.as_str())).and_then(text);
    let requested_for = match &map.requested_for_field {
        Some(name) => variables.and_then(|v| v.get(name.as_str())).and_then(person),
        None => body.get("requested_for").and_then(person),
    };
    let mut fields = BTreeMap::new();
    for (name, value) in variables.into_iter().flatten() {
        if let Some(value) = text(value) {
            fields.insert(name.clone(), value);
        }
    }
    for (policy_name, variable_name) in &map.fields {
        if let Some(value) = variables.and_then(|v| v.get(variable_name.as_str())).and_then(text) {
            fields.insert(policy_name.clone(), value);
        }
    }
    let justification = variable(&map.justification_field.clone().or(Some("justification".into())));
    let requested_duration = variable(&map.duration_field).and_then(|t| parse_duration(&t).ok());
    Ok(TicketEvent {
        source: header.source.to_string(),
        system: SourceKind::Servicenow,
        ticket_key: number.to_string(),
        ticket_id: sys_id.to_string(),
        table: Some("sc_req_item".into()),
        url: record_url(map, "sc_req_item", sys_id),
        action,
        requested_for,
        requested_by: body.get("opened_by").and_then(person),
        approvals: approvers(body),
        request_type: body.get("cat_item").and_then(text),
        fields,
        justification,
        requested_duration,
        delivery_id: header.delivery_id.map(str::to_string),
        occurred_at_ms: header.received_at_ms,
    })
}

/// One approver's decision. A rejection is final for the request, so it counts as the ticket's rejection; an
/// approval only says one approver agreed: the grant follows the requested item's own approval.
fn approval_record(header: &Header<'_>, map: &TicketMappingConfig, body: &Value) -> Result<TicketEvent, String> {
    let state = str_at(body, "/state").unwrap_or("");
    if state != "rejected" {
        return Err(format!("an approval record in state `{state}`: the grant follows the request's own approval"));
    }
    let parent_id = str_at(body, "/sysapproval/sys_id")
        .or_else(|| str_at(body, "/document_id"))
        .or_else(|| str_at(body, "/sysapproval"))
        .ok_or("the approval record names no request")?;
    let number = str_at(body, "/sysapproval/number").unwrap_or(parent_id);
    let table = str_at(body, "/source_table").unwrap_or("sc_req_item");
    let approver = body.get("approver").and_then(person).unwrap_or_default();
    Ok(TicketEvent {
        source: header.source.to_string(),
        system: SourceKind::Servicenow,
        ticket_key: number.to_string(),
        ticket_id: parent_id.to_string(),
        table: Some(table.to_string()),
        url: record_url(map, table, parent_id),
        action: TicketAction::Rejected,
        requested_for: None,
        requested_by: None,
        approvals: vec![Approval { approver, decision: ApprovalDecision::Rejected }],
        request_type: None,
        fields: BTreeMap::new(),
        justification: None,
        requested_duration: None,
        delivery_id: header.delivery_id.map(str::to_string),
        occurred_at_ms: header.received_at_ms,
    })
}

/// `approvers: [{"sys_id", "user_name", "email", "state"}]`, the item's approval records as the business rule
/// sends them.
fn approvers(body: &Value) -> Vec<Approval> {
    let entries = body.get("approvers").and_then(Value::as_array).into_iter().flatten();
    entries
        .filter_map(|entry| {
            let approver = person(entry)?;
            let decision = match str_at(entry, "/state") {
                Some("approved") => ApprovalDecision::Approved,
                Some("rejected") => ApprovalDecision::Rejected,
                _ => ApprovalDecision::Pending,
            };
            Some(Approval { approver, decision })
        })
        .collect()
}

/// `{"sys_id", "user_name", "email"}` as the business rule sends it, or a bare sys_id string.
fn person(value: &Value) -> Option<PersonRef> {
    let p = match value {
        Value::String(s) if !s.is_empty() => PersonRef { id: Some(s.clone()), ..PersonRef::default() },
        _ => PersonRef {
            id: str_at(value, "/sys_id").or_else(|| str_at(value, "/value")).map(str::to_string),
            email: str_at(value, "/email").map(str::to_string),
            name: str_at(value, "/user_name").map(str::to_string),
        },
    };
    (!p.is_empty()).then_some(p)
}

fn record_url(map: &TicketMappingConfig, table: &str, sys_id: &str) -> Option<String> {
    let base = map.url.as_deref()?.trim_end_matches('/');
    Some(format!("{base}/nav_to.do?uri={table}.do?sys_id={sys_id}"))
}
