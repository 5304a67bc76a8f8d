//! Authentication: `Authorization: Bearer wdn_<id>_<secret>` becomes a [`Caller`] whose
//! tenant, roles and agent come from the stored key, never from the request. Every failure
//! is audited and answered 401 with the same vague detail, so a caller cannot tell an
//! unknown key from a wrong secret or a revoked key.

use crate::error::ApiError;
use crate::keys::{self, Role};
use crate::state::{AppState, now_ms};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use warden_policy::glob::Glob;
use warden_store::{KeyRecord, NewEvent, SYSTEM_TENANT, kind};

/// Who is calling, as established by their key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's public id.
    pub key_id: String,
    /// The tenant everything this caller does belongs to.
    pub tenant: String,
    /// What the key may do.
    pub roles: Vec<Role>,
    /// An agent key's agent id, or a controller key's glob of agents it may name.
    pub agent: Option<String>,
    /// Approver groups.
    pub groups: Vec<String>,
    /// The person an approver key belongs to.
    pub user: Option<String>,
}

impl Caller {
    /// Refuses the request unless the key holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| roles.contains(r)) {
            return Ok(());
        }
        let names: Vec<String> = roles.iter().map(|r| format!("`{r}`")).collect();
        Err(ApiError::forbidden(format!(
            "this route needs a key with the {} role",
            names.join(" or ")
        )))
    }

    /// The agent a request acts as: an agent key's own id (the body may only repeat it);
    /// for other keys the body's agent, if the key's pattern allows naming it.
    pub fn agent_for(&self, named: Option<&str>) -> Result<Option<String>, ApiError> {
        if self.roles.contains(&Role::Agent) {
            let own = self.agent.as_deref();
            return match (own, named) {
                (Some(own), Some(named)) if own != named => Err(ApiError::forbidden(format!(
                    "this key acts as agent `{own}` and may not name `{named}`"
                ))),
                (own, named) => Ok(own.or(named).map(str::to_owned)),
            };
        }
        match (named, self.agent.as_deref()) {
            (None, None) => Ok(None),
            // A key limited to some agents acts only as one of them: an action that names
            // none would skip every tier and agent rule.
            (None, Some(pattern)) => Err(ApiError::bad_request(
                "agent_required",
                format!("this key acts for agents `{pattern}`: name the agent in `agent`"),
            )),
            (Some(named), Some(pattern)) if Glob::new(pattern).matches(named) => {
                Ok(Some(named.to_owned()))
            }
            (Some(named), _) => Err(ApiError::forbidden(format!(
                "this key may not act for agent `{named}`"
            ))),
        }
    }
}

/// Keys read from the store, kept briefly so a decision does not cost a key lookup. An
/// entry lives `ttl` from the moment it was read from the store, however often it is used
/// (using it never renews it), so a revocation stored by any replica applies everywhere
/// within `ttl`; one made through this replica applies at once.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (KeyRecord, Instant)>>,
}

impl KeyCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str) -> Option<KeyRecord> {
        let entries = self.entries.lock().ok()?;
        let (record, at) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| record.clone())
    }

    /// Caches `record`, just read from the store.
    fn put(&self, record: KeyRecord) {
        if let Ok(mut entries) = self.entries.lock() {
            // Bounded: a flood of distinct valid keys cannot grow it without limit.
            if entries.len() >= 10_000 {
                entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            }
            entries.insert(record.id.clone(), (record, Instant::now()));
        }
    }

    /// Forgets a key at once (after revoking it here).
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }
}

/// Why authentication failed; recorded in the audit event, never told to the caller.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Missing,
    Malformed,
    UnknownKey,
    WrongSecret,
    Revoked,
    Invalid,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::UnknownKey => "unknown_key",
            Failure::WrongSecret => "wrong_secret",
            Failure::Revoked => "revoked",
            Failure::Invalid => "invalid_key",
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // Not `Bearer …`: a token that cannot parse, so it fails as malformed.
            .map(|h| h.strip_prefix("Bearer ").unwrap_or(""));
        authenticate(state, parts, header).await
    }
}

/// Verifies a presented key the one way the API does — the 429 of a source that keeps
/// failing, the cache, the constant-time secret check, revocation, an agent key's agent —
/// and audits a failure (`None`: no key was presented). The bearer header and the web
/// inbox's sign-in both come here.
pub async fn authenticate(
    state: &AppState,
    parts: &Parts,
    token: Option<&str>,
) -> Result<Caller, ApiError> {
    // A source that keeps failing is turned away before any lookup.
    if let Some(retry) = state.auth_failures().blocked(source(parts), Instant::now()) {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed authentications from this address; try again later",
        );
        error.retry_after(retry);
        return Err(error);
    }
    let Some(token) = token else {
        return Err(reject(state, parts, Failure::Missing, None).await);
    };
    let Some((id, secret)) = keys::parse_token(token.trim()) else {
        return Err(reject(state, parts, Failure::Malformed, None).await);
    };
    let Some(record) = key_record(state, id).await? else {
        return Err(reject(state, parts, Failure::UnknownKey, None).await);
    };
    if !keys::secret_matches(secret, &record) {
        return Err(reject(state, parts, Failure::WrongSecret, Some(&record)).await);
    }
    match caller_of(state, record) {
        Ok(caller) => Ok(caller),
        Err((failure, record)) => Err(reject(state, parts, failure, Some(&record)).await),
    }
}

