//! The records the store keeps (audit events, decisions, API keys) and the queries over them.
//!
//! Times are `i64` unix milliseconds everywhere and always come from the caller: the store
//! never reads the clock for anything it records in these types.

use serde_json::Value;
pub use warden_policy::Charge;

/// Well-known values of [`NewEvent::kind`].
pub mod kind {
    /// A decision was made and answered.
    pub const DECISION: &str = "decision";
    /// The caller reported how an allowed action went.
    pub const OUTCOME: &str = "outcome";
    /// An API key was created.
    pub const KEY_CREATED: &str = "key_created";
    /// An API key was revoked.
    pub const KEY_REVOKED: &str = "key_revoked";
    /// A request failed authentication.
    pub const AUTH_FAILURE: &str = "auth_failure";
    /// A policy was (re)loaded.
    pub const POLICY_RELOADED: &str = "policy_reloaded";
    /// A retention purge removed the oldest events; written only by [`crate::Store::purge`].
    pub const CHECKPOINT: &str = "checkpoint";
    /// An idempotency key reused for a different action, refused with 409.
    pub const IDEMPOTENCY_MISMATCH: &str = "idempotency_mismatch";
    /// A permit was checked (`POST /v1/permits/verify`), valid or not.
    pub const PERMIT_VERIFIED: &str = "permit_verified";
    /// An approver voted on an approval (approve or reject).
    pub const APPROVAL_VOTE: &str = "approval_vote";
    /// An approval was decided: approved, rejected or expired (`detail.status`).
    pub const APPROVAL_OUTCOME: &str = "approval_outcome";
    /// An agent asked a human a question.
    pub const QUESTION_ASKED: &str = "question_asked";
    /// A question was answered or expired (`detail.status`).
    pub const QUESTION_OUTCOME: &str = "question_outcome";
    /// A server loaded a changed permit key set (a rotation or revocation).
    pub const PERMIT_KEYS_CHANGED: &str = "permit_keys_changed";
    /// A policy version was published (a publish, rollback, reload, seed or automatic
    /// rollback; `detail.cause`), in the transaction that made it active.
    pub const POLICY_PUBLISHED: &str = "policy_published";
    /// A replica could not compile a published version and keeps its previous one.
    pub const POLICY_ACTIVATION_FAILED: &str = "policy_activation_failed";
    /// A candidate policy started (or replaced another) running in shadow beside the
    /// active version.
    pub const POLICY_SHADOW_STARTED: &str = "policy_shadow_started";
    /// Shadow mode ended (`detail` holds the tally of this replica).
    pub const POLICY_SHADOW_ENDED: &str = "policy_shadow_ended";
    /// A policy change (publish, rollback, shadow) was refused; nothing else was written.
    pub const POLICY_REFUSED: &str = "policy_refused";
    /// An agent submitted a policy change; `detail` holds the review's outcome and counts,
    /// never the rules' values.
    pub const PROPOSAL_SUBMITTED: &str = "proposal_submitted";
    /// A human approved or rejected a proposal (or a re-review changed its outcome).
    pub const PROPOSAL_DECIDED: &str = "proposal_decided";
    /// A newer proposal of the same agent about the same subject replaced a pending one.
    pub const PROPOSAL_SUPERSEDED: &str = "proposal_superseded";
    /// A proposal the review flagged: a repeat of a rejected change, or a revert of a recent
    /// one (`detail`: agent, key id, counts).
    pub const PROPOSAL_SECURITY_EVENT: &str = "proposal_security_event";
    /// Warden suggested a change from repeated friction, or updated its pending suggestion
    /// with new hits (`detail`: proposal id, key, hits, evidence count, the review's
    /// outcome and counts).
    pub const PROPOSAL_OBSERVED: &str = "proposal_observed";
    /// An approver key signed in to the web inbox (`detail`: key id, user, session).
    pub const INBOX_SIGNED_IN: &str = "inbox_signed_in";
    /// A web inbox session was signed out.
    pub const INBOX_SIGNED_OUT: &str = "inbox_signed_out";

    /// Every kind, for validating filters.
    pub const ALL: [&str; 26] = [
        DECISION,
        OUTCOME,
        KEY_CREATED,
        KEY_REVOKED,
        AUTH_FAILURE,
        POLICY_RELOADED,
        CHECKPOINT,
        IDEMPOTENCY_MISMATCH,
        PERMIT_VERIFIED,
        APPROVAL_VOTE,
        APPROVAL_OUTCOME,
        QUESTION_ASKED,
        QUESTION_OUTCOME,
        PERMIT_KEYS_CHANGED,
        POLICY_PUBLISHED,
        POLICY_ACTIVATION_FAILED,
        POLICY_SHADOW_STARTED,
        POLICY_SHADOW_ENDED,
        POLICY_REFUSED,
        PROPOSAL_SUBMITTED,
        PROPOSAL_DECIDED,
        PROPOSAL_SUPERSEDED,
        PROPOSAL_SECURITY_EVENT,
        PROPOSAL_OBSERVED,
        INBOX_SIGNED_IN,
        INBOX_SIGNED_OUT,
    ];
}

