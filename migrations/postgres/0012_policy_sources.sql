-- Warden schema 0012: a policy version's source lives in a table of its own.
--
-- Additive only: never edit this file once applied.

-- Why: publishing retires the previous version by changing its `status`, and SQLite
-- rewrites a whole row when its length changes: with the source in the row, publishing a
-- 10,000-rule policy rewrote the previous ~700 KB source as well, and every decision queued
-- behind that commit waited for ~2 MB of WAL to reach the disk. Here the source is written
-- once, when its version is published, and never again.
CREATE TABLE policy_sources (
    tenant    TEXT NOT NULL,
    revision  BIGINT NOT NULL,
    source    TEXT NOT NULL,
    PRIMARY KEY (tenant, revision)
);

INSERT INTO policy_sources (tenant, revision, source)
    SELECT tenant, revision, source FROM policy_versions;

-- Migrations never remove a column: `policy_versions.source` stays, empty from now on.
UPDATE policy_versions SET source = '';
