//! The compiled policies the server decides with, and how they change. The store is the
//! truth: each tenant's policy is its active stored version (`default`'s for tenants without
//! their own). The policy folder only seeds a tenant's first version, and on a reload
//! publishes a changed file as a new version.
//!
//! Key decisions:
//!
//! - **One way in.** A publish, a rollback, a reload of a file and a seed all go through
//!   [`Policies::submit`]: compile, check the version against the active one, publish in
//!   the store under the chain lock with its `policy_published` event (refused if another
//!   replica published first, then decided again), then swap it in here.
//! - **Every replica follows the store.** [`Policies::follow`] re-reads a tenant's active
//!   version when the store signals a change (PostgreSQL `NOTIFY`) and compares every
//!   tenant's head on a timer in case a signal was lost. A version this replica cannot
//!   compile is never swapped in: the previous one stays, and the failure is audited and
//!   shown on `/readyz` and `/metrics`.
//! - **Swaps are atomic per tenant**: a request sees a tenant's old policy or its new one,
//!   never a mix, and one tenant's broken file never blocks another's.

use crate::rollback::{AutoRollback, Verdict, Watch};
use crate::shadow::{Shadow, ShadowQueue, Tally};
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warden_policy::{Action, Decision, Env, Policy, PolicyError};
use warden_store::{
    Append, NewEvent, PolicyPublish, PolicySignal, PolicyVersionInfo, Published, Store,
    StoredPolicy, kind, policy_status,
};

/// The tenant whose policy applies to tenants without their own.
pub const DEFAULT_TENANT: &str = "default";

/// How often a replica compares every tenant's active version with the store's, in case a
/// change signal was lost.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// A policy in force: the compiled form and which stored version it is.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The tenant whose version it is (`default` for the shared one).
    pub tenant: String,
    /// The compiled policy.
    pub policy: Policy,
    /// The stored revision (1, 2, 3, … per tenant).
    pub revision: i64,
    /// The lowercase hex SHA-256 of its source.
    pub hash: String,
}

/// Every tenant's policy at one moment.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    by_tenant: BTreeMap<String, Arc<LoadedPolicy>>,
}

impl PolicySet {
    /// The policy for `tenant`: its own, else `default`, else none.
    pub fn for_tenant(&self, tenant: &str) -> Option<&Arc<LoadedPolicy>> {
        self.by_tenant
            .get(tenant)
            .or_else(|| self.by_tenant.get(DEFAULT_TENANT))
    }

    /// The tenant's own policy, without falling back to `default`.
    pub fn own(&self, tenant: &str) -> Option<&Arc<LoadedPolicy>> {
        self.by_tenant.get(tenant)
    }

    /// Tenant names and their policy versions, in name order.
    pub fn versions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_tenant
            .iter()
            .map(|(t, p)| (t.as_str(), p.policy.version().as_str()))
    }

    /// Tenant names and their stored revisions, in name order.
    pub fn revisions(&self) -> impl Iterator<Item = (&str, i64)> {
        self.by_tenant.iter().map(|(t, p)| (t.as_str(), p.revision))
    }

    /// Whether no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

/// Why policies could not be loaded at start. Each line is `file:line:col: message` or
/// says what failed.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct LoadError {
    /// Every problem found.
    pub problems: Vec<String>,
}

/// Why a submission was not published.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The document does not compile; every problem, positioned.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<PolicyError>),
    /// Its `version` is not greater than the active one's.
    #[error("version `{submitted}` is not greater than the active version `{active}`")]
    NotNewer {
        /// The document's version.
        submitted: String,
        /// The active version's.
        active: String,
    },
    /// Other publishes kept coming first.
    #[error("other publishes for this tenant kept coming first; try again")]
    Contended,
    /// A proposal's candidate was analyzed against a live version that is no longer live.
    #[error("the live policy changed since the proposal was analyzed")]
    PolicyChanged,
    /// The proposal the publish applies could not be written as expected (decided
    /// elsewhere, or the proposals it supersedes changed); nothing was published.
    #[error("the proposal changed meanwhile")]
    ProposalStale(Box<warden_store::ProposalWritten>),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] warden_store::StoreError),
}

