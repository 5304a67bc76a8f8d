//! Approvals and questions: how a `require_approval` decision opens one, how votes,
//! answers and expiry change it (each with its audit events, in one store transaction),
//! the waiters woken the moment it is decided, the expiry sweeper and the webhook
//! deliveries.
//!
//! Key decision: every change is a pure function of the approval as the store reads it
//! under the chain lock ([`plan_vote`], [`plan_expiry`]), run through
//! `Store::update_approval`. A vote that does not count writes nothing, and two replicas
//! expiring one approval audit it once, because the second one reads a row that is no
//! longer pending.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::permits::PermitKeys;
use crate::state::{AppState, now_ms};
use crate::wire::{ApprovalView, DecisionBody, rfc3339};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use warden_policy::{Action, Decision};
use warden_store::{
    ApprovalChanged, ApprovalRecord, ApprovalSignal, ApprovalUpdate, NewEvent, OutboxMessage,
    OverLimit, StoreError, Vote, approval_kind, kind, status,
};

/// The environment variable holding the webhook signing secret.
pub const WEBHOOK_SECRET_ENV: &str = "WARDEN_WEBHOOK_SECRET";

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-warden-signature";

/// Webhook deliveries are retried with exponential backoff for this long, then given up.
const WEBHOOK_RETRY_FOR_MS: i64 = 3_600_000;

/// Where each tenant's approval events go, and the secret they are signed with.
#[derive(Clone, Default)]
pub struct Webhooks {
    urls: HashMap<String, String>,
    secret: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("tenants", &self.urls.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Webhooks from `TENANT=URL` pairs, signed with `secret`.
    pub fn new(urls: HashMap<String, String>, secret: Option<Vec<u8>>) -> Self {
        Self {
            urls,
            secret: secret.map(Arc::new),
        }
    }

    /// The outbox row announcing `record`'s `event` to its tenant's webhook, if it has one.
    pub(crate) fn message(
        &self,
        event: &str,
        record: &ApprovalRecord,
        now: i64,
    ) -> Vec<OutboxMessage> {
        let Some(url) = self.urls.get(&record.tenant) else {
            return Vec::new();
        };
        let id = crate::ids::ulid(now);
        let body = json!({
            "id": id,
            "type": event,
            "tenant": record.tenant,
            "time": rfc3339(now),
            "approval": ApprovalView::of(record),
        });
        vec![OutboxMessage {
            id,
            tenant: record.tenant.clone(),
            url: url.clone(),
            body: body.to_string(),
            created_at_ms: now,
        }]
    }

    /// The signature header's value for `body` sent at `unix_s`.
    pub fn sign(secret: &[u8], unix_s: i64, body: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this arm is never taken.
            Err(_) => return String::new(),
        };
        mac.update(format!("{unix_s}.").as_bytes());
        mac.update(body.as_bytes());
        format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// Waiters on approvals: one watch channel per approval id that someone waits on, fed
/// from the store's signals, and the bound on how many may wait at once.
#[derive(Debug)]
pub struct Waiters {
    by_id: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    open: Arc<Semaphore>,
    dispatcher: tokio::sync::OnceCell<()>,
    /// Set when the server shuts down: watchers (open-ended streams) end then.
    closing: watch::Sender<bool>,
}

/// One registered waiter; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter {
    id: String,
    changes: watch::Receiver<u64>,
    by_id: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    _slot: OwnedSemaphorePermit,
}

impl Waiter {
    /// Resolves when the approval may have changed (or the signals stopped, which a
    /// timeout then ends).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut by_id) = self.by_id.lock()
            && by_id
                .get(&self.id)
                .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            by_id.remove(&self.id);
        }
    }
}

impl Waiters {
    /// At most `max` waiters at once.
    pub fn new(max: usize) -> Self {
        Self {
            by_id: Arc::new(Mutex::new(HashMap::new())),
            open: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            dispatcher: tokio::sync::OnceCell::new(),
            closing: watch::channel(false).0,
        }
    }

