//! Behaviour tests of the store, each run against SQLite and (when configured) PostgreSQL.
//!
//! One test binary with modules, so that sqlx is linked once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod approvals;
mod chain;
mod common;
mod counters;
mod migrations;
mod permits;
mod policies;
mod proposals;
mod queries;
mod sessions;
mod verify;
