//! `POST /v1/decisions`, `GET /v1/decisions/{id}`, `POST /v1/decisions/{id}/outcome`.
//!
//! The order of a decision is fixed: authenticate, parse, evaluate (pure), audit (durable),
//! answer. Nothing is answered before its event is committed, and if the commit fails the
//! answer is a deny with code `audit_unavailable` (HTTP 503), never an allow.

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode, parse_json};
use crate::keys::Role;
use crate::state::{AppState, now_ms};
use crate::wire::{ActionRequest, DecisionBody, OutcomeBody, OutcomeRequest, ReasonBody};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Instant;
use warden_policy::{
    Action, ActionError, ActionField, AuditView, Charge, Decision, Env, Timestamp, Verdict,
};
use warden_store::{Append, Appended, NewDecision, NewEvent, OnGrant, kind};

/// Bodies larger than this are parsed and evaluated off the async executor.
const INLINE_BYTES: usize = 64 * 1024;

/// Evaluates an action and answers the decision once it is audited.
#[utoipa::path(
    post,
    path = "/v1/decisions",
    tag = "decisions",
    request_body = ActionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The decision; a deny is a result, not an error", body = DecisionBody),
        (status = 400, description = "The action is malformed (`invalid_action`, `invalid_field`, `duplicate_key`, `agent_required`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "The key may not ask for decisions, or not for this agent", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for a different action (`idempotency_mismatch`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 503, description = "The audit log is unavailable (a deny with code `audit_unavailable`), or the server is overloaded", body = DecisionBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    caller.require(&[Role::Controller])?;
    let JsonBody(body) = body?;
    let prepared = if body.len() > INLINE_BYTES {
        let (state, caller) = (state.clone(), caller.clone());
        tokio::task::spawn_blocking(move || prepare(&state, &caller, &body))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "decision task failed");
                ApiError::internal()
            })??
    } else {
        prepare(&state, &caller, &body)?
    };
    let Prepared {
        mut effect,
        policy_version,
        digest,
        reuse,
        mut answer,
        append,
        friction,
    } = prepared;
    // What a deny over a limit records instead, kept only when something is charged.
    let mut held =
        (!append.charges.is_empty()).then(|| (append.event.clone(), append.decision.clone()));
    let mut item = append;
    let response = loop {
        match state.audit().append(item).await {
            Ok(Appended::Written { .. }) => {
                if let Some(key) = friction {
                    // Counted off this request: it adds no latency to the decision.
                    crate::observed::denied(&state, &caller.tenant, key);
                }
                break ([(header::CONTENT_TYPE, "application/json")], answer).into_response();
            }
            // A charge would pass a budget or rate limit: nothing was written or charged.
            // The answer becomes a deny that names the limit, audited without charges (so
            // the second pass cannot be over a limit again).
            Ok(Appended::OverLimit { charge, current }) => {
                let Some((event, decision)) = held.take() else {
                    // Only an item with charges can be over a limit, and it is held.
                    return Err(ApiError::internal());
                };
                let (denied, text) = deny_over_limit(event, decision, &charge, current, &answer)?;
                effect = "deny";
                answer = text;
                item = denied;
            }
            // The idempotency key was used before by this key, for this very action: the
            // first decision, as recorded.
            Ok(Appended::Duplicate(first)) if first.action_digest == digest => {
                effect = match first.body.get("effect").and_then(Value::as_str) {
                    Some("allow") => "allow",
                    Some("require_approval") => "require_approval",
                    _ => "deny",
                };
                state.metrics().replayed(&caller.tenant);
                let mut body = first.body;
                if let Value::Object(fields) = &mut body {
                    fields.insert("replayed".into(), Value::Bool(true));
                }
                break Json(body).into_response();
            }
            // The same key for another action: never the first answer. Nothing is decided;
            // the attempt is audited.
            Ok(Appended::Duplicate(first)) => {
                return refuse_reused_key(&state, &caller, &reuse, &first.id).await;
            }
            Err(_) => {
                let body = DecisionBody::refusal(
                    "audit_unavailable",
                    "the decision could not be recorded in the audit log, so the action is denied",
                    &policy_version,
                );
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response
                    .extensions_mut()
                    .insert(ErrorCode("audit_unavailable"));
                effect = "deny";
                break response;
            }
        }
    };
    state
        .metrics()
        .decision(&caller.tenant, effect, started.elapsed());
    Ok(response)
}

