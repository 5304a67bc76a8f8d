//! Proposed policy changes — an agent's, or a suggestion Warden observed from repeated
//! friction: the records, and the ways they change — inserted with their audit events
//! (superseding the agent's older pending proposal of the same subject, or updating the
//! pending suggestion of the same friction), decided only from an expected status, and
//! applied in the transaction of the policy version they publish.
//!
//! Key decision: the store owns atomicity, not the review. What a proposal's analysis says
//! and who may decide it is the server's business (it has the core); the store writes a
//! change only while the row is in the status the caller read, under the chain lock, so two
//! approvers racing on two replicas change it once, and a proposal is never applied without
//! its version, nor a version published for it without the proposal saying so.

use crate::model::NewEvent;

/// Well-known values of [`ProposalRecord::status`].
pub mod proposal_status {
    /// Proven narrowing or neutral and applied at once.
    pub const AUTO_APPROVED: &str = "auto_approved";
    /// Waiting for a human.
    pub const NEEDS_HUMAN: &str = "needs_human";
    /// Waiting for a narrower change (a human may still approve it as it is).
    pub const REVISE_REQUESTED: &str = "revise_requested";
    /// Refused by the review or by a human.
    pub const REJECTED: &str = "rejected";
    /// Approved by a human and applied.
    pub const APPROVED: &str = "approved";
    /// Replaced by a newer proposal of the same agent about the same subject.
    pub const SUPERSEDED: &str = "superseded";

    /// The statuses a human can still decide from.
    pub const PENDING: [&str; 2] = [NEEDS_HUMAN, REVISE_REQUESTED];

    /// Every status, for validating filters.
    pub const ALL: [&str; 6] = [
        AUTO_APPROVED,
        NEEDS_HUMAN,
        REVISE_REQUESTED,
        REJECTED,
        APPROVED,
        SUPERSEDED,
    ];
}

/// Well-known values of [`ProposalRecord::source`].
pub mod proposal_source {
    /// Submitted by an agent (`POST /v1/proposals`).
    pub const AGENT: &str = "agent";
    /// Drafted by Warden from repeated friction.
    pub const OBSERVED: &str = "observed";

    /// Every source, for validating filters.
    pub const ALL: [&str; 2] = [AGENT, OBSERVED];
}

/// A proposal, new or as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRecord {
    /// Its id (a ULID).
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The agent that proposed it, from its key.
    pub agent: String,
    /// The key it was submitted with.
    pub key_id: String,
    /// See [`proposal_status`].
    pub status: String,
    /// What it is about, for superseding (may be empty: nothing supersedes by it).
    pub subject: String,
    /// The digest of its operations, for the history check.
    pub change_hash: String,
    /// The proposal as submitted, JSON text.
    pub body: String,
    /// The analysis it is decided on, JSON text.
    pub review: String,
    /// The digest a human presents to approve exactly that analysis.
    pub review_token: String,
    /// The content hash of the live version it was analyzed against.
    pub live_hash: String,
    /// The revision it published, once applied (set by the store from the publish).
    pub applied_revision: Option<i64>,
    /// That revision's version.
    pub applied_version: Option<String>,
    /// Who decided it: an approver's user, or `review`.
    pub decided_by: Option<String>,
    /// A rejection's reason.
    pub reason: Option<String>,
    /// The proposal that replaced it.
    pub superseded_by: Option<String>,
    /// When it was submitted, unix milliseconds.
    pub created_at_ms: i64,
    /// When it was decided, unix milliseconds.
    pub decided_at_ms: Option<i64>,
    /// See [`proposal_source`] (empty reads as [`proposal_source::AGENT`]).
    pub source: String,
    /// An observed suggestion's friction key (at most one per key is pending).
    pub observed_key: Option<String>,
    /// How often its friction was seen in the window when last counted (observed only).
    pub hits: i64,
}

impl Default for ProposalRecord {
    /// An agent's proposal with every other field empty.
    fn default() -> Self {
        Self {
            id: String::new(),
            tenant: String::new(),
            agent: String::new(),
            key_id: String::new(),
            status: String::new(),
            subject: String::new(),
            change_hash: String::new(),
            body: String::new(),
            review: String::new(),
            review_token: String::new(),
            live_hash: String::new(),
            applied_revision: None,
            applied_version: None,
            decided_by: None,
            reason: None,
            superseded_by: None,
            created_at_ms: 0,
            decided_at_ms: None,
            source: proposal_source::AGENT.to_owned(),
            observed_key: None,
            hits: 0,
        }
    }
}

impl ProposalRecord {
    /// Whether a human can still decide it.
    pub fn is_pending(&self) -> bool {
        proposal_status::PENDING.contains(&self.status.as_str())
    }

    /// Who proposed it: [`proposal_source::AGENT`] or [`proposal_source::OBSERVED`].
    pub fn source(&self) -> &str {
        if self.source.is_empty() {
            proposal_source::AGENT
        } else {
            &self.source
        }
    }
}

/// An older pending proposal a new one replaces, with its `proposal_superseded` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Supersede {
    /// The older proposal's id.
    pub id: String,
    /// Chained only if it is still pending when the new one is written.
    pub event: NewEvent,
}

