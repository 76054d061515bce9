//! What reconciliation may repair, as the policy declares it: per grant, for group membership only.

use std::collections::BTreeSet;

use grantbridge::domain::GrantTarget;
use grantbridge::policy::ReconcileFlags;

use crate::helpers::*;

#[test]
fn flags_are_off_unless_a_grant_sets_them() {
    let p = portal_policy("");
    let groups = p.managed_groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, PORTAL_GROUP);
    assert_eq!(groups[0].label, "EPM - User Portal Access");
    assert!(!groups[0].authoritative);
    assert!(groups[0].restore_missing_rules.is_empty());
    let target = GrantTarget::GroupMember { group_id: PORTAL_GROUP.into() };
    assert_eq!(p.rule("portal-access").unwrap().reconcile_flags(&target), ReconcileFlags::default());
}

#[test]
fn a_group_declared_by_several_rules_gathers_their_flags() {
    let p = policy(&format!(
        r#"
[policy]
mode = "all_matches"
[[policy.rules]]
name = "portal-access"
request_types = ["Portal"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
label = "Portal"
restore_missing = true

[[policy.rules]]
name = "app-access"
request_types = ["App"]
[[policy.rules.grants]]
kind = "group_member"
choose_by = "environment"
options = {{ dev = {{ group_id = "{DEV_GROUP}" }}, portal = {{ group_id = "{PORTAL_GROUP}" }} }}
authoritative = true

[[policy.rules]]
name = "billing"
request_types = ["Billing"]
default_duration = "8h"
[[policy.rules.grants]]
kind = "pim_group"
group_id = "{PROD_GROUP}"
access = "member"
[[policy.rules.grants]]
kind = "azure_rbac"
scope = "/subscriptions/{SUBSCRIPTION}"
role_definition_id = "{ROLE}"
"#
    ));
    let groups = p.managed_groups();
    let ids: Vec<&str> = groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(ids, [PORTAL_GROUP, DEV_GROUP], "group_member targets only, in the order first declared");
    assert_eq!(groups[0].label, "Portal", "the first declaration's label");
    assert!(groups[0].authoritative, "one declaration says so: the group is authoritative");
    assert_eq!(groups[0].restore_missing_rules, BTreeSet::from(["portal-access".to_string()]));
    assert!(groups[1].authoritative);
    assert!(groups[1].restore_missing_rules.is_empty(), "app-access does not restore");
    let kinds: Vec<&str> = p.unreconciled_targets().iter().map(|d| d.target.kind()).collect();
    assert_eq!(kinds, ["pim_group", "azure_rbac"]);
}

#[test]
fn flags_on_targets_that_are_not_reconciled_are_refused() {
    for (grant, flag) in [
        (
            format!("kind = \"pim_group\"\ngroup_id = \"{DEV_GROUP}\"\naccess = \"member\"\nrestore_missing = true"),
            "restore_missing",
        ),
        (
            format!(
                "kind = \"azure_rbac\"\nscope = \"/subscriptions/{SUBSCRIPTION}\"\nrole_definition_id = \"{ROLE}\"\nauthoritative = true"
            ),
            "authoritative",
        ),
    ] {
        let text = format!(
            "[policy]\n[[policy.rules]]\nname = \"r\"\nrequest_types = [\"X\"]\ndefault_duration = \"8h\"\n[[policy.rules.grants]]\n{grant}\n"
        );
        let err = build(&text).unwrap_err().to_string();
        assert!(err.starts_with(&format!("test.toml: policy.rules[0] (r).grants[0].{flag}: ")), "{err}");
        assert!(err.contains("group_member grants only"), "{err}");
    }
    let wrong_type = format!(
        "[policy]\n[[policy.rules]]\nname = \"r\"\nrequest_types = [\"X\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"{DEV_GROUP}\"\nauthoritative = \"yes\"\n"
    );
    assert!(shape_error(&wrong_type).is_some_and(|e| e.contains("bool")), "{:?}", shape_error(&wrong_type));
}