/// The deny that replaces an allow whose `charge` its counter (at `current`) cannot take:
/// the same event and decision with effect `deny` and the limit's reason first, and the
/// answer text likewise. The reason names the limit, the counter, the ceiling, the value
/// and when it resets; it carries nothing of the action, so the recorded body needs no
/// masks of its own.
fn deny_over_limit(
    mut event: NewEvent,
    decision: Option<NewDecision>,
    charge: &Charge,
    current: Option<i64>,
    answer: &str,
) -> Result<(Append, String), ApiError> {
    let message = charge.deny_message(current);
    let reason = ReasonBody::over_limit(charge, current, message.clone());
    let reason = serde_json::to_value(&reason).map_err(|_| ApiError::internal())?;
    let deny = |text: &str| -> Result<String, ApiError> {
        let mut body: Value = serde_json::from_str(text).map_err(|_| ApiError::internal())?;
        if let Value::Object(fields) = &mut body {
            fields.insert("effect".into(), Value::from("deny"));
            fields.insert("obligations".into(), json!({}));
            fields.insert("permit".into(), Value::Null);
            if let Some(Value::Array(reasons)) = fields.get_mut("reasons") {
                reasons.insert(0, reason.clone());
            }
        }
        serde_json::to_string(&body).map_err(|_| ApiError::internal())
    };
    event.effect = Some("deny".to_owned());
    event.reasons.insert(0, message);
    event.detail = json!({
        "limit": {"kind": charge.kind.as_str(), "id": charge.id, "counter": charge.counter.as_str()},
    });
    let decision = match decision {
        Some(mut d) => {
            d.body = deny(&d.body)?;
            Some(d)
        }
        None => None,
    };
    Ok((Append::new(event, decision), deny(answer)?))
}

/// Answers 409 to an idempotency key reused for a different action, once the attempt is in
/// the audit log (key id, agent and action type; never the payload).
async fn refuse_reused_key(
    state: &AppState,
    caller: &Caller,
    reuse: &Reuse,
    holder: &str,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: caller.tenant.clone(),
        kind: kind::IDEMPOTENCY_MISMATCH.to_owned(),
        agent: reuse.agent.clone(),
        action_type: Some(reuse.action_type.clone()),
        decision_id: Some(holder.to_owned()),
        detail: json!({"key_id": caller.key_id}),
        ..NewEvent::default()
    };
    state
        .audit()
        .record(event)
        .await
        .map_err(|_| ApiError::audit_unavailable("the request"))?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_mismatch",
        "this `id` was already used for a different action; use a new `id` for a new action",
    ))
}

/// What the audit log records of an idempotency key reused for another action.
struct Reuse {
    agent: Option<String>,
    action_type: String,
}

/// A decision made and ready to audit.
struct Prepared {
    effect: &'static str,
    policy_version: String,
    /// The action's digest, when it carries an idempotency key.
    digest: Option<String>,
    /// What a refused reuse of the key records.
    reuse: Reuse,
    /// The decision body to answer, as JSON text.
    answer: String,
    append: Append,
    /// A deny by the policy's default that offered a missing rule: friction to count.
    friction: Option<warden_policy::review::observed::FrictionKey>,
}

