//! What a group commit writes, decided without I/O: both appenders (the generic sqlx one and
//! SQLite's writer thread) check a batch, read the chain head, the stored holders of its
//! idempotency keys and the counters it charges under the chain lock, and then let [`plan`]
//! decide the rest.

use std::collections::{HashMap, HashSet};

use warden_policy::Expiry;

use crate::approval::{ApprovalRecord, OutboxMessage, OverLimit, status};
use crate::chain::{self, GENESIS_HASH};
use crate::error::StoreError;
use crate::model::{
    Append, Appended, Charge, CounterKey, CounterRow, CounterValue, NewDecision, NewEvent,
    PermitConsumed, PermitUse, StoredDecision, kind,
};

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
    /// Counters to upsert: each one's value after the whole batch.
    pub counters: Vec<CounterRow>,
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

/// Every distinct counter `batch` charges, to read under the chain lock.
pub(crate) fn counter_keys(batch: &[Append]) -> Vec<CounterKey> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for item in batch {
        for charge in &item.charges {
            let key = CounterKey::of(&item.event.tenant, charge);
            if seen.insert(key.clone()) {
                keys.push(key);
            }
        }
    }
    keys
}

/// Charges `tenant`'s `charges` to `state` (the counter rows read under the chain lock, as
/// earlier charges of the same transaction left them), marking the rows it changes in
/// `touched`. All or nothing: when a charge does not fit, nothing moves and the answer is
/// that charge and its counter's value.
pub(crate) fn charge(
    state: &mut HashMap<CounterKey, CounterRow>,
    touched: &mut HashSet<CounterKey>,
    tenant: &str,
    charges: &[Charge],
) -> Result<(), Box<OverLimit>> {
    let mut keys = Vec::with_capacity(charges.len());
    for charge in charges {
        let key = CounterKey::of(tenant, charge);
        let current = live(state, &key, charge.now_ms)
            .and_then(|row| row.values.get(charge.counter.as_str()))
            .map(|c| c.value);
        if !charge.fits(current) {
            return Err(Box::new(OverLimit {
                charge: charge.clone(),
                current,
            }));
        }
        keys.push(key);
    }
    for (charge, key) in charges.iter().zip(keys) {
        let fresh = live(state, &key, charge.now_ms).is_none();
        let row = state.entry(key.clone()).or_insert_with(|| CounterRow {
            key: key.clone(),
            values: Default::default(),
            updated_at_ms: charge.now_ms,
            expires_at_ms: 0,
        });
        match charge.expiry {
            // An expired row is a new run or window: it starts from nothing.
            Expiry::FromFirstUse(at) | Expiry::FromLastUse(at) if fresh => {
                row.values.clear();
                row.expires_at_ms = at;
            }
            Expiry::FromLastUse(at) => row.expires_at_ms = row.expires_at_ms.max(at),
            Expiry::FromFirstUse(_) => {}
        }
        let name = charge.counter.as_str();
        let current = row.values.get(name).map(|c| c.value);
        row.values.insert(
            name.to_owned(),
            CounterValue {
                value: charge.apply(current),
                limit: charge.limit,
            },
        );
        row.updated_at_ms = charge.now_ms;
        touched.insert(key);
    }
    Ok(())
}

/// Chains `batch` after `head`. `holders` are the stored decisions holding any of the
/// batch's idempotency keys, and `counters` the stored counters it charges, both read under
/// the same lock as `head`: an item whose key is held (there, or by an earlier item of the
/// batch) writes nothing and answers the holder; then an item with a charge its counter
/// cannot take (counting earlier items of the batch) writes nothing and answers
/// [`Appended::OverLimit`]. A replay therefore never charges twice.
pub(crate) fn plan(
    batch: Vec<Append>,
    mut head: Head,
    mut holders: Vec<StoredDecision>,
    counters: Vec<CounterRow>,
) -> Result<Plan, StoreError> {
    let mut links = Vec::with_capacity(batch.len());
    let mut decisions: Vec<NewDecision> = Vec::new();
    let mut approvals = Vec::new();
    let mut outbox = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut state: HashMap<CounterKey, CounterRow> =
        counters.into_iter().map(|c| (c.key.clone(), c)).collect();
    let mut touched: HashSet<CounterKey> = HashSet::new();
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
        if let Err(over) = charge(&mut state, &mut touched, &item.event.tenant, &item.charges) {
            let OverLimit { charge, current } = *over;
            results.push(Appended::OverLimit { charge, current });
            continue;
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
    let counters = touched
        .into_iter()
        .filter_map(|key| state.remove(&key))
        .collect();
    Ok(Plan {
        links,
        decisions,
        counters,
        approvals,
        outbox,
        results,
    })
}

/// Counts a permit use: inserts its row at the first use, increments it while uses are
/// left, and returns `uses, max_uses` only when it counted. One statement, so the check and
/// the increment cannot be separated; both backends run this text (`$N` binds positionally
/// in SQLite). Binds: tenant, decision id, max uses, expiry, now.
pub(crate) const CONSUME_PERMIT: &str = "INSERT INTO permit_uses \
    (tenant, decision_id, uses, max_uses, expires_at_ms, first_used_ms, last_used_ms) \
    VALUES ($1, $2, 1, $3, $4, $5, $5) \
    ON CONFLICT (tenant, decision_id) DO UPDATE \
    SET uses = permit_uses.uses + 1, last_used_ms = excluded.last_used_ms \
    WHERE permit_uses.uses < permit_uses.max_uses \
    RETURNING uses, max_uses";

/// Refuses a permit use the store must not record, before any lock is taken.
pub(crate) fn check_permit(permit: &PermitUse) -> Result<(), StoreError> {
    if permit.max_uses == 0 || permit.decision_id.is_empty() {
        return Err(StoreError::InvalidEvent {
            id: permit.event.id.clone(),
            reason: "a permit use needs a decision id and at least one allowed use".to_owned(),
        });
    }
    if !(permit.event.detail.is_object() || permit.event.detail.is_null()) {
        return Err(StoreError::InvalidEvent {
            id: permit.event.id.clone(),
            reason: "a permit event's detail must be an object".to_owned(),
        });
    }
    let mut item = [Append {
        event: permit.event.clone(),
        decision: None,
        ..Append::default()
    }];
    check(&mut item)
}

/// What a counted (`Some((uses, max_uses))`) or refused (`None`) use means.
pub(crate) fn permit_consumed(counted: Option<(i64, i64)>) -> PermitConsumed {
    match counted {
        Some((uses, max)) => PermitConsumed::Used {
            uses_left: u32::try_from(max.saturating_sub(uses)).unwrap_or(0),
        },
        None => PermitConsumed::UsedUp,
    }
}

/// The permit's event with the outcome in its detail, as one batch to chain.
pub(crate) fn permit_batch(permit: PermitUse, consumed: PermitConsumed) -> Vec<Append> {
    let mut event = permit.event;
    let mut detail = match event.detail {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    detail.insert(
        "valid".into(),
        serde_json::Value::Bool(matches!(consumed, PermitConsumed::Used { .. })),
    );
    detail.insert("reason".into(), consumed.reason().into());
    detail.insert("uses_left".into(), consumed.uses_left().into());
    event.detail = serde_json::Value::Object(detail);
    vec![Append {
        event,
        decision: None,
        ..Append::default()
    }]
}

/// The counter at `key` unless it expired by `now_ms`: an expired counter is absent, so a
/// new window or a new run starts from zero whether or not the sweep has deleted it yet.
fn live<'a>(
    state: &'a HashMap<CounterKey, CounterRow>,
    key: &CounterKey,
    now_ms: i64,
) -> Option<&'a CounterRow> {
    state.get(key).filter(|c| c.expires_at_ms > now_ms)
}

