//! The policy lifecycle (DESIGN §8): the active version, the history, publish, rollback and
//! the semantic diff between two versions. An admin manages its own tenant's policy; an
//! operator any tenant's (`?tenant=`, default `default`), and only an operator changes the
//! `default` policy, which every tenant without its own decides with.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use warden_policy::{PolicyDiff, Version};
use warden_store::{PolicyVersionInfo, StoredPolicy};

use crate::auth::Caller;
use crate::body::{DocumentBody, JsonBody};
use crate::error::{ApiError, ErrorBody, parse_json};
use crate::keys::Role;
use crate::policies::{Cause, DEFAULT_TENANT, Submission, SubmitError, Submitted};
use crate::routes::{identifier_param, query_pairs};
use crate::state::{AppState, now_ms};
use crate::wire::rfc3339;

/// One stored policy version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyVersionBody {
    /// The tenant it belongs to.
    pub tenant: String,
    /// 1, 2, 3, … per tenant, in publishing order.
    pub revision: i64,
    /// The semver inside the document.
    pub version: String,
    /// The SHA-256 of the source, lowercase hex.
    pub hash: String,
    /// The revision active when this one was published.
    pub parent: Option<i64>,
    /// The key (or `file`, `sighup`) that published it.
    pub author: String,
    /// The publisher's comment.
    pub comment: Option<String>,
    /// When it was published, RFC 3339.
    pub created_at: String,
    /// `active`, `superseded`, `shadow` or `failed`.
    pub status: String,
    /// The document as submitted (single versions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl PolicyVersionBody {
    fn of(info: &PolicyVersionInfo, source: Option<String>) -> Self {
        Self {
            tenant: info.tenant.clone(),
            revision: info.revision,
            version: info.version.clone(),
            hash: info.hash.clone(),
            parent: info.parent,
            author: info.author.clone(),
            comment: info.comment.clone(),
            created_at: rfc3339(info.created_at_ms),
            status: info.status.clone(),
            source,
        }
    }

    fn stored(policy: StoredPolicy) -> Self {
        Self::of(&policy.info, Some(policy.source))
    }
}

/// What a publish or rollback did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishedBody {
    /// `false` when the document was the active version already.
    pub changed: bool,
    /// The version now active.
    pub policy: PolicyVersionBody,
}

/// A page of a tenant's versions, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionsBody {
    /// The versions, without their sources.
    pub versions: Vec<PolicyVersionBody>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// `POST /v1/policy/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to restore: a revision number (`3`) or a semver (`1.2.0`, its newest
    /// revision).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^(0|[1-9][0-9]{0,17}|(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})(-[0-9A-Za-z.-]+)?)$"
    )]
    pub version: String,
    /// Why.
    #[schema(
        max_length = 1000,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]*$"
    )]
    pub comment: Option<String>,
}

/// One changed field, with its value before and after (`null` for absent).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FieldChangeBody {
    /// Dotted path from the top of the document, or of the rule.
    pub path: String,
    /// The value before; absent when the field was added.
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// The value after; absent when the field was removed.
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// A rule added or removed, as written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleEntryBody {
    /// Its id.
    pub id: String,
    /// The whole rule.
    #[schema(value_type = Object)]
    pub rule: Value,
}

/// A rule in both versions that changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleChangeBody {
    /// Its id.
    pub id: String,
    /// Each changed field of the rule.
    pub fields: Vec<FieldChangeBody>,
}

/// What changed from one version to another.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiffBody {
    /// The older side.
    pub from: PolicyVersionBody,
    /// The newer side.
    pub to: PolicyVersionBody,
    /// Top-level settings that changed, in path order.
    pub settings: Vec<FieldChangeBody>,
    /// Rules only in `to`.
    pub rules_added: Vec<RuleEntryBody>,
    /// Rules only in `from`.
    pub rules_removed: Vec<RuleEntryBody>,
    /// Rules in both that changed.
    pub rules_changed: Vec<RuleChangeBody>,
    /// The rules of both in their new order, when the order changed.
    pub rules_reordered: Vec<String>,
    /// The same, as readable text (`no changes` when none).
    pub text: String,
}

/// Whose policy a lifecycle route acts on.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Operator keys only: the tenant (default `default`).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub tenant: Option<String>,
}

/// `POST /v1/policy` parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishQuery {
    /// Operator keys only: the tenant (default `default`).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub tenant: Option<String>,
    /// Why, recorded with the version.
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub comment: Option<String>,
}

