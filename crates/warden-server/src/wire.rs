//! JSON bodies exchanged with callers. Core types are converted at this edge so the core
//! never has to care how it is serialized.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use warden_policy::{ApprovalRequirement, Charge, Decision};
use warden_store::Event;

/// The decision body of DESIGN §4.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    #[schema(value_type = Object)]
    pub obligations: Map<String, Value>,
    /// The approval to wait for, or (offline) who would have to approve.
    pub approval: Option<ApprovalBody>,
    /// The signed permit of an allow (issued by the server; `null` otherwise and offline).
    pub permit: Option<PermitBody>,
    /// The policy version that decided.
    pub policy_version: String,
    /// The SHA-256 of that version's source (empty when no policy decided).
    pub policy_hash: String,
    /// On a deny with proposals enabled: the narrowest rule that would allow this action.
    #[schema(value_type = Option<Object>)]
    pub rule_missing: Option<Value>,
    /// What the agent can do next.
    #[schema(value_type = Vec<Object>)]
    pub next_steps: Vec<Value>,
    /// Time spent evaluating, in nanoseconds.
    pub eval_ns: u64,
    /// Present and `true` when this is the recorded answer to an earlier request with the
    /// same idempotency key and the same action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}

/// A permit as a decision carries it (docs/PERMITS.md).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PermitBody {
    /// The compact token: `header.claims.signature`, base64url, Ed25519.
    #[schema(max_length = 4096)]
    pub token: String,
    /// When it expires, RFC 3339.
    pub expires_at: String,
    /// How many verifications it allows.
    pub max_uses: u32,
}

/// One reason.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReasonBody {
    /// The rule, if a rule gave it.
    pub rule: Option<String>,
    /// The rule's effect.
    pub effect: &'static str,
    /// `policy_rule`, `default_effect`, `evaluation_error`, …
    pub code: &'static str,
    /// The rendered message.
    pub message: String,
    /// On `budget_exceeded` and `rate_limited`: the limit that was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitBody>,
}

/// A budget or rate limit that an action would have passed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitBody {
    /// `budget` or `rate_limit`.
    pub kind: &'static str,
    /// The budget's or rate limit's id in the policy.
    pub id: String,
    /// `run`, `agent` or `tenant`.
    pub per: &'static str,
    /// `tool_calls`, `tokens`, `cost_usd` (dollars), `turns`, `duration` (seconds) or
    /// `actions`.
    pub counter: &'static str,
    /// The ceiling; the counter may reach it, never pass it.
    pub limit: f64,
    /// The counter's value before this action (for `duration`: how long the run has lasted).
    pub current: f64,
    /// What this action would have added (0 for `duration`).
    pub requested: f64,
    /// When a rate limit's window ends and its counter starts from zero, RFC 3339.
    pub resets_at: Option<String>,
}

impl ReasonBody {
    /// The reason of a deny by a budget or rate limit.
    pub fn over_limit(charge: &Charge, current: Option<i64>, message: String) -> Self {
        let c = charge.counter;
        Self {
            rule: None,
            effect: "deny",
            code: charge.kind.reason_code(),
            message,
            limit: Some(LimitBody {
                kind: charge.kind.as_str(),
                id: charge.id.clone(),
                per: charge.per.as_str(),
                counter: c.as_str(),
                limit: c.display(charge.limit),
                current: c.display(charge.used(current)),
                requested: c.display(charge.delta),
                resets_at: charge.resets_at_ms.map(rfc3339),
            }),
        }
    }
}

/// Confidence before and after adjustments.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ConfidenceBody {
    /// As submitted.
    pub initial: f64,
    /// After the matching rules' adjustments, clamped to [0, 1].
    pub adjusted: f64,
}

/// An approval: its requirement, and once created by the server, its id and state.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    /// When a human decided it, RFC 3339 (server only, on a decision read or waited for
    /// after its approval was decided; `null` while undecided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
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
            decided_at: None,
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
                    limit: None,
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
            policy_hash: String::new(),
            rule_missing: None,
            next_steps: Vec::new(),
            eval_ns,
            replayed: None,
        }
    }
}

