//! Every requirement a rule sets, and the refusal when it does not hold.

use grantbridge::domain::{ApprovalDecision, Confirmation, Decision, PersonRef, RefusalCode, TicketAction};
use grantbridge::policy::ApproverFacts;

use crate::helpers::*;

fn refusal_code(extra: &str, t: &grantbridge::domain::TicketEvent, f: &grantbridge::policy::Facts) -> RefusalCode {
    let r = expect_refusal(portal_policy(extra).evaluate(t, f));
    assert_eq!(r.rule.as_deref(), Some("portal-access"), "the refusal names the rule: {r:?}");
    r.code
}

#[test]
fn only_an_approval_is_decided() {
    let p = portal_policy("");
    for action in
        [TicketAction::Rejected, TicketAction::Cancelled, TicketAction::Closed, TicketAction::Other("commented".into())]
    {
        let mut t = ticket();
        t.action = action.clone();
        match p.evaluate(&t, &facts(&t)) {
            Decision::Ignored { reason } => assert!(reason.contains(action.as_str()), "{reason}"),
            other => panic!("{action:?} gave {other:?}"),
        }
    }
}

#[test]
fn the_happy_path_plans_the_portal_group() {
    let t = ticket();
    let plan = expect_plan(portal_policy("").evaluate(&t, &facts(&t)));
    assert_eq!(plan.ticket_key, "RITM0010001");
    assert_eq!(plan.matched_rules, ["portal-access"]);
    assert_eq!(plan.principal, Some(principal(ALICE_OID)));
    assert_eq!(plan.grants.len(), 1);
    assert_eq!(plan.grants[0].label, "EPM - User Portal Access");
    assert_eq!(plan.grants[0].duration, None);
    assert!(!plan.dry_run);
    assert_eq!(plan.mode, "first_match");
}

#[test]
fn an_unconfirmed_approval_is_refused_unless_the_rule_allows_it() {
    let t = ticket();
    let mut f = facts(&t);
    f.confirmation = Confirmation::NotConfigured;
    assert_eq!(refusal_code("", &t, &f), RefusalCode::ConfirmationUnavailable);
    let plan = expect_plan(portal_policy("require_confirmation = false").evaluate(&t, &f));
    assert!(plan.notes.iter().any(|n| n.contains("not confirmed")), "{:?}", plan.notes);
    assert!(!plan.dry_run);
}

#[test]
fn a_skipped_confirmation_only_ever_gives_a_dry_run() {
    let t = ticket();
    let mut f = facts(&t);
    f.confirmation = Confirmation::Skipped;
    let plan = expect_plan(portal_policy("").evaluate(&t, &f));
    assert!(plan.dry_run);
    assert!(plan.notes.iter().any(|n| n.contains("preview")), "{:?}", plan.notes);
}