/// Parses, evaluates and builds the audit record: the CPU part of a decision.
fn prepare(state: &AppState, caller: &Caller, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let mut action = Action::from_json(bytes).map_err(|e| {
        let code = match &e {
            ActionError::DuplicateKey { .. } => "duplicate_key",
            ActionError::Invalid { .. } => "invalid_field",
            _ => "invalid_action",
        };
        ApiError::bad_request(code, e.to_string())
    })?;
    action.agent = caller.agent_for(action.agent.as_deref())?;
    // Idempotency keys are scoped to the key that asked, and bound to the action as
    // evaluated (the agent resolved), so a reused key can never replay another action.
    let digest = action
        .id
        .as_ref()
        .map(|_| state.audit_key().action_digest(&action));

    let now = now_ms();
    let decision_id = crate::ids::ulid(now);
    let policies = state.policies().current();
    let mut charges = Vec::new();
    let mut snapshot = None;
    let (mut body, decision, view) = match policies.for_tenant(&caller.tenant) {
        Some(loaded) => {
            // The clock always reads within CEL's range (years 1 to 9999).
            let env = Env::new(
                caller.tenant.clone(),
                Timestamp::from_unix_millis(now).unwrap_or_default(),
            );
            let t0 = Instant::now();
            let decision = loaded.policy.evaluate(&action, &env);
            state.policies().observe(loaded, decision.failure.is_some());
            // What the rules read, redacted and sealed, for replays of candidate policies.
            if !state.limits().snapshot_retention.is_zero() {
                let kept = loaded.policy.snapshot(&action).to_json_bytes();
                snapshot = state
                    .snapshot_key()
                    .seal(&caller.tenant, &decision_id, &kept);
            }
            // Off the critical path: at most a copy of the action and an enqueue.
            state
                .policies()
                .offer_shadow(&caller.tenant, &action, &env, &decision, &decision_id);
            // Only an allow spends: a denied action consumes nothing, and one waiting for a
            // human is charged when its approval is granted, in that transaction (its
            // approval holds the charges). The store checks and charges these under the
            // chain lock.
            if matches!(decision.verdict, Verdict::Allow | Verdict::RequireApproval) {
                charges = loaded.policy.charges(&action, &env);
            }
            let eval_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if let Some(failure) = &decision.failure {
                // The detail names the rule and the problem, not the action's values.
                tracing::warn!(
                    tenant = %caller.tenant,
                    rule = %failure.rule.as_str(),
                    detail = %failure.detail,
                    "evaluation failed; the action is denied"
                );
            }
            let view = loaded.policy.audit().view(&action);
            let mut body = DecisionBody::from_decision(&decision, eval_ns);
            body.policy_hash = loaded.hash.clone();
            if body.effect == "deny" && loaded.policy.proposals_enabled() {
                body.rule_missing = loaded
                    .policy
                    .rule_missing(&action, &decision)
                    .and_then(|rule| serde_json::to_value(rule).ok());
                body.next_steps = crate::wire::next_steps(action.agent.as_deref());
            }
            (body, Some(decision), view)
        }
        None => (
            DecisionBody::refusal(
                "no_policy",
                "no policy is loaded for this tenant, so every action is denied",
                "",
            ),
            None,
            AuditView::default(),
        ),
    };
    body.decision_id = Some(decision_id.clone());
    if let Some(settings) = decision.as_ref().and_then(|d| d.permit)
        && body.effect == "allow"
    {
        let issued = state
            .permits()
            .current()
            .issue(&crate::permits::Grant {
                decision_id: &decision_id,
                tenant: &caller.tenant,
                action: &action,
                settings,
                now_ms: now,
            })
            .ok_or_else(|| {
                // Loading refuses a key set without a signing key, so this is a bug; the
                // action is not allowed without its permit.
                tracing::error!("no permit signing key");
                ApiError::internal()
            })?;
        body.permit = Some(crate::wire::PermitBody {
            token: issued.token,
            expires_at: crate::wire::rfc3339(issued.expires_at_ms),
            max_uses: issued.max_uses,
        });
    }
    // A require_approval opens its approval in the same transaction as the decision.
    let opened = decision.as_ref().and_then(|d| {
        crate::approvals::open_for_decision(
            state,
            caller,
            &action,
            d,
            &mut body,
            &decision_id,
            digest.as_deref(),
            now,
        )
    });

    // What is recorded: the answer with redacted values masked in its reasons.
    let masked;
    let view_masked = view.has_masks();
    let stored = if view_masked {
        let mut copy = body.clone();
        for reason in &mut copy.reasons {
            reason.message = view.mask(&reason.message);
        }
        // The missing rule names the target, which may be a redacted value.
        if let Some(Value::Object(rule)) = &mut copy.rule_missing
            && let Some(Value::String(when)) = rule.get_mut("when")
        {
            *when = view.mask(when);
        }
        masked = copy;
        &masked
    } else {
        &body
    };
    let mut event = decision_event(
        state,
        &caller.tenant,
        &action,
        stored,
        decision.as_ref(),
        view,
        &decision_id,
        now,
    );
    let (approval, outbox) = match opened {
        Some((mut approval, outbox)) => {
            if event.detail.is_null() {
                event.detail = json!({"approval_id": approval.id});
            }
            // What the approval grants once approved: the permit, signed then, and the
            // counters, charged then.
            let permit = decision.as_ref().and_then(|d| d.permit).map(|settings| {
                crate::permits::Held::of(&crate::permits::Grant {
                    decision_id: &decision_id,
                    tenant: &caller.tenant,
                    action: &action,
                    settings,
                    now_ms: now,
                })
            });
            approval.on_grant = OnGrant {
                permit: permit.and_then(|p| serde_json::to_value(p).ok()),
                charges: std::mem::take(&mut charges),
            };
            (Some(approval), outbox)
        }
        None => (None, Vec::new()),
    };
    let encode = |b: &DecisionBody| {
        serde_json::to_string(b).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a decision");
            ApiError::internal()
        })
    };
    // Serialized once: without masks the record and the answer are the same text.
    let stored = encode(stored)?;
    let answer = if view_masked {
        encode(&body)?
    } else {
        stored.clone()
    };
    let friction = body
        .rule_missing
        .as_ref()
        .and(action.agent.as_ref())
        .map(|agent| warden_policy::review::observed::FrictionKey {
            friction: warden_policy::review::observed::Friction::Denied,
            agent: agent.clone(),
            action_type: action.kind.as_str().to_owned(),
            target_type: action.target.as_ref().and_then(|t| t.kind.clone()),
        });
    Ok(Prepared {
        friction,
        effect: body.effect,
        policy_version: body.policy_version,
        answer,
        reuse: Reuse {
            agent: action.agent.clone(),
            action_type: action.kind.as_str().to_owned(),
        },
        append: Append {
            event,
            decision: Some(NewDecision {
                id: decision_id,
                tenant: caller.tenant.clone(),
                idempotency_key: action
                    .id
                    .as_ref()
                    .map(|id| format!("{}:{id}", caller.key_id)),
                action_digest: digest.clone(),
                body: stored,
                created_at_ms: now,
                snapshot,
            }),
            // Only a direct allow is charged with its decision.
            charges: if body.effect == "allow" {
                charges
            } else {
                Vec::new()
            },
            approval,
            outbox,
        },
        digest,
    })
}