/// `GET /v1/policy/versions` parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionsQuery {
    /// Operator keys only: the tenant (default `default`).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub tenant: Option<String>,
    /// Only revisions below this one (the previous page's `next_before`).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// `GET /v1/policy/diff` parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// Operator keys only: the tenant (default `default`).
    #[param(value_type = Option<String>, min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$")]
    pub tenant: Option<String>,
    /// The older version: a revision or a semver.
    #[param(value_type = String, min_length = 1, max_length = 100, pattern = r"^(0|[1-9][0-9]{0,17}|(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})(-[0-9A-Za-z.-]+)?)$")]
    pub from: Option<String>,
    /// The newer version (default: the active one).
    #[param(value_type = Option<String>, min_length = 1, max_length = 100, pattern = r"^(0|[1-9][0-9]{0,17}|(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})(-[0-9A-Za-z.-]+)?)$")]
    pub to: Option<String>,
}

/// The tenant a lifecycle request acts on: an admin's own (a `tenant` parameter may only
/// repeat it), or for an operator the named one (default `default`). Changing `default`
/// needs an operator: it decides for every tenant without a policy of its own.
pub(crate) fn target_tenant(
    caller: &Caller,
    named: Option<String>,
    changes: bool,
) -> Result<String, ApiError> {
    caller.require(&[Role::Admin, Role::Operator])?;
    if caller.roles.contains(&Role::Operator) {
        return Ok(named.unwrap_or_else(|| DEFAULT_TENANT.to_owned()));
    }
    if named.as_ref().is_some_and(|t| *t != caller.tenant) {
        return Err(ApiError::forbidden(
            "an admin key manages its own tenant's policy only",
        ));
    }
    if changes && caller.tenant == DEFAULT_TENANT {
        return Err(ApiError::forbidden(
            "the default policy applies to every tenant without its own: an operator key changes it",
        ));
    }
    Ok(caller.tenant.clone())
}

/// The tenant of a route whose one query parameter is `tenant` (see [`target_tenant`]).
fn tenant_param(caller: &Caller, uri: &Uri, changes: bool) -> Result<String, ApiError> {
    let mut named = None;
    for (name, value) in query_pairs(uri.query(), &["tenant"])? {
        named = Some(identifier_param(&name, value)?);
    }
    target_tenant(caller, named, changes)
}

fn store_error(e: warden_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "a policy version could not be read or written");
    ApiError::store_unavailable()
}

/// The stored version a reference names: a revision number, or a semver (its newest
/// revision).
async fn resolve(
    state: &AppState,
    tenant: &str,
    reference: &str,
) -> Result<StoredPolicy, ApiError> {
    let not_found =
        || ApiError::not_found(format!("no version `{reference}` of this tenant's policy"));
    let store = state.store();
    if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        let revision: i64 = reference.parse().map_err(|_| not_found())?;
        return store
            .policy(tenant, Some(revision))
            .await
            .map_err(store_error)?
            .ok_or_else(not_found);
    }
    if Version::parse(reference).is_none() {
        return Err(ApiError::bad_request(
            "invalid_version",
            format!(
                "`{}` is neither a revision number nor a semver such as 1.2.0",
                reference.escape_debug()
            ),
        ));
    }
    // Versions are rare writes; a page at a time until the newest match.
    let mut before = None;
    loop {
        let page = store
            .policy_versions(tenant, before, 500)
            .await
            .map_err(store_error)?;
        if let Some(found) = page.iter().find(|v| v.version == reference) {
            return store
                .policy(tenant, Some(found.revision))
                .await
                .map_err(store_error)?
                .ok_or_else(not_found);
        }
        match page.last() {
            Some(last) if page.len() == 500 => before = Some(last.revision),
            _ => return Err(not_found()),
        }
    }
}

fn reference_param(name: &str, value: String) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be 1 to 100 characters"),
        ));
    }
    Ok(value)
}

/// Publishes `submission`, mapping refusals to their answers.
pub(crate) async fn submit(
    state: &AppState,
    submission: Submission,
) -> Result<(StatusCode, Json<PublishedBody>), ApiError> {
    let (tenant, by, cause) = (
        submission.tenant.clone(),
        submission.author.clone(),
        submission.cause.name(),
    );
    match state.policies().submit(submission).await {
        Ok(Submitted::Published(info)) => Ok((
            StatusCode::CREATED,
            Json(PublishedBody {
                changed: true,
                policy: PolicyVersionBody::of(&info, None),
            }),
        )),
        Ok(Submitted::Unchanged(info)) => Ok((
            StatusCode::OK,
            Json(PublishedBody {
                changed: false,
                policy: PolicyVersionBody::of(&info, None),
            }),
        )),
        Err(e) => Err(refused(state, &tenant, &by, cause, e).await),
    }
}