/// The caller a key already verified acts as now (a web inbox session's key): `None` once
/// the key is unknown, revoked or invalid. Read through the same cache as every request, so
/// a revocation anywhere applies within `--key-cache-ttl`.
pub async fn key_caller(state: &AppState, key_id: &str) -> Result<Option<Caller>, ApiError> {
    Ok(key_record(state, key_id)
        .await?
        .and_then(|record| caller_of(state, record).ok()))
}

/// The key with this id, from the cache or the store.
async fn key_record(state: &AppState, id: &str) -> Result<Option<KeyRecord>, ApiError> {
    if let Some(record) = state.keys().get(id) {
        return Ok(Some(record));
    }
    match state.store().key(id).await {
        Ok(Some(record)) => {
            // Stamped now, when read from the store; hits never renew it.
            state.keys().put(record.clone());
            Ok(Some(record))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "key lookup failed");
            Err(ApiError::store_unavailable())
        }
    }
}

/// What a key whose secret matched acts as, or why it acts as nothing.
#[expect(
    clippy::result_large_err,
    reason = "the record goes back to the one caller that audits the failure with it"
)]
fn caller_of(state: &AppState, record: KeyRecord) -> Result<Caller, (Failure, KeyRecord)> {
    if record.revoked_at_ms.is_some() {
        state.keys().forget(&record.id);
        return Err((Failure::Revoked, record));
    }
    let roles: Vec<Role> = record.roles.iter().filter_map(|r| Role::parse(r)).collect();
    // An agent key names exactly one agent. One stored without (written by an older
    // version, or by hand) would act for whichever agent a body names: refuse it.
    if roles.contains(&Role::Agent) && !record.agent.as_deref().is_some_and(keys::is_agent_id) {
        return Err((Failure::Invalid, record));
    }
    Ok(Caller {
        key_id: record.id,
        tenant: record.tenant,
        roles,
        agent: record.agent,
        groups: record.groups,
        user: record.user,
    })
}

/// Records a failed authentication and builds the 401. The first failure of a (source,
/// reason, key) in a window is audited at once; the ones after it are counted and audited
/// as one event when the window ends, so a flood of bad keys cannot grow the log without
/// bound. Events name the key id only when the key exists, and never the presented secret.
async fn reject(
    state: &AppState,
    parts: &Parts,
    failure: Failure,
    key: Option<&KeyRecord>,
) -> ApiError {
    let now = now_ms();
    let attempt = Attempt {
        source: source(parts),
        reason: failure.as_str(),
        key_id: key.map(|k| k.id.clone()),
        tenant: key.map_or(SYSTEM_TENANT, |k| k.tenant.as_str()).to_owned(),
    };
    let first = state.auth_failures().record(
        attempt.clone(),
        now,
        parts.method.as_str(),
        parts.uri.path(),
    );
    if first {
        let event = failure_event(&attempt, &Tally::single(now, parts), now);
        if state.audit().record(event).await.is_err() {
            tracing::error!("an authentication failure could not be audited");
        }
    }
    tracing::info!(reason = failure.as_str(), "authentication failed");
    ApiError::unauthorized("a valid API key is required: Authorization: Bearer <key>")
}

/// The address a request came from, as the listener saw it (no forwarding headers are
/// trusted); `unknown` where there is none, as in tests through the router.
fn source(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// What a failure is aggregated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Attempt {
    source: IpAddr,
    reason: &'static str,
    key_id: Option<String>,
    tenant: String,
}

/// Failures of one [`Attempt`] not yet audited.
#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    method: String,
    path: String,
}

impl Tally {
    fn single(now: i64, parts: &Parts) -> Self {
        Self {
            count: 1,
            first_ms: now,
            last_ms: now,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().chars().take(200).collect(),
        }
    }
}

fn failure_event(attempt: &Attempt, tally: &Tally, now: i64) -> NewEvent {
    NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: attempt.tenant.clone(),
        kind: kind::AUTH_FAILURE.to_owned(),
        detail: json!({
            "reason": attempt.reason,
            "key_id": attempt.key_id,
            "source": attempt.source.to_string(),
            "method": tally.method,
            "path": tally.path,
            "count": tally.count,
            "first_ms": tally.first_ms,
            "last_ms": tally.last_ms,
        }),
        ..NewEvent::default()
    }
}

