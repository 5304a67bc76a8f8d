-- Warden schema 0007: policy versions live in the store, and every event names the
-- content hash of the policy that decided.
--
-- Additive only: never edit this file once applied.

-- Each tenant's policy as a sequence of versions. `revision` counts 1, 2, 3, … per tenant
-- (a rollback publishes an old version's source again under a new revision, so history
-- only grows); `version` is the semver inside the document and `hash` the SHA-256 of its
-- source. Every change happens under the chain lock with its audit event.
CREATE TABLE policy_versions (
    tenant         TEXT NOT NULL,
    revision       BIGINT NOT NULL,
    version        TEXT NOT NULL,
    hash           TEXT NOT NULL,
    source         TEXT NOT NULL,
    parent         BIGINT,                -- the revision active when this one was published
    author         TEXT NOT NULL,           -- key id, or what published it (`file`, `sighup`)
    comment        TEXT,
    created_at_ms  BIGINT NOT NULL,
    status         TEXT NOT NULL,           -- active | superseded | shadow | failed
    PRIMARY KEY (tenant, revision)
);

-- At most one active version per tenant: replicas cannot both activate one.
CREATE UNIQUE INDEX policy_versions_active ON policy_versions (tenant) WHERE status = 'active';

-- The content hash of the policy version that decided (NULL before this migration, and on
-- events no policy decided). Hashed into the chain only when set, so older links verify.
ALTER TABLE audit_events ADD COLUMN policy_hash TEXT;