/// Audits a refused change of policy (`policy_refused`: who, what and why; the change itself
/// wrote nothing) and answers it.
pub(crate) async fn refused(
    state: &AppState,
    tenant: &str,
    by: &str,
    cause: &str,
    e: SubmitError,
) -> ApiError {
    let error = submit_error(e);
    if !matches!(error.code(), "store_unavailable") {
        let now = now_ms();
        let detail: String = error.detail().chars().take(500).collect();
        let event = warden_store::NewEvent {
            id: crate::ids::ulid(now),
            time_ms: now,
            tenant: tenant.to_owned(),
            kind: warden_store::kind::POLICY_REFUSED.to_owned(),
            detail: serde_json::json!({
                "by": by, "cause": cause, "error": error.code(), "detail": detail,
            }),
            ..warden_store::NewEvent::default()
        };
        if state.audit().record(event).await.is_err() {
            tracing::error!("a refused policy change could not be audited");
        }
    }
    error
}

/// The answer to a refused submission.
pub(crate) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Invalid(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_invalid",
            format!("the policy does not compile: {e}"),
        ),
        SubmitError::NotNewer { .. } => {
            ApiError::new(StatusCode::CONFLICT, "version_not_newer", e.to_string())
        }
        SubmitError::Contended => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        SubmitError::PolicyChanged => {
            ApiError::new(StatusCode::CONFLICT, "policy_changed", e.to_string())
        }
        SubmitError::ProposalStale(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_decided", e.to_string())
        }
        SubmitError::Store(e) => store_error(e),
    }
}

/// The version in force for the tenant: its own, or `default`'s when it has none.
#[utoipa::path(
    get,
    path = "/v1/policy",
    tag = "policy",
    params(TenantQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The active version with its source", body = PolicyVersionBody),
        (status = 400, description = "An unknown, repeated or invalid parameter (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or another tenant", body = ErrorBody),
        (status = 404, description = "No policy for the tenant", body = ErrorBody),
    )
)]
pub async fn active(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<PolicyVersionBody>, ApiError> {
    let tenant = tenant_param(&caller, &uri, false)?;
    let store = state.store();
    let mut stored = store.policy(&tenant, None).await.map_err(store_error)?;
    if stored.is_none() {
        stored = store
            .policy(DEFAULT_TENANT, None)
            .await
            .map_err(store_error)?;
    }
    let stored =
        stored.ok_or_else(|| ApiError::not_found("no policy is published for this tenant"))?;
    Ok(Json(PolicyVersionBody::stored(stored)))
}

/// The tenant's own versions, newest first.
#[utoipa::path(
    get,
    path = "/v1/policy/versions",
    tag = "policy",
    params(VersionsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of versions", body = VersionsBody),
        (status = 400, description = "An unknown, repeated or invalid parameter (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or another tenant", body = ErrorBody),
    )
)]
pub async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<VersionsBody>, ApiError> {
    let (mut named, mut before, mut limit) = (None, None, 50u32);
    let bad = |detail: &str| ApiError::bad_request("invalid_query", detail.to_owned());
    for (name, value) in query_pairs(uri.query(), &["tenant", "before", "limit"])? {
        match name.as_str() {
            "tenant" => named = Some(identifier_param(&name, value)?),
            "before" => {
                before = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|b| *b >= 1)
                        .ok_or_else(|| bad("`before` must be a revision number, 1 or more"))?,
                );
            }
            _ => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| bad("`limit` must be a whole number from 1 to 500"))?;
            }
        }
    }
    let tenant = target_tenant(&caller, named, false)?;
    let page = state
        .store()
        .policy_versions(&tenant, before, limit)
        .await
        .map_err(store_error)?;
    let next_before = (page.len() == limit as usize)
        .then(|| page.last().map(|v| v.revision))
        .flatten()
        .filter(|r| *r > 1);
    Ok(Json(VersionsBody {
        versions: page
            .iter()
            .map(|v| PolicyVersionBody::of(v, None))
            .collect(),
        next_before,
    }))
}

