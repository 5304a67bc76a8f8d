//! Warden's decision service: the HTTP API of DESIGN §8 over the policy core and the store.
//!
//! The key design decision: a decision is answered only after its audit event is durable,
//! and every event goes through one writer task that commits whatever is waiting as one
//! transaction (group commit). Durability then costs one fsync per batch, not per request,
//! and if the commit fails the caller gets a deny, never an allow.
//!
//! This crate alone knows the wire format (DESIGN §4, §8): the policy core's types are
//! converted to JSON bodies here and nowhere else.
#![deny(missing_docs)]

pub mod app;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod body;
pub mod conn;
pub mod error;
pub mod ids;
pub mod inbox;
pub mod jcs;
pub mod keys;
pub mod metrics;
pub mod observed;
pub mod ocsf;
pub mod permits;
pub mod policies;
pub mod proposals;
pub mod reviewer;
pub mod rollback;
pub mod routes;
pub mod shadow;
pub mod snapshots;
pub mod state;
pub mod wire;

pub use app::{app, serve};
pub use state::{AppState, Limits};
