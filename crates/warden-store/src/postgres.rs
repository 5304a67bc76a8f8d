//! The PostgreSQL backend: how a server is connected to, and the SQL that differs from SQLite.
//!
//! Several replicas append to one chain at once. Each append transaction first takes
//! `LOCK TABLE audit_events IN EXCLUSIVE MODE`, which lets plain reads through but makes
//! writers of the chain take turns until commit; the head it then reads is the latest
//! committed one, so seqs stay gapless and every prev_hash is right. A table lock rather
//! than an advisory lock scopes the lock to the chain itself (one per schema).

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::{Connection, PgConnection, Postgres};

use crate::error::StoreError;
use crate::split::{AppenderThread, Job, Split};
use crate::sql::{Dialect, SqlStore};
use crate::{Backend, Store};

/// Connections in the pool of each replica.
const MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a connection before failing.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Dialect for Postgres {
    const BACKEND: Backend = Backend::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_CHAIN: Option<&'static str> = Some("LOCK TABLE audit_events IN EXCLUSIVE MODE");
    // The migrations table may not exist yet, so replicas migrating at once meet on an
    // advisory lock named after the schema instead.
    const LOCK_MIGRATIONS: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtext('warden_migrations:' || current_schema()))");
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const MIGRATIONS_TABLE_EXISTS: &'static str = "SELECT COUNT(*) AS n \
        FROM information_schema.tables \
        WHERE table_schema = current_schema() AND table_name = 'warden_migrations'";
    const NOW_MS: &'static str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
    const DURABILITY: &'static str =
        "SELECT 'synchronous_commit=' || current_setting('synchronous_commit') AS setting";
    const NOTIFY_APPROVAL: Option<&'static str> = Some("SELECT pg_notify('warden_approvals', $1)");
    const NOTIFY_POLICY: Option<&'static str> = Some("SELECT pg_notify('warden_policies', $1)");

    fn placeholder(sql: &mut String, n: usize) {
        use std::fmt::Write;
        let _ = write!(sql, "${n}");
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Connects to the server at `url`, using the schema its search_path selects.
pub(crate) async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    pool(options).await
}

/// Connects to the server at `url` with every connection's search_path set to `schema`,
/// creating the schema if it does not exist.
pub(crate) async fn connect_in_schema(
    url: &str,
    schema: &str,
) -> Result<Arc<dyn Store>, StoreError> {
    if !valid_schema(schema) {
        return Err(StoreError::InvalidSchema(schema.to_owned()));
    }
    let options = PgConnectOptions::from_str(url)?;
    let mut conn = PgConnection::connect_with(&options).await?;
    // The name was checked above to be a plain identifier, so quoting it is enough.
    sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // A startup parameter rather than a `SET` after connecting: it holds for every
    // connection the pool ever opens, including reconnects.
    pool(options.options([("search_path", schema)])).await
}

async fn pool(options: PgConnectOptions) -> Result<Arc<dyn Store>, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        // Fail a request (closed) in seconds rather than sqlx's default 30 s when the
        // server is unreachable or every connection is busy.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    Ok(Arc::new(Split {
        sql: SqlStore::shared(pool),
        appender: start_appender(options.clone())?,
        listener: Some(crate::split::Listener::new(options)),
        policy_signals: tokio::sync::broadcast::channel(1).0,
        opened: None,
    }))
}

/// PostgreSQL's chain appender: the same sqlx append as everywhere (`SqlStore::append`),
/// on a thread with a runtime and a connection of its own, so the statements of a batch
/// (run under the chain lock) never wait behind the requests being served.
fn start_appender(options: PgConnectOptions) -> Result<AppenderThread, StoreError> {
    AppenderThread::spawn("warden-pg-appender", move |mut queue| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                // The queue closes with the thread: appends fail, readiness too.
                tracing::error!(error = %e, "cannot start the postgres appender");
                return;
            }
        };
        runtime.block_on(async move {
            // Appends are serialized by the chain lock: one connection is enough. Its
            // commits must be durable whatever the database's default is: a default of
            // `synchronous_commit = off` would lose acknowledged decisions on a crash.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options.options([("synchronous_commit", "on")]));
            let store = SqlStore::<sqlx::Postgres>::new(pool.clone(), pool);
            while let Some(job) = queue.recv().await {
                match job {
                    Job::Append { batch, reply } => {
                        let _ = reply.send(store.append(batch).await);
                    }
                    Job::ConsumePermit { permit, reply } => {
                        let _ = reply.send(store.consume_permit_use(*permit).await);
                    }
                    Job::PublishPolicy {
                        publish,
                        deflated,
                        reply,
                    } => {
                        let _ = reply.send(store.publish_deflated(*publish, deflated).await);
                    }
                    Job::Probe { now_ms, reply } => {
                        let _ = reply.send(store.probe_write(now_ms).await);
                    }
                }
            }
        });
    })
}

/// A schema name safe to interpolate: a lowercase identifier PostgreSQL keeps as is.
fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The channel approvals are announced on. Channels are database-wide: replicas in other
/// schemas hear these too, and ignore ids they hold no waiter for (ids are ULIDs).
pub(crate) const APPROVAL_CHANNEL: &str = "warden_approvals";

/// The channel policy changes are announced on (the payload is the tenant). Like approvals'
/// it is database-wide: a replica of another schema re-reads its own active version of that
/// tenant, finds it unchanged, and does nothing.
pub(crate) const POLICY_CHANNEL: &str = "warden_policies";

/// Where the listener forwards what it hears.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    pub approvals: tokio::sync::broadcast::Sender<crate::ApprovalSignal>,
    pub policies: tokio::sync::broadcast::Sender<crate::PolicySignal>,
}

impl Signals {
    fn resync(&self) {
        let _ = self.approvals.send(crate::ApprovalSignal::Resync);
        let _ = self.policies.send(crate::PolicySignal::Resync);
    }
}

/// Forwards `NOTIFY warden_approvals` and `warden_policies` to `signals` until the store is
/// dropped (the task is aborted then). Listens before telling subscribers to resynchronize,
/// and again after every reconnect, so a change is never missed: either its notification
/// arrives, or it was committed before the resync and the subscriber's re-read sees it.
pub(crate) async fn listen(options: PgConnectOptions, signals: Signals) {
    use crate::{ApprovalSignal, PolicySignal};
    use sqlx::postgres::PgListener;
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let connected = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options.clone());
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([APPROVAL_CHANNEL, POLICY_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for approvals and policies; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        backoff = std::time::Duration::from_millis(100);
        signals.resync();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload().to_owned();
                    if notification.channel() == POLICY_CHANNEL {
                        let _ = signals.policies.send(PolicySignal::Changed(payload));
                    } else {
                        // An append that opened several approvals names them all, with commas
                        // (ids are ULIDs, which have none).
                        for id in payload.split(',') {
                            let _ = signals
                                .approvals
                                .send(ApprovalSignal::Changed(id.to_owned()));
                        }
                    }
                }
                // The connection was lost; notifications meanwhile are gone. Reconnect
                // (which listens again) and tell every subscriber to read its state again.
                Ok(None) => {
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut listener).await {
                        tracing::warn!(error = %e, "the listener cannot reconnect");
                        break;
                    }
                    signals.resync();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["warden", "t_1", "_x", "a".repeat(63).as_str()] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Warden",
            "a-b",
            "a\"b",
            "a b",
            "a;drop",
            "a".repeat(64).as_str(),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