/// The tenant recorded on events that belong to no tenant (purge checkpoints).
pub const SYSTEM_TENANT: &str = "_system";

/// An audit event as the caller hands it to [`crate::Store::append`].
///
/// Holds digests and an explicit allowlist of kept fields, never a payload or context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    /// Unique id made by the caller (ULID-like).
    pub id: String,
    /// When it happened, unix milliseconds.
    pub time_ms: i64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// What happened; see [`kind`].
    pub kind: String,
    /// The acting agent's id.
    pub agent: Option<String>,
    /// The user the agent acted for.
    pub on_behalf_of: Option<String>,
    /// The dotted action type, e.g. `ticket.resolve`.
    pub action_type: Option<String>,
    /// The target's type, e.g. `ticket`.
    pub target_type: Option<String>,
    /// The target's id.
    pub target_id: Option<String>,
    /// The action's mode (`auto`, `draft`, …).
    pub mode: Option<String>,
    /// The confidence the caller submitted. Must be finite.
    pub confidence_initial: Option<f64>,
    /// The confidence after policy adjustments. Must be finite.
    pub confidence_adjusted: Option<f64>,
    /// The decided effect (`allow`, `deny`, `require_approval`).
    pub effect: Option<String>,
    /// Ids of the rules that matched.
    pub rule_ids: Vec<String>,
    /// Rendered reasons, strongest first.
    pub reasons: Vec<String>,
    /// The policy version that decided.
    pub policy_version: Option<String>,
    /// The SHA-256 (hex) of the source of the policy version that decided.
    pub policy_hash: Option<String>,
    /// Keyed digest of the payload.
    pub payload_digest: Option<String>,
    /// Keyed digest of the context.
    pub context_digest: Option<String>,
    /// Object of the fields `audit.keep` allows, already redacted; `Null` when none.
    pub kept: Value,
    /// The decision this event records or refers to (an outcome's decision).
    pub decision_id: Option<String>,
    /// Small kind-specific object (outcome status, error code, key id, …); `Null` when none.
    pub detail: Value,
}

/// An audit event as stored: the caller's fields plus its place in the hash chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the chain: 1, 2, 3, … per database, without gaps.
    pub seq: i64,
    /// The previous event's hash ([`crate::GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of [`crate::canonical_bytes`] of this event.
    pub hash: String,
    /// The recorded fields.
    pub event: NewEvent,
}

/// A decision's kept snapshot, as replays read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The decision.
    pub decision_id: String,
    /// When it was made, unix milliseconds.
    pub created_at_ms: i64,
    /// The decision body as answered (JSON text): what the replay compares with.
    pub body: String,
    /// The sealed snapshot.
    pub snapshot: String,
}

/// A decision to store alongside the event that records it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDecision {
    /// The decision id, as answered to the caller.
    pub id: String,
    /// The tenant; must equal the event's tenant.
    pub tenant: String,
    /// The idempotency key as scoped by the caller (the server uses `<api key id>:<client
    /// id>`), unique per tenant.
    pub idempotency_key: Option<String>,
    /// A digest of the action decided, so a reused key can be told apart from a retry.
    pub action_digest: Option<String>,
    /// The decision body exactly as answered, as JSON text (stored as given, so the
    /// server serializes it once).
    pub body: String,
    /// When it was made, unix milliseconds.
    pub created_at_ms: i64,
    /// The sealed snapshot of its input, kept for replay (opaque to the store).
    pub snapshot: Option<String>,
}

/// A decision read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDecision {
    /// The decision id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The scoped idempotency key, if the caller gave one.
    pub idempotency_key: Option<String>,
    /// The digest of the action decided, when it was recorded with an idempotency key.
    pub action_digest: Option<String>,
    /// The decision body as answered.
    pub body: Value,
    /// When it was made, unix milliseconds.
    pub created_at_ms: i64,
}