/// One of the tenant's versions, with its source.
#[utoipa::path(
    get,
    path = "/v1/policy/versions/{version}",
    tag = "policy",
    params(
        ("version" = String, Path, description = "A revision number (`3`) or a semver (`1.2.0`: its newest revision)", min_length = 1, max_length = 100, pattern = r"^(0|[1-9][0-9]{0,17}|(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})(-[0-9A-Za-z.-]+)?)$"),
        TenantQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The version", body = PolicyVersionBody),
        (status = 400, description = "Not a revision or semver (`invalid_version`), or a bad parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or another tenant", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
    )
)]
pub async fn version(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
    uri: Uri,
) -> Result<Json<PolicyVersionBody>, ApiError> {
    let tenant = tenant_param(&caller, &uri, false)?;
    let reference = reference_param("version", reference)?;
    Ok(Json(PolicyVersionBody::stored(
        resolve(&state, &tenant, &reference).await?,
    )))
}

/// Publishes a policy document as the tenant's next version, live on every replica within
/// a second. Refused with every `line:col` problem if it does not compile, and if its
/// `version` is not greater than the active one's.
#[utoipa::path(
    post,
    path = "/v1/policy",
    tag = "policy",
    params(PublishQuery),
    request_body(content = String, description = "The policy document", content_type = "application/yaml"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Published and active", body = PublishedBody),
        (status = 200, description = "The document is the active version already", body = PublishedBody),
        (status = 400, description = "A bad parameter, or a body that is not UTF-8", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, another tenant, or `default` without an operator key", body = ErrorBody),
        (status = 409, description = "The version is not greater than the active one (`version_not_newer`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "Not YAML or JSON", body = ErrorBody),
        (status = 422, description = "The document does not compile (`policy_invalid`)", body = ErrorBody),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    body: Result<DocumentBody, ApiError>,
) -> Result<(StatusCode, Json<PublishedBody>), ApiError> {
    let (mut named, mut comment) = (None, None);
    for (name, value) in query_pairs(uri.query(), &["tenant", "comment"])? {
        if name == "tenant" {
            named = Some(identifier_param(&name, value)?);
        } else {
            comment = Some(identifier_param(&name, value)?);
        }
    }
    let tenant = target_tenant(&caller, named, true)?;
    let DocumentBody(source) = body?;
    submit(
        &state,
        Submission {
            tenant,
            source,
            author: caller.key_id.clone(),
            comment,
            cause: Cause::Publish,
            now_ms: now_ms(),
        },
    )
    .await
}

/// Publishes an earlier version's document again, as the tenant's next version: history
/// only grows, and the rollback is itself a version that can be rolled back.
#[utoipa::path(
    post,
    path = "/v1/policy/rollback",
    tag = "policy",
    params(TenantQuery),
    request_body = RollbackRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Published and active", body = PublishedBody),
        (status = 200, description = "That version's document is the active one already", body = PublishedBody),
        (status = 400, description = "A bad body or parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, another tenant, or `default` without an operator key", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "The old document no longer compiles (`policy_invalid`)", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    body: Result<JsonBody, ApiError>,
) -> Result<(StatusCode, Json<PublishedBody>), ApiError> {
    let tenant = tenant_param(&caller, &uri, true)?;
    let JsonBody(bytes) = body?;
    let request: RollbackRequest = parse_json(&bytes)?;
    let reference = reference_param("version", request.version)?;
    if let Some(comment) = &request.comment
        && (comment.chars().count() > 1000
            || !comment.chars().all(warden_policy::action::printable))
    {
        return Err(ApiError::bad_request(
            "invalid_body",
            "`comment` must be at most 1000 printable characters",
        ));
    }
    let old = resolve(&state, &tenant, &reference).await?;
    submit(
        &state,
        Submission {
            tenant,
            source: old.source,
            author: caller.key_id.clone(),
            comment: request
                .comment
                .or_else(|| Some(format!("rollback to revision {}", old.info.revision))),
            cause: Cause::Rollback {
                from: old.info.revision,
            },
            now_ms: now_ms(),
        },
    )
    .await
}

/// What changed between two of the tenant's versions: rules added, removed and changed
/// field by field, and top-level settings.
#[utoipa::path(
    get,
    path = "/v1/policy/diff",
    tag = "policy",
    params(DiffQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The diff", body = DiffBody),
        (status = 400, description = "`from` missing, or a bad parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or another tenant", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
    )
)]
pub async fn diff(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<DiffBody>, ApiError> {
    let (mut named, mut from, mut to) = (None, None, None);
    for (name, value) in query_pairs(uri.query(), &["tenant", "from", "to"])? {
        match name.as_str() {
            "tenant" => named = Some(identifier_param(&name, value)?),
            "from" => from = Some(reference_param(&name, value)?),
            _ => to = Some(reference_param(&name, value)?),
        }
    }
    let tenant = target_tenant(&caller, named, false)?;
    let from = from.ok_or_else(|| {
        ApiError::bad_request("invalid_query", "`from` names the version to compare")
    })?;
    let from = resolve(&state, &tenant, &from).await?;
    let to = match to {
        Some(to) => resolve(&state, &tenant, &to).await?,
        None => state
            .store()
            .policy(&tenant, None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("the tenant has no active version of its own"))?,
    };
    let (a, b) = (from.source.clone(), to.source.clone());
    let diff = tokio::task::spawn_blocking(move || PolicyDiff::between(&a, &b))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            // Stored versions compiled when published; a newer core may refuse one.
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_invalid",
                e.to_string(),
            )
        })?;
    let changes = ChangesBody::of(&diff);
    Ok(Json(DiffBody {
        settings: changes.settings,
        rules_added: changes.rules_added,
        rules_removed: changes.rules_removed,
        rules_changed: changes.rules_changed,
        rules_reordered: changes.rules_reordered,
        text: changes.text,
        from: PolicyVersionBody::of(&from.info, None),
        to: PolicyVersionBody::of(&to.info, None),
    }))
}

