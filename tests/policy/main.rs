//! Black-box tests of the access policy: config validation, matching, requirements, plans, and a property test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config_errors;
mod helpers;
mod matching;
mod plans;
mod property;
mod reconcile_flags;
mod requirements;
