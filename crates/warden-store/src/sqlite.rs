//! The SQLite backend: how a database file is opened, and the SQL that differs from PostgreSQL.
//!
//! Durability choice: WAL journal with `synchronous=FULL`, so a committed transaction is on
//! disk when `COMMIT` returns. Appends are group commits, so the batch's `COMMIT` is the
//! one fsync that makes every event in it durable. Writers open their transaction with
//! `BEGIN IMMEDIATE`, taking the write lock up front: a deferred transaction that upgrades
//! to a writer later can fail with `SQLITE_BUSY` without waiting, while `BEGIN IMMEDIATE`
//! waits up to the busy timeout, which also serializes chain appends between connections
//! and between processes sharing the file.
//!
//! Checkpoints are run by the appender between batches when none is waiting, with SQLite's
//! automatic one (every 1,000 WAL pages, inside a commit) as the backstop under constant
//! load. A background checkpointer syncing the database file beside the appender, measured,
//! made commits wait 20–30 ms for the disk several times a second.
//!
//! Chain appends run on their own thread and connection ([`crate::sqlite_appender`]); a
//! `:memory:` database, private to one connection, appends through sqlx instead.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use crate::error::StoreError;
use crate::split::Split;
use crate::sql::{Dialect, SqlStore};
use crate::sqlite_appender;
use crate::{Backend, Store};

/// The `synchronous` pragma by name, as `Store::probe_write` reports it.
pub(crate) const SYNCHRONOUS: &str = "SELECT 'synchronous=' || CASE synchronous \
    WHEN 0 THEN 'OFF' WHEN 1 THEN 'NORMAL' WHEN 2 THEN 'FULL' WHEN 3 THEN 'EXTRA' \
    ELSE synchronous END AS setting FROM pragma_synchronous";

/// How long a writer waits for another to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections in a file database's pool; SQLite runs one writer at a time regardless.
const MAX_CONNECTIONS: u32 = 8;

impl Dialect for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_CHAIN: Option<&'static str> = None;
    const LOCK_MIGRATIONS: Option<&'static str> = None;
    // A deferred transaction's snapshot starts at its first read and lasts until it ends.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    const MIGRATIONS_TABLE_EXISTS: &'static str = "SELECT COUNT(*) AS n FROM sqlite_master \
        WHERE type = 'table' AND name = 'warden_migrations'";
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    const DURABILITY: &'static str = SYNCHRONOUS;
    const NOTIFY_APPROVAL: Option<&'static str> = None;
    const NOTIFY_POLICY: Option<&'static str> = None;

    // Plain `?`: sqlx resolves a `$N` placeholder by comparing it with every parameter
    // name of the statement, which is quadratic in a multi-row insert.
    fn placeholder(sql: &mut String, _n: usize) {
        sql.push('?');
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Opens (creating if missing) the database at `path`; `:memory:` is a private in-memory
/// database that lives as long as the store.
pub(crate) async fn connect(path: &str) -> Result<Arc<dyn Store>, StoreError> {
    if path.is_empty() {
        return Err(StoreError::InvalidUrl(
            "the sqlite path is empty".to_owned(),
        ));
    }
    let memory = path == ":memory:";
    let options = if memory {
        // sqlx names the in-memory database uniquely and shares it between the pool's
        // connections; the pool below keeps exactly one, forever, so it is never dropped.
        SqliteConnectOptions::from_str("sqlite::memory:")?
    } else {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
    };
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        // 16 MiB of page cache per connection (negative = KiB): the chain's indexes stay
        // in memory instead of being re-read with a syscall on every append.
        .pragma("cache_size", "-16384")
        .foreign_keys(true);
    let pool_options = if memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
    };
    let pool = pool_options.connect_with(options.clone()).await?;
    if memory {
        return Ok(SqlStore::shared(pool));
    }
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let (sql, opened) = SqlStore::shared_with_signals(pool, writer);
    Ok(Arc::new(Split {
        sql,
        appender: sqlite_appender::start(path, BUSY_TIMEOUT)?,
        listener: None,
        policy_signals: tokio::sync::broadcast::channel(crate::sql::SIGNAL_CAPACITY).0,
        opened: Some(opened),
    }))
}