/// Authentication failures in the current window: per source, for the 429 threshold, and
/// per [`Attempt`], for the aggregated audit events.
#[derive(Debug)]
pub struct AuthFailures {
    limit: u32,
    window: Duration,
    /// Failures this window from all sources: while under the limit no source can be over
    /// it, so the common case never takes the lock.
    total: AtomicU32,
    inner: Mutex<FailureWindow>,
}

#[derive(Debug)]
struct FailureWindow {
    started: Instant,
    by_source: HashMap<IpAddr, u32>,
    /// Attempts seen this window, with the failures after the first not yet audited.
    pending: HashMap<Attempt, Option<Tally>>,
}

/// Distinct attempts remembered per window; past it, further ones are still refused and
/// counted per source, but audited only if their source was seen.
const MAX_ATTEMPTS: usize = 10_000;

impl AuthFailures {
    /// `limit` failures per source per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            total: AtomicU32::new(0),
            inner: Mutex::new(FailureWindow {
                started: Instant::now(),
                by_source: HashMap::new(),
                pending: HashMap::new(),
            }),
        }
    }

    /// Seconds until `source` may try again, if it is over the limit this window.
    fn blocked(&self, source: IpAddr, now: Instant) -> Option<u32> {
        if self.total.load(Ordering::Relaxed) < self.limit {
            return None;
        }
        let inner = self.inner.lock().ok()?;
        let count = *inner.by_source.get(&source)?;
        let elapsed = now.saturating_duration_since(inner.started);
        (count >= self.limit && elapsed < self.window).then(|| {
            let left = self.window.saturating_sub(elapsed).as_secs();
            u32::try_from(left.max(1)).unwrap_or(u32::MAX)
        })
    }

    /// Counts a failure; returns whether it is the first of its attempt this window (and
    /// so must be audited at once).
    fn record(&self, attempt: Attempt, now_ms: i64, method: &str, path: &str) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return true;
        };
        *inner.by_source.entry(attempt.source).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        if inner.pending.len() >= MAX_ATTEMPTS && !inner.pending.contains_key(&attempt) {
            return false;
        }
        match inner.pending.get_mut(&attempt) {
            None => {
                inner.pending.insert(attempt, None);
                true
            }
            Some(later) => {
                let tally = later.get_or_insert_with(|| Tally {
                    count: 0,
                    first_ms: now_ms,
                    last_ms: now_ms,
                    method: method.to_owned(),
                    path: path.chars().take(200).collect(),
                });
                tally.count += 1;
                tally.last_ms = now_ms;
                false
            }
        }
    }

    /// Ends the window if it is over (or `force`), returning the aggregated events.
    fn close_window(&self, now: Instant, now_ms: i64, force: bool) -> Vec<NewEvent> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        if !force && now.saturating_duration_since(inner.started) < self.window {
            return Vec::new();
        }
        inner.started = now;
        inner.by_source.clear();
        self.total.store(0, Ordering::Relaxed);
        let pending = std::mem::take(&mut inner.pending);
        pending
            .into_iter()
            .filter_map(|(attempt, tally)| tally.map(|t| failure_event(&attempt, &t, now_ms)))
            .collect()
    }
}

/// Audits the failures counted in windows that have ended; `force` ends the current one
/// (at shutdown). The server runs this every second.
pub async fn flush_failures(state: &AppState, force: bool) {
    let events = state
        .auth_failures()
        .close_window(Instant::now(), now_ms(), force);
    for event in events {
        if state.audit().record(event).await.is_err() {
            tracing::error!("aggregated authentication failures could not be audited");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[Role], agent: Option<&str>) -> Caller {
        Caller {
            key_id: "k".into(),
            tenant: "t".into(),
            roles: roles.to_vec(),
            agent: agent.map(str::to_owned),
            groups: vec![],
            user: None,
        }
    }

    #[test]
    fn controllers_name_only_the_agents_their_pattern_allows() {
        let c = caller(&[Role::Controller], Some("support-*"));
        assert_eq!(
            c.agent_for(Some("support-bot")).unwrap().as_deref(),
            Some("support-bot")
        );
        assert!(c.agent_for(Some("infra-bot")).is_err());
        assert_eq!(c.agent_for(None).unwrap_err().code(), "agent_required");
        let bare = caller(&[Role::Controller], None);
        assert_eq!(bare.agent_for(None).unwrap(), None);
        assert!(bare.agent_for(Some("support-bot")).is_err());
    }

    #[test]
    fn agent_keys_act_as_themselves() {
        let a = caller(&[Role::Agent], Some("support-bot"));
        assert_eq!(a.agent_for(None).unwrap().as_deref(), Some("support-bot"));
        assert_eq!(
            a.agent_for(Some("support-bot")).unwrap().as_deref(),
            Some("support-bot")
        );
        assert!(a.agent_for(Some("other")).is_err());
    }

    #[test]
    fn roles_are_required() {
        let c = caller(&[Role::Controller], None);
        assert!(c.require(&[Role::Controller, Role::Admin]).is_ok());
        let e = c.require(&[Role::Admin]).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
    }
}
