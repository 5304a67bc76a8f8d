//! `/v1/approvals…` and `/v1/questions…`: list, show, approve, reject, ask, answer, and the
//! long-polls that return the moment a human decides.
//!
//! The waits are routed outside the in-flight bound and the request timeout (see
//! `app::app`): they hold a slot of `--max-waiters` instead, and end at their own
//! timeout.

use crate::approvals::{self, Act, Verdict};
use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, parse_json};
use crate::keys::Role;
use crate::routes::query_pairs;
use crate::state::{AppState, now_ms};
use crate::wire::{
    AnswerRequest, ApprovalView, ApprovalsBody, QuestionRequest, RejectRequest, VoteRequest,
    rfc3339,
};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;
use utoipa::IntoParams;
use warden_store::{Append, ApprovalFilter, ApprovalRecord, NewEvent, approval_kind, kind, status};

/// Filters of `GET /v1/approvals`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this status.
    #[param(value_type = Option<String>, pattern = "^(pending|approved|rejected|expired|answered)$")]
    pub status: Option<String>,
    /// Only approvals or only questions.
    #[param(value_type = Option<String>, pattern = "^(approval|question)$")]
    pub kind: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `?timeout=` of the waits.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait, 1 to 300 (default 30).
    #[param(minimum = 1, maximum = 300)]
    pub timeout: Option<u64>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let bad = |detail: &str| ApiError::bad_request("invalid_query", detail.to_owned());
        let mut q = Self::default();
        for (name, value) in query_pairs(query, &["status", "kind", "limit"])? {
            match name.as_str() {
                "status" => {
                    let known = [
                        status::PENDING,
                        status::APPROVED,
                        status::REJECTED,
                        status::EXPIRED,
                        status::ANSWERED,
                    ];
                    if !known.contains(&value.as_str()) {
                        return Err(bad(
                            "`status` must be `pending`, `approved`, `rejected`, `expired` or `answered`",
                        ));
                    }
                    q.status = Some(value);
                }
                "kind" => {
                    if ![approval_kind::APPROVAL, approval_kind::QUESTION].contains(&value.as_str())
                    {
                        return Err(bad("`kind` must be `approval` or `question`"));
                    }
                    q.kind = Some(value);
                }
                _ => match value.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => q.limit = Some(n),
                    _ => return Err(bad("`limit` must be a whole number from 1 to 1000")),
                },
            }
        }
        Ok(q)
    }
}

impl WaitQuery {
    fn parse(query: Option<&str>) -> Result<Duration, ApiError> {
        let mut seconds = 30;
        for (_, value) in query_pairs(query, &["timeout"])? {
            seconds = match value.parse::<u64>() {
                Ok(n) if (1..=300).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        "`timeout` must be a whole number of seconds from 1 to 300",
                    ));
                }
            };
        }
        Ok(Duration::from_secs(seconds))
    }
}

/// Whether an approver key may see and decide `record`: one of its groups, or any
/// approver when the approval names none.
fn in_groups(caller: &Caller, record: &ApprovalRecord) -> bool {
    record.groups.is_empty() || caller.groups.iter().any(|g| record.groups.contains(g))
}

