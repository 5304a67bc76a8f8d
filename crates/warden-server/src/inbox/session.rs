//! Signing in to the web inbox: the session cookie, sessions kept in the store, and the
//! CSRF tokens of every form.
//!
//! Key decisions:
//!
//! - **The cookie holds a session id, never the key.** The id is 32 random bytes; the store
//!   keeps only its SHA-256, so neither a copy of the table nor the audit log signs anyone
//!   in. Sessions live in the store, so any replica behind a load balancer answers for one.
//! - **A session acts as its key, checked on every request.** Its caller is the key's, read
//!   through the same cache as bearer keys, so a revoked key's sessions stop working
//!   within `--key-cache-ttl`; a session also ends at its idle timeout and its lifetime.
//! - **CSRF tokens are derived, not stored**: HMAC-SHA256 of a fixed label keyed with the
//!   session id. Only a holder of the cookie can compute one, a form's token is compared in
//!   constant time, and nothing more is written per session. The sign-in form, which has
//!   no session yet, pairs its token with a `SameSite=Strict` cookie of the same value.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::keys::Role;
use crate::state::{AppState, now_ms};
use axum::http::header::{COOKIE, HeaderValue};
use axum::http::{HeaderMap, header};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warden_store::SessionRecord;

/// The cookie holding the session id.
pub const SESSION_COOKIE: &str = "warden_session";
/// The cookie pairing the sign-in form's token, before there is a session.
pub const SIGN_IN_COOKIE: &str = "warden_sign_in";

/// How long a sign-in form stays valid.
const SIGN_IN_FORM_SECONDS: u64 = 3600;

/// A signed-in browser: who it acts as, and the token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    /// The approver key's caller, as the API would see it.
    pub caller: Caller,
    /// What every form of this session must send back as `csrf`.
    pub csrf: String,
    id_hash: String,
}

impl Session {
    /// Whether `presented` is this session's form token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        equal(&self.csrf, presented)
    }
}

