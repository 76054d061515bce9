//! Property test: random policies, tickets and facts never yield a target the matched rule does not declare, nor
//! a duration above the rule's maximum; and the same input always gives the same decision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use grantbridge::domain::{
    ApprovalDecision, Confirmation, Decision, GrantTarget, PersonRef, PimAccess, RefusalCode, TicketAction, TicketEvent,
};
use grantbridge::policy::{ApproverFacts, Facts, Policy, PolicyConfig};
use serde_json::{Map, Value, json};

use crate::helpers::*;

const SEED: u64 = 0x6772_616e_7462;
const CASES: usize = 10_000;

const RULE_TYPES: [&str; 4] = ["Portal access", "App access", "Cloud admin", "Key Vault reader"];
const TICKET_TYPES: [&str; 7] =
    ["Portal access", "app ACCESS ", "Cloud admin", "Key Vault reader", "Unknown", "Portal", "Admin please"];
const FIELDS: [&str; 2] = ["environment", "team"];
const VALUES: [&str; 4] = ["dev", "prod", "test", "blue"];
const DURATIONS: [(&str, u64); 7] = [
    ("30m", 1800),
    ("1h", 3600),
    ("PT4H", 4 * 3600),
    ("8h", 8 * 3600),
    ("24h", 86_400),
    ("2d", 172_800),
    ("1w", 604_800),
];

/// The targets a case's policy may use; small, so rules overlap and de-duplication is exercised.
struct Pool {
    groups: Vec<String>,
    roles: Vec<String>,
    scopes: Vec<(String, String)>,
    approver_groups: Vec<String>,
}

fn guid(rng: &mut fastrand::Rng) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..),
        rng.u16(..),
        rng.u64(..1 << 48)
    )
}

/// Either spelling of a GUID: the policy must compare them as one.
fn spelled(rng: &mut fastrand::Rng, id: &str) -> String {
    if rng.u8(..4) == 0 { id.to_uppercase() } else { id.to_string() }
}

