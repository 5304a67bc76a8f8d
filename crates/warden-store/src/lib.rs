//! Warden's persistence: the tamper-evident audit chain, recorded decisions and API keys,
//! behind one [`Store`] trait with a SQLite and a PostgreSQL backend.
//!
//! Key decisions:
//!
//! - **One chain per database.** Every event of every tenant and replica goes into one
//!   append-only `audit_events` table with a gapless `seq` and a SHA-256 hash chain
//!   ([`canonical_bytes`] documents exactly what is hashed). Appends are group commits: a
//!   batch is one transaction and one fsync. Appends are serialized inside the transaction
//!   (SQLite `BEGIN IMMEDIATE`, PostgreSQL a table lock), so replicas never fork the chain.
//! - **Purge keeps the chain verifiable.** Only a prefix of the chain is ever deleted, and
//!   a `checkpoint` event records the hash the remaining chain starts from.
//! - **The store never reads the clock** for anything it records: callers pass times.
//! - **One implementation, two dialects.** The SQL is written once against sqlx; the few
//!   statements that differ live in each backend's module. The one exception is chain
//!   appends to a SQLite file, which run on their own thread over rusqlite (the hot path:
//!   see `sqlite_appender`); what they write is decided by the same code (`append`).
//!   PostgreSQL's appends run the generic code on a thread of their own (`split`).
//! - **Migrations are plain SQL files** in `migrations/{sqlite,postgres}`, embedded at build
//!   time, additive only, applied in order, each in its own transaction. Opening a store
//!   never migrates; call [`Store::migrate`].

#![deny(missing_docs)]

mod append;
mod approval;
mod chain;
mod error;
mod migrations;
mod model;
mod policy_version;
mod postgres;
mod proposal;
mod session;
mod split;
mod sql;
mod sqlite;
mod sqlite_appender;

use std::sync::Arc;

use async_trait::async_trait;

pub use approval::{
    ApprovalChanged, ApprovalDecider, ApprovalFilter, ApprovalRecord, ApprovalSignal,
    ApprovalUpdate, OnGrant, OutboxEntry, OutboxMessage, OverLimit, Vote, approval_kind, status,
};
pub use chain::{GENESIS_HASH, Sorted, canonical_bytes, event_hash};
pub use error::StoreError;
pub use migrations::{Migration, migrations};
pub use model::{
    Append, Appended, BrokenLink, ChainProblem, Charge, CounterFilter, CounterKey, CounterRow,
    CounterValue, Event, EventFilter, KeyRecord, NewDecision, NewEvent, NewKey, PermitConsumed,
    PermitUse, PurgeReport, SYSTEM_TENANT, StoredDecision, StoredSnapshot, VerifyReport, kind,
};
pub use policy_version::{
    PolicyHead, PolicyPublish, PolicySignal, PolicyVersionInfo, Published, StoredPolicy,
    policy_status,
};
pub use proposal::{
    ProposalFilter, ProposalLimit, ProposalRecord, ProposalWrite, ProposalWritten, Supersede,
    proposal_source, proposal_status,
};
pub use session::SessionRecord;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server, possibly shared by several replicas.
    Postgres,
}

impl Backend {
    /// The backend's lowercase name: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything Warden persists. Shared by the server as `Arc<dyn Store>`.
///
/// Times are unix milliseconds given by the caller.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies the pending migrations in order, each in its own transaction, and returns
    /// the names applied (empty when already up to date). Safe to run from several
    /// replicas at once.
    async fn migrate(&self) -> Result<Vec<String>, StoreError>;

    /// The names of the migrations [`Store::migrate`] would apply, in order.
    async fn pending_migrations(&self) -> Result<Vec<String>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Commits a one-row write on the connection chain appends commit on, the way they
    /// commit, and reports the durability setting it committed under
    /// (`synchronous=FULL` on SQLite, `synchronous_commit=on` on PostgreSQL). A full disk
    /// or a lost connection fails it as it fails appends; readiness uses it to notice
    /// that audit writes work again.
    async fn probe_write(&self, now_ms: i64) -> Result<String, StoreError>;

    /// Group commit: chains every item's event (and stores its decision) in one
    /// transaction, and returns one result per item, in order, once it is durable.
    ///
    /// An item whose decision reuses a (tenant, idempotency key) already stored, or used
    /// earlier in the batch, writes nothing and returns [`Appended::Duplicate`]; the other
    /// items are still written. Any error (an invalid event, a duplicate event or decision
    /// id, a database failure) rolls the whole batch back.
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StoreError>;

    /// Counts one use of a permit and chains its `permit_verified` event, in one
    /// transaction under the chain lock (so on every replica sharing the database):
    /// concurrent uses of a permit with one use left count exactly one. A permit with
    /// every use spent counts nothing and answers [`PermitConsumed::UsedUp`]; its event is
    /// chained all the same. Either way the event's detail records the outcome.
    async fn consume_permit_use(&self, permit: PermitUse) -> Result<PermitConsumed, StoreError>;

    /// The tenant's decision with this id.
    async fn decision(&self, tenant: &str, id: &str) -> Result<Option<StoredDecision>, StoreError>;

