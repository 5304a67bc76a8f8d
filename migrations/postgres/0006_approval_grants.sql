-- Warden schema 0006: what an approval grants once it is approved.
--
-- Additive only: never edit this file once applied.

-- JSON: the permit to sign (its binding, opaque to the store) and the budget and rate-limit
-- charges of the action, held from the `require_approval` decision until the approval is
-- granted; then the permit is signed and the counters charged in the granting transaction.
-- NULL for questions and for approvals made before this migration (they grant neither).
ALTER TABLE approvals ADD COLUMN on_grant TEXT;
