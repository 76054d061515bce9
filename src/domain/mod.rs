//! Domain types: what travels inside grantbridge once the wire format has been parsed at the edge.

mod event;

pub use event::{EventId, IncomingEvent};