/// What caused a publish, recorded in its event.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// `POST /v1/policy`.
    Publish,
    /// `POST /v1/policy/rollback`: the source of this earlier revision, again.
    Rollback {
        /// The revision whose source was published again.
        from: i64,
    },
    /// A changed file, on `POST /v1/policy/reload` or SIGHUP.
    Reload,
    /// A tenant's first version, from its file at start.
    Seed,
    /// The parent of a version that failed to evaluate too often, published back.
    AutoRollback {
        /// The revision rolled back (it becomes `failed`).
        failed: i64,
        /// The revision whose source is published again.
        from: i64,
        /// The figures it was decided on.
        verdict: Verdict,
    },
    /// `POST /v1/policy/shadow`: a candidate to run beside the active version, never
    /// enforced; `from` when it is an earlier revision's source.
    Shadow {
        /// The revision whose source runs in shadow.
        from: Option<i64>,
    },
    /// An agent's proposal, applied by its review or by a human: published only while the
    /// live version (the tenant's own, else `default`'s) is still the one analyzed, with
    /// the proposal's row written in the same transaction.
    Proposal {
        /// The proposal's id.
        id: String,
        /// The content hash of the live version its candidate was analyzed against.
        analyzed: String,
        /// The proposal's insert or update.
        write: Box<warden_store::ProposalWrite>,
    },
}

impl Cause {
    /// How events name it: `publish`, `rollback`, `reload`, `seed`, `shadow`,
    /// `auto_rollback`, `proposal`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Rollback { .. } => "rollback",
            Self::Reload => "reload",
            Self::Seed => "seed",
            Self::Shadow { .. } => "shadow",
            Self::AutoRollback { .. } => "auto_rollback",
            Self::Proposal { .. } => "proposal",
        }
    }

    /// Whether the version must be greater than the active one: a rollback publishes an
    /// older document again on purpose, and a shadow is not enforced.
    fn must_be_newer(&self) -> bool {
        !matches!(
            self,
            Self::Rollback { .. } | Self::Shadow { .. } | Self::AutoRollback { .. }
        )
    }

    fn is_shadow(&self) -> bool {
        matches!(self, Self::Shadow { .. })
    }
}

/// A document to publish for a tenant.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The tenant.
    pub tenant: String,
    /// The document, as submitted.
    pub source: String,
    /// Who publishes it: a key id, or `file` / `sighup`.
    pub author: String,
    /// The publisher's comment.
    pub comment: Option<String>,
    /// Why.
    pub cause: Cause,
    /// When, unix milliseconds.
    pub now_ms: i64,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Published as this version, and in force on this replica.
    Published(PolicyVersionInfo),
    /// The document is the active version already (same content hash): nothing changed.
    Unchanged(PolicyVersionInfo),
}

/// A stored version this replica could not put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationFailure {
    /// The revision that failed.
    pub revision: i64,
    /// Its version.
    pub version: String,
    /// The first problem, positioned.
    pub problem: String,
}

/// The lowercase hex SHA-256 of a policy source: its content hash.
pub fn content_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// The live policies, the store they follow and the folder that seeds them.
#[derive(Debug)]
pub struct Policies {
    store: Arc<dyn Store>,
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    /// Activations on this replica take turns, so an older version never replaces a newer.
    turn: tokio::sync::Mutex<()>,
    /// Tenants whose active stored version this replica could not compile.
    failures: Mutex<BTreeMap<String, ActivationFailure>>,
    /// Candidates running in shadow, by tenant.
    shadows: ArcSwap<BTreeMap<String, Arc<Shadow>>>,
    /// Where decisions offer their actions to the shadows.
    shadow_queue: ShadowQueue,
    /// When a new version is rolled back for its evaluation errors.
    auto_rollback: Mutex<AutoRollback>,
    /// Newly activated versions under watch, by the tenant whose version they are.
    watches: ArcSwap<BTreeMap<String, Arc<Watch>>>,
    /// Automatic rollbacks this replica made, by tenant.
    rollbacks: Mutex<BTreeMap<String, u64>>,
    /// This process among the replicas, for the shadow tallies it records.
    replica: String,
}

/// The author recorded on versions published by automatic rollback; they are not watched
/// themselves, so a rollback never cascades.
pub const AUTO_ROLLBACK_AUTHOR: &str = "auto_rollback";

/// How many times a submission is decided again after losing a race to another publish.
const SUBMIT_ATTEMPTS: usize = 8;