#[test]
fn approvals_must_come_from_enough_distinct_people() {
    let t = ticket();
    let cases: Vec<(&str, &str, Vec<ApproverFacts>, Option<RefusalCode>)> = vec![
        ("none", "", vec![], Some(RefusalCode::NotEnoughApprovals)),
        (
            "pending only",
            "",
            vec![ApproverFacts::unresolved(approval(bob(), ApprovalDecision::Pending))],
            Some(RefusalCode::NotEnoughApprovals),
        ),
        (
            "one person twice",
            "min_approvals = 2",
            vec![ApproverFacts::unresolved(approved(bob())), ApproverFacts::unresolved(approved(bob()))],
            Some(RefusalCode::NotEnoughApprovals),
        ),
        (
            "same e-mail in another case",
            "min_approvals = 2",
            vec![
                ApproverFacts::unresolved(approved(bob())),
                ApproverFacts::unresolved(approved(PersonRef {
                    email: Some("BOB@example.com".into()),
                    ..Default::default()
                })),
            ],
            Some(RefusalCode::NotEnoughApprovals),
        ),
        (
            "same Entra object behind two references",
            "min_approvals = 2",
            vec![
                resolved(approved(PersonRef { id: Some("u-bob".into()), ..Default::default() }), BOB_OID, &[]),
                resolved(
                    approved(PersonRef { email: Some("robert@example.com".into()), ..Default::default() }),
                    BOB_OID,
                    &[],
                ),
            ],
            Some(RefusalCode::NotEnoughApprovals),
        ),
        (
            "a name alone does not count",
            "",
            vec![ApproverFacts::unresolved(approved(PersonRef { name: Some("Bob".into()), ..Default::default() }))],
            Some(RefusalCode::NotEnoughApprovals),
        ),
        (
            "two people",
            "min_approvals = 2",
            vec![ApproverFacts::unresolved(approved(bob())), ApproverFacts::unresolved(approved(carol()))],
            None,
        ),
        (
            "a pending approval besides enough approvals",
            "",
            vec![
                ApproverFacts::unresolved(approved(bob())),
                ApproverFacts::unresolved(approval(carol(), ApprovalDecision::Pending)),
            ],
            None,
        ),
    ];
    for (what, extra, approvers, want) in cases {
        let got = portal_policy(extra).evaluate(&t, &facts_with(approvers));
        match (want, got) {
            (None, Decision::Plan(_)) => {}
            (Some(code), Decision::Refused(r)) => {
                assert_eq!(r.code, code, "{what}: {}", r.message);
                assert_eq!(r.rule.as_deref(), Some("portal-access"), "{what}");
            }
            (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn the_count_explains_what_did_not_count() {
    let t = ticket();
    let f = facts_with(vec![
        ApproverFacts::unresolved(approved(bob())),
        ApproverFacts::unresolved(approved(bob())),
        ApproverFacts::unresolved(approval(carol(), ApprovalDecision::Pending)),
    ]);
    let r = expect_refusal(portal_policy("min_approvals = 2").evaluate(&t, &f));
    assert_eq!(r.code, RefusalCode::NotEnoughApprovals);
    for part in ["needs 2 approvals", "has 1", "1 pending", "1 repeated"] {
        assert!(r.message.contains(part), "{part:?} not in {:?}", r.message);
    }
}

#[test]
fn one_rejection_refuses_even_with_enough_approvals() {
    let t = ticket();
    let f = facts_with(vec![
        ApproverFacts::unresolved(approved(bob())),
        ApproverFacts::unresolved(approval(carol(), ApprovalDecision::Rejected)),
        ApproverFacts::unresolved(approved(dave())),
    ]);
    let r = expect_refusal(portal_policy("").evaluate(&t, &f));
    assert_eq!(r.code, RefusalCode::NotApproved);
    assert!(r.message.contains("Carol"), "{}", r.message);
}

#[test]
fn the_requester_may_not_approve_their_own_ticket() {
    // Carol asks for Alice; Carol approves.
    let mut t = ticket();
    t.requested_by = Some(carol());
    t.approvals = vec![approved(carol())];
    let r = expect_refusal(portal_policy("").evaluate(&t, &facts(&t)));
    assert_eq!(r.code, RefusalCode::SelfApproval);
    assert!(r.message.contains("Carol approved their own request"), "{}", r.message);

    // An e-mail differing only in case is the same person.
    t.approvals = vec![approved(PersonRef { email: Some("CAROL@EXAMPLE.COM".into()), ..Default::default() })];
    assert_eq!(refusal_code("", &t, &facts(&t)), RefusalCode::SelfApproval);
}

#[test]
fn the_receiver_may_not_approve_their_own_access() {
    let mut t = ticket();
    t.requested_by = Some(carol());
    t.approvals = vec![approved(alice())];
    assert_eq!(refusal_code("", &t, &facts(&t)), RefusalCode::SelfApproval);

    // Known only by the Entra object: the approver's reference shares nothing with requested_for.
    let stranger = PersonRef { id: Some("u-other".into()), ..Default::default() };
    let f = facts_with(vec![resolved(approved(stranger), ALICE_OID, &[])]);
    let r = expect_refusal(portal_policy("").evaluate(&t, &f));
    assert_eq!(r.code, RefusalCode::SelfApproval);
    assert!(r.message.contains("for themselves"), "{}", r.message);
}

#[test]
fn a_self_approval_refuses_even_when_someone_else_approved_too() {
    let mut t = ticket();
    t.approvals = vec![approved(bob()), approved(alice())];
    assert_eq!(refusal_code("", &t, &facts(&t)), RefusalCode::SelfApproval);
}

#[test]
fn self_approval_may_be_allowed_explicitly() {
    let mut t = ticket();
    t.approvals = vec![approved(alice())];
    expect_plan(portal_policy("approver_not_requester = false").evaluate(&t, &facts(&t)));
}

#[test]
fn approvers_must_belong_to_the_approver_group() {
    let t = ticket();
    let extra = format!("approver_group = \"{APPROVERS_GROUP}\"");
    let p = portal_policy(&extra);
    let groups = p.approver_groups_needed(&p.matching_rules(&t));
    assert_eq!(groups.iter().collect::<Vec<_>>(), [APPROVERS_GROUP]);

    let not_member = facts_with(vec![resolved(approved(bob()), BOB_OID, &[])]);
    let r = expect_refusal(p.evaluate(&t, &not_member));
    assert_eq!(r.code, RefusalCode::ApproverNotAuthorized);
    assert!(r.message.contains(APPROVERS_GROUP), "{}", r.message);

    // Not looked up in Entra: no group is known, so membership is not assumed.
    assert_eq!(expect_refusal(p.evaluate(&t, &facts(&t))).code, RefusalCode::ApproverNotAuthorized);

    let member = facts_with(vec![resolved(approved(bob()), BOB_OID, &[&APPROVERS_GROUP.to_uppercase()])]);
    let plan = expect_plan(p.evaluate(&t, &member));
    assert!(plan.grants[0].reasons.iter().any(|r| r.contains(APPROVERS_GROUP)), "{:?}", plan.grants[0].reasons);

    // Two approvals needed, only one approver a member.
    let p2 = portal_policy(&format!("{extra}\nmin_approvals = 2"));
    let one_member = facts_with(vec![
        resolved(approved(bob()), BOB_OID, &[APPROVERS_GROUP]),
        resolved(approved(carol()), CAROL_OID, &[]),
    ]);
    assert_eq!(expect_refusal(p2.evaluate(&t, &one_member)).code, RefusalCode::ApproverNotAuthorized);
}

#[test]
fn a_justification_may_be_required() {
    let mut t = ticket();
    for missing in [None, Some("   ".to_string())] {
        t.justification = missing;
        assert_eq!(refusal_code("require_justification = true", &t, &facts(&t)), RefusalCode::JustificationMissing);
    }
    t.justification = Some("quarterly review".into());
    expect_plan(portal_policy("require_justification = true").evaluate(&t, &facts(&t)));
    t.justification = None;
    expect_plan(portal_policy("").evaluate(&t, &facts(&t)));
}

#[test]
fn requirements_are_checked_in_a_fixed_order() {
    let extra = format!("require_justification = true\nmin_approvals = 2\napprover_group = \"{APPROVERS_GROUP}\"");
    let mut t = ticket();
    t.justification = None;
    t.approvals = vec![approved(alice()), approval(carol(), ApprovalDecision::Rejected)];
    let mut f = facts(&t);
    let code = |f: &grantbridge::policy::Facts| refusal_code(&extra, &t, f);

    f.confirmation = Confirmation::NotConfigured;
    assert_eq!(code(&f), RefusalCode::ConfirmationUnavailable);
    f.confirmation = Confirmation::Confirmed { detail: String::new() };
    assert_eq!(code(&f), RefusalCode::NotApproved);
    f.approvers.retain(|a| a.approval.decision != ApprovalDecision::Rejected);
    assert_eq!(code(&f), RefusalCode::NotEnoughApprovals);
    f.approvers.push(ApproverFacts::unresolved(approved(dave())));
    assert_eq!(code(&f), RefusalCode::SelfApproval);
    f.approvers.retain(|a| !a.approval.approver.same_person(&alice()));
    f.approvers.push(ApproverFacts::unresolved(approved(bob())));
    assert_eq!(code(&f), RefusalCode::ApproverNotAuthorized);
    for a in &mut f.approvers {
        a.groups.insert(APPROVERS_GROUP.to_string());
    }
    assert_eq!(code(&f), RefusalCode::JustificationMissing);
}

#[test]
fn a_receiver_without_an_object_id_is_refused() {
    let t = ticket();
    let mut f = facts(&t);
    f.principal = principal(" ");
    let r = expect_refusal(portal_policy("").evaluate(&t, &f));
    assert_eq!(r.code, RefusalCode::PrincipalNotFound);
}

#[test]
fn in_all_matches_mode_one_failing_rule_refuses_everything() {
    let p = policy(&format!(
        r#"
[policy]
mode = "all_matches"
[[policy.rules]]
name = "portal"
request_types = ["Permissions portal access"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
[[policy.rules]]
name = "strict"
sources = ["servicenow"]
require_justification = true
[[policy.rules.grants]]
kind = "group_member"
group_id = "{DEV_GROUP}"
"#
    ));
    let mut t = ticket();
    t.justification = None;
    let r = expect_refusal(p.evaluate(&t, &facts(&t)));
    assert_eq!(r.code, RefusalCode::JustificationMissing);
    assert_eq!(r.rule.as_deref(), Some("strict"));
}
