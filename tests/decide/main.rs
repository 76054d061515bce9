//! From stored webhook to decision: normalization of real payload shapes, confirmation with the ticketing
//! systems (local fakes), principal resolution and the policy, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod confirmation;
mod harness;
mod lifecycle;
mod normalize;
mod pipeline;
mod reconcile;
mod scenarios;