/// A change to the proposals table, written in one transaction under the chain lock (on its
/// own with [`crate::Store::write_proposal`], or with a version in
/// [`crate::PolicyPublish::proposal`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ProposalWrite {
    /// A new proposal with its events. `supersede` must name exactly the pending proposals
    /// of the same tenant, agent and (non-empty) subject as they are when it is written;
    /// otherwise nothing is written and the answer is [`ProposalWritten::Stale`], so the
    /// caller reads them again.
    Insert {
        /// The new row.
        record: ProposalRecord,
        /// Its events (`proposal_submitted`, a security event), chained in this order.
        events: Vec<NewEvent>,
        /// The proposals it replaces.
        supersede: Vec<Supersede>,
        /// The agent's rate limit, counted in the transaction (so across replicas): past
        /// it, nothing is written and the answer is [`ProposalWritten::OverLimit`].
        limit: Option<ProposalLimit>,
    },
    /// A stored proposal's new state (same id and tenant), written only while its status is
    /// one of `expected`.
    Update {
        /// The row as it is to be stored.
        record: ProposalRecord,
        /// The statuses it may change from.
        expected: Vec<String>,
        /// Its events, chained in this order.
        events: Vec<NewEvent>,
    },
    /// An observed suggestion (`record.observed_key` set): inserted when `replaces` is
    /// `None`, else the pending row `replaces` gets the record's analysis, body and hits.
    /// Written only while the tenant's pending suggestion of that key is exactly `replaces`
    /// and holds no more hits than the record; otherwise nothing is written and the answer
    /// is [`ProposalWritten::Stale`] with the pending row, if any (two replicas observing
    /// the same friction at once thus keep one row, with the higher count).
    Observe {
        /// The row as it is to be stored (its id is `replaces` when it updates).
        record: ProposalRecord,
        /// The pending suggestion it updates.
        replaces: Option<String>,
        /// Its events (`proposal_observed`), chained in this order.
        events: Vec<NewEvent>,
    },
}

impl ProposalWrite {
    /// The proposal written.
    pub fn record(&self) -> &ProposalRecord {
        match self {
            Self::Insert { record, .. }
            | Self::Update { record, .. }
            | Self::Observe { record, .. } => record,
        }
    }
}

/// At most `max` proposals of one agent submitted at or after `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalLimit {
    /// The start of the window, unix milliseconds.
    pub since_ms: i64,
    /// How many the window may hold.
    pub max: u64,
}

/// What a proposal write did.
#[derive(Debug, Clone, PartialEq)]
pub enum ProposalWritten {
    /// Written and durable: the row as stored now.
    Written(ProposalRecord),
    /// No proposal of this tenant has this id (updates only).
    NotFound,
    /// Nothing written: the row is no longer in an expected status (it is given), or the
    /// pending proposals to supersede changed (`None`).
    Stale(Option<ProposalRecord>),
    /// Nothing written: the agent submitted as many proposals as its limit allows.
    OverLimit,
}

/// Which proposals [`crate::Store::proposals`] lists, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProposalFilter {
    /// The tenant (required: listings never span tenants).
    pub tenant: String,
    /// Only this status.
    pub status: Option<String>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this change (see [`ProposalRecord::change_hash`]).
    pub change_hash: Option<String>,
    /// Only from this source: `agent` or `observed` (see [`proposal_source`]).
    pub source: Option<String>,
    /// Only the observed suggestion of this friction key.
    pub observed_key: Option<String>,
    /// At most this many (capped at 1000; 0 means 100).
    pub limit: u32,
    /// Only those listed after this one: its `(created_at_ms, id)`, for paging.
    pub before: Option<(i64, String)>,
}

/// Every column of a proposal row, in [`row`] order.
pub(crate) const COLUMNS: [&str; 21] = [
    "id",
    "tenant",
    "agent",
    "key_id",
    "status",
    "subject",
    "change_hash",
    "body",
    "review",
    "review_token",
    "live_hash",
    "applied_revision",
    "applied_version",
    "decided_by",
    "reason",
    "superseded_by",
    "created_at_ms",
    "decided_at_ms",
    "source",
    "observed_key",
    "hits",
];

/// `id, tenant, …`: every column, for selects.
pub(crate) fn columns() -> &'static str {
    static COLUMNS_TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS_TEXT.get_or_init(|| COLUMNS.join(", "))
}

/// The insert of a row, values in [`COLUMNS`] order.
pub(crate) fn insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let values: Vec<String> = (1..=COLUMNS.len()).map(|n| format!("${n}")).collect();
        format!(
            "INSERT INTO proposals ({}) VALUES ({})",
            COLUMNS.join(", "),
            values.join(", ")
        )
    })
}

