//! Black-box tests of the HTTP surface: the real application on a random loopback port, real databases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod audit;
mod health;
mod helpers;
mod openapi;
mod operate;
mod store_unavailable;
mod webhooks;