/// What an agent denied with proposals enabled can do next, each step a request it can
/// make now: read its recent denials, read what it may do, and propose a change.
pub fn next_steps(agent: Option<&str>) -> Vec<Value> {
    let mut steps = vec![serde_json::json!({
        "action": "inspect_recent_denials",
        "method": "GET",
        "url": "/v1/denials?last=10",
    })];
    if let Some(agent) = agent {
        steps.push(serde_json::json!({
            "action": "read_policy_digest",
            "method": "GET",
            "url": format!("/v1/policy/digest?agent={}", percent_encode(agent)),
        }));
    }
    steps.push(serde_json::json!({
        "action": "submit_proposal",
        "method": "POST",
        "url": "/v1/proposals",
    }));
    steps
}

/// `text` with everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DecisionBody {
    /// A deny that no rule made: no policy for the tenant, or the audit log unavailable.
    pub fn refusal(code: &'static str, message: &str, policy_version: &str) -> Self {
        Self {
            decision_id: None,
            effect: "deny",
            reasons: vec![ReasonBody {
                rule: None,
                effect: "deny",
                code,
                message: message.to_owned(),
                limit: None,
            }],
            confidence: None,
            obligations: Map::new(),
            approval: None,
            permit: None,
            policy_version: policy_version.to_owned(),
            policy_hash: String::new(),
            rule_missing: None,
            next_steps: Vec::new(),
            eval_ns: 0,
            replayed: None,
        }
    }
}

/// The action of DESIGN §2, as `POST /v1/decisions` accepts it. The server parses bodies
/// with the policy core's validating parser; this type documents the same shape in the
/// OpenAPI spec, and a test keeps the two in step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Idempotency key: a repeat of the same action by the same key returns the first
    /// decision; the same key for a different action is 409 `idempotency_mismatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 512,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub id: Option<String>,
    /// Dotted action name, e.g. `ticket.resolve`.
    #[serde(rename = "type")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )]
    pub kind: String,
    /// What the action is done to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRequest>,
    /// The agent's confidence, in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub confidence: Option<f64>,
    /// Execution mode, e.g. `auto` or `draft`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub mode: Option<String>,
    /// The agent; only where the key allows naming it, and required when the key has an
    /// agent pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub agent: Option<String>,
    /// The human the agent acts for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub on_behalf_of: Option<String>,
    /// The application.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub app: Option<String>,
    /// The workflow within the application.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub workflow: Option<String>,
    /// The agent run.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub run_id: Option<String>,
    /// Arguments; read by rules, stored only as a keyed digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Facts; read by rules, stored only as a keyed digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    /// Resources consumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageRequest>,
}

/// An action's target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    /// The kind of object, e.g. `ticket`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub kind: Option<String>,
    /// Its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 512,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub id: Option<String>,
}

/// Resources an action consumes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    /// Model tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Money spent, in US dollars.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0)]
    pub cost_usd: Option<f64>,
    /// Tool invocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
}

/// How an allowed action went, reported by the controller.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRequest {
    /// `executed` or `failed`.
    pub status: OutcomeStatus,
    /// For a failure, a short machine code (letters, digits, `_`, `-`, `.`; at most 64).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]+$")]
    pub error_code: Option<String>,
}

/// What happened to the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The action ran.
    Executed,
    /// The action was attempted and failed.
    Failed,
}

impl OutcomeStatus {
    /// The status's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Failed => "failed",
        }
    }
}

/// The recorded outcome.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutcomeBody {
    /// The decision it belongs to.
    pub decision_id: String,
    /// As reported.
    pub status: OutcomeStatus,
    /// The error code, if any.
    pub error_code: Option<String>,
    /// The audit event that records it.
    pub event_id: String,
}

