-- Warden schema 0009: agent-proposed policy changes and their reviews (DESIGN §7).
--
-- Additive only: never edit this file once applied.

-- One row per proposal. `body` is the proposal as the agent submitted it (JSON), `review`
-- the analysis it was decided on (JSON) and `review_token` the digest a human presents to
-- approve exactly that analysis, made against the live version whose content hash is
-- `live_hash`. Every change happens under the chain lock with its audit event; one that
-- applies the proposal is in the same transaction as the version it publishes.
CREATE TABLE proposals (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    agent             TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    status            TEXT NOT NULL,          -- auto_approved | needs_human | revise_requested | rejected | approved | superseded
    subject           TEXT NOT NULL,          -- what it is about, for superseding (may be empty)
    change_hash       TEXT NOT NULL,
    body              TEXT NOT NULL,
    review            TEXT NOT NULL,
    review_token      TEXT NOT NULL,
    live_hash         TEXT NOT NULL,
    applied_revision  INTEGER,                -- the policy revision it published, once applied
    applied_version   TEXT,
    decided_by        TEXT,                   -- an approver's user, or `review`
    reason            TEXT,
    superseded_by     TEXT,
    created_at_ms     INTEGER NOT NULL,
    decided_at_ms     INTEGER
);

CREATE INDEX proposals_tenant_status ON proposals (tenant, status, created_at_ms);
CREATE INDEX proposals_tenant_agent ON proposals (tenant, agent, created_at_ms);
-- The history check reads the tenant's earlier proposals of the same change.
CREATE INDEX proposals_change ON proposals (tenant, change_hash);
