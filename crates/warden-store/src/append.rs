//! What a group commit writes, decided without I/O: both appenders (the generic sqlx one and
//! SQLite's writer thread) check a batch, read the chain head and the stored holders of its
//! idempotency keys under the chain lock, and then let [`plan`] decide the rest.

use std::collections::HashSet;

use crate::approval::{ApprovalRecord, OutboxMessage, status};
use crate::chain::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::model::{Append, Appended, NewDecision, NewEvent, StoredDecision, kind};

/// The last event of the chain, which the next one links to.
#[derive(Debug)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    /// The position before the first event.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// A new event at its place in the chain.
#[derive(Debug)]
pub(crate) struct Link {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub event: NewEvent,
}

/// The rows a batch writes and the answer for each of its items, in order.
#[derive(Debug)]
pub(crate) struct Plan {
    pub links: Vec<Link>,
    pub decisions: Vec<NewDecision>,
    pub approvals: Vec<ApprovalRecord>,
    pub outbox: Vec<OutboxMessage>,
    pub results: Vec<Appended>,
}

/// Refuses a batch the store must not record, before any lock is taken.
pub(crate) fn check(batch: &mut [Append]) -> Result<(), StoreError> {
    for item in batch.iter_mut() {
        validate(item)?;
    }
    refuse_repeated_ids(batch)
}

/// The (tenant, idempotency key) of every keyed decision in `batch`.
pub(crate) fn keys(batch: &[Append]) -> impl Iterator<Item = (&str, &str)> {
    batch.iter().filter_map(|item| {
        let d = item.decision.as_ref()?;
        Some((d.tenant.as_str(), d.idempotency_key.as_deref()?))
    })
}

/// Chains `batch` after `head`. `holders` are the stored decisions holding any of the
/// batch's idempotency keys, read under the same lock as `head`: an item whose key is
/// held (there, or by an earlier item of the batch) writes nothing and answers the holder.
pub(crate) fn plan(
    batch: Vec<Append>,
    mut head: Head,
    mut holders: Vec<StoredDecision>,
) -> Result<Plan, StoreError> {
    let mut links = Vec::with_capacity(batch.len());
    let mut decisions: Vec<NewDecision> = Vec::new();
    let mut approvals = Vec::new();
    let mut outbox = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    for item in batch {
        if let Some(decision) = &item.decision {
            if let Some(holder) = holder_of(&holders, decision) {
                results.push(Appended::Duplicate(holder.clone()));
                continue;
            }
            // A key used earlier in this batch: that item's decision holds it. Parsed back
            // only here, as a retry within one batch is rare.
            if let Some(earlier) = decisions.iter().find(|d| same_key(d, decision)) {
                let holder = earlier.stored()?;
                results.push(Appended::Duplicate(holder.clone()));
                holders.push(holder);
                continue;
            }
        }
        let seq = head.seq + 1;
        let hash = chain::event_hash(seq, &head.hash, &item.event)?;
        if let Some(decision) = item.decision {
            decisions.push(decision);
        }
        approvals.extend(item.approval);
        outbox.extend(item.outbox);
        results.push(Appended::Written {
            seq,
            hash: hash.clone(),
        });
        let prev = std::mem::replace(
            &mut head,
            Head {
                seq,
                hash: hash.clone(),
            },
        );
        links.push(Link {
            seq,
            prev_hash: prev.hash,
            hash,
            event: item.event,
        });
    }
    Ok(Plan {
        links,
        decisions,
        approvals,
        outbox,
        results,
    })
}

/// The columns of an `audit_events` row, in table order: the one list the insert
/// statements of both appenders, their bound values ([`event_row`]) and the reads use.
pub(crate) const EVENT_COLUMNS: [&str; 24] = [
    "seq",
    "id",
    "time_ms",
    "tenant",
    "kind",
    "agent",
    "on_behalf_of",
    "action_type",
    "target_type",
    "target_id",
    "mode",
    "confidence_initial",
    "confidence_adjusted",
    "effect",
    "rule_ids",
    "reasons",
    "policy_version",
    "payload_digest",
    "context_digest",
    "kept",
    "decision_id",
    "detail",
    "prev_hash",
    "hash",
];

/// One value of an event row, as both appenders bind it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Real(Option<f64>),
    Text(Option<&'a str>),
}

