//! What a plan contains: targets, choices, durations and their capping, modes, dry runs, reasons.

use std::time::Duration;

use grantbridge::domain::{GrantTarget, PimAccess, RefusalCode};
use grantbridge::policy::Policy;

use crate::helpers::*;

fn duration_policy(durations: &str) -> Policy {
    portal_policy(durations)
}

#[test]
fn durations_come_from_the_request_the_default_or_the_maximum() {
    let cases: Vec<(&str, Option<Duration>, Option<Duration>, &str)> = vec![
        ("default_duration = \"8h\"\nmax_duration = \"24h\"", None, Some(hours(8)), "the rule's default"),
        ("default_duration = \"8h\"\nmax_duration = \"24h\"", Some(hours(4)), Some(hours(4)), "4h, as requested"),
        ("default_duration = \"8h\"\nmax_duration = \"24h\"", Some(hours(24)), Some(hours(24)), "as requested"),
        (
            "default_duration = \"8h\"\nmax_duration = \"24h\"",
            Some(hours(48)),
            Some(hours(24)),
            "requested 48h, capped to the rule's maximum of 24h",
        ),
        (
            "max_duration = \"P1D\"",
            Some(Duration::from_secs(u64::MAX)),
            Some(hours(24)),
            "capped to the rule's maximum of 24h",
        ),
        ("max_duration = \"24h\"", None, Some(hours(24)), "the rule's maximum"),
        ("default_duration = \"8h\"", Some(hours(100)), Some(hours(100)), "as requested"),
        ("", None, None, "permanent until revoked"),
        ("", Some(hours(4)), Some(hours(4)), "as requested"),
        ("default_duration = \"8h\"", Some(Duration::ZERO), Some(hours(8)), "zero was ignored"),
    ];
    for (durations, requested, want, reason) in cases {
        let mut t = ticket();
        t.requested_duration = requested;
        let plan = expect_plan(duration_policy(durations).evaluate(&t, &facts(&t)));
        let grant = &plan.grants[0];
        assert_eq!(grant.duration, want, "{durations:?} with {requested:?}");
        assert!(grant.reasons.iter().any(|r| r.contains(reason)), "{reason:?} not in {:?}", grant.reasons);
    }
}

#[test]
fn pim_grants_are_time_bound_and_targets_are_canonical() {
    let p = policy(&format!(
        r#"
[policy]
[[policy.rules]]
name = "cloud-admin"
request_types = ["Cloud admin"]
max_duration = "8h"
[[policy.rules.grants]]
kind = "pim_group"
group_id = "{}"
access = "owner"
[[policy.rules.grants]]
kind = "pim_role"
role_definition_id = "{ROLE}"
[[policy.rules.grants]]
kind = "azure_rbac"
scope = "/SUBSCRIPTIONS/{SUBSCRIPTION}/resourcegroups/rg-app"
role_definition_id = "{ROLE}"
label = "Reader on rg-app"
"#,
        PROD_GROUP.to_uppercase()
    ));
    let mut t = ticket();
    t.request_type = Some("Cloud admin".into());
    let plan = expect_plan(p.evaluate(&t, &facts(&t)));
    let targets: Vec<&GrantTarget> = plan.grants.iter().map(|g| &g.target).collect();
    assert_eq!(
        targets,
        [
            &GrantTarget::PimGroup { group_id: PROD_GROUP.to_string(), access: PimAccess::Owner },
            &GrantTarget::PimRole { role_definition_id: ROLE.to_string(), directory_scope_id: "/".to_string() },
            &GrantTarget::AzureRbac {
                scope: format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app"),
                role_definition_id: ROLE.to_string()
            },
        ]
    );
    assert!(plan.grants.iter().all(|g| g.duration == Some(hours(8))));
    assert_eq!(plan.grants[0].label, format!("{PROD_GROUP} (owner)"));
    assert_eq!(plan.grants[2].label, "Reader on rg-app");
}

fn choice_policy() -> Policy {
    policy(&format!(
        r#"
[policy]
[[policy.rules]]
name = "app-access"
request_types = ["App access"]
[[policy.rules.grants]]
kind = "group_member"
choose_by = "environment"
options = {{ dev = {{ group_id = "{DEV_GROUP}", label = "App Dev" }}, Prod = {{ group_id = "{PROD_GROUP}", label = "App Prod" }} }}
"#
    ))
}

#[test]
fn a_field_chooses_among_declared_options() {
    let p = choice_policy();
    let mut t = with_fields(ticket(), &[("environment", " PROD ")]);
    t.request_type = Some("App access".into());
    let plan = expect_plan(p.evaluate(&t, &facts(&t)));
    assert_eq!(plan.grants.len(), 1);
    assert_eq!(plan.grants[0].target, GrantTarget::GroupMember { group_id: PROD_GROUP.to_string() });
    assert_eq!(plan.grants[0].label, "App Prod");
    assert!(
        plan.grants[0].reasons.iter().any(|r| r.contains("chosen by the field environment")),
        "{:?}",
        plan.grants[0].reasons
    );
}

