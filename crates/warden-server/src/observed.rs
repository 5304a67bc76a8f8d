//! Learning from friction: after a `deny` by the policy's default, or an approval a human
//! granted, count how often the same agent met the same friction (action type and target
//! type) lately, and past `--observe-threshold` within `--observe-window` store a suggested
//! proposal (source `observed`) drafted by the core and reviewed like an agent's.
//!
//! Key decisions:
//!
//! - **Never on the decision's path.** A decision only hands its friction key to
//!   [`denied`]; counting, drafting and reviewing run in a task of their own. One task per
//!   key runs at a time on a replica (a denial arriving meanwhile makes it count once more
//!   when it ends), and past [`MAX_RUNNING`] keys new friction is not counted until some
//!   finish: a flood of denials costs a bounded amount of work, never latency.
//! - **The audit log is the count.** Hits are the matching events in the store, so every
//!   replica counts the same; what the policy redacts from events (the agent, the type, the
//!   target's type) cannot be counted, so it is never suggested.
//! - **One suggestion per friction.** The store writes it under the chain lock only while
//!   the pending suggestion of its key is the one read and holds no more hits, so replicas
//!   observing the same friction at once keep one row with the higher count. A suggestion a
//!   human rejected is not made again until new evidence arrives: the review's history
//!   check rejects the same change with no new decision, and a rejected draft is not stored.
//! - **It never applies itself.** A draft only widens (it adds an allow, or takes an
//!   approval away), so its review is broadening and a human decides; one the review finds
//!   neutral (the friction is gone already) or rejects is not stored at all.

use crate::error::ApiError;
use crate::proposals::{self, store_error};
use crate::state::{AppState, now_ms};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use warden_policy::review::observed::{Friction, FrictionKey, draft};
use warden_policy::review::{Classification, Status};
use warden_store::{
    ApprovalRecord, EventFilter, ProposalFilter, ProposalRecord, ProposalWrite, ProposalWritten,
    kind, proposal_source, proposal_status, status,
};

/// The `key_id` of an observed suggestion: no key submitted it, and no key has this id.
pub const OBSERVED_KEY_ID: &str = "observed";
/// The most friction keys one replica counts at once.
pub const MAX_RUNNING: usize = 1024;
/// The most matching events counted (and named as evidence candidates) per observation.
const MAX_COUNTED: u32 = 1000;
/// How often a write that lost a race with another replica is tried again.
const ATTEMPTS: usize = 4;

/// The frictions a replica is counting: for each (tenant, key), whether more friction
/// arrived while it counted.
#[derive(Debug, Default)]
pub struct Observer {
    running: Mutex<HashMap<(String, String), bool>>,
}

impl Observer {
    /// Whether the caller should start counting `key` (nobody on this replica is).
    fn start(&self, slot: &(String, String)) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return false;
        };
        if let Some(again) = running.get_mut(slot) {
            *again = true;
            return false;
        }
        if running.len() >= MAX_RUNNING {
            return false;
        }
        running.insert(slot.clone(), false);
        true
    }

    /// Whether to count `key` once more (friction arrived meanwhile); otherwise it is done.
    fn again(&self, slot: &(String, String)) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return false;
        };
        match running.get_mut(slot) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(slot);
                false
            }
        }
    }
}

/// A decision denied `key`'s action by the policy's default: count it, off this request.
pub fn denied(state: &AppState, tenant: &str, key: FrictionKey) {
    if state.limits().observe_threshold == 0 {
        return;
    }
    spawn(state.clone(), tenant.to_owned(), key);
}

/// A human approved `record` (an approval, not a question): count it, off this request.
pub fn approved(state: &AppState, record: &ApprovalRecord) {
    if state.limits().observe_threshold == 0 || record.status != status::APPROVED {
        return;
    }
    let (Some(agent), Some(action_type), Some(rule), Some(decision)) = (
        record.agent.clone(),
        record.action_type.clone(),
        record.rule_id.clone(),
        record.decision_id.clone(),
    ) else {
        return;
    };
    let (state, tenant) = (state.clone(), record.tenant.clone());
    tokio::spawn(async move {
        // The target's type is in the decision's event, not in the approval.
        let target_type = match state.store().decision_events(&tenant, &[decision]).await {
            Ok(events) => events.into_iter().next().and_then(|e| e.event.target_type),
            Err(e) => {
                tracing::warn!(error = %e, "an approval's decision could not be read");
                return;
            }
        };
        let key = FrictionKey {
            friction: Friction::Approved { rule },
            agent,
            action_type,
            target_type,
        };
        spawn(state, tenant, key);
    });
}

