-- Warden schema 0013: policy sources are stored deflated.
--
-- Additive only: never edit this file once applied.

-- Why: a 10,000-rule source is ~700 KB of YAML, and the decisions queued behind its
-- publish on the one writer waited for all of it to reach the disk (2-6 ms on the
-- benchmark host). Deflated, it is a few dozen kilobytes. A row written from now on holds
-- its source in `deflated` (RFC 1951, raw deflate) and an empty `source`; rows written
-- before keep their text in `source` and a NULL `deflated`, and read as they are.
ALTER TABLE policy_sources ADD COLUMN deflated BYTEA;
