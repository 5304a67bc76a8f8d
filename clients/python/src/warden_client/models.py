"""The bodies of Warden's HTTP API (DESIGN §2, §4, §8) as pydantic models.

Key decision: the models mirror the server's OpenAPI document, schema for schema, and
``tests/test_openapi.py`` holds each one to the schema it names in ``OPENAPI_SCHEMAS``
(the same fields, the same required ones, compatible JSON types), so a change on either
side fails a test instead of drifting. They carry no validation of their own beyond types:
the server is the one that validates, and a copy of its limits here could only disagree.

Requests forbid unknown fields, as the server does. Answers keep any field a newer server
adds (in ``model_extra``), so upgrading the server never breaks a client; a field that is
missing or of the wrong type makes the answer unparseable, which the client treats as
Warden being unavailable (fail closed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

JSONObject = dict[str, Any]
"""A JSON object, as ``json.loads`` returns it."""

Effect = Literal["allow", "deny", "require_approval"]
"""What a decision answers."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------
# The action (DESIGN §2)
# ---------------------------------------------------------------------------------------


class Target(_Request):
    """What an action is done to, e.g. ``{"type": "ticket", "id": "T-1042"}``."""

    type: str | None = None
    """The kind of object, e.g. ``ticket``."""
    id: str | None = None
    """Its id."""


class Usage(_Request):
    """Resources an action consumes, charged against the policy's budgets."""

    tokens: int | None = None
    """Model tokens."""
    cost_usd: float | None = None
    """Money spent, in US dollars."""
    tool_calls: int | None = None
    """Tool invocations (1 when not said)."""


class Action(_Request):
    """An action an agent wants to take, as ``POST /v1/decisions`` accepts it.

    Only ``type`` is required. The tenant comes from the API key, never from here.
    """

    type: str
    """Dotted action name, e.g. ``ticket.resolve``."""
    id: str | None = None
    """Idempotency key: the same action under the same key replays the first decision."""
    target: Target | None = None
    """What the action is done to."""
    confidence: float | None = None
    """The agent's confidence, in [0, 1]."""
    mode: str | None = None
    """Execution mode, e.g. ``auto`` or ``draft``."""
    agent: str | None = None
    """The agent; an agent key names it itself, a controller key only as its pattern allows."""
    on_behalf_of: str | None = None
    """The human the agent acts for."""
    app: str | None = None
    """The application."""
    workflow: str | None = None
    """The workflow within the application."""
    run_id: str | None = None
    """The agent run, for per-run budgets."""
    payload: JSONObject | None = None
    """The action's arguments: read by rules, bound by the permit's digest, never stored."""
    context: JSONObject | None = None
    """Facts about the situation: read by rules, never stored verbatim."""
    usage: Usage | None = None
    """Resources consumed."""


# ---------------------------------------------------------------------------------------
# The decision (DESIGN §4)
# ---------------------------------------------------------------------------------------


class Confidence(_Answer):
    """Confidence before and after the matching rules' adjustments."""

    initial: float
    """As submitted."""
    adjusted: float
    """After adjustments, clamped to [0, 1]."""


class Limit(_Answer):
    """A budget or rate limit an action would have passed."""

    kind: str
    """``budget`` or ``rate_limit``."""
    id: str
    """Its id in the policy."""
    per: str
    """``run``, ``agent`` or ``tenant``."""
    counter: str
    """``tool_calls``, ``tokens``, ``cost_usd``, ``turns``, ``duration`` or ``actions``."""
    limit: float
    """The ceiling."""
    current: float
    """The counter before this action."""
    requested: float
    """What this action would have added."""
    resets_at: datetime | None = None
    """When a rate limit's window ends."""


class Reason(_Answer):
    """One reason of a decision: a rule's, the default's, or the server's."""

    effect: str
    """The effect of what gave it (``allow``, ``deny``, ``require_approval``, ``modify``)."""
    code: str
    """``policy_rule``, ``default_effect``, ``evaluation_error``, ``budget_exceeded``, …"""
    message: str
    """The rendered message."""
    rule: str | None = None
    """The rule, when a rule gave it."""
    limit: Limit | None = None
    """On ``budget_exceeded`` and ``rate_limited``: the limit reached."""