/// An audit event as the API and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventBody {
    /// Position in the chain.
    pub seq: i64,
    /// Event id.
    pub id: String,
    /// RFC 3339 time.
    pub time: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Tenant.
    pub tenant: String,
    /// `decision`, `outcome`, `key_created`, …
    pub kind: String,
    /// Acting agent.
    pub agent: Option<String>,
    /// The user the agent acted for.
    pub on_behalf_of: Option<String>,
    /// Dotted action type.
    pub action_type: Option<String>,
    /// Target type.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// Mode.
    pub mode: Option<String>,
    /// Submitted confidence.
    pub confidence_initial: Option<f64>,
    /// Adjusted confidence.
    pub confidence_adjusted: Option<f64>,
    /// Effect decided.
    pub effect: Option<String>,
    /// Rules that matched.
    pub rule_ids: Vec<String>,
    /// Rendered reasons (redactions applied).
    pub reasons: Vec<String>,
    /// Policy version.
    pub policy_version: Option<String>,
    /// The SHA-256 of the policy version's source, on events a policy decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Keyed digest of the payload.
    pub payload_digest: Option<String>,
    /// Keyed digest of the context.
    pub context_digest: Option<String>,
    /// Fields kept by `audit.keep`, keyed by their path as the policy writes it; `null`
    /// when nothing was kept.
    #[schema(value_type = Option<Object>)]
    pub kept: Value,
    /// The decision this event records or refers to.
    pub decision_id: Option<String>,
    /// Kind-specific detail; `null` when there is none.
    #[schema(value_type = Option<Object>)]
    pub detail: Value,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