/// The values of `link`'s row, in [`EVENT_COLUMNS`] order; `json` is its encoded JSON
/// columns.
pub(crate) fn event_row<'a>(link: &'a Link, json: &'a EncodedEvent) -> [Cell<'a>; 24] {
    let e = &link.event;
    let text = |v: &'a Option<String>| Cell::Text(v.as_deref());
    [
        Cell::Int(link.seq),
        Cell::Text(Some(&e.id)),
        Cell::Int(e.time_ms),
        Cell::Text(Some(&e.tenant)),
        Cell::Text(Some(&e.kind)),
        text(&e.agent),
        text(&e.on_behalf_of),
        text(&e.action_type),
        text(&e.target_type),
        text(&e.target_id),
        text(&e.mode),
        Cell::Real(e.confidence_initial),
        Cell::Real(e.confidence_adjusted),
        text(&e.effect),
        Cell::Text(Some(&json.rule_ids)),
        Cell::Text(Some(&json.reasons)),
        text(&e.policy_version),
        text(&e.payload_digest),
        text(&e.context_digest),
        Cell::Text(Some(&json.kept)),
        text(&e.decision_id),
        Cell::Text(Some(&json.detail)),
        Cell::Text(Some(&link.prev_hash)),
        Cell::Text(Some(&link.hash)),
    ]
}

/// The JSON-valued columns of an event row, as the hash covers them.
#[derive(Debug)]
pub(crate) struct EncodedEvent {
    pub rule_ids: String,
    pub reasons: String,
    pub kept: String,
    pub detail: String,
}

/// Encodes `event`'s JSON-valued columns.
pub(crate) fn encode(event: &NewEvent) -> Result<EncodedEvent, StoreError> {
    Ok(EncodedEvent {
        rule_ids: json_text(&event.id, &event.rule_ids)?,
        reasons: json_text(&event.id, &event.reasons)?,
        kept: chain::canonical_json(&event.id, &event.kept)?,
        detail: chain::canonical_json(&event.id, &event.detail)?,
    })
}

/// `value` as JSON text for a TEXT column.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(
    id: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode {
        id: id.to_owned(),
        source,
    })
}

/// The decision already holding `decision`'s idempotency key in its tenant, if any.
fn holder_of<'a>(
    holders: &'a [StoredDecision],
    decision: &NewDecision,
) -> Option<&'a StoredDecision> {
    let key = decision.idempotency_key.as_ref()?;
    holders
        .iter()
        .find(|h| h.tenant == decision.tenant && h.idempotency_key.as_ref() == Some(key))
}

/// Whether two new decisions of one tenant carry the same idempotency key.
fn same_key(a: &NewDecision, b: &NewDecision) -> bool {
    a.tenant == b.tenant && a.idempotency_key.is_some() && a.idempotency_key == b.idempotency_key
}

/// A batch that repeats an event or decision id would collide with itself; refuse it with
/// the same error a collision with a stored row gives, before anything is written.
fn refuse_repeated_ids(batch: &[Append]) -> Result<(), StoreError> {
    let mut events = HashSet::with_capacity(batch.len());
    let mut decisions = HashSet::new();
    for item in batch {
        if !events.insert(item.event.id.as_str()) {
            return Err(StoreError::DuplicateEvent(item.event.id.clone()));
        }
        if let Some(d) = &item.decision
            && !decisions.insert(d.id.as_str())
        {
            return Err(StoreError::DuplicateDecision(d.id.clone()));
        }
    }
    Ok(())
}