class Permit(_Answer):
    """The signed permit an allow carries: hand it to the executor (docs/PERMITS.md)."""

    token: str
    """The compact token, ``header.claims.signature``."""
    expires_at: datetime
    """When it expires."""
    max_uses: int
    """How many online verifications it allows."""


class DecisionApproval(_Answer):
    """The approval a ``require_approval`` decision opened (and, finally, how it ended)."""

    status: str
    """``pending``, ``approved``, ``rejected`` or ``expired``."""
    approvers: list[str]
    """Approver groups; empty means any approver."""
    quorum: int
    """Approvals needed."""
    expires_in: str
    """How long it stays open, e.g. ``4h``."""
    id: str | None = None
    """The approval's id."""
    expires_at: datetime | None = None
    """When it expires, which denies."""
    wait_url: str | None = None
    """Where to long-poll for the outcome."""
    decided_at: datetime | None = None
    """When it was decided (in a final decision)."""


class Decision(_Answer):
    """Warden's answer to an action. ``deny`` is a result, not an error."""

    effect: Effect
    """``allow``, ``deny`` or ``require_approval``."""
    reasons: list[Reason]
    """Every matching rule's reason, strongest effect first."""
    obligations: JSONObject
    """``mode`` and ``limits`` the executor must honour."""
    policy_version: str
    """The policy version that decided."""
    policy_hash: str
    """The SHA-256 of that version's source."""
    next_steps: list[JSONObject]
    """On a deny with proposals enabled: what the agent can do next."""
    eval_ns: int
    """Time spent evaluating, in nanoseconds."""
    decision_id: str | None = None
    """The decision's id."""
    confidence: Confidence | None = None
    """Initial and adjusted confidence, when the action carried one."""
    approval: DecisionApproval | None = None
    """The approval to wait for."""
    permit: Permit | None = None
    """The permit of an allow."""
    rule_missing: JSONObject | None = None
    """On a deny with proposals enabled: the narrowest rule that would allow this action."""
    replayed: bool | None = None
    """``True`` when this is the recorded answer to an earlier request with the same id."""


class OutcomeRequest(_Request):
    """How an allowed action went (``POST /v1/decisions/{id}/outcome``)."""

    status: Literal["executed", "failed"]
    """``executed`` or ``failed``."""
    error_code: str | None = None
    """For a failure, a short machine code (never an error message)."""


class Outcome(_Answer):
    """The recorded outcome."""

    decision_id: str
    """The decision it belongs to."""
    status: Literal["executed", "failed"]
    """As reported."""
    event_id: str
    """The audit event that records it."""
    error_code: str | None = None
    """The error code, if any."""


class BudgetUsage(_Answer):
    """One live budget or rate-limit counter (docs/BUDGETS.md)."""

    kind: str
    """``budget`` or ``rate_limit``."""
    id: str
    """The budget's or rate limit's id in the policy."""
    counter: str
    """``tool_calls``, ``tokens``, ``cost_usd`` (dollars), ``turns``, ``duration``
    (seconds) or ``actions``."""
    used: float
    """Used so far."""
    limit: float
    """The ceiling the counter was last checked against."""
    remaining: float
    """What is left before the ceiling."""
    agent: str | None = None
    """The agent; ``None`` for the tenant's counters."""
    run_id: str | None = None
    """The run, for a run's counter."""
    window_start: datetime | None = None
    """A rate limit's window start."""
    resets_at: datetime | None = None
    """When a rate limit's window ends."""
    expires_at: datetime | None = None
    """When the counter is forgotten; ``None`` for counters that last."""


class BudgetsBody(_Answer):
    """``GET /v1/budgets``."""

    usage: list[BudgetUsage]
    """One entry per live counter, budgets first."""


