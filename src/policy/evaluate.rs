//! The decision: an approved ticket and what was learnt about it (`Facts`) -> a plan or a refusal. Pure.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::domain::{
    Approval, ApprovalDecision, Confirmation, Decision, PersonRef, Plan, PlannedGrant, Principal, Refusal, RefusalCode,
    TicketAction, TicketEvent,
};
use crate::policy::duration::format_duration;
use crate::policy::rules::{DeclaredTarget, GrantSpec, Policy, Rule, fold};
use crate::policy::{plain, shown};

/// What the caller established before the decision, by asking the ticketing system and Entra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub confirmation: Confirmation,
    /// Who receives access, resolved in Entra.
    pub principal: Principal,
    /// Every approval on the ticket, whatever its decision, as confirmed with the ticketing system (or as the
    /// webhook said when confirmation is not configured), each with what Entra says about the approver.
    pub approvers: Vec<ApproverFacts>,
}

/// One approval and its approver as Entra knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverFacts {
    pub approval: Approval,
    /// `None`: not looked up, or not found.
    pub principal: Option<Principal>,
    /// Those of [`Policy::approver_groups_needed`] the approver is a member of.
    pub groups: BTreeSet<String>,
}

impl ApproverFacts {
    /// An approval whose approver was not looked up in Entra: no principal, no groups.
    pub fn unresolved(approval: Approval) -> Self {
        ApproverFacts { approval, principal: None, groups: BTreeSet::new() }
    }
}

impl Facts {
    /// Facts with approvers not looked up in Entra; enough for rules without `approver_group`.
    pub fn new(confirmation: Confirmation, principal: Principal, approvals: Vec<Approval>) -> Self {
        Facts { confirmation, principal, approvers: approvals.into_iter().map(ApproverFacts::unresolved).collect() }
    }
}

/// The approvals sorted into what counts and what does not.
struct Tally<'a> {
    /// Distinct people who approved; each with every entry that denotes them (one person may appear twice).
    people: Vec<Vec<&'a ApproverFacts>>,
    /// Approved, but naming no one we could tell apart from another approver.
    unidentified: usize,
    /// Approved again by someone already counted.
    repeated: usize,
    pending: usize,
    rejected: Vec<&'a ApproverFacts>,
}

fn present(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

fn identified(a: &ApproverFacts) -> bool {
    present(&a.approval.approver.id)
        || present(&a.approval.approver.email)
        || a.principal.as_ref().is_some_and(|p| !p.object_id.trim().is_empty())
}

fn same_object(a: Option<&Principal>, b: &Principal) -> bool {
    a.is_some_and(|a| !a.object_id.trim().is_empty() && a.object_id.eq_ignore_ascii_case(&b.object_id))
}

fn same_approver(a: &ApproverFacts, b: &ApproverFacts) -> bool {
    a.approval.approver.same_person(&b.approval.approver)
        || b.principal.as_ref().is_some_and(|b| same_object(a.principal.as_ref(), b))
}

fn tally(approvers: &[ApproverFacts]) -> Tally<'_> {
    let mut t = Tally { people: Vec::new(), unidentified: 0, repeated: 0, pending: 0, rejected: Vec::new() };
    for a in approvers {
        match a.approval.decision {
            ApprovalDecision::Pending => t.pending += 1,
            ApprovalDecision::Rejected => t.rejected.push(a),
            // Without an id or e-mail, two approvals could be one person's; such an approval is not counted.
            ApprovalDecision::Approved if !identified(a) => t.unidentified += 1,
            ApprovalDecision::Approved => match t.people.iter_mut().find(|p| p.iter().any(|b| same_approver(a, b))) {
                Some(person) => {
                    person.push(a);
                    t.repeated += 1;
                }
                None => t.people.push(vec![a]),
            },
        }
    }
    t
}

fn who(p: &PersonRef) -> String {
    [&p.name, &p.email, &p.id]
        .into_iter()
        .find_map(|s| s.as_deref().filter(|s| !s.trim().is_empty()))
        .map_or_else(|| "an approver without a name".to_string(), plain)
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 { format!("{n} {one}") } else { format!("{n} {one}s") }
}

