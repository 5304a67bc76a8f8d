-- Warden schema 0010: the web inbox's sign-in sessions (docs/INBOX.md).
--
-- Additive only: never edit this file once applied.

-- One row per signed-in browser, shared by every replica. `id_hash` is the SHA-256 (hex)
-- of the session id the browser's cookie holds, never the id itself, so a copy of this
-- table signs no one in; `key_id` is the approver key that signed in (its secret is not
-- here either). A session ends at `expires_at_ms` (its absolute lifetime), when
-- `last_seen_ms` is older than the server's idle timeout, when it signs out, or when its
-- key is revoked.
CREATE TABLE inbox_sessions (
    id_hash        TEXT PRIMARY KEY,
    key_id         TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

-- What the sweep of ended sessions reads.
CREATE INDEX inbox_sessions_expiry ON inbox_sessions (expires_at_ms);
CREATE INDEX inbox_sessions_seen ON inbox_sessions (last_seen_ms);
