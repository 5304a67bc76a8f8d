//! A store whose chain appends run on a thread of their own, and everything else on sqlx.
//!
//! Key decision: appends are the hot path, and on the shared runtime each statement of a
//! batch waited for the writer task to be scheduled behind the requests being served, and
//! for its socket to be polled — while the batch held the chain lock. Both backends
//! therefore append from a dedicated thread: SQLite over rusqlite (`sqlite_appender`),
//! PostgreSQL over sqlx on a runtime of its own (`postgres::RuntimeAppender`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{
    Append, Appended, Event, EventFilter, KeyRecord, NewKey, PurgeReport, StoredDecision,
    VerifyReport,
};
use crate::{Backend, Store};

/// Where a [`Split`] store sends chain appends.
#[async_trait]
pub(crate) trait ChainAppender: Send + Sync + std::fmt::Debug {
    /// Appends `batch` as one transaction; answers once it is durable.
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StoreError>;

    /// Fails when the appender can take no more batches (its thread is gone).
    fn check(&self) -> Result<(), StoreError>;
}

/// Chain appends to `appender`, everything else to `sql`.
#[derive(Debug)]
pub(crate) struct Split {
    pub sql: Arc<dyn Store>,
    pub appender: Box<dyn ChainAppender>,
}

#[async_trait]
impl Store for Split {
    fn backend(&self) -> Backend {
        self.sql.backend()
    }

    async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.sql.migrate().await
    }

    async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        self.sql.pending_migrations().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.appender.check()?;
        self.sql.ping().await
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StoreError> {
        self.appender.append(batch).await
    }

    async fn decision(&self, tenant: &str, id: &str) -> Result<Option<StoredDecision>, StoreError> {
        self.sql.decision(tenant, id).await
    }

    async fn decision_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<StoredDecision>, StoreError> {
        self.sql.decision_by_key(tenant, idempotency_key).await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        self.sql.events(filter).await
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.sql.verify().await
    }

    async fn purge(&self, older_than_ms: i64, now_ms: i64) -> Result<PurgeReport, StoreError> {
        self.sql.purge(older_than_ms, now_ms).await
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        self.sql.create_key(key).await
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.sql.key(id).await
    }

    async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.sql.revoke_key(id, now_ms).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.sql.keys().await
    }
}