    /// The tenant's decision recorded under this idempotency key.
    async fn decision_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<StoredDecision>, StoreError>;

    /// Audit events matching `filter`, in seq order.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError>;

    /// Walks the whole chain in seq order from one consistent snapshot, recomputing every
    /// hash, and reports the first broken link. The walk accepts a purged start only where
    /// a checkpoint event anchors it.
    async fn verify(&self) -> Result<VerifyReport, StoreError>;

    /// Deletes the oldest audit events, those with `time_ms < older_than_ms` up to the
    /// first one that is not (only a prefix of the chain can go), and the decisions created
    /// before `older_than_ms`. When events were deleted it appends a `checkpoint` event at
    /// `now_ms` whose detail records `purged_through_seq`, `anchor_hash` (the hash of the
    /// last deleted event), `purged` and `older_than_ms`.
    async fn purge(&self, older_than_ms: i64, now_ms: i64) -> Result<PurgeReport, StoreError>;

    /// Stores a new API key; an existing id is [`StoreError::DuplicateKey`].
    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError>;

    /// The API key with this public id, revoked or not.
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Marks the key revoked at `now_ms`. Returns whether this call revoked it: `false`
    /// when no such key exists or it was already revoked (its revocation time is kept).
    async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Every API key, oldest first.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// The budget and rate-limit counters matching `filter`, in key order.
    async fn counters(&self, filter: &CounterFilter) -> Result<Vec<CounterRow>, StoreError>;