/// What changed between two documents, as `GET /v1/policy/diff` shows it (without the two
/// versions): also what a proposal would change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangesBody {
    /// Top-level settings that changed, in path order.
    pub settings: Vec<FieldChangeBody>,
    /// Rules only in the newer document.
    pub rules_added: Vec<RuleEntryBody>,
    /// Rules only in the older document.
    pub rules_removed: Vec<RuleEntryBody>,
    /// Rules in both that changed.
    pub rules_changed: Vec<RuleChangeBody>,
    /// The rules of both in their new order, when the order changed.
    pub rules_reordered: Vec<String>,
    /// The same, as readable text (`no changes` when none).
    pub text: String,
}

impl ChangesBody {
    /// The wire form of the core's diff.
    pub fn of(diff: &PolicyDiff) -> Self {
        let field = |c: &warden_policy::FieldChange| FieldChangeBody {
            path: c.path(),
            before: c.before().cloned(),
            after: c.after().cloned(),
        };
        let entry = |r: &warden_policy::RuleEntry| RuleEntryBody {
            id: r.id().as_str().to_owned(),
            rule: r.value().clone(),
        };
        Self {
            settings: diff.settings().iter().map(field).collect(),
            rules_added: diff.rules_added().iter().map(entry).collect(),
            rules_removed: diff.rules_removed().iter().map(entry).collect(),
            rules_changed: diff
                .rules_changed()
                .iter()
                .map(|c| RuleChangeBody {
                    id: c.id().as_str().to_owned(),
                    fields: c.fields().iter().map(field).collect(),
                })
                .collect(),
            rules_reordered: diff
                .rules_reordered()
                .iter()
                .map(|id| id.as_str().to_owned())
                .collect(),
            text: diff.to_string(),
        }
    }
}

/// The candidate running in shadow and what it found on every replica.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShadowBody {
    /// The stored shadow version.
    pub policy: PolicyVersionBody,
    /// Decisions evaluated under both, on every replica (this one's count now, the others'
    /// as they last recorded it, at most 2 s ago).
    pub decisions: u64,
    /// Of those, the ones both gave the same effect.
    pub agreed: u64,
    /// Decisions not evaluated because the shadow fell behind.
    pub dropped: u64,
    /// Disagreements by kind (`allow→deny`, …, live first), each with up to 20 examples.
    pub disagreements: Vec<DisagreementBody>,
}

/// One kind of disagreement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DisagreementBody {
    /// `live→shadow` effects, e.g. `deny→allow`.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// The first ones: no payload or context values.
    pub examples: Vec<crate::shadow::Example>,
}

