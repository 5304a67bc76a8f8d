//! The store itself, written once over sqlx for both backends; [`Dialect`] holds what differs.
//!
//! Key decision: one generic implementation instead of two copies. The SQL text is shared
//! (`$N` placeholders work on both: sqlx maps them for SQLite), and the few statements that
//! must differ (how a write transaction starts, how chain appends are serialized, how a
//! consistent snapshot is read) are constants of the backend's [`Dialect`].

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::append::{self, Cell, Head, Link, Plan};
use crate::approval::{
    ApprovalChanged, ApprovalDecider, ApprovalFilter, ApprovalRecord, ApprovalSignal, OnGrant,
    OutboxEntry, OutboxMessage, Vote, status,
};
use crate::chain::{self, ChainWalk, UnreadableRow};
use crate::error::{StoreError, is_unique_violation};
use crate::migrations::migrations;
use crate::model::{
    Append, Appended, CounterFilter, CounterKey, CounterRow, Event, EventFilter, KeyRecord,
    NewDecision, NewEvent, NewKey, PermitConsumed, PermitUse, PurgeReport, SYSTEM_TENANT,
    StoredDecision, StoredSnapshot, VerifyReport, kind,
};
use crate::policy_version::{
    self, PolicyHead, PolicyPublish, PolicySignal, PolicyVersionInfo, Published, StoredPolicy,
    policy_status,
};
use crate::proposal::{
    self, ProposalFilter, ProposalRecord, ProposalWrite, ProposalWritten, proposal_status,
};
use crate::session::{self, SessionRecord};
use crate::{Backend, Store};

/// What differs between the backends, as SQL text.
pub(crate) trait Dialect: Database {
    /// Which backend this is.
    const BACKEND: Backend;
    /// Starts a transaction that will write.
    const BEGIN_WRITE: &'static str;
    /// Run first in a write transaction that touches the chain, so that appends from every
    /// connection and every replica take turns; `None` when `BEGIN_WRITE` already does.
    const LOCK_CHAIN: Option<&'static str>;
    /// Run first in a migration transaction, so that replicas migrating at once take turns.
    const LOCK_MIGRATIONS: Option<&'static str>;
    /// Starts a read-only transaction that sees one consistent snapshot.
    const BEGIN_SNAPSHOT: &'static str;
    /// Returns one row with `n`, the number of `warden_migrations` tables in scope (0 or 1).
    const MIGRATIONS_TABLE_EXISTS: &'static str;
    /// An SQL expression for the database's clock in unix milliseconds. Used only for
    /// `warden_migrations.applied_at_ms`, which is bookkeeping, not audit data.
    const NOW_MS: &'static str;
    /// One row with the text column `setting`: the commit durability setting of this
    /// connection, as `name=value`.
    const DURABILITY: &'static str;

    /// Sends the id bound as `$1` to every replica's approval listener when the
    /// transaction commits; `None` where only this process can wait (SQLite).
    const NOTIFY_APPROVAL: Option<&'static str>;
    /// Sends the tenant bound as `$1` to every replica's policy listener when the
    /// transaction commits; `None` where only this process hears it (SQLite).
    const NOTIFY_POLICY: Option<&'static str>;

    /// Writes the placeholder of the `n`th (1-based) bound value into `sql`.
    fn placeholder(sql: &mut String, n: usize);

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// How many rows verification reads (and hashes) at a time.
const VERIFY_PAGE: i64 = 1000;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS warden_migrations (
    name TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
)";

/// `seq, id, time_ms, …`: every column of an event row, for selects and inserts.
fn event_columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| append::EVENT_COLUMNS.join(", "))
}

/// The readiness probe's write (see `Store::probe_write`).
pub(crate) const WRITE_PROBE: &str = "INSERT INTO write_probe (id, at_ms) VALUES (1, $1) \
    ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms";

const POLICY_INFO_COLUMNS: &str = "tenant, revision, version, hash, parent, author, comment, \
    created_at_ms, status";

const KEY_COLUMNS: &str = "id, secret_hash, tenant, roles, agent, group_names, label, \
    created_at_ms, revoked_at_ms, user_name";

/// Approval ids (ULIDs, 26 characters) in one notification: PostgreSQL's payloads are at
/// most 8000 bytes.
const OPENED_PER_NOTIFY: usize = 256;

/// How many signals a slow waiter may fall behind before it is told to resynchronize.
pub(crate) const SIGNAL_CAPACITY: usize = 4096;

/// `id, tenant, kind, …`: every column of an approval row.
fn approval_columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| append::APPROVAL_COLUMNS.join(", "))
}

/// A proposal change staged inside a transaction: what it did, the events to chain with it,
/// and the proposals whose waiters to wake once it commits.
struct StagedProposal {
    written: ProposalWritten,
    events: Vec<NewEvent>,
    signal: Vec<String>,
}

/// A value bound to a dynamically built query.
enum Arg {
    Text(String),
    Int(i64),
}

