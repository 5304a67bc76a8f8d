//! Admin and operator routes: publish changed policy files (an admin its tenant's, an
//! operator all), query audit events (an admin its tenant's, an operator any), verify the
//! whole chain (operator).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::keys::Role;
use crate::policies::{Cause, DEFAULT_TENANT, Submission, SubmitError, Submitted};
use crate::state::{AppState, now_ms};
use crate::wire::EventBody;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warden_store::{EventFilter, NewEvent, kind};

/// What a reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadBody {
    /// `reloaded` when every file was published or unchanged, `partial` when some were
    /// refused (the others were published all the same).
    pub status: &'static str,
    /// Each tenant with a file (an admin: its own), and what happened to it.
    pub policies: Vec<PolicyVersion>,
}

/// One tenant's file after a reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersion {
    /// The tenant (`default` for everyone without their own).
    pub tenant: String,
    /// The version in force for the tenant now.
    pub version: String,
    /// Its stored revision; absent when the tenant has none of its own yet.
    pub revision: Option<i64>,
    /// `published` (a new version), `unchanged` (the file is the active version) or
    /// `refused` (the previous version stays in force).
    pub outcome: &'static str,
    /// Why it was refused, each problem as `file:line:col: message`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Publishes every changed policy file as a new version of its tenant: an admin its own
/// tenant's file, an operator the whole folder. A tenant whose file does not compile (or
/// whose version is not greater) keeps its version; the others are published all the same.
#[utoipa::path(
    post,
    path = "/v1/policy/reload",
    tag = "policy",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Reloaded: each tenant's outcome", body = ReloadBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or the shared default policy without an operator key", body = ErrorBody),
        (status = 422, description = "An admin's own file does not compile; its version stays in force", body = ErrorBody),
    )
)]
pub async fn reload(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ReloadBody>, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    if caller.roles.contains(&Role::Operator) {
        return reload_policies(&state, None, &caller.tenant, &caller.key_id)
            .await
            .map(Json);
    }
    if caller.tenant == DEFAULT_TENANT {
        return Err(ApiError::forbidden(
            "the default policy applies to every tenant without its own: an operator key reloads it",
        ));
    }
    let body =
        reload_policies(&state, Some(&caller.tenant), &caller.tenant, &caller.key_id).await?;
    if let Some(refused) = body.policies.iter().find(|p| p.outcome == "refused") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_invalid",
            format!(
                "the previous policy stays in force: {}",
                refused.problems.join("; ")
            ),
        ));
    }
    Ok(Json(body))
}

/// Publishes the changed files of the folder (only `only`'s when given), audits the reload
/// under `audit_tenant`, and logs; the routes' work and SIGHUP's.
pub async fn reload_policies(
    state: &AppState,
    only: Option<&str>,
    audit_tenant: &str,
    by: &str,
) -> Result<ReloadBody, ApiError> {
    let policies = state.policies();
    let files = policies.files().map_err(|e| {
        tracing::error!(problems = %e, "policy reload refused; the previous policies stay in force");
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_invalid",
            format!("the previous policies stay in force: {e}"),
        )
    })?;
    let mut outcomes = Vec::new();
    for (tenant, path) in files {
        if only.is_some_and(|t| t != tenant) {
            continue;
        }
        let name = policies.file_name(&path);
        let submitted = match policies.read_file(&path) {
            Ok(source) => policies
                .submit(Submission {
                    tenant: tenant.clone(),
                    source,
                    author: by.to_owned(),
                    comment: Some(format!("reloaded from {name}")),
                    cause: Cause::Reload,
                    now_ms: now_ms(),
                })
                .await
                .map_err(|e| match e {
                    SubmitError::Invalid(errors) => {
                        errors.iter().map(|e| format!("{name}:{e}")).collect()
                    }
                    other => vec![format!("{name}: {other}")],
                }),
            Err(problem) => Err(vec![problem]),
        };
        let (outcome, problems) = match submitted {
            Ok(Submitted::Published(_)) => ("published", Vec::new()),
            Ok(Submitted::Unchanged(_)) => ("unchanged", Vec::new()),
            Err(problems) => {
                tracing::error!(%tenant, problems = %problems.join("; "), "policy reload refused; the previous policy stays in force");
                ("refused", problems)
            }
        };
        outcomes.push((tenant, outcome, problems));
    }
    if only.is_some() && outcomes.is_empty() {
        // No file of its own: nothing to publish; what decides for it is shown.
        outcomes.push((only.unwrap_or_default().to_owned(), "unchanged", Vec::new()));
    }
    let current = policies.current();
    let policies: Vec<PolicyVersion> = outcomes
        .into_iter()
        .map(|(tenant, outcome, problems)| {
            let loaded = current.for_tenant(&tenant);
            PolicyVersion {
                version: loaded
                    .map(|p| p.policy.version().as_str().to_owned())
                    .unwrap_or_default(),
                revision: current.own(&tenant).map(|p| p.revision),
                tenant,
                outcome,
                problems,
            }
        })
        .collect();
    let refused = policies.iter().filter(|p| p.outcome == "refused").count();
    tracing::info!(policies = policies.len(), refused, "policies reloaded");
    audit_reload(state, audit_tenant, by, &policies).await;
    Ok(ReloadBody {
        status: if refused == 0 { "reloaded" } else { "partial" },
        policies,
    })
}