/// The columns of a `budget_counters` row, in the order the upserts bind them.
pub(crate) const COUNTER_COLUMNS: &str = "tenant, agent, run_id, kind, limit_id, \
    window_start_ms, counters, updated_at_ms, expires_at_ms";

/// The upsert of one row with `$1`…`$9` in [`COUNTER_COLUMNS`] order: the plan has already
/// decided its values under the chain lock, so the statement only stores them.
pub(crate) const UPSERT_COUNTER: &str = "INSERT INTO budget_counters (tenant, agent, run_id, \
    kind, limit_id, window_start_ms, counters, updated_at_ms, expires_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (tenant, agent, run_id, kind, limit_id, window_start_ms) DO UPDATE SET \
    counters = excluded.counters, updated_at_ms = excluded.updated_at_ms, \
    expires_at_ms = excluded.expires_at_ms";

/// The key columns of one row, `$1`…`$6`.
pub(crate) const COUNTER_KEY_MATCH: &str = "tenant = $1 AND agent = $2 AND run_id = $3 \
    AND kind = $4 AND limit_id = $5 AND window_start_ms = $6";

/// A row's counters as the `counters` column holds them.
pub(crate) fn encode_counters(row: &CounterRow) -> Result<String, StoreError> {
    json_text(&row.key.limit_id, &row.values)
}

/// The `counters` column read back.
pub(crate) fn decode_counters(
    key: &CounterKey,
    text: &str,
) -> Result<std::collections::BTreeMap<String, CounterValue>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what: "counter",
        id: key.limit_id.clone(),
        detail: format!("counters: {e}"),
    })
}

/// The columns of an `audit_events` row, in table order: the one list the insert
/// statements of both appenders, their bound values ([`event_row`]) and the reads use.
pub(crate) const EVENT_COLUMNS: [&str; 25] = [
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
    "policy_hash",
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
pub(crate) fn event_row<'a>(link: &'a Link, json: &'a EncodedEvent) -> [Cell<'a>; 25] {
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
        text(&e.policy_hash),
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
pub(crate) const APPROVAL_COLUMNS: [&str; 24] = [
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
    "on_grant",
];

/// The JSON-valued columns of an approval row.
#[derive(Debug)]
pub(crate) struct EncodedApproval {
    pub groups: String,
    pub options: String,
    pub votes: String,
    /// `None` when it grants nothing (a question).
    pub on_grant: Option<String>,
}

/// Encodes `approval`'s JSON-valued columns.
pub(crate) fn encode_approval(approval: &ApprovalRecord) -> Result<EncodedApproval, StoreError> {
    Ok(EncodedApproval {
        groups: json_text(&approval.id, &approval.groups)?,
        options: json_text(&approval.id, &approval.options)?,
        votes: json_text(&approval.id, &approval.votes)?,
        on_grant: if approval.on_grant.is_empty() {
            None
        } else {
            Some(json_text(&approval.id, &approval.on_grant)?)
        },
    })
}

/// The values of `a`'s row, in [`APPROVAL_COLUMNS`] order.
pub(crate) fn approval_row<'a>(a: &'a ApprovalRecord, json: &'a EncodedApproval) -> [Cell<'a>; 24] {
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
        Cell::Text(json.on_grant.as_deref()),
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
