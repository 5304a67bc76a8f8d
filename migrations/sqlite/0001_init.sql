-- Warden schema 0001 (SQLite): the audit chain, recorded decisions and API keys.
--
-- Additive only: never edit this file once applied; later changes go in new files.
-- JSON-valued columns are TEXT holding the exact text the store wrote, because the
-- audit hash covers those values and must be recomputable byte for byte.

-- One append-only hash chain per database, shared by every tenant. `seq` is assigned
-- by the store inside the appending transaction: 1, 2, 3, ... with no gaps.
CREATE TABLE audit_events (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    time_ms             INTEGER NOT NULL,
    tenant              TEXT NOT NULL,
    kind                TEXT NOT NULL,
    agent               TEXT,
    on_behalf_of        TEXT,
    action_type         TEXT,
    target_type         TEXT,
    target_id           TEXT,
    mode                TEXT,
    confidence_initial  REAL,
    confidence_adjusted REAL,
    effect              TEXT,
    rule_ids            TEXT NOT NULL,  -- JSON array of strings
    reasons             TEXT NOT NULL,  -- JSON array of strings
    policy_version      TEXT,
    payload_digest      TEXT,
    context_digest      TEXT,
    kept                TEXT NOT NULL,  -- canonical JSON (sorted keys)
    decision_id         TEXT,
    detail              TEXT NOT NULL,  -- canonical JSON (sorted keys)
    prev_hash           TEXT NOT NULL,
    hash                TEXT NOT NULL
);

CREATE INDEX audit_events_tenant_seq ON audit_events (tenant, seq);
CREATE INDEX audit_events_kind_seq ON audit_events (kind, seq);
CREATE INDEX audit_events_time ON audit_events (time_ms);
CREATE INDEX audit_events_decision ON audit_events (decision_id) WHERE decision_id IS NOT NULL;

-- The decision as answered, for GET /v1/decisions/{id} and idempotent retries.
CREATE TABLE decisions (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    idempotency_key TEXT,
    body            TEXT NOT NULL,      -- JSON
    created_at_ms   INTEGER NOT NULL
);

CREATE UNIQUE INDEX decisions_idempotency ON decisions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX decisions_created ON decisions (created_at_ms);

-- API keys. Only a SHA-256 of the secret is stored; lookups are by public id.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    roles         TEXT NOT NULL,        -- JSON array of strings
    agent         TEXT,
    group_names   TEXT NOT NULL,        -- JSON array of strings
    label         TEXT,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
