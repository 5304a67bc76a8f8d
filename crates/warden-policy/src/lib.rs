//! Warden's policy core: parse, validate, compile and evaluate policies over agent actions.
//!
//! The key design decision: this crate is pure. It does no I/O, spawns nothing and reads no
//! clock (`now` arrives in [`Env`]), so a decision costs only its own work and every caller —
//! the CLI, the server, a replay of recent traffic — gets the same answer for the same input.
//!
//! ```
//! use warden_policy::{Action, Env, Policy, Verdict};
//!
//! let policy = Policy::parse(r#"
//! version: 1.0.0
//! default: deny
//! rules:
//!   - id: low-confidence-resolve
//!     actions: [ticket.resolve]
//!     when: action.confidence < 0.85
//!     effect: deny
//!     reason: "confidence {{action.confidence}} is below 0.85"
//! "#).unwrap();
//! let action = Action::from_json(br#"{"type": "ticket.resolve", "confidence": 0.7}"#).unwrap();
//! let decision = policy.evaluate(&action, &Env::default());
//! assert_eq!(decision.verdict, Verdict::Deny);
//! assert_eq!(decision.reasons[0].message, "confidence 0.7 is below 0.85");
//! ```
#![deny(missing_docs)]

pub mod action;
pub mod audit;
pub mod decision;
mod document;
mod expr;
pub mod glob;
pub mod json;
pub mod policy;
pub mod review;
mod template;
pub mod testing;

pub use action::{Action, ActionError, ActionType, Confidence, Env, Timestamp};
pub use audit::AuditView;
pub use decision::{
    ConfidenceChange, Decision, EvaluationFailure, Obligations, Reason, ReasonCode, Verdict,
};
pub use document::{PolicyError, PolicyErrors};
pub use expr::schema::ActionField;
pub use policy::{
    ApprovalRequirement, AuditSpec, Charge, Counter, DiffError, DiffSide, Effect, Expiry,
    FieldChange, LimitKind, PermitSettings, Policy, PolicyDiff, Replayed, Rule, RuleChange,
    RuleEntry, RuleId, Snapshot, SnapshotError, Tier, Version,
};
