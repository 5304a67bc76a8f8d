-- Warden schema 0003 (PostgreSQL): how often each permit has been used.
--
-- Additive only: never edit this file once applied.

-- One row per permit that has been verified at least once, keyed like its decision.
-- `max_uses` and `expires_at_ms` are copied from the signed token at the first use. A use
-- is counted by one upsert that increments only while `uses < max_uses`, in the same
-- transaction as its `permit_verified` audit event; rows are pruned by `warden audit purge`.
CREATE TABLE permit_uses (
    tenant        TEXT NOT NULL,
    decision_id   TEXT NOT NULL,
    uses          BIGINT NOT NULL,
    max_uses      BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    first_used_ms BIGINT NOT NULL,
    last_used_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant, decision_id)
);

CREATE INDEX permit_uses_expires ON permit_uses (expires_at_ms);
