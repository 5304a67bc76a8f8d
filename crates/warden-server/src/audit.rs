//! The audit writer: every event the server records goes through one task that batches
//! whatever is waiting into a single store transaction (group commit), and answers each
//! request only once its event is durable. Also the server's digest key, which turns
//! payloads and contexts into keyed digests so the log references them without copying.

use crate::metrics::Metrics;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use warden_policy::Action;
use warden_store::{Append, Appended, NewEvent, Sorted, Store};

/// Most events in one transaction. Larger batches amortize the fsync further but hold the
/// chain lock longer; at this size a batch commits in a few milliseconds.
const MAX_BATCH: usize = 512;

/// Batches being appended at once. The store serializes them (chain lock, SQLite's one
/// appender), but while one commits the next is already waiting at the store, so the
/// database never idles while this task waits to be scheduled between two batches.
const IN_FLIGHT: usize = 2;

/// Requests waiting for the writer before senders have to wait (backpressure).
const QUEUE: usize = 16 * 1024;

/// The environment variable that supplies the digest key (replicas must share it).
pub const AUDIT_KEY_ENV: &str = "WARDEN_AUDIT_KEY";

/// The file in the data dir that holds a generated digest key.
pub const AUDIT_KEY_FILE: &str = "warden-audit.key";

/// Why an event could not be made durable. The cause is logged by the writer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit log is unavailable")]
pub struct AuditUnavailable;

/// Why the digest key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// The key given in the environment is too short to be a secret.
    #[error("{AUDIT_KEY_ENV} must hold at least 32 bytes (64 hex characters recommended)")]
    TooShort,
    /// The key file could not be read or written.
    #[error("audit key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The server's HMAC-SHA256 key for payload and context digests.
