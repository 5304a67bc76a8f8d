-- Warden schema 0004 (PostgreSQL): budget and rate-limit counters.
--
-- Additive only: never edit this file once applied.

-- One row per counter: a budget's counter for a run, an agent or the tenant, or a rate
-- limit's counter for one fixed window. Read and written only by chain appends, under the
-- chain lock and in the transaction that records the decision, so a counter and the
-- decisions it allowed can never disagree, on any number of replicas.
--   kind            'budget' | 'rate_limit'
--   limit_id        the budget's or rate limit's id in the policy
--   agent, run_id   '' where the counter is not per agent or per run
--   counter         tool_calls | tokens | cost_usd (millionths of a dollar) | turns |
--                   duration (value = the run's first action, unix ms) | actions
--   window_start_ms the rate limit window's start; 0 for budgets
--   limit_value     the ceiling the last charge was checked against
--   expires_at_ms   after this the row counts as absent, and the sweep deletes it
CREATE TABLE budget_counters (
    tenant          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    limit_id        TEXT NOT NULL,
    agent           TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    counter         TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    value           BIGINT NOT NULL,
    limit_value     BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, limit_id, agent, run_id, counter, window_start_ms)
);

-- The sweep deletes by expiry; GET /v1/budgets reads by agent and by run.
CREATE INDEX budget_counters_expiry ON budget_counters (expires_at_ms);
CREATE INDEX budget_counters_agent ON budget_counters (tenant, agent);
CREATE INDEX budget_counters_run ON budget_counters (tenant, run_id);
