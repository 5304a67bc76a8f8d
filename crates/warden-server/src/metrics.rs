//! Prometheus metrics: decisions by tenant and effect, decision latency, audit batch sizes
//! and latency, and errors by code. Rendered as text by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    tenant: String,
    effect: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    replayed: Family<TenantLabels, Counter>,
    decision_seconds: Histogram,
    audit_batch_size: Histogram,
    audit_batch_seconds: Histogram,
    errors: Family<ErrorLabels, Counter>,
    policy_revision: Family<TenantLabels, Gauge>,
    policy_activation_failed: Family<TenantLabels, Gauge>,
    policy_auto_rollbacks: Family<TenantLabels, Gauge>,
}

/// Latency buckets from 50 µs to about 3 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions answered, by tenant and effect",
            decisions.clone(),
        );
        let replayed = Family::<TenantLabels, Counter>::default();
        registry.register(
            "decisions_replayed",
            "Decisions answered again for a repeated idempotency key, by tenant",
            replayed.clone(),
        );
        let decision_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "decision_duration_seconds",
            "Time to answer POST /v1/decisions, audit write included",
            decision_seconds.clone(),
        );
        let audit_batch_size = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10),
        );
        registry.register(
            "audit_batch_size",
            "Events per audit transaction (group commit)",
            audit_batch_size.clone(),
        );
        let audit_batch_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "audit_batch_duration_seconds",
            "Time to commit one audit batch",
            audit_batch_seconds.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Error responses, by code", errors.clone());
        let policy_revision = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "policy_revision",
            "The stored policy revision in force on this replica, by tenant",
            policy_revision.clone(),
        );
        let policy_activation_failed = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "policy_activation_failed",
            "1 while the tenant's active stored version does not compile here (the previous one stays in force)",
            policy_activation_failed.clone(),
        );
        let policy_auto_rollbacks = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "policy_auto_rollbacks",
            "Versions this replica rolled back since it started, for their evaluation errors",
            policy_auto_rollbacks.clone(),
        );
        Self {
            registry,
            decisions,
            replayed,
            decision_seconds,
            audit_batch_size,
            audit_batch_seconds,
            errors,
            policy_revision,
            policy_activation_failed,
            policy_auto_rollbacks,
        }
    }
}

impl Metrics {
    /// Counts a decision answered and how long it took.
    pub fn decision(&self, tenant: &str, effect: &'static str, elapsed: Duration) {
        self.decisions
            .get_or_create(&DecisionLabels {
                tenant: tenant.to_owned(),
                effect,
            })
            .inc();
        self.decision_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a decision answered from the record of an earlier identical request.
    pub fn replayed(&self, tenant: &str) {
        self.replayed
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// Records one audit transaction.
    pub fn audit_batch(&self, size: usize, elapsed: Duration) {
        self.audit_batch_size.observe(size as f64);
        self.audit_batch_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts an error response.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&ErrorLabels { code }).inc();
    }

    /// Records the policies in force: each tenant's revision, and which could not put
    /// their active version in force. Called before rendering.
    pub fn policies(&self, policies: &crate::policies::Policies) {
        let set = policies.current();
        let failures = policies.failures();
        for (tenant, revision) in set.revisions() {
            let labels = TenantLabels {
                tenant: tenant.to_owned(),
            };
            self.policy_revision.get_or_create(&labels).set(revision);
            self.policy_activation_failed
                .get_or_create(&labels)
                .set(i64::from(failures.contains_key(tenant)));
        }
        for (tenant, count) in policies.rollbacks() {
            let labels = TenantLabels { tenant };
            self.policy_auto_rollbacks
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for tenant in failures.keys() {
            let labels = TenantLabels {
                tenant: tenant.clone(),
            };
            self.policy_activation_failed.get_or_create(&labels).set(1);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