    /// Ends every [`Watcher`]'s watch: called when the server stops accepting, so an open
    /// event stream does not hold the shutdown for its whole grace period.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Registers a waiter on `id` before its state is read, so no decision is missed.
    pub async fn register(&self, state: &AppState, id: &str) -> Result<Waiter, ApiError> {
        let slot = Arc::clone(&self.open)
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded("too many waiters; try again"))?;
        self.dispatcher
            .get_or_try_init(|| async {
                let signals = state.store().approval_signals().await.map_err(|e| {
                    tracing::error!(error = %e, "cannot subscribe to approval signals");
                    ApiError::store_unavailable()
                })?;
                tokio::spawn(dispatch(signals, Arc::clone(&self.by_id)));
                Ok::<_, ApiError>(())
            })
            .await?;
        let changes = match self.by_id.lock() {
            Ok(mut by_id) => by_id
                .entry(id.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
            Err(_) => return Err(internal()),
        };
        Ok(Waiter {
            id: id.to_owned(),
            changes,
            by_id: Arc::clone(&self.by_id),
            _slot: slot,
        })
    }
}

/// A watcher of every approval, question and proposal signal at once (the web inbox's live
/// list), holding a `--max-waiters` slot like a long-poll.
#[derive(Debug)]
pub struct Watcher {
    signals: broadcast::Receiver<ApprovalSignal>,
    closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

impl Watcher {
    /// Resolves `true` when something may have changed: any signal, a resync, or signals
    /// missed by falling behind; `false` when the server is shutting down and the watch
    /// should end. Never, once the signals stopped (a timeout then ends the wait).
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            received = self.signals.recv() => match received {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<bool>().await,
            },
            // The guard `wait_for` answers is dropped inside: it may not live across an await.
            _ = async { self.closing.wait_for(|closing| *closing).await.is_ok() } => false,
        }
    }

    /// Drops the signals already queued: one look at the state answers them all.
    pub fn drain(&mut self) {
        while !matches!(
            self.signals.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
}

impl Waiters {
    /// Watches every signal, subscribed before the caller reads the state, so no change is
    /// missed.
    pub async fn watch(&self, state: &AppState) -> Result<Watcher, ApiError> {
        let slot = Arc::clone(&self.open)
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded("too many waiters; try again"))?;
        let signals = state.store().approval_signals().await.map_err(|e| {
            tracing::error!(error = %e, "cannot subscribe to approval signals");
            ApiError::store_unavailable()
        })?;
        Ok(Watcher {
            signals,
            closing: self.closing.subscribe(),
            _slot: slot,
        })
    }
}

/// Forwards the store's signals to the waiters of each id; a resync (or a lag) wakes all.
async fn dispatch(
    mut signals: broadcast::Receiver<ApprovalSignal>,
    by_id: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
) {
    loop {
        let signal = signals.recv().await;
        let Ok(by_id) = by_id.lock() else { return };
        match signal {
            Ok(ApprovalSignal::Changed(id)) => {
                if let Some(tx) = by_id.get(&id) {
                    tx.send_modify(|n| *n += 1);
                }
            }
            Ok(ApprovalSignal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                for tx in by_id.values() {
                    tx.send_modify(|n| *n += 1);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn internal() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "approval store operation failed");
    ApiError::store_unavailable()
}

/// The approval a `require_approval` decision opens, filling in the body's `approval`.
/// Returned to go into the decision's own append, with its webhook delivery. `digest` is
/// the action's digest when the request already took it (for its idempotency key); it is
/// taken here otherwise, and only when there is an approval to bind it to.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, in the decision path; a struct would only rename them"
)]
pub fn open_for_decision(
    state: &AppState,
    caller: &Caller,
    action: &Action,
    decision: &Decision,
    body: &mut DecisionBody,
    decision_id: &str,
    digest: Option<&str>,
    now: i64,
) -> Option<(ApprovalRecord, Vec<OutboxMessage>)> {
    let requirement = decision.approval.as_ref()?;
    let approval = body.approval.as_mut()?;
    let digest = digest.map_or_else(|| state.audit_key().action_digest(action), str::to_owned);
    let id = crate::ids::ulid(now);
    let expires_in = i64::try_from(requirement.expires_in.as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = now.saturating_add(expires_in);
    approval.id = Some(id.clone());
    approval.status = status::PENDING.to_owned();
    approval.expires_at = Some(rfc3339(expires_at_ms));
    approval.wait_url = Some(format!("/v1/approvals/{id}/wait"));
    let record = ApprovalRecord {
        id,
        tenant: caller.tenant.clone(),
        kind: approval_kind::APPROVAL.to_owned(),
        status: status::PENDING.to_owned(),
        decision_id: Some(decision_id.to_owned()),
        action_digest: Some(digest),
        policy_version: Some(decision.policy_version.clone()),
        rule_id: decision
            .deciding_rules()
            .next()
            .map(|r| r.as_str().to_owned()),
        groups: requirement.approvers.clone(),
        quorum: requirement.quorum.max(1),
        requested_by_key: caller.key_id.clone(),
        agent: action.agent.clone(),
        on_behalf_of: action.on_behalf_of.clone(),
        action_type: Some(action.kind.as_str().to_owned()),
        run_id: action.run_id.clone(),
        created_at_ms: now,
        expires_at_ms,
        ..ApprovalRecord::default()
    };
    let outbox = state.webhooks().message("approval.created", &record, now);
    Some((record, outbox))
}

/// A human acting on an approval: who, and what they do.
#[derive(Debug, Clone)]
pub struct Act {
    /// The approver's user.
    pub user: String,
    /// Their key.
    pub key_id: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// Their key's agent, if any (it may not decide for itself).
    pub agent: Option<String>,
    /// `approve`, `reject` or `answer`.
    pub verdict: Verdict,
    /// The reason or the answer.
    pub text: Option<String>,
}

/// What an approver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Approve an approval.
    Approve,
    /// Reject an approval.
    Reject,
    /// Answer a question.
    Answer,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Answer => "answer",
        }
    }
}

