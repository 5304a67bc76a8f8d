//! The web inbox's sign-in sessions (migration 0010): one row per signed-in browser, in the
//! database so that every replica behind a load balancer knows it.
//!
//! Key decision: the store keeps only what cannot sign anyone in. A session is looked up by
//! the SHA-256 of the id its cookie holds (the server hashes; the store never sees the id),
//! and it names the key that signed in, not the key's secret. When a session has ended —
//! its lifetime, its idle time, its key revoked — is the server's business: the store is
//! handed the times, as everywhere.

/// A session, new or as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// SHA-256 (lowercase hex) of the session id the browser holds.
    pub id_hash: String,
    /// The approver key that signed in.
    pub key_id: String,
    /// That key's tenant.
    pub tenant: String,
    /// When it began, unix milliseconds.
    pub created_at_ms: i64,
    /// When it was last used (recorded at most every so often), unix milliseconds.
    pub last_seen_ms: i64,
    /// When it ends however it is used, unix milliseconds.
    pub expires_at_ms: i64,
}

/// Every column of a session row, in [`SessionRecord`] order.
pub(crate) const COLUMNS: &str =
    "id_hash, key_id, tenant, created_at_ms, last_seen_ms, expires_at_ms";

pub(crate) const INSERT: &str = "INSERT INTO inbox_sessions \
    (id_hash, key_id, tenant, created_at_ms, last_seen_ms, expires_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6)";

pub(crate) const TOUCH: &str =
    "UPDATE inbox_sessions SET last_seen_ms = $2 WHERE id_hash = $1 AND last_seen_ms < $2";

pub(crate) const DELETE: &str = "DELETE FROM inbox_sessions WHERE id_hash = $1";

pub(crate) const PRUNE: &str =
    "DELETE FROM inbox_sessions WHERE expires_at_ms <= $1 OR last_seen_ms < $2";
