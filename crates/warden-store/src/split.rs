//! A store whose chain appends run on a thread of their own, and everything else on sqlx.
//!
//! Key decision: appends are the hot path, and on the shared runtime each statement of a
//! batch waited for the writer task to be scheduled behind the requests being served, and
//! for its socket to be polled — while the batch held the chain lock. Both backends
//! therefore append from a dedicated thread: SQLite over rusqlite (`sqlite_appender`),
//! PostgreSQL over sqlx on a runtime of its own (`postgres::start_appender`).

use std::sync::Arc;

use async_trait::async_trait;

use tokio::sync::{mpsc, oneshot};

use crate::append;
use crate::approval::{
    ApprovalChanged, ApprovalDecider, ApprovalFilter, ApprovalRecord, ApprovalSignal, OutboxEntry,
};
use crate::error::StoreError;
use crate::model::{
    Append, Appended, CounterFilter, CounterRow, Event, EventFilter, KeyRecord, NewEvent, NewKey,
    PermitConsumed, PermitUse, PurgeReport, StoredDecision, StoredSnapshot, VerifyReport,
};
use crate::policy_version::{
    PolicyHead, PolicyPublish, PolicySignal, PolicyVersionInfo, Published, StoredPolicy,
};
use crate::proposal::{ProposalFilter, ProposalRecord, ProposalWrite, ProposalWritten};
use crate::session::SessionRecord;
use crate::{Backend, Store};

/// Work for the appender thread, and where its answer goes.
pub(crate) enum Job {
    /// A batch to chain.
    Append {
        batch: Vec<Append>,
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    },
    /// A permit use to count and chain (`Store::consume_permit_use`).
    ConsumePermit {
        // Boxed: an event is large, and every job in the queue would pay for it.
        permit: Box<PermitUse>,
        reply: oneshot::Sender<Result<PermitConsumed, StoreError>>,
    },
    /// A policy version to publish with its event (`Store::publish_policy`).
    PublishPolicy {
        publish: Box<PolicyPublish>,
        /// Its source as stored, deflated before it reaches the thread.
        deflated: Vec<u8>,
        reply: oneshot::Sender<Result<Published, StoreError>>,
    },
    /// A readiness write on the appending connection (`Store::probe_write`).
    Probe {
        now_ms: i64,
        reply: oneshot::Sender<Result<String, StoreError>>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append { batch, .. } => f
                .debug_struct("Append")
                .field("batch", &batch.len())
                .finish_non_exhaustive(),
            Job::ConsumePermit { permit, .. } => f
                .debug_struct("ConsumePermit")
                .field("decision_id", &permit.decision_id)
                .finish_non_exhaustive(),
            Job::PublishPolicy { publish, .. } => f
                .debug_struct("PublishPolicy")
                .field("tenant", &publish.policy.info.tenant)
                .field("revision", &publish.policy.info.revision)
                .finish_non_exhaustive(),
            Job::Probe { now_ms, .. } => f.debug_struct("Probe").field("now_ms", now_ms).finish(),
        }
    }
}

/// The thread a [`Split`] store appends on. Dropping it closes the queue, which ends the
/// thread once the queued jobs are done.
#[derive(Debug)]
pub(crate) struct AppenderThread {
    jobs: mpsc::UnboundedSender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl AppenderThread {
    /// Starts thread `name`, running `work` over the queue of jobs.
    pub fn spawn(
        name: &str,
        work: impl FnOnce(mpsc::UnboundedReceiver<Job>) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || work(queue))
            .map_err(StoreError::Thread)?;
        Ok(Self { jobs, thread })
    }

    /// Appends `batch` on the thread and answers once it is durable.
    async fn append(&self, mut batch: Vec<Append>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Checked here, on the caller's thread: the appender thread is the serial part.
        append::check(&mut batch)?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Append { batch, reply })
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }

    /// Counts a permit use on the thread: it chains an event, so it takes its turn with
    /// the batches.
    async fn consume_permit_use(&self, permit: PermitUse) -> Result<PermitConsumed, StoreError> {
        append::check_permit(&permit)?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::ConsumePermit {
                permit: Box::new(permit),
                reply,
            })
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }

    /// Publishes a policy version on the thread: it chains an event and may carry a large
    /// source, so it takes its turn between batches instead of holding the lock they wait
    /// for.
    async fn publish_policy(&self, publish: PolicyPublish) -> Result<Published, StoreError> {
        crate::policy_version::check(&publish)?;
        let deflated = crate::policy_version::deflate_off_runtime(&publish.policy.source).await?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::PublishPolicy {
                publish: Box::new(publish),
                deflated,
                reply,
            })
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }

    /// Runs the write probe on the thread, behind any batches already queued.
    async fn probe_write(&self, now_ms: i64) -> Result<String, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Probe { now_ms, reply })
            .map_err(|_| StoreError::AppenderStopped)?;
        answer.await.map_err(|_| StoreError::AppenderStopped)?
    }

    /// The thread ends only with the store, or by a panic, after which every append fails
    /// and the store must not report itself ready.
    fn check(&self) -> Result<(), StoreError> {
        if self.thread.is_finished() {
            return Err(StoreError::AppenderStopped);
        }
        Ok(())
    }
}

