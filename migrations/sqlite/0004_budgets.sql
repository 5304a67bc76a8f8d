-- Warden schema 0004 (SQLite): budget and rate-limit counters.
--
-- Additive only: never edit this file once applied.

-- One row per budget and subject (a run, an agent or the tenant), or per rate limit,
-- subject and fixed window. Read and written only by chain appends, under the chain lock
-- and in the transaction that records the decision, so a counter and the decisions it
-- allowed can never disagree, on any number of replicas.
--   kind            'budget' | 'rate_limit'
--   limit_id        the budget's or rate limit's id in the policy
--   agent, run_id   '' where the row is not per agent or per run
--   window_start_ms the rate limit window's start; 0 for budgets
--   counters        JSON object: counter name -> [value, limit]; names tool_calls, tokens,
--                   cost_usd (millionths of a dollar), turns, duration (value = the run's
--                   first allowed action, unix ms; limit in ms), actions; the limit is the
--                   one the last charge was checked against
--   expires_at_ms   after this the row counts as absent, and the sweep deletes it
-- All counters of a budget share a row: one lookup and one write per budget a decision
-- charges, not one per counter. The key starts with the agent and run, which is how
-- GET /v1/budgets reads it.
CREATE TABLE budget_counters (
    tenant          TEXT NOT NULL,
    agent           TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    limit_id        TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    counters        TEXT NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant, agent, run_id, kind, limit_id, window_start_ms)
) WITHOUT ROWID;

-- The sweep deletes by expiry; GET /v1/budgets?run_id= reads by run alone.
CREATE INDEX budget_counters_expiry ON budget_counters (expires_at_ms);
CREATE INDEX budget_counters_run ON budget_counters (tenant, run_id);
