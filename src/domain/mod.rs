//! Domain types: what travels inside grantbridge once the wire format has been parsed at the edge.

mod event;
mod plan;
mod ticket;

pub use event::{EventId, IncomingEvent};
pub use plan::{Confirmation, Decision, GrantTarget, PimAccess, Plan, PlannedGrant, Principal, Refusal, RefusalCode};
pub use ticket::{Approval, ApprovalDecision, PersonRef, TicketAction, TicketEvent};