/// Chain appends to `appender`, everything else to `sql`.
#[derive(Debug)]
pub(crate) struct Split {
    pub sql: Arc<dyn Store>,
    pub appender: AppenderThread,
    /// PostgreSQL: the `LISTEN` task that hears other replicas' decisions.
    pub listener: Option<Listener>,
    /// Without a listener (SQLite): policies published through this store, for this
    /// process.
    pub policy_signals: tokio::sync::broadcast::Sender<PolicySignal>,
    /// Without a listener (SQLite): where `sql` signals approvals, so that the appender's
    /// newly opened ones are announced to this process too. PostgreSQL's appender notifies
    /// in its transaction instead.
    pub opened: Option<tokio::sync::broadcast::Sender<ApprovalSignal>>,
}

/// PostgreSQL's listener for approvals and policies, started with the first subscriber
/// (it needs a runtime) and stopped with the store.
#[derive(Debug)]
pub(crate) struct Listener {
    options: sqlx::postgres::PgConnectOptions,
    signals: crate::postgres::Signals,
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Listener {
    pub fn new(options: sqlx::postgres::PgConnectOptions) -> Self {
        Self {
            options,
            signals: crate::postgres::Signals {
                approvals: tokio::sync::broadcast::channel(crate::sql::SIGNAL_CAPACITY).0,
                policies: tokio::sync::broadcast::channel(crate::sql::SIGNAL_CAPACITY).0,
            },
            task: std::sync::Mutex::new(None),
        }
    }

    /// Starts the listening task if it is not running yet.
    fn start(&self) {
        if let Ok(mut task) = self.task.lock()
            && task.is_none()
        {
            let listen = crate::postgres::listen(self.options.clone(), self.signals.clone());
            *task = Some(tokio::spawn(listen).abort_handle());
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ApprovalSignal> {
        let receiver = self.signals.approvals.subscribe();
        self.start();
        receiver
    }

    fn subscribe_policies(&self) -> tokio::sync::broadcast::Receiver<PolicySignal> {
        let receiver = self.signals.policies.subscribe();
        self.start();
        receiver
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
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
        let Some(opened) = &self.opened else {
            return self.appender.append(batch).await;
        };
        let ids: Vec<String> = batch
            .iter()
            .filter_map(|item| item.approval.as_ref().map(|a| a.id.clone()))
            .collect();
        let results = self.appender.append(batch).await?;
        for id in ids {
            let _ = opened.send(ApprovalSignal::Changed(id));
        }
        Ok(results)
    }

    async fn probe_write(&self, now_ms: i64) -> Result<String, StoreError> {
        self.appender.probe_write(now_ms).await
    }

    async fn consume_permit_use(&self, permit: PermitUse) -> Result<PermitConsumed, StoreError> {
        self.appender.consume_permit_use(permit).await
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

    async fn counters(&self, filter: &CounterFilter) -> Result<Vec<CounterRow>, StoreError> {
        self.sql.counters(filter).await
    }

    async fn prune_counters(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.sql.prune_counters(now_ms).await
    }

    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        self.sql.approval(tenant, id).await
    }

    async fn approvals(&self, filter: &ApprovalFilter) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.sql.approvals(filter).await
    }

    async fn expired_approvals(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.sql.expired_approvals(now_ms, limit).await
    }

    // On sqlx's writer, inside the chain lock (`BEGIN IMMEDIATE` on SQLite, the table lock
    // on PostgreSQL), as purge does: it takes turns with the appender's batches.
    async fn update_approval(
        &self,
        tenant: &str,
        id: &str,
        decide: ApprovalDecider,
    ) -> Result<ApprovalChanged, StoreError> {
        self.sql.update_approval(tenant, id, decide).await
    }

    async fn approval_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<ApprovalSignal>, StoreError> {
        match &self.listener {
            Some(listener) => Ok(listener.subscribe()),
            None => self.sql.approval_signals().await,
        }
    }

    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.sql.claim_webhooks(now_ms, lease_ms, limit).await
    }

    async fn webhook_attempted(
        &self,
        id: &str,
        now_ms: i64,
        error: Option<String>,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.sql
            .webhook_attempted(id, now_ms, error, retry_at_ms)
            .await
    }

    async fn publish_policy(&self, publish: PolicyPublish) -> Result<Published, StoreError> {
        let tenant = publish.policy.info.tenant.clone();
        // A publish that applies a proposal runs on sqlx's writer inside the chain lock, like
        // `update_approval`: the proposal's row and its waiters' signal belong to that store.
        let published = if publish.proposal.is_some() {
            self.sql.publish_policy(publish).await?
        } else {
            self.appender.publish_policy(publish).await?
        };
        // PostgreSQL's listener hears the NOTIFY, this replica's own included.
        if self.listener.is_none() && published == Published::Written {
            let _ = self.policy_signals.send(PolicySignal::Changed(tenant));
        }
        Ok(published)
    }

    async fn policy_heads(&self) -> Result<Vec<PolicyHead>, StoreError> {
        self.sql.policy_heads().await
    }

    async fn policy(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        self.sql.policy(tenant, revision).await
    }

    async fn policy_info(
        &self,
        tenant: &str,
        revision: Option<i64>,
    ) -> Result<Option<PolicyVersionInfo>, StoreError> {
        self.sql.policy_info(tenant, revision).await
    }

    async fn policy_versions(
        &self,
        tenant: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<PolicyVersionInfo>, StoreError> {
        self.sql.policy_versions(tenant, before, limit).await
    }

    async fn policy_signals(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<PolicySignal>, StoreError> {
        match &self.listener {
            Some(listener) => Ok(listener.subscribe_policies()),
            None => Ok(self.policy_signals.subscribe()),
        }
    }

    async fn snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.sql.snapshots(tenant, since_ms, after, limit).await
    }

    async fn recent_snapshots(
        &self,
        tenant: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.sql.recent_snapshots(tenant, since_ms, limit).await
    }

    async fn clear_snapshots(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.sql.clear_snapshots(older_than_ms).await
    }

    async fn record_shadow_tally(
        &self,
        tenant: &str,
        revision: i64,
        replica: &str,
        tally: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.sql
            .record_shadow_tally(tenant, revision, replica, tally, now_ms)
            .await
    }

    async fn shadow_tallies(&self, tenant: &str, revision: i64) -> Result<Vec<String>, StoreError> {
        self.sql.shadow_tallies(tenant, revision).await
    }

    // On sqlx's writer inside the chain lock, as `update_approval`: no large row.
    async fn end_policy_shadow(
        &self,
        tenant: &str,
        event: NewEvent,
    ) -> Result<Option<PolicyVersionInfo>, StoreError> {
        let ended = self.sql.end_policy_shadow(tenant, event).await?;
        if self.listener.is_none() && ended.is_some() {
            let _ = self
                .policy_signals
                .send(PolicySignal::Changed(tenant.to_owned()));
        }
        Ok(ended)
    }

    async fn decision_events(
        &self,
        tenant: &str,
        decision_ids: &[String],
    ) -> Result<Vec<Event>, StoreError> {
        self.sql.decision_events(tenant, decision_ids).await
    }

    // On sqlx's writer inside the chain lock, as `update_approval`.
    async fn write_proposal(&self, write: ProposalWrite) -> Result<ProposalWritten, StoreError> {
        self.sql.write_proposal(write).await
    }

    async fn proposal(&self, tenant: &str, id: &str) -> Result<Option<ProposalRecord>, StoreError> {
        self.sql.proposal(tenant, id).await
    }

    async fn proposals(&self, filter: &ProposalFilter) -> Result<Vec<ProposalRecord>, StoreError> {
        self.sql.proposals(filter).await
    }

    async fn count_proposals(
        &self,
        tenant: &str,
        agent: &str,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        self.sql.count_proposals(tenant, agent, since_ms).await
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.sql.create_session(session).await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.sql.session(id_hash).await
    }

    async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.sql.touch_session(id_hash, now_ms).await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        self.sql.delete_session(id_hash).await
    }

    async fn prune_sessions(&self, now_ms: i64, idle_before_ms: i64) -> Result<u64, StoreError> {
        self.sql.prune_sessions(now_ms, idle_before_ms).await
    }
}