/// Why a vote does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not one of the approval's groups, or separation of duties (403).
    Forbidden(String),
    /// Already decided, or this user already voted (409 with the existing outcome).
    Conflict(String),
    /// A question's answer that is not one of its options (400).
    Invalid(String),
    /// A vote on a question, or an answer to an approval (409 `wrong_kind`).
    WrongKind(String),
}

/// What granting an approval needs beyond its row: the keys its permit is signed with,
/// and, when the store found one of its charges over a limit, that limit.
#[derive(Debug, Clone, Copy)]
pub struct Granting<'a> {
    /// Signs the permit of an approved action.
    pub permits: &'a PermitKeys,
    /// The limit a charge of the grant would pass: the grant is then a deny.
    pub over: Option<&'a OverLimit>,
}

/// The change a vote makes to `record` at `now`, or why it makes none. Pure: the store
/// runs it on the row as read under the chain lock. A vote on an approval whose time is
/// up expires it instead (see [`plan_expiry`]). The vote that grants an approval signs its
/// permit and charges its action's counters (as made now), unless `granting.over` says a
/// counter cannot take them: then the approved action is denied, naming the limit.
pub fn plan_vote(
    record: &ApprovalRecord,
    act: &Act,
    original: Option<&Value>,
    webhooks: &crate::approvals::Webhooks,
    granting: Granting<'_>,
    now: i64,
) -> Result<ApprovalUpdate, Refusal> {
    if !record.is_pending() {
        return Err(Refusal::Conflict(format!(
            "this {} is already {}",
            record.kind, record.status
        )));
    }
    if record.expires_at_ms <= now {
        return plan_expiry(record, original, webhooks, now)
            .ok_or_else(|| Refusal::Conflict(format!("this {} has expired", record.kind)));
    }
    let question = record.kind == approval_kind::QUESTION;
    match (question, act.verdict) {
        (true, Verdict::Answer) | (false, Verdict::Approve | Verdict::Reject) => {}
        (true, _) => {
            return Err(Refusal::WrongKind(
                "this is a question: answer it with `POST /v1/questions/{id}/answer`".into(),
            ));
        }
        (false, _) => {
            return Err(Refusal::WrongKind(
                "this is an approval: decide it with `POST /v1/approvals/{id}/approve` or `reject`"
                    .into(),
            ));
        }
    }
    if !record.groups.is_empty() && !act.groups.iter().any(|g| record.groups.contains(g)) {
        return Err(Refusal::Forbidden(format!(
            "only approvers of {} may decide this {}",
            record
                .groups
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", "),
            record.kind
        )));
    }
    // Separation of duties: whoever the action serves, the agent that acts and the key
    // that asked never decide it.
    if record.on_behalf_of.as_deref() == Some(act.user.as_str()) {
        return Err(Refusal::Forbidden(
            "the user an action is on behalf of may not approve it".into(),
        ));
    }
    if record.agent.is_some()
        && (record.agent.as_deref() == Some(act.user.as_str()) || record.agent == act.agent)
    {
        return Err(Refusal::Forbidden(
            "the agent that acts may not approve its own action".into(),
        ));
    }
    if record.requested_by_key == act.key_id {
        return Err(Refusal::Forbidden(
            "the key that asked may not decide its own request".into(),
        ));
    }
    if record.votes.iter().any(|v| v.user == act.user) {
        return Err(Refusal::Conflict(format!(
            "`{}` has already voted on this {}",
            act.user, record.kind
        )));
    }
    if question
        && let Some(answer) = &act.text
        && !record.options.is_empty()
        && !record.options.contains(answer)
    {
        return Err(Refusal::Invalid(format!(
            "the answer must be one of {}",
            record
                .options
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let mut after = record.clone();
    after.votes.push(Vote {
        user: act.user.clone(),
        key_id: act.key_id.clone(),
        verdict: act.verdict.as_str().to_owned(),
        reason: act.text.clone(),
        at_ms: now,
    });
    let approvals = after
        .votes
        .iter()
        .filter(|v| v.verdict == "approve")
        .count();
    let decided = match act.verdict {
        Verdict::Approve => (approvals >= after.quorum as usize).then_some(status::APPROVED),
        Verdict::Reject => Some(status::REJECTED),
        Verdict::Answer => Some(status::ANSWERED),
    };
    let mut events = Vec::new();
    if !question {
        events.push(event(
            record,
            kind::APPROVAL_VOTE,
            None,
            json!({
                "approval_id": record.id,
                "user": act.user,
                "key_id": act.key_id,
                "verdict": act.verdict.as_str(),
                "reason": act.text,
                "approvals": approvals,
                "quorum": record.quorum,
            }),
            now,
        ));
    }
    let mut update = ApprovalUpdate::default();
    if let Some(decided) = decided {
        after.status = decided.to_owned();
        after.decided_at_ms = Some(now);
        let mut grant = Granted::default();
        match act.verdict {
            Verdict::Answer => after.answer = act.text.clone(),
            Verdict::Reject => after.reason = act.text.clone(),
            Verdict::Approve => match granting.over {
                Some(over) => {
                    let message = over.charge.deny_message(over.current);
                    after.reason = Some(format!("approved, but {message}"));
                    grant.over = Some((over, message));
                }
                None => {
                    update.charges = record.on_grant.charges.iter().map(|c| c.at(now)).collect();
                    grant.permit = held_permit(record, granting.permits, now);
                }
            },
        }
        let mut outcome = outcome_event(&after, now);
        if let Some((over, message)) = &grant.over {
            outcome.effect = Some("deny".to_owned());
            outcome.reasons = vec![message.clone()];
            if let Value::Object(detail) = &mut outcome.detail {
                detail.insert(
                    "limit".into(),
                    json!({
                        "kind": over.charge.kind.as_str(),
                        "id": over.charge.id,
                        "counter": over.charge.counter.as_str(),
                    }),
                );
            }
        }
        events.push(outcome);
        update.decision_body = original.map(|body| final_body(body, &after, &grant));
        update.outbox = webhooks.message(&format!("{}.decided", after.kind), &after, now);
    }
    update.record = after;
    update.events = events;
    Ok(update)
}

/// What a granted approval adds to its final decision: the permit, or the limit that
/// turned the grant into a deny.
#[derive(Debug, Default)]
pub struct Granted<'a> {
    /// The signed permit of the approved action.
    pub permit: Option<crate::permits::Issued>,
    /// The limit a charge would pass, and the deny's message.
    pub over: Option<(&'a OverLimit, String)>,
}

/// The permit `record` holds for its action, signed at `now`. `None` for an approval made
/// before approvals held permits; one that cannot be read is logged and issues none, so an
/// executor that requires a permit refuses the action.
fn held_permit(
    record: &ApprovalRecord,
    keys: &PermitKeys,
    now: i64,
) -> Option<crate::permits::Issued> {
    let held = record.on_grant.permit.as_ref()?;
    let held = match <crate::permits::Held as serde::Deserialize>::deserialize(held) {
        Ok(held) => held,
        Err(e) => {
            tracing::error!(approval = %record.id, error = %e, "an approval's permit is unreadable");
            return None;
        }
    };
    let issued = keys.sign(&held.binding, held.settings(), now);
    if issued.is_none() {
        tracing::error!("no permit signing key");
    }
    issued
}

/// The change that expires `record` at `now`: `None` unless it is pending and due.
pub fn plan_expiry(
    record: &ApprovalRecord,
    original: Option<&Value>,
    webhooks: &Webhooks,
    now: i64,
) -> Option<ApprovalUpdate> {
    if !record.is_pending() || record.expires_at_ms > now {
        return None;
    }
    let mut after = record.clone();
    after.status = status::EXPIRED.to_owned();
    after.decided_at_ms = Some(now);
    after.reason = Some(if record.kind == approval_kind::QUESTION {
        "no answer before the question expired".to_owned()
    } else {
        format!(
            "no decision before the approval expired at {}, so the action is denied",
            rfc3339(record.expires_at_ms)
        )
    });
    Some(ApprovalUpdate {
        events: vec![outcome_event(&after, now)],
        decision_body: original.map(|body| final_body(body, &after, &Granted::default())),
        outbox: webhooks.message(&format!("{}.expired", after.kind), &after, now),
        record: after,
        charges: Vec::new(),
    })
}

/// The event recording how an approval or question ended.
fn outcome_event(after: &ApprovalRecord, now: i64) -> NewEvent {
    let question = after.kind == approval_kind::QUESTION;
    let users: Vec<&str> = after.votes.iter().map(|v| v.user.as_str()).collect();
    let detail = if question {
        json!({
            "approval_id": after.id,
            "status": after.status,
            "answer": after.answer,
            "users": users,
        })
    } else {
        json!({
            "approval_id": after.id,
            "status": after.status,
            "reason": after.reason,
            "users": users,
        })
    };
    let kind = if question {
        kind::QUESTION_OUTCOME
    } else {
        kind::APPROVAL_OUTCOME
    };
    let effect = (!question).then(|| final_effect(&after.status).to_owned());
    event(after, kind, effect, detail, now)
}

fn event(
    record: &ApprovalRecord,
    kind: &str,
    effect: Option<String>,
    detail: Value,
    now: i64,
) -> NewEvent {
    NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: record.tenant.clone(),
        kind: kind.to_owned(),
        agent: record.agent.clone(),
        on_behalf_of: record.on_behalf_of.clone(),
        action_type: record.action_type.clone(),
        effect,
        rule_ids: record.rule_id.iter().cloned().collect(),
        policy_version: record.policy_version.clone(),
        decision_id: record.decision_id.clone(),
        detail,
        ..NewEvent::default()
    }
}

fn final_effect(status: &str) -> &'static str {
    if status == status::APPROVED {
        "allow"
    } else {
        "deny"
    }
}

/// The final decision once its approval is decided: the recorded body with the effect,
/// the approval's state, the permit of a granted one and, first among the reasons, why (a
/// limit that denied a granted one comes before the grant).
pub fn final_body(original: &Value, after: &ApprovalRecord, grant: &Granted<'_>) -> String {
    let mut body = original.clone();
    let effect = if grant.over.is_some() {
        "deny"
    } else {
        final_effect(&after.status)
    };
    let users: Vec<&str> = after
        .votes
        .iter()
        .filter(|v| v.verdict == "approve")
        .map(|v| v.user.as_str())
        .collect();
    let (code, message) = match after.status.as_str() {
        s if s == status::APPROVED => (
            "approval_granted",
            format!("approved by {}", users.join(", ")),
        ),
        s if s == status::REJECTED => {
            let by = after
                .votes
                .last()
                .map_or("an approver", |v| v.user.as_str());
            let reason = after.reason.as_deref().unwrap_or("");
            ("approval_rejected", format!("rejected by {by}: {reason}"))
        }
        _ => ("approval_expired", after.reason.clone().unwrap_or_default()),
    };
    if let Value::Object(fields) = &mut body {
        fields.insert("effect".into(), Value::from(effect));
        let granted = final_effect(&after.status);
        let mut first = vec![
            json!({"rule": after.rule_id, "effect": granted, "code": code, "message": message}),
        ];
        if let Some((over, message)) = &grant.over {
            let limit =
                crate::wire::ReasonBody::over_limit(&over.charge, over.current, message.clone());
            first.insert(0, serde_json::to_value(limit).unwrap_or(Value::Null));
            fields.insert("obligations".into(), json!({}));
        }
        match fields.get_mut("reasons") {
            Some(Value::Array(reasons)) => {
                reasons.splice(0..0, first);
            }
            _ => {
                fields.insert("reasons".into(), Value::Array(first));
            }
        }
        let permit = grant.permit.as_ref().map_or(Value::Null, |p| {
            json!({
                "token": p.token,
                "expires_at": rfc3339(p.expires_at_ms),
                "max_uses": p.max_uses,
            })
        });
        fields.insert("permit".into(), permit);
        if let Some(Value::Object(approval)) = fields.get_mut("approval") {
            approval.insert("status".into(), Value::from(after.status.clone()));
            approval.insert(
                "decided_at".into(),
                after
                    .decided_at_ms
                    .map(rfc3339)
                    .map_or(Value::Null, Value::from),
            );
        }
    }
    body.to_string()
}

/// The recorded body of `record`'s decision, for building the final one.
async fn original_body(
    state: &AppState,
    record: &ApprovalRecord,
) -> Result<Option<Value>, ApiError> {
    let Some(decision_id) = &record.decision_id else {
        return Ok(None);
    };
    let found = state
        .store()
        .decision(&record.tenant, decision_id)
        .await
        .map_err(store_error)?;
    Ok(found.map(|d| d.body))
}

/// The tenant's approval as it stands now: one whose time is up is expired first (and
/// audited, once), so an expired approval never reads as pending.
pub async fn current(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<ApprovalRecord>, ApiError> {
    let found = state
        .store()
        .approval(tenant, id)
        .await
        .map_err(store_error)?;
    match found {
        Some(record) if record.is_pending() && record.expires_at_ms <= now_ms() => {
            expire(state, &record).await
        }
        other => Ok(other),
    }
}

/// Expires `record` if it is still pending and due; returns it as it is afterwards.
pub async fn expire(
    state: &AppState,
    record: &ApprovalRecord,
) -> Result<Option<ApprovalRecord>, ApiError> {
    Ok(match expire_changed(state, record).await? {
        ApprovalChanged::NotFound => None,
        ApprovalChanged::Unchanged(row) => Some(row),
        ApprovalChanged::Written { after, .. } => Some(after),
    })
}

/// Expires `record` if it is still pending and due, saying whether this call did.
async fn expire_changed(
    state: &AppState,
    record: &ApprovalRecord,
) -> Result<ApprovalChanged, ApiError> {
    let original = original_body(state, record).await?;
    let webhooks = state.webhooks().clone();
    let now = now_ms();
    state
        .store()
        .update_approval(
            &record.tenant,
            &record.id,
            Box::new(move |row, _| plan_expiry(row, original.as_ref(), &webhooks, now)),
        )
        .await
        .map_err(store_error)
}

/// Votes (or answers) on the tenant's approval `id`: the approval afterwards, or the
/// refusal as an error (409 carries the existing outcome).
pub async fn vote(
    state: &AppState,
    tenant: &str,
    id: &str,
    act: Act,
) -> Result<ApprovalView, ApiError> {
    let Some(record) = state
        .store()
        .approval(tenant, id)
        .await
        .map_err(store_error)?
    else {
        return Err(ApiError::not_found(format!("no approval `{id}`")));
    };
    let original = original_body(state, &record).await?;
    let webhooks = state.webhooks().clone();
    let now = now_ms();
    let permits = state.permits().current();
    let (decide_act, decide_original, decide_webhooks, decide_permits) = (
        act.clone(),
        original.clone(),
        webhooks.clone(),
        permits.clone(),
    );
    let changed = state
        .store()
        .update_approval(
            tenant,
            id,
            Box::new(move |row, over| {
                let granting = Granting {
                    permits: &decide_permits,
                    over,
                };
                plan_vote(
                    row,
                    &decide_act,
                    decide_original.as_ref(),
                    &decide_webhooks,
                    granting,
                    now,
                )
                .ok()
            }),
        )
        .await
        .map_err(store_error)?;
    match changed {
        ApprovalChanged::NotFound => Err(ApiError::not_found(format!("no approval `{id}`"))),
        // A vote that came too late expired the approval instead.
        ApprovalChanged::Written { after, .. } if after.status == status::EXPIRED => {
            Err(conflict(&after, format!("this {} has expired", after.kind)))
        }
        ApprovalChanged::Written { after, .. } => {
            if after.kind == approval_kind::APPROVAL {
                // A human granted it: friction to count, off this request.
                crate::observed::approved(state, &after);
            }
            Ok(ApprovalView::of(&after))
        }
        ApprovalChanged::Unchanged(row) => {
            // The same pure function on the same row says why nothing was written.
            let granting = Granting {
                permits: &permits,
                over: None,
            };
            match plan_vote(&row, &act, original.as_ref(), &webhooks, granting, now) {
                Err(Refusal::Forbidden(detail)) => Err(ApiError::forbidden(detail)),
                Err(Refusal::Invalid(detail)) => Err(ApiError::bad_request("invalid_body", detail)),
                Err(Refusal::WrongKind(detail)) => Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "wrong_kind",
                    detail,
                )),
                Err(Refusal::Conflict(detail)) => Err(conflict(&row, detail)),
                Ok(_) => Err(conflict(
                    &row,
                    format!("this {} changed meanwhile; try again", row.kind),
                )),
            }
        }
    }
}

