//! The binary as an admin runs it: separate processes, real signals, real crashes.

#[path = "../common/mod.rs"]
mod common;

mod check_config;
mod process;
mod serve;