impl ShadowBody {
    fn of(info: &PolicyVersionInfo, tally: crate::shadow::Tally) -> Self {
        Self {
            policy: PolicyVersionBody::of(info, None),
            decisions: tally.decisions,
            agreed: tally.agreed,
            dropped: tally.dropped,
            disagreements: tally
                .disagreements
                .into_iter()
                .map(|(kind, d)| DisagreementBody {
                    kind,
                    count: d.count,
                    examples: d.examples,
                })
                .collect(),
        }
    }
}

/// Runs a candidate beside the active version on every replica: each decision is also
/// evaluated under it, off the request's path, and disagreements are counted. The body is
/// a policy document (YAML or JSON), or `{"version": V}` for a stored version. Replaces a
/// running shadow. Never changes a live answer.
#[utoipa::path(
    post,
    path = "/v1/policy/shadow",
    tag = "policy",
    params(TenantQuery),
    request_body(content = String, description = "A policy document, or `{\"version\": V}`", content_type = "application/yaml"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The shadow runs", body = ShadowBody),
        (status = 400, description = "A bad parameter or body", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, another tenant, or `default` without an operator key", body = ErrorBody),
        (status = 404, description = "No such stored version", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "Not YAML or JSON", body = ErrorBody),
        (status = 422, description = "The document does not compile (`policy_invalid`)", body = ErrorBody),
    )
)]
pub async fn start_shadow(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    body: Result<DocumentBody, ApiError>,
) -> Result<(StatusCode, Json<ShadowBody>), ApiError> {
    let tenant = tenant_param(&caller, &uri, true)?;
    let DocumentBody(text) = body?;
    // `{"version": V}` alone names a stored version (a document with nothing but a
    // version would be pointless to shadow).
    // Strictly: a repeated key is no reference, and the document's own parser refuses it.
    let reference = warden_policy::json::parse_strict(text.as_bytes())
        .ok()
        .and_then(|v| match v {
            Value::Object(m) if m.len() == 1 => {
                m.get("version").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        });
    let (source, from) = match reference {
        Some(reference) => {
            let stored = resolve(&state, &tenant, &reference_param("version", reference)?).await?;
            (stored.source, Some(stored.info.revision))
        }
        None => (text, None),
    };
    let submitted = state
        .policies()
        .submit(Submission {
            tenant: tenant.clone(),
            source,
            author: caller.key_id.clone(),
            comment: from.map(|r| format!("revision {r} in shadow")),
            cause: Cause::Shadow { from },
            now_ms: now_ms(),
        })
        .await;
    let submitted = match submitted {
        Ok(submitted) => submitted,
        Err(e) => return Err(refused(&state, &tenant, &caller.key_id, "shadow", e).await),
    };
    let (Submitted::Published(info) | Submitted::Unchanged(info)) = submitted;
    Ok((
        StatusCode::CREATED,
        Json(ShadowBody::of(&info, crate::shadow::Tally::default())),
    ))
}

/// The running shadow and what it found on every replica.
#[utoipa::path(
    get,
    path = "/v1/policy/shadow",
    tag = "policy",
    params(TenantQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The shadow and its tally", body = ShadowBody),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, or another tenant", body = ErrorBody),
        (status = 404, description = "No shadow runs", body = ErrorBody),
    )
)]
pub async fn show_shadow(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ShadowBody>, ApiError> {
    let tenant = tenant_param(&caller, &uri, false)?;
    let shadow = state
        .policies()
        .shadow(&tenant)
        .ok_or_else(|| ApiError::not_found("no shadow policy runs for this tenant"))?;
    let tally = state
        .policies()
        .fleet_tally(&shadow)
        .await
        .map_err(store_error)?;
    Ok(Json(ShadowBody::of(&shadow.info, tally)))
}

/// Ends shadow mode on every replica; answers with the final tally of every replica, which
/// the `policy_shadow_ended` event records.
#[utoipa::path(
    delete,
    path = "/v1/policy/shadow",
    tag = "policy",
    params(TenantQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended; the final tally", body = ShadowBody),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 403, description = "Not an admin or operator key, another tenant, or `default` without an operator key", body = ErrorBody),
        (status = 404, description = "No shadow runs", body = ErrorBody),
    )
)]
pub async fn end_shadow(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ShadowBody>, ApiError> {
    let tenant = tenant_param(&caller, &uri, true)?;
    let (info, tally) = state
        .policies()
        .end_shadow(&tenant, &caller.key_id, now_ms())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no shadow policy runs for this tenant"))?;
    Ok(Json(ShadowBody::of(&info, tally)))
}