/// 409 naming the existing outcome.
fn conflict(record: &ApprovalRecord, detail: String) -> ApiError {
    let outcome = match (&record.answer, &record.reason) {
        (Some(answer), _) => format!("; answered `{answer}`"),
        (None, Some(reason)) if !record.is_pending() => format!(": {reason}"),
        _ => String::new(),
    };
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "already_decided",
        format!("{detail} (status `{}`{outcome})", record.status),
    )
}

/// Expires every approval whose time is up; returns how many this call expired. Safe on
/// every replica at once: each approval is expired (and audited) by exactly one.
pub async fn sweep_once(state: &AppState) -> usize {
    let due = match state.store().expired_approvals(now_ms(), 100).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list expired approvals");
            return 0;
        }
    };
    let mut expired = 0;
    for (tenant, id) in due {
        let record = match state.store().approval(&tenant, &id).await {
            Ok(Some(record)) => record,
            _ => continue,
        };
        if let Ok(ApprovalChanged::Written { .. }) = expire_changed(state, &record).await {
            expired += 1;
        }
    }
    expired
}

/// The sweeper `serve` runs: expiry does not wait for someone to read an approval.
pub async fn sweep(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        sweep_once(&state).await;
    }
}

/// A waiter's answer: the approval now, `timed_out` when the wait ran out first, and for
/// approvals the decision as it stands.
pub async fn wait_view(
    state: &AppState,
    record: &ApprovalRecord,
    timed_out: bool,
) -> Result<ApprovalView, ApiError> {
    let mut view = ApprovalView::of(record);
    view.timed_out = Some(timed_out);
    if record.kind == approval_kind::APPROVAL {
        view.decision = original_body(state, record).await?;
    }
    Ok(view)
}

