//! The state every handler shares: the store, the live policies, the audit writer, the
//! digest key, the key cache and the metrics, behind one cheap-to-clone handle.

use crate::approvals::{Waiters, Webhooks};
use crate::audit::{AuditKey, AuditWriter};
use crate::auth::{AuthFailures, KeyCache};
use crate::body::BodyBudget;
use crate::metrics::Metrics;
use crate::permits::Keyring;
use crate::policies::Policies;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warden_store::Store;

/// Limits and timings of the HTTP service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub body_bytes: usize,
    /// A request still running after this is answered 503 `timeout`.
    pub request_timeout: Duration,
    /// Requests handled at once; more are answered 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// How long a verified key is trusted without asking the store again, counted from
    /// when it was read from the store: a revocation anywhere applies within this.
    pub key_cache_ttl: Duration,
    /// A request body must arrive in full within this; 408 `body_timeout` otherwise.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once across all requests; past it, 503.
    pub body_budget_bytes: usize,
    /// Authentication failures from one source within [`Limits::auth_failure_window`]
    /// after which that source is answered 429 before any key lookup.
    pub auth_failure_limit: u32,
    /// The window authentication failures are counted and aggregated in.
    pub auth_failure_window: Duration,
    /// A connection must send a whole request head within this, from when it opens or
    /// from its previous answer; an idle keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before their connections close.
    pub shutdown_grace: Duration,
    /// Long-polls on approvals and questions open at once; past it, 503. Waits count
    /// here, not against `max_in_flight`, and are not cut by `request_timeout`.
    pub max_waiters: usize,
    /// How long decision snapshots are kept for replay; zero keeps none.
    pub snapshot_retention: Duration,
    /// How often every tenant's active policy version is compared with the store's, in
    /// case a change signal was lost (changes are normally followed at once).
    pub policy_poll: Duration,
    /// Proposals one agent may submit per hour, counted in the store (so across replicas).
    pub proposal_rate_limit: u32,
    /// How far back a proposal's review replays recent decisions (their snapshots).
    pub proposal_replay_window: Duration,
    /// How long the review's solver may think about one question; past it, broadening.
    pub proposal_solver_timeout: Duration,
    /// How many denials (or human approvals) of the same kind of action for one agent
    /// within `observe_window` make Warden suggest a change itself; 0 never does.
    pub observe_threshold: u32,
    /// The window `observe_threshold` counts in.
    pub observe_window: Duration,
    /// A web inbox session unused for this long has ended.
    pub inbox_idle_timeout: Duration,
    /// A web inbox session ends this long after its sign-in, however it is used.
    pub inbox_session_lifetime: Duration,
    /// Marks the inbox's cookies `Secure` on every answer, not only on requests a proxy says
    /// came over TLS (`X-Forwarded-Proto: https`).
    pub inbox_secure_cookies: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            key_cache_ttl: Duration::from_secs(5),
            body_timeout: Duration::from_secs(15),
            body_budget_bytes: 64 * 1024 * 1024,
            auth_failure_limit: 100,
            auth_failure_window: Duration::from_secs(60),
            header_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(15),
            max_waiters: 10_000,
            policy_poll: crate::policies::DEFAULT_POLL,
            snapshot_retention: Duration::from_secs(7 * 24 * 3600),
            proposal_rate_limit: 10,
            proposal_replay_window: Duration::from_secs(7 * 24 * 3600),
            proposal_solver_timeout: Duration::from_secs(2),
            observe_threshold: 3,
            observe_window: Duration::from_secs(24 * 3600),
            inbox_idle_timeout: Duration::from_secs(30 * 60),
            inbox_session_lifetime: Duration::from_secs(12 * 3600),
            inbox_secure_cookies: false,
        }
    }
}