async fn audit_reload(state: &AppState, tenant: &str, by: &str, policies: &[PolicyVersion]) {
    let now = now_ms();
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: tenant.to_owned(),
        kind: kind::POLICY_RELOADED.to_owned(),
        detail: json!({
            "by": by,
            "policies": policies.iter().map(|p| json!({
                "tenant": p.tenant, "version": p.version, "outcome": p.outcome,
            })).collect::<Vec<_>>(),
        }),
        ..NewEvent::default()
    };
    if state.audit().record(event).await.is_err() {
        tracing::error!("a policy reload could not be audited");
    }
}

/// Filters of `GET /v1/audit`, all optional query parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this kind (`decision`, `outcome`, `auth_failure`, …).
    #[param(value_type = Option<EventKind>)]
    pub kind: Option<String>,
    /// Only this agent.
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub agent: Option<String>,
    /// Only this action type.
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub action: Option<String>,
    /// Only this effect.
    #[param(value_type = Option<EffectName>)]
    pub effect: Option<String>,
    /// At or after this time, Unix ms.
    #[param(minimum = 0)]
    pub since_ms: Option<i64>,
    /// Before this time, Unix ms.
    #[param(minimum = 0)]
    pub until_ms: Option<i64>,
    /// Only events after this seq (paging oldest first).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// Only events before this seq (paging newest first).
    #[param(minimum = 0)]
    pub before_seq: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Newest first.
    pub newest_first: Option<bool>,
    /// Operator keys only: only this tenant's events (default: every tenant's).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub tenant: Option<String>,
}

/// An audit event kind, as `GET /v1/audit` filters by it (the store's `kind::ALL`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A decision.
    Decision,
    /// An outcome reported by a controller.
    Outcome,
    /// A key was created.
    KeyCreated,
    /// A key was revoked.
    KeyRevoked,
    /// Authentication failures.
    AuthFailure,
    /// A policy reload.
    PolicyReloaded,
    /// A purge's checkpoint.
    Checkpoint,
    /// An idempotency key reused for another action.
    IdempotencyMismatch,
    /// A permit was checked.
    PermitVerified,
    /// An approver's vote.
    ApprovalVote,
    /// How an approval ended: approved, rejected or expired.
    ApprovalOutcome,
    /// An agent asked a human.
    QuestionAsked,
    /// How a question ended: answered or expired.
    QuestionOutcome,
    /// A server loaded a changed permit key set.
    PermitKeysChanged,
    /// A policy version was published (publish, rollback, reload or seed).
    PolicyPublished,
    /// A replica could not compile a published policy version and kept its previous one.
    PolicyActivationFailed,
    /// A candidate policy started running in shadow.
    PolicyShadowStarted,
    /// Shadow mode ended.
    PolicyShadowEnded,
    /// A policy change was refused.
    PolicyRefused,
    /// An agent submitted a policy change.
    ProposalSubmitted,
    /// A proposal was approved, rejected or analyzed again.
    ProposalDecided,
    /// A newer proposal replaced a pending one.
    ProposalSuperseded,
    /// A proposal flagged as a security event (a repeat, a revert).
    ProposalSecurityEvent,
    /// Repeated friction drafted (or updated) a suggested proposal.
    ProposalObserved,
    /// An approver key signed in to the web inbox.
    InboxSignedIn,
    /// A web inbox session was signed out.
    InboxSignedOut,
}

/// A decision's effect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EffectName {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Needs a human.
    RequireApproval,
}