/// A tenant's rows newest first, one page: `select` (… FROM table) narrowed to `tenant`, to
/// each equality filter that is set, and to rows before the `(created_at_ms, id)` cursor;
/// `limit` 0 means 100, and at most 1000 are read. The approvals and proposals lists share
/// it. Returns the statement and its arguments in order.
fn newest_first(
    select: String,
    tenant: &str,
    equals: &[(&str, &Option<String>)],
    before: &Option<(i64, String)>,
    limit: u32,
) -> (String, Vec<Arg>) {
    let mut sql = select;
    sql.push_str(" WHERE tenant = $1");
    let mut args = vec![Arg::Text(tenant.to_owned())];
    for (column, value) in equals {
        if let Some(value) = value {
            args.push(Arg::Text(value.clone()));
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    if let Some((at, id)) = before {
        args.push(Arg::Int(*at));
        args.push(Arg::Text(id.clone()));
        let (a, i) = (args.len() - 1, args.len());
        sql.push_str(&format!(
            " AND (created_at_ms < ${a} OR (created_at_ms = ${a} AND id < ${i}))"
        ));
    }
    let limit = match limit {
        0 => 100,
        n => n.min(1000),
    };
    sql.push_str(&format!(
        " ORDER BY created_at_ms DESC, id DESC LIMIT {limit}"
    ));
    (sql, args)
}

/// The store over one sqlx pool.
#[derive(Debug)]
pub(crate) struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    /// Approvals decided through this store, for waiters in this process.
    signals: tokio::sync::broadcast::Sender<ApprovalSignal>,
    /// Policies published through this store, for this process.
    policy_signals: tokio::sync::broadcast::Sender<PolicySignal>,
    /// Where chain appends (but a SQLite file's, see `sqlite_appender`), purges and
    /// migrations run. On SQLite a pool of one connection: writers take turns anyway, and
    /// one connection keeps its page cache warm.
    writer: Pool<DB>,
}

// Both impl blocks below carry the same bounds: what the generic code needs from a backend.
// Both `Sqlite` and `Postgres` meet them.
impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<f64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    /// `Store::publish_policy` with the publish already checked (`policy_version::check`) and
    /// its source deflated off the runtime by the caller, which does both before the write.
    pub(crate) async fn publish_deflated(
        &self,
        publish: PolicyPublish,
        deflated: Vec<u8>,
    ) -> Result<Published, StoreError> {
        let PolicyPublish {
            policy,
            previous_becomes,
            event,
            proposal,
        } = publish;
        let info = &policy.info;
        // Under the chain lock: publishes from every replica take turns with each other and
        // with decisions, so the event lands in the chain exactly where the switch happened.
        let mut tx = self.begin_chain_write().await?;
        let (latest, active) = Self::policy_position(&mut tx, &info.tenant).await?;
        if let Some(conflict) = policy_version::conflict(info, latest, active) {
            tx.rollback().await?;
            return Ok(conflict);
        }
        // The proposal it applies changes in this transaction, or nothing does.
        let mut events = Vec::with_capacity(2);
        let mut signal = Vec::new();
        if let Some(write) = proposal {
            let staged =
                Self::stage_proposal(&mut tx, write, Some((info.revision, &info.version))).await?;
            if !matches!(staged.written, ProposalWritten::Written(_)) {
                tx.rollback().await?;
                return Ok(Published::ProposalStale(Box::new(staged.written)));
            }
            events = staged.events;
            signal = staged.signal;
        }
        events.push(event);
        sqlx::query(policy_version::RETIRE)
            .bind(previous_becomes)
            .bind(info.tenant.as_str())
            .bind(info.status.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(policy_version::INSERT)
            .bind(info.tenant.as_str())
            .bind(info.revision)
            .bind(info.version.as_str())
            .bind(info.hash.as_str())
            .bind(info.parent)
            .bind(info.author.as_str())
            .bind(info.comment.as_deref())
            .bind(info.created_at_ms)
            .bind(info.status.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(policy_version::INSERT_SOURCE)
            .bind(info.tenant.as_str())
            .bind(info.revision)
            .bind(deflated)
            .execute(&mut *tx)
            .await?;
        Self::chain_events(&mut tx, events).await?;
        Self::notify_proposals(&mut tx, &signal).await?;
        if let Some(notify) = DB::NOTIFY_POLICY {
            sqlx::query(notify)
                .bind(info.tenant.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let _ = self
            .policy_signals
            .send(PolicySignal::Changed(info.tenant.clone()));
        for id in signal {
            let _ = self.signals.send(ApprovalSignal::Changed(id));
        }
        Ok(Published::Written)
    }

    /// Wraps a connected pool.
    pub(crate) fn shared(pool: Pool<DB>) -> Arc<dyn Store> {
        Arc::new(Self::new(pool.clone(), pool))
    }

    pub(crate) fn new(pool: Pool<DB>, writer: Pool<DB>) -> Self {
        Self {
            pool,
            writer,
            signals: tokio::sync::broadcast::channel(SIGNAL_CAPACITY).0,
            policy_signals: tokio::sync::broadcast::channel(SIGNAL_CAPACITY).0,
        }
    }

    /// Wraps a reading pool and a writing pool; also returns where the store signals
    /// approvals, for appends made elsewhere (a SQLite file's appender thread).
    pub(crate) fn shared_with_signals(
        pool: Pool<DB>,
        writer: Pool<DB>,
    ) -> (
        Arc<dyn Store>,
        tokio::sync::broadcast::Sender<ApprovalSignal>,
    ) {
        let store = Self::new(pool, writer);
        let signals = store.signals.clone();
        (Arc::new(store), signals)
    }

    /// Runs a read built with `Arg`s (the audit query and the newest-first lists).
    async fn fetch_with(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<DB::Row>, StoreError> {
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match arg {
                Arg::Text(value) => query.bind(value),
                Arg::Int(value) => query.bind(value),
            };
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// Opens a write transaction that holds the chain lock.
    async fn begin_chain_write(&self) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
        let mut tx = self.writer.begin_with(DB::BEGIN_WRITE).await?;
        if let Some(lock) = DB::LOCK_CHAIN {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// The last event, or the genesis position when the chain is empty.
    async fn head(conn: &mut DB::Connection) -> Result<Head, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(row) => Head {
                seq: row.try_get("seq")?,
                hash: row.try_get("hash")?,
            },
            None => Head::genesis(),
        })
    }

    /// Writes `event` at `seq` after `prev_hash`, returning its hash.
    async fn find_decision(
        conn: &mut DB::Connection,
        tenant: &str,
        by: DecisionLookup,
        value: &str,
    ) -> Result<Option<StoredDecision>, StoreError> {
        let row = sqlx::query(by.sql())
            .bind(tenant.to_owned())
            .bind(value.to_owned())
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| Self::decision_from_row(&row)).transpose()
    }

    /// Inserts rows of the chain with one statement.
    async fn insert_events(conn: &mut DB::Connection, links: &[Link]) -> Result<(), StoreError> {
        let prefix = format!("INSERT INTO audit_events ({}) VALUES ", event_columns());
        let sql = multi_row_insert::<DB>(&prefix, append::EVENT_COLUMNS.len(), links.len());
        let encoded = links
            .iter()
            .map(|link| append::encode(&link.event))
            .collect::<Result<Vec<_>, _>>()?;
        let mut query = sqlx::query(&sql);
        for (link, json) in links.iter().zip(&encoded) {
            // Borrowed, not cloned: the statement lives only as long as `links`.
            for cell in append::event_row(link, json) {
                query = bind_cell(query, cell);
            }
        }
        query.execute(&mut *conn).await?;
        Ok(())
    }

    /// Inserts decisions with one statement.
    async fn insert_decisions(
        conn: &mut DB::Connection,
        rows: &[NewDecision],
    ) -> Result<(), StoreError> {
        let sql = multi_row_insert::<DB>(
            "INSERT INTO decisions \
             (id, tenant, idempotency_key, body, created_at_ms, action_digest, snapshot) VALUES ",
            7,
            rows.len(),
        );
        let mut query = sqlx::query(&sql);
        for d in rows {
            query = query
                .bind(d.id.as_str())
                .bind(d.tenant.as_str())
                .bind(d.idempotency_key.as_deref())
                .bind(d.body.as_str())
                .bind(d.created_at_ms)
                .bind(d.action_digest.as_deref())
                .bind(d.snapshot.as_deref());
        }
        query.execute(&mut *conn).await?;
        Ok(())
    }

    /// After a failed multi-row insert (its transaction already dropped): a unique
    /// violation becomes `named(id)` for the first of `ids` that `select` (one `$1` id
    /// parameter) finds stored; any other error, or a collision it cannot name, stays as is.
    async fn name_collision<'a>(
        &self,
        error: StoreError,
        select: &str,
        ids: impl Iterator<Item = &'a str>,
        named: fn(String) -> StoreError,
    ) -> StoreError {
        if !is_unique(&error) {
            return error;
        }
        for id in ids {
            let found = sqlx::query(select)
                .bind(id)
                .fetch_optional(&self.pool)
                .await;
            if let Ok(Some(_)) = found {
                return named(id.to_owned());
            }
        }
        error
    }

    /// The stored decisions holding any idempotency key used in `batch`.
    async fn key_holders(
        conn: &mut DB::Connection,
        batch: &[Append],
    ) -> Result<Vec<StoredDecision>, StoreError> {
        let keyed: Vec<(&str, &str)> = append::keys(batch).collect();
        let mut holders = Vec::new();
        for chunk in keyed.chunks(INSERT_CHUNK) {
            let mut sql = "SELECT id, tenant, idempotency_key, body, created_at_ms, \
                           action_digest FROM decisions WHERE "
                .to_owned();
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str("(tenant = ");
                DB::placeholder(&mut sql, 2 * i + 1);
                sql.push_str(" AND idempotency_key = ");
                DB::placeholder(&mut sql, 2 * i + 2);
                sql.push(')');
            }
            let mut query = sqlx::query(&sql);
            for (tenant, key) in chunk {
                query = query.bind((*tenant).to_owned()).bind((*key).to_owned());
            }
            for row in query.fetch_all(&mut *conn).await? {
                holders.push(Self::decision_from_row(&row)?);
            }
        }
        Ok(holders)
    }

    /// The stored counter rows among `keys` (expired ones too: the plan treats those as
    /// absent).
    async fn counter_rows(
        conn: &mut DB::Connection,
        keys: &[CounterKey],
    ) -> Result<Vec<CounterRow>, StoreError> {
        let mut rows = Vec::new();
        // Six parameters a key: chunks stay far below every backend's parameter limit.
        for chunk in keys.chunks(64) {
            let mut sql = format!(
                "SELECT {} FROM budget_counters WHERE ",
                append::COUNTER_COLUMNS
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                for (j, column) in COUNTER_KEY_COLUMNS.iter().enumerate() {
                    sql.push_str(if j == 0 { "(" } else { " AND " });
                    sql.push_str(column);
                    sql.push_str(" = ");
                    DB::placeholder(&mut sql, COUNTER_KEY_COLUMNS.len() * i + j + 1);
                }
                sql.push(')');
            }
            let mut query = sqlx::query(&sql);
            for k in chunk {
                query = query
                    .bind(k.tenant.clone())
                    .bind(k.agent.clone())
                    .bind(k.run_id.clone())
                    .bind(k.kind.clone())
                    .bind(k.limit_id.clone())
                    .bind(k.window_start_ms);
            }
            for row in query.fetch_all(&mut *conn).await? {
                rows.push(Self::counter_from_row(&row)?);
            }
        }
        Ok(rows)
    }

    /// Stores the counter rows a plan decided.
    async fn upsert_counters(
        conn: &mut DB::Connection,
        rows: &[CounterRow],
    ) -> Result<(), StoreError> {
        for c in rows {
            let k = &c.key;
            sqlx::query(append::UPSERT_COUNTER)
                .bind(k.tenant.as_str())
                .bind(k.agent.as_str())
                .bind(k.run_id.as_str())
                .bind(k.kind.as_str())
                .bind(k.limit_id.as_str())
                .bind(k.window_start_ms)
                .bind(append::encode_counters(c)?)
                .bind(c.updated_at_ms)
                .bind(c.expires_at_ms)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    fn counter_from_row(row: &DB::Row) -> Result<CounterRow, StoreError> {
        let key = CounterKey {
            tenant: row.try_get("tenant")?,
            agent: row.try_get("agent")?,
            run_id: row.try_get("run_id")?,
            kind: row.try_get("kind")?,
            limit_id: row.try_get("limit_id")?,
            window_start_ms: row.try_get("window_start_ms")?,
        };
        let text: String = row.try_get("counters")?;
        Ok(CounterRow {
            values: append::decode_counters(&key, &text)?,
            key,
            updated_at_ms: row.try_get("updated_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
        })
    }

    fn decision_from_row(row: &DB::Row) -> Result<StoredDecision, StoreError> {
        let id: String = row.try_get("id")?;
        let body: String = row.try_get("body")?;
        let body = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
            what: "decision",
            id: id.clone(),
            detail: format!("body: {e}"),
        })?;
        Ok(StoredDecision {
            tenant: row.try_get("tenant")?,
            idempotency_key: row.try_get("idempotency_key")?,
            action_digest: row.try_get("action_digest")?,
            body,
            created_at_ms: row.try_get("created_at_ms")?,
            id,
        })
    }

    /// Decodes an audit row. The outer error is a database failure; the inner one a row
    /// whose content is not what the store writes, which verification reports as a
    /// broken link rather than failing.
    fn event_from_row(row: &DB::Row) -> Result<Result<Event, UnreadableRow>, StoreError> {
        let seq: i64 = row.try_get("seq")?;
        let id: String = row.try_get("id")?;
        Ok(Self::event_fields(row, &id)
            .map(|(prev_hash, hash, event)| Event {
                seq,
                prev_hash,
                hash,
                event,
            })
            .map_err(|detail| UnreadableRow { seq, id, detail }))
    }

    fn event_fields(row: &DB::Row, id: &str) -> Result<(String, String, NewEvent), String> {
        let event = NewEvent {
            id: id.to_owned(),
            time_ms: column(row, "time_ms")?,
            tenant: column(row, "tenant")?,
            kind: column(row, "kind")?,
            agent: column(row, "agent")?,
            on_behalf_of: column(row, "on_behalf_of")?,
            action_type: column(row, "action_type")?,
            target_type: column(row, "target_type")?,
            target_id: column(row, "target_id")?,
            mode: column(row, "mode")?,
            confidence_initial: column(row, "confidence_initial")?,
            confidence_adjusted: column(row, "confidence_adjusted")?,
            effect: column(row, "effect")?,
            rule_ids: json_column(row, "rule_ids")?,
            reasons: json_column(row, "reasons")?,
            policy_version: column(row, "policy_version")?,
            policy_hash: column(row, "policy_hash")?,
            payload_digest: column(row, "payload_digest")?,
            context_digest: column(row, "context_digest")?,
            kept: json_column(row, "kept")?,
            decision_id: column(row, "decision_id")?,
            detail: json_column(row, "detail")?,
        };
        Ok((column(row, "prev_hash")?, column(row, "hash")?, event))
    }

    fn key_from_row(row: &DB::Row) -> Result<KeyRecord, StoreError> {
        let id: String = row.try_get("id")?;
        let list = |name: &'static str| -> Result<Vec<String>, StoreError> {
            let text: String = row.try_get(name)?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "api key",
                id: id.clone(),
                detail: format!("{name}: {e}"),
            })
        };
        Ok(KeyRecord {
            secret_hash: row.try_get("secret_hash")?,
            tenant: row.try_get("tenant")?,
            roles: list("roles")?,
            agent: row.try_get("agent")?,
            groups: list("group_names")?,
            label: row.try_get("label")?,
            created_at_ms: row.try_get("created_at_ms")?,
            revoked_at_ms: row.try_get("revoked_at_ms")?,
            user: row.try_get("user_name")?,
            id,
        })
    }

    fn approval_from_row(row: &DB::Row) -> Result<ApprovalRecord, StoreError> {
        let id: String = row.try_get("id")?;
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "approval",
            id: id.clone(),
            detail,
        };
        let json = |name: &'static str| -> Result<String, StoreError> { Ok(row.try_get(name)?) };
        let groups: Vec<String> = serde_json::from_str(&json("group_names")?)
            .map_err(|e| corrupt(format!("group_names: {e}")))?;
        let options: Vec<String> = serde_json::from_str(&json("options")?)
            .map_err(|e| corrupt(format!("options: {e}")))?;
        let votes: Vec<Vote> =
            serde_json::from_str(&json("votes")?).map_err(|e| corrupt(format!("votes: {e}")))?;
        let on_grant: Option<String> = row.try_get("on_grant")?;
        let on_grant: OnGrant = match on_grant {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| corrupt(format!("on_grant: {e}")))?
            }
            None => OnGrant::default(),
        };
        let quorum: i64 = row.try_get("quorum")?;
        Ok(ApprovalRecord {
            tenant: row.try_get("tenant")?,
            kind: row.try_get("kind")?,
            status: row.try_get("status")?,
            decision_id: row.try_get("decision_id")?,
            action_digest: row.try_get("action_digest")?,
            policy_version: row.try_get("policy_version")?,
            rule_id: row.try_get("rule_id")?,
            groups,
            quorum: u32::try_from(quorum).map_err(|e| corrupt(format!("quorum: {e}")))?,
            requested_by_key: row.try_get("requested_by_key")?,
            agent: row.try_get("agent")?,
            on_behalf_of: row.try_get("on_behalf_of")?,
            action_type: row.try_get("action_type")?,
            question: row.try_get("question")?,
            options,
            run_id: row.try_get("run_id")?,
            votes,
            reason: row.try_get("reason")?,
            answer: row.try_get("answer")?,
            created_at_ms: row.try_get("created_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            decided_at_ms: row.try_get("decided_at_ms")?,
            on_grant,
            id,
        })
    }

    /// Inserts new approvals and outbox rows of a batch or an update.
    async fn insert_approvals(
        conn: &mut DB::Connection,
        approvals: &[ApprovalRecord],
        outbox: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        for a in approvals {
            let json = append::encode_approval(a)?;
            let mut query = sqlx::query(append::insert_approval_sql());
            for cell in append::approval_row(a, &json) {
                query = bind_cell(query, cell);
            }
            query.execute(&mut *conn).await?;
        }
        for m in outbox {
            sqlx::query(append::INSERT_OUTBOX)
                .bind(m.id.as_str())
                .bind(m.tenant.as_str())
                .bind(m.url.as_str())
                .bind(m.body.as_str())
                .bind(m.created_at_ms)
                .bind(m.created_at_ms)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Chains `events` after the head, inside `conn`'s transaction (which holds the chain
    /// lock).
    async fn chain_events(
        conn: &mut DB::Connection,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut head = Self::head(&mut *conn).await?;
        let mut links = Vec::with_capacity(events.len());
        for event in events {
            let seq = head.seq + 1;
            let hash = chain::event_hash(seq, &head.hash, &event)?;
            links.push(Link {
                seq,
                prev_hash: std::mem::replace(&mut head.hash, hash.clone()),
                hash,
                event,
            });
            head.seq = seq;
        }
        Self::insert_events(conn, &links).await
    }

    /// `columns` of the tenant's version at `revision`, or of its active one.
    async fn policy_row(
        &self,
        columns: &str,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<DB::Row>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM policy_versions WHERE tenant = $1 AND {}",
            if revision.is_some() {
                "revision = $2"
            } else {
                "status = $2"
            }
        );
        let query = sqlx::query(&sql).bind(tenant);
        let query = match revision {
            Some(revision) => query.bind(revision),
            None => query.bind(policy_status::ACTIVE),
        };
        Ok(query.fetch_optional(&self.pool).await?)
    }

    fn policy_info_from_row(row: &DB::Row) -> Result<PolicyVersionInfo, StoreError> {
        Ok(PolicyVersionInfo {
            tenant: row.try_get("tenant")?,
            revision: row.try_get("revision")?,
            version: row.try_get("version")?,
            hash: row.try_get("hash")?,
            parent: row.try_get("parent")?,
            author: row.try_get("author")?,
            comment: row.try_get("comment")?,
            created_at_ms: row.try_get("created_at_ms")?,
            status: row.try_get("status")?,
        })
    }

    /// The tenant's newest revision and its active one, inside `conn`'s transaction.
    async fn policy_position(
        conn: &mut DB::Connection,
        tenant: &str,
    ) -> Result<(Option<i64>, Option<i64>), StoreError> {
        let row = sqlx::query(policy_version::POSITION)
            .bind(tenant)
            .bind(tenant)
            .bind(policy_status::ACTIVE)
            .fetch_one(&mut *conn)
            .await?;
        Ok((row.try_get("latest")?, row.try_get("active")?))
    }

    /// The approval row, read inside `conn`'s transaction.
    async fn find_approval(
        conn: &mut DB::Connection,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approvals WHERE tenant = $1 AND id = $2",
            approval_columns()
        );
        let row = sqlx::query(&sql)
            .bind(tenant.to_owned())
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| Self::approval_from_row(&row)).transpose()
    }

    fn proposal_from_row(row: &DB::Row) -> Result<ProposalRecord, StoreError> {
        Ok(ProposalRecord {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            agent: row.try_get("agent")?,
            key_id: row.try_get("key_id")?,
            status: row.try_get("status")?,
            subject: row.try_get("subject")?,
            change_hash: row.try_get("change_hash")?,
            body: row.try_get("body")?,
            review: row.try_get("review")?,
            review_token: row.try_get("review_token")?,
            live_hash: row.try_get("live_hash")?,
            applied_revision: row.try_get("applied_revision")?,
            applied_version: row.try_get("applied_version")?,
            decided_by: row.try_get("decided_by")?,
            reason: row.try_get("reason")?,
            superseded_by: row.try_get("superseded_by")?,
            created_at_ms: row.try_get("created_at_ms")?,
            decided_at_ms: row.try_get("decided_at_ms")?,
            source: row.try_get("source")?,
            observed_key: row.try_get("observed_key")?,
            hits: row.try_get("hits")?,
        })
    }

    /// The proposal row, read inside `conn` (a transaction or not).
    async fn find_proposal(
        conn: &mut DB::Connection,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ProposalRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM proposals WHERE tenant = $1 AND id = $2",
            proposal::columns()
        );
        let row = sqlx::query(&sql)
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| Self::proposal_from_row(&row)).transpose()
    }

    /// Writes a proposal change inside `conn`'s transaction (which holds the chain lock) and
    /// returns what to chain and whom to signal; anything but `Written` wrote nothing that
    /// the caller may keep (it rolls back). `applied` is the version a publish makes.
    async fn stage_proposal(
        conn: &mut DB::Connection,
        write: ProposalWrite,
        applied: Option<(i64, &str)>,
    ) -> Result<StagedProposal, StoreError> {
        let stale = |written| StagedProposal {
            written,
            events: Vec::new(),
            signal: Vec::new(),
        };
        match write {
            ProposalWrite::Insert {
                mut record,
                mut events,
                supersede,
                limit,
            } => {
                if let Some(limit) = limit {
                    let n: i64 = sqlx::query(proposal::COUNT_SINCE)
                        .bind(record.tenant.as_str())
                        .bind(record.agent.as_str())
                        .bind(limit.since_ms)
                        .fetch_one(&mut *conn)
                        .await?
                        .try_get("n")?;
                    if u64::try_from(n).unwrap_or(0) >= limit.max {
                        return Ok(stale(ProposalWritten::OverLimit));
                    }
                }
                if let Some((revision, version)) = applied {
                    record.applied_revision = Some(revision);
                    record.applied_version = Some(version.to_owned());
                }
                let mut signal = vec![record.id.clone()];
                if record.subject.is_empty() {
                    if !supersede.is_empty() {
                        return Ok(stale(ProposalWritten::Stale(None)));
                    }
                } else {
                    let rows = sqlx::query(proposal::PENDING_OF_SUBJECT)
                        .bind(record.tenant.as_str())
                        .bind(record.agent.as_str())
                        .bind(record.subject.as_str())
                        .bind(proposal_status::NEEDS_HUMAN)
                        .bind(proposal_status::REVISE_REQUESTED)
                        .fetch_all(&mut *conn)
                        .await?;
                    let mut found = rows
                        .iter()
                        .map(|row| row.try_get::<String, _>("id"))
                        .collect::<Result<Vec<_>, _>>()?;
                    found.sort_unstable();
                    if !proposal::supersedes_exactly(&found, &supersede) {
                        return Ok(stale(ProposalWritten::Stale(None)));
                    }
                    for old in supersede {
                        let changed = sqlx::query(proposal::SUPERSEDE)
                            .bind(record.id.as_str())
                            .bind(record.created_at_ms)
                            .bind(record.tenant.as_str())
                            .bind(old.id.as_str())
                            .execute(&mut *conn)
                            .await?;
                        if DB::rows_affected(&changed) == 1 {
                            events.push(old.event);
                            signal.push(old.id);
                        }
                    }
                }
                let mut query = sqlx::query(proposal::insert_sql());
                for cell in proposal::row(&record) {
                    query = bind_cell(query, cell);
                }
                query.execute(&mut *conn).await?;
                Ok(StagedProposal {
                    written: ProposalWritten::Written(record),
                    events,
                    signal,
                })
            }
            ProposalWrite::Update {
                mut record,
                expected,
                events,
            } => {
                if let Some((revision, version)) = applied {
                    record.applied_revision = Some(revision);
                    record.applied_version = Some(version.to_owned());
                }
                let sql = proposal::update_sql(expected.len());
                let mut query = sqlx::query(&sql)
                    .bind(record.status.as_str())
                    .bind(record.review.as_str())
                    .bind(record.review_token.as_str())
                    .bind(record.live_hash.as_str())
                    .bind(record.applied_revision)
                    .bind(record.applied_version.as_deref())
                    .bind(record.decided_by.as_deref())
                    .bind(record.reason.as_deref())
                    .bind(record.decided_at_ms)
                    .bind(record.tenant.as_str())
                    .bind(record.id.as_str());
                for status in &expected {
                    query = query.bind(status.as_str());
                }
                let changed = query.execute(&mut *conn).await?;
                let now = Self::find_proposal(conn, &record.tenant, &record.id).await?;
                if DB::rows_affected(&changed) != 1 {
                    return Ok(stale(match now {
                        Some(row) => ProposalWritten::Stale(Some(row)),
                        None => ProposalWritten::NotFound,
                    }));
                }
                let Some(now) = now else {
                    return Ok(stale(ProposalWritten::NotFound));
                };
                Ok(StagedProposal {
                    signal: vec![now.id.clone()],
                    written: ProposalWritten::Written(now),
                    events,
                })
            }
            ProposalWrite::Observe {
                record,
                replaces,
                events,
            } => {
                let key = record.observed_key.as_deref().unwrap_or_default();
                let pending = sqlx::query(proposal::PENDING_OBSERVED)
                    .bind(record.tenant.as_str())
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|row| row.try_get::<String, _>("id"))
                    .transpose()?;
                if pending != replaces {
                    let row = match pending {
                        Some(id) => Self::find_proposal(conn, &record.tenant, &id).await?,
                        None => None,
                    };
                    return Ok(stale(ProposalWritten::Stale(row)));
                }
                if replaces.is_none() {
                    let mut query = sqlx::query(proposal::insert_sql());
                    for cell in proposal::row(&record) {
                        query = bind_cell(query, cell);
                    }
                    query.execute(&mut *conn).await?;
                    return Ok(StagedProposal {
                        signal: vec![record.id.clone()],
                        written: ProposalWritten::Written(record),
                        events,
                    });
                }
                let changed = sqlx::query(proposal::OBSERVE_UPDATE)
                    .bind(record.status.as_str())
                    .bind(record.subject.as_str())
                    .bind(record.change_hash.as_str())
                    .bind(record.body.as_str())
                    .bind(record.review.as_str())
                    .bind(record.review_token.as_str())
                    .bind(record.live_hash.as_str())
                    .bind(record.hits)
                    .bind(record.tenant.as_str())
                    .bind(record.id.as_str())
                    .bind(key)
                    .bind(record.hits)
                    .execute(&mut *conn)
                    .await?;
                let now = Self::find_proposal(conn, &record.tenant, &record.id).await?;
                if DB::rows_affected(&changed) != 1 {
                    return Ok(stale(ProposalWritten::Stale(now)));
                }
                let Some(now) = now else {
                    return Ok(stale(ProposalWritten::NotFound));
                };
                Ok(StagedProposal {
                    signal: vec![now.id.clone()],
                    written: ProposalWritten::Written(now),
                    events,
                })
            }
        }
    }

    /// Announces changed proposals to every replica's waiters at commit (PostgreSQL), on
    /// the approvals' channel: ids are ULIDs, so a waiter never mistakes one for another.
    async fn notify_proposals(conn: &mut DB::Connection, ids: &[String]) -> Result<(), StoreError> {
        if let Some(notify) = DB::NOTIFY_APPROVAL {
            for id in ids {
                sqlx::query(notify)
                    .bind(id.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Announces approvals opened by an append to every replica at commit (PostgreSQL): one
    /// notification per [`OPENED_PER_NOTIFY`] ids, comma-separated, so a batch of many
    /// costs a statement or two under the chain lock rather than one per approval.
    async fn notify_opened(conn: &mut DB::Connection, ids: &[String]) -> Result<(), StoreError> {
        if let Some(notify) = DB::NOTIFY_APPROVAL {
            for chunk in ids.chunks(OPENED_PER_NOTIFY) {
                sqlx::query(notify)
                    .bind(chunk.join(","))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// `(name, checksum)` of every recorded migration; empty when the table does not exist.
    async fn recorded_migrations(
        conn: &mut DB::Connection,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let exists: i64 = sqlx::query(DB::MIGRATIONS_TABLE_EXISTS)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT name, checksum FROM warden_migrations")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("name")?, row.try_get("checksum")?)))
            .collect()
    }
}

/// Which column identifies the decision being looked up.
#[derive(Debug, Clone, Copy)]
enum DecisionLookup {
    Id,
    IdempotencyKey,
}

impl DecisionLookup {
    fn sql(self) -> &'static str {
        match self {
            Self::Id => {
                "SELECT id, tenant, idempotency_key, body, created_at_ms, action_digest \
                 FROM decisions WHERE tenant = $1 AND id = $2"
            }
            Self::IdempotencyKey => {
                "SELECT id, tenant, idempotency_key, body, created_at_ms, action_digest \
                 FROM decisions WHERE tenant = $1 AND idempotency_key = $2"
            }
        }
    }
}

/// Binds one cell of a row.
fn bind_cell<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    cell: Cell<'q>,
) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB>,
    Option<f64>: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    match cell {
        Cell::Int(v) => query.bind(v),
        Cell::OptInt(v) => query.bind(v),
        Cell::Real(v) => query.bind(v),
        Cell::Text(v) => query.bind(v),
    }
}

/// Rows per multi-row statement: 256 events bind 6,144 values, well inside SQLite's
/// (32,766) and PostgreSQL's (65,535) limits.
const INSERT_CHUNK: usize = 256;

/// The primary key of `budget_counters`, in [`CounterKey`] order.
const COUNTER_KEY_COLUMNS: [&str; 6] = [
    "tenant",
    "agent",
    "run_id",
    "kind",
    "limit_id",
    "window_start_ms",
];

/// `prefix` followed by `rows` groups of `fields` placeholders.
fn multi_row_insert<DB: Dialect>(prefix: &str, fields: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * fields * 5);
    sql.push_str(prefix);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for field in 0..fields {
            if field > 0 {
                sql.push_str(", ");
            }
            DB::placeholder(&mut sql, row * fields + field + 1);
        }
        sql.push(')');
    }
    sql
}

/// Whether a store error is a unique-constraint violation.
fn is_unique(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(e) if is_unique_violation(e))
}