impl Policies {
    /// Seeds every tenant that has a file in `dir` but no version in the store, then loads
    /// every tenant's active version. A stored version that does not compile here, or a
    /// seed file that does not, refuses the start: a replica never serves without the
    /// policy it was given.
    pub async fn open(store: Arc<dyn Store>, dir: &Path) -> Result<Self, LoadError> {
        let policies = Self {
            store,
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(PolicySet::default()),
            turn: tokio::sync::Mutex::new(()),
            failures: Mutex::new(BTreeMap::new()),
            shadows: ArcSwap::from_pointee(BTreeMap::new()),
            shadow_queue: ShadowQueue::start().map_err(|e| LoadError {
                problems: vec![format!("cannot start the shadow evaluator: {e}")],
            })?,
            auto_rollback: Mutex::new(AutoRollback::default()),
            watches: ArcSwap::from_pointee(BTreeMap::new()),
            rollbacks: Mutex::new(BTreeMap::new()),
            replica: crate::ids::random_base32(16),
        };
        let stored = policies.heads().await?;
        let mut problems = Vec::new();
        for (tenant, path) in policies.files()? {
            if stored.contains_key(&tenant) {
                continue;
            }
            let source = match read(dir, &path) {
                Ok(source) => source,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let submission = Submission {
                tenant: tenant.clone(),
                source,
                author: "file".to_owned(),
                comment: Some(format!("seeded from {}", relative(dir, &path))),
                cause: Cause::Seed,
                now_ms: crate::state::now_ms(),
            };
            match policies.submit(submission).await {
                Ok(_) => {}
                Err(SubmitError::Invalid(errors)) => problems.extend(
                    errors
                        .iter()
                        .map(|e| format!("{}:{e}", relative(dir, &path))),
                ),
                Err(e) => problems.push(format!("{}: {e}", relative(dir, &path))),
            }
        }
        if !problems.is_empty() {
            return Err(LoadError { problems });
        }
        for tenant in policies.heads().await?.into_keys() {
            if let Err(problem) = policies.sync(&tenant).await {
                problems.push(problem);
            }
        }
        let failures = policies.failures();
        problems.extend(failures.iter().map(|(tenant, f)| {
            format!(
                "the active policy of `{tenant}` (revision {}) does not compile: {}",
                f.revision, f.problem
            )
        }));
        if problems.is_empty() {
            Ok(policies)
        } else {
            Err(LoadError { problems })
        }
    }

    /// The set in force now. Cheap: an atomic load.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The folder policies are seeded and reloaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tenants whose active stored version this replica could not compile (it keeps their
    /// previous one).
    pub fn failures(&self) -> BTreeMap<String, ActivationFailure> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Compiles `submission`, checks its version and publishes it as the tenant's next
    /// version, then puts it in force here. Refused with every problem if it does not
    /// compile, or if its version is not greater than the active one (but for a
    /// rollback); unchanged if its content is the active version's.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, SubmitError> {
        self.publish(submission, None).await
    }

    /// [`Policies::submit`] of a document compiled already, as `compiled` (a proposal's
    /// candidate, which its review compiled from exactly `submission.source`).
    pub async fn submit_compiled(
        &self,
        submission: Submission,
        compiled: Policy,
    ) -> Result<Submitted, SubmitError> {
        self.publish(submission, Some(compiled)).await
    }

