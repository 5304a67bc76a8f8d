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

/// One replica for a test: a router over `place`'s store, serving `policies` (tenant name
/// and YAML, seeded from a folder), audited, with `limits`; `configure` adds what the state
/// takes before it is shared (webhooks, reviewers). It follows other replicas' publishes.
pub struct Replica {
    pub app: axum::Router,
    pub store: Arc<dyn Store>,
    pub state: warden_server::AppState,
    pub policies: tempfile::TempDir,
}

pub async fn replica(
    place: &Place,
    policies: &[(&str, &str)],
    limits: warden_server::Limits,
    configure: impl FnOnce(warden_server::AppState) -> warden_server::AppState,
) -> Replica {
    use warden_server::audit::{AuditKey, AuditWriter};
    let store = place.open().await;
    let dir = tempfile::tempdir().unwrap();
    for (tenant, policy) in policies {
        std::fs::write(dir.path().join(format!("{tenant}.yaml")), policy).unwrap();
    }
    let followed = Arc::new(
        warden_server::policies::Policies::open(Arc::clone(&store), dir.path())
            .await
            .unwrap(),
    );
    tokio::spawn(Arc::clone(&followed).follow(std::time::Duration::from_millis(50)));
    let metrics = Arc::new(warden_server::metrics::Metrics::default());
    let (audit, _task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let key = AuditKey::from_bytes(&[42u8; 32]).unwrap();
    let state = configure(warden_server::AppState::new(
        Arc::clone(&store),
        followed,
        audit,
        key,
        metrics,
        limits,
    ));
    Replica {
        app: warden_server::app(state.clone()),
        store,
        state,
        policies: dir,
    }
}

/// `method path` through the router with a bearer token and a JSON body (none for a GET):
/// the status and the body as JSON (a JSON string when it is not JSON).
pub async fn call(
    app: &axum::Router,
    method: axum::http::Method,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (axum::http::StatusCode, serde_json::Value) {
    call_as(
        app,
        method,
        path,
        token,
        "application/json",
        body.to_string(),
    )
    .await
}

/// [`call`] with a body of any content type, as given.
pub async fn call_as(
    app: &axum::Router,
    method: axum::http::Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> (axum::http::StatusCode, serde_json::Value) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    let body = if method == axum::http::Method::GET {
        Body::empty()
    } else {
        request = request.header("content-type", content_type);
        Body::from(body)
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, value)
}