/// Refuses what the store must not record.
fn validate(item: &mut Append) -> Result<(), StoreError> {
    let invalid = |event: &NewEvent, reason: &str| StoreError::InvalidEvent {
        id: event.id.clone(),
        reason: reason.to_owned(),
    };
    let event = &mut item.event;
    if event.id.is_empty() {
        return Err(invalid(event, "the event id is empty"));
    }
    if event.kind == kind::CHECKPOINT {
        return Err(invalid(
            event,
            "checkpoint events are written only by purge",
        ));
    }
    let confidences = [event.confidence_initial, event.confidence_adjusted];
    if confidences
        .into_iter()
        .flatten()
        .any(|value| !value.is_finite())
    {
        return Err(invalid(event, "confidence must be a finite number"));
    }
    // SQLite may store an integral REAL as an integer, which turns -0.0 into 0.0 and would
    // change the hash on the way back; record +0.0 from the start.
    for value in [
        &mut event.confidence_initial,
        &mut event.confidence_adjusted,
    ]
    .into_iter()
    .flatten()
    {
        if *value == 0.0 {
            *value = 0.0;
        }
    }
    if let Some(approval) = &item.approval
        && (approval.tenant != event.tenant
            || approval.id.is_empty()
            || approval.status != status::PENDING)
    {
        return Err(invalid(
            event,
            "a new approval must be pending, with an id, in the event's tenant",
        ));
    }
    if let Some(decision) = &item.decision {
        if decision.tenant != event.tenant {
            return Err(invalid(
                event,
                "the decision's tenant differs from the event's",
            ));
        }
        if decision.id.is_empty() {
            return Err(invalid(event, "the decision id is empty"));
        }
    }
    Ok(())
}

/// The columns of an `approvals` row, in the order [`approval_row`] gives its values.
pub(crate) const APPROVAL_COLUMNS: [&str; 23] = [
    "id",
    "tenant",
    "kind",
    "status",
    "decision_id",
    "action_digest",
    "policy_version",
    "rule_id",
    "group_names",
    "quorum",
    "requested_by_key",
    "agent",
    "on_behalf_of",
    "action_type",
    "question",
    "options",
    "run_id",
    "votes",
    "reason",
    "answer",
    "created_at_ms",
    "expires_at_ms",
    "decided_at_ms",
];

/// The JSON-valued columns of an approval row.
#[derive(Debug)]
pub(crate) struct EncodedApproval {
    pub groups: String,
    pub options: String,
    pub votes: String,
}

/// Encodes `approval`'s JSON-valued columns.
pub(crate) fn encode_approval(approval: &ApprovalRecord) -> Result<EncodedApproval, StoreError> {
    Ok(EncodedApproval {
        groups: json_text(&approval.id, &approval.groups)?,
        options: json_text(&approval.id, &approval.options)?,
        votes: json_text(&approval.id, &approval.votes)?,
    })
}

/// The values of `a`'s row, in [`APPROVAL_COLUMNS`] order.
pub(crate) fn approval_row<'a>(a: &'a ApprovalRecord, json: &'a EncodedApproval) -> [Cell<'a>; 23] {
    let text = |v: &'a Option<String>| Cell::Text(v.as_deref());
    [
        Cell::Text(Some(&a.id)),
        Cell::Text(Some(&a.tenant)),
        Cell::Text(Some(&a.kind)),
        Cell::Text(Some(&a.status)),
        text(&a.decision_id),
        text(&a.action_digest),
        text(&a.policy_version),
        text(&a.rule_id),
        Cell::Text(Some(&json.groups)),
        Cell::Int(i64::from(a.quorum)),
        Cell::Text(Some(&a.requested_by_key)),
        text(&a.agent),
        text(&a.on_behalf_of),
        text(&a.action_type),
        text(&a.question),
        Cell::Text(Some(&json.options)),
        text(&a.run_id),
        Cell::Text(Some(&json.votes)),
        text(&a.reason),
        text(&a.answer),
        Cell::Int(a.created_at_ms),
        Cell::Int(a.expires_at_ms),
        Cell::OptInt(a.decided_at_ms),
    ]
}

/// `INSERT INTO approvals (...) VALUES ($1, ...)`, shared by both appenders.
pub(crate) fn insert_approval_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let values: Vec<String> = (1..=APPROVAL_COLUMNS.len())
            .map(|n| format!("${n}"))
            .collect();
        format!(
            "INSERT INTO approvals ({}) VALUES ({})",
            APPROVAL_COLUMNS.join(", "),
            values.join(", ")
        )
    })
}

/// The insert of an outbox row: id, tenant, url, body, created_at_ms and the first
/// attempt's time (the same), no attempts yet.
pub(crate) const INSERT_OUTBOX: &str = "INSERT INTO webhook_outbox \
    (id, tenant, url, body, created_at_ms, attempts, next_attempt_ms) \
    VALUES ($1, $2, $3, $4, $5, 0, $6)";