#[derive(Clone)]
pub struct AuditKey(Arc<Hmac<Sha256>>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// A key from raw bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditKeyError> {
        if bytes.len() < 32 {
            return Err(AuditKeyError::TooShort);
        }
        Hmac::<Sha256>::new_from_slice(bytes)
            .map(|mac| Self(Arc::new(mac)))
            .map_err(|_| AuditKeyError::TooShort)
    }

    /// The key from `WARDEN_AUDIT_KEY` if set, else from the data dir's key file, which is
    /// created with a fresh random key (readable by the owner only) on first start.
    pub fn load(env_value: Option<&str>, data_dir: &Path) -> Result<Self, AuditKeyError> {
        if let Some(value) = env_value {
            return Self::from_bytes(value.trim().as_bytes());
        }
        let path = data_dir.join(AUDIT_KEY_FILE);
        let io = |source| AuditKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_bytes(text.trim().as_bytes()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                let text = hex::encode(secret);
                write_private(&path, &text).map_err(io)?;
                Self::from_bytes(text.as_bytes())
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The keyed digest of a JSON value in its canonical form (`hmac-sha256:<hex>`), or
    /// `None` for an absent value.
    pub fn digest(&self, value: &serde_json::Value) -> Option<String> {
        if value.is_null() {
            return None;
        }
        let mut mac = (*self.0).clone();
        // Writing into the MAC cannot fail; serialization of a `Value` cannot either.
        let _ = serde_json::to_writer(MacWriter(&mut mac), &Sorted(value));
        Some(format!(
            "hmac-sha256:{}",
            hex::encode(mac.finalize().into_bytes())
        ))
    }
}

impl AuditKey {
    /// The key decision snapshots are sealed with, derived from this one so the data dir
    /// holds a single secret.
    pub fn snapshot_key(&self) -> crate::snapshots::SnapshotKey {
        let mut mac = (*self.0).clone();
        mac.update(b"warden:snapshot-key:v1");
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        crate::snapshots::SnapshotKey::from_bytes(key)
    }

    /// The keyed digest of an action as evaluated: every field but the idempotency key, in
    /// canonical JSON (sorted keys at every depth), so key order and whitespace in the
    /// request do not matter but any difference in meaning does. Keyed, like payload
    /// digests, so a low-entropy payload cannot be guessed from the stored digest.
    pub fn action_digest(&self, action: &Action) -> String {
        let canonical = CanonicalAction {
            agent: action.agent.as_deref(),
            app: action.app.as_deref(),
            confidence: action.confidence.map(|c| c.get()),
            context: Sorted(&action.context),
            mode: action.mode.as_deref(),
            on_behalf_of: action.on_behalf_of.as_deref(),
            payload: Sorted(&action.payload),
            run_id: action.run_id.as_deref(),
            target: action.target.as_ref().map(|t| CanonicalTarget {
                id: t.id.as_deref(),
                kind: t.kind.as_deref(),
            }),
            kind: action.kind.as_str(),
            usage: action.usage.as_ref().map(|u| CanonicalUsage {
                cost_usd: u.cost_usd,
                tokens: u.tokens,
                tool_calls: u.tool_calls,
            }),
            workflow: action.workflow.as_deref(),
        };
        let mut mac = (*self.0).clone();
        let _ = serde_json::to_writer(MacWriter(&mut mac), &canonical);
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The action as its digest sees it, borrowed rather than copied into a `Value` on every
/// decision. Fields are declared in sorted key order, which is the order serde writes them,
/// so the bytes are the canonical form digests stored by earlier versions were taken over.
#[derive(serde::Serialize)]
struct CanonicalAction<'a> {
    agent: Option<&'a str>,
    app: Option<&'a str>,
    confidence: Option<f64>,
    context: Sorted<'a>,
    mode: Option<&'a str>,
    on_behalf_of: Option<&'a str>,
    payload: Sorted<'a>,
    run_id: Option<&'a str>,
    target: Option<CanonicalTarget<'a>>,
    #[serde(rename = "type")]
    kind: &'a str,
    usage: Option<CanonicalUsage>,
    workflow: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct CanonicalTarget<'a> {
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct CanonicalUsage {
    cost_usd: Option<f64>,
    tokens: Option<u64>,
    tool_calls: Option<u64>,
}

struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

type Reply = oneshot::Sender<Result<Appended, AuditUnavailable>>;

/// The handle requests use to append events. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<(Append, Reply)>,
    failing: Arc<AtomicBool>,
}

/// The writer task; call [`AuditTask::finish`] after the last request to flush.
#[derive(Debug)]
pub struct AuditTask {
    handle: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl AuditWriter {
    /// Starts the writer task over `store`.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> (Self, AuditTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (close, closed) = oneshot::channel();
        let failing = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn(run(store, rx, closed, metrics, Arc::clone(&failing)));
        (Self { tx, failing }, AuditTask { handle, close })
    }

    /// Appends an event that records no decision and waits until it is durable.
    pub async fn record(&self, event: NewEvent) -> Result<(), AuditUnavailable> {
        self.append(Append {
            event,
            decision: None,
            ..Append::default()
        })
        .await
        .map(|_| ())
    }

    /// Whether the latest audit commit failed (and none has succeeded since): every
    /// decision is then a 503 deny, and the replica must not report itself ready.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Records that a write on the audit path succeeded outside a batch (readiness's
    /// probe), so readiness recovers without waiting for traffic that will not come.
    pub fn mark_recovered(&self) {
        self.failing.store(false, Ordering::Relaxed);
    }

    /// Appends one event (and its decision) and waits until it is durable.
    pub async fn append(&self, item: Append) -> Result<Appended, AuditUnavailable> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| AuditUnavailable)?;
        done.await.map_err(|_| AuditUnavailable)?
    }
}

impl AuditTask {
    /// Stops taking new events, writes every queued one, and waits until they are durable.
    pub async fn finish(self) {
        let _ = self.close.send(());
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "audit writer stopped abnormally");
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(Append, Reply)>,
    mut closed: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
    failing: Arc<AtomicBool>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut writing = JoinSet::new();
    let mut open = true;
    loop {
        // While batches commit, the next one queues up: batch size follows load by itself.
        let received = tokio::select! {
            n = rx.recv_many(&mut jobs, MAX_BATCH), if writing.len() < IN_FLIGHT => n,
            Some(done) = writing.join_next() => {
                log_abnormal(done);
                continue;
            }
            asked = &mut closed, if open => {
                open = false;
                // Asked to finish: refuse new events; what is queued is still written below.
                // (A dropped handle is not a request to stop.)
                if asked.is_ok() {
                    rx.close();
                }
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let (items, replies): (Vec<Append>, Vec<Reply>) = jobs.drain(..).unzip();
        writing.spawn(write(
            Arc::clone(&store),
            items,
            replies,
            Arc::clone(&metrics),
            Arc::clone(&failing),
        ));
    }
    while let Some(done) = writing.join_next().await {
        log_abnormal(done);
    }
}

/// Appends one batch and answers every request in it.
async fn write(
    store: Arc<dyn Store>,
    items: Vec<Append>,
    replies: Vec<Reply>,
    metrics: Arc<Metrics>,
    failing: Arc<AtomicBool>,
) {
    let size = items.len();
    let started = Instant::now();
    let result = store.append(items).await;
    metrics.audit_batch(size, started.elapsed());
    failing.store(result.is_err(), Ordering::Relaxed);
    match result {
        Ok(results) => {
            for (reply, appended) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(appended));
            }
        }
        Err(e) => {
            // The whole batch is rolled back, so every request in it is denied: fail
            // closed. Ids are random, so a batch fails on the store, not on one item.
            tracing::error!(error = %e, size, "audit write failed; the requests are denied");
            for reply in replies {
                let _ = reply.send(Err(AuditUnavailable));
            }
        }
    }
}

