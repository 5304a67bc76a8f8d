//! `GET /v1/denials?last=N`: the calling agent's own recent denials, from the audit log,
//! with the rule that was missing when the policy offers one (DESIGN §4, §7).

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use warden_store::{EventFilter, kind};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::keys::Role;
use crate::routes::query_pairs;
use crate::state::AppState;
use crate::wire::rfc3339;

/// Messages longer than this many characters are cut (at a character boundary).
const MAX_MESSAGE_CHARS: usize = 300;

/// How many denials `GET /v1/denials` shows.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DenialsQuery {
    /// How many, newest first: default 10; values outside 1 to 100 are clamped.
    pub last: Option<u64>,
}

/// The agent's recent denials, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DenialsBody {
    /// Newest first.
    pub denials: Vec<DenialBody>,
}

/// One denial: what was asked, which rules decided, why, and the rule that was missing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DenialBody {
    /// The decision (`GET /v1/decisions/{id}` has it whole).
    pub decision_id: Option<String>,
    /// RFC 3339.
    pub time: String,
    /// The action's type.
    pub action_type: Option<String>,
    /// The rules that matched, as the audit log records them (the deny's first); empty for
    /// a deny by the policy's default that no rule matched.
    pub rules: Vec<String>,
    /// The reasons' messages (redacted values masked), each at most 300 characters.
    pub reasons: Vec<String>,
    /// The narrowest allow rule for that action, when the policy offered one.
    #[schema(value_type = Option<Object>)]
    pub rule_missing: Option<Value>,
}

/// The calling agent's own recent denials: no payload or context values, only the rule
/// ids and reasons recorded in the audit log and the decision's `rule_missing`.
#[utoipa::path(
    get,
    path = "/v1/denials",
    tag = "decisions",
    params(DenialsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agent's denials, newest first", body = DenialsBody),
        (status = 400, description = "An unknown, repeated or non-numeric parameter (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an agent key", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub async fn recent(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<DenialsBody>, ApiError> {
    caller.require(&[Role::Agent])?;
    let mut last = 10u64;
    for (_, value) in query_pairs(uri.query(), &["last"])? {
        // A whole number the document's `int64` holds: past it is not a number it
        // describes (found by schemathesis with an agent key), whatever the clamp does.
        last = value
            .parse::<i64>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_query", "`last` must be a whole number")
            })?;
    }
    let last = last.clamp(1, 100);
    let Some(agent) = caller.agent.clone() else {
        return Err(ApiError::forbidden("this key names no agent"));
    };
    let unavailable = |e: warden_store::StoreError| {
        tracing::error!(error = %e, "denial lookup failed");
        ApiError::store_unavailable()
    };
    let events = state
        .store()
        .events(&EventFilter {
            tenant: Some(caller.tenant.clone()),
            kind: Some(kind::DECISION.to_owned()),
            agent: Some(agent),
            effect: Some("deny".to_owned()),
            limit: u32::try_from(last).unwrap_or(100),
            newest_first: true,
            ..EventFilter::default()
        })
        .await
        .map_err(unavailable)?;
    let mut denials = Vec::with_capacity(events.len());
    for e in events {
        let e = e.event;
        let rule_missing = match &e.decision_id {
            Some(id) => state
                .store()
                .decision(&caller.tenant, id)
                .await
                .map_err(unavailable)?
                .and_then(|d| d.body.get("rule_missing").cloned())
                .filter(|v| !v.is_null()),
            None => None,
        };
        denials.push(DenialBody {
            decision_id: e.decision_id,
            time: rfc3339(e.time_ms),
            action_type: e.action_type,
            rules: e.rule_ids,
            reasons: e.reasons.iter().map(|m| cut(m)).collect(),
            rule_missing,
        });
    }
    Ok(Json(DenialsBody { denials }))
}

/// `text` cut to [`MAX_MESSAGE_CHARS`] characters, marked with `…` when cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(400);
        let c = cut(&long);
        assert_eq!(c.chars().count(), 301);
        assert!(c.ends_with('…'));
    }
}
