//! `/v1/proposals…`: an agent submits a policy change and reads what became of it; an
//! approver lists, approves (presenting the analysis's `review_token`) or rejects; the
//! long-poll answers the moment a proposal is decided, on any replica.
//!
//! Every route answers 404 `feature_disabled` while the tenant's live policy has
//! `proposals: off`. The wait is routed outside the in-flight bound and the request timeout,
//! like the approvals' waits (see `app::app`).

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody, ErrorCode, parse_json};
use crate::proposals::{self, Approved, ProposalSummary, ProposalView};
use crate::routes::query_pairs;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use warden_store::{proposal_source, proposal_status};

/// `GET /v1/proposals` parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this status.
    #[param(value_type = Option<String>, pattern = "^(auto_approved|needs_human|revise_requested|rejected|approved|superseded)$")]
    pub status: Option<String>,
    /// Only this source: `agent` or `observed` (Warden's suggestions from friction).
    #[param(value_type = Option<String>, pattern = "^(agent|observed)$")]
    pub source: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only proposals older than this one (the previous page's `next_before`).
    #[param(value_type = Option<String>, min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub before: Option<String>,
}

/// `?timeout=` of the wait.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait, 1 to 300 (default 30).
    #[param(minimum = 1, maximum = 300)]
    pub timeout: Option<u64>,
}

/// A page of proposals, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalsBody {
    /// The proposals.
    pub proposals: Vec<ProposalSummary>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// `POST /v1/proposals`: a proposed change to the tenant's policy (DESIGN §7). Read by the
/// core (`Proposal::from_value`); this type documents it.
#[derive(Debug, Deserialize, ToSchema)]
#[expect(
    dead_code,
    reason = "the shape for the OpenAPI document; the core reads the body"
)]
pub struct ProposalRequest {
    /// Why the agent wants the change: 1 to 4000 characters.
    #[schema(min_length = 1, max_length = 4000)]
    rationale: String,
    /// What could go wrong: at most 20, each at most 4000 characters.
    #[schema(max_items = 20)]
    risks: Option<Vec<String>>,
    /// The agent's confidence, 0 to 1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    confidence: Option<f64>,
    /// Decision ids (`ID` or `decision:ID`) that motivate it, at most 50.
    #[schema(max_items = 50)]
    evidence: Option<Vec<String>>,
    /// 1 to 20 operations applied in order: `{"op": "add_rule", "rule": {…}}`,
    /// `{"op": "remove_rule", "id": …}`, `{"op": "replace_rule", "rule": {…}}`,
    /// `{"op": "set", "path": "default", "value": …}`, `{"op": "replace_policy", "policy":
    /// {…}}`, `{"op": "json_patch", "patch": [RFC 6902 operations]}`.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 20)]
    changes: Vec<serde_json::Value>,
}

/// `POST /v1/proposals/{id}/approve`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The `review_token` of the analysis approved, as `GET /v1/proposals/{id}` shows it.
    #[schema(min_length = 1, max_length = 128)]
    pub review_token: String,
}

/// `POST /v1/proposals/{id}/reject`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectProposalRequest {
    /// Why, for the agent to read: 1 to 2000 characters.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub reason: String,
}

/// The 409 of an approval whose analysis is out of date: the error, and the proposal as
/// analyzed again, with its new `review_token`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyChangedBody {
    /// `policy_changed`.
    pub error: String,
    /// A sentence for humans.
    pub detail: String,
    /// The proposal with its new analysis.
    pub proposal: ProposalView,
}

fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let bad = |detail: &str| ApiError::bad_request("invalid_query", detail.to_owned());
    let (mut status, mut source, mut limit, mut before) = (None, None, 100, None);
    for (name, value) in query_pairs(query, &["status", "source", "limit", "before"])? {
        match name.as_str() {
            "source" => {
                if !proposal_source::ALL.contains(&value.as_str()) {
                    return Err(bad("`source` must be `agent` or `observed`"));
                }
                source = Some(value);
            }
            "status" => {
                if !proposal_status::ALL.contains(&value.as_str()) {
                    return Err(bad(
                        "`status` must be `auto_approved`, `needs_human`, `revise_requested`, `rejected`, `approved` or `superseded`",
                    ));
                }
                status = Some(value);
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => return Err(bad("`limit` must be a whole number from 1 to 1000")),
            },
            _ => {
                if value.is_empty()
                    || value.len() > 64
                    || !value.chars().all(warden_policy::action::printable)
                {
                    return Err(bad("`before` is a proposal id"));
                }
                before = Some(value);
            }
        }
    }
    Ok(ListQuery {
        status,
        source,
        limit: Some(limit),
        before,
    })
}