/// Sends due webhook deliveries, once; returns how many were delivered.
pub async fn deliver_once(state: &AppState, client: &reqwest::Client) -> usize {
    let now = now_ms();
    let due = match state.store().claim_webhooks(now, 30_000, 50).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the webhook outbox");
            return 0;
        }
    };
    let secret = state.webhooks().secret.clone();
    let mut delivered = 0;
    for entry in due {
        let unix_s = now_ms() / 1000;
        let mut request = client
            .post(&entry.message.url)
            .header("content-type", "application/json")
            .header("x-warden-delivery", entry.message.id.as_str())
            .body(entry.message.body.clone());
        if let Some(secret) = &secret {
            request = request.header(
                SIGNATURE_HEADER,
                Webhooks::sign(secret, unix_s, &entry.message.body),
            );
        }
        let error = match request.send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!(
                "the receiver answered {}",
                response.status().as_u16()
            )),
            Err(e) => Some(format!("cannot reach the receiver: {}", e.without_url())),
        };
        let now = now_ms();
        let retry = error.as_ref().and_then(|_| {
            // 1 s, 2 s, 4 s, … capped at 5 min, for an hour after the event.
            let backoff = 1000i64 << entry.attempts.min(8);
            let at = now + backoff.min(300_000);
            (at <= entry.message.created_at_ms + WEBHOOK_RETRY_FOR_MS).then_some(at)
        });
        if error.is_none() {
            delivered += 1;
        } else if retry.is_none() {
            tracing::warn!(delivery = %entry.message.id, "webhook delivery given up after an hour");
        }
        if let Err(e) = state
            .store()
            .webhook_attempted(&entry.message.id, now, error, retry)
            .await
        {
            tracing::warn!(error = %e, "cannot record a webhook attempt");
        }
    }
    delivered
}

/// The deliverer `serve` runs.
pub async fn deliver(state: AppState) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhooks are not sent");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        deliver_once(&state, &client).await;
    }
}
