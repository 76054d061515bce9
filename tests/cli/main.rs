//! The binary as an admin runs it: separate processes, real signals, real crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod check_config;
mod deploy;
mod execution;
mod plan;
mod process;
mod reconcile;
mod serve;