/// The tenant's approval for an approver (of its groups) or an admin.
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<ApprovalRecord, ApiError> {
    let record = approvals::current(state, &caller.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no approval `{id}`")))?;
    if !caller.roles.contains(&Role::Admin) && !in_groups(caller, &record) {
        return Err(ApiError::forbidden(
            "this approval is for approvers of other groups",
        ));
    }
    Ok(record)
}

/// How many pages of 1000 rows a listing reads at most to fill an approver's page.
const MAX_LIST_PAGES: usize = 10;

/// Pending (or filtered) approvals and questions: an approver's of its groups, an
/// admin's of the whole tenant. Newest first.
#[utoipa::path(
    get,
    path = "/v1/approvals",
    tag = "approvals",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approvals and questions, newest first", body = ApprovalsBody),
        (status = 400, description = "An unknown or invalid filter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver or admin key", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ApprovalsBody>, ApiError> {
    caller.require(&[Role::Approver, Role::Admin])?;
    let q = ListQuery::parse(uri.query())?;
    // Expired approvals are expired before they are listed, so none reads as pending.
    approvals::sweep_once(&state).await;
    let admin = caller.roles.contains(&Role::Admin);
    let limit = q.limit.unwrap_or(100) as usize;
    let mut filter = ApprovalFilter {
        tenant: caller.tenant.clone(),
        status: q.status,
        kind: q.kind,
        limit: 1000,
        before: None,
    };
    // The limit counts what the caller may see: an approver's page is filled from further
    // pages when other groups' approvals are newer, up to a bounded scan.
    let mut approvals = Vec::new();
    for _ in 0..MAX_LIST_PAGES {
        let page = state.store().approvals(&filter).await.map_err(|e| {
            tracing::error!(error = %e, "approval listing failed");
            ApiError::store_unavailable()
        })?;
        let full = page.len() == filter.limit as usize;
        filter.before = page.last().map(|a| (a.created_at_ms, a.id.clone()));
        approvals.extend(
            page.iter()
                .filter(|a| admin || in_groups(&caller, a))
                .take(limit - approvals.len())
                .map(ApprovalView::of),
        );
        if approvals.len() == limit || !full {
            break;
        }
    }
    Ok(Json(ApprovalsBody { approvals }))
}

/// One approval or question.
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        (status = 400, description = "Not an approval id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver (of its groups) or admin key", body = ErrorBody),
        (status = 404, description = "No such approval in this tenant", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    caller.require(&[Role::Approver, Role::Admin])?;
    let id = super::path_id(id, "an approval")?;
    Ok(Json(ApprovalView::of(
        &visible(&state, &caller, &id).await?,
    )))
}

/// The approver acting, as their key says.
fn act(caller: &Caller, verdict: Verdict, text: Option<String>) -> Result<Act, ApiError> {
    caller.require(&[Role::Approver])?;
    let user = caller.user.clone().ok_or_else(|| {
        ApiError::forbidden("this approver key names no user; create one with `--user`")
    })?;
    Ok(Act {
        user,
        key_id: caller.key_id.clone(),
        groups: caller.groups.clone(),
        agent: caller.agent.clone(),
        verdict,
        text,
    })
}

/// Free text written for or by a human: 1 to `max` characters, no control or invisible
/// formatting characters other than newlines and tabs.
fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.chars().count() <= max
        && value
            .chars()
            .all(|c| c == '\n' || c == '\t' || warden_policy::action::printable(c));
    if !ok {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("invalid `{field}`: use 1 to {max} printable characters"),
        ));
    }
    Ok(value.to_owned())
}

/// The vote body's reason, checked: optional to approve, required to reject.
fn vote_reason(
    body: Result<JsonBody, ApiError>,
    verdict: Verdict,
) -> Result<Option<String>, ApiError> {
    let JsonBody(bytes) = body?;
    let reason = if verdict == Verdict::Reject {
        let request: RejectRequest = parse_json(&bytes).map_err(|e| {
            if e.code() == "invalid_body" {
                ApiError::bad_request(
                    "invalid_body",
                    "a rejection needs a `reason`, and nothing else",
                )
            } else {
                e
            }
        })?;
        Some(request.reason)
    } else {
        parse_json::<VoteRequest>(&bytes)?.reason
    };
    reason.map(|r| text("reason", &r, 1000)).transpose()
}

/// Approves: with `quorum` distinct users approving, the decision becomes `allow`.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/approve",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = VoteRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The vote counted; the approval as it is now", body = ApprovalView),
        (status = 400, description = "Malformed body, or not an approval id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver of its groups, or separation of duties", body = ErrorBody),
        (status = 404, description = "No such approval in this tenant", body = ErrorBody),
        (status = 409, description = "Already decided, or this user already voted (`already_decided`, with the outcome); the id is a question (`wrong_kind`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing changed", body = ErrorBody),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(state, caller, id, body, Verdict::Approve).await
}

/// Rejects, with a reason: the decision becomes `deny`.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/reject",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = RejectRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected; the approval as it is now", body = ApprovalView),
        (status = 400, description = "No reason, a malformed body, or not an approval id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver of its groups, or separation of duties", body = ErrorBody),
        (status = 404, description = "No such approval in this tenant", body = ErrorBody),
        (status = 409, description = "Already decided, or this user already voted (`already_decided`, with the outcome); the id is a question (`wrong_kind`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing changed", body = ErrorBody),
    )
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(state, caller, id, body, Verdict::Reject).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
    verdict: Verdict,
) -> Result<Json<ApprovalView>, ApiError> {
    caller.require(&[Role::Approver])?;
    let id = super::path_id(id, "an approval")?;
    let reason = vote_reason(body, verdict)?;
    let act = act(&caller, verdict, reason)?;
    Ok(Json(
        approvals::vote(&state, &caller.tenant, &id, act).await?,
    ))
}