fn spawn(state: AppState, tenant: String, key: FrictionKey) {
    let slot = (tenant, key.as_key());
    if !state.observer().start(&slot) {
        return;
    }
    tokio::spawn(async move {
        loop {
            if let Err(e) = observe(&state, &slot.0, &key).await {
                tracing::warn!(tenant = %slot.0, error = %e.detail(), "friction was not observed");
            }
            if !state.observer().again(&slot) {
                break;
            }
        }
    });
}

/// The decision ids of `key`'s friction at or after `since_ms`, newest first.
async fn evidence(
    state: &AppState,
    tenant: &str,
    key: &FrictionKey,
    since_ms: i64,
) -> Result<Vec<String>, ApiError> {
    let filter = |kind: &str, effect: &str| EventFilter {
        tenant: Some(tenant.to_owned()),
        kind: Some(kind.to_owned()),
        agent: Some(key.agent.clone()),
        action_type: Some(key.action_type.clone()),
        effect: Some(effect.to_owned()),
        since_ms: Some(since_ms),
        limit: MAX_COUNTED,
        newest_first: true,
        ..EventFilter::default()
    };
    let store = state.store();
    match &key.friction {
        Friction::Denied => Ok(store
            .events(&filter(kind::DECISION, "deny"))
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|e| e.event)
            // Denied by the default: no rule matched, and none failed.
            .filter(|e| {
                e.target_type == key.target_type
                    && e.rule_ids.is_empty()
                    && e.detail.get("evaluation_error").is_none()
            })
            .filter_map(|e| e.decision_id)
            .collect()),
        Friction::Approved { rule } => {
            let ids: Vec<String> = store
                .events(&filter(kind::APPROVAL_OUTCOME, "allow"))
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|e| e.event)
                .filter(|e| e.rule_ids.iter().any(|r| r == rule))
                .filter_map(|e| e.decision_id)
                .collect();
            let of_target: std::collections::HashSet<String> = store
                .decision_events(tenant, &ids)
                .await
                .map_err(store_error)?
                .into_iter()
                .filter(|e| e.event.target_type == key.target_type)
                .filter_map(|e| e.event.decision_id)
                .collect();
            Ok(ids
                .into_iter()
                .filter(|id| of_target.contains(id))
                .collect())
        }
    }
}

