//! Approvals and questions: the records, and the one way they change — a caller-made
//! decision over the row as read under the chain lock, written with its audit events (and
//! webhook deliveries) in that same transaction.
//!
//! Key decision: the store owns atomicity, not the rules. Whether a vote counts (groups,
//! separation of duties, quorum) is the server's business; the store reads the approval
//! under the lock every chain append takes, hands it to an [`ApprovalDecider`], and writes
//! what that returns — the new row, its events, a replacement decision body, outbox rows —
//! or nothing. Two replicas expiring the same approval therefore audit it once: the second
//! one reads a row that is no longer pending.

use serde::{Deserialize, Serialize};

use crate::model::{Charge, NewEvent};

/// Well-known values of [`ApprovalRecord::kind`].
pub mod approval_kind {
    /// Created by a `require_approval` decision.
    pub const APPROVAL: &str = "approval";
    /// A question an agent asked a human.
    pub const QUESTION: &str = "question";
}

/// Well-known values of [`ApprovalRecord::status`].
pub mod status {
    /// Waiting for a human.
    pub const PENDING: &str = "pending";
    /// Approved by the quorum.
    pub const APPROVED: &str = "approved";
    /// Rejected by an approver.
    pub const REJECTED: &str = "rejected";
    /// Not decided in time: a deny (or, for a question, no answer).
    pub const EXPIRED: &str = "expired";
    /// A question that was answered.
    pub const ANSWERED: &str = "answered";
}

/// One approver's vote (or a question's answer), as recorded on the approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The person, from their key.
    pub user: String,
    /// The key they used.
    pub key_id: String,
    /// `approve`, `reject` or `answer`.
    pub verdict: String,
    /// Their reason (or answer), if any.
    pub reason: Option<String>,
    /// When, unix milliseconds.
    pub at_ms: i64,
}

/// An approval or question, new or as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApprovalRecord {
    /// Its id (a ULID).
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// See [`approval_kind`].
    pub kind: String,
    /// See [`status`].
    pub status: String,
    /// The decision that required it (approvals only).
    pub decision_id: Option<String>,
    /// The keyed digest of the action it approves (approvals only).
    pub action_digest: Option<String>,
    /// The policy version that required it.
    pub policy_version: Option<String>,
    /// The rule that required it.
    pub rule_id: Option<String>,
    /// Approver groups; one of them is needed. Empty means any approver of the tenant.
    pub groups: Vec<String>,
    /// Distinct users needed to approve.
    pub quorum: u32,
    /// The key that asked (it may never decide).
    pub requested_by_key: String,
    /// The agent the action was for (it may never decide).
    pub agent: Option<String>,
    /// The user the action was on behalf of (they may never decide).
    pub on_behalf_of: Option<String>,
    /// The action's type (approvals only).
    pub action_type: Option<String>,
    /// The question's text (questions only).
    pub question: Option<String>,
    /// The answers a question allows; empty means free text.
    pub options: Vec<String>,
    /// The agent run that asked, if given.
    pub run_id: Option<String>,
    /// Votes so far, in order.
    pub votes: Vec<Vote>,
    /// The deciding reason (a rejection's, or the expiry's).
    pub reason: Option<String>,
    /// A question's answer.
    pub answer: Option<String>,
    /// When it was created, unix milliseconds.
    pub created_at_ms: i64,
    /// When a pending one expires, unix milliseconds.
    pub expires_at_ms: i64,
    /// When it was decided, unix milliseconds.
    pub decided_at_ms: Option<i64>,
    /// What it grants once approved (approvals only).
    pub on_grant: OnGrant,
}

/// What an approval grants once it is approved, held from its `require_approval` decision:
/// the permit to sign and the counters to charge, both in the granting transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OnGrant {
    /// What the permit binds, as the server encodes it (the store only keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit: Option<serde_json::Value>,
    /// The action's budget and rate-limit charges, as made at the decision; they are charged
    /// as made at the grant (see [`Charge::at`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<Charge>,
}

impl OnGrant {
    /// Whether it grants nothing.
    pub fn is_empty(&self) -> bool {
        self.permit.is_none() && self.charges.is_empty()
    }
}

impl ApprovalRecord {
    /// Whether it still waits for a human.
    pub fn is_pending(&self) -> bool {
        self.status == status::PENDING
    }
}

/// A webhook delivery to write with the event it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique id; also the delivery id the receiver sees.
    pub id: String,
    /// The tenant whose webhook it is.
    pub tenant: String,
    /// Where to send it.
    pub url: String,
    /// The JSON body, exactly as it will be signed and sent.
    pub body: String,
    /// When it was written, unix milliseconds; also its first attempt.
    pub created_at_ms: i64,
}

/// A webhook delivery waiting to be sent (or retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The message.
    pub message: OutboxMessage,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_attempt_ms: i64,
}

/// What a change to an approval writes, in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalUpdate {
    /// The approval as it is to be stored (same id and tenant).
    pub record: ApprovalRecord,
    /// Audit events, chained in this order.
    pub events: Vec<NewEvent>,
    /// Replaces the body of the approval's decision: the final decision.
    pub decision_body: Option<String>,
    /// Webhook deliveries to enqueue.
    pub outbox: Vec<OutboxMessage>,
    /// Budget and rate-limit counters to charge: all of them, or, when one cannot take its
    /// charge, none, and the decider is asked again with [`OverLimit`].
    pub charges: Vec<Charge>,
}

/// A charge its counter cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The charge.
    pub charge: Charge,
    /// The counter's stored value (`None`: no counter yet).
    pub current: Option<i64>,
}

/// Decides a change from the approval as read under the chain lock: `Some` writes it,
/// `None` writes nothing (a refused vote, an approval no longer pending). Called a second
/// time, in the same transaction, with the limit when a charge of the first answer does not
/// fit; that answer must charge nothing.
pub type ApprovalDecider =
    Box<dyn FnMut(&ApprovalRecord, Option<&OverLimit>) -> Option<ApprovalUpdate> + Send>;

/// What [`crate::Store::update_approval`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalChanged {
    /// No approval of this tenant has this id.
    NotFound,
    /// The decider wrote nothing; this is the approval it saw.
    Unchanged(ApprovalRecord),
    /// Written and durable: the approval as stored now.
    Written {
        /// As stored now.
        after: ApprovalRecord,
    },
}

/// Which approvals [`crate::Store::approvals`] lists, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalFilter {
    /// The tenant (required: listings never span tenants).
    pub tenant: String,
    /// Only this status.
    pub status: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At most this many (capped at 1000; 0 means 100).
    pub limit: u32,
    /// Only those listed after this one: its `(created_at_ms, id)`, for paging.
    pub before: Option<(i64, String)>,
}

/// A signal that approvals may have changed, for waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalSignal {
    /// This approval was decided (on any replica).
    Changed(String),
    /// Signals may have been missed (the listener reconnected, or a receiver lagged):
    /// every waiter should read its approval again.
    Resync,
}