/// Constant-time equality of two tokens (their lengths are not secret).
pub fn equal(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// 32 random bytes from the OS, URL-safe base64 without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keys a session by.
fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The form token of session `id`.
fn csrf_of(id: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(id.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken, and matches nothing.
        Err(_) => return String::new(),
    };
    mac.update(b"warden inbox csrf v1");
    hex::encode(mac.finalize().into_bytes())
}

/// The value of cookie `name` in the request, if it has one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// Whether cookies set in answer to this request get `Secure`: always with
/// `--inbox-secure-cookies`, else when the proxy in front says the request came over TLS.
/// A client can only add that header, which makes its own cookie stricter, never laxer.
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.limits().inbox_secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict`, for the whole site, `Secure` where
/// [`secure`] says; `max_age` 0 deletes the cookie.
pub fn set_cookie(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    value: &str,
    max_age: u64,
) -> (header::HeaderName, HeaderValue) {
    let secure = if secure(state, headers) {
        "; Secure"
    } else {
        ""
    };
    let text =
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    // Built from tokens of URL-safe characters and fixed text: always a valid value.
    let value = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
    (header::SET_COOKIE, value)
}

/// A fresh sign-in form token and the cookie that pairs it.
pub fn sign_in_form(
    state: &AppState,
    headers: &HeaderMap,
) -> (String, (header::HeaderName, HeaderValue)) {
    let token = random_token();
    let cookie = set_cookie(state, headers, SIGN_IN_COOKIE, &token, SIGN_IN_FORM_SECONDS);
    (token, cookie)
}

/// Whether a sign-in form's token is the one its cookie pairs it with.
pub fn sign_in_form_matches(headers: &HeaderMap, presented: &str) -> bool {
    cookie(headers, SIGN_IN_COOKIE)
        .is_some_and(|expected| !expected.is_empty() && equal(expected, presented))
}

fn store_error(e: warden_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "an inbox session could not be read or written");
    ApiError::store_unavailable()
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts a session for `caller` (an approver key just verified); returns the session and
/// the cookie value to set. Sessions that have ended are swept here, on every replica's
/// sign-ins, so their rows do not pile up.
pub async fn start(state: &AppState, caller: Caller) -> Result<(Session, String), ApiError> {
    let now = now_ms();
    let limits = state.limits();
    if let Err(e) = state
        .store()
        .prune_sessions(now, now.saturating_sub(millis(limits.inbox_idle_timeout)))
        .await
    {
        tracing::warn!(error = %e, "ended inbox sessions could not be swept; will retry");
    }
    let id = random_token();
    let record = SessionRecord {
        id_hash: id_hash(&id),
        key_id: caller.key_id.clone(),
        tenant: caller.tenant.clone(),
        created_at_ms: now,
        last_seen_ms: now,
        expires_at_ms: now.saturating_add(millis(limits.inbox_session_lifetime)),
    };
    state
        .store()
        .create_session(&record)
        .await
        .map_err(store_error)?;
    let session = Session {
        caller,
        csrf: csrf_of(&id),
        id_hash: record.id_hash,
    };
    Ok((session, id))
}

/// The session the request's cookie names, if it still holds (see [`acting`]). A session
/// found ended is deleted. Use is recorded at most every minute (or quarter of the idle
/// timeout).
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(id) = cookie(headers, SESSION_COOKIE).filter(|id| !id.is_empty()) else {
        return Ok(None);
    };
    let hash = id_hash(id);
    let Some(record) = state.store().session(&hash).await.map_err(store_error)? else {
        return Ok(None);
    };
    let Some(caller) = acting(state, &record).await? else {
        return Ok(None);
    };
    let now = now_ms();
    let idle = millis(state.limits().inbox_idle_timeout);
    if now.saturating_sub(record.last_seen_ms) >= (idle / 4).min(60_000) {
        state
            .store()
            .touch_session(&hash, now)
            .await
            .map_err(store_error)?;
    }
    Ok(Some(Session {
        caller,
        csrf: csrf_of(id),
        id_hash: hash,
    }))
}

/// Whether the session still holds, read again from the store (for a long-lived event
/// stream, which is not a request of its own).
pub async fn holds(state: &AppState, session: &Session) -> Result<bool, ApiError> {
    match state
        .store()
        .session(&session.id_hash)
        .await
        .map_err(store_error)?
    {
        Some(record) => Ok(acting(state, &record).await?.is_some()),
        None => Ok(false),
    }
}

/// Whom a stored session acts as: its key's caller, while the session is within its
/// lifetime and idle timeout and the key is an approver's, not revoked. Otherwise `None`,
/// and the session is deleted.
async fn acting(state: &AppState, record: &SessionRecord) -> Result<Option<Caller>, ApiError> {
    let now = now_ms();
    let idle = millis(state.limits().inbox_idle_timeout);
    let caller = if now >= record.expires_at_ms || now.saturating_sub(record.last_seen_ms) >= idle {
        None
    } else {
        crate::auth::key_caller(state, &record.key_id)
            .await?
            .filter(|c| c.tenant == record.tenant && c.roles.contains(&Role::Approver))
    };
    if caller.is_none() {
        end(state, &record.id_hash).await;
    }
    Ok(caller)
}

/// The first characters of the session's hash: enough to tie its sign-in and sign-out
/// events together, and nothing that finds it in the store's table by itself.
pub fn audit_id(session: &Session) -> &str {
    &session.id_hash[..16]
}

/// Deletes session `hash` (signed out, or found ended).
async fn end(state: &AppState, hash: &str) {
    if let Err(e) = state.store().delete_session(hash).await {
        tracing::warn!(error = %e, "an ended inbox session could not be deleted");
    }
}

/// Signs the session out: its row is deleted, so the cookie names nothing on any replica.
pub async fn sign_out(state: &AppState, session: &Session) -> Result<(), ApiError> {
    state
        .store()
        .delete_session(&session.id_hash)
        .await
        .map_err(store_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; warden_session_x=2; warden_session=abc"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "a"), Some("1"));
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(csrf_of(&a), csrf_of(&a));
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert_ne!(
            csrf_of(&a),
            id_hash(&a),
            "the token is not what the store keeps"
        );
        assert!(equal(&csrf_of(&a), &csrf_of(&a)));
        assert!(!equal(&csrf_of(&a), &csrf_of(&b)));
        assert!(!equal(&csrf_of(&a), ""));
    }
}
