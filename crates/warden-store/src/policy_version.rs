//! Policy versions: each tenant's policy as a growing sequence of stored sources, and the one
//! way a version becomes active — under the chain lock, with its audit event, only if the
//! caller's view of the tenant's history is still current.
//!
//! Key decision: the store checks history, not policy. Whether a source compiles and whether
//! its semver is greater is the server's business (it has the core); the store refuses a
//! publish whose expected revision or parent is no longer true, so two replicas publishing
//! at once cannot both win, and the loser re-reads and decides again.

/// Well-known values of [`PolicyVersionInfo::status`].
pub mod policy_status {
    /// The version in force for its tenant; at most one per tenant.
    pub const ACTIVE: &str = "active";
    /// Was active; a later version replaced it.
    pub const SUPERSEDED: &str = "superseded";
    /// A candidate run beside the active version, never enforced.
    pub const SHADOW: &str = "shadow";
    /// Was active and was rolled back automatically for its evaluation errors.
    pub const FAILED: &str = "failed";
}

/// One stored policy version, without its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionInfo {
    /// The tenant it belongs to.
    pub tenant: String,
    /// 1, 2, 3, … per tenant, in publishing order.
    pub revision: i64,
    /// The semver inside the document.
    pub version: String,
    /// Lowercase hex SHA-256 of the source.
    pub hash: String,
    /// The revision that was active when this one was published.
    pub parent: Option<i64>,
    /// Who published it: a key id, or what did (`file`, `sighup`, `auto_rollback`).
    pub author: String,
    /// The publisher's comment.
    pub comment: Option<String>,
    /// When it was published, unix milliseconds.
    pub created_at_ms: i64,
    /// See [`policy_status`].
    pub status: String,
}

/// A stored policy version with its source, as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// What is known of it.
    pub info: PolicyVersionInfo,
    /// The document exactly as submitted.
    pub source: String,
}

/// The active (or shadow) version of one tenant: what replicas compare to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHead {
    /// The tenant.
    pub tenant: String,
    /// The revision.
    pub revision: i64,
    /// That revision's content hash.
    pub hash: String,
    /// [`policy_status::ACTIVE`] or [`policy_status::SHADOW`].
    pub status: String,
}

/// A version to make active, given to [`crate::Store::publish_policy`].
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPublish {
    /// The new version; `info.revision` must be one more than the tenant's latest revision
    /// (1 for its first), `info.parent` the tenant's active revision (`None` for none),
    /// and `info.status` [`policy_status::ACTIVE`] (it is enforced from now on) or
    /// [`policy_status::SHADOW`] (it runs beside the active version, which stays).
    pub policy: StoredPolicy,
    /// What the tenant's version of the same status until now becomes:
    /// [`policy_status::SUPERSEDED`], or [`policy_status::FAILED`] when an active version is
    /// rolled back for its errors.
    pub previous_becomes: &'static str,
    /// The `policy_published` event, chained in the same transaction.
    pub event: crate::NewEvent,
    /// The proposal this version applies: inserted or updated in the same transaction, its
    /// events chained before `event`, its applied revision and version set to this
    /// version's. When it cannot be written, nothing is ([`Published::ProposalStale`]).
    pub proposal: Option<crate::ProposalWrite>,
}

/// What [`crate::Store::publish_policy`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// Written: the version is active, its event chained, every replica signalled.
    Written,
    /// Nothing written: another publish came first. `latest` is the tenant's newest
    /// revision and `active` its active one, as they are now.
    Conflict {
        /// The newest revision of the tenant, 0 when it has none.
        latest: i64,
        /// The active revision, if any.
        active: Option<i64>,
    },
    /// Nothing written: the proposal the publish carries is no longer in the status it
    /// expects, or the proposals it supersedes changed; what the store found.
    ProposalStale(Box<crate::ProposalWritten>),
}

/// A change to some tenant's active policy, heard from this store or (PostgreSQL) any
/// replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySignal {
    /// This tenant's active version changed.
    Changed(String),
    /// Signals may have been missed (the listener reconnected, or a receiver lagged):
    /// compare every tenant's active version again.
    Resync,
}

/// The tenant's newest revision (`latest`, NULL for none) and its active one (`active`):
/// `$1` and `$2` the tenant, `$3` [`policy_status::ACTIVE`].
pub(crate) const POSITION: &str = "SELECT \
    (SELECT MAX(revision) FROM policy_versions WHERE tenant = $1) AS latest, \
    (SELECT revision FROM policy_versions WHERE tenant = $2 AND status = $3) AS active";