impl NewDecision {
    /// The decision as it reads back from the store.
    pub(crate) fn stored(&self) -> Result<StoredDecision, crate::StoreError> {
        let body =
            serde_json::from_str(&self.body).map_err(|source| crate::StoreError::Encode {
                id: self.id.clone(),
                source,
            })?;
        Ok(StoredDecision {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            idempotency_key: self.idempotency_key.clone(),
            action_digest: self.action_digest.clone(),
            body,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// One item of a group commit: an event, the decision it records if any, the budget and
/// rate-limit counters it charges, and the approval it opens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Append {
    /// The audit event to chain.
    pub event: NewEvent,
    /// The decision to store with it.
    pub decision: Option<NewDecision>,
    /// Counters of the event's tenant this item adds to, checked and updated under the
    /// chain lock: if any of them cannot take its charge, nothing of the item is written
    /// and it answers [`Appended::OverLimit`]. Empty for everything but allowed decisions.
    pub charges: Vec<Charge>,
    /// An approval (or question) created with it: pending, of the event's tenant. Written
    /// only if the item is (an idempotent replay writes nothing).
    pub approval: Option<crate::ApprovalRecord>,
    /// Webhook deliveries announcing it, written only if the item is.
    pub outbox: Vec<crate::OutboxMessage>,
}

impl Append {
    /// An item that charges no counter and opens no approval.
    pub fn new(event: NewEvent, decision: Option<NewDecision>) -> Self {
        Self {
            event,
            decision,
            ..Self::default()
        }
    }
}

/// What happened to one item of a group commit, in the order the items were given.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The event (and its decision) were written at this place in the chain.
    Written {
        /// The event's seq.
        seq: i64,
        /// The event's hash.
        hash: String,
    },
    /// The decision's idempotency key was already used in this tenant (earlier in the
    /// database or earlier in the same batch): nothing was written for this item, and
    /// this is the decision that holds the key. Its `action_digest` tells a retry of the
    /// same action from a reused key.
    Duplicate(StoredDecision),
    /// One of the item's charges would take its counter past its limit (counting the
    /// effect of earlier items of the same batch): nothing was written for this item and no
    /// counter changed. `current` is the counter's stored value (`None`: no live counter).
    OverLimit {
        /// The first of the item's charges that did not fit.
        charge: Charge,
        /// The counter's value before the item.
        current: Option<i64>,
    },
}

/// Identifies one row of counters: a budget's for one subject (run, agent or tenant), or a
/// rate limit's for one subject and window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The tenant.
    pub tenant: String,
    /// The agent; empty when the counters are the tenant's.
    pub agent: String,
    /// The run; empty unless the counters are a run's.
    pub run_id: String,
    /// `budget` or `rate_limit`.
    pub kind: String,
    /// The budget's or rate limit's id.
    pub limit_id: String,
    /// A rate limit window's start, unix ms; 0 for budgets.
    pub window_start_ms: i64,
}

impl CounterKey {
    /// The key of the row holding `charge`'s counter in `tenant`.
    pub fn of(tenant: &str, charge: &Charge) -> Self {
        Self {
            tenant: tenant.to_owned(),
            agent: charge.agent.clone(),
            run_id: charge.run.clone(),
            kind: charge.kind.as_str().to_owned(),
            limit_id: charge.id.clone(),
            window_start_ms: charge.window_start_ms,
        }
    }
}

/// One counter's value and the limit its last charge was checked against, in the counter's
/// stored unit (see `warden_policy::Counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterValue {
    /// The value.
    pub value: i64,
    /// The limit.
    pub limit: i64,
}

/// A stored row of counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    /// Which row.
    pub key: CounterKey,
    /// Counter name (`tokens`, `cost_usd`, `actions`, …) → value and limit.
    pub values: std::collections::BTreeMap<String, CounterValue>,
    /// When it was last charged, unix ms.
    pub updated_at_ms: i64,
    /// After this it counts as absent and may be pruned, unix ms.
    pub expires_at_ms: i64,
}

/// Which counters [`crate::Store::counters`] returns: the tenant's live counters (not
/// expired at `now_ms`) of `agent` and of `run_id`, where given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterFilter {
    /// The tenant.
    pub tenant: String,
    /// Only this agent's counters (`Some("")`: the tenant's own).
    pub agent: Option<String>,
    /// Only this run's counters.
    pub run_id: Option<String>,
    /// Counters expired at this time are left out, unix ms.
    pub now_ms: i64,
}

/// A use of a permit whose token checked out (signature, expiry, action, payload), for
/// [`crate::Store::consume_permit_use`] to count.
#[derive(Debug, Clone, PartialEq)]
pub struct PermitUse {
    /// The tenant of the permit's decision.
    pub tenant: String,
    /// The decision the permit was issued for.
    pub decision_id: String,
    /// Uses the permit allows, from the signed token.
    pub max_uses: u32,
    /// When the permit expires, unix milliseconds, from the signed token.
    pub expires_at_ms: i64,
    /// When it is used, unix milliseconds.
    pub now_ms: i64,
    /// The `permit_verified` event to chain with the use. Its `detail` must be an object
    /// (or `Null`); the store sets `valid`, `reason` and `uses_left` in it.
    pub event: NewEvent,
}

