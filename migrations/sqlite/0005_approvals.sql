-- Warden schema 0005 (SQLite): approvals and questions, approver users, the webhook outbox.
--
-- Additive only: never edit this file once applied.

-- One queue for approvals (created with their `require_approval` decision, in the same
-- transaction) and questions an agent asks a human. Votes are a JSON array on the row:
-- every change happens under the chain lock, together with its audit events, so the
-- quorum is counted from one consistent row.
CREATE TABLE approvals (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    kind              TEXT NOT NULL,          -- approval | question
    status            TEXT NOT NULL,          -- pending | approved | rejected | expired | answered
    decision_id       TEXT,
    action_digest     TEXT,
    policy_version    TEXT,
    rule_id           TEXT,
    group_names       TEXT NOT NULL,          -- JSON array of strings
    quorum            INTEGER NOT NULL,
    requested_by_key  TEXT NOT NULL,
    agent             TEXT,
    on_behalf_of      TEXT,
    action_type       TEXT,
    question          TEXT,
    options           TEXT NOT NULL,          -- JSON array of strings
    run_id            TEXT,
    votes             TEXT NOT NULL,          -- JSON array of votes
    reason            TEXT,
    answer            TEXT,
    created_at_ms     INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL,
    decided_at_ms     INTEGER
);

CREATE INDEX approvals_tenant_status ON approvals (tenant, status, created_at_ms);
CREATE INDEX approvals_pending_expiry ON approvals (expires_at_ms) WHERE status = 'pending';
CREATE INDEX approvals_decision ON approvals (decision_id) WHERE decision_id IS NOT NULL;

-- Approver keys name the person holding them; quorum counts distinct users.
ALTER TABLE api_keys ADD COLUMN user_name TEXT;

-- Webhook deliveries, written in the transaction of the event they announce and sent
-- afterwards with retries, so a failing receiver never blocks or changes a decision.
CREATE TABLE webhook_outbox (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,           -- the JSON event, exactly as signed and sent
    created_at_ms    INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    delivered_at_ms  INTEGER,
    last_error       TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms) WHERE delivered_at_ms IS NULL;
