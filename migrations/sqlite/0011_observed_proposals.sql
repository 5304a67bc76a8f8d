-- Warden schema 0011: suggestions Warden drafts itself from repeated friction
-- (docs/REVIEW.md, "Learning from friction").
--
-- Additive only: never edit this file once applied.

-- `source` says who proposed a change: `agent` (every row before this migration) or
-- `observed`. An observed suggestion carries its friction key (a JSON array: denied or
-- approved, agent, action type, target type, rule) and how many times that friction was
-- seen in the window when it was last counted; at most one per key is pending, written
-- under the chain lock, so replicas observing the same friction at once keep one row.
ALTER TABLE proposals ADD COLUMN source TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE proposals ADD COLUMN observed_key TEXT;
ALTER TABLE proposals ADD COLUMN hits INTEGER NOT NULL DEFAULT 0;

CREATE INDEX proposals_observed ON proposals (tenant, observed_key) WHERE observed_key IS NOT NULL;