/// What counting a permit use found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitConsumed {
    /// The use was counted; this many remain.
    Used {
        /// Uses left after this one.
        uses_left: u32,
    },
    /// Every use was spent before; nothing was counted.
    UsedUp,
}

impl PermitConsumed {
    /// The verify answer's reason code: `valid` or `used_up`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Used { .. } => "valid",
            Self::UsedUp => "used_up",
        }
    }

    /// Uses left after this verification.
    pub fn uses_left(self) -> u32 {
        match self {
            Self::Used { uses_left } => uses_left,
            Self::UsedUp => 0,
        }
    }
}

/// Which audit events [`crate::Store::events`] returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this tenant's events.
    pub tenant: Option<String>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Only events by this agent.
    pub agent: Option<String>,
    /// Only events for this action type.
    pub action_type: Option<String>,
    /// Only events with this effect.
    pub effect: Option<String>,
    /// Only events at or after this time (unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Only events before this time (unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only events with a greater seq (a cursor for oldest-first paging).
    pub after_seq: Option<i64>,
    /// Only events with a smaller seq (a cursor for newest-first paging).
    pub before_seq: Option<i64>,
    /// At most this many events; 0 means [`EventFilter::DEFAULT_LIMIT`], and anything above
    /// [`EventFilter::MAX_LIMIT`] is capped to it.
    pub limit: u32,
    /// Newest (highest seq) first instead of oldest first.
    pub newest_first: bool,
}

impl EventFilter {
    /// The limit applied when [`EventFilter::limit`] is 0.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The most events one query returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// The number of events this filter actually asks for.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Events read, including the broken one if the walk stopped early.
    pub events_checked: u64,
    /// The first place where the chain does not hold; `None` means it is intact.
    pub first_broken: Option<BrokenLink>,
}

/// Where and how the chain first breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenLink {
    /// The seq of the first stored event that does not verify.
    pub seq: i64,
    /// That event's id.
    pub event_id: String,
    /// What is wrong there.
    pub problem: ChainProblem,
}

/// What is wrong at a [`BrokenLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// The stored hash is not the hash of the stored fields: this row was edited, or its
    /// seq was changed (rows reordered).
    HashMismatch,
    /// The row is self-consistent but its `prev_hash` is not the previous row's hash: the
    /// previous row was edited and rehashed, or replaced.
    PrevHashMismatch,
    /// Events with seqs `from..=to` are gone from the middle of the chain: rows deleted.
    Missing {
        /// The first missing seq.
        from: i64,
        /// The last missing seq.
        to: i64,
    },
    /// The oldest remaining event is not seq 1, and no checkpoint records a purge through
    /// `missing_through` ending in this event's `prev_hash`: rows deleted at the start.
    Unanchored {
        /// The last missing seq.
        missing_through: i64,
    },
    /// A column of this row cannot be decoded.
    Unreadable(String),
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HashMismatch => f.write_str("stored hash does not match the event's contents"),
            Self::PrevHashMismatch => {
                f.write_str("prev_hash does not match the hash of the previous event")
            }
            Self::Missing { from, to } if from == to => write!(f, "event seq {from} is missing"),
            Self::Missing { from, to } => write!(f, "events seq {from} to {to} are missing"),
            Self::Unanchored { missing_through } => write!(
                f,
                "events up to seq {missing_through} are missing and no checkpoint records their purge"
            ),
            Self::Unreadable(detail) => write!(f, "row is unreadable: {detail}"),
        }
    }
}

/// The result of a retention purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Audit events deleted.
    pub purged: u64,
    /// Decisions deleted (those created before the cutoff).
    pub decisions_purged: u64,
    /// The seq of the checkpoint event written; `None` when no event was deleted.
    pub checkpoint_seq: Option<i64>,
}

/// An API key to create. The store never sees the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Public key id, used for lookups.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    /// The tenant the key acts in.
    pub tenant: String,
    /// Roles: `controller`, `agent`, `approver`, `admin`.
    pub roles: Vec<String>,
    /// Agent id, or a glob of agent ids a controller key may name.
    pub agent: Option<String>,
    /// Approver groups.
    pub groups: Vec<String>,
    /// The person an approver key belongs to.
    pub user: Option<String>,
    /// Free-text label for humans.
    pub label: Option<String>,
    /// When it was created, unix milliseconds.
    pub created_at_ms: i64,
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public key id.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    /// The tenant the key acts in.
    pub tenant: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Agent id or glob.
    pub agent: Option<String>,
    /// Approver groups.
    pub groups: Vec<String>,
    /// The person an approver key belongs to.
    pub user: Option<String>,
    /// Free-text label.
    pub label: Option<String>,
    /// When it was created, unix milliseconds.
    pub created_at_ms: i64,
    /// When it was revoked, unix milliseconds; `None` while active.
    pub revoked_at_ms: Option<i64>,
}
