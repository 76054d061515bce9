//! Which rules a ticket matches: sources, request types and fields, in both modes.

use grantbridge::domain::{RefusalCode, TicketEvent};
use grantbridge::inbound::SourceKind;
use grantbridge::policy::{Policy, PolicyMode};

use crate::helpers::*;

fn matching_policy(mode: &str) -> Policy {
    policy(&format!(
        r#"
[policy]
mode = "{mode}"

[[policy.rules]]
name = "portal"
sources = ["servicenow"]
request_types = ["Permissions portal access", "EPM portal"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"

[[policy.rules]]
name = "jira-any"
sources = ["jira"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"

[[policy.rules]]
name = "env-prod"
request_types = ["App access"]
fields = {{ environment = ["prod"], team = ["payments", "Billing"] }}
approver_group = "{APPROVERS_GROUP}"
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PROD_GROUP}"

[[policy.rules]]
name = "env-any"
fields = {{ environment = ["dev", "prod"] }}
[[policy.rules.grants]]
kind = "group_member"
group_id = "{DEV_GROUP}"
"#
    ))
}

fn at(source: &str, request_type: Option<&str>, fields: &[(&str, &str)]) -> TicketEvent {
    let mut t = with_fields(ticket(), fields);
    t.source = source.to_string();
    t.system = if source == "jira" { SourceKind::Jira } else { SourceKind::Servicenow };
    t.request_type = request_type.map(str::to_string);
    t
}

#[test]
fn a_table_of_matches_in_all_matches_mode() {
    let p = matching_policy("all_matches");
    assert_eq!(p.mode(), PolicyMode::AllMatches);
    let cases: Vec<(&str, TicketEvent, Vec<&str>)> = vec![
        ("exact request type", at("servicenow", Some("Permissions portal access"), &[]), vec!["portal"]),
        ("case and spaces ignored", at("servicenow", Some("  permissions PORTAL access "), &[]), vec!["portal"]),
        ("second listed type", at("servicenow", Some("EPM portal"), &[]), vec!["portal"]),
        ("source restricts", at("jira", Some("Permissions portal access"), &[]), vec!["jira-any"]),
        ("prefix is not a match", at("servicenow", Some("Permissions portal"), &[]), vec![]),
        ("no request type", at("servicenow", None, &[]), vec![]),
        ("any type on jira", at("jira", None, &[]), vec!["jira-any"]),
        (
            "every field condition holds",
            at("servicenow", Some("App access"), &[("environment", "prod"), ("team", "billing")]),
            vec!["env-prod", "env-any"],
        ),
        ("one field missing", at("servicenow", Some("App access"), &[("environment", "PROD")]), vec!["env-any"]),
        (
            "a value not listed",
            at("servicenow", Some("App access"), &[("environment", "staging"), ("team", "payments")]),
            vec![],
        ),
        ("fields alone", at("servicenow", Some("Other"), &[("environment", " dev ")]), vec!["env-any"]),
        ("a list is not split", at("servicenow", Some("Other"), &[("environment", "dev,prod")]), vec![]),
        ("field names are exact", at("servicenow", Some("Other"), &[("Environment", "dev")]), vec![]),
        ("no source condition", at("elsewhere", None, &[("environment", "dev")]), vec!["env-any"]),
    ];
    for (what, t, want) in cases {
        let got: Vec<&str> = p.matching_rules(&t).iter().map(|r| r.name()).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn first_match_takes_the_first_rule_in_file_order() {
    let p = matching_policy("first_match");
    let t = at("servicenow", Some("App access"), &[("environment", "prod"), ("team", "payments")]);
    let names: Vec<&str> = p.matching_rules(&t).iter().map(|r| r.name()).collect();
    assert_eq!(names, ["env-prod"]);
}

#[test]
fn the_approver_groups_to_look_up_come_from_the_matching_rules() {
    let p = matching_policy("all_matches");
    let prod = at("servicenow", Some("App access"), &[("environment", "prod"), ("team", "payments")]);
    let groups = p.approver_groups_needed(&p.matching_rules(&prod));
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), [APPROVERS_GROUP]);
    let portal = at("servicenow", Some("EPM portal"), &[]);
    assert!(p.approver_groups_needed(&p.matching_rules(&portal)).is_empty());
}

#[test]
fn no_matching_rule_says_what_was_looked_at() {
    let p = matching_policy("first_match");
    let t = at("servicenow", Some("Permissions portal"), &[("environment", "staging")]);
    let refusal = expect_refusal(p.evaluate(&t, &facts(&t)));
    assert_eq!(refusal.code, RefusalCode::NoMatchingRule);
    assert_eq!(refusal.rule, None);
    for part in
        ["source `servicenow`", "request type `Permissions portal`", "environment = `staging`", "no team", "4 rules"]
    {
        assert!(refusal.message.contains(part), "{part:?} not in {:?}", refusal.message);
    }
}

#[test]
fn an_empty_policy_refuses_everything() {
    let p = policy("[policy]\n");
    let t = ticket();
    let refusal = expect_refusal(p.evaluate(&t, &facts(&t)));
    assert_eq!(refusal.code, RefusalCode::NoMatchingRule);
    assert!(refusal.message.contains("no rules"), "{}", refusal.message);
}

#[test]
fn ticket_text_in_messages_is_bounded_and_has_no_control_characters() {
    let p = matching_policy("first_match");
    let long = format!("evil`\n\u{1b}[31m{}", "x".repeat(500));
    let t = at("servicenow", Some(&long), &[]);
    let refusal = expect_refusal(p.evaluate(&t, &facts(&t)));
    assert!(refusal.message.len() < 400, "{}", refusal.message);
    assert!(!refusal.message.chars().any(char::is_control), "{:?}", refusal.message);
}
