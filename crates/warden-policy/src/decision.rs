//! What an evaluation answers (DESIGN §4), before the server adds ids, approvals and permits.

use crate::policy::{ApprovalRequirement, Effect, PermitSettings, RuleId};
use std::collections::BTreeMap;
use std::fmt;

/// The final answer for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The action may run.
    Allow,
    /// A human must approve first.
    RequireApproval,
    /// The action must not run.
    Deny,
}

impl Verdict {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::RequireApproval => "require_approval",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reason is in the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    /// A rule matched.
    PolicyRule,
    /// No rule decided, so the policy's `default` applied.
    DefaultEffect,
    /// A rule could not be evaluated; the decision failed closed.
    EvaluationError,
}

impl ReasonCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::PolicyRule => "policy_rule",
            ReasonCode::DefaultEffect => "default_effect",
            ReasonCode::EvaluationError => "evaluation_error",
        }
    }
}

/// One reason, from a rule or from the policy itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// The rule, when a rule gave the reason.
    pub rule: Option<RuleId>,
    /// The rule's effect; for default and error reasons, the verdict they caused.
    pub effect: Effect,
    /// Why this reason is here.
    pub code: ReasonCode,
    /// The rendered message, safe to show the caller.
    pub message: String,
}

/// The agent's confidence before and after the matching rules' adjustments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidenceChange {
    /// As submitted.
    pub initial: f64,
    /// `clamp(initial + Σ adjustments, 0, 1)`.
    pub adjusted: f64,
}

/// Conditions attached to an allow or require_approval by `modify` rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obligations {
    /// The mode the executor must use (the first `modify` rule to set it wins).
    pub mode: Option<String>,
    /// Resource ceilings (the lowest value for each name wins).
    pub limits: BTreeMap<String, f64>,
}

impl Obligations {
    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.limits.is_empty()
    }
}

/// The internal detail of an evaluation error: for the server log, never for the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationFailure {
    /// The rule whose condition failed.
    pub rule: RuleId,
    /// What went wrong.
    pub detail: String,
}

/// The result of evaluating one action.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The answer.
    pub verdict: Verdict,
    /// Every matching rule's reason, strongest effect first, then in policy order.
    pub reasons: Vec<Reason>,
    /// Present when the action carried a confidence.
    pub confidence: Option<ConfidenceChange>,
    /// Empty unless the verdict is allow or require_approval.
    pub obligations: Obligations,
    /// Who must approve, when the verdict is require_approval.
    pub approval: Option<ApprovalRequirement>,
    /// The permit to issue: now when the verdict is allow, once the approval is granted
    /// when it is require_approval.
    pub permit: Option<PermitSettings>,
    /// The version of the policy that decided.
    pub policy_version: String,
    /// Set when evaluation failed and the decision is a fail-closed deny.
    pub failure: Option<EvaluationFailure>,
}

impl Decision {
    /// The ids of the rules whose effect is the verdict: the rules that decided.
    pub fn deciding_rules(&self) -> impl Iterator<Item = &RuleId> {
        let verdict = Effect::from(self.verdict);
        self.reasons
            .iter()
            .filter(move |r| r.effect == verdict)
            .filter_map(|r| r.rule.as_ref())
    }

    /// The ids of every rule that matched.
    pub fn matched_rules(&self) -> impl Iterator<Item = &RuleId> {
        self.reasons.iter().filter_map(|r| r.rule.as_ref())
    }
}