# ---------------------------------------------------------------------------------------
# Approvals and questions (DESIGN §5, docs/APPROVALS.md)
# ---------------------------------------------------------------------------------------


class Vote(_Answer):
    """One approver's vote."""

    user: str
    """The approver."""
    verdict: str
    """``approve``, ``reject`` or ``answer``."""
    at: datetime
    """When."""
    reason: str | None = None
    """Their reason."""


class Approval(_Answer):
    """An approval, or a question to a human, as the approval routes show it."""

    id: str
    """Its id."""
    kind: str
    """``approval`` (opened by a ``require_approval`` decision) or ``question``."""
    status: str
    """``pending``, ``approved``, ``rejected``, ``expired`` or (questions) ``answered``."""
    approvers: list[str]
    """Groups that may decide; empty means any approver of the tenant."""
    quorum: int
    """Distinct users needed to approve."""
    votes: list[Vote]
    """Votes so far, in order."""
    options: list[str]
    """A question's allowed answers; empty means free text."""
    created_at: datetime
    """When it was opened."""
    expires_at: datetime
    """When it expires if undecided (an expired approval denies)."""
    wait_url: str
    """Where to long-poll for the outcome."""
    decision_id: str | None = None
    """The decision that required it (approvals)."""
    action_type: str | None = None
    """The action's type (approvals)."""
    agent: str | None = None
    """The agent the action or question is from."""
    on_behalf_of: str | None = None
    """The user the action is on behalf of."""
    policy_version: str | None = None
    """The policy version that required it."""
    rule_id: str | None = None
    """The rule that required it."""
    reason: str | None = None
    """The deciding reason: a rejection's, or why it expired."""
    question: str | None = None
    """A question's text."""
    answer: str | None = None
    """A question's answer."""
    run_id: str | None = None
    """The agent run that asked."""
    decided_at: datetime | None = None
    """When it was decided."""
    timed_out: bool | None = None
    """On a wait: ``True`` when the wait ended by its timeout, before a decision."""
    decision: Decision | None = None
    """On a wait for an approval: the decision as it stands (the final one once decided)."""


class ApprovalsBody(_Answer):
    """``GET /v1/approvals``."""

    approvals: list[Approval]
    """Newest first."""


class VoteRequest(_Request):
    """``POST /v1/approvals/{id}/approve``."""

    reason: str | None = None
    """Why (optional)."""


class RejectRequest(_Request):
    """``POST /v1/approvals/{id}/reject``."""

    reason: str
    """Why (required)."""


class QuestionRequest(_Request):
    """``POST /v1/questions``: an agent asks a human."""

    question: str
    """The question."""
    options: list[str] = []
    """The allowed answers; none means free text."""
    expires_in: str | None = None
    """How long to wait for an answer, e.g. ``30m`` (1 minute to 7 days; default 24h)."""
    run_id: str | None = None
    """The agent run asking."""
    groups: list[str] = []
    """Approver groups that may answer; none means any approver of the tenant."""


class AnswerRequest(_Request):
    """``POST /v1/questions/{id}/answer``."""

    answer: str
    """The answer: one of the question's options when it has some."""


# ---------------------------------------------------------------------------------------
# Permits (docs/PERMITS.md)
# ---------------------------------------------------------------------------------------


class PermitAction(_Request):
    """The action fields an online verify compares with the permit's; each one given must match."""

    type: str | None = None
    """The action type."""
    target: Target | None = None
    """The target, compared whole (type and id)."""
    agent: str | None = None
    """The agent."""


class PermitVerifyRequest(_Request):
    """``POST /v1/permits/verify``."""

    permit: str
    """The permit's token."""
    payload: JSONObject | None = None
    """The payload about to run."""
    action: PermitAction | None = None
    """What is about to run."""


