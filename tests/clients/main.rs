//! The outbound clients against loopback fakes that answer as Graph, the identity platform, Jira and ServiceNow
//! are documented to: real HTTP, real retries, short waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod callbacks;
mod credentials;
mod graph;
mod helpers;
mod jira;
mod servicenow;
mod token;
mod transport;