/// Decodes the column `name` of an audit row; the error text names the column.
fn column<'r, R, T>(row: &'r R, name: &'static str) -> Result<T, String>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(name).map_err(|e| format!("{name}: {e}"))
}

/// Decodes the JSON text in column `name` of an audit row.
fn json_column<R, T>(row: &R, name: &'static str) -> Result<T, String>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    T: serde::de::DeserializeOwned,
{
    let text: String = column(row, name)?;
    serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<f64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
{
    fn backend(&self) -> Backend {
        DB::BACKEND
    }

    async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let mut applied = Vec::new();
        for migration in migrations(DB::BACKEND) {
            let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
            if let Some(lock) = DB::LOCK_MIGRATIONS {
                sqlx::query(lock).execute(&mut *tx).await?;
            }
            (&mut *tx)
                .execute(sqlx::raw_sql(CREATE_MIGRATIONS_TABLE))
                .await?;
            // Checked under the lock: another replica may have applied it meanwhile.
            let recorded = sqlx::query("SELECT checksum FROM warden_migrations WHERE name = $1")
                .bind(migration.name.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = recorded {
                let checksum: String = row.try_get("checksum")?;
                if checksum != migration.checksum() {
                    return Err(StoreError::MigrationChanged(migration.name.to_owned()));
                }
                tx.rollback().await?;
                continue;
            }
            (&mut *tx).execute(sqlx::raw_sql(migration.sql)).await?;
            let record = format!(
                "INSERT INTO warden_migrations (name, checksum, applied_at_ms) \
                     VALUES ($1, $2, {})",
                DB::NOW_MS
            );
            sqlx::query(&record)
                .bind(migration.name.to_owned())
                .bind(migration.checksum())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            applied.push(migration.name.to_owned());
        }
        Ok(applied)
    }

    async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let recorded = Self::recorded_migrations(&mut conn).await?;
        let mut pending = Vec::new();
        for migration in migrations(DB::BACKEND) {
            match recorded.iter().find(|(name, _)| name == migration.name) {
                Some((_, checksum)) if *checksum != migration.checksum() => {
                    return Err(StoreError::MigrationChanged(migration.name.to_owned()));
                }
                Some(_) => {}
                None => pending.push(migration.name.to_owned()),
            }
        }
        Ok(pending)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self, now_ms: i64) -> Result<String, StoreError> {
        let mut tx = self.begin_chain_write().await?;
        sqlx::query(WRITE_PROBE)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(DB::DURABILITY).fetch_one(&mut *tx).await?;
        let setting: String = row.try_get("setting")?;
        tx.commit().await?;
        Ok(setting)
    }

    async fn append(&self, mut batch: Vec<Append>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        append::check(&mut batch)?;
        let mut tx = self.begin_chain_write().await?;
        let head = Self::head(&mut tx).await?;
        // Every idempotency key of the batch, looked up at once under the chain lock.
        let holders = Self::key_holders(&mut tx, &batch).await?;
        // The counters the batch charges, read under the same lock: every replica's
        // appends take turns, so no charge is checked against a stale value.
        let counters = Self::counter_rows(&mut tx, &append::counter_keys(&batch)).await?;
        // Hashing stays on the executor here, unlike in verify: it is microseconds per
        // event, and each link depends on the one before and on rows read under the lock.
        let Plan {
            links,
            decisions,
            counters,
            approvals,
            outbox,
            results,
        } = append::plan(batch, head, holders, counters)?;
        Self::upsert_counters(&mut tx, &counters).await?;
        // One statement per table per chunk: a batch costs a handful of round trips, not
        // three per event, which is what makes group commit pay off on PostgreSQL.
        for chunk in links.chunks(INSERT_CHUNK) {
            if let Err(e) = Self::insert_events(&mut tx, chunk).await {
                drop(tx);
                // seq is assigned under the chain lock, so a correct insert can only collide
                // on a caller-made event id.
                let ids = links.iter().map(|link| link.event.id.as_str());
                let select = "SELECT id FROM audit_events WHERE id = $1";
                return Err(self
                    .name_collision(e, select, ids, StoreError::DuplicateEvent)
                    .await);
            }
        }
        for chunk in decisions.chunks(INSERT_CHUNK) {
            if let Err(e) = Self::insert_decisions(&mut tx, chunk).await {
                drop(tx);
                // Idempotency keys were looked up under the chain lock: the collision is on
                // a decision id.
                let ids = decisions.iter().map(|d| d.id.as_str());
                let select = "SELECT id FROM decisions WHERE id = $1";
                return Err(self
                    .name_collision(e, select, ids, StoreError::DuplicateDecision)
                    .await);
            }
        }
        Self::insert_approvals(&mut tx, &approvals, &outbox).await?;
        // New approvals and questions are announced like decided ones, so that a view of the
        // pending ones (the inbox) hears of them on every replica.
        let opened: Vec<String> = approvals.iter().map(|a| a.id.clone()).collect();
        Self::notify_opened(&mut tx, &opened).await?;
        // Durability: on SQLite (WAL, synchronous=FULL) and PostgreSQL alike this commit is
        // the one fsync for the whole batch, and nothing is acknowledged before it returns.
        tx.commit().await?;
        for id in opened {
            let _ = self.signals.send(ApprovalSignal::Changed(id));
        }
        Ok(results)
    }

    async fn consume_permit_use(&self, permit: PermitUse) -> Result<PermitConsumed, StoreError> {
        append::check_permit(&permit)?;
        // The chain lock serializes this with every append and every other use, on every
        // replica; the upsert alone would already count atomically, the lock keeps the use
        // and its event in one place in the chain.
        let mut tx = self.begin_chain_write().await?;
        let counted = sqlx::query(append::CONSUME_PERMIT)
            .bind(permit.tenant.as_str())
            .bind(permit.decision_id.as_str())
            .bind(i64::from(permit.max_uses))
            .bind(permit.expires_at_ms)
            .bind(permit.now_ms)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| -> Result<(i64, i64), StoreError> {
                Ok((row.try_get("uses")?, row.try_get("max_uses")?))
            })
            .transpose()?;
        let consumed = append::permit_consumed(counted);
        let head = Self::head(&mut tx).await?;
        let Plan { links, .. } = append::plan(
            append::permit_batch(permit, consumed),
            head,
            Vec::new(),
            Vec::new(),
        )?;
        Self::insert_events(&mut tx, &links).await?;
        tx.commit().await?;
        Ok(consumed)
    }

    async fn decision(&self, tenant: &str, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::find_decision(&mut conn, tenant, DecisionLookup::Id, id).await
    }

    async fn decision_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<StoredDecision>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::find_decision(
            &mut conn,
            tenant,
            DecisionLookup::IdempotencyKey,
            idempotency_key,
        )
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut sql = format!("SELECT {} FROM audit_events WHERE 1 = 1", event_columns());
        let mut args = Vec::new();
        let mut push = |sql: &mut String, condition: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {condition} ${}", args.len()));
        };
        let text = [
            ("tenant =", &filter.tenant),
            ("kind =", &filter.kind),
            ("agent =", &filter.agent),
            ("action_type =", &filter.action_type),
            ("effect =", &filter.effect),
        ];
        for (condition, value) in text {
            if let Some(value) = value {
                push(&mut sql, condition, Arg::Text(value.clone()));
            }
        }
        let ints = [
            ("time_ms >=", filter.since_ms),
            ("time_ms <", filter.until_ms),
            ("seq >", filter.after_seq),
            ("seq <", filter.before_seq),
        ];
        for (condition, value) in ints {
            if let Some(value) = value {
                push(&mut sql, condition, Arg::Int(value));
            }
        }
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(
            " ORDER BY seq {order} LIMIT {}",
            filter.effective_limit()
        ));

        let rows = self.fetch_with(&sql, args).await?;
        rows.iter()
            .map(|row| {
                Self::event_from_row(row)?.map_err(|bad| StoreError::Corrupt {
                    what: "audit event",
                    id: bad.seq.to_string(),
                    detail: bad.detail,
                })
            })
            .collect()
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        // One snapshot for the whole walk, so that a concurrent purge or append cannot
        // make an intact chain look broken halfway through.
        let mut tx = self.pool.begin_with(DB::BEGIN_SNAPSHOT).await?;
        let checkpoints = sqlx::query("SELECT detail FROM audit_events WHERE kind = $1")
            .bind(kind::CHECKPOINT.to_owned())
            .fetch_all(&mut *tx)
            .await?;
        let mut anchors = Vec::new();
        for row in &checkpoints {
            let detail: String = row.try_get("detail")?;
            // A checkpoint whose detail does not parse anchors nothing; the walk then
            // reports it (its hash no longer matches) or the start it fails to anchor.
            if let Some(anchor) = serde_json::from_str::<Value>(&detail)
                .ok()
                .as_ref()
                .and_then(chain::checkpoint_anchor)
            {
                anchors.push(anchor);
            }
        }
        let page_sql = format!(
            "SELECT {} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            event_columns()
        );
        let mut walk = ChainWalk::new(anchors);
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(&page_sql)
                .bind(after)
                .bind(VERIFY_PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            let full_page = rows.len() as i64 == VERIFY_PAGE;
            let page = rows
                .iter()
                .map(Self::event_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            // Hashing a page is CPU work; keep it off the async executor.
            let (returned, fed) = tokio::task::spawn_blocking(move || {
                let fed = walk.feed(page);
                (walk, fed)
            })
            .await?;
            walk = returned;
            fed?;
            if walk.is_broken() || !full_page {
                break;
            }
        }
        tx.rollback().await?;
        Ok(walk.report())
    }

    async fn purge(&self, older_than_ms: i64, now_ms: i64) -> Result<PurgeReport, StoreError> {
        let mut tx = self.begin_chain_write().await?;
        let head = Self::head(&mut tx).await?;
        // Only a prefix of the chain can go, or verification would see a hole. Times are
        // caller-supplied and replicas' clocks differ, so an old event behind a newer
        // one stays until everything before it is old enough too.
        let bounds = sqlx::query(
            "SELECT (SELECT MIN(seq) FROM audit_events) AS lowest, \
                        (SELECT MIN(seq) FROM audit_events WHERE time_ms >= $1) AS first_kept",
        )
        .bind(older_than_ms)
        .fetch_one(&mut *tx)
        .await?;
        let lowest: Option<i64> = bounds.try_get("lowest")?;
        let first_kept: Option<i64> = bounds.try_get("first_kept")?;
        let through = first_kept.map_or(head.seq, |seq| seq - 1);

        let decisions = sqlx::query("DELETE FROM decisions WHERE created_at_ms < $1")
            .bind(older_than_ms)
            .execute(&mut *tx)
            .await?;
        let decisions_purged = DB::rows_affected(&decisions);
        // Use counts of permits expired before the cutoff: none can verify again.
        sqlx::query("DELETE FROM permit_uses WHERE expires_at_ms < $1")
            .bind(older_than_ms)
            .execute(&mut *tx)
            .await?;

        let mut report = PurgeReport {
            purged: 0,
            decisions_purged,
            checkpoint_seq: None,
        };
        if lowest.is_some_and(|lowest| lowest <= through) {
            let anchor: String = sqlx::query(
                "SELECT hash FROM audit_events WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(through)
            .fetch_one(&mut *tx)
            .await?
            .try_get("hash")?;
            let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            let purged = DB::rows_affected(&deleted);
            let seq = head.seq + 1;
            let checkpoint = NewEvent {
                id: format!("checkpoint-{seq}"),
                time_ms: now_ms,
                tenant: SYSTEM_TENANT.to_owned(),
                kind: kind::CHECKPOINT.to_owned(),
                kept: Value::Null,
                detail: chain::checkpoint_detail(through, &anchor, purged, older_than_ms),
                ..NewEvent::default()
            };
            let hash = chain::event_hash(seq, &head.hash, &checkpoint)?;
            let link = Link {
                seq,
                prev_hash: head.hash.clone(),
                hash,
                event: checkpoint,
            };
            Self::insert_events(&mut tx, std::slice::from_ref(&link)).await?;
            report.purged = purged;
            report.checkpoint_seq = Some(seq);
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let sql = format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)"
        );
        let result = sqlx::query(&sql)
            .bind(key.id.clone())
            .bind(key.secret_hash.clone())
            .bind(key.tenant.clone())
            .bind(append::json_text(&key.id, &key.roles)?)
            .bind(key.agent.clone())
            .bind(append::json_text(&key.id, &key.groups)?)
            .bind(key.label.clone())
            .bind(key.created_at_ms)
            .bind(key.user.clone())
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(KeyRecord {
                id: key.id,
                secret_hash: key.secret_hash,
                tenant: key.tenant,
                roles: key.roles,
                agent: key.agent,
                groups: key.groups,
                user: key.user,
                label: key.label,
                created_at_ms: key.created_at_ms,
                revoked_at_ms: None,
            }),
            Err(e) if is_unique_violation(&e) => Err(StoreError::DuplicateKey(key.id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Self::key_from_row(&row)).transpose()
    }

    async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
        )
        .bind(id.to_owned())
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&result) > 0)
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at_ms, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::key_from_row).collect()
    }

    async fn counters(&self, filter: &CounterFilter) -> Result<Vec<CounterRow>, StoreError> {
        let mut sql = format!(
            "SELECT {} FROM budget_counters WHERE tenant = $1 AND expires_at_ms > $2",
            append::COUNTER_COLUMNS
        );
        let mut n = 2;
        for (column, value) in [("agent", &filter.agent), ("run_id", &filter.run_id)] {
            if value.is_some() {
                n += 1;
                // `$N` like the rest of the statement: SQLite would number a `?` after it
                // differently from what sqlx binds.
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        sql.push_str(" ORDER BY kind, limit_id, agent, run_id, window_start_ms LIMIT 1000");
        let mut query = sqlx::query(&sql)
            .bind(filter.tenant.clone())
            .bind(filter.now_ms);
        for value in [&filter.agent, &filter.run_id].into_iter().flatten() {
            query = query.bind(value.clone());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(Self::counter_from_row).collect()
    }

    async fn prune_counters(&self, now_ms: i64) -> Result<u64, StoreError> {
        // Not under the chain lock: a plan treats an expired counter as absent whether it
        // is deleted yet or not, so this only reclaims space.
        let mut tx = self.writer.begin_with(DB::BEGIN_WRITE).await?;
        let result = sqlx::query("DELETE FROM budget_counters WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DB::rows_affected(&result))
    }

    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::find_approval(&mut conn, tenant, id).await
    }

    async fn approvals(&self, filter: &ApprovalFilter) -> Result<Vec<ApprovalRecord>, StoreError> {
        let select = format!("SELECT {} FROM approvals", approval_columns());
        let equals = [("status", &filter.status), ("kind", &filter.kind)];
        let (sql, args) = newest_first(
            select,
            &filter.tenant,
            &equals,
            &filter.before,
            filter.limit,
        );
        let rows = self.fetch_with(&sql, args).await?;
        rows.iter().map(Self::approval_from_row).collect()
    }

    async fn expired_approvals(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, id FROM approvals WHERE status = $1 AND expires_at_ms <= $2 \
             ORDER BY expires_at_ms LIMIT $3",
        )
        .bind(status::PENDING)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("tenant")?, row.try_get("id")?)))
            .collect()
    }

    async fn update_approval(
        &self,
        tenant: &str,
        id: &str,
        mut decide: ApprovalDecider,
    ) -> Result<ApprovalChanged, StoreError> {
        // Under the chain lock: the row read here is the row every other writer (any
        // replica) sees next, so votes and expiry take turns, and the events chain in the
        // same order as the changes they record.
        let mut tx = self.begin_chain_write().await?;
        let Some(before) = Self::find_approval(&mut tx, tenant, id).await? else {
            tx.rollback().await?;
            return Ok(ApprovalChanged::NotFound);
        };
        let Some(mut update) = decide(&before, None) else {
            tx.rollback().await?;
            return Ok(ApprovalChanged::Unchanged(before));
        };
        // A granted approval charges its action's counters here, under the same lock as
        // every decision's charges; a charge that does not fit makes the decider answer
        // again without charges (the grant becomes a deny naming the limit).
        let mut counters = Vec::new();
        if !update.charges.is_empty() {
            let keys: Vec<_> = update
                .charges
                .iter()
                .map(|c| crate::model::CounterKey::of(tenant, c))
                .collect();
            let rows = Self::counter_rows(&mut tx, &keys).await?;
            let mut state = rows.into_iter().map(|c| (c.key.clone(), c)).collect();
            let mut touched = std::collections::HashSet::new();
            match append::charge(&mut state, &mut touched, tenant, &update.charges) {
                Ok(()) => {
                    counters = touched
                        .into_iter()
                        .filter_map(|key| state.remove(&key))
                        .collect();
                }
                Err(over) => {
                    let Some(denied) = decide(&before, Some(&over)) else {
                        tx.rollback().await?;
                        return Ok(ApprovalChanged::Unchanged(before));
                    };
                    if !denied.charges.is_empty() {
                        return Err(StoreError::InvalidEvent {
                            id: before.id,
                            reason: "an update over a limit must charge nothing".to_owned(),
                        });
                    }
                    update = denied;
                }
            }
        }
        let after = update.record;
        if after.id != before.id || after.tenant != before.tenant {
            return Err(StoreError::InvalidEvent {
                id: after.id,
                reason: "an approval update must keep its id and tenant".to_owned(),
            });
        }
        let votes = append::json_text(&after.id, &after.votes)?;
        // Conditional on pending: a change applies to an open approval only, and exactly
        // once, whatever the caller decided.
        let changed = sqlx::query(
            "UPDATE approvals SET status = $1, votes = $2, reason = $3, answer = $4, \
             decided_at_ms = $5 WHERE tenant = $6 AND id = $7 AND status = $8",
        )
        .bind(after.status.as_str())
        .bind(votes.as_str())
        .bind(after.reason.as_deref())
        .bind(after.answer.as_deref())
        .bind(after.decided_at_ms)
        .bind(tenant)
        .bind(id)
        .bind(status::PENDING)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&changed) != 1 {
            tx.rollback().await?;
            return Ok(ApprovalChanged::Unchanged(before));
        }
        Self::upsert_counters(&mut tx, &counters).await?;
        Self::chain_events(&mut tx, update.events).await?;
        if let (Some(body), Some(decision)) = (&update.decision_body, &after.decision_id) {
            sqlx::query("UPDATE decisions SET body = $1 WHERE tenant = $2 AND id = $3")
                .bind(body.as_str())
                .bind(tenant)
                .bind(decision.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Self::insert_approvals(&mut tx, &[], &update.outbox).await?;
        if let Some(notify) = DB::NOTIFY_APPROVAL {
            // Delivered by PostgreSQL at commit, to every replica's listener.
            sqlx::query(notify).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let _ = self.signals.send(ApprovalSignal::Changed(id.to_owned()));
        Ok(ApprovalChanged::Written { after })
    }

    async fn approval_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<ApprovalSignal>, StoreError> {
        Ok(self.signals.subscribe())
    }

    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, url, body, created_at_ms, attempts, next_attempt_ms \
             FROM webhook_outbox WHERE delivered_at_ms IS NULL AND next_attempt_ms <= $1 \
             ORDER BY next_attempt_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let due: i64 = row.try_get("next_attempt_ms")?;
            // Claimed only if no other replica moved it first.
            let taken = sqlx::query(
                "UPDATE webhook_outbox SET next_attempt_ms = $1 \
                 WHERE id = $2 AND next_attempt_ms = $3 AND delivered_at_ms IS NULL",
            )
            .bind(now_ms.saturating_add(lease_ms))
            .bind(id.as_str())
            .bind(due)
            .execute(&self.pool)
            .await?;
            if DB::rows_affected(&taken) != 1 {
                continue;
            }
            let attempts: i64 = row.try_get("attempts")?;
            claimed.push(OutboxEntry {
                message: OutboxMessage {
                    tenant: row.try_get("tenant")?,
                    url: row.try_get("url")?,
                    body: row.try_get("body")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    id,
                },
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                next_attempt_ms: due,
            });
        }
        Ok(claimed)
    }

    async fn webhook_attempted(
        &self,
        id: &str,
        now_ms: i64,
        error: Option<String>,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let (delivered, next) = match (&error, retry_at_ms) {
            (None, _) => (Some(now_ms), now_ms),
            (Some(_), Some(at)) => (None, at),
            // Given up: never due again, kept for inspection.
            (Some(_), None) => (None, i64::MAX),
        };
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at_ms = $1, \
             next_attempt_ms = $2, last_error = $3 WHERE id = $4",
        )
        .bind(delivered)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn publish_policy(&self, publish: PolicyPublish) -> Result<Published, StoreError> {
        policy_version::check(&publish)?;
        let deflated = policy_version::deflate_off_runtime(&publish.policy.source).await?;
        self.publish_deflated(publish, deflated).await
    }

    async fn policy_heads(&self) -> Result<Vec<PolicyHead>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, revision, hash, status FROM policy_versions \
             WHERE status = $1 OR status = $2 ORDER BY tenant, status",
        )
        .bind(policy_status::ACTIVE)
        .bind(policy_status::SHADOW)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PolicyHead {
                    tenant: row.try_get("tenant")?,
                    revision: row.try_get("revision")?,
                    hash: row.try_get("hash")?,
                    status: row.try_get("status")?,
                })
            })
            .collect()
    }

    async fn policy(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let columns = format!("{POLICY_INFO_COLUMNS}, {}", policy_version::SOURCE);
        let Some(row) = self.policy_row(&columns, tenant, revision).await? else {
            return Ok(None);
        };
        let info = Self::policy_info_from_row(&row)?;
        let source = policy_version::source_off_runtime(
            &info,
            row.try_get("source")?,
            row.try_get("deflated")?,
        )
        .await?;
        Ok(Some(StoredPolicy { info, source }))
    }

    async fn policy_info(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<PolicyVersionInfo>, StoreError> {
        self.policy_row(POLICY_INFO_COLUMNS, tenant, revision)
            .await?
            .map(|row| Self::policy_info_from_row(&row))
            .transpose()
    }

    async fn policy_versions(
        &self,
        tenant: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<PolicyVersionInfo>, StoreError> {
        let sql = format!(
            "SELECT {POLICY_INFO_COLUMNS} FROM policy_versions WHERE tenant = $1 \
             AND revision < $2 ORDER BY revision DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::policy_info_from_row).collect()
    }

    async fn policy_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<PolicySignal>, StoreError> {
        Ok(self.policy_signals.subscribe())
    }

    async fn snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError> {
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(
            // A row-value comparison, so the keyset is one range of the index.
            "SELECT id, created_at_ms, body, snapshot FROM decisions \
             WHERE tenant = $1 AND created_at_ms >= $2 AND snapshot IS NOT NULL \
             AND (created_at_ms, id) > ($3, $4) \
             ORDER BY created_at_ms, id LIMIT $5",
        )
        .bind(tenant)
        .bind(since_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredSnapshot {
                    decision_id: row.try_get("id")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    body: row.try_get("body")?,
                    snapshot: row.try_get("snapshot")?,
                })
            })
            .collect()
    }

    async fn recent_snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError> {
        let rows = sqlx::query(
            // The snapshots index read backwards; not the decision bodies, which a review
            // does not read.
            "SELECT id, created_at_ms, '' AS body, snapshot FROM decisions \
             WHERE tenant = $1 AND created_at_ms >= $2 AND snapshot IS NOT NULL \
             ORDER BY created_at_ms DESC, id DESC LIMIT $3",
        )
        .bind(tenant)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredSnapshot {
                    decision_id: row.try_get("id")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    body: row.try_get("body")?,
                    snapshot: row.try_get("snapshot")?,
                })
            })
            .collect()
    }

    async fn clear_snapshots(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let cleared = sqlx::query(
            "UPDATE decisions SET snapshot = NULL \
             WHERE created_at_ms < $1 AND snapshot IS NOT NULL",
        )
        .bind(older_than_ms)
        .execute(&self.writer)
        .await?;
        Ok(DB::rows_affected(&cleared))
    }

    async fn record_shadow_tally(
        &self,
        tenant: &str,
        revision: i64,
        replica: &str,
        tally: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shadow_tallies (tenant, revision, replica, tally, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, revision, replica) \
             DO UPDATE SET tally = excluded.tally, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant)
        .bind(revision)
        .bind(replica)
        .bind(tally)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn shadow_tallies(&self, tenant: &str, revision: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT tally FROM shadow_tallies WHERE tenant = $1 AND revision = $2 ORDER BY replica",
        )
        .bind(tenant)
        .bind(revision)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("tally")?)).collect()
    }

    async fn end_policy_shadow(
        &self,
        tenant: &str,
        event: NewEvent,
    ) -> Result<Option<PolicyVersionInfo>, StoreError> {
        let mut tx = self.begin_chain_write().await?;
        let sql = format!(
            "SELECT {POLICY_INFO_COLUMNS} FROM policy_versions WHERE tenant = $1 AND status = $2"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(tenant)
            .bind(policy_status::SHADOW)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let mut ended = Self::policy_info_from_row(&row)?;
        sqlx::query(policy_version::RETIRE)
            .bind(policy_status::SUPERSEDED)
            .bind(tenant)
            .bind(policy_status::SHADOW)
            .execute(&mut *tx)
            .await?;
        Self::chain_events(&mut tx, vec![event]).await?;
        if let Some(notify) = DB::NOTIFY_POLICY {
            sqlx::query(notify).bind(tenant).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let _ = self
            .policy_signals
            .send(PolicySignal::Changed(tenant.to_owned()));
        ended.status = policy_status::SUPERSEDED.to_owned();
        Ok(Some(ended))
    }

    async fn decision_events(
        &self,
        tenant: &str,
        decision_ids: &[String],
    ) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        // Evidence names at most a few dozen decisions: one indexed lookup each.
        let sql = format!(
            "SELECT {} FROM audit_events WHERE decision_id = $1 AND tenant = $2 AND kind = $3 \
             ORDER BY seq LIMIT 1",
            event_columns()
        );
        for id in decision_ids {
            let row = sqlx::query(&sql)
                .bind(id.as_str())
                .bind(tenant)
                .bind(kind::DECISION)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                events.push(
                    Self::event_from_row(&row)?.map_err(|bad| StoreError::Corrupt {
                        what: "audit event",
                        id: bad.seq.to_string(),
                        detail: bad.detail,
                    })?,
                );
            }
        }
        Ok(events)
    }

    async fn write_proposal(&self, write: ProposalWrite) -> Result<ProposalWritten, StoreError> {
        proposal::check(&write)?;
        // Under the chain lock: the row read here is the row every other writer (any
        // replica) sees next, so two approvers change a proposal once.
        let mut tx = self.begin_chain_write().await?;
        let staged = Self::stage_proposal(&mut tx, write, None).await?;
        if !matches!(staged.written, ProposalWritten::Written(_)) {
            tx.rollback().await?;
            return Ok(staged.written);
        }
        Self::chain_events(&mut tx, staged.events).await?;
        Self::notify_proposals(&mut tx, &staged.signal).await?;
        tx.commit().await?;
        for id in staged.signal {
            let _ = self.signals.send(ApprovalSignal::Changed(id));
        }
        Ok(staged.written)
    }

    async fn proposal(&self, tenant: &str, id: &str) -> Result<Option<ProposalRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::find_proposal(&mut conn, tenant, id).await
    }

    async fn proposals(&self, filter: &ProposalFilter) -> Result<Vec<ProposalRecord>, StoreError> {
        let select = format!("SELECT {} FROM proposals", proposal::columns());
        let equals = [
            ("status", &filter.status),
            ("agent", &filter.agent),
            ("change_hash", &filter.change_hash),
            ("source", &filter.source),
            ("observed_key", &filter.observed_key),
        ];
        let (sql, args) = newest_first(
            select,
            &filter.tenant,
            &equals,
            &filter.before,
            filter.limit,
        );
        let rows = self.fetch_with(&sql, args).await?;
        rows.iter().map(Self::proposal_from_row).collect()
    }

    async fn count_proposals(
        &self,
        tenant: &str,
        agent: &str,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query(proposal::COUNT_SINCE)
            .bind(tenant)
            .bind(agent)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(session::INSERT)
            .bind(s.id_hash.as_str())
            .bind(s.key_id.as_str())
            .bind(s.tenant.as_str())
            .bind(s.created_at_ms)
            .bind(s.last_seen_ms)
            .bind(s.expires_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM inbox_sessions WHERE id_hash = $1",
            session::COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(SessionRecord {
                id_hash: row.try_get("id_hash")?,
                key_id: row.try_get("key_id")?,
                tenant: row.try_get("tenant")?,
                created_at_ms: row.try_get("created_at_ms")?,
                last_seen_ms: row.try_get("last_seen_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(session::TOUCH)
            .bind(id_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(session::DELETE)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&result) > 0)
    }

    async fn prune_sessions(&self, now_ms: i64, idle_before_ms: i64) -> Result<u64, StoreError> {
        let result = sqlx::query(session::PRUNE)
            .bind(now_ms)
            .bind(idle_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&result))
    }
}