/// Submits a policy change (agent keys only; tenant and agent come from the key). The
/// review proves what it does; a change that provably only narrows, with no findings and
/// touching only the proposer, is applied at once as a new version (`auto_approved`).
#[utoipa::path(
    post,
    path = "/v1/proposals",
    tag = "proposals",
    request_body = ProposalRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Reviewed (and, when `auto_approved`, applied)", body = ProposalView),
        (status = 400, description = "Malformed JSON, a repeated key (`duplicate_key`), or a field that is not a proposal's (`invalid_field`, naming it)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent key", body = ErrorBody),
        (status = 404, description = "Proposals are off for the tenant (`feature_disabled`)", body = ErrorBody),
        (status = 409, description = "The policy kept changing (`conflict`)", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "A change does not apply (`change_invalid`), or the changed policy does not compile (`policy_invalid`, every `line:col`)", body = ErrorBody),
        (status = 429, description = "The agent submitted too many proposals this hour (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or too many reviews run at once (`overloaded`); nothing was submitted", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<ProposalView>), ApiError> {
    caller.require(&[crate::keys::Role::Agent])?;
    proposals::live_for_proposals(&state, &caller.tenant)?;
    let JsonBody(bytes) = body?;
    // A task of its own: a review still running when the request times out (or the client
    // goes) is finished and stored all the same, so it counts toward the agent's limit and
    // the agent finds it with `GET /v1/proposals`.
    let view = tokio::spawn(async move { proposals::submit(&state, &caller, &bytes).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a proposal submission failed");
            ApiError::internal()
        })??;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tenant's proposals, newest first: an agent key's own agent's, an approver's or
/// admin's all.
#[utoipa::path(
    get,
    path = "/v1/proposals",
    tag = "proposals",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of proposals", body = ProposalsBody),
        (status = 400, description = "An unknown or invalid parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent, approver or admin key", body = ErrorBody),
        (status = 404, description = "Proposals are off (`feature_disabled`), or `before` names no proposal the key sees", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ProposalsBody>, ApiError> {
    caller.require(&[
        crate::keys::Role::Agent,
        crate::keys::Role::Approver,
        crate::keys::Role::Admin,
    ])?;
    let query = list_query(uri.query())?;
    proposals::live_for_proposals(&state, &caller.tenant)?;
    let (proposals, next_before) = proposals::list(
        &state,
        &caller,
        query.status,
        query.source,
        query.limit.unwrap_or(100),
        query.before,
    )
    .await?;
    Ok(Json(ProposalsBody {
        proposals,
        next_before,
    }))
}

/// One proposal with its analysis.
#[utoipa::path(
    get,
    path = "/v1/proposals/{id}",
    tag = "proposals",
    params(("id" = String, Path, description = "The proposal id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The proposal", body = ProposalView),
        (status = 400, description = "Not a proposal id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent, approver or admin key", body = ErrorBody),
        (status = 404, description = "No such proposal the key may see, or proposals are off (`feature_disabled`)", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ProposalView>, ApiError> {
    let id = super::path_id(id, "a proposal")?;
    proposals::live_for_proposals(&state, &caller.tenant)?;
    let (record, full) = proposals::visible(&state, &caller, &id).await?;
    Ok(Json(ProposalView::of(&record, full)))
}

/// Approves a proposal waiting for a human (`needs_human` or `revise_requested`), presenting
/// the `review_token` of the analysis shown: the candidate is published as a new version
/// and the proposal becomes `approved`, in one transaction. When the live policy changed
/// since that analysis, the proposal is analyzed again and the answer is 409
/// `policy_changed` with the new analysis and token; nothing is applied.
#[utoipa::path(
    post,
    path = "/v1/proposals/{id}/approve",
    tag = "proposals",
    params(("id" = String, Path, description = "The proposal id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = ApproveRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved and applied", body = ProposalView),
        (status = 400, description = "Malformed body, or not a proposal id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver key naming a user, or the proposing agent", body = ErrorBody),
        (status = 404, description = "No such proposal in this tenant, or proposals are off (`feature_disabled`)", body = ErrorBody),
        (status = 409, description = "Already decided (`already_decided`), another analysis's token (`review_token_mismatch`), or the live policy changed (`policy_changed`, with the new analysis)", body = PolicyChangedBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or too many reviews run at once (`overloaded`); nothing changed", body = ErrorBody),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(&[crate::keys::Role::Approver])?;
    let id = super::path_id(id, "a proposal")?;
    let JsonBody(bytes) = body?;
    let request: ApproveRequest = parse_json(&bytes)?;
    proposals::live_for_proposals(&state, &caller.tenant)?;
    match proposals::approve(&state, &caller, &id, &request.review_token).await? {
        Approved::Applied(view) => Ok(Json(view).into_response()),
        Approved::PolicyChanged(view) => {
            let mut response = (
                StatusCode::CONFLICT,
                Json(PolicyChangedBody {
                    error: "policy_changed".to_owned(),
                    detail: "the live policy changed since this analysis; the proposal was \
                             analyzed again: review it and approve with its new review_token"
                        .to_owned(),
                    proposal: view,
                }),
            )
                .into_response();
            response
                .extensions_mut()
                .insert(ErrorCode("policy_changed"));
            Ok(response)
        }
    }
}

/// Rejects a proposal waiting for a human, with a reason the agent reads.
#[utoipa::path(
    post,
    path = "/v1/proposals/{id}/reject",
    tag = "proposals",
    params(("id" = String, Path, description = "The proposal id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")),
    request_body = RejectProposalRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected", body = ProposalView),
        (status = 400, description = "No reason, a malformed body, or not a proposal id", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an approver key naming a user, or the proposing agent", body = ErrorBody),
        (status = 404, description = "No such proposal in this tenant, or proposals are off (`feature_disabled`)", body = ErrorBody),
        (status = 409, description = "Already decided (`already_decided`)", body = ErrorBody),
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
) -> Result<Json<ProposalView>, ApiError> {
    caller.require(&[crate::keys::Role::Approver])?;
    let id = super::path_id(id, "a proposal")?;
    let JsonBody(bytes) = body?;
    let request: RejectProposalRequest = parse_json(&bytes).map_err(|e| {
        if e.code() == "invalid_body" {
            ApiError::bad_request(
                "invalid_body",
                "a rejection needs a `reason`, and nothing else",
            )
        } else {
            e
        }
    })?;
    let reason = request.reason;
    let ok = !reason.trim().is_empty()
        && reason.chars().count() <= 2000
        && reason
            .chars()
            .all(|c| c == '\n' || c == '\t' || warden_policy::action::printable(c));
    if !ok {
        return Err(ApiError::bad_request(
            "invalid_field",
            "invalid `reason`: use 1 to 2000 printable characters",
        ));
    }
    proposals::live_for_proposals(&state, &caller.tenant)?;
    Ok(Json(proposals::reject(&state, &caller, &id, reason).await?))
}

/// Long-polls a proposal: answers the moment it is decided (on any replica), or at the
/// timeout with `"timed_out": true` and the proposal as it stands.
#[utoipa::path(
    get,
    path = "/v1/proposals/{id}/wait",
    tag = "proposals",
    params(("id" = String, Path, description = "The proposal id", min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Decided, or timed out (`timed_out`)", body = ProposalView),
        (status = 400, description = "Not a proposal id, or a bad timeout", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent, approver or admin key", body = ErrorBody),
        (status = 404, description = "No such proposal the key may see, or proposals are off (`feature_disabled`)", body = ErrorBody),
        (status = 503, description = "Too many waiters, or the store is unavailable", body = ErrorBody),
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<ProposalView>, ApiError> {
    let id = super::path_id(id, "a proposal")?;
    let mut seconds = 30;
    for (_, value) in query_pairs(uri.query(), &["timeout"])? {
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
    proposals::live_for_proposals(&state, &caller.tenant)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Registered before the first read: a decision committed after this point wakes us,
    // one committed before it is what the read sees.
    let mut waiter = state.waiters().register(&state, &id).await?;
    loop {
        let (record, full) = proposals::visible(&state, &caller, &id).await?;
        if !record.is_pending() {
            let mut view = ProposalView::of(&record, full);
            view.timed_out = Some(false);
            return Ok(Json(view));
        }
        tokio::select! {
            () = waiter.changed() => {}
            () = tokio::time::sleep_until(deadline) => {
                let (record, full) = proposals::visible(&state, &caller, &id).await?;
                let mut view = ProposalView::of(&record, full);
                view.timed_out = Some(record.is_pending());
                return Ok(Json(view));
            }
        }
    }
}
