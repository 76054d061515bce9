//! Closing the loop on the ticket: what grantbridge decided and did is posted back to the Jira issue or
//! ServiceNow record through a durable outbox, written in the transaction that records the outcome, and
//! delivered exactly once in effect (see docs/callbacks.md).

mod deliver;
mod jira;
mod render;
mod servicenow;
mod templates;
mod worker;

pub use deliver::{Delivered, Deliverer, DeliveryError, marker_line};
pub use render::{TicketRef, callback_id};
pub use templates::{CallbackSettings, CallbacksConfig, JiraComments, Kind, KindSettings, Template, Visibility};
pub use worker::{Callbacker, CallbackerContext, spawn_callbackers};
