//! JSON bodies exchanged with callers. Core types are converted at this edge so the core
//! never has to care how it is serialized.

use serde::Serialize;
use serde_json::{Map, Value};
use warden_policy::{ApprovalRequirement, Decision};

/// The decision body of DESIGN §4.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionBody {
    /// Set by the server; `None` when evaluated offline (`warden eval`).
    pub decision_id: Option<String>,
    /// `allow`, `deny` or `require_approval`.
    pub effect: &'static str,
    /// Every matching rule's reason, strongest effect first.
    pub reasons: Vec<ReasonBody>,
    /// Initial and adjusted confidence, when the action carried one.
    pub confidence: Option<ConfidenceBody>,
    /// `mode` and `limits` the executor must honour.
    pub obligations: Map<String, Value>,
    /// The approval to wait for, or (offline) who would have to approve.
    pub approval: Option<ApprovalBody>,
    /// A signed permit for an allow; issued by the server.
    pub permit: Option<Value>,
    /// The policy version that decided.
    pub policy_version: String,
    /// On a deny with proposals enabled: the narrowest rule that would allow this action.
    pub rule_missing: Option<Value>,
    /// What the agent can do next.
    pub next_steps: Vec<Value>,
    /// Time spent evaluating, in nanoseconds.
    pub eval_ns: u64,
}

/// One reason.
#[derive(Debug, Clone, Serialize)]
pub struct ReasonBody {
    /// The rule, if a rule gave it.
    pub rule: Option<String>,
    /// The rule's effect.
    pub effect: &'static str,
    /// `policy_rule`, `default_effect`, `evaluation_error`, …
    pub code: &'static str,
    /// The rendered message.
    pub message: String,
}

/// Confidence before and after adjustments.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConfidenceBody {
    /// As submitted.
    pub initial: f64,
    /// After the matching rules' adjustments, clamped to [0, 1].
    pub adjusted: f64,
}

/// An approval: its requirement, and once created by the server, its id and state.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalBody {
    /// The approval id (server only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `required` offline; `pending`, `approved`, `rejected` or `expired` on the server.
    pub status: String,
    /// Approver groups; empty means any approver.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// How long the approval stays open, e.g. `4h`.
    pub expires_in: String,
    /// When it expires (server only), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Where to long-poll for the outcome (server only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_url: Option<String>,
}

impl ApprovalBody {
    /// The requirement alone, before any approval exists.
    pub fn required(req: &ApprovalRequirement) -> Self {
        Self {
            id: None,
            status: "required".into(),
            approvers: req.approvers.clone(),
            quorum: req.quorum,
            expires_in: humantime::format_duration(req.expires_in).to_string(),
            expires_at: None,
            wait_url: None,
        }
    }
}

impl DecisionBody {
    /// Converts a core decision; the server fills in ids, approvals and permits afterwards.
    pub fn from_decision(d: &Decision, eval_ns: u64) -> Self {
        let mut obligations = Map::new();
        if let Some(mode) = &d.obligations.mode {
            obligations.insert("mode".into(), Value::String(mode.clone()));
        }
        if !d.obligations.limits.is_empty() {
            let limits = d
                .obligations
                .limits
                .iter()
                .map(|(k, v)| (k.clone(), number(*v)))
                .collect();
            obligations.insert("limits".into(), Value::Object(limits));
        }
        Self {
            decision_id: None,
            effect: d.verdict.as_str(),
            reasons: d
                .reasons
                .iter()
                .map(|r| ReasonBody {
                    rule: r.rule.as_ref().map(|id| id.as_str().to_owned()),
                    effect: r.effect.as_str(),
                    code: r.code.as_str(),
                    message: r.message.clone(),
                })
                .collect(),
            confidence: d.confidence.map(|c| ConfidenceBody {
                initial: c.initial,
                adjusted: c.adjusted,
            }),
            obligations,
            approval: d.approval.as_ref().map(ApprovalBody::required),
            permit: None,
            policy_version: d.policy_version.clone(),
            rule_missing: None,
            next_steps: Vec::new(),
            eval_ns,
        }
    }
}

/// Whole numbers print without a fraction (`5`, not `5.0`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}
