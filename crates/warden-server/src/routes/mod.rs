//! The HTTP handlers, one module per area.

pub mod admin;
pub mod approvals;
pub mod budgets;
pub mod decisions;
pub mod health;
pub mod permits;
