//! The decision with the network: confirmation, principal and approver lookups, then the policy.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::confirm::{self, Outcome};
use super::principal::{self, PrincipalConfig, Resolved};
use super::{Decided, Transient, missing_receiver, offline_principal};
use crate::domain::{Approval, Confirmation, Decision, Principal, Refusal, RefusalCode, TicketAction, TicketEvent};
use crate::entra::{GraphDirectory, GraphError};
use crate::inbound::Source;
use crate::inbound::normalize::{Normalized, normalize};
use crate::itsm::ItsmApi;
use crate::policy::{ApproverFacts, Facts, Policy, Rule};

/// Everything a worker needs to decide events; shared by all workers.
pub struct Decider {
    pub policy: Arc<Policy>,
    pub directory: Option<GraphDirectory>,
    pub principals: PrincipalConfig,
}

impl Decider {
    /// Decides one stored event. `Err` means an upstream is unreachable: the worker retries later.
    pub async fn decide(
        &self,
        source: &Source,
        body: &str,
        delivery_id: Option<&str>,
        received_at_ms: i64,
    ) -> Result<Decided, Transient> {
        let ticket = match normalize(source.name(), source.tickets(), body, delivery_id, received_at_ms) {
            Normalized::Ignored(reason) => return Ok(Decided { ticket: None, decision: Decision::Ignored { reason } }),
            Normalized::Ticket(ticket) => *ticket,
        };
        let decision = self.decide_ticket(source, &ticket).await?;
        Ok(Decided { ticket: Some(ticket), decision })
    }

    async fn decide_ticket(&self, source: &Source, ticket: &TicketEvent) -> Result<Decision, Transient> {
        let rules = self.policy.matching_rules(ticket);
        if ticket.action != TicketAction::Approved || rules.is_empty() {
            // Nothing to look up: the policy says why there is no plan (not an approval, or no rule).
            let facts =
                Facts { confirmation: Confirmation::Skipped, principal: offline_principal(ticket), approvers: vec![] };
            return Ok(self.policy.evaluate(ticket, &facts));
        }
        if let Some(refused) = missing_receiver(ticket) {
            return Ok(refused);
        }
        let api = source.api();
        let (confirmation, approvals) = match (api, source.confirms()) {
            (Some(api), true) => match confirm::confirm(api, source.tickets(), ticket).await? {
                Outcome::Confirmed(c) => (Confirmation::Confirmed { detail: c.detail }, c.approvals),
                Outcome::Refused(refusal) => return Ok(Decision::Refused(refusal)),
            },
            _ => (Confirmation::NotConfigured, ticket.approvals.clone()),
        };
        let receiver = ticket.requested_for.clone().unwrap_or_default();
        let (principal, notes) = match &self.directory {
            Some(directory) => match principal::resolve(directory, &self.principals, api, &receiver).await? {
                Resolved::Found(p) => (p, vec![]),
                Resolved::NotFound(message) => {
                    return Ok(Decision::Refused(Refusal::new(RefusalCode::PrincipalNotFound, message)));
                }
            },
            None if self.all_dry_run(&rules) => (
                offline_principal(ticket),
                vec!["no [entra] directory is configured: the receiver was not looked up".into()],
            ),
            None => {
                return Ok(Decision::Refused(Refusal::new(
                    RefusalCode::PrincipalNotFound,
                    "no [entra] directory is configured, so the receiver cannot be looked up",
                )));
            }
        };
        let approvers = self.approver_facts(&rules, api, approvals).await?;
        let mut decision = self.policy.evaluate(ticket, &Facts { confirmation, principal, approvers });
        if let Decision::Plan(plan) = &mut decision {
            plan.notes.extend(notes);
        }
        Ok(decision)
    }

    fn all_dry_run(&self, rules: &[&Rule]) -> bool {
        self.policy.dry_run() || rules.iter().all(|r| r.dry_run())
    }

    /// Approvers are looked up in Entra when the directory is configured: their object ids catch self-approval
    /// under another name, and the rules' approver groups need their memberships.
    async fn approver_facts(
        &self,
        rules: &[&Rule],
        api: Option<&ItsmApi>,
        approvals: Vec<Approval>,
    ) -> Result<Vec<ApproverFacts>, Transient> {
        let Some(directory) = &self.directory else {
            return Ok(approvals.into_iter().map(ApproverFacts::unresolved).collect());
        };
        let groups: Vec<String> = self.policy.approver_groups_needed(rules).into_iter().collect();
        let mut facts = Vec::with_capacity(approvals.len());
        for approval in approvals {
            let principal: Option<Principal> =
                match principal::resolve(directory, &self.principals, api, &approval.approver).await? {
                    Resolved::Found(p) => Some(p),
                    Resolved::NotFound(_) => None,
                };
            let member_of: BTreeSet<String> = match (&principal, groups.is_empty()) {
                (Some(p), false) => match directory.member_of_groups(&p.object_id, &groups).await {
                    Ok(ids) => ids.into_iter().collect(),
                    Err(GraphError::Upstream(e)) if e.is_transient() => {
                        return Err(Transient(format!("Microsoft Graph: checkMemberGroups failed: {e}")));
                    }
                    // A refusal (403: the permission is missing) will not pass by waiting: the approver's
                    // membership cannot be shown, so the rule's approver requirement is not met.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check an approver's group membership");
                        BTreeSet::new()
                    }
                },
                _ => BTreeSet::new(),
            };
            facts.push(ApproverFacts { approval, principal, groups: member_of });
        }
        Ok(facts)
    }
}
