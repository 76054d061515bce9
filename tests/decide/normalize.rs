use grantbridge::domain::{ApprovalDecision, TicketAction, TicketEvent};
use grantbridge::inbound::SourceKind;
use grantbridge::inbound::normalize::{Normalized, TicketMapping, TicketMappingConfig, normalize};

use crate::common::fixture;

fn jira_mapping() -> TicketMapping {
    let config: TicketMappingConfig = toml::from_str(
        r#"
request_type_field = "customfield_10010"
approvals_field = "customfield_10020"
justification_field = "customfield_10030"
duration_field = "customfield_10050"
fields = { environment = "customfield_10040" }
"#,
    )
    .unwrap();
    config.build(SourceKind::Jira, "test").unwrap()
}

fn sn_mapping() -> TicketMapping {
    let config: TicketMappingConfig =
        toml::from_str("url = \"https://acme.service-now.com\"\nduration_field = \"duration\"").unwrap();
    config.build(SourceKind::Servicenow, "test").unwrap()
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn ticket(mapping: &TicketMapping, name: &str) -> TicketEvent {
    match normalize("src", mapping, &read(name), Some("d-1"), 42) {
        Normalized::Ticket(t) => *t,
        Normalized::Ignored(reason) => panic!("{name} was ignored: {reason}"),
    }
}

fn ignored(mapping: &TicketMapping, name: &str) -> String {
    match normalize("src", mapping, &read(name), None, 42) {
        Normalized::Ignored(reason) => reason,
        Normalized::Ticket(t) => panic!("{name} should be ignored, got {t:?}"),
    }
}

#[test]
fn jira_approved_request_becomes_a_ticket_event() {
    let t = ticket(&jira_mapping(), "jira/issue-updated-approved.json");
    assert_eq!(t.action, TicketAction::Approved);
    assert_eq!((t.ticket_key.as_str(), t.ticket_id.as_str()), ("ACCESS-42", "10042"));
    assert_eq!(t.url.as_deref(), Some("https://example.atlassian.net/browse/ACCESS-42"));
    assert_eq!(t.request_type.as_deref(), Some("Permissions portal access"));
    let receiver = t.requested_for.unwrap();
    assert_eq!(receiver.id.as_deref(), Some("5b10a2844c20165700ede21g"));
    assert_eq!(receiver.email.as_deref(), Some("riley.requester@example.com"));
    assert_eq!(t.approvals.len(), 1);
    assert_eq!(t.approvals[0].approver.id.as_deref(), Some("5b10ac8d82e05b22cc7d4ef5"));
    assert_eq!(t.approvals[0].decision, ApprovalDecision::Approved);
    assert_eq!(t.fields.get("environment").map(String::as_str), Some("prod"));
    assert_eq!(t.justification.as_deref(), Some("Needs to request cloud permissions for the billing project"));
    assert_eq!(t.requested_duration, Some(std::time::Duration::from_secs(8 * 3600)));
    assert_eq!(t.occurred_at_ms, 1_764_316_800_000);
    assert_eq!(t.delivery_id.as_deref(), Some("d-1"));
}

#[test]
fn jira_decline_with_two_approvers_keeps_each_decision() {
    let t = ticket(&jira_mapping(), "jira/issue-updated-declined-two-approvers.json");
    assert_eq!(t.action, TicketAction::Rejected);
    let decisions: Vec<ApprovalDecision> = t.approvals.iter().map(|a| a.decision).collect();
    assert_eq!(decisions, [ApprovalDecision::Approved, ApprovalDecision::Rejected]);
}

#[test]
fn jira_reopened_and_self_approved_are_recognised() {
    assert_eq!(ticket(&jira_mapping(), "jira/issue-updated-reopened.json").action, TicketAction::Reopened);
    let t = ticket(&jira_mapping(), "jira/issue-updated-self-approved.json");
    assert!(t.approvals[0].approver.same_person(t.requested_for.as_ref().unwrap()));
}

#[test]
fn jira_without_approvals_field_takes_the_actor_as_approver() {
    let config: TicketMappingConfig = toml::from_str("request_type_field = \"customfield_10010\"").unwrap();
    let mapping = config.build(SourceKind::Jira, "test").unwrap();
    let t = ticket(&mapping, "jira/issue-updated-approved.json");
    assert_eq!(t.approvals.len(), 1);
    assert_eq!(t.approvals[0].approver.name.as_deref(), Some("Avery Approver"));
    assert!(t.fields.is_empty(), "no field mapping, no fields");
}

#[test]
fn jira_status_names_are_configurable() {
    let config: TicketMappingConfig = toml::from_str("approved_statuses = [\"Genehmigt\"]").unwrap();
    let mapping = config.build(SourceKind::Jira, "test").unwrap();
    let body =
        read("jira/issue-updated-approved.json").replace("\"toString\": \"Approved\"", "\"toString\": \"Genehmigt\"");
    let Normalized::Ticket(t) = normalize("src", &mapping, &body, None, 0) else { panic!("ignored") };
    assert_eq!(t.action, TicketAction::Approved);
    // With the default list replaced, "Approved" is no longer an approval.
    let t = ticket(&mapping, "jira/issue-updated-approved.json");
    assert_eq!(t.action, TicketAction::Other("status changed to Approved".into()));
}

#[test]
fn events_that_are_not_access_decisions_are_ignored_with_a_reason() {
    let jira = jira_mapping();
    assert!(ignored(&jira, "jira/comment-created.json").contains("comment_created"));
    assert!(ignored(&jira, "jira/issue-updated-labels-only.json").contains("no status change"));
    let sn = sn_mapping();
    assert!(ignored(&sn, "servicenow/incident.json").contains("incident"));
    assert!(ignored(&sn, "servicenow/approval-approved.json").contains("request's own approval"));
}

#[test]
fn servicenow_requested_item_becomes_a_ticket_event() {
    let t = ticket(&sn_mapping(), "servicenow/ritm-approved.json");
    assert_eq!(t.action, TicketAction::Approved);
    assert_eq!((t.ticket_key.as_str(), t.ticket_id.as_str()), ("RITM0010001", "9d385017c611228701d22104cc95c371"));
    assert_eq!(t.table.as_deref(), Some("sc_req_item"));
    assert_eq!(
        t.url.as_deref(),
        Some("https://acme.service-now.com/nav_to.do?uri=sc_req_item.do?sys_id=9d385017c611228701d22104cc95c371")
    );
    assert_eq!(t.request_type.as_deref(), Some("Permissions portal access"));
    assert_eq!(t.requested_for.as_ref().unwrap().email.as_deref(), Some("riley.requester@example.com"));
    assert_eq!(t.approvals.len(), 1);
    assert_eq!(t.approvals[0].approver.name.as_deref(), Some("avery.approver"));
    assert_eq!(t.fields.get("environment").map(String::as_str), Some("prod"));
    assert_eq!(t.justification.as_deref(), Some("Needs to request cloud permissions for the billing project"));
    assert_eq!(t.requested_duration, Some(std::time::Duration::from_secs(8 * 3600)));
}

#[test]
fn servicenow_actions_follow_approval_and_state() {
    let sn = sn_mapping();
    assert_eq!(ticket(&sn, "servicenow/ritm-rejected.json").action, TicketAction::Rejected);
    assert_eq!(ticket(&sn, "servicenow/ritm-closed-incomplete.json").action, TicketAction::Cancelled);
    assert!(matches!(ticket(&sn, "servicenow/ritm-requested.json").action, TicketAction::Other(_)));
    assert!(ticket(&sn, "servicenow/ritm-approved-no-requested-for.json").requested_for.is_none());
    let rejection = ticket(&sn, "servicenow/approval-rejected.json");
    assert_eq!(rejection.action, TicketAction::Rejected);
    assert_eq!(rejection.ticket_key, "RITM0010001");
    assert_eq!(rejection.approvals[0].approver.email.as_deref(), Some("sam.second@example.com"));
}

#[test]
fn a_mapping_key_for_the_wrong_system_is_refused() {
    let config: TicketMappingConfig = toml::from_str("approved_statuses = [\"Approved\"]").unwrap();
    let err = config.build(SourceKind::Servicenow, "sources.sn.ticket").unwrap_err();
    assert!(err.to_string().contains("sources.sn.ticket.approved_statuses"), "{err}");
}

#[test]
fn garbage_is_ignored_not_a_crash() {
    for body in
        ["", "null", "[]", "{\"webhookEvent\": 5}", "{\"webhookEvent\":\"jira:issue_updated\"}", "{\"table\": []}"]
    {
        let j = normalize("src", &jira_mapping(), body, None, 0);
        let s = normalize("src", &sn_mapping(), body, None, 0);
        assert!(matches!(j, Normalized::Ignored(_)), "{body}: {j:?}");
        assert!(matches!(s, Normalized::Ignored(_)), "{body}: {s:?}");
    }
}