    async fn publish(
        &self,
        submission: Submission,
        compiled: Option<Policy>,
    ) -> Result<Submitted, SubmitError> {
        // Compiling and hashing a large policy take milliseconds: off the runtime.
        let source = submission.source.clone();
        let (compiled, hash) = tokio::task::spawn_blocking(move || {
            let hash = content_hash(&source);
            (compiled.map_or_else(|| Policy::parse(&source), Ok), hash)
        })
        .await
        .map_err(|_| SubmitError::Invalid(vec![]))?;
        let compiled =
            compiled.map_err(|errors| SubmitError::Invalid(errors.iter().cloned().collect()))?;
        let mut compiled = Some(compiled);
        for _ in 0..SUBMIT_ATTEMPTS {
            let latest = self
                .store
                .policy_versions(&submission.tenant, None, 1)
                .await?
                .first()
                .map_or(0, |v| v.revision);
            // Only what is known of it: a large policy's source is hundreds of kilobytes.
            let active = self.store.policy_info(&submission.tenant, None).await?;
            if let Cause::AutoRollback { failed, .. } = &submission.cause
                && let Some(active) = active.as_ref().filter(|a| a.revision != *failed)
            {
                // Another replica (or a person) replaced it first.
                return Ok(Submitted::Unchanged(active.clone()));
            }
            if let Cause::Proposal { analyzed, .. } = &submission.cause {
                let live = match &active {
                    Some(active) => Some(active.hash.clone()),
                    None => self
                        .store
                        .policy_info(DEFAULT_TENANT, None)
                        .await?
                        .map(|d| d.hash),
                };
                if live.as_ref() != Some(analyzed) {
                    return Err(SubmitError::PolicyChanged);
                }
            }
            if let Some(active) = active.as_ref().filter(|_| !submission.cause.is_shadow()) {
                if active.hash == hash {
                    return Ok(Submitted::Unchanged(active.clone()));
                }
                // The stored semver, not a recompile: this runs on the request runtime.
                let newer = warden_policy::Version::parse(&active.version).is_none_or(|old| {
                    compiled
                        .as_ref()
                        .is_some_and(|new| new.version().parts() > old.parts())
                });
                if submission.cause.must_be_newer() && !newer {
                    return Err(SubmitError::NotNewer {
                        submitted: compiled
                            .as_ref()
                            .map(|p| p.version().as_str().to_owned())
                            .unwrap_or_default(),
                        active: active.version.clone(),
                    });
                }
            }
            let Some(policy) = compiled.take() else {
                break;
            };
            let parent = active.as_ref().map(|a| a.revision);
            let info = PolicyVersionInfo {
                tenant: submission.tenant.clone(),
                revision: latest + 1,
                version: policy.version().as_str().to_owned(),
                hash: hash.clone(),
                parent,
                author: submission.author.clone(),
                comment: submission.comment.clone(),
                created_at_ms: submission.now_ms,
                status: if submission.cause.is_shadow() {
                    policy_status::SHADOW
                } else {
                    policy_status::ACTIVE
                }
                .to_owned(),
            };
            let event = published_event(&info, &submission.cause);
            let publish = PolicyPublish {
                policy: StoredPolicy {
                    info: info.clone(),
                    source: submission.source.clone(),
                },
                previous_becomes: if matches!(submission.cause, Cause::AutoRollback { .. }) {
                    policy_status::FAILED
                } else {
                    policy_status::SUPERSEDED
                },
                event,
                proposal: match &submission.cause {
                    Cause::Proposal { write, .. } => Some(write.as_ref().clone()),
                    _ => None,
                },
            };
            // The turn is held from the write to the swap: the write wakes this replica's
            // own follower, which would otherwise read and compile the version once more.
            let turn = self.turn.lock().await;
            match self.store.publish_policy(publish).await? {
                Published::Written if submission.cause.is_shadow() => {
                    self.install_shadow(Shadow::new(info.clone(), policy));
                    return Ok(Submitted::Published(info));
                }
                Published::Written => {
                    self.swap(&info, policy);
                    return Ok(Submitted::Published(info));
                }
                Published::Conflict { .. } => {
                    drop(turn);
                    compiled = Some(policy);
                }
                Published::ProposalStale(found) => return Err(SubmitError::ProposalStale(found)),
            }
        }
        Err(SubmitError::Contended)
    }