class PermitVerification(_Answer):
    """The server's verdict on a permit. Run the action only when ``valid``."""

    valid: bool
    """Whether to run the action; a valid answer has consumed one use."""
    reason: str
    """``valid``, ``bad_signature``, ``unknown_key``, ``revoked``, ``expired``,
    ``action_mismatch``, ``payload_mismatch`` or ``used_up``."""
    uses_left: int | None = None
    """Uses left after this one, once a use was looked at."""


class PublicKey(_Answer):
    """A permit signing key (an RFC 8037 OKP JWK, plus ``not_after``)."""

    kid: str
    """The key id a permit's header names."""
    kty: str
    """Always ``OKP``."""
    crv: str
    """Always ``Ed25519``."""
    alg: str
    """Always ``EdDSA``."""
    use: str
    """Always ``sig``."""
    x: str
    """The public key, base64url without padding."""
    not_after: datetime | None = None
    """For a rotated-out key: when it stops verifying."""


class PermitKeys(_Answer):
    """``GET /v1/permits/keys``: every key that may still verify a permit."""

    keys: list[PublicKey]
    """The keys."""


# ---------------------------------------------------------------------------------------
# What an agent reads and proposes (DESIGN §7)
# ---------------------------------------------------------------------------------------


class Denial(_Answer):
    """One of an agent's recent denials, redacted."""

    time: datetime
    """When."""
    rules: list[str]
    """The rules that matched (the deny's first)."""
    reasons: list[str]
    """The reasons' messages."""
    decision_id: str | None = None
    """The decision."""
    action_type: str | None = None
    """The action's type."""
    rule_missing: JSONObject | None = None
    """The narrowest allow rule for that action, when the policy offered one."""


class DenialsBody(_Answer):
    """``GET /v1/denials``."""

    denials: list[Denial]
    """Newest first."""


class ProposalRequest(_Request):
    """``POST /v1/proposals``: a proposed change to the tenant's policy."""

    rationale: str
    """Why the agent wants the change."""
    changes: list[JSONObject]
    """1 to 20 operations: ``add_rule``, ``remove_rule``, ``replace_rule``, ``set``,
    ``replace_policy``, ``json_patch``."""
    risks: list[str] | None = None
    """What could go wrong."""
    confidence: float | None = None
    """The agent's confidence, 0 to 1."""
    evidence: list[str] | None = None
    """Decision ids that motivate it."""


class Proposal(_Answer):
    """A proposal with Warden's analysis and what became of it (docs/REVIEW.md)."""

    id: str
    """Its id."""
    status: str
    """``auto_approved``, ``needs_human``, ``revise_requested``, ``rejected``,
    ``approved`` or ``superseded``."""
    agent: str
    """The agent that proposed it (for an observed suggestion, whose friction it is)."""
    source: str
    """``agent``, or ``observed``: drafted by Warden from repeated friction."""
    classification: str
    """``neutral``, ``narrowing``, ``broadening`` or ``forbidden``."""
    reasons: list[str]
    """Why: the forbidden rule broken, the proof's verdict, the findings that decided."""
    changes: list[JSONObject]
    """Each change classified on its own."""
    counterexamples: list[JSONObject]
    """For broadening: actions the candidate treats more permissively."""
    findings: list[JSONObject]
    """Risky shapes: ``{code, message, rule?}``."""
    impact: JSONObject
    """The replay of recent decisions."""
    subject: str
    """What it is about, for superseding."""
    review_token: str
    """What an approver presents to approve exactly this analysis."""
    candidate_version: str
    """The candidate's version."""
    proposal: JSONObject
    """The proposal as submitted."""
    created_at: datetime
    """When it was submitted."""
    decided_at: datetime | None = None
    """When it was decided."""
    decided_by: str | None = None
    """An approver's user, or ``review``."""
    reason: str | None = None
    """A rejection's reason, for the agent to read."""
    suggestion: list[JSONObject] | None = None
    """On ``revise_requested``: narrower changes that would be acceptable."""
    security_event: str | None = None
    """Why the review flagged it as a security event, if it did."""
    external_review: JSONObject | None = None
    """What the tenant's external reviewer said: ``verdict`` (``None`` when it gave none)
    and ``reason``."""
    observed_key: list[Any] | None = None
    """An observed suggestion's friction key: kind, agent, action type, target type, rule."""
    hits: int | None = None
    """How often an observed suggestion's friction was seen in the window."""
    diff: JSONObject | None = None
    """The semantic diff from the live policy to the candidate."""
    candidate_source: str | None = None
    """The candidate document (approver and admin keys only)."""
    version: str | None = None
    """The policy version it published, once applied."""
    revision: int | None = None
    """That version's revision."""
    superseded_by: str | None = None
    """The newer proposal that replaced it."""
    timed_out: bool | None = None
    """On a wait: whether it ended at the timeout, still undecided."""