/// Long-polls an approval: answers the moment it is decided (on any replica), or at the
/// timeout with `"timed_out": true` and the state then.
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}/wait",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Decided, or timed out (`timed_out`); with the decision as it stands", body = ApprovalView),
        (status = 400, description = "Not an approval id, or a bad timeout", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller or agent key, or another agent's", body = ErrorBody),
        (status = 404, description = "No such approval in this tenant", body = ErrorBody),
        (status = 503, description = "Too many waiters, or the store is unavailable", body = ErrorBody),
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<ApprovalView>, ApiError> {
    wait_for(state, caller, id, uri, approval_kind::APPROVAL).await
}

/// Long-polls a question: answers the moment it is answered, or at the timeout.
#[utoipa::path(
    get,
    path = "/v1/questions/{id}/wait",
    tag = "questions",
    params(("id" = String, Path, description = "The question id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Answered, expired, or timed out (`timed_out`)", body = ApprovalView),
        (status = 400, description = "Not a question id, or a bad timeout", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller or agent key, or another agent's", body = ErrorBody),
        (status = 404, description = "No such question in this tenant", body = ErrorBody),
        (status = 503, description = "Too many waiters, or the store is unavailable", body = ErrorBody),
    )
)]
pub async fn wait_question(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<ApprovalView>, ApiError> {
    wait_for(state, caller, id, uri, approval_kind::QUESTION).await
}

async fn wait_for(
    state: AppState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
    wanted: &str,
) -> Result<Json<ApprovalView>, ApiError> {
    caller.require(&[Role::Controller, Role::Agent])?;
    let id = super::path_id(id, "an approval")?;
    let timeout = WaitQuery::parse(uri.query())?;
    let deadline = Instant::now() + timeout;
    // Registered before the first read: a decision committed after this point wakes us,
    // one committed before it is what the read sees.
    let mut waiter = state.waiters().register(&state, &id).await?;
    let missing = || ApiError::not_found(format!("no {wanted} `{id}`"));
    let mut checked = false;
    loop {
        let record = approvals::current(&state, &caller.tenant, &id)
            .await?
            .ok_or_else(missing)?;
        if !checked {
            if record.kind != wanted {
                return Err(missing());
            }
            // An agent key waits on its own agent's approvals and questions only.
            if !caller.roles.contains(&Role::Controller) && record.agent != caller.agent {
                return Err(ApiError::forbidden(
                    "this key may wait only on its own agent's approvals",
                ));
            }
            checked = true;
        }
        if !record.is_pending() {
            return Ok(Json(approvals::wait_view(&state, &record, false).await?));
        }
        // Wake for a decision, the deadline, or the approval's own expiry.
        let expiry = Duration::from_millis(
            u64::try_from(record.expires_at_ms.saturating_sub(now_ms())).unwrap_or(0),
        );
        let until = deadline.min(Instant::now() + expiry + Duration::from_millis(5));
        tokio::select! {
            () = waiter.changed() => {}
            () = tokio::time::sleep_until(until) => {
                if Instant::now() >= deadline {
                    let record = approvals::current(&state, &caller.tenant, &id)
                        .await?
                        .ok_or_else(missing)?;
                    let timed_out = record.is_pending();
                    return Ok(Json(approvals::wait_view(&state, &record, timed_out).await?));
                }
            }
        }
    }
}

/// Asks a human a question; it waits in the approvals queue (`kind=question`).
#[utoipa::path(
    post,
    path = "/v1/questions",
    tag = "questions",
    request_body = QuestionRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Asked; wait on `wait_url`", body = ApprovalView),
        (status = 400, description = "Malformed question", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent or controller key", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The audit log is unavailable; nothing was asked", body = ErrorBody),
    )
)]
pub async fn ask(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    caller.require(&[Role::Agent, Role::Controller])?;
    let JsonBody(bytes) = body?;
    let request: QuestionRequest = parse_json(&bytes)?;
    let question = text("question", &request.question, 2000)?;
    if request.options.len() > 20 || request.groups.len() > 20 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "a question has at most 20 `options` and 20 `groups`",
        ));
    }
    let mut options = Vec::new();
    for option in &request.options {
        let option = text("options", option, 200)?;
        if options.contains(&option) {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("the option `{option}` is given twice"),
            ));
        }
        options.push(option);
    }
    let identifier = |field: &str, value: &str| -> Result<String, ApiError> {
        if value.is_empty()
            || value.chars().count() > warden_policy::action::MAX_IDENTIFIER
            || !value.chars().all(warden_policy::action::printable)
        {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!(
                    "invalid `{field}`: use 1 to {} printable characters",
                    warden_policy::action::MAX_IDENTIFIER
                ),
            ));
        }
        Ok(value.to_owned())
    };
    let groups = request
        .groups
        .iter()
        .map(|g| identifier("groups", g))
        .collect::<Result<Vec<_>, _>>()?;
    let run_id = request
        .run_id
        .as_deref()
        .map(|r| identifier("run_id", r))
        .transpose()?;
    // Within 1 minute and 7 days: a longer wait is clamped, not refused.
    let expires_in = match request.expires_in.as_deref() {
        None => Duration::from_secs(24 * 3600),
        Some(raw) => match parse_expiry(raw) {
            Some(d) => d.clamp(Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600)),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "invalid `expires_in`: a number and a unit (`s`, `m`, `h`, `d`), such as `30m`",
                ));
            }
        },
    };
    let agent = if caller.roles.contains(&Role::Agent) {
        caller.agent.clone()
    } else {
        None
    };
    let now = now_ms();
    let id = crate::ids::ulid(now);
    let record = ApprovalRecord {
        id: id.clone(),
        tenant: caller.tenant.clone(),
        kind: approval_kind::QUESTION.to_owned(),
        status: status::PENDING.to_owned(),
        groups: groups.clone(),
        quorum: 1,
        requested_by_key: caller.key_id.clone(),
        agent: agent.clone(),
        question: Some(question.clone()),
        options: options.clone(),
        run_id: run_id.clone(),
        created_at_ms: now,
        expires_at_ms: now
            .saturating_add(i64::try_from(expires_in.as_millis()).unwrap_or(i64::MAX)),
        ..ApprovalRecord::default()
    };
    // The question is written by the agent for a human, so the log keeps its text.
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: caller.tenant.clone(),
        kind: kind::QUESTION_ASKED.to_owned(),
        agent,
        detail: json!({
            "approval_id": id,
            "question": question,
            "options": options,
            "groups": groups,
            "run_id": run_id,
            "key_id": caller.key_id,
            "expires_at": rfc3339(record.expires_at_ms),
        }),
        ..NewEvent::default()
    };
    let outbox = state.webhooks().message("question.created", &record, now);
    state
        .audit()
        .append(Append {
            event,
            approval: Some(record.clone()),
            outbox,
            ..Append::default()
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the question could not be recorded in the audit log; try again",
            )
        })?;
    Ok((StatusCode::CREATED, Json(ApprovalView::of(&record))))
}