/// The values of `p`'s row, in [`COLUMNS`] order.
pub(crate) fn row<'a>(p: &'a ProposalRecord) -> [crate::append::Cell<'a>; 21] {
    use crate::append::Cell;
    let text = |v: &'a str| Cell::Text(Some(v));
    [
        text(&p.id),
        text(&p.tenant),
        text(&p.agent),
        text(&p.key_id),
        text(&p.status),
        text(&p.subject),
        text(&p.change_hash),
        text(&p.body),
        text(&p.review),
        text(&p.review_token),
        text(&p.live_hash),
        Cell::OptInt(p.applied_revision),
        Cell::Text(p.applied_version.as_deref()),
        Cell::Text(p.decided_by.as_deref()),
        Cell::Text(p.reason.as_deref()),
        Cell::Text(p.superseded_by.as_deref()),
        Cell::Int(p.created_at_ms),
        Cell::OptInt(p.decided_at_ms),
        text(p.source()),
        Cell::Text(p.observed_key.as_deref()),
        Cell::Int(p.hits),
    ]
}

/// How many proposals the tenant's (`$1`) agent `$2` submitted at or after `$3` (Warden's
/// own suggestions about it are not the agent's).
pub(crate) const COUNT_SINCE: &str = "SELECT COUNT(*) AS n FROM proposals \
    WHERE tenant = $1 AND agent = $2 AND created_at_ms >= $3 AND source = 'agent'";

/// Ids of the tenant's (`$1`) pending proposals of agent `$2` about subject `$3` (an agent's
/// proposal never supersedes a suggestion Warden made).
pub(crate) const PENDING_OF_SUBJECT: &str = "SELECT id FROM proposals \
    WHERE tenant = $1 AND agent = $2 AND subject = $3 AND status IN ($4, $5) \
    AND source = 'agent' ORDER BY id";

/// Marks proposal `$4` of tenant `$3` superseded by `$1` at `$2`, only while pending.
pub(crate) const SUPERSEDE: &str = "UPDATE proposals SET status = 'superseded', \
    superseded_by = $1, decided_at_ms = $2 \
    WHERE tenant = $3 AND id = $4 AND status IN ('needs_human', 'revise_requested')";

/// The tenant's (`$1`) pending suggestion of observed key `$2`.
pub(crate) const PENDING_OBSERVED: &str = "SELECT id FROM proposals \
    WHERE tenant = $1 AND observed_key = $2 AND status IN ('needs_human', 'revise_requested') \
    ORDER BY id";

/// A pending suggestion's new analysis (`$9` tenant, `$10` id, `$11` its key), only while it
/// holds no more hits than `$12`.
pub(crate) const OBSERVE_UPDATE: &str = "UPDATE proposals SET status = $1, subject = $2, \
    change_hash = $3, body = $4, review = $5, review_token = $6, live_hash = $7, hits = $8 \
    WHERE tenant = $9 AND id = $10 AND observed_key = $11 AND hits <= $12 \
    AND status IN ('needs_human', 'revise_requested')";

/// The update of a row's changing columns, `$10` tenant and `$11` id; the caller appends
/// the expected statuses from `$12` on.
pub(crate) const UPDATE_PREFIX: &str = "UPDATE proposals SET status = $1, review = $2, \
    review_token = $3, live_hash = $4, applied_revision = $5, applied_version = $6, \
    decided_by = $7, reason = $8, decided_at_ms = $9 WHERE tenant = $10 AND id = $11";

/// [`UPDATE_PREFIX`] with `n` expected statuses.
pub(crate) fn update_sql(n: usize) -> String {
    let statuses: Vec<String> = (12..12 + n).map(|i| format!("${i}")).collect();
    format!(
        "{UPDATE_PREFIX} AND status IN ({})",
        if statuses.is_empty() {
            "NULL".to_owned()
        } else {
            statuses.join(", ")
        }
    )
}

/// Refuses a write whose rows would not be a proposal's.
pub(crate) fn check(write: &ProposalWrite) -> Result<(), crate::StoreError> {
    let record = write.record();
    let invalid = |reason: &str| {
        Err(crate::StoreError::InvalidEvent {
            id: record.id.clone(),
            reason: reason.to_owned(),
        })
    };
    if record.id.is_empty() || record.tenant.is_empty() {
        return invalid("a proposal needs an id and a tenant");
    }
    if !proposal_status::ALL.contains(&record.status.as_str()) {
        return invalid("a proposal's status must be one of the known ones");
    }
    if let ProposalWrite::Update { expected, .. } = write
        && expected.is_empty()
    {
        return invalid("a proposal update must expect some status");
    }
    if let ProposalWrite::Observe {
        record, replaces, ..
    } = write
    {
        if record.observed_key.is_none() || record.source() != proposal_source::OBSERVED {
            return invalid("an observed suggestion needs its key and the source `observed`");
        }
        if !record.is_pending() {
            return invalid("an observed suggestion is written pending");
        }
        if replaces.as_ref().is_some_and(|id| *id != record.id) {
            return invalid("an observed suggestion's update keeps the id it replaces");
        }
    }
    Ok(())
}

/// Whether the pending proposals found are exactly the ones the insert supersedes.
pub(crate) fn supersedes_exactly(found: &[String], supersede: &[Supersede]) -> bool {
    let mut named: Vec<&str> = supersede.iter().map(|s| s.id.as_str()).collect();
    named.sort_unstable();
    named.len() == found.len() && named.iter().zip(found).all(|(a, b)| *a == b)
}
