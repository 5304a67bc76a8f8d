//! `GET /v1/budgets?run_id=…|agent=…`: budget and rate-limit usage against the limits.
//!
//! Counters are read outside the chain lock, so a value may trail a decision being
//! committed at the same moment; enforcement never reads through here (see `warden_store`'s
//! `append::plan`).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warden_policy::Counter;
use warden_store::{CounterFilter, CounterRow, CounterValue};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::keys::Role;
use crate::state::{AppState, now_ms};
use crate::wire::rfc3339;

/// Which counters `GET /v1/budgets` shows; without parameters, the tenant's own.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BudgetQuery {
    /// The agent whose counters to show (its own, its runs', and the tenant's).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub agent: Option<String>,
    /// The run whose counters to show.
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub run_id: Option<String>,
}

impl BudgetQuery {
    /// Parses a query string strictly: every parameter known, at most once, valid.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let bad = |detail: String| ApiError::bad_request("invalid_query", detail);
        let mut q = BudgetQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "agent" => &mut q.agent,
                "run_id" => &mut q.run_id,
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{}`; the filters are agent and run_id",
                        other.escape_debug()
                    )));
                }
            };
            if slot.is_some() {
                return Err(bad(format!("`{name}` is given more than once")));
            }
            let value = super::admin::decode(raw)
                .ok_or_else(|| bad(format!("`{name}` is not valid percent-encoded UTF-8")))?;
            *slot = Some(super::identifier_param(name, value)?);
        }
        Ok(q)
    }
}

/// Usage against limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetsBody {
    /// One entry per live counter, budgets first.
    pub usage: Vec<UsageBody>,
}

/// One counter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageBody {
    /// `budget` or `rate_limit`.
    pub kind: String,
    /// The budget's or rate limit's id.
    pub id: String,
    /// The agent; `null` for the tenant's counters.
    pub agent: Option<String>,
    /// The run; `null` unless the counter is a run's.
    pub run_id: Option<String>,
    /// `tool_calls`, `tokens`, `cost_usd` (dollars), `turns`, `duration` (seconds) or
    /// `actions`.
    pub counter: String,
    /// Used so far.
    pub used: f64,
    /// The ceiling the counter was last checked against.
    pub limit: f64,
    /// What is left before the ceiling (never below 0).
    pub remaining: f64,
    /// A rate limit's window start, RFC 3339.
    pub window_start: Option<String>,
    /// When a rate limit's window ends and its counter starts from zero, RFC 3339.
    pub resets_at: Option<String>,
    /// When the counter is forgotten (a run's end plus grace, a window's end), RFC 3339;
    /// `null` for counters that last as long as the policy has them.
    pub expires_at: Option<String>,
}

/// Usage against the limits of the caller's tenant: of an agent (with the tenant's own), of
/// a run, or without parameters the tenant's own.
#[utoipa::path(
    get,
    path = "/v1/budgets",
    tag = "budgets",
    params(BudgetQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Usage against limits", body = BudgetsBody),
        (status = 400, description = "An unknown, repeated or invalid parameter (`invalid_query`); a key limited to some agents must name one (`agent_required`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not a controller or admin key, or an agent this key may not act for", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
) -> Result<Json<BudgetsBody>, ApiError> {
    caller.require(&[Role::Controller, Role::Admin])?;
    let q = BudgetQuery::parse(uri.query())?;
    // A controller limited to some agents sees only theirs, as it may only act for them.
    let agent = if caller.roles.contains(&Role::Admin) {
        q.agent
    } else {
        caller.agent_for(q.agent.as_deref())?
    };
    let now = now_ms();
    let tenant_own = CounterFilter {
        tenant: caller.tenant.clone(),
        agent: Some(String::new()),
        run_id: Some(String::new()),
        now_ms: now,
    };
    let mut filters = Vec::new();
    if agent.is_some() || q.run_id.is_some() {
        filters.push(CounterFilter {
            tenant: caller.tenant.clone(),
            agent: agent.clone(),
            run_id: q.run_id.clone(),
            now_ms: now,
        });
    }
    // The tenant's own counters apply to every agent.
    if q.run_id.is_none() {
        filters.push(tenant_own);
    }
    let mut usage = Vec::new();
    for filter in &filters {
        let rows = state.store().counters(filter).await.map_err(|e| {
            tracing::error!(error = %e, "counter lookup failed");
            ApiError::store_unavailable()
        })?;
        for row in &rows {
            usage.extend(
                row.values
                    .iter()
                    .filter_map(|(name, v)| usage_body(row, name, *v, now)),
            );
        }
    }
    Ok(Json(BudgetsBody { usage }))
}

fn usage_body(row: &CounterRow, name: &str, v: CounterValue, now: i64) -> Option<UsageBody> {
    let counter = Counter::parse(name)?;
    let used = counter.used(v.value, now);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let window = row.key.kind == "rate_limit";
    Some(UsageBody {
        kind: row.key.kind.clone(),
        id: row.key.limit_id.clone(),
        agent: text(&row.key.agent),
        run_id: text(&row.key.run_id),
        counter: counter.as_str().to_owned(),
        used: counter.display(used),
        limit: counter.display(v.limit),
        remaining: counter.display(v.limit.saturating_sub(used).max(0)),
        window_start: window.then(|| rfc3339(row.key.window_start_ms)),
        resets_at: window.then(|| rfc3339(row.expires_at_ms)),
        expires_at: (row.expires_at_ms != i64::MAX).then(|| rfc3339(row.expires_at_ms)),
    })
}