#[test]
fn a_field_cannot_name_a_target() {
    let p = choice_policy();
    type Fields<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Fields<'_>, &str); 6] = [
        ("missing", &[], "missing"),
        ("blank", &[("environment", "  ")], "missing"),
        ("unknown value", &[("environment", "staging")], "`staging`, which is not one of: dev, prod"),
        ("a declared group id", &[("environment", PROD_GROUP)], "not one of"),
        ("an undeclared group id", &[("environment", "00000000-0000-0000-0000-000000000000")], "not one of"),
        ("a label", &[("environment", "App Prod")], "not one of"),
    ];
    for (what, fields, message) in cases {
        let mut t = with_fields(ticket(), fields);
        t.request_type = Some("App access".into());
        let r = expect_refusal(p.evaluate(&t, &facts(&t)));
        assert_eq!(r.code, RefusalCode::InvalidFieldValue, "{what}");
        assert_eq!(r.rule.as_deref(), Some("app-access"), "{what}");
        assert!(r.message.contains("environment") && r.message.contains(message), "{what}: {}", r.message);
        assert!(r.message.contains("dev, prod"), "{what}: the allowed values are listed: {}", r.message);
    }
}

fn two_rules(mode: &str, dry_run_second: bool, global_dry_run: bool) -> Policy {
    policy(&format!(
        r#"
[policy]
mode = "{mode}"
dry_run = {global_dry_run}
[[policy.rules]]
name = "portal"
request_types = ["Permissions portal access"]
default_duration = "8h"
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
label = "Portal"
[[policy.rules]]
name = "servicenow-extra"
sources = ["servicenow"]
dry_run = {dry_run_second}
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
[[policy.rules.grants]]
kind = "group_member"
group_id = "{DEV_GROUP}"
"#
    ))
}

#[test]
fn first_match_plans_only_the_first_rule() {
    let t = ticket();
    let plan = expect_plan(two_rules("first_match", false, false).evaluate(&t, &facts(&t)));
    assert_eq!(plan.mode, "first_match");
    assert_eq!(plan.matched_rules, ["portal"]);
    assert_eq!(plan.grants.len(), 1);
}

#[test]
fn all_matches_plans_every_rule_once_per_target() {
    let t = ticket();
    let plan = expect_plan(two_rules("all_matches", false, false).evaluate(&t, &facts(&t)));
    assert_eq!(plan.mode, "all_matches");
    assert_eq!(plan.matched_rules, ["portal", "servicenow-extra"]);
    let got: Vec<(&str, &GrantTarget, Option<Duration>)> =
        plan.grants.iter().map(|g| (g.rule.as_str(), &g.target, g.duration)).collect();
    assert_eq!(
        got,
        [
            ("portal", &GrantTarget::GroupMember { group_id: PORTAL_GROUP.to_string() }, Some(hours(8))),
            ("servicenow-extra", &GrantTarget::GroupMember { group_id: DEV_GROUP.to_string() }, None),
        ]
    );
    let kept = &plan.grants[0];
    assert!(
        kept.reasons.iter().any(|r| r.contains("rule `servicenow-extra` also grants Portal (permanent)")),
        "{:?}",
        kept.reasons
    );
    assert!(plan.notes.iter().any(|n| n.contains("also grants")), "{:?}", plan.notes);
    assert!(!plan.dry_run);
}

#[test]
fn dry_run_globally_or_per_rule() {
    let t = ticket();
    let global = expect_plan(two_rules("first_match", false, true).evaluate(&t, &facts(&t)));
    assert!(global.dry_run);
    assert!(global.notes.iter().any(|n| n.contains("whole policy")), "{:?}", global.notes);

    let rule = expect_plan(portal_policy("dry_run = true").evaluate(&t, &facts(&t)));
    assert!(rule.dry_run);
    assert!(rule.notes.iter().any(|n| n.contains("rule `portal-access` is in dry-run mode")), "{:?}", rule.notes);

    // A dry-run rule that did not match changes nothing.
    assert!(!expect_plan(two_rules("first_match", true, false).evaluate(&t, &facts(&t))).dry_run);
    // A dry-run rule among several matching makes the whole plan a dry run.
    assert!(expect_plan(two_rules("all_matches", true, false).evaluate(&t, &facts(&t))).dry_run);
}

#[test]
fn every_reason_names_the_rule_and_what_it_matched() {
    let t = with_fields(ticket(), &[("environment", "dev")]);
    let plan = expect_plan(two_rules("all_matches", false, false).evaluate(&t, &facts(&t)));
    for g in &plan.grants {
        let first = &g.reasons[0];
        assert!(first.contains(&format!("rule `{}` matched on", g.rule)), "{first}");
        assert!(g.reasons.iter().any(|r| r.contains("approved by Bob")), "{:?}", g.reasons);
        assert!(g.reasons.iter().any(|r| r.contains("duration") || r.contains("permanent")), "{:?}", g.reasons);
    }
    assert!(plan.grants[0].reasons[0].contains("request type `Permissions portal access`"));
    assert!(plan.grants[1].reasons[0].contains("source `servicenow`"));
}

#[test]
fn declared_targets_list_fixed_targets_and_every_option() {
    let p = choice_policy();
    let rule = p.rule("app-access").unwrap();
    let labels: Vec<&str> = rule.declared_targets().iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, ["App Dev", "App Prod"]);
    assert_eq!(p.declared_targets().len(), 2);
}