    /// Swaps the version `info` in for its tenant unless a newer revision is in force
    /// already, and opens the watch of a version that replaced another. The caller holds
    /// the turn.
    fn swap(&self, info: &PolicyVersionInfo, policy: Policy) {
        let tenant = info.tenant.as_str();
        let old = self.current.load_full();
        if old.own(tenant).is_some_and(|p| p.revision >= info.revision) {
            return;
        }
        let mut set = PolicySet::clone(&old);
        set.by_tenant.insert(
            tenant.to_owned(),
            Arc::new(LoadedPolicy {
                tenant: tenant.to_owned(),
                policy,
                revision: info.revision,
                hash: info.hash.clone(),
            }),
        );
        self.current.store(Arc::new(set));
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(tenant);
        }
        retire(old);
        let settings = self.auto_rollback.lock().map(|s| *s).unwrap_or_default();
        let mut watches = BTreeMap::clone(&self.watches.load());
        match info.parent {
            Some(parent)
                if settings.max_error_rate.is_some() && info.author != AUTO_ROLLBACK_AUTHOR =>
            {
                watches.insert(
                    tenant.to_owned(),
                    Arc::new(Watch::new(info.revision, parent, settings)),
                );
            }
            _ => {
                watches.remove(tenant);
            }
        }
        self.watches.store(Arc::new(watches));
    }

    /// Sets when a new version is rolled back for its evaluation errors (from the next
    /// activation on).
    pub fn set_auto_rollback(&self, settings: AutoRollback) {
        if let Ok(mut current) = self.auto_rollback.lock() {
            *current = settings;
        }
    }

    /// Automatic rollbacks this replica made, by tenant.
    pub fn rollbacks(&self) -> BTreeMap<String, u64> {
        self.rollbacks.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Counts a decision of `loaded` for its watch, if one is open; the decision that
    /// closes the watch over the threshold starts the rollback (in the background).
    pub fn observe(self: &Arc<Self>, loaded: &LoadedPolicy, failed: bool) {
        let watches = self.watches.load();
        let Some(watch) = watches.get(&loaded.tenant) else {
            return;
        };
        if watch.revision != loaded.revision {
            return;
        }
        if let Some(verdict) = watch.observe(failed) {
            let (policies, watch) = (Arc::clone(self), Arc::clone(watch));
            let tenant = loaded.tenant.clone();
            tokio::spawn(async move { policies.roll_back(&tenant, &watch, verdict).await });
        }
    }

    /// Publishes the watched version's parent back, the watched one becoming `failed`.
    async fn roll_back(&self, tenant: &str, watch: &Watch, verdict: Verdict) {
        tracing::warn!(
            tenant,
            revision = watch.revision,
            decisions = verdict.decisions,
            errors = verdict.errors,
            "a new policy version fails to evaluate too often; rolling back to its parent"
        );
        let parent = match self.store.policy(tenant, Some(watch.parent)).await {
            Ok(Some(parent)) => parent,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(tenant, error = %e, "cannot read the version to roll back to");
                return;
            }
        };
        let submission = Submission {
            tenant: tenant.to_owned(),
            source: parent.source,
            author: AUTO_ROLLBACK_AUTHOR.to_owned(),
            comment: Some(format!(
                "revision {} failed to evaluate {} of its first {} decisions here",
                watch.revision, verdict.errors, verdict.decisions
            )),
            cause: Cause::AutoRollback {
                failed: watch.revision,
                from: watch.parent,
                verdict,
            },
            now_ms: crate::state::now_ms(),
        };
        match self.submit(submission).await {
            Ok(Submitted::Published(info)) => {
                if let Ok(mut rollbacks) = self.rollbacks.lock() {
                    *rollbacks.entry(tenant.to_owned()).or_default() += 1;
                }
                tracing::warn!(tenant, revision = info.revision, "rolled back");
            }
            Ok(Submitted::Unchanged(_)) => {}
            Err(e) => tracing::error!(tenant, error = %e, "the automatic rollback failed"),
        }
    }

    /// The candidate running in shadow for `tenant` on this replica.
    pub fn shadow(&self, tenant: &str) -> Option<Arc<Shadow>> {
        self.shadows.load().get(tenant).cloned()
    }

    /// Offers a decided action to the tenant's shadow, if it has one: a map lookup when it
    /// has none, a copy of the action and an enqueue when it has.
    pub fn offer_shadow(
        &self,
        tenant: &str,
        action: &Action,
        env: &Env,
        decision: &Decision,
        decision_id: &str,
    ) {
        if let Some(shadow) = self.shadow(tenant) {
            self.shadow_queue
                .offer(shadow, action.clone(), env.clone(), decision, decision_id);
        }
    }

    /// Records this replica's tally of `shadow` in the store.
    async fn record_tally(&self, shadow: &Shadow) -> Result<(), warden_store::StoreError> {
        let tally = serde_json::to_string(&shadow.tally()).unwrap_or_default();
        self.store
            .record_shadow_tally(
                &shadow.info.tenant,
                shadow.info.revision,
                &self.replica,
                &tally,
                crate::state::now_ms(),
            )
            .await
    }

    /// Records every local shadow's tally: on the follower's tick, so a fleet tally is at
    /// most a tick behind on other replicas.
    async fn record_tallies(&self) {
        for shadow in self.shadows.load().values() {
            if let Err(e) = self.record_tally(shadow).await {
                tracing::warn!(error = %e, "cannot record a shadow tally; will try again");
            }
        }
    }

    /// What the tenant's shadow found on every replica: this one's count now, the others'
    /// as last recorded.
    pub async fn fleet_tally(&self, shadow: &Shadow) -> Result<Tally, warden_store::StoreError> {
        self.record_tally(shadow).await?;
        let mut fleet = Tally::default();
        for text in self
            .store
            .shadow_tallies(&shadow.info.tenant, shadow.info.revision)
            .await?
        {
            if let Ok(tally) = serde_json::from_str::<Tally>(&text) {
                fleet.merge(tally);
            }
        }
        Ok(fleet)
    }

    /// Ends the tenant's shadow with its `policy_shadow_ended` event (holding the tally of
    /// every replica), on every replica. `None` when it has none.
    pub async fn end_shadow(
        &self,
        tenant: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<(PolicyVersionInfo, Tally)>, warden_store::StoreError> {
        let tally = match self.shadow(tenant) {
            Some(shadow) => self.fleet_tally(&shadow).await?,
            None => Tally::default(),
        };
        let _turn = self.turn.lock().await;
        let event = NewEvent {
            id: crate::ids::ulid(now_ms),
            time_ms: now_ms,
            tenant: tenant.to_owned(),
            kind: kind::POLICY_SHADOW_ENDED.to_owned(),
            detail: json!({
                "by": by,
                "decisions": tally.decisions,
                "agreed": tally.agreed,
                "dropped": tally.dropped,
                "disagreements": tally.disagreements.iter()
                    .map(|(kind, d)| (kind.clone(), Value::from(d.count)))
                    .collect::<serde_json::Map<_, _>>(),
            }),
            ..NewEvent::default()
        };
        let Some(mut ended) = self.store.end_policy_shadow(tenant, event).await? else {
            return Ok(None);
        };
        if let Some(shadow) = self.remove_shadow(tenant) {
            ended.version = shadow.info.version.clone();
        }
        Ok(Some((ended, tally)))
    }

    fn install_shadow(&self, shadow: Shadow) {
        let mut map = BTreeMap::clone(&self.shadows.load());
        map.insert(shadow.info.tenant.clone(), Arc::new(shadow));
        self.shadows.store(Arc::new(map));
    }

    fn remove_shadow(&self, tenant: &str) -> Option<Arc<Shadow>> {
        let mut map = BTreeMap::clone(&self.shadows.load());
        let removed = map.remove(tenant);
        if removed.is_some() {
            self.shadows.store(Arc::new(map));
        }
        removed
    }

    /// Brings `tenant` in line with its active and shadow stored versions. An active
    /// version that does not compile here is recorded as a failure (audited once) and the
    /// previous stays.
    async fn sync(&self, tenant: &str) -> Result<(), String> {
        let _turn = self.turn.lock().await;
        let heads = self
            .store
            .policy_heads()
            .await
            .map_err(|e| format!("cannot read the policies of `{tenant}`: {e}"))?;
        let head = |status: &str| {
            heads
                .iter()
                .find(|h| h.tenant == tenant && h.status == status)
                .map(|h| h.revision)
        };
        let shadow = head(policy_status::SHADOW);
        if let Some(active) = head(policy_status::ACTIVE) {
            self.sync_active(tenant, active).await?;
        }
        match shadow {
            None => {
                self.remove_shadow(tenant);
            }
            Some(revision)
                if self
                    .shadow(tenant)
                    .is_some_and(|s| s.info.revision == revision) => {}
            Some(revision) => self.sync_shadow(tenant, revision).await?,
        }
        Ok(())
    }

    async fn read(&self, tenant: &str, revision: i64) -> Result<Option<StoredPolicy>, String> {
        self.store
            .policy(tenant, Some(revision))
            .await
            .map_err(|e| format!("cannot read the policy of `{tenant}`: {e}"))
    }

    async fn sync_shadow(&self, tenant: &str, revision: i64) -> Result<(), String> {
        let Some(stored) = self.read(tenant, revision).await? else {
            return Ok(());
        };
        let source = stored.source;
        match tokio::task::spawn_blocking(move || Policy::parse(&source)).await {
            Ok(Ok(policy)) => self.install_shadow(Shadow::new(stored.info, policy)),
            _ => {
                tracing::warn!(
                    tenant,
                    revision,
                    "a shadow policy does not compile here; it does not run on this replica"
                );
                self.remove_shadow(tenant);
            }
        }
        Ok(())
    }

    async fn sync_active(&self, tenant: &str, revision: i64) -> Result<(), String> {
        let current = self.current.load();
        if current.own(tenant).is_some_and(|p| p.revision >= revision) {
            return Ok(());
        }
        if self
            .failures()
            .get(tenant)
            .is_some_and(|f| f.revision == revision)
        {
            return Ok(());
        }
        let Some(stored) = self.read(tenant, revision).await? else {
            return Ok(());
        };
        let source = stored.source;
        // A new version is mostly the one in force: compiled like it, each condition and
        // template that did not change is reused instead of parsed again.
        let like = current.own(tenant).cloned();
        let compiled = tokio::task::spawn_blocking(move || match like {
            Some(like) => Policy::parse_like(&source, &like.policy),
            None => Policy::parse(&source),
        })
        .await
        .map_err(|_| format!("the compile of `{tenant}`'s policy failed"))?;
        match compiled {
            Ok(policy) => {
                self.swap(&stored.info, policy);
                tracing::info!(
                    tenant,
                    revision = stored.info.revision,
                    version = %stored.info.version,
                    "policy version in force"
                );
            }
            Err(errors) => {
                let problem = errors
                    .iter()
                    .next()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::error!(
                    tenant,
                    revision = stored.info.revision,
                    %problem,
                    "a published policy version does not compile here; the previous one stays in force"
                );
                let failure = ActivationFailure {
                    revision: stored.info.revision,
                    version: stored.info.version.clone(),
                    problem,
                };
                self.audit_failure(tenant, &stored.info, &failure).await;
                if let Ok(mut failures) = self.failures.lock() {
                    failures.insert(tenant.to_owned(), failure);
                }
            }
        }
        Ok(())
    }

    async fn audit_failure(
        &self,
        tenant: &str,
        info: &PolicyVersionInfo,
        failure: &ActivationFailure,
    ) {
        let now = crate::state::now_ms();
        let kept = self.current.load().own(tenant).map(|p| p.revision);
        let event = NewEvent {
            id: crate::ids::ulid(now),
            time_ms: now,
            tenant: tenant.to_owned(),
            kind: kind::POLICY_ACTIVATION_FAILED.to_owned(),
            policy_version: Some(info.version.clone()),
            policy_hash: Some(info.hash.clone()),
            detail: json!({
                "revision": info.revision,
                "kept_revision": kept,
                "problem": failure.problem,
            }),
            ..NewEvent::default()
        };
        if self
            .store
            .append(vec![Append::new(event, None)])
            .await
            .is_err()
        {
            tracing::error!(tenant, "a policy activation failure could not be audited");
        }
    }

    /// Every tenant's active and shadow revisions in the store.
    async fn heads(&self) -> Result<BTreeMap<String, (Option<i64>, Option<i64>)>, LoadError> {
        let heads = self.store.policy_heads().await.map_err(|e| LoadError {
            problems: vec![format!("cannot read the stored policies: {e}")],
        })?;
        let mut by_tenant: BTreeMap<String, (Option<i64>, Option<i64>)> = BTreeMap::new();
        for head in heads {
            let entry = by_tenant.entry(head.tenant).or_default();
            if head.status == policy_status::SHADOW {
                entry.1 = Some(head.revision);
            } else {
                entry.0 = Some(head.revision);
            }
        }
        Ok(by_tenant)
    }

    /// Re-reads every tenant whose active or shadow revision in the store is not the one in
    /// force here.
    async fn resync(&self) {
        let Ok(heads) = self.heads().await else {
            tracing::warn!("cannot read the stored policies; will try again");
            return;
        };
        let current = self.current();
        let shadows = self.shadows.load_full();
        let stale = shadows
            .keys()
            .filter(|t| heads.get(*t).is_none_or(|h| h.1.is_none()))
            .cloned()
            .collect::<Vec<_>>();
        for (tenant, (active, shadow)) in &heads {
            let here = (
                current.own(tenant).map(|p| p.revision),
                shadows.get(tenant).map(|s| s.info.revision),
            );
            if here != (*active, *shadow)
                && let Err(problem) = self.sync(tenant).await
            {
                tracing::warn!(%problem, "cannot follow a policy change; will try again");
            }
        }
        for tenant in stale {
            self.remove_shadow(&tenant);
        }
    }

    /// Follows the store forever: a signalled tenant is re-read at once, and every tenant's
    /// head is compared every `poll` in case a signal was lost. Run it as a task.
    pub async fn follow(self: Arc<Self>, poll: Duration) {
        let mut signals = match self.store.policy_signals().await {
            Ok(signals) => Some(signals),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear policy changes; polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signal = async {
                match signals.as_mut() {
                    Some(signals) => signals.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                heard = signal => match heard {
                    Ok(PolicySignal::Changed(tenant)) => {
                        if let Err(problem) = self.sync(&tenant).await {
                            tracing::warn!(%problem, "cannot follow a policy change; will try again");
                        }
                    }
                    Ok(PolicySignal::Resync)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => signals = None,
                },
                _ = tick.tick() => {
                    self.resync().await;
                    self.record_tallies().await;
                }
            }
        }
    }

    /// Every policy file in the folder as `(tenant, path)`, in name order. Two files for
    /// one tenant are refused.
    pub fn files(&self) -> Result<Vec<(String, PathBuf)>, LoadError> {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut problems = Vec::new();
        for path in list(&self.dir)? {
            let Some(tenant) = tenant_of(&path) else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            if let Some((_, first)) = files.iter().find(|(t, _)| *t == tenant) {
                problems.push(format!(
                    "{}: tenant `{tenant}` already has a policy in {}",
                    relative(&self.dir, &path),
                    relative(&self.dir, first)
                ));
                continue;
            }
            files.push((tenant, path));
        }
        if problems.is_empty() {
            Ok(files)
        } else {
            Err(LoadError { problems })
        }
    }

    /// Reads one file of the folder; problems name it relative to the folder.
    pub fn read_file(&self, path: &Path) -> Result<String, String> {
        read(&self.dir, path)
    }

    /// A file's name relative to the folder: what errors show instead of server paths.
    pub fn file_name(&self, path: &Path) -> String {
        relative(&self.dir, path)
    }
}

/// Frees a replaced set on a blocking thread once no request holds it: freeing a large
/// policy takes milliseconds, which must not land on a request or on a runtime worker.
fn retire(old: Arc<PolicySet>) {
    let free = move || {
        while Arc::strong_count(&old) > 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(old);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(free);
        }
        Err(_) => free(),
    }
}