impl AuditQuery {
    /// Parses a query string strictly: every parameter known, at most once, valid.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let bad = |detail: String| ApiError::bad_request("invalid_query", detail);
        let mut q = AuditQuery::default();
        let mut seen = std::collections::HashSet::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(raw).ok_or_else(|| {
                bad(format!(
                    "`{}` is not valid percent-encoded UTF-8",
                    name.escape_debug()
                ))
            })?;
            if !seen.insert(name.to_owned()) {
                return Err(bad(format!(
                    "`{}` is given more than once",
                    name.escape_debug()
                )));
            }
            let text = |max: usize| -> Result<Option<String>, ApiError> {
                // JSON Schema counts characters, as the document's maxLength does.
                if value.is_empty()
                    || value.len() > max
                    || !value.chars().all(warden_policy::action::printable)
                {
                    return Err(bad(format!(
                        "`{name}` must be 1 to {max} printable characters"
                    )));
                }
                Ok(Some(value.clone()))
            };
            let number = |min: i64| -> Result<Option<i64>, ApiError> {
                match value.parse::<i64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    _ => Err(bad(format!(
                        "`{name}` must be a whole number of at least {min}"
                    ))),
                }
            };
            match name {
                "kind" => {
                    if !kind::ALL.contains(&value.as_str()) {
                        return Err(bad(format!(
                            "`kind` must be one of {}",
                            kind::ALL.map(|k| format!("`{k}`")).join(", ")
                        )));
                    }
                    q.kind = Some(value.clone());
                }
                "effect" => {
                    if !["allow", "deny", "require_approval"].contains(&value.as_str()) {
                        return Err(bad(
                            "`effect` must be `allow`, `deny` or `require_approval`".into(),
                        ));
                    }
                    q.effect = Some(value.clone());
                }
                "agent" => q.agent = text(200)?,
                "action" => q.action = text(200)?,
                "tenant" => q.tenant = text(200)?,
                "since_ms" => q.since_ms = number(0)?,
                "until_ms" => q.until_ms = number(0)?,
                "after_seq" => q.after_seq = number(0)?,
                "before_seq" => q.before_seq = number(0)?,
                "limit" => match value.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => q.limit = Some(n),
                    _ => return Err(bad("`limit` must be a whole number from 1 to 1000".into())),
                },
                "newest_first" => match value.as_str() {
                    "true" => q.newest_first = Some(true),
                    "false" => q.newest_first = Some(false),
                    _ => return Err(bad("`newest_first` must be `true` or `false`".into())),
                },
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{}`; the filters are kind, agent, action, effect, \
                         since_ms, until_ms, after_seq, before_seq, limit, newest_first, tenant",
                        other.escape_debug()
                    )));
                }
            }
        }
        Ok(q)
    }
}

/// Percent-decodes a query value (`+` is a space), or `None` if it is not UTF-8.
pub(crate) fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A page of audit events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventsBody {
    /// The events, in the order asked for.
    pub events: Vec<EventBody>,
}

/// Audit events: an admin's of its own tenant, an operator's of any.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Events", body = EventsBody),
        (status = 400, description = "An unknown or invalid filter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key", body = ErrorBody),
    )
)]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
) -> Result<Json<EventsBody>, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    let q = AuditQuery::parse(uri.query())?;
    let operator = caller.roles.contains(&Role::Operator);
    if q.tenant.is_some() && !operator {
        return Err(ApiError::forbidden(
            "only an operator key filters by tenant; an admin sees its own",
        ));
    }
    let filter = EventFilter {
        tenant: if operator {
            q.tenant
        } else {
            Some(caller.tenant.clone())
        },
        kind: q.kind,
        agent: q.agent,
        action_type: q.action,
        effect: q.effect,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        limit: q.limit.unwrap_or(0),
        newest_first: q.newest_first.unwrap_or(false),
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
    responses(
        (status = 200, description = "The chain's state", body = VerifyBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an operator key: the chain spans every tenant", body = ErrorBody),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyBody>, ApiError> {
    caller.require(&[Role::Operator])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's list of kinds is the store's.
    #[test]
    fn the_documented_kinds_are_the_stored_ones() {
        let documented: Vec<String> = [
            EventKind::Decision,
            EventKind::Outcome,
            EventKind::KeyCreated,
            EventKind::KeyRevoked,
            EventKind::AuthFailure,
            EventKind::PolicyReloaded,
            EventKind::Checkpoint,
            EventKind::IdempotencyMismatch,
            EventKind::PermitVerified,
            EventKind::ApprovalVote,
            EventKind::ApprovalOutcome,
            EventKind::QuestionAsked,
            EventKind::QuestionOutcome,
            EventKind::PermitKeysChanged,
            EventKind::PolicyPublished,
            EventKind::PolicyActivationFailed,
            EventKind::PolicyShadowStarted,
            EventKind::PolicyShadowEnded,
            EventKind::PolicyRefused,
            EventKind::ProposalSubmitted,
            EventKind::ProposalDecided,
            EventKind::ProposalSuperseded,
            EventKind::ProposalSecurityEvent,
            EventKind::ProposalObserved,
            EventKind::InboxSignedIn,
            EventKind::InboxSignedOut,
        ]
        .iter()
        .map(|k| {
            serde_json::to_value(k)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(documented, kind::ALL);
    }
}
