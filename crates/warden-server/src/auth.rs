//! Authentication: `Authorization: Bearer wdn_<id>_<secret>` becomes a [`Caller`] whose
//! tenant, roles and agent come from the stored key, never from the request. Every failure
//! is audited and answered 401 with the same vague detail, so a caller cannot tell an
//! unknown key from a wrong secret or a revoked key.

use crate::error::ApiError;
use crate::keys::{self, Role};
use crate::state::{AppState, now_ms};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warden_policy::glob::Glob;
use warden_store::{Append, KeyRecord, NewEvent, SYSTEM_TENANT, kind};

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
            (None, _) => Ok(None),
            (Some(named), Some(pattern)) if Glob::new(pattern).matches(named) => {
                Ok(Some(named.to_owned()))
            }
            (Some(named), _) => Err(ApiError::forbidden(format!(
                "this key may not act for agent `{named}`"
            ))),
        }
    }
}

/// Verified keys, kept briefly so a decision does not cost a key lookup. A revocation made
/// through this replica applies at once; one made elsewhere applies within the TTL.
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
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::UnknownKey => "unknown_key",
            Failure::WrongSecret => "wrong_secret",
            Failure::Revoked => "revoked",
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(reject(state, parts, Failure::Missing, None).await);
        };
        let Some((id, secret)) = header
            .strip_prefix("Bearer ")
            .and_then(|t| keys::parse_token(t.trim()))
        else {
            return Err(reject(state, parts, Failure::Malformed, None).await);
        };
        let record = match state.keys().get(id) {
            Some(record) => record,
            None => match state.store().key(id).await {
                Ok(Some(record)) => record,
                Ok(None) => return Err(reject(state, parts, Failure::UnknownKey, None).await),
                Err(e) => {
                    tracing::error!(error = %e, "key lookup failed");
                    return Err(ApiError::store_unavailable());
                }
            },
        };
        if !keys::secret_matches(secret, &record) {
            return Err(reject(state, parts, Failure::WrongSecret, Some(&record)).await);
        }
        if record.revoked_at_ms.is_some() {
            state.keys().forget(&record.id);
            return Err(reject(state, parts, Failure::Revoked, Some(&record)).await);
        }
        state.keys().put(record.clone());
        Ok(Caller {
            key_id: record.id,
            tenant: record.tenant,
            roles: record.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            agent: record.agent,
            groups: record.groups,
        })
    }
}

/// Audits a failed authentication and builds the 401. The event names the key id only when
/// the key exists, and never the presented secret.
async fn reject(
    state: &AppState,
    parts: &Parts,
    failure: Failure,
    key: Option<&KeyRecord>,
) -> ApiError {
    let now = now_ms();
    let event = NewEvent {
        id: crate::ids::ulid(now),
        time_ms: now,
        tenant: key.map_or(SYSTEM_TENANT, |k| k.tenant.as_str()).to_owned(),
        kind: kind::AUTH_FAILURE.to_owned(),
        detail: json!({
            "reason": failure.as_str(),
            "key_id": key.map(|k| k.id.as_str()),
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
        }),
        ..NewEvent::default()
    };
    let appended = state
        .audit()
        .append(Append {
            event,
            decision: None,
        })
        .await;
    if appended.is_err() {
        tracing::error!("an authentication failure could not be audited");
    }
    tracing::info!(reason = failure.as_str(), "authentication failed");
    ApiError::unauthorized("a valid API key is required: Authorization: Bearer <key>")
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
        assert_eq!(c.agent_for(None).unwrap(), None);
        let bare = caller(&[Role::Controller], None);
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