impl Policy {
    /// Decides what an event leads to. Pure: the same ticket and facts always give the same decision.
    ///
    /// Every matching rule's requirements must hold (in `all_matches` mode too: one failing rule refuses the
    /// whole decision, which is safer than a partial grant and simpler to explain on the ticket). Requirements
    /// are checked in a fixed order, so a ticket failing several always gets the same refusal: confirmation,
    /// rejection, number of distinct approvers, self-approval, approver group, justification.
    pub fn evaluate(&self, ticket: &TicketEvent, facts: &Facts) -> Decision {
        if ticket.action != TicketAction::Approved {
            return Decision::Ignored {
                reason: format!(
                    "the event says the ticket was {}, not approved: only an approval leads to grants",
                    shown(ticket.action.as_str())
                ),
            };
        }
        let rules = self.matching_rules(ticket);
        if rules.is_empty() {
            return Decision::Refused(self.no_match(ticket));
        }
        if facts.principal.object_id.trim().is_empty() {
            return Decision::Refused(Refusal::new(
                RefusalCode::PrincipalNotFound,
                "the person who receives access has no Entra object id",
            ));
        }

        let tally = tally(&facts.approvers);
        let mut grants: Vec<PlannedGrant> = Vec::new();
        let mut merge_notes = Vec::new();
        for rule in &rules {
            if let Err(refusal) = check_requirements(rule, ticket, facts, &tally) {
                return Decision::Refused(refusal.in_rule(&rule.name));
            }
            match plan_rule(rule, ticket, &tally) {
                Ok(planned) => planned.into_iter().for_each(|g| merge(&mut grants, g, &mut merge_notes)),
                Err(refusal) => return Decision::Refused(refusal.in_rule(&rule.name)),
            }
        }

        let mut notes = vec![match &facts.confirmation {
            Confirmation::Confirmed { detail } => {
                format!("approval confirmed with the ticketing system: {}", plain(detail))
            }
            Confirmation::NotConfigured => {
                "approval not confirmed with the ticketing system (not configured); the rule allows that".to_string()
            }
            Confirmation::Skipped => "approval confirmation skipped (offline planning)".to_string(),
        }];
        let mut dry_run = false;
        if self.dry_run {
            dry_run = true;
            notes.push("dry run: the whole policy is in dry-run mode".to_string());
        }
        for rule in rules.iter().filter(|r| r.dry_run) {
            // One dry-run rule makes the whole plan a dry run: a plan is executed all or nothing.
            dry_run = true;
            notes.push(format!("dry run: rule `{}` is in dry-run mode", rule.name));
        }
        if facts.confirmation == Confirmation::Skipped {
            // An unconfirmed preview must never become an executable plan, whoever passes it on.
            dry_run = true;
            notes.push("dry run: the approval was not confirmed, so this plan is only a preview".to_string());
        }
        notes.extend(merge_notes);

        Decision::Plan(Plan {
            ticket_key: ticket.ticket_key.clone(),
            principal: Some(facts.principal.clone()),
            grants,
            dry_run,
            confirmation: facts.confirmation.clone(),
            mode: self.mode.as_str().to_string(),
            matched_rules: rules.iter().map(|r| r.name.clone()).collect(),
            notes,
        })
    }

    fn no_match(&self, ticket: &TicketEvent) -> Refusal {
        if self.rules.is_empty() {
            return Refusal::new(RefusalCode::NoMatchingRule, "the policy has no rules, so nothing can be granted");
        }
        let mut looked_at = vec![
            format!("source {}", shown(&ticket.source)),
            match &ticket.request_type {
                Some(t) => format!("request type {}", shown(t)),
                None => "no request type".to_string(),
            },
        ];
        let field_names: BTreeSet<&String> = self.rules.iter().flat_map(|r| r.fields.keys()).collect();
        for name in field_names {
            match ticket.fields.get(name) {
                Some(v) => looked_at.push(format!("{name} = {}", shown(v))),
                None => looked_at.push(format!("no {name}")),
            }
        }
        Refusal::new(
            RefusalCode::NoMatchingRule,
            format!(
                "no policy rule matches this ticket ({}; {} checked)",
                looked_at.join(", "),
                plural(self.rules.len(), "rule")
            ),
        )
    }
}

