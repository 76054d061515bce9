//! Broken policies: each is refused with the rule and the key that is wrong.

use crate::helpers::*;

/// A valid first rule, then the rule under test as `policy.rules[1]`.
fn with_rule(rule: &str) -> String {
    format!(
        r#"
[policy]
[[policy.rules]]
name = "ok-rule"
sources = ["jira"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"

[[policy.rules]]
{rule}
"#
    )
}

/// The rule `broken` matching a request type, with `keys` and one `grant` table body.
fn broken(keys: &str, grant: &str) -> String {
    with_rule(&format!("name = \"broken\"\nrequest_types = [\"X\"]\n{keys}\n[[policy.rules.grants]]\n{grant}\n"))
}

fn group(extra: &str) -> String {
    format!("kind = \"group_member\"\ngroup_id = \"{DEV_GROUP}\"\n{extra}")
}

#[test]
fn each_problem_names_the_rule_and_the_key() {
    let r = "test.toml: policy.rules[1] (broken)";
    let cases: Vec<(String, String, &str)> = vec![
        (
            with_rule(&format!("name = \"ok-rule\"\nsources = [\"jira\"]\n[[policy.rules.grants]]\n{}", group(""))),
            "test.toml: policy.rules[1] (ok-rule).name".into(),
            "duplicate rule name: policy.rules[0] already uses it",
        ),
        (
            with_rule(&format!(
                "name = \"Portal Access\"\nsources = [\"jira\"]\n[[policy.rules.grants]]\n{}",
                group("")
            )),
            "test.toml: policy.rules[1].name".into(),
            "`Portal Access` is",
        ),
        (
            with_rule(&format!("sources = [\"jira\"]\n[[policy.rules.grants]]\n{}", group(""))),
            "test.toml: policy.rules[1].name".into(),
            "missing",
        ),
        (
            broken("sources = [\"jira\", \"email\"]", &group("")),
            format!("{r}.sources[1]"),
            "unknown source `email`; configured sources: jira, servicenow",
        ),
        (broken("sources = []", &group("")), format!("{r}.sources"), "empty"),
        (broken("fields = { environment = [] }", &group("")), format!("{r}.fields.environment"), "no values"),
        (
            with_rule(&format!("name = \"broken\"\n[[policy.rules.grants]]\n{}", group(""))),
            r.to_string(),
            "matches every approved ticket",
        ),
        (with_rule("name = \"broken\"\nsources = [\"jira\"]\n"), format!("{r}.grants"), "no grants"),
        (broken("min_approvals = 0", &group("")), format!("{r}.min_approvals"), "at least 1"),
        (broken("approver_group = \"approvers\"", &group("")), format!("{r}.approver_group"), "`approvers` is not"),
        (
            broken("", "kind = \"group_member\"\ngroup_id = \"EPM - User Portal Access\""),
            format!("{r}.grants[0].group_id"),
            "not an Entra object id",
        ),
        (
            broken(
                "",
                &group(
                    "choose_by = \"environment\"\noptions = { dev = { group_id = \"00000000-0000-0000-0000-000000000001\" } }",
                ),
            ),
            format!("{r}.grants[0]"),
            "not both",
        ),
        (broken("", "kind = \"group_member\"\nlabel = \"x\""), format!("{r}.grants[0]"), "no target: give group_id"),
        (
            broken("", "kind = \"group_member\"\nchoose_by = \"environment\""),
            format!("{r}.grants[0].options"),
            "needs options",
        ),
        (
            broken("", &format!("kind = \"group_member\"\noptions = {{ dev = {{ group_id = \"{DEV_GROUP}\" }} }}")),
            format!("{r}.grants[0].choose_by"),
            "missing",
        ),
        (
            broken("", "kind = \"group_member\"\nchoose_by = \"environment\"\noptions = {}"),
            format!("{r}.grants[0].options"),
            "empty",
        ),
        (
            broken(
                "",
                "kind = \"group_member\"\nchoose_by = \"environment\"\noptions = { prod = { group_id = \"prod-group\" } }",
            ),
            format!("{r}.grants[0].options.prod.group_id"),
            "not an Entra object id",
        ),
        (
            broken(
                "",
                &format!(
                    "kind = \"group_member\"\nchoose_by = \"env\"\noptions = {{ DEV = {{ group_id = \"{DEV_GROUP}\" }}, dev = {{ group_id = \"{PROD_GROUP}\" }} }}"
                ),
            ),
            format!("{r}.grants[0].options.dev"),
            "differs only in case",
        ),
        (
            broken(
                "",
                &format!(
                    "kind = \"group_member\"\nchoose_by = \"env\"\nlabel = \"Apps\"\noptions = {{ dev = {{ group_id = \"{DEV_GROUP}\" }} }}"
                ),
            ),
            format!("{r}.grants[0].label"),
            "each option its own label",
        ),
        (
            broken(
                "",
                &format!(
                    "kind = \"azure_rbac\"\nscope = \"subscriptions/{SUBSCRIPTION}\"\nrole_definition_id = \"{ROLE}\""
                ),
            ),
            format!("{r}.grants[0].scope"),
            "starts with `/`",
        ),
        (
            broken(
                "",
                &format!(
                    "kind = \"azure_rbac\"\nscope = \"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/\"\nrole_definition_id = \"{ROLE}\""
                ),
            ),
            format!("{r}.grants[0].scope"),
            "trailing",
        ),
        (
            broken(
                "",
                &format!(
                    "kind = \"azure_rbac\"\nscope = \"/subscriptions/{SUBSCRIPTION}\"\nrole_definition_id = \"Reader\""
                ),
            ),
            format!("{r}.grants[0].role_definition_id"),
            "`Reader` is not",
        ),
        (
            broken("", &format!("kind = \"pim_group\"\ngroup_id = \"{DEV_GROUP}\"\naccess = \"member\"")),
            format!("{r}.grants[0]"),
            "time-bound",
        ),
        (
            broken(
                "max_duration = \"8h\"",
                &format!("kind = \"pim_group\"\ngroup_id = \"{DEV_GROUP}\"\naccess = \"admin\""),
            ),
            format!("{r}.grants[0].access"),
            "\"member\" or \"owner\"",
        ),
        (
            broken("max_duration = \"8h\"", &format!("kind = \"pim_group\"\ngroup_id = \"{DEV_GROUP}\"")),
            format!("{r}.grants[0].access"),
            "missing",
        ),
        (
            broken(
                "max_duration = \"8h\"",
                &format!("kind = \"pim_role\"\nrole_definition_id = \"{ROLE}\"\ndirectory_scope_id = \"/tenant\""),
            ),
            format!("{r}.grants[0].directory_scope_id"),
            "expected `/`",
        ),
        (
            broken("", &group(&format!("scope = \"/subscriptions/{SUBSCRIPTION}\""))),
            format!("{r}.grants[0].scope"),
            "does not apply to a group_member grant",
        ),
        (broken("default_duration = \"8 hours\"", &group("")), format!("{r}.default_duration"), "not a duration"),
        (broken("max_duration = \"8\"", &group("")), format!("{r}.max_duration"), "no unit"),
        (broken("max_duration = \"P1M\"", &group("")), format!("{r}.max_duration"), "months"),
        (
            broken("default_duration = \"2d\"\nmax_duration = \"24h\"", &group("")),
            format!("{r}.default_duration"),
            "48h is longer than max_duration (24h)",
        ),
        (
            broken("max_duration = \"1h\"\nnotify_before_expiry = \"1h\"", &group("")),
            format!("{r}.notify_before_expiry"),
            "not shorter than max_duration",
        ),
        (
            with_rule(&format!(
                "name = \"broken\"\nrequest_types = [\"X\"]\n[[policy.rules.grants]]\n{}\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"{}\"",
                group(""),
                DEV_GROUP.to_uppercase()
            )),
            format!("{r}.grants[1]"),
            "the same target as grants[0]",
        ),
        (broken("", &group("label = \"\"")), format!("{r}.grants[0].label"), "1-200 printable"),
        (
            broken("withdraw_on = [\"cancelled\", \"updated\"]", &group("")),
            format!("{r}.withdraw_on"),
            "`updated` is not a ticket action that can withdraw a request; use cancelled, rejected, reopened, closed",
        ),
    ];
    assert!(cases.len() >= 15);
    for (text, location, message) in cases {
        let err = build(&text).expect_err(&text).to_string();
        assert!(err.starts_with(&format!("{location}: ")), "wanted location {location:?}, got {err:?}");
        assert!(err.contains(message), "wanted {message:?} in {err:?}");
    }
}

#[test]
fn an_empty_request_type_is_refused() {
    let text = with_rule(&format!(
        "name = \"broken\"\nrequest_types = [\"ok\", \"  \"]\n[[policy.rules.grants]]\n{}",
        group("")
    ));
    let err = build(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml: policy.rules[1] (broken).request_types[1]: "), "{err}");
}

#[test]
fn unknown_keys_and_values_are_refused_at_every_level() {
    let cases = [
        "[policy]\nmode = \"first\"\n".to_string(),
        "[policy]\ndryrun = true\n".to_string(),
        with_rule(&format!("name = \"b\"\nrequest_type = [\"X\"]\n[[policy.rules.grants]]\n{}", group(""))),
        with_rule(&format!(
            "name = \"b\"\nsources = [\"jira\"]\n[[policy.rules.grants]]\n{}",
            group("groupid = \"x\"")
        )),
        with_rule("name = \"b\"\nsources = [\"jira\"]\n[[policy.rules.grants]]\nkind = \"entra_role\"\n"),
        with_rule(
            "name = \"b\"\nsources = [\"jira\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\nchoose_by = \"e\"\noptions = { dev = { group = \"x\" } }\n",
        ),
        with_rule(&format!(
            "name = \"b\"\nsources = [\"jira\"]\nmin_approvals = -1\n[[policy.rules.grants]]\n{}",
            group("")
        )),
        with_rule(&format!(
            "name = \"b\"\nsources = [\"jira\"]\nmax_duration = 8\n[[policy.rules.grants]]\n{}",
            group("")
        )),
    ];
    for text in cases {
        assert!(shape_error(&text).is_some(), "accepted: {text}");
    }
}

#[test]
fn a_complete_policy_is_accepted() {
    let p = policy(&format!(
        r#"
[policy]
mode = "all_matches"
dry_run = false

[[policy.rules]]
name = "portal-access"
sources = ["servicenow", "jira"]
request_types = ["Permissions portal access"]
fields = {{ environment = ["dev", "prod"] }}
dry_run = false
require_confirmation = true
min_approvals = 1
approver_not_requester = true
approver_group = "{APPROVERS_GROUP}"
require_justification = false
default_duration = "8h"
max_duration = "PT24H"
notify_before_expiry = "1h"

[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
label = "EPM - User Portal Access"

[[policy.rules.grants]]
kind = "pim_group"
group_id = "{DEV_GROUP}"
access = "member"

[[policy.rules.grants]]
kind = "pim_role"
role_definition_id = "{ROLE}"
directory_scope_id = "/"

[[policy.rules.grants]]
kind = "azure_rbac"
scope = "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv-app"
role_definition_id = "{ROLE}"

[[policy.rules.grants]]
kind = "azure_rbac"
scope = "/providers/Microsoft.Management/managementGroups/mg-prod"
role_definition_id = "{ROLE}"

[[policy.rules.grants]]
kind = "group_member"
choose_by = "environment"
options = {{ dev = {{ group_id = "{DEV_GROUP}", label = "App Dev" }}, prod = {{ group_id = "{PROD_GROUP}", label = "App Prod" }} }}
"#
    ));
    let rule = p.rule("portal-access").unwrap();
    assert_eq!(rule.max_duration(), Some(hours(24)));
    assert_eq!(rule.default_duration(), Some(hours(8)));
    assert_eq!(rule.notify_before_expiry(), Some(hours(1)));
    assert!(["cancelled", "rejected", "reopened"].iter().all(|a| rule.withdraws_on(a)), "the default withdraw_on");
    assert!(!rule.withdraws_on("closed"), "closing a fulfilled request keeps its access unless the rule says so");
    assert_eq!(rule.approver_group(), Some(APPROVERS_GROUP));
    assert!(rule.requires_confirmation());
    assert_eq!(rule.min_approvals(), 1);
    assert_eq!(rule.declared_targets().len(), 7);
}

#[test]
fn errors_without_an_origin_start_with_the_key() {
    #[derive(serde::Deserialize)]
    struct File {
        policy: grantbridge::policy::PolicyConfig,
    }
    let file: File = toml::from_str(&with_rule("name = \"b\"\nsources = [\"jira\"]\n")).unwrap();
    let err = file.policy.build("", &SOURCES).unwrap_err().to_string();
    assert!(err.starts_with("policy.rules[1] (b).grants: "), "{err}");
}

#[test]
fn withdraw_on_names_the_ticket_actions_that_end_a_rules_grants() {
    let p = build(&with_rule(&format!(
        "name = \"closing\"\nrequest_types = [\"X\"]\nwithdraw_on = [\"Closed\", \"cancelled\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"{PORTAL_GROUP}\"\n"
    )))
    .unwrap();
    let rule = p.rule("closing").unwrap();
    assert!(rule.withdraws_on("closed") && rule.withdraws_on("cancelled"));
    assert!(!rule.withdraws_on("rejected") && !rule.withdraws_on("reopened"), "the list replaces the default");
    let never = build(&with_rule(&format!(
        "name = \"never\"\nrequest_types = [\"X\"]\nwithdraw_on = []\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"{PORTAL_GROUP}\"\n"
    )))
    .unwrap();
    assert!(!never.rule("never").unwrap().withdraws_on("cancelled"));
}