fn pool(rng: &mut fastrand::Rng) -> Pool {
    let sub = guid(rng);
    let scopes = vec![
        (format!("/subscriptions/{sub}"), format!("/subscriptions/{sub}")),
        (format!("/SUBSCRIPTIONS/{sub}/resourcegroups/rg-app"), format!("/subscriptions/{sub}/resourceGroups/rg-app")),
        (
            format!("/subscriptions/{sub}/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv1"),
            format!("/subscriptions/{sub}/resourceGroups/rg-app/providers/Microsoft.KeyVault/vaults/kv1"),
        ),
        (
            "/providers/Microsoft.Management/managementGroups/mg-prod".to_string(),
            "/providers/Microsoft.Management/managementGroups/mg-prod".to_string(),
        ),
    ];
    Pool {
        groups: (0..3).map(|_| guid(rng)).collect(),
        roles: (0..2).map(|_| guid(rng)).collect(),
        scopes,
        approver_groups: (0..2).map(|_| guid(rng)).collect(),
    }
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

fn subset<T: Clone>(rng: &mut fastrand::Rng, items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = items.iter().filter(|_| rng.bool()).cloned().collect();
    if out.is_empty() {
        out.push(pick(rng, items).clone());
    }
    out
}

/// One target of `kind`: its config keys, and the target the policy must plan for it.
fn target(rng: &mut fastrand::Rng, pool: &Pool, kind: &str) -> (Map<String, Value>, GrantTarget) {
    let mut keys = Map::new();
    let fresh_or_pooled = |rng: &mut fastrand::Rng, from: &[String]| {
        if rng.u8(..5) == 0 { guid(rng) } else { pick(rng, from).clone() }
    };
    let t = match kind {
        "group_member" => {
            let id = fresh_or_pooled(rng, &pool.groups);
            keys.insert("group_id".into(), json!(spelled(rng, &id)));
            GrantTarget::GroupMember { group_id: id }
        }
        "pim_group" => {
            let id = fresh_or_pooled(rng, &pool.groups);
            let access = if rng.bool() { PimAccess::Member } else { PimAccess::Owner };
            keys.insert("group_id".into(), json!(spelled(rng, &id)));
            keys.insert("access".into(), json!(if access == PimAccess::Member { "member" } else { "owner" }));
            GrantTarget::PimGroup { group_id: id, access }
        }
        "pim_role" => {
            let id = fresh_or_pooled(rng, &pool.roles);
            keys.insert("role_definition_id".into(), json!(spelled(rng, &id)));
            let scope = match rng.u8(..3) {
                0 => "/".to_string(),
                1 => {
                    keys.insert("directory_scope_id".into(), json!("/"));
                    "/".to_string()
                }
                _ => {
                    let au = pick(rng, &pool.groups).clone();
                    keys.insert("directory_scope_id".into(), json!(format!("/administrativeUnits/{au}")));
                    format!("/administrativeUnits/{au}")
                }
            };
            GrantTarget::PimRole { role_definition_id: id, directory_scope_id: scope }
        }
        _ => {
            let (written, canonical) = pick(rng, &pool.scopes).clone();
            let role = fresh_or_pooled(rng, &pool.roles);
            keys.insert("scope".into(), json!(written));
            keys.insert("role_definition_id".into(), json!(role));
            GrantTarget::AzureRbac { scope: canonical, role_definition_id: role }
        }
    };
    if rng.bool() {
        keys.insert("label".into(), json!(format!("label {}", rng.u16(..))));
    }
    (keys, t)
}

/// What the generator declared for a rule, independently of the policy's own bookkeeping.
struct Declared {
    targets: BTreeSet<GrantTarget>,
    max: Option<Duration>,
}

fn rule(rng: &mut fastrand::Rng, pool: &Pool, i: usize) -> (Value, Declared) {
    let mut r = Map::new();
    r.insert("name".into(), json!(format!("r{i}")));
    if rng.bool() {
        r.insert("sources".into(), json!(subset(rng, &SOURCES)));
    }
    if rng.bool() {
        r.insert("request_types".into(), json!(subset(rng, &RULE_TYPES)));
    }
    if rng.u8(..4) == 0 {
        let field = *pick(rng, &FIELDS);
        r.insert("fields".into(), json!({ field: subset(rng, &VALUES) }));
    }
    if !r.contains_key("sources") && !r.contains_key("request_types") && !r.contains_key("fields") {
        r.insert("sources".into(), json!([pick(rng, &SOURCES)]));
    }
    r.insert("require_confirmation".into(), json!(rng.bool()));
    r.insert("min_approvals".into(), json!(if rng.u8(..5) == 0 { 2 } else { 1 }));
    r.insert("approver_not_requester".into(), json!(rng.u8(..4) != 0));
    if rng.u8(..4) == 0 {
        r.insert("approver_group".into(), json!(pick(rng, &pool.approver_groups)));
    }
    r.insert("require_justification".into(), json!(rng.u8(..4) == 0));
    r.insert("dry_run".into(), json!(rng.u8(..8) == 0));

    let mut default = rng.bool().then(|| *pick(rng, &DURATIONS));
    let mut max = rng.bool().then(|| *pick(rng, &DURATIONS));
    if let (Some(d), Some(m)) = (default, max)
        && d.1 > m.1
    {
        (default, max) = (Some(m), Some(d));
    }

    let mut targets = BTreeSet::new();
    let mut fixed = BTreeSet::new();
    let mut grants = Vec::new();
    let mut time_bound = false;
    for _ in 0..rng.usize(1..=3) {
        let kind = *pick(rng, &["group_member", "pim_group", "pim_role", "azure_rbac"]);
        time_bound |= kind.starts_with("pim");
        let mut g = Map::new();
        g.insert("kind".into(), json!(kind));
        if rng.u8(..3) == 0 {
            g.insert("choose_by".into(), json!(pick(rng, &FIELDS)));
            let mut options = Map::new();
            let mut keys: Vec<String> = subset(rng, &VALUES).into_iter().map(str::to_string).collect();
            if rng.u8(..4) == 0 {
                // An option keyed by something that looks like an id: still just a value to compare.
                keys.push(pick(rng, &pool.groups).clone());
            }
            for key in keys {
                let (keys, t) = target(rng, pool, kind);
                targets.insert(t);
                options.insert(key, Value::Object(keys));
            }
            g.insert("options".into(), Value::Object(options));
        } else {
            let (keys, t) = loop {
                let (keys, t) = target(rng, pool, kind);
                if !fixed.contains(&t) {
                    break (keys, t);
                }
            };
            fixed.insert(t.clone());
            targets.insert(t);
            g.extend(keys);
        }
        grants.push(Value::Object(g));
    }
    if time_bound && default.is_none() && max.is_none() {
        max = Some(*pick(rng, &DURATIONS));
    }
    if let Some((text, _)) = default {
        r.insert("default_duration".into(), json!(text));
    }
    if let Some((text, _)) = max {
        r.insert("max_duration".into(), json!(text));
    }
    r.insert("grants".into(), Value::Array(grants));
    (Value::Object(r), Declared { targets, max: max.map(|(_, secs)| Duration::from_secs(secs)) })
}

fn random_policy(rng: &mut fastrand::Rng, pool: &Pool) -> (Policy, BTreeMap<String, Declared>) {
    let mut rules = Vec::new();
    let mut declared = BTreeMap::new();
    for i in 0..rng.usize(1..=4) {
        let (r, d) = rule(rng, pool, i);
        rules.push(r);
        declared.insert(format!("r{i}"), d);
    }
    let config = json!({
        "mode": if rng.bool() { "first_match" } else { "all_matches" },
        "dry_run": rng.u8(..10) == 0,
        "rules": rules,
    });
    let config: PolicyConfig = serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("{e}: {config}"));
    let policy = config.build("property", &SOURCES).unwrap_or_else(|e| panic!("generated policy refused: {e}"));
    (policy, declared)
}

