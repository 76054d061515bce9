//! Builders for policies, tickets and facts, so each test states only what it is about.

use std::collections::BTreeMap;
use std::time::Duration;

use grantbridge::config::ConfigError;
use grantbridge::domain::{
    Approval, ApprovalDecision, Confirmation, Decision, PersonRef, Plan, Principal, Refusal, TicketAction, TicketEvent,
};
use grantbridge::inbound::SourceKind;
use grantbridge::policy::{ApproverFacts, Facts, Policy, PolicyConfig};
use serde::Deserialize;

pub const PORTAL_GROUP: &str = "6a1c8f9e-1b2d-4c3e-8f4a-5b6c7d8e9f01";
pub const DEV_GROUP: &str = "6a1c8f9e-1b2d-4c3e-8f4a-5b6c7d8e9f02";
pub const PROD_GROUP: &str = "6a1c8f9e-1b2d-4c3e-8f4a-5b6c7d8e9f03";
pub const APPROVERS_GROUP: &str = "6a1c8f9e-1b2d-4c3e-8f4a-5b6c7d8e9f04";
pub const ROLE: &str = "62e90394-69f5-4237-9190-012177145e10";
pub const SUBSCRIPTION: &str = "11111111-2222-3333-4444-555555555555";

pub const ALICE_OID: &str = "aaaaaaaa-0000-0000-0000-000000000001";
pub const BOB_OID: &str = "bbbbbbbb-0000-0000-0000-000000000002";
pub const CAROL_OID: &str = "cccccccc-0000-0000-0000-000000000003";

pub const SOURCES: [&str; 2] = ["jira", "servicenow"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: PolicyConfig,
}

/// Parses `[policy]` TOML and validates it against the sources `jira` and `servicenow`.
pub fn build(text: &str) -> Result<Policy, ConfigError> {
    let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("test TOML does not parse: {e}\n{text}"));
    file.policy.build("test.toml", &SOURCES)
}

/// The deserialization error for text that is not even the right shape (unknown keys, wrong types).
pub fn shape_error(text: &str) -> Option<String> {
    toml::from_str::<File>(text).err().map(|e| e.to_string())
}

pub fn policy(text: &str) -> Policy {
    build(text).unwrap_or_else(|e| panic!("policy refused: {e}"))
}

/// One rule granting the portal group to approved "Permissions portal access" tickets; `extra` adds rule keys.
pub fn portal_policy(extra: &str) -> Policy {
    policy(&format!(
        r#"
[policy]
[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
{extra}
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
label = "EPM - User Portal Access"
"#
    ))
}

pub fn person(id: &str, email: &str, name: &str) -> PersonRef {
    PersonRef { id: Some(id.to_string()), email: Some(email.to_string()), name: Some(name.to_string()) }
}

pub fn alice() -> PersonRef {
    person("u-alice", "alice@example.com", "Alice")
}

pub fn bob() -> PersonRef {
    person("u-bob", "bob@example.com", "Bob")
}

pub fn carol() -> PersonRef {
    person("u-carol", "carol@example.com", "Carol")
}

pub fn dave() -> PersonRef {
    person("u-dave", "dave@example.com", "Dave")
}

pub fn principal(object_id: &str) -> Principal {
    Principal { object_id: object_id.to_string(), user_principal_name: None, display_name: None }
}

pub fn approval(approver: PersonRef, decision: ApprovalDecision) -> Approval {
    Approval { approver, decision }
}

pub fn approved(approver: PersonRef) -> Approval {
    approval(approver, ApprovalDecision::Approved)
}

/// Alice asks for portal access for herself on ServiceNow; Bob approved.
pub fn ticket() -> TicketEvent {
    TicketEvent {
        source: "servicenow".to_string(),
        system: SourceKind::Servicenow,
        ticket_key: "RITM0010001".to_string(),
        ticket_id: "sys-1".to_string(),
        table: Some("sc_req_item".to_string()),
        url: None,
        action: TicketAction::Approved,
        requested_for: Some(alice()),
        requested_by: Some(alice()),
        approvals: vec![approved(bob())],
        request_type: Some("Permissions portal access".to_string()),
        fields: BTreeMap::new(),
        justification: Some("I need to request permissions".to_string()),
        requested_duration: None,
        delivery_id: None,
        occurred_at_ms: 0,
    }
}

pub fn with_fields(mut t: TicketEvent, fields: &[(&str, &str)]) -> TicketEvent {
    t.fields = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    t
}

/// Confirmed, Alice receives, the ticket's approvals not looked up in Entra.
pub fn facts(t: &TicketEvent) -> Facts {
    Facts::new(Confirmation::Confirmed { detail: "read back".to_string() }, principal(ALICE_OID), t.approvals.clone())
}

pub fn facts_with(approvers: Vec<ApproverFacts>) -> Facts {
    Facts {
        confirmation: Confirmation::Confirmed { detail: "read back".to_string() },
        principal: principal(ALICE_OID),
        approvers,
    }
}

pub fn resolved(approval: Approval, object_id: &str, groups: &[&str]) -> ApproverFacts {
    ApproverFacts {
        approval,
        principal: Some(principal(object_id)),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

pub fn expect_plan(d: Decision) -> Plan {
    match d {
        Decision::Plan(p) => p,
        other => panic!("expected a plan, got {other:?}"),
    }
}

pub fn expect_refusal(d: Decision) -> Refusal {
    match d {
        Decision::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}