impl From<&Event> for EventBody {
    fn from(e: &Event) -> Self {
        let n = &e.event;
        Self {
            seq: e.seq,
            id: n.id.clone(),
            time: rfc3339(n.time_ms),
            time_ms: n.time_ms,
            tenant: n.tenant.clone(),
            kind: n.kind.clone(),
            agent: n.agent.clone(),
            on_behalf_of: n.on_behalf_of.clone(),
            action_type: n.action_type.clone(),
            target_type: n.target_type.clone(),
            target_id: n.target_id.clone(),
            mode: n.mode.clone(),
            confidence_initial: n.confidence_initial,
            confidence_adjusted: n.confidence_adjusted,
            effect: n.effect.clone(),
            rule_ids: n.rule_ids.clone(),
            reasons: n.reasons.clone(),
            policy_version: n.policy_version.clone(),
            policy_hash: n.policy_hash.clone(),
            payload_digest: n.payload_digest.clone(),
            context_digest: n.context_digest.clone(),
            kept: n.kept.clone(),
            decision_id: n.decision_id.clone(),
            detail: n.detail.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

/// The event as the store holds it, read back from the API (`warden audit --server`).
/// `time` is derived from `time_ms` and dropped.
impl From<EventBody> for Event {
    fn from(b: EventBody) -> Self {
        Self {
            seq: b.seq,
            prev_hash: b.prev_hash,
            hash: b.hash,
            event: warden_store::NewEvent {
                id: b.id,
                time_ms: b.time_ms,
                tenant: b.tenant,
                kind: b.kind,
                agent: b.agent,
                on_behalf_of: b.on_behalf_of,
                action_type: b.action_type,
                target_type: b.target_type,
                target_id: b.target_id,
                mode: b.mode,
                confidence_initial: b.confidence_initial,
                confidence_adjusted: b.confidence_adjusted,
                effect: b.effect,
                rule_ids: b.rule_ids,
                reasons: b.reasons,
                policy_version: b.policy_version,
                policy_hash: b.policy_hash,
                payload_digest: b.payload_digest,
                context_digest: b.context_digest,
                kept: b.kept,
                decision_id: b.decision_id,
                detail: b.detail,
            },
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Whole numbers print without a fraction (`5`, not `5.0`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

/// An approval or a question, as the approval routes show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// The approval id.
    pub id: String,
    /// `approval` (made by a `require_approval` decision) or `question`.
    pub kind: String,
    /// `pending`, `approved`, `rejected`, `expired` or (questions) `answered`.
    pub status: String,
    /// The decision that required it (approvals).
    pub decision_id: Option<String>,
    /// The action's type (approvals).
    pub action_type: Option<String>,
    /// The agent the action or question is from.
    pub agent: Option<String>,
    /// The user the action is on behalf of.
    pub on_behalf_of: Option<String>,
    /// The policy version that required it.
    pub policy_version: Option<String>,
    /// The rule that required it.
    pub rule_id: Option<String>,
    /// Groups that may decide; empty means any approver of the tenant.
    pub approvers: Vec<String>,
    /// Distinct users needed to approve.
    pub quorum: u32,
    /// Votes so far, in order.
    pub votes: Vec<VoteView>,
    /// The deciding reason: a rejection's, or why it expired.
    pub reason: Option<String>,
    /// The question's text (questions).
    pub question: Option<String>,
    /// The allowed answers (questions); empty means free text.
    pub options: Vec<String>,
    /// The answer (questions).
    pub answer: Option<String>,
    /// The agent run that asked.
    pub run_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: a pending approval not decided by then is expired, which denies.
    pub expires_at: String,
    /// RFC 3339, once decided.
    pub decided_at: Option<String>,
    /// Where to long-poll for the outcome.
    pub wait_url: String,
    /// Waits only: `true` when the wait ended by its timeout, before a decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// Waits on approvals only: the decision as it stands now (the final one once
    /// decided: `allow` after approval, `deny` after rejection or expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Value>,
}

/// One vote on an approval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    /// The approver.
    pub user: String,
    /// `approve`, `reject` or `answer`.
    pub verdict: String,
    /// Their reason.
    pub reason: Option<String>,
    /// RFC 3339.
    pub at: String,
}

impl ApprovalView {
    /// The view of a stored approval.
    pub fn of(a: &warden_store::ApprovalRecord) -> Self {
        let base = if a.kind == warden_store::approval_kind::QUESTION {
            "/v1/questions"
        } else {
            "/v1/approvals"
        };
        Self {
            id: a.id.clone(),
            kind: a.kind.clone(),
            status: a.status.clone(),
            decision_id: a.decision_id.clone(),
            action_type: a.action_type.clone(),
            agent: a.agent.clone(),
            on_behalf_of: a.on_behalf_of.clone(),
            policy_version: a.policy_version.clone(),
            rule_id: a.rule_id.clone(),
            approvers: a.groups.clone(),
            quorum: a.quorum,
            votes: a
                .votes
                .iter()
                .map(|v| VoteView {
                    user: v.user.clone(),
                    verdict: v.verdict.clone(),
                    reason: v.reason.clone(),
                    at: rfc3339(v.at_ms),
                })
                .collect(),
            reason: a.reason.clone(),
            question: a.question.clone(),
            options: a.options.clone(),
            answer: a.answer.clone(),
            run_id: a.run_id.clone(),
            created_at: rfc3339(a.created_at_ms),
            expires_at: rfc3339(a.expires_at_ms),
            decided_at: a.decided_at_ms.map(rfc3339),
            wait_url: format!("{base}/{}/wait", a.id),
            timed_out: None,
            decision: None,
        }
    }
}

/// `GET /v1/approvals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalsBody {
    /// Newest first.
    pub approvals: Vec<ApprovalView>,
}

/// `POST /v1/approvals/{id}/approve`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// Why (optional). Free text: newlines and tabs allowed, no other control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub reason: Option<String>,
}

/// `POST /v1/approvals/{id}/reject`: a reason is required.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Why. Free text: newlines and tabs allowed, no other control characters.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub reason: String,
}

/// `POST /v1/questions/{id}/answer`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// The answer: one of the question's `options` when it has some. At most 2000
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub answer: String,
}

/// `POST /v1/questions`: an agent asks a human.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuestionRequest {
    /// The question, for a human. At most 2000 characters; newlines and tabs allowed.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub question: String,
    /// The allowed answers (at most 20, distinct, each 1 to 200 characters); none means
    /// free text.
    #[serde(default)]
    #[schema(schema_with = choices_schema)]
    pub options: Vec<String>,
    /// How long to wait for an answer: a number and a unit (`s`, `m`, `h`, `d`), e.g.
    /// `30m`; kept within 1 minute and 7 days. Default 24h.
    #[serde(default)]
    #[schema(pattern = "^[1-9][0-9]{0,5}[smhd]$")]
    pub expires_in: Option<String>,
    /// The agent run asking.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub run_id: Option<String>,
    /// Only approvers of these groups may answer (at most 20); none means any approver.
    #[serde(default)]
    #[schema(schema_with = groups_schema)]
    pub groups: Vec<String>,
}

/// `options`: distinct free-text choices.
fn choices_schema() -> utoipa::openapi::schema::Array {
    list_schema(
        r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$",
        true,
    )
}

/// `groups`: identifiers.
fn groups_schema() -> utoipa::openapi::schema::Array {
    list_schema(
        r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$",
        false,
    )
}

fn list_schema(pattern: &str, unique: bool) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(200))
        .pattern(Some(pattern));
    ArrayBuilder::new()
        .items(item)
        .max_items(Some(20))
        .unique_items(unique)
        .build()
}