fn people() -> Vec<(PersonRef, Option<&'static str>)> {
    vec![
        (alice(), Some(ALICE_OID)),
        (bob(), Some(BOB_OID)),
        (carol(), Some(CAROL_OID)),
        (dave(), None),
        (PersonRef { name: Some("Nameless".into()), ..Default::default() }, None),
        (PersonRef { email: Some("BOB@EXAMPLE.COM".into()), ..Default::default() }, Some(BOB_OID)),
    ]
}

fn random_ticket(rng: &mut fastrand::Rng, pool: &Pool) -> TicketEvent {
    let mut t = ticket();
    t.action = match rng.u8(..20) {
        0 => TicketAction::Rejected,
        1 => TicketAction::Cancelled,
        2 => TicketAction::Other("commented".into()),
        _ => TicketAction::Approved,
    };
    t.source = match rng.u8(..20) {
        0 => "elsewhere".to_string(),
        n if n % 2 == 0 => "jira".to_string(),
        _ => "servicenow".to_string(),
    };
    t.request_type = match rng.u8(..10) {
        0 => None,
        1 | 2 => Some(pick(rng, &TICKET_TYPES).to_string()),
        3 => Some(format!("  {} ", pick(rng, &RULE_TYPES).to_uppercase())),
        _ => Some(pick(rng, &RULE_TYPES).to_string()),
    };
    let long = "prod".repeat(100);
    let values: Vec<String> =
        ["dev", "prod", "test", "blue", "PROD", " dev ", "", "staging", "App Prod", "../../x", "dev,prod", &long]
            .iter()
            .map(|s| s.to_string())
            .chain([pick(rng, &pool.groups).clone(), guid(rng), pick(rng, &pool.roles).to_uppercase()])
            .collect();
    t.fields = BTreeMap::new();
    for name in FIELDS.iter().chain(["extra"].iter()) {
        if rng.u8(..10) < 7 {
            t.fields.insert(name.to_string(), pick(rng, &values).clone());
        }
    }
    t.requested_duration = match rng.u8(..12) {
        0..=4 => None,
        5 => Some(Duration::ZERO),
        6 => Some(Duration::from_secs(1)),
        7 => Some(Duration::from_secs(30 * 60)),
        8 => Some(Duration::from_secs(25 * 3600)),
        9 => Some(Duration::from_secs(30 * 86_400)),
        10 => Some(Duration::from_secs(100 * 365 * 86_400)),
        _ => Some(Duration::from_secs(u64::MAX)),
    };
    t.justification = match rng.u8(..3) {
        0 => None,
        1 => Some(" ".into()),
        _ => Some("because".into()),
    };
    let all = people();
    if rng.u8(..5) == 0 {
        t.requested_by = Some(pick(rng, &all).0.clone());
    }
    t
}

fn random_facts(rng: &mut fastrand::Rng, pool: &Pool) -> Facts {
    let confirmation = match rng.u8(..20) {
        0..=11 => Confirmation::Confirmed { detail: "read back".into() },
        12..=16 => Confirmation::NotConfigured,
        _ => Confirmation::Skipped,
    };
    let all = people();
    let approvers = (0..rng.usize(0..=3))
        .map(|i| {
            // Mostly a colleague first, so that enough tickets pass their requirements to be planned.
            let (who, oid) =
                if i == 0 && rng.u8(..4) != 0 { all[1 + rng.usize(..2)].clone() } else { pick(rng, &all).clone() };
            let decision = match rng.u8(..20) {
                0..=13 => ApprovalDecision::Approved,
                14..=16 => ApprovalDecision::Pending,
                _ => ApprovalDecision::Rejected,
            };
            let groups = pool.approver_groups.iter().filter(|_| rng.bool()).cloned().collect();
            ApproverFacts {
                approval: approval(who, decision),
                principal: oid.filter(|_| rng.bool()).map(principal),
                groups,
            }
        })
        .collect();
    Facts { confirmation, principal: principal(if rng.u8(..10) == 0 { BOB_OID } else { ALICE_OID }), approvers }
}

#[derive(Default, Debug)]
struct Seen {
    plans: usize,
    multi_rule_plans: usize,
    merged: usize,
    capped: usize,
    permanent: usize,
    chosen: usize,
    refusals: BTreeMap<&'static str, usize>,
    ignored: usize,
}