/// A write task that panicked dropped its replies, so its requests were denied already.
fn log_abnormal(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "an audit batch stopped abnormally; its requests were denied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digests_are_keyed_canonical_and_absent_for_null() {
        let a = AuditKey::from_bytes(&[7u8; 32]).unwrap();
        let b = AuditKey::from_bytes(&[8u8; 32]).unwrap();
        let x = json!({"b": 1, "a": [1, 2]});
        let y: serde_json::Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).unwrap();
        assert_eq!(a.digest(&x), a.digest(&y), "key order does not matter");
        assert_ne!(a.digest(&x), b.digest(&x), "the key does");
        assert!(a.digest(&x).unwrap().starts_with("hmac-sha256:"));
        assert_eq!(a.digest(&serde_json::Value::Null), None);
        assert!(matches!(
            AuditKey::from_bytes(b"short"),
            Err(AuditKeyError::TooShort)
        ));
    }

    /// The digest as it was first written, through a `Value`: digests already stored beside
    /// idempotency keys must still match the same action.
    fn action_digest_through_a_value(key: &AuditKey, action: &Action) -> String {
        let canonical = json!({
            "agent": action.agent,
            "app": action.app,
            "confidence": action.confidence.map(|c| c.get()),
            "context": Sorted(&action.context),
            "mode": action.mode,
            "on_behalf_of": action.on_behalf_of,
            "payload": Sorted(&action.payload),
            "run_id": action.run_id,
            "target": action.target.as_ref().map(|t| json!({"id": t.id, "type": t.kind})),
            "type": action.kind.as_str(),
            "usage": action.usage.as_ref().map(|u| json!({
                "cost_usd": u.cost_usd, "tokens": u.tokens, "tool_calls": u.tool_calls,
            })),
            "workflow": action.workflow,
        });
        let mut mac = (*key.0).clone();
        let _ = serde_json::to_writer(MacWriter(&mut mac), &Sorted(&canonical));
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn action_digests_keep_their_canonical_bytes() {
        let key = AuditKey::from_bytes(&[9u8; 32]).unwrap();
        let actions = [
            json!({"type": "ticket.get"}),
            json!({"type": "ticket.resolve", "target": {"type": "ticket", "id": "T-1"},
                   "agent": "support-bot", "on_behalf_of": "user-1", "mode": "auto",
                   "confidence": 0.91, "app": "desk", "workflow": "triage", "run_id": "r-1",
                   "payload": {"z": [1, {"b": 2, "a": 1}], "ä": "ü", "a": null, "n": 1.5e300},
                   "context": {"user": {"role": "agent"}, "ticket": {"priority": "high"}},
                   "usage": {"tokens": 12, "cost_usd": 0.25, "tool_calls": 3}}),
            json!({"type": "db.write", "target": {"id": "row-9"}, "usage": {"tokens": 1},
                   "payload": {"rows": [3, 2, 1]}, "confidence": 1}),
        ];
        for value in actions {
            let action = Action::from_value(value).unwrap();
            assert_eq!(
                key.action_digest(&action),
                action_digest_through_a_value(&key, &action)
            );
        }
    }

    #[test]
    fn a_generated_key_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditKey::load(None, dir.path()).unwrap();
        let again = AuditKey::load(None, dir.path()).unwrap();
        let v = json!({"card": "4111"});
        assert_eq!(first.digest(&v), again.digest(&v));
        let from_env = AuditKey::load(Some(&"k".repeat(32)), dir.path()).unwrap();
        assert_ne!(first.digest(&v), from_env.digest(&v));
    }
}