/// Gives the tenant's version of status `$3` (active or shadow) its new status `$1`; `$2`
/// the tenant.
pub(crate) const RETIRE: &str =
    "UPDATE policy_versions SET status = $1 WHERE tenant = $2 AND status = $3";

/// Inserts a version, values in column order. Its source goes to `policy_sources`
/// ([`INSERT_SOURCE`]): the version's row changes status later, and a row that holds the
/// source would be rewritten whole each time (migration 0012).
pub(crate) const INSERT: &str = "INSERT INTO policy_versions (tenant, revision, version, \
    hash, source, parent, author, comment, created_at_ms, status) \
    VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8, $9)";

/// Inserts a version's source: tenant, revision, the source deflated ([`deflate`]).
pub(crate) const INSERT_SOURCE: &str =
    "INSERT INTO policy_sources (tenant, revision, source, deflated) VALUES ($1, $2, '', $3)";

/// A version's source, as the columns `source` and `deflated` of a query over
/// `policy_versions`; [`source_of`] makes the text of them.
pub(crate) const SOURCE: &str = "(SELECT s.source FROM policy_sources s \
    WHERE s.tenant = policy_versions.tenant AND s.revision = policy_versions.revision) AS source, \
    (SELECT s.deflated FROM policy_sources s \
    WHERE s.tenant = policy_versions.tenant AND s.revision = policy_versions.revision) AS deflated";

/// Deflate's fastest level: the benchmark's 10,000-rule source shrinks 12× (700 KB to 58 KB)
/// in a few milliseconds; the commit it shortens is what decisions wait on.
const DEFLATE_LEVEL: u8 = 1;

/// The most a stored source inflates to: far above any policy the server accepts, so only a
/// corrupt row reaches it, and it cannot exhaust memory.
const MAX_SOURCE_BYTES: usize = 256 << 20;

/// A source as stored (migration 0013). Called off the runtime and off the appender, which
/// the decisions wait on: deflating ~700 KB takes milliseconds.
pub(crate) fn deflate(source: &str) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(source.as_bytes(), DEFLATE_LEVEL)
}

/// [`deflate`] on a blocking thread.
pub(crate) async fn deflate_off_runtime(source: &str) -> Result<Vec<u8>, crate::StoreError> {
    let source = source.to_owned();
    Ok(tokio::task::spawn_blocking(move || deflate(&source)).await?)
}

/// [`source_of`], inflating on a blocking thread: a follower reads each new version while it
/// decides, and inflating a large source takes a millisecond or more.
pub(crate) async fn source_off_runtime(
    info: &PolicyVersionInfo,
    source: String,
    deflated: Option<Vec<u8>>,
) -> Result<String, crate::StoreError> {
    if deflated.is_none() {
        return Ok(source);
    }
    let (tenant, revision) = (info.tenant.clone(), info.revision);
    tokio::task::spawn_blocking(move || source_of(&tenant, revision, source, deflated)).await?
}

/// The text of version `revision` of `tenant` from its stored columns: `deflated` when the
/// row has it, else `source` as written before migration 0013.
pub(crate) fn source_of(
    tenant: &str,
    revision: i64,
    source: String,
    deflated: Option<Vec<u8>>,
) -> Result<String, crate::StoreError> {
    let Some(deflated) = deflated else {
        return Ok(source);
    };
    let corrupt = |detail: String| crate::StoreError::Corrupt {
        what: "policy source",
        id: format!("{tenant}@{revision}"),
        detail,
    };
    let bytes = miniz_oxide::inflate::decompress_to_vec_with_limit(&deflated, MAX_SOURCE_BYTES)
        .map_err(|e| corrupt(format!("cannot inflate: {:?}", e.status)))?;
    String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".to_owned()))
}

/// Refuses a publish that is neither of an active nor of a shadow version, or that applies
/// a malformed proposal.
pub(crate) fn check(publish: &PolicyPublish) -> Result<(), crate::StoreError> {
    if let Some(write) = &publish.proposal {
        crate::proposal::check(write)?;
    }
    let status = publish.policy.info.status.as_str();
    if status != policy_status::ACTIVE && status != policy_status::SHADOW {
        return Err(crate::StoreError::InvalidEvent {
            id: publish.event.id.clone(),
            reason: "a published policy version must be active or shadow".to_owned(),
        });
    }
    Ok(())
}

/// Whether `info` still follows the tenant's history as it is now; the conflict if not.
pub(crate) fn conflict(
    info: &PolicyVersionInfo,
    latest: Option<i64>,
    active: Option<i64>,
) -> Option<Published> {
    let latest = latest.unwrap_or(0);
    (info.revision != latest + 1 || info.parent != active)
        .then_some(Published::Conflict { latest, active })
}
