//! The harness: run a test body against a fresh SQLite file and a fresh PostgreSQL schema.
//!
//! PostgreSQL runs when `WARDEN_TEST_DATABASE_URL` is set, each test in its own newly
//! created schema, so concurrent runs never see each other's data.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::SqliteConnection;
use warden_store::{
    Append, Appended, Backend, Event, EventFilter, NewDecision, NewEvent, Store, kind,
};

/// The environment variable naming the PostgreSQL server to test against.
pub const PG_ENV: &str = "WARDEN_TEST_DATABASE_URL";

/// One freshly created database, and how to reach it behind the store's back.
pub struct TestDb {
    pub store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
    },
}

impl TestDb {
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// A second, independent store on the same database: another replica.
    pub async fn replica(&self) -> Arc<dyn Store> {
        match &self.place {
            Place::Sqlite { url, .. } => warden_store::open(url).await.unwrap(),
            Place::Postgres { url, schema } => warden_store::open_postgres_in_schema(url, schema)
                .await
                .unwrap(),
        }
    }

    /// Runs raw SQL on the database, bypassing the store: how the tests tamper.
    pub async fn exec(&self, sql: &str) {
        match &self.place {
            Place::Sqlite { url, .. } => {
                let mut conn = SqliteConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Place::Postgres { url, schema } => {
                let mut conn = pg_connection(url, Some(schema)).await;
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// Runs a raw query returning one integer, bypassing the store.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.place {
            Place::Sqlite { url, .. } => {
                let mut conn = SqliteConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
            Place::Postgres { url, schema } => {
                let mut conn = pg_connection(url, Some(schema)).await;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }
}

async fn pg_connection(url: &str, schema: Option<&str>) -> PgConnection {
    let mut options = PgConnectOptions::from_str(url).unwrap();
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    PgConnection::connect_with(&options).await.unwrap()
}

fn unique_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("warden_test_{}_{nanos}_{n}", std::process::id())
}

/// Runs `test` against a migrated SQLite file, then a migrated PostgreSQL schema.
pub async fn each_backend(test: impl AsyncFn(TestDb)) {
    each_backend_unmigrated(async |db: TestDb| {
        db.store.migrate().await.unwrap();
        test(db).await;
    })
    .await;
}

/// Runs `test` against an empty SQLite file, then an empty PostgreSQL schema.
pub async fn each_backend_unmigrated(test: impl AsyncFn(TestDb)) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("warden.db").display());
    eprintln!("--- backend: sqlite at {url}");
    let store = warden_store::open(&url).await.unwrap();
    test(TestDb {
        store,
        place: Place::Sqlite { url, _dir: dir },
    })
    .await;

    let Ok(url) = std::env::var(PG_ENV) else {
        warn_postgres_skipped();
        return;
    };
    let schema = unique_schema();
    eprintln!("--- backend: postgres, schema {schema}");
    let store = warden_store::open_postgres_in_schema(&url, &schema)
        .await
        .unwrap();
    test(TestDb {
        store,
        place: Place::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        },
    })
    .await;
    // Only reached when the test passed; a failed test's schema is left for inspection.
    let mut conn = pg_connection(&url, None).await;
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Says once per test binary, past the test harness's output capture (which only catches
/// the print macros), that the PostgreSQL half did not run.
fn warn_postgres_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let banner = "*".repeat(78);
        let _ = writeln!(
            std::io::stderr(),
            "\n{banner}\n*** {PG_ENV} is not set: the PostgreSQL half of every store test was SKIPPED\n\
             *** e.g. {PG_ENV}=postgres://postgres@127.0.0.1:5432/test cargo test -p warden-store\n{banner}\n"
        );
    });
}

/// A realistic decision event.
pub fn event(id: &str, tenant: &str, time_ms: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        time_ms,
        tenant: tenant.into(),
        kind: kind::DECISION.into(),
        agent: Some("support-bot".into()),
        on_behalf_of: Some("user-991".into()),
        action_type: Some("ticket.resolve".into()),
        target_type: Some("ticket".into()),
        target_id: Some("T-1042".into()),
        mode: Some("auto".into()),
        confidence_initial: Some(0.82),
        confidence_adjusted: Some(0.72),
        effect: Some("deny".into()),
        rule_ids: vec!["low-confidence-resolve".into()],
        reasons: vec!["confidence 0.82 is below the 0.85 needed to auto-resolve".into()],
        policy_version: Some("1.0.0".into()),
        policy_hash: Some("ef".repeat(32)),
        payload_digest: Some("ab".repeat(32)),
        context_digest: Some("cd".repeat(32)),
        kept: json!({"action": {"target": {"id": "T-1042"}}}),
        decision_id: Some(format!("d-{id}")),
        detail: Value::Null,
    }
}

/// An append item without a decision.
pub fn plain(event: NewEvent) -> Append {
    Append {
        event,
        decision: None,
        ..Append::default()
    }
}

/// An append item recording the decision `event.decision_id`, under `key` if given.
pub fn with_decision(event: NewEvent, key: Option<&str>) -> Append {
    let id = event.decision_id.clone().unwrap();
    let decision = NewDecision {
        body: json!({"decision_id": id, "effect": event.effect}).to_string(),
        id,
        tenant: event.tenant.clone(),
        idempotency_key: key.map(str::to_owned),
        action_digest: key.map(|k| format!("digest of {k}")),
        created_at_ms: event.time_ms,
        snapshot: Some(format!("sealed at {}", event.time_ms)),
    };
    Append {
        event,
        decision: Some(decision),
        ..Append::default()
    }
}

/// Appends events `e1..=en` (time `1000 * i`, tenant `acme`) one batch each.
pub async fn append_numbered(store: &dyn Store, n: i64) {
    for i in 1..=n {
        store
            .append(vec![plain(event(&format!("e{i}"), "acme", 1000 * i))])
            .await
            .unwrap();
    }
}

/// The seq of a written item; panics on a duplicate.
pub fn seq(appended: &Appended) -> i64 {
    match appended {
        Appended::Written { seq, .. } => *seq,
        Appended::Duplicate(d) => panic!("expected a write, got duplicate of {}", d.id),
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Every event, oldest first (tests stay under the query cap).
pub async fn all_events(store: &dyn Store) -> Vec<Event> {
    store
        .events(&EventFilter {
            limit: EventFilter::MAX_LIMIT,
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

/// The seqs of `events`.
pub fn seqs(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}