/// The audit event of a decision: references (keyed digests) instead of the payload and
/// context, plus what the policy's `audit.keep` allows.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn decision_event(
    state: &AppState,
    tenant: &str,
    action: &Action,
    stored: &DecisionBody,
    decision: Option<&Decision>,
    view: AuditView,
    decision_id: &str,
    now: i64,
) -> NewEvent {
    let key = state.audit_key();
    // A fixed column whose field the policy redacts holds a keyed reference instead of the
    // value: events about the same agent or target still correlate, the value is not kept.
    let column = |field: ActionField, value: Option<&str>| -> Option<String> {
        let value = value?;
        if view.is_redacted(field) {
            key.digest(&Value::String(value.to_owned()))
        } else {
            Some(value.to_owned())
        }
    };
    let target = action.target.as_ref();
    let confidence = stored
        .confidence
        .filter(|_| !view.is_redacted(ActionField::Confidence));
    NewEvent {
        id: decision_id.to_owned(),
        time_ms: now,
        tenant: tenant.to_owned(),
        kind: kind::DECISION.to_owned(),
        agent: column(ActionField::Agent, action.agent.as_deref()),
        on_behalf_of: column(ActionField::OnBehalfOf, action.on_behalf_of.as_deref()),
        action_type: column(ActionField::Type, Some(action.kind.as_str())),
        target_type: column(
            ActionField::TargetType,
            target.and_then(|t| t.kind.as_deref()),
        ),
        target_id: column(ActionField::TargetId, target.and_then(|t| t.id.as_deref())),
        mode: column(ActionField::Mode, action.mode.as_deref()),
        confidence_initial: confidence.map(|c| c.initial),
        confidence_adjusted: confidence.map(|c| c.adjusted),
        effect: Some(stored.effect.to_owned()),
        rule_ids: decision
            .map(|d| d.matched_rules().map(|r| r.as_str().to_owned()).collect())
            .unwrap_or_default(),
        reasons: stored.reasons.iter().map(|r| r.message.clone()).collect(),
        policy_version: (!stored.policy_version.is_empty()).then(|| stored.policy_version.clone()),
        policy_hash: (!stored.policy_hash.is_empty()).then(|| stored.policy_hash.clone()),
        payload_digest: key.digest(&action.payload),
        context_digest: key.digest(&action.context),
        kept: if view.kept.is_empty() {
            Value::Null
        } else {
            Value::Object(view.kept)
        },
        decision_id: Some(decision_id.to_owned()),
        detail: match decision.and_then(|d| d.failure.as_ref()) {
            // Which rule failed is policy, not data; the message stays in the server log.
            Some(failure) => json!({"evaluation_error": {"rule": failure.rule.as_str()}}),
            None => Value::Null,
        },
    }
}