/// The tenant's pending suggestion for `key`, if there is one.
async fn pending(
    state: &AppState,
    tenant: &str,
    key: &FrictionKey,
    stored_key: &str,
) -> Result<Option<ProposalRecord>, ApiError> {
    for status in proposal_status::PENDING {
        let page = state
            .store()
            .proposals(&ProposalFilter {
                tenant: tenant.to_owned(),
                status: Some(status.to_owned()),
                agent: Some(key.agent.clone()),
                source: Some(proposal_source::OBSERVED.to_owned()),
                observed_key: Some(stored_key.to_owned()),
                limit: 1,
                ..ProposalFilter::default()
            })
            .await
            .map_err(store_error)?;
        if let Some(found) = page.into_iter().next() {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Whether `agent` may have one more new suggestion: no more an hour than an agent may
/// propose itself (`--proposal-rate-limit`), so an agent that asks for a new action type
/// every few seconds fills neither the approvers' inbox nor the review slots.
async fn room_for_another(
    state: &AppState,
    tenant: &str,
    agent: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let limit = state.limits().proposal_rate_limit;
    let newest = state
        .store()
        .proposals(&ProposalFilter {
            tenant: tenant.to_owned(),
            agent: Some(agent.to_owned()),
            source: Some(proposal_source::OBSERVED.to_owned()),
            limit,
            ..ProposalFilter::default()
        })
        .await
        .map_err(store_error)?;
    let this_hour = newest
        .iter()
        .filter(|p| p.created_at_ms >= now - proposals::HOUR_MS)
        .count();
    if this_hour >= limit as usize {
        tracing::debug!(
            tenant,
            agent,
            "an observed suggestion waits: this agent had enough this hour"
        );
        return Ok(false);
    }
    Ok(true)
}

/// Counts `key`'s friction and, past the threshold, stores (or updates) its suggestion.
async fn observe(state: &AppState, tenant: &str, key: &FrictionKey) -> Result<(), ApiError> {
    // Only for tenants that take proposals.
    let Ok(live) = proposals::live_for_proposals(state, tenant) else {
        return Ok(());
    };
    let limits = state.limits();
    let window = i64::try_from(limits.observe_window.as_millis()).unwrap_or(i64::MAX);
    let stored_key = key.as_key();
    for _ in 0..ATTEMPTS {
        let now = now_ms();
        let evidence = evidence(state, tenant, key, now.saturating_sub(window)).await?;
        let hits = i64::try_from(evidence.len()).unwrap_or(i64::MAX);
        if hits < i64::from(limits.observe_threshold) {
            return Ok(());
        }
        let pending = pending(state, tenant, key, &stored_key).await?;
        if pending.as_ref().is_some_and(|p| p.hits >= hits) {
            return Ok(());
        }
        if pending.is_none() && !room_for_another(state, tenant, &key.agent, now).await? {
            return Ok(());
        }
        let Some(proposal) = draft(key, hits.unsigned_abs(), &evidence, &live.policy) else {
            return Ok(());
        };
        let body = serde_json::to_value(&proposal).unwrap_or(Value::Null);
        let (record, mut detail) = if let Some(pending) = pending
            .as_ref()
            .filter(|p| p.change_hash == proposal.change_hash() && p.live_hash == live.hash)
        {
            // The same change against the same live policy, seen more often: its analysis
            // stands (the draft is exactly the friction's action, however often it was
            // met), so only the count, the evidence and the rationale change. Friction that
            // keeps coming costs a store write, never another review.
            let mut detail = serde_json::Map::new();
            detail.insert("reviewed".into(), Value::Bool(false));
            let record = ProposalRecord {
                body: body.to_string(),
                hits,
                ..pending.clone()
            };
            (record, detail)
        } else {
            let gathered = proposals::gather(state, tenant, &proposal, now).await?;
            let live_hash = gathered.live.hash.clone();
            let (reviewed, _) =
                proposals::run_review(state, tenant, None, proposal, gathered, now).await?;
            let review = &reviewed.review;
            if review.status == Status::Rejected || review.classification == Classification::Neutral
            {
                tracing::debug!(
                    tenant,
                    status = review.status.as_str(),
                    classification = review.classification.as_str(),
                    "an observed suggestion is not made"
                );
                return Ok(());
            }
            // A suggestion waits for a human whatever its review says.
            let status = proposals::status_after(review, false);
            let mut detail = proposals::counts(review);
            detail.insert(
                "change_hash".into(),
                Value::String(review.change_hash.clone()),
            );
            let record = ProposalRecord {
                id: pending
                    .as_ref()
                    .map_or_else(|| crate::ids::ulid(now), |p| p.id.clone()),
                tenant: tenant.to_owned(),
                agent: key.agent.clone(),
                key_id: OBSERVED_KEY_ID.to_owned(),
                status: status.to_owned(),
                subject: review.subject.clone(),
                change_hash: review.change_hash.clone(),
                body: body.to_string(),
                review: reviewed.stored.clone(),
                review_token: reviewed.token.clone(),
                live_hash,
                created_at_ms: pending.as_ref().map_or(now, |p| p.created_at_ms),
                source: proposal_source::OBSERVED.to_owned(),
                observed_key: Some(stored_key.clone()),
                hits,
                ..ProposalRecord::default()
            };
            (record, detail)
        };
        detail.insert("proposal_id".into(), Value::String(record.id.clone()));
        detail.insert("observed_key".into(), Value::String(stored_key.clone()));
        detail.insert("hits".into(), Value::from(hits));
        detail.insert("evidence".into(), Value::from(evidence.len()));
        detail.insert("updated".into(), Value::Bool(pending.is_some()));
        let mut event = proposals::event(
            tenant,
            kind::PROPOSAL_OBSERVED,
            &key.agent,
            now,
            Value::Object(detail),
        );
        event.policy_version = Some(live.policy.version().as_str().to_owned());
        event.policy_hash = Some(record.live_hash.clone());
        let write = ProposalWrite::Observe {
            record,
            replaces: pending.map(|p| p.id),
            events: vec![event],
        };
        match state
            .store()
            .write_proposal(write)
            .await
            .map_err(store_error)?
        {
            ProposalWritten::Written(_) => return Ok(()),
            // Another replica wrote as many hits or more: its row stands.
            ProposalWritten::Stale(Some(row)) if row.hits >= hits => return Ok(()),
            ProposalWritten::Stale(_) => continue,
            other => {
                tracing::error!(?other, "an observed suggestion was not written");
                return Ok(());
            }
        }
    }
    Ok(())
}