/// The `policy_published` (or `policy_shadow_started`) event of a version.
fn published_event(info: &PolicyVersionInfo, cause: &Cause) -> NewEvent {
    let mut detail = json!({
        "revision": info.revision,
        "parent": info.parent,
        "cause": cause.name(),
        "by": info.author,
    });
    if let Value::Object(fields) = &mut detail {
        if let Some(comment) = &info.comment {
            fields.insert("comment".into(), Value::String(comment.clone()));
        }
        if let Cause::Rollback { from } | Cause::Shadow { from: Some(from) } = cause {
            fields.insert("from_revision".into(), Value::from(*from));
        }
        if let Cause::Proposal { id, .. } = cause {
            fields.insert("proposal_id".into(), Value::String(id.clone()));
        }
        if let Cause::AutoRollback {
            failed,
            from,
            verdict,
        } = cause
        {
            fields.insert("from_revision".into(), Value::from(*from));
            fields.insert("failed_revision".into(), Value::from(*failed));
            fields.insert("decisions".into(), Value::from(verdict.decisions));
            fields.insert("errors".into(), Value::from(verdict.errors));
            fields.insert("max_error_rate".into(), Value::from(verdict.max_error_rate));
        }
    }
    NewEvent {
        id: crate::ids::ulid(info.created_at_ms),
        time_ms: info.created_at_ms,
        tenant: info.tenant.clone(),
        kind: if cause.is_shadow() {
            kind::POLICY_SHADOW_STARTED
        } else {
            kind::POLICY_PUBLISHED
        }
        .to_owned(),
        policy_version: Some(info.version.clone()),
        policy_hash: Some(info.hash.clone()),
        detail,
        ..NewEvent::default()
    }
}

/// A tenant name from a file name: `acme.yaml` → `acme`. Test files and other extensions
/// are not policies.
fn tenant_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .or_else(|| name.strip_suffix(".json"))?;
    if stem.ends_with("_test") || stem.is_empty() || stem.starts_with('.') {
        return None;
    }
    Some(stem.to_owned())
}

/// A file's name relative to the policy folder: errors never show the server's paths.
fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// The folder's entries, sorted. A missing folder has none.
fn list(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let fail = |e: std::io::Error| LoadError {
        problems: vec![format!("the policy folder cannot be read: {e}")],
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(fail)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn read(dir: &Path, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", relative(dir, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_map_to_tenants() {
        let cases = [
            ("acme.yaml", Some("acme")),
            ("acme.yml", Some("acme")),
            ("acme.json", Some("acme")),
            ("acme_test.yaml", None),
            (".hidden.yaml", None),
            ("notes.txt", None),
        ];
        for (name, tenant) in cases {
            assert_eq!(tenant_of(Path::new(name)).as_deref(), tenant, "{name}");
        }
    }
}
