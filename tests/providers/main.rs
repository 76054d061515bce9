#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The grant executors against loopback fakes of the identity platform, Graph and ARM that answer as documented:
//! real HTTP, real retries, short waits.

mod batch;
mod groups;
mod helpers;
mod members;
mod pim;
mod rbac;
mod tokens;
