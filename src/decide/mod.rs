//! Deciding one event: normalize the ticket, match the policy, gather the facts the rules need (confirmation
//! with the ticketing system, who receives access, who approved), then let the policy decide.

mod confirm;
mod online;
mod principal;
mod report;

pub use online::Decider;
pub use principal::{DomainRewrite, PrincipalConfig};
pub use report::render;

use serde::Serialize;

use crate::domain::{Confirmation, Decision, PersonRef, Principal, Refusal, RefusalCode, TicketAction, TicketEvent};
use crate::inbound::Source;
use crate::inbound::normalize::{Normalized, normalize};
use crate::policy::{ApproverFacts, Facts, Policy};

/// An upstream could not be reached; deciding is retried later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// A decision and the ticket it is about (none when the event was not a ticket event).
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    pub ticket: Option<TicketEvent>,
    pub decision: Decision,
}

impl Decided {
    fn ignored(reason: String) -> Self {
        Decided { ticket: None, decision: Decision::Ignored { reason } }
    }

    /// The event state that goes with the outcome.
    pub fn state(&self) -> &'static str {
        match self.decision {
            Decision::Plan(_) => "decided",
            Decision::Refused(_) => "refused",
            Decision::Ignored { .. } => "ignored",
        }
    }
}

/// What `grantbridge plan` shows without any network access: the ticket as the webhook describes it, taken at
/// its word. The approval is not confirmed and nobody is looked up in Entra, so the plan is always a dry run.
pub fn decide_offline(policy: &Policy, source: &Source, body: &str, received_at_ms: i64) -> Decided {
    let ticket = match normalize(source.name(), source.tickets(), body, None, received_at_ms) {
        Normalized::Ignored(reason) => return Decided::ignored(reason),
        Normalized::Ticket(ticket) => *ticket,
    };
    if let Some(refused) = missing_receiver(&ticket) {
        return Decided { ticket: Some(ticket), decision: refused };
    }
    let principal = offline_principal(&ticket);
    let approvers = ticket.approvals.iter().cloned().map(ApproverFacts::unresolved).collect();
    let facts = Facts { confirmation: Confirmation::Skipped, principal, approvers };
    let mut decision = policy.evaluate(&ticket, &facts);
    if let Decision::Plan(plan) = &mut decision {
        plan.notes.push("offline: the receiver was not looked up in Entra; the id shown is the ticket's".into());
    }
    Decided { ticket: Some(ticket), decision }
}

/// An approved ticket that names nobody to receive access cannot be granted, whatever the policy says.
pub(crate) fn missing_receiver(ticket: &TicketEvent) -> Option<Decision> {
    let missing =
        ticket.action == TicketAction::Approved && ticket.requested_for.as_ref().is_none_or(PersonRef::is_empty);
    missing.then(|| {
        Decision::Refused(Refusal::new(
            RefusalCode::RequestedForMissing,
            format!("{} names nobody to receive access (no requested-for person or reporter)", ticket.ticket_key),
        ))
    })
}

pub(crate) fn offline_principal(ticket: &TicketEvent) -> Principal {
    let person = ticket.requested_for.clone().unwrap_or_default();
    let shown = person.email.clone().or(person.name.clone()).or(person.id.clone()).unwrap_or_default();
    Principal {
        object_id: if shown.is_empty() { String::new() } else { format!("unresolved:{shown}") },
        user_principal_name: person.email,
        display_name: person.name,
    }
}
