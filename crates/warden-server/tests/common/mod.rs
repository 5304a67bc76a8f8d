//! What the server's integration tests share: where a test database lives.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use warden_store::Store;

/// Where a test database lives, so that a second replica can open it.
pub enum Place {
    Sqlite(String, Arc<tempfile::TempDir>),
    /// SQLite in memory: appends through sqlx rather than the appender thread. Its
    /// "replicas" share the one store.
    Memory(Arc<dyn Store>),
    Postgres(String, String),
}

impl Place {
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            Place::Memory(store) => Arc::clone(store),
            Place::Sqlite(path, _) => warden_store::open(path).await.unwrap(),
            Place::Postgres(url, schema) => warden_store::open_postgres_in_schema(url, schema)
                .await
                .unwrap(),
        }
    }
}

/// A SQLite file, SQLite in memory and (when `WARDEN_TEST_DATABASE_URL` is set) a fresh
/// PostgreSQL schema named `{prefix}_…`, each migrated.
pub async fn places(prefix: &str) -> Vec<Place> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut places = vec![
        Place::Sqlite(dir.path().join("warden.db").display().to_string(), dir),
        Place::Memory(warden_store::open("sqlite::memory:").await.unwrap()),
    ];
    match std::env::var("WARDEN_TEST_DATABASE_URL") {
        Ok(url) => {
            let schema = format!(
                "{prefix}_{}",
                warden_server::ids::random_base32(12).to_lowercase()
            );
            places.push(Place::Postgres(url, schema));
        }
        Err(_) => eprintln!("SKIPPED (PostgreSQL part): WARDEN_TEST_DATABASE_URL is not set"),
    }
    for place in &places {
        place.open().await.migrate().await.unwrap();
    }
    places
}