    /// Deletes the counters expired at `now_ms` (they already count as absent) and returns
    /// how many; run by the server's sweep so that invented run ids and past windows cannot
    /// grow the table without bound.
    async fn prune_counters(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// The tenant's approval (or question) with this id.
    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;

    /// The tenant's approvals matching `filter`, newest first.
    async fn approvals(&self, filter: &ApprovalFilter) -> Result<Vec<ApprovalRecord>, StoreError>;

    /// `(tenant, id)` of at most `limit` pending approvals whose expiry is at or before
    /// `now_ms`, oldest expiry first: what the sweeper expires.
    async fn expired_approvals(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Changes an approval under the chain lock: reads it, lets `decide` choose what to
    /// write, and writes the new row, its chained events, the replacement decision body
    /// and outbox rows in one transaction — or nothing. The row is updated only while
    /// still pending. Once written, waiters on every replica are signalled (PostgreSQL:
    /// `NOTIFY` inside the transaction).
    async fn update_approval(
        &self,
        tenant: &str,
        id: &str,
        decide: ApprovalDecider,
    ) -> Result<ApprovalChanged, StoreError>;

    /// Signals of decided approvals, from this store and (PostgreSQL) every replica.
    /// Subscribe before reading an approval's state so that no change is missed.
    async fn approval_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<ApprovalSignal>, StoreError>;

    /// Claims at most `limit` webhook deliveries due at `now_ms` for `lease_ms` (another
    /// replica will not send them meanwhile) and returns them.
    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Records an attempt at a delivery: delivered (`retry_at_ms` is `None`), or failed
    /// with `error` and retried at `retry_at_ms` (`Some`), or given up (`error` set and
    /// no retry).
    async fn webhook_attempted(
        &self,
        id: &str,
        now_ms: i64,
        error: Option<String>,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Makes `publish.policy` its tenant's active (or shadow) version, under the chain lock, with its
    /// event in the same transaction, and signals every replica (PostgreSQL: `NOTIFY`
    /// inside the transaction). Writes nothing and answers [`Published::Conflict`] when
    /// the tenant's newest or active revision is no longer what the publish expects.
    async fn publish_policy(&self, publish: PolicyPublish) -> Result<Published, StoreError>;

    /// The active and shadow versions of every tenant, in tenant order.
    async fn policy_heads(&self) -> Result<Vec<PolicyHead>, StoreError>;

    /// The tenant's version at `revision`, or its active one when `revision` is `None`.
    async fn policy(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// What [`Store::policy`] knows of the version, without reading its source (a large
    /// policy's is hundreds of kilobytes).
    async fn policy_info(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<PolicyVersionInfo>, StoreError>;

    /// The tenant's versions, newest first: at most `limit`, only revisions below `before`
    /// when given.
    async fn policy_versions(
        &self,
        tenant: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<PolicyVersionInfo>, StoreError>;

    /// Signals of changed active or shadow policies, from this store and (PostgreSQL)
    /// every replica.
    async fn policy_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<PolicySignal>, StoreError>;

    /// The tenant's kept snapshots of decisions made at or after `since_ms`, oldest first,
    /// at most `limit`, after the `(created_at_ms, decision_id)` position `after` when given.
    async fn snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError>;

    /// The tenant's kept snapshots of decisions made at or after `since_ms`, newest first, at
    /// most `limit`: what a proposal's review replays. Their `body` is left empty.
    async fn recent_snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError>;

    /// Clears the snapshots of decisions made before `older_than_ms` (the decisions stay)
    /// and returns how many.
    async fn clear_snapshots(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Records what `replica` counted for the tenant's shadow `revision` (opaque JSON text),
    /// replacing its earlier count.
    async fn record_shadow_tally(
        &self,
        tenant: &str,
        revision: i64,
        replica: &str,
        tally: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Every replica's recorded count for the tenant's shadow `revision`.
    async fn shadow_tallies(&self, tenant: &str, revision: i64) -> Result<Vec<String>, StoreError>;

    /// Ends the tenant's shadow version (it becomes superseded) with its event, under the
    /// chain lock, and signals every replica. `None`, and nothing written, when the tenant
    /// has no shadow.
    async fn end_policy_shadow(
        &self,
        tenant: &str,
        event: NewEvent,
    ) -> Result<Option<PolicyVersionInfo>, StoreError>;

    /// The `decision` events of the tenant's decisions with these ids, in the order found;
    /// ids of another tenant's decisions, or of none, are left out.
    async fn decision_events(
        &self,
        tenant: &str,
        decision_ids: &[String],
    ) -> Result<Vec<Event>, StoreError>;

    /// Writes a proposal change with its events in one transaction under the chain lock (see
    /// [`ProposalWrite`] for when it writes nothing), and signals its waiters on every
    /// replica (PostgreSQL: `NOTIFY` on the approvals' channel, inside the transaction).
    /// A change that applies a proposal goes with its version through
    /// [`Store::publish_policy`] instead.
    async fn write_proposal(&self, write: ProposalWrite) -> Result<ProposalWritten, StoreError>;

    /// The tenant's proposal with this id.
    async fn proposal(&self, tenant: &str, id: &str) -> Result<Option<ProposalRecord>, StoreError>;

    /// The tenant's proposals matching `filter`, newest first.
    async fn proposals(&self, filter: &ProposalFilter) -> Result<Vec<ProposalRecord>, StoreError>;

    /// How many proposals the tenant's `agent` submitted at or after `since_ms`: what its
    /// rate limit counts, the same on every replica.
    async fn count_proposals(
        &self,
        tenant: &str,
        agent: &str,
        since_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Stores a new web inbox session (an existing `id_hash` is an error).
    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The session whose id hashes to `id_hash`, ended or not: whether it still holds is the
    /// caller's to judge from its times and its key.
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Records that the session was used at `now_ms` (never moving `last_seen_ms` back).
    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Deletes the session; whether there was one.
    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError>;

    /// Deletes the sessions that have ended: those whose lifetime is over at `now_ms`, and
    /// those last used before `idle_before_ms`. Returns how many.
    async fn prune_sessions(&self, now_ms: i64, idle_before_ms: i64) -> Result<u64, StoreError>;
}

/// Where a database URL points.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Sqlite(&'a str),
    Postgres,
}

impl<'a> Target<'a> {
    fn parse(url: &'a str) -> Result<Self, StoreError> {
        if url.is_empty() {
            return Err(StoreError::InvalidUrl("the url is empty".to_owned()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(Self::Sqlite(path));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            // Only the scheme: the rest may hold a password.
            return Err(StoreError::UnsupportedScheme(scheme.to_owned()));
        }
        Ok(Self::Sqlite(url))
    }
}

/// Opens the store at `url` without migrating it.
///
/// `sqlite://PATH`, `sqlite:PATH` or a bare file path open SQLite, creating the file if
/// it is missing (`sqlite::memory:` is a private in-memory database);
/// `postgres://…` or `postgresql://…` connect to PostgreSQL.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match Target::parse(url)? {
        Target::Sqlite(path) => sqlite::connect(path).await,
        Target::Postgres => postgres::connect(url).await,
    }
}

/// Opens PostgreSQL at `url` with every pooled connection's search_path set to `schema`,
/// creating the schema if needed; without migrating. For tests and for sharing one
/// database between installations. `schema` must be a lowercase identifier
/// (`[a-z_][a-z0-9_]*`, at most 63 bytes).
pub async fn open_postgres_in_schema(
    url: &str,
    schema: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    match Target::parse(url)? {
        Target::Postgres => postgres::connect_in_schema(url, schema).await,
        Target::Sqlite(_) => Err(StoreError::InvalidUrl(
            "a schema needs a postgres:// url".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        let cases = [
            ("sqlite://data/w.db", Target::Sqlite("data/w.db")),
            ("sqlite:///abs/w.db", Target::Sqlite("/abs/w.db")),
            ("sqlite:w.db", Target::Sqlite("w.db")),
            ("sqlite::memory:", Target::Sqlite(":memory:")),
            ("./warden.db", Target::Sqlite("./warden.db")),
            ("postgres://u@h/db", Target::Postgres),
            ("postgresql://u:secret@h/db", Target::Postgres),
        ];
        for (url, expected) in cases {
            assert_eq!(Target::parse(url).unwrap(), expected, "{url}");
        }
    }

    #[test]
    fn unknown_schemes_are_refused_without_echoing_credentials() {
        let error = Target::parse("mysql://root:hunter2@h/db").unwrap_err();
        assert!(matches!(&error, StoreError::UnsupportedScheme(s) if s == "mysql"));
        assert!(!error.to_string().contains("hunter2"));
        assert!(matches!(Target::parse(""), Err(StoreError::InvalidUrl(_))));
    }
}