/// Answers a question (one of its options, when it has some).
#[utoipa::path(
    post,
    path = "/v1/questions/{id}/answer",
    tag = "questions",
    params(("id" = String, Path, description = "The question id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = AnswerRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Answered", body = ApprovalView),
        (status = 400, description = "Malformed answer, not one of the options, or not a question id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver of its groups, or the key that asked", body = ErrorBody),
        (status = 404, description = "No such question in this tenant", body = ErrorBody),
        (status = 409, description = "Already answered or expired (`already_decided`); the id is an approval (`wrong_kind`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing changed", body = ErrorBody),
    )
)]
pub async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<ApprovalView>, ApiError> {
    caller.require(&[Role::Approver])?;
    let id = super::path_id(id, "an approval")?;
    let JsonBody(bytes) = body?;
    let request: AnswerRequest = parse_json(&bytes)?;
    let answer = text("answer", &request.answer, 2000)?;
    let record = state
        .store()
        .approval(&caller.tenant, &id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "question lookup failed");
            ApiError::store_unavailable()
        })?;
    if record
        .as_ref()
        .is_none_or(|r| r.kind != approval_kind::QUESTION)
    {
        return Err(ApiError::not_found(format!("no question `{id}`")));
    }
    let act = act(&caller, Verdict::Answer, Some(answer))?;
    Ok(Json(
        approvals::vote(&state, &caller.tenant, &id, act).await?,
    ))
}

/// `expires_in` as the document describes it: 1 to 6 digits, then `s`, `m`, `h` or `d`.
fn parse_expiry(raw: &str) -> Option<Duration> {
    let unit = match raw.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let digits = &raw[..raw.len() - 1];
    if digits.is_empty() || digits.len() > 6 || digits.starts_with('0') {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(Duration::from_secs(n * unit))
}