/// Shared state; clone freely.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    policies: Arc<Policies>,
    audit: AuditWriter,
    audit_key: AuditKey,
    snapshot_key: crate::snapshots::SnapshotKey,
    keys: KeyCache,
    auth_failures: AuthFailures,
    body_budget: BodyBudget,
    metrics: Arc<Metrics>,
    limits: Limits,
    permits: Keyring,
    waiters: Waiters,
    webhooks: Webhooks,
    reviewers: crate::reviewer::Reviewers,
    /// Proposal reviews running at once: each may keep a core busy for seconds.
    reviews: Arc<tokio::sync::Semaphore>,
    /// What proposal reviews read of policy versions.
    documents: Arc<crate::proposals::Documents>,
    /// The frictions this replica is counting right now.
    observer: crate::observed::Observer,
}

impl AppState {
    /// Assembles the state. The audit writer must already run over the same store.
    pub fn new(
        store: Arc<dyn Store>,
        policies: Arc<Policies>,
        audit: AuditWriter,
        audit_key: AuditKey,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        Self(Arc::new(Inner {
            store,
            policies,
            audit,
            snapshot_key: audit_key.snapshot_key(),
            audit_key,
            keys: KeyCache::new(limits.key_cache_ttl),
            auth_failures: AuthFailures::new(limits.auth_failure_limit, limits.auth_failure_window),
            body_budget: BodyBudget::new(limits.body_budget_bytes),
            metrics,
            waiters: Waiters::new(limits.max_waiters),
            limits,
            // A key of its own until `permits().install` loads the shared ones.
            permits: Keyring::default(),
            webhooks: Webhooks::default(),
            reviewers: crate::reviewer::Reviewers::default(),
            reviews: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            documents: Arc::default(),
            observer: crate::observed::Observer::default(),
        }))
    }

    /// Slots for proposal reviews, one per core: a review holds one until it finishes,
    /// even when its request has gone.
    pub fn reviews(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.0.reviews
    }

    /// The frictions this replica is counting right now.
    pub fn observer(&self) -> &crate::observed::Observer {
        &self.0.observer
    }

    /// What this replica read of policy versions for proposal reviews, by content hash.
    pub fn documents(&self) -> &Arc<crate::proposals::Documents> {
        &self.0.documents
    }

    /// Asks `reviewers` about proposals. Call before the state is shared (cloned), like
    /// [`AppState::with_webhooks`].
    pub fn with_reviewers(mut self, reviewers: crate::reviewer::Reviewers) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.reviewers = reviewers,
            None => tracing::error!("reviewers set after the state was shared; ignored"),
        }
        self
    }

    /// The tenants' external proposal reviewers.
    pub fn reviewers(&self) -> &crate::reviewer::Reviewers {
        &self.0.reviewers
    }

    /// Sends approval events to `webhooks`. Call before the state is shared (cloned):
    /// afterwards this changes nothing and logs an error.
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.webhooks = webhooks,
            None => tracing::error!("webhooks set after the state was shared; ignored"),
        }
        self
    }

    /// Waiters on approvals.
    pub fn waiters(&self) -> &Waiters {
        &self.0.waiters
    }
    /// Where approval events are sent.
    pub fn webhooks(&self) -> &Webhooks {
        &self.0.webhooks
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }
    /// The live policies.
    pub fn policies(&self) -> &Arc<Policies> {
        &self.0.policies
    }
    /// The audit writer.
    pub fn audit(&self) -> &AuditWriter {
        &self.0.audit
    }
    /// The digest key.
    pub fn audit_key(&self) -> &AuditKey {
        &self.0.audit_key
    }
    /// The key decision snapshots are sealed with.
    pub fn snapshot_key(&self) -> &crate::snapshots::SnapshotKey {
        &self.0.snapshot_key
    }
    /// Recently verified keys.
    pub fn keys(&self) -> &KeyCache {
        &self.0.keys
    }
    /// Recent authentication failures, by source.
    pub fn auth_failures(&self) -> &AuthFailures {
        &self.0.auth_failures
    }
    /// The bytes request bodies may hold at once.
    pub fn body_budget(&self) -> &BodyBudget {
        &self.0.body_budget
    }
    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    /// The permit signing keys.
    pub fn permits(&self) -> &Keyring {
        &self.0.permits
    }
    /// The service limits.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }
}

/// Now, in Unix milliseconds. The server is the only place that reads the clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
