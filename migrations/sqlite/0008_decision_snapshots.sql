-- Warden schema 0008: the input of each decision, kept for replay; shadow tallies.
--
-- Additive only: never edit this file once applied.

-- The fields of the action the tenant's rules read, with `audit.redact` applied, sealed
-- with ChaCha20-Poly1305 under the server's snapshot key (`base64(nonce ‖ ciphertext)`,
-- bound to the tenant and decision id). Written in the same statement as the decision;
-- cleared once older than the retention window. NULL when none was kept.
ALTER TABLE decisions ADD COLUMN snapshot TEXT;

-- Replays page through one tenant's kept snapshots in time order.
CREATE INDEX decisions_snapshots ON decisions (tenant, created_at_ms, id) WHERE snapshot IS NOT NULL;

-- What each replica's shadow evaluator counted (JSON), so that any replica answers with the
-- whole fleet's tally. Rows of ended shadows stay as history.
CREATE TABLE shadow_tallies (
    tenant         TEXT NOT NULL,
    revision       INTEGER NOT NULL,
    replica        TEXT NOT NULL,
    tally          TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant, revision, replica)
);