fn check_requirements(rule: &Rule, ticket: &TicketEvent, facts: &Facts, tally: &Tally<'_>) -> Result<(), Refusal> {
    let refuse = |code, message: String| Err(Refusal::new(code, message));
    if facts.confirmation == Confirmation::NotConfigured && rule.require_confirmation {
        return refuse(
            RefusalCode::ConfirmationUnavailable,
            format!(
                "the rule requires the approval to be confirmed with the ticketing system, and confirmation is not \
                 configured for source {}",
                shown(&ticket.source)
            ),
        );
    }

    // Jira Service Management and ServiceNow treat a rejection as final, so one rejection outweighs any approvals.
    if let Some(first) = tally.rejected.first() {
        return refuse(
            RefusalCode::NotApproved,
            format!("rejected by {}: a rejection in the ticketing system is final", who(&first.approval.approver)),
        );
    }

    let min = rule.min_approvals as usize;
    if tally.people.len() < min {
        let mut detail = Vec::new();
        if tally.pending > 0 {
            detail.push(format!("{} pending", tally.pending));
        }
        if tally.unidentified > 0 {
            detail.push(format!("{} from approvers without an id or e-mail, not counted", tally.unidentified));
        }
        if tally.repeated > 0 {
            detail.push(format!("{} repeated by the same person", tally.repeated));
        }
        let detail = if detail.is_empty() { String::new() } else { format!(" ({})", detail.join(", ")) };
        return refuse(
            RefusalCode::NotEnoughApprovals,
            format!(
                "needs {} from distinct people; the ticket has {}{detail}",
                plural(min, "approval"),
                tally.people.len()
            ),
        );
    }

    if rule.approver_not_requester {
        // A self-approval refuses even when others approved too: the ticketing system should not have let it
        // count, and a person should look at a ticket where it did.
        for a in tally.people.iter().flatten() {
            let approver = &a.approval.approver;
            let name = who(approver);
            if ticket.requested_by.as_ref().is_some_and(|r| r.same_person(approver)) {
                return refuse(RefusalCode::SelfApproval, format!("{name} approved their own request"));
            }
            if ticket.requested_for.as_ref().is_some_and(|r| r.same_person(approver))
                || same_object(a.principal.as_ref(), &facts.principal)
            {
                return refuse(RefusalCode::SelfApproval, format!("{name} approved access for themselves"));
            }
        }
    }

    if let Some(group) = &rule.approver_group {
        let members = tally
            .people
            .iter()
            .filter(|entries| entries.iter().any(|a| a.groups.iter().any(|g| g.eq_ignore_ascii_case(group))))
            .count();
        if members < min {
            return refuse(
                RefusalCode::ApproverNotAuthorized,
                format!(
                    "needs {} from members of the Entra group {group}; {members} of the {} approving are members",
                    plural(min, "approval"),
                    tally.people.len()
                ),
            );
        }
    }

    if rule.require_justification && ticket.justification.as_deref().is_none_or(|j| j.trim().is_empty()) {
        return refuse(
            RefusalCode::JustificationMissing,
            "the rule requires a justification, and the ticket has none".to_string(),
        );
    }
    Ok(())
}

/// The requirements that held, for the plan's reasons.
fn requirements_met(rule: &Rule, tally: &Tally<'_>) -> String {
    let names: Vec<String> =
        tally.people.iter().filter_map(|entries| entries.first()).map(|a| who(&a.approval.approver)).collect();
    let mut met = vec![format!("approved by {} (at least {} required)", names.join(", "), rule.min_approvals)];
    if rule.approver_not_requester {
        met.push("no approver is the requester or the receiver".to_string());
    }
    if let Some(group) = &rule.approver_group {
        met.push(format!("approvers are members of {group}"));
    }
    if rule.require_justification {
        met.push("justification given".to_string());
    }
    format!("requirements met: {}", met.join("; "))
}

