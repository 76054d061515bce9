//! Black-box tests of the HTTP surface: the real application on a random loopback port, real databases.

#[path = "../common/mod.rs"]
mod common;

mod health;
mod helpers;
mod store_unavailable;
mod webhooks;