fn check(policy: &Policy, declared: &BTreeMap<String, Declared>, t: &TicketEvent, f: &Facts, seen: &mut Seen) {
    let decision = policy.evaluate(t, f);
    assert_eq!(decision, policy.evaluate(t, f), "not deterministic");
    assert_eq!(decision, policy.evaluate(&t.clone(), &f.clone()), "not deterministic on a copy");
    let matched: Vec<&str> = policy.matching_rules(t).iter().map(|r| r.name()).collect();

    match decision {
        Decision::Plan(plan) => {
            seen.plans += 1;
            assert_eq!(t.action, TicketAction::Approved);
            assert_eq!(plan.matched_rules, matched);
            if plan.mode == "first_match" {
                assert_eq!(plan.matched_rules.len(), 1);
            }
            if plan.matched_rules.len() > 1 {
                seen.multi_rule_plans += 1;
            }
            assert!(f.approvers.iter().all(|a| a.approval.decision != ApprovalDecision::Rejected));
            if f.confirmation == Confirmation::NotConfigured {
                assert!(matched.iter().all(|r| !policy.rule(r).unwrap().requires_confirmation()));
            }
            if f.confirmation == Confirmation::Skipped {
                assert!(plan.dry_run);
            }
            let distinct: BTreeSet<&GrantTarget> = plan.grants.iter().map(|g| &g.target).collect();
            assert_eq!(distinct.len(), plan.grants.len(), "a target planned twice");
            for g in &plan.grants {
                assert!(matched.contains(&g.rule.as_str()), "{} did not match", g.rule);
                let d = &declared[&g.rule];
                assert!(d.targets.contains(&g.target), "{:?} not declared by {}: {:?}", g.target, g.rule, d.targets);
                let rule = policy.rule(&g.rule).unwrap();
                assert!(rule.declared_targets().iter().any(|dt| dt.target == g.target && dt.label == g.label));
                if let Some(max) = d.max {
                    assert_eq!(rule.max_duration(), Some(max));
                    let duration = g.duration.unwrap_or_else(|| panic!("permanent grant under a maximum: {g:?}"));
                    assert!(duration <= max, "{duration:?} above {max:?}");
                }
                if matches!(g.target, GrantTarget::PimGroup { .. } | GrantTarget::PimRole { .. }) {
                    assert!(g.duration.is_some(), "PIM without a duration: {g:?}");
                }
                assert!(g.reasons.first().is_some_and(|r| r.contains(&format!("rule `{}`", g.rule))));
                seen.capped += usize::from(g.reasons.iter().any(|r| r.contains("capped")));
                seen.permanent += usize::from(g.duration.is_none());
                seen.chosen += usize::from(g.reasons.iter().any(|r| r.contains("chosen by")));
                seen.merged += usize::from(g.reasons.iter().any(|r| r.contains("also grants")));
            }
        }
        Decision::Refused(r) => {
            if let Some(rule) = &r.rule {
                assert!(matched.contains(&rule.as_str()), "refused by {rule}, which did not match");
            }
            if r.code == RefusalCode::NoMatchingRule {
                assert!(matched.is_empty());
            }
            *seen.refusals.entry(r.code.as_str()).or_default() += 1;
        }
        Decision::Ignored { .. } => {
            assert_ne!(t.action, TicketAction::Approved);
            seen.ignored += 1;
        }
    }
}

#[test]
fn plans_never_exceed_what_the_policy_declares() {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut seen = Seen::default();
    for _ in 0..CASES {
        let pool = pool(&mut rng);
        let (policy, declared) = random_policy(&mut rng, &pool);
        let t = random_ticket(&mut rng, &pool);
        let f = random_facts(&mut rng, &pool);
        check(&policy, &declared, &t, &f, &mut seen);
    }

    // The generator must reach every outcome, or the property says little.
    assert!(seen.plans > CASES / 20, "{seen:?}");
    assert!(seen.multi_rule_plans > 10 && seen.merged > 0 && seen.capped > 50, "{seen:?}");
    assert!(seen.permanent > 0 && seen.chosen > 0 && seen.ignored > 0, "{seen:?}");
    for code in [
        RefusalCode::NoMatchingRule,
        RefusalCode::NotApproved,
        RefusalCode::NotEnoughApprovals,
        RefusalCode::SelfApproval,
        RefusalCode::ApproverNotAuthorized,
        RefusalCode::JustificationMissing,
        RefusalCode::InvalidFieldValue,
        RefusalCode::ConfirmationUnavailable,
    ] {
        assert!(seen.refusals.get(code.as_str()).is_some_and(|n| *n > 0), "never refused with {code:?}: {seen:?}");
    }
}