fn plan_rule(rule: &Rule, ticket: &TicketEvent, tally: &Tally<'_>) -> Result<Vec<PlannedGrant>, Refusal> {
    let matched = rule.matched_because(ticket);
    let met = requirements_met(rule, tally);
    let (duration, duration_reason) = rule_duration(rule, ticket.requested_duration);
    let mut planned = Vec::with_capacity(rule.grants.len());
    for spec in &rule.grants {
        let (declared, chosen): (&DeclaredTarget, Option<String>) = match spec {
            GrantSpec::Fixed(d) => (d, None),
            GrantSpec::Chosen { field, options } => {
                let allowed = || options.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ");
                let value = ticket.fields.get(field).filter(|v| !v.trim().is_empty());
                let Some(value) = value else {
                    return Err(Refusal::new(
                        RefusalCode::InvalidFieldValue,
                        format!("the field {field} is missing; the rule chooses the access by it among: {}", allowed()),
                    ));
                };
                let folded = fold(value);
                let Some((_, d)) = options.iter().find(|(k, _)| *k == folded) else {
                    return Err(Refusal::new(
                        RefusalCode::InvalidFieldValue,
                        format!("the field {field} is {}, which is not one of: {}", shown(value), allowed()),
                    ));
                };
                (d, Some(format!("chosen by the field {field} = {}", shown(value))))
            }
        };
        let mut reasons = vec![matched.clone(), met.clone()];
        reasons.extend(chosen);
        reasons.push(duration_reason.clone());
        planned.push(PlannedGrant {
            rule: rule.name.clone(),
            target: declared.target.clone(),
            label: declared.label.clone(),
            duration,
            reasons,
        });
    }
    Ok(planned)
}

/// The requested duration, else the default, else the maximum; never above the maximum.
fn rule_duration(rule: &Rule, requested: Option<Duration>) -> (Option<Duration>, String) {
    let f = format_duration;
    let zero_note = if requested == Some(Duration::ZERO) { " (a requested duration of zero was ignored)" } else { "" };
    let requested = requested.filter(|d| !d.is_zero());
    let (duration, reason) = match (requested, rule.default_duration, rule.max_duration) {
        (Some(r), _, Some(m)) if r > m => {
            (Some(m), format!("requested {}, capped to the rule's maximum of {}", f(r), f(m)))
        }
        (Some(r), _, _) => (Some(r), format!("duration {}, as requested", f(r))),
        (None, Some(d), _) => (Some(d), format!("duration {}: the rule's default, as none was requested", f(d))),
        (None, None, Some(m)) => {
            (Some(m), format!("duration {}: the rule's maximum, as none was requested and there is no default", f(m)))
        }
        (None, None, None) => {
            (None, "permanent until revoked: no duration requested and the rule sets none".to_string())
        }
    };
    (duration, format!("{reason}{zero_note}"))
}

/// Adds a grant unless its target is already planned: the first grant (from the rule that matched first) is kept.
fn merge(grants: &mut Vec<PlannedGrant>, grant: PlannedGrant, notes: &mut Vec<String>) {
    let Some(kept) = grants.iter_mut().find(|k| k.target == grant.target) else {
        grants.push(grant);
        return;
    };
    let line = if kept.rule == grant.rule {
        format!("rule `{}` yields {} twice; it is granted once", grant.rule, kept.label)
    } else {
        let duration = grant.duration.map_or_else(|| "permanent".to_string(), format_duration);
        format!(
            "rule `{}` also grants {} ({duration}); the grant from rule `{}`, which comes first, is kept",
            grant.rule, kept.label, kept.rule
        )
    };
    kept.reasons.push(line.clone());
    notes.push(line);
}
