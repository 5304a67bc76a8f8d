//! Admin routes: reload policies from their folder, query the tenant's audit events, verify
//! the chain.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::keys::Role;
use crate::state::{AppState, now_ms};
use crate::wire::EventBody;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warden_store::{Append, EventFilter, NewEvent, kind};

/// The policies in force after a reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadBody {
    /// Always `reloaded`.
    pub status: &'static str,
    /// Each tenant's policy version, `default` included.
    pub policies: Vec<PolicyVersion>,
}

/// One tenant's policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersion {
    /// The tenant (`default` for everyone without their own).
    pub tenant: String,
    /// The policy's version.
    pub version: String,
}

/// Recompiles every policy in the policies folder and swaps them in at once.
#[utoipa::path(
    post,
    path = "/v1/policy/reload",
    tag = "policy",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Reloaded", body = ReloadBody),
        (status = 422, description = "A policy does not compile; the old ones stay in force", body = ErrorBody),
    )
)]
pub async fn reload(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ReloadBody>, ApiError> {
    caller.require(&[Role::Admin])?;
    reload_policies(&state, &caller.tenant, &caller.key_id)
        .await
        .map(Json)
}

/// Reloads, audits and logs; shared by the route and SIGHUP.
pub async fn reload_policies(
    state: &AppState,
    tenant: &str,
    by: &str,
) -> Result<ReloadBody, ApiError> {
    let worker = state.clone();
    let result = tokio::task::spawn_blocking(move || worker.policies().reload())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "policy reload task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })?;
    let set = match result {
        Ok(set) => set,
        Err(e) => {
            tracing::error!(problems = %e, "policy reload refused; the previous policies stay in force");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_invalid",
                format!("the previous policies stay in force: {e}"),
            ));
        }
    };
    let policies: Vec<PolicyVersion> = set
        .versions()
        .map(|(tenant, version)| PolicyVersion {
            tenant: tenant.to_owned(),
            version: version.to_owned(),
        })
        .collect();
    tracing::info!(policies = policies.len(), "policies reloaded");
    let now = now_ms();
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: tenant.to_owned(),
        kind: kind::POLICY_RELOADED.to_owned(),
        detail: json!({
            "by": by,
            "policies": policies.iter().map(|p| json!({"tenant": p.tenant, "version": p.version})).collect::<Vec<_>>(),
        }),
        ..NewEvent::default()
    };
    if state
        .audit()
        .append(Append {
            event,
            decision: None,
        })
        .await
        .is_err()
    {
        tracing::error!("a policy reload could not be audited");
    }
    Ok(ReloadBody {
        status: "reloaded",
        policies,
    })
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this kind (`decision`, `outcome`, …).
    pub kind: Option<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this action type.
    pub action: Option<String>,
    /// Only this effect.
    pub effect: Option<String>,
    /// At or after this time, Unix ms.
    pub since_ms: Option<i64>,
    /// Before this time, Unix ms.
    pub until_ms: Option<i64>,
    /// Only events after this seq (paging oldest first).
    pub after_seq: Option<i64>,
    /// Only events before this seq (paging newest first).
    pub before_seq: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Newest first.
    #[serde(default)]
    pub newest_first: bool,
}

/// A page of audit events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventsBody {
    /// The events, in the order asked for.
    pub events: Vec<EventBody>,
}

/// The caller's tenant's audit events.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "Events", body = EventsBody))
)]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsBody>, ApiError> {
    caller.require(&[Role::Admin])?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let filter = EventFilter {
        tenant: Some(caller.tenant.clone()),
        kind: q.kind,
        agent: q.agent,
        action_type: q.action,
        effect: q.effect,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        limit: q.limit.unwrap_or(0),
        newest_first: q.newest_first,
    };
    let events = state.store().events(&filter).await.map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        ApiError::store_unavailable()
    })?;
    Ok(Json(EventsBody {
        events: events.iter().map(EventBody::from).collect(),
    }))
}

/// The result of walking the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyBody {
    /// Whether every link holds.
    pub intact: bool,
    /// Events read.
    pub events_checked: u64,
    /// The first broken link.
    pub first_broken: Option<BrokenBody>,
}

/// Where the chain breaks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BrokenBody {
    /// Its seq.
    pub seq: i64,
    /// Its event id.
    pub event_id: String,
    /// What is wrong.
    pub problem: String,
}

/// Walks the whole chain and reports the first broken link.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    security(("bearer" = [])),
    responses((status = 200, description = "The chain's state", body = VerifyBody))
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyBody>, ApiError> {
    caller.require(&[Role::Admin])?;
    let report = state.store().verify().await.map_err(|e| {
        tracing::error!(error = %e, "audit verify failed");
        ApiError::store_unavailable()
    })?;
    Ok(Json(VerifyBody {
        intact: report.first_broken.is_none(),
        events_checked: report.events_checked,
        first_broken: report.first_broken.map(|b| BrokenBody {
            seq: b.seq,
            event_id: b.event_id,
            problem: b.problem.to_string(),
        }),
    }))
}
