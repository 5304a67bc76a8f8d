-- Warden schema 0002 (PostgreSQL): idempotency bound to the action, and a write probe.
--
-- Additive only: never edit this file once applied.

-- From this version on, `decisions.idempotency_key` holds the key as scoped by the server
-- (`<api key id>:<client id>`), and `action_digest` the SHA-256 of the canonical action it
-- decided, so a reused key with a different action is refused instead of replayed.
ALTER TABLE decisions ADD COLUMN action_digest TEXT;

-- One row, rewritten by readiness checks while audit commits fail: a real committed
-- write, so a full disk shows as not ready until writes succeed again.
CREATE TABLE write_probe (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    at_ms BIGINT NOT NULL
);