class ProposalSummary(_Answer):
    """One line of ``GET /v1/proposals``."""

    id: str
    """Its id."""
    status: str
    """Its status."""
    agent: str
    """The agent that proposed it."""
    source: str
    """``agent`` or ``observed``."""
    classification: str
    """What its changes do."""
    subject: str
    """What it is about."""
    findings: int
    """How many findings the review made."""
    created_at: datetime
    """When it was submitted."""
    decided_at: datetime | None = None
    """When it was decided."""
    version: str | None = None
    """The version it published, once applied."""
    hits: int | None = None
    """How often an observed suggestion's friction was seen in the window."""


class ProposalPage(_Answer):
    """A page of proposals, newest first."""

    proposals: list[ProposalSummary]
    """The proposals."""
    next_before: str | None = None
    """Pass as ``before`` for the next page; absent on the last."""


class ApproveProposalRequest(_Request):
    """``POST /v1/proposals/{id}/approve``."""

    review_token: str
    """The ``review_token`` of the analysis approved."""


class RejectProposalRequest(_Request):
    """``POST /v1/proposals/{id}/reject``."""

    reason: str
    """Why, for the agent to read."""


class ErrorBody(_Answer):
    """The body of every error Warden answers."""

    error: str
    """A stable, machine-readable code, e.g. ``invalid_action``."""
    detail: str
    """A sentence for humans."""


OPENAPI_SCHEMAS: dict[type[BaseModel], tuple[str, ...]] = {
    Target: ("TargetRequest", "PermitTarget"),
    Usage: ("UsageRequest",),
    Action: ("ActionRequest",),
    Confidence: ("ConfidenceBody",),
    Limit: ("LimitBody",),
    Reason: ("ReasonBody",),
    Permit: ("PermitBody",),
    DecisionApproval: ("ApprovalBody",),
    Decision: ("DecisionBody",),
    OutcomeRequest: ("OutcomeRequest",),
    Outcome: ("OutcomeBody",),
    BudgetUsage: ("UsageBody",),
    BudgetsBody: ("BudgetsBody",),
    Vote: ("VoteView",),
    Approval: ("ApprovalView",),
    ApprovalsBody: ("ApprovalsBody",),
    VoteRequest: ("VoteRequest",),
    RejectRequest: ("RejectRequest",),
    QuestionRequest: ("QuestionRequest",),
    AnswerRequest: ("AnswerRequest",),
    PermitAction: ("PermitActionCheck",),
    PermitVerifyRequest: ("PermitVerifyRequest",),
    PermitVerification: ("PermitVerifyBody",),
    PublicKey: ("PublicKey",),
    PermitKeys: ("PermitKeysBody",),
    Denial: ("DenialBody",),
    DenialsBody: ("DenialsBody",),
    ProposalRequest: ("ProposalRequest",),
    Proposal: ("ProposalView",),
    ProposalSummary: ("ProposalSummary",),
    ProposalPage: ("ProposalsBody",),
    ApproveProposalRequest: ("ApproveRequest",),
    RejectProposalRequest: ("RejectProposalRequest",),
    ErrorBody: ("ErrorBody",),
}
"""Each model and the schemas of the server's ``/openapi.json`` it stands for."""