/// A decision made earlier, as it was answered.
#[utoipa::path(
    get,
    path = "/v1/decisions/{id}",
    tag = "decisions",
    params(("id" = String, Path, description = "The decision id", min_length = 1, max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The decision as answered (redactions applied)", body = DecisionBody),
        (status = 400, description = "The id is not a decision id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller or admin key", body = ErrorBody),
        (status = 404, description = "No such decision in this tenant", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Controller, Role::Admin])?;
    let id = super::path_id(id, "a decision")?;
    match state.store().decision(&caller.tenant, &id).await {
        Ok(Some(found)) => {
            // A pending approval whose time is up is expired now (a deny), so the answer
            // never says "pending" past the expiry.
            let approval = &found.body["approval"];
            if approval["status"] == "pending"
                && let Some(approval_id) = approval["id"].as_str()
            {
                let now = crate::approvals::current(&state, &caller.tenant, approval_id).await?;
                if now.is_some_and(|a| !a.is_pending())
                    && let Ok(Some(again)) = state.store().decision(&caller.tenant, &id).await
                {
                    return Ok(Json(again.body));
                }
            }
            Ok(Json(found.body))
        }
        Ok(None) => Err(ApiError::not_found(format!("no decision `{id}`"))),
        Err(e) => {
            tracing::error!(error = %e, "decision lookup failed");
            Err(ApiError::store_unavailable())
        }
    }
}

/// Records how an action went, linked to its decision.
#[utoipa::path(
    post,
    path = "/v1/decisions/{id}/outcome",
    tag = "decisions",
    params(("id" = String, Path, description = "The decision id", min_length = 1, max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = OutcomeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = OutcomeBody),
        (status = 400, description = "Malformed outcome, or not a decision id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller key", body = ErrorBody),
        (status = 404, description = "No such decision in this tenant", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The audit log is unavailable; nothing was recorded", body = ErrorBody),
    )
)]
pub async fn outcome(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<OutcomeBody>, ApiError> {
    caller.require(&[Role::Controller])?;
    let id = super::path_id(id, "a decision")?;
    let JsonBody(body) = body?;
    let request: OutcomeRequest = parse_json(&body)?;
    if let Some(code) = &request.error_code {
        let ok = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(ApiError::bad_request(
                "invalid_field",
                "invalid `error_code`: use 1 to 64 letters, digits, `_`, `-` or `.`",
            ));
        }
    }
    let decision = match state.store().decision(&caller.tenant, &id).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(ApiError::not_found(format!("no decision `{id}`"))),
        Err(e) => {
            tracing::error!(error = %e, "decision lookup failed");
            return Err(ApiError::store_unavailable());
        }
    };
    let effect = decision
        .body
        .get("effect")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if request.status == crate::wire::OutcomeStatus::Executed && effect.as_deref() != Some("allow")
    {
        // Recorded all the same: the log must show what happened, and this is worth a look.
        tracing::warn!(
            tenant = %caller.tenant,
            decision = %id,
            "an action was reported executed although its decision was not allow"
        );
    }
    let now = now_ms();
    let event_id = crate::ids::ulid(now);
    let event = NewEvent {
        id: event_id.clone(),
        time_ms: now,
        tenant: caller.tenant.clone(),
        kind: kind::OUTCOME.to_owned(),
        effect,
        decision_id: Some(id.clone()),
        detail: json!({
            "status": request.status.as_str(),
            "error_code": request.error_code,
            "key_id": caller.key_id,
        }),
        ..NewEvent::default()
    };
    state
        .audit()
        .record(event)
        .await
        .map_err(|_| ApiError::audit_unavailable("the outcome"))?;
    Ok(Json(OutcomeBody {
        decision_id: id,
        status: request.status,
        error_code: request.error_code,
        event_id,
    }))
}

#[cfg(test)]
mod tests {
    use crate::wire::{ActionRequest, TargetRequest, UsageRequest};
    use warden_policy::Action;

    /// The documented request shape and the core's parser accept the same fields.
    #[test]
    fn the_documented_action_shape_is_what_the_parser_accepts() {
        let full = ActionRequest {
            id: Some("k".into()),
            kind: "ticket.resolve".into(),
            target: Some(TargetRequest {
                kind: Some("ticket".into()),
                id: Some("T-1".into()),
            }),
            confidence: Some(0.5),
            mode: Some("auto".into()),
            agent: Some("a".into()),
            on_behalf_of: Some("u".into()),
            app: Some("helpdesk".into()),
            workflow: Some("triage".into()),
            run_id: Some("r".into()),
            payload: Some(serde_json::json!({"x": 1})),
            context: Some(serde_json::json!({"y": 2})),
            usage: Some(UsageRequest {
                tokens: Some(1),
                cost_usd: Some(0.1),
                tool_calls: Some(1),
            }),
        };
        let bytes = serde_json::to_vec(&full).unwrap();
        Action::from_json(&bytes).unwrap();
        let mut extra: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        extra["tenant"] = "other".into();
        assert!(Action::from_json(&serde_json::to_vec(&extra).unwrap()).is_err());
        assert!(serde_json::from_value::<ActionRequest>(extra).is_err());
    }
}
